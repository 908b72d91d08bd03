//! Object formats: chunks, index pages, roots (binary, little-endian) and the JSON records.
//! Every decoder validates lengths before allocating and never panics on arbitrary bytes.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::FormatError;

/// Largest chunk size the store accepts (and the decompression cap when a chunk is read
/// without knowing its disk's chunk size).
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Smallest chunk size (also the alignment of every chunk size).
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest number of entries in an index page.
pub const MAX_PAGE_ENTRIES: u32 = 65536;

/// Chunk object magic.
pub const CHUNK_MAGIC: &[u8; 8] = b"LBCHUNK1";
/// Index page magic.
pub const PAGE_MAGIC: &[u8; 8] = b"LBIPAGE1";
/// Root manifest magic.
pub const ROOT_MAGIC: &[u8; 8] = b"LBROOT_1";
/// Format version of chunks, pages and roots.
pub const FORMAT_VERSION: u32 = 1;
/// Chunk header length.
pub const CHUNK_HEADER_LEN: usize = 52;
/// Index page header length.
pub const PAGE_HEADER_LEN: usize = 16;
/// Root header length.
pub const ROOT_HEADER_LEN: usize = 36;

/// Chunk payload stored as is (incompressible data).
pub const COMPRESSION_NONE: u8 = 0;
/// Chunk payload compressed with zstd.
pub const COMPRESSION_ZSTD: u8 = 1;

/// A 32-byte BLAKE3 content id (of a chunk's plain data, or of a page's or root's bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The BLAKE3 of `data`.
    pub fn of(data: &[u8]) -> Self {
        ObjectId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex (64 characters).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ObjectId(out))
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ObjectId::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

fn sharded(dir: &str, id: &ObjectId) -> String {
    let h = id.to_hex();
    format!("{dir}/{}/{h}", &h[..2])
}

/// `chunks/<2 hex>/<64 hex>`
pub fn chunk_key(id: &ObjectId) -> String {
    sharded("chunks", id)
}
/// `pages/<2 hex>/<64 hex>`
pub fn page_key(id: &ObjectId) -> String {
    sharded("pages", id)
}
/// `roots/<2 hex>/<64 hex>`
pub fn root_key(id: &ObjectId) -> String {
    sharded("roots", id)
}

/// The id in a content-addressed key `<dir>/<2 hex>/<64 hex>` (checks the shard too).
pub fn id_of_key(dir: &str, key: &str) -> Option<ObjectId> {
    let rest = key.strip_prefix(dir)?.strip_prefix('/')?;
    let (shard, hex) = rest.split_once('/')?;
    let id = ObjectId::from_hex(hex)?;
    (shard.len() == 2 && hex.starts_with(shard)).then_some(id)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn id_at(b: &[u8], at: usize) -> Option<ObjectId> {
    Some(ObjectId(b.get(at..at + 32)?.try_into().ok()?))
}

fn invalid(field: &'static str, value: impl fmt::Display) -> FormatError {
    FormatError::Invalid {
        field,
        value: value.to_string(),
    }
}

/// Whether every byte is zero. Stops at the first 4 KiB block that is not (random data costs
/// one block, not a pass over the whole chunk).
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096).all(|block| {
        let mut words = block.chunks_exact(16);
        let acc = words.by_ref().fold(0u128, |a, c| {
            a | u128::from_le_bytes(c.try_into().unwrap_or([0xff; 16]))
        });
        acc == 0 && words.remainder().iter().all(|&b| b == 0)
    })
}

/// Encodes a chunk object.
///
/// Header (52 bytes): magic `LBCHUNK1` (8), version `1` (u16), compression (u8: 0 none, 1 zstd),
/// reserved 0 (u8), plain length (u32), stored payload length (u32), BLAKE3 of the plain data
/// (32); then the payload. zstd is used unless it does not make the payload smaller.
pub fn encode_chunk(plain: &[u8], id: &ObjectId, level: i32) -> Vec<u8> {
    let compressed = compress_chunk(plain, level);
    let payload: &[u8] = compressed.as_deref().unwrap_or(plain);
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload.len());
    out.extend_from_slice(&chunk_header(
        plain.len(),
        compressed.is_some(),
        payload.len(),
        id,
    ));
    out.extend_from_slice(payload);
    out
}

/// [`encode_chunk`] as two parts, the header and the payload, so that an uncompressed chunk's
/// payload is `plain` itself (no copy): the object is their concatenation.
pub fn encode_chunk_parts(plain: Bytes, id: &ObjectId, level: i32) -> [Bytes; 2] {
    let (compressed, payload) = match compress_chunk(&plain, level) {
        Some(c) => (true, Bytes::from(c)),
        None => (false, plain.clone()),
    };
    let header = chunk_header(plain.len(), compressed, payload.len(), id);
    [Bytes::copy_from_slice(&header), payload]
}

/// zstd of a chunk, unless it is not worth it (see [`encode_chunk`]).
pub(crate) fn compress_chunk(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    worth_compressing(plain, level)
        .then(|| zstd_compress(plain, level))
        .flatten()
        .filter(|c| c.len() < plain.len())
}

pub(crate) fn chunk_header(
    plain_len: usize,
    compressed: bool,
    payload_len: usize,
    id: &ObjectId,
) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..8].copy_from_slice(CHUNK_MAGIC);
    h[8..10].copy_from_slice(&(FORMAT_VERSION as u16).to_le_bytes());
    h[10] = if compressed {
        COMPRESSION_ZSTD
    } else {
        COMPRESSION_NONE
    };
    h[11] = 0;
    h[12..16].copy_from_slice(&(plain_len as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(payload_len as u32).to_le_bytes());
    h[20..52].copy_from_slice(&id.0);
    h
}

/// Magic of a stored journal segment wrapped in zstd (a raw one starts with the journal's own
/// `LBJOURNL`).
pub const SEGMENT_Z_MAGIC: &[u8; 8] = b"LBSEGZ01";
/// Header of a wrapped segment: magic, version (u32), reserved (u32), plain length (u64).
pub const SEGMENT_Z_HEADER_LEN: usize = 24;
/// The largest plain segment a wrapped one may announce (a decompression limit).
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// A journal segment as the store keeps it: wrapped in zstd when that saves at least 3% (the
/// records' headers and compressible data), else the journal's own bytes unchanged.
pub fn encode_stored_segment(plain: &[u8], level: i32) -> Vec<u8> {
    let compressed = worth_compressing(plain, level)
        .then(|| zstd_compress(plain, level))
        .flatten()
        .filter(|c| (c.len() + SEGMENT_Z_HEADER_LEN) * 100 < plain.len() * 97);
    match compressed {
        None => plain.to_vec(),
        Some(c) => {
            let mut out = Vec::with_capacity(SEGMENT_Z_HEADER_LEN + c.len());
            out.extend_from_slice(SEGMENT_Z_MAGIC);
            out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(plain.len() as u64).to_le_bytes());
            out.extend_from_slice(&c);
            out
        }
    }
}

/// The journal segment bytes of a stored segment object (unwrapping zstd). The segment itself
/// is checked by its parser (CRCs) afterwards.
pub fn decode_stored_segment(obj: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, FormatError> {
    if obj.len() < 8 || &obj[..8] != SEGMENT_Z_MAGIC {
        return Ok(std::borrow::Cow::Borrowed(obj));
    }
    if obj.len() < SEGMENT_Z_HEADER_LEN {
        return Err(FormatError::Truncated("compressed segment header"));
    }
    let u32_at = |o: usize| u32::from_le_bytes([obj[o], obj[o + 1], obj[o + 2], obj[o + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&obj[16..24]);
    let plain = u64::from_le_bytes(l);
    if plain > MAX_SEGMENT_BYTES {
        return Err(FormatError::Invalid {
            field: "compressed segment's plain length",
            value: plain.to_string(),
        });
    }
    let out =
        zstd::bulk::decompress(&obj[SEGMENT_Z_HEADER_LEN..], plain as usize).map_err(|_| {
            FormatError::Decompress {
                limit: plain as usize,
            }
        })?;
    if out.len() as u64 != plain {
        return Err(FormatError::Invalid {
            field: "compressed segment's plain length",
            value: format!("{} (decoded {})", plain, out.len()),
        });
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Whether zstd is worth trying on a chunk: one of eight 8 KiB samples spread over it must
/// shrink by at least 3%. Random data (where none does) costs no full compression pass; a chunk
/// that is partly compressible (text or zeroes in places) is still compressed.
fn worth_compressing(plain: &[u8], level: i32) -> bool {
    const SAMPLE: usize = 8 << 10;
    const SAMPLES: usize = 8;
    if plain.len() <= 4 * SAMPLE * SAMPLES {
        return true;
    }
    let step = (plain.len() - SAMPLE) / (SAMPLES - 1);
    (0..SAMPLES).any(|i| sample_compresses(&plain[i * step..i * step + SAMPLE], level))
}

/// Whether zstd shrinks `sample` by at least 3% (the test of [`worth_compressing`]).
pub(crate) fn sample_compresses(sample: &[u8], level: i32) -> bool {
    zstd_compress(sample, level).is_some_and(|c| c.len() * 100 < sample.len() * 97)
}

thread_local! {
    /// This thread's zstd compression context and its level: creating a context per call was
    /// 2% of a seed's CPU (eight samples per chunk).
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd of `data` at `level` (`None`: zstd failed), with this thread's reused context.
fn zstd_compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        c.compress(data).ok()
    })
}

/// Decodes a chunk object and checks it is the chunk `expected`: the plain length must be at
/// most `limit`, the payload must decode to exactly that length, and its BLAKE3 must equal both
/// the header's and `expected`.
pub fn decode_chunk(obj: &[u8], expected: &ObjectId, limit: usize) -> Result<Vec<u8>, FormatError> {
    if obj.len() < CHUNK_HEADER_LEN {
        return Err(FormatError::Truncated("chunk header"));
    }
    if &obj[..8] != CHUNK_MAGIC {
        return Err(FormatError::BadMagic("chunk"));
    }
    let version = u16_at(obj, 8).unwrap_or(0) as u32;
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    let comp = obj[10];
    if obj[11] != 0 {
        return Err(invalid("chunk reserved byte", obj[11]));
    }
    let plain_len = u32_at(obj, 12).unwrap_or(u32::MAX) as usize;
    let stored_len = u32_at(obj, 16).unwrap_or(u32::MAX) as usize;
    let header_id = id_at(obj, 20).ok_or(FormatError::Truncated("chunk header"))?;
    let limit = limit.min(MAX_CHUNK_SIZE as usize);
    if plain_len == 0 || plain_len > limit {
        return Err(invalid("chunk plain length", plain_len));
    }
    let payload = &obj[CHUNK_HEADER_LEN..];
    if payload.len() < stored_len {
        return Err(FormatError::Truncated("chunk payload"));
    }
    if payload.len() > stored_len {
        return Err(FormatError::Trailing(payload.len() - stored_len));
    }
    let plain = match comp {
        COMPRESSION_NONE => {
            if stored_len != plain_len {
                return Err(invalid("uncompressed chunk length", stored_len));
            }
            payload.to_vec()
        }
        COMPRESSION_ZSTD => zstd::bulk::decompress(payload, plain_len)
            .map_err(|_| FormatError::Decompress { limit: plain_len })?,
        other => return Err(invalid("chunk compression", other)),
    };
    if plain.len() != plain_len {
        return Err(invalid("decompressed chunk length", plain.len()));
    }
    let actual = ObjectId::of(&plain);
    if actual != header_id || actual != *expected {
        return Err(FormatError::HashMismatch {
            expected: expected.to_hex(),
            actual: actual.to_hex(),
        });
    }
    Ok(plain)
}

/// One slot of an index page: a chunk, or zeroes (never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// All-zero chunk.
    Zero,
    /// A stored chunk.
    Chunk(ObjectId),
}

/// Encodes an index page: magic `LBIPAGE1` (8), version `1` (u32), entry count (u32), then per
/// entry a tag byte (0 zero, 1 chunk) followed, for a chunk, by its 32-byte id.
/// The page's id is the BLAKE3 of these bytes.
pub fn encode_page(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE_HEADER_LEN + entries.len() * 33);
    out.extend_from_slice(PAGE_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        match e {
            Entry::Zero => out.push(0),
            Entry::Chunk(id) => {
                out.push(1);
                out.extend_from_slice(&id.0);
            }
        }
    }
    out
}

/// Decodes an index page (its id is checked by the caller, over the raw bytes).
pub fn decode_page(obj: &[u8]) -> Result<Vec<Entry>, FormatError> {
    if obj.len() < PAGE_HEADER_LEN {
        return Err(FormatError::Truncated("page header"));
    }
    if &obj[..8] != PAGE_MAGIC {
        return Err(FormatError::BadMagic("index page"));
    }
    let version = u32_at(obj, 8).unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    let count = u32_at(obj, 12).unwrap_or(u32::MAX);
    if count == 0 || count > MAX_PAGE_ENTRIES {
        return Err(invalid("page entry count", count));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut at = PAGE_HEADER_LEN;
    for _ in 0..count {
        match obj.get(at) {
            None => return Err(FormatError::Truncated("page entries")),
            Some(0) => {
                entries.push(Entry::Zero);
                at += 1;
            }
            Some(1) => {
                let id = id_at(obj, at + 1).ok_or(FormatError::Truncated("page entries"))?;
                entries.push(Entry::Chunk(id));
                at += 33;
            }
            Some(t) => return Err(invalid("page entry tag", t)),
        }
    }
    if at != obj.len() {
        return Err(FormatError::Trailing(obj.len() - at));
    }
    Ok(entries)
}

/// A disk's root manifest: its geometry and its index pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Entries per index page (the last page may have fewer).
    pub page_entries: u32,
    /// The index pages, in order.
    pub pages: Vec<ObjectId>,
}

impl Root {
    /// Number of chunks of the disk.
    pub fn chunk_count(&self) -> u64 {
        self.disk_size.div_ceil(self.chunk_size as u64)
    }

    /// Number of entries page `p` must have.
    pub fn entries_in_page(&self, p: usize) -> usize {
        let total = self.chunk_count();
        let start = p as u64 * self.page_entries as u64;
        (total.saturating_sub(start)).min(self.page_entries as u64) as usize
    }

    /// Length of chunk `i` in bytes.
    pub fn chunk_len(&self, i: u64) -> usize {
        let start = i * self.chunk_size as u64;
        (self.disk_size.saturating_sub(start)).min(self.chunk_size as u64) as usize
    }
}

/// Number of pages for a disk geometry (`None` if it overflows or is not allowed).
pub fn page_count(disk_size: u64, chunk_size: u32, page_entries: u32) -> Option<u64> {
    if chunk_size == 0 || page_entries == 0 {
        return None;
    }
    Some(
        disk_size
            .div_ceil(chunk_size as u64)
            .div_ceil(page_entries as u64),
    )
}

/// Encodes a root: magic `LBROOT_1` (8), version `1` (u32), disk size (u64), chunk size (u32),
/// entries per page (u32), page count (u32), reserved 0 (u32), then the 32-byte page ids.
/// The root's id is the BLAKE3 of these bytes.
pub fn encode_root(root: &Root) -> Vec<u8> {
    let mut out = Vec::with_capacity(ROOT_HEADER_LEN + root.pages.len() * 32);
    out.extend_from_slice(ROOT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&root.disk_size.to_le_bytes());
    out.extend_from_slice(&root.chunk_size.to_le_bytes());
    out.extend_from_slice(&root.page_entries.to_le_bytes());
    out.extend_from_slice(&(root.pages.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for p in &root.pages {
        out.extend_from_slice(&p.0);
    }
    out
}

/// Decodes a root and checks its geometry (page count matches the disk size).
pub fn decode_root(obj: &[u8]) -> Result<Root, FormatError> {
    if obj.len() < ROOT_HEADER_LEN {
        return Err(FormatError::Truncated("root header"));
    }
    if &obj[..8] != ROOT_MAGIC {
        return Err(FormatError::BadMagic("root manifest"));
    }
    let version = u32_at(obj, 8).unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    let disk_size = u64_at(obj, 12).unwrap_or(0);
    let chunk_size = u32_at(obj, 20).unwrap_or(0);
    let page_entries = u32_at(obj, 24).unwrap_or(0);
    let count = u32_at(obj, 28).unwrap_or(u32::MAX);
    let reserved = u32_at(obj, 32).unwrap_or(1);
    check_geometry(chunk_size, page_entries)?;
    if reserved != 0 {
        return Err(invalid("root reserved field", reserved));
    }
    let want = page_count(disk_size, chunk_size, page_entries);
    if want != Some(count as u64) {
        return Err(invalid("root page count", count));
    }
    let body = &obj[ROOT_HEADER_LEN..];
    let need = count as usize * 32;
    if body.len() < need {
        return Err(FormatError::Truncated("root page ids"));
    }
    if body.len() > need {
        return Err(FormatError::Trailing(body.len() - need));
    }
    let pages = body
        .chunks_exact(32)
        .map(|c| ObjectId(c.try_into().unwrap_or([0; 32])))
        .collect();
    Ok(Root {
        disk_size,
        chunk_size,
        page_entries,
        pages,
    })
}

/// Checks a chunk size and a page size.
pub fn check_geometry(chunk_size: u32, page_entries: u32) -> Result<(), FormatError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        || chunk_size & (MIN_CHUNK_SIZE - 1) != 0
    {
        return Err(invalid("chunk size", chunk_size));
    }
    if page_entries == 0 || page_entries > MAX_PAGE_ENTRIES {
        return Err(invalid("entries per page", page_entries));
    }
    Ok(())
}

/// `"format"` of a point record.
pub const POINT_FORMAT: &str = "lifeboat-point";
/// `"format"` of a VM's epoch record.
pub const EPOCH_FORMAT: &str = "lifeboat-epoch";
/// `"format"` of a writer lease.
pub const LEASE_FORMAT: &str = "lifeboat-writer-lease";
/// `"format"` of the garbage collector's lock.
pub const GC_LOCK_FORMAT: &str = "lifeboat-gc-lock";

/// The garbage collector's lock, at [`GC_LOCK_KEY`]: a sweep is running since `started_ns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcLockRecord {
    /// Always [`GC_LOCK_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// When the collector started, nanoseconds since 1970 (its clock).
    pub started_ns: u64,
}

/// Where the garbage collector's lock lives.
pub const GC_LOCK_KEY: &str = "gc/lock";

/// One disk of a point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointDisk {
    /// The disk's index in its VM.
    pub disk: u32,
    /// Its root manifest.
    pub root: ObjectId,
    /// Its size in bytes.
    pub size: u64,
}

/// A recovery point record, stored as JSON at `vms/<vm>/points/<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointRecord {
    /// Always [`POINT_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// `<journal seq, 20 digits>-<crash|app>`: sorts by journal position.
    pub id: String,
    /// The VM.
    pub vm: String,
    /// When the point was cut, nanoseconds since 1970-01-01 UTC.
    pub time_ns: u64,
    /// `crash-consistent` or `app-consistent`.
    pub kind: String,
    /// Journal position: the point is the state after every record up to this one.
    pub seq: u64,
    /// The replication epoch the point was made in.
    pub epoch: u64,
    /// The disks it holds, by disk index.
    pub disks: Vec<PointDisk>,
    /// How many disks the VM had when the point was cut ("N of M disks": N = `disks.len()`).
    pub disks_total: u32,
    /// Chunks this point stored that were not in the store yet.
    pub new_chunks: u64,
    /// Bytes of those chunks as stored (compressed).
    pub new_bytes: u64,
    /// A **journal-backed** point: its data is point `base` (a stored point) plus the stored
    /// journal records after it up to `seq`; `disks` then names the base's roots, and the point
    /// is read through the journal (`lifeboat_process::open_point`), never through its roots.
    /// Absent: the point is **stored** (its roots are its data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Why the point was cut.
    #[serde(default)]
    pub origin: PointOrigin,
    /// When the point (in either form) was first committed, nanoseconds since 1970; 0 in
    /// records that predate the field (then `time_ns`).
    #[serde(default)]
    pub cut_ns: u64,
    /// For an initial copy taken while the VM kept writing: the journal position where the
    /// copy ended. The copy plus the journal is a consistent state only from there on, so no
    /// point before it is cut or restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_end: Option<u64>,
}

/// Why a point was cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointOrigin {
    /// A checkpoint marker in the journal (the policy's interval, or a frozen guest).
    #[default]
    Marker,
    /// "Latest": cut at the last record received, on request. Beyond the continuous-data-
    /// protection window such points are kept only if they were stored.
    Latest,
    /// Initial replication: the disks as copied while the VM kept writing. Not a consistent
    /// state by itself (the copy is fuzzy): never restored; the first point after the copy
    /// ended is.
    InitialCopy,
}

impl std::fmt::Display for PointOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PointOrigin::Marker => "marker",
            PointOrigin::Latest => "latest",
            PointOrigin::InitialCopy => "initial-copy",
        })
    }
}

/// The highest epoch seen for a VM, at `vms/<vm>/epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Always [`EPOCH_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The epoch.
    pub epoch: u64,
}

/// A point writer's lease, at `vms/<vm>/writer-lease` (see the GC argument in the crate doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Always [`LEASE_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// When the writer started, nanoseconds since 1970 (writer's clock).
    pub started_ns: u64,
    /// Roots of the writer's base point: GC keeps them even if that point is deleted meanwhile.
    pub base_roots: Vec<ObjectId>,
}

/// Parses a JSON record and checks its `format`/`version`.
pub fn decode_json<T: for<'de> Deserialize<'de>>(
    obj: &[u8],
    format: &str,
    get: impl Fn(&T) -> (&str, u32),
) -> Result<T, FormatError> {
    let v: T = serde_json::from_slice(obj).map_err(|e| FormatError::Json(e.to_string()))?;
    let (f, ver) = get(&v);
    if f != format {
        return Err(invalid("record format", f));
    }
    if ver != 1 {
        return Err(FormatError::UnknownVersion(ver));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_round_trip_and_layout() {
        let data: Vec<u8> = (0..10000u32).map(|i| (i % 13) as u8).collect();
        let id = ObjectId::of(&data);
        let obj = encode_chunk(&data, &id, 1);
        assert_eq!(&obj[..8], b"LBCHUNK1");
        assert_eq!(obj[10], COMPRESSION_ZSTD);
        assert_eq!(u32_at(&obj, 12), Some(10000));
        assert_eq!(&obj[20..52], &id.0);
        assert!(obj.len() < 1000);
        assert_eq!(decode_chunk(&obj, &id, 1 << 20).unwrap(), data);
        // Too small a limit: refused, not decoded.
        assert!(decode_chunk(&obj, &id, 9999).is_err());
        // Wrong expected id.
        let other = ObjectId::of(b"x");
        assert!(matches!(
            decode_chunk(&obj, &other, 1 << 20),
            Err(FormatError::HashMismatch { .. })
        ));
        // Incompressible data is stored raw.
        let mut rnd = vec![0u8; 8192];
        blake3::Hasher::new().finalize_xof().fill(&mut rnd);
        let id = ObjectId::of(&rnd);
        let obj = encode_chunk(&rnd, &id, 1);
        assert_eq!(obj[10], COMPRESSION_NONE);
        assert_eq!(decode_chunk(&obj, &id, 8192).unwrap(), rnd);
    }

    #[test]
    fn chunk_parts_are_the_chunk() {
        let text: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let mut rnd = vec![0u8; 300_000];
        blake3::Hasher::new().finalize_xof().fill(&mut rnd);
        for data in [text, rnd] {
            let id = ObjectId::of(&data);
            let plain = Bytes::from(data.clone());
            let parts = encode_chunk_parts(plain.clone(), &id, 1);
            assert_eq!(parts[0].len(), CHUNK_HEADER_LEN);
            assert_eq!(
                [&parts[0][..], &parts[1][..]].concat(),
                encode_chunk(&data, &id, 1)
            );
            if parts[0][10] == COMPRESSION_NONE {
                // The payload is the caller's buffer, not a copy.
                assert_eq!(parts[1].as_ptr(), plain.as_ptr());
            }
        }
    }

    #[test]
    fn page_and_root_round_trip() {
        let e = vec![Entry::Zero, Entry::Chunk(ObjectId::of(b"a")), Entry::Zero];
        let p = encode_page(&e);
        assert_eq!(p.len(), 16 + 1 + 33 + 1);
        assert_eq!(decode_page(&p).unwrap(), e);
        let r = Root {
            disk_size: 10 * 4096 + 1,
            chunk_size: 4096,
            page_entries: 4,
            pages: vec![ObjectId::of(b"1"), ObjectId::of(b"2"), ObjectId::of(b"3")],
        };
        assert_eq!(r.chunk_count(), 11);
        assert_eq!(r.entries_in_page(2), 3);
        assert_eq!(r.chunk_len(10), 1);
        let b = encode_root(&r);
        assert_eq!(decode_root(&b).unwrap(), r);
        let mut bad = r.clone();
        bad.pages.pop();
        assert!(decode_root(&encode_root(&bad)).is_err());
    }

    #[test]
    fn keys_and_ids() {
        let id = ObjectId::of(b"hello");
        let k = chunk_key(&id);
        assert_eq!(k.len(), "chunks/".len() + 3 + 64);
        assert_eq!(id_of_key("chunks", &k), Some(id));
        assert_eq!(id_of_key("pages", &k), None);
        assert_eq!(id_of_key("chunks", "chunks/00/zz"), None);
        let mut wrong_shard = k.clone();
        wrong_shard.replace_range(7..9, if &k[7..9] == "00" { "01" } else { "00" });
        assert_eq!(id_of_key("chunks", &wrong_shard), None);
        assert!(is_zero(&[0u8; 33]));
        let mut z = [0u8; 33];
        z[32] = 1;
        assert!(!is_zero(&z));
        z[32] = 0;
        z[5] = 1;
        assert!(!is_zero(&z));
        // Across 4 KiB blocks, and in a short last block.
        let mut big = vec![0u8; 3 * 4096 + 100];
        assert!(is_zero(&big));
        for at in [0, 4095, 4096, 2 * 4096 + 17, 3 * 4096 + 99] {
            big[at] = 0x80;
            assert!(!is_zero(&big), "{at}");
            big[at] = 0;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_chunk(&bytes, &ObjectId([0; 32]), 1 << 20);
            let _ = decode_page(&bytes);
            let _ = decode_root(&bytes);
            let mut wrapped = SEGMENT_Z_MAGIC.to_vec();
            wrapped.extend_from_slice(&bytes);
            let _ = decode_stored_segment(&wrapped);
        }

        #[test]
        fn stored_segments_round_trip(
            data in proptest::collection::vec(0u8..4, 0..300_000),
        ) {
            let stored = encode_stored_segment(&data, 1);
            let back = decode_stored_segment(&stored).unwrap().into_owned();
            prop_assert_eq!(back, data.clone());
            if stored.starts_with(SEGMENT_Z_MAGIC) {
                prop_assert!(stored.len() < data.len());
                // Cut short or lying about its length: an error, never a panic.
                prop_assert!(decode_stored_segment(&stored[..stored.len() - 1]).is_err());
                let mut lie = stored.clone();
                lie[16] ^= 1;
                prop_assert!(decode_stored_segment(&lie).is_err());
            }
        }

        #[test]
        fn mutated_objects_never_panic_nor_pass(
            data in proptest::collection::vec(any::<u8>(), 1..2000),
            pos in any::<usize>(),
            bit in 0u8..8,
            cut in any::<usize>(),
        ) {
            let id = ObjectId::of(&data);
            let chunk = encode_chunk(&data, &id, 3);
            let mut flipped = chunk.clone();
            let p = pos % flipped.len();
            flipped[p] ^= 1 << bit;
            prop_assert!(decode_chunk(&flipped, &id, 1 << 20).is_err());
            let c = cut % chunk.len();
            prop_assert!(decode_chunk(&chunk[..c], &id, 1 << 20).is_err());

            let entries: Vec<Entry> = data.iter().take(50).map(|b| {
                if b % 2 == 0 { Entry::Zero } else { Entry::Chunk(ObjectId::of(&[*b])) }
            }).collect();
            let page = encode_page(&entries);
            let c = cut % page.len();
            prop_assert!(decode_page(&page[..c]).is_err());
            let mut fp = page.clone();
            let p = pos % fp.len();
            fp[p] ^= 1 << bit;
            // A flip may still decode (inside an id): the page id check catches that; no panic.
            let _ = decode_page(&fp);

            let root = Root { disk_size: data.len() as u64 * 4096, chunk_size: 4096,
                page_entries: 7, pages: vec![id; data.len().div_ceil(7)] };
            let rb = encode_root(&root);
            let c = cut % rb.len();
            prop_assert!(decode_root(&rb[..c]).is_err());
            let mut fr = rb.clone();
            let p = pos % fr.len();
            fr[p] ^= 1 << bit;
            let _ = decode_root(&fr);
        }
    }
}
