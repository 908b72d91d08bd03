//! The recovery state file: which chunks of the target image are local, and up to which
//! journal record the image holds this disk's writes. Format in the crate doc; written whole
//! by write-temp-then-rename with fsync of the file and its directory.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use lifeboat_types::{DiskId, Seq, VmId};

use crate::error::RecoverError;

/// Magic of a recovery state file.
pub const STATE_MAGIC: &[u8; 8] = b"LBRECOV1";
/// Format version.
pub const STATE_VERSION: u32 = 1;
/// Header length in bytes (the bitmap follows).
pub const STATE_HEADER_LEN: usize = 144;
/// Largest chunk size accepted in a state file (the store allows 64 MiB).
const MAX_CHUNK: u32 = 1 << 30;

/// What a state file says besides the bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub disk_size: u64,
    pub chunk_size: u32,
    pub disk: DiskId,
    /// The recovery point's journal position (of the protected VM's journal).
    pub point_seq: Seq,
    /// Every record of this disk in this recovery's journal up to here is durably in the image.
    pub applied: Seq,
    pub vm: VmId,
}

impl Header {
    pub fn chunk_count(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.chunk_size))
    }

    /// "VM x, disk y, point at journal record n, s bytes in c-byte chunks", for mismatches.
    pub fn describe(&self) -> String {
        describe(
            &self.vm,
            self.disk,
            self.point_seq,
            self.disk_size,
            self.chunk_size,
        )
    }
}

pub(crate) fn describe(vm: &VmId, disk: DiskId, seq: Seq, size: u64, chunk: u32) -> String {
    format!("VM {vm} {disk}, recovery point at journal record {seq}, {size} bytes in {chunk}-byte chunks")
}

/// The state file of a target image: `<image>.recovery`.
pub fn state_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".recovery");
    PathBuf::from(s)
}

/// One bit per chunk: set = local (the target image holds the chunk's current bytes). Bits are
/// only ever set, never cleared.
#[derive(Debug)]
pub(crate) struct Bitmap {
    words: Vec<AtomicU64>,
}

impl Bitmap {
    pub fn new(len: u64, words: &[u64]) -> Self {
        let n = len.div_ceil(64) as usize;
        Bitmap {
            words: (0..n)
                .map(|w| AtomicU64::new(words.get(w).copied().unwrap_or(0)))
                .collect(),
        }
    }

    pub fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; true if it was clear.
    pub fn set(&self, i: u64) -> bool {
        match self.words.get((i / 64) as usize) {
            Some(w) => {
                let bit = 1u64 << (i % 64);
                w.fetch_or(bit, Ordering::AcqRel) & bit == 0
            }
            None => false,
        }
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// Encodes a state file: header, bitmap bytes, CRC-32C of everything before it.
pub(crate) fn encode(h: &Header, words: &[u64]) -> Vec<u8> {
    let count = h.chunk_count();
    let map_len = count.div_ceil(8) as usize;
    let mut b = Vec::with_capacity(STATE_HEADER_LEN + map_len + 4);
    b.extend_from_slice(STATE_MAGIC);
    put_u32(&mut b, STATE_VERSION);
    put_u32(&mut b, STATE_HEADER_LEN as u32);
    put_u64(&mut b, h.disk_size);
    put_u32(&mut b, h.chunk_size);
    put_u32(&mut b, h.disk.0);
    put_u64(&mut b, h.point_seq.0);
    put_u64(&mut b, h.applied.0);
    put_u64(&mut b, count);
    let local: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
    put_u64(&mut b, local);
    let vm = h.vm.as_str().as_bytes();
    b.push(vm.len() as u8);
    b.extend_from_slice(vm);
    b.resize(STATE_HEADER_LEN, 0);
    let mut map: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    map.resize(map_len, 0);
    b.extend_from_slice(&map);
    let crc = crc32c::crc32c(&b);
    put_u32(&mut b, crc);
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and checks a state file (never panics on arbitrary bytes).
pub(crate) fn decode(b: &[u8]) -> Result<(Header, Vec<u64>), String> {
    if b.len() < STATE_HEADER_LEN + 4 {
        return Err(format!("{} bytes, shorter than a header", b.len()));
    }
    if &b[0..8] != STATE_MAGIC {
        return Err("bad magic (not a Lifeboat recovery state file)".into());
    }
    let version = u32_at(b, 8);
    if version != STATE_VERSION {
        return Err(format!(
            "format version {version}, this build reads {STATE_VERSION}"
        ));
    }
    let header_len = u32_at(b, 12) as usize;
    if header_len != STATE_HEADER_LEN {
        return Err(format!("header length {header_len}"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32_at(crc, 0) {
        return Err("checksum mismatch".into());
    }
    let disk_size = u64_at(b, 16);
    let chunk_size = u32_at(b, 24);
    if chunk_size == 0 || chunk_size > MAX_CHUNK {
        return Err(format!("chunk size {chunk_size}"));
    }
    let count = u64_at(b, 48);
    if count != disk_size.div_ceil(u64::from(chunk_size)) {
        return Err(format!(
            "chunk count {count} does not fit {disk_size} bytes in {chunk_size}-byte chunks"
        ));
    }
    let map_len = count.div_ceil(8);
    if body.len() as u64 != STATE_HEADER_LEN as u64 + map_len {
        return Err(format!(
            "{} bytes, expected {} for {count} chunks",
            b.len(),
            STATE_HEADER_LEN as u64 + map_len + 4
        ));
    }
    let vm_len = b[64] as usize;
    if vm_len > VmId::MAX_LEN || b[65 + vm_len..STATE_HEADER_LEN].iter().any(|&x| x != 0) {
        return Err(format!("VM id length {vm_len} or padding"));
    }
    let vm = std::str::from_utf8(&b[65..65 + vm_len])
        .ok()
        .and_then(|s| VmId::new(s).ok())
        .ok_or("invalid VM id")?;
    let map = &body[STATE_HEADER_LEN..];
    let mut words = vec![0u64; count.div_ceil(64) as usize];
    for (j, byte) in map.iter().enumerate() {
        words[j / 8] |= u64::from(*byte) << (8 * (j % 8));
    }
    let tail = count & 63;
    if tail != 0 {
        if let Some(last) = words.last() {
            if last >> tail != 0 {
                return Err("bits set past the last chunk".into());
            }
        }
    }
    let local: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
    if local != u64_at(b, 56) {
        return Err(format!(
            "local chunk count {} disagrees with the bitmap ({local})",
            u64_at(b, 56)
        ));
    }
    let h = Header {
        disk_size,
        chunk_size,
        disk: DiskId(u32_at(b, 28)),
        point_seq: Seq(u64_at(b, 32)),
        applied: Seq(u64_at(b, 40)),
        vm,
    };
    Ok((h, words))
}

/// Reads the state file; `Ok(None)` if it does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<(Header, Vec<u64>)>, RecoverError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RecoverError::StateIo {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| RecoverError::StateCorrupt {
            path: path.to_path_buf(),
            reason,
        })
}

/// Writes the state file durably: `<path>.tmp`, fsync, rename, fsync of the directory.
pub(crate) fn store(path: &Path, bytes: &[u8]) -> Result<(), RecoverError> {
    let err = |source| RecoverError::StateIo {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64, chunk: u32) -> Header {
        Header {
            disk_size: size,
            chunk_size: chunk,
            disk: DiskId(3),
            point_seq: Seq(77),
            applied: Seq(12),
            vm: VmId::new("web-1").unwrap(),
        }
    }

    #[test]
    fn round_trip_and_every_byte_flip_is_caught() {
        let h = header(10 * 4096 + 100, 4096); // 11 chunks
        let bm = Bitmap::new(h.chunk_count(), &[]);
        for i in [0u64, 3, 10] {
            assert!(bm.set(i));
        }
        assert!(!bm.set(3));
        assert_eq!(bm.count(), 3);
        let bytes = encode(&h, &bm.snapshot());
        let (h2, words) = decode(&bytes).unwrap();
        assert_eq!(h2, h);
        let bm2 = Bitmap::new(h2.chunk_count(), &words);
        assert!((0..11).all(|i| bm2.get(i) == [0, 3, 10].contains(&i)));
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {at} accepted");
        }
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncated to {len} accepted"
            );
        }
    }

    #[test]
    fn many_chunks_and_files() {
        let h = header(1 << 30, 1 << 20); // 1024 chunks
        let bm = Bitmap::new(h.chunk_count(), &[]);
        for i in (0..1024).step_by(7) {
            bm.set(i);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = state_path(&dir.path().join("d.img"));
        assert!(load(&p).unwrap().is_none());
        store(&p, &encode(&h, &bm.snapshot())).unwrap();
        let (h2, words) = load(&p).unwrap().unwrap();
        assert_eq!(h2, h);
        assert_eq!(Bitmap::new(1024, &words).count(), bm.count());
        fs::write(&p, b"garbage").unwrap();
        assert!(matches!(load(&p), Err(RecoverError::StateCorrupt { .. })));
    }
}
