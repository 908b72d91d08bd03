//! Block digests of disk images, for re-protect when the journals cannot tell what diverged:
//! both sides hash their disks block by block (16 bytes of BLAKE3 per block), in parallel, and
//! only the blocks whose digests differ are sent (`lifeboat_policy::diff_digests`).
//!
//! A block is read while the guest may write it. That is safe: re-protect ships every record
//! after its start position, so a block a write changes during the hash is rewritten by that
//! record at the target whatever its digest said.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Bytes of a block digest.
pub const DIGEST_LEN: usize = 16;

/// The digests of `path`'s first `size` bytes, per `block` (the last block may be short),
/// read by a few threads.
pub fn digests(path: &Path, size: u64, block: u64) -> Result<Vec<[u8; DIGEST_LEN]>> {
    if block == 0 || block > 64 << 20 {
        bail!("digest block size {block}: use 1 byte to 64 MiB");
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = size.div_ceil(block);
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(2)
        .clamp(1, 8) as u64;
    let per = n.div_ceil(threads).max(1);
    let mut out = vec![[0u8; DIGEST_LEN]; n as usize];
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for (t, part) in out.chunks_mut(per as usize).enumerate() {
            let f = &f;
            handles.push(s.spawn(move || -> Result<()> {
                let first = t as u64 * per;
                // Read several blocks at a time (up to 4 MiB).
                let batch = ((4 << 20) / block).max(1);
                let mut buf = vec![0u8; (batch * block) as usize];
                let mut k = 0u64;
                while k < part.len() as u64 {
                    let m = batch.min(part.len() as u64 - k);
                    let off = (first + k) * block;
                    let len = (m * block).min(size - off) as usize;
                    f.read_exact_at(&mut buf[..len], off)
                        .with_context(|| format!("reading {} at {off}", path.display()))?;
                    for j in 0..m {
                        let a = (j * block) as usize;
                        let b = (a + block as usize).min(len);
                        let h = blake3::hash(&buf[a..b]);
                        part[(k + j) as usize].copy_from_slice(&h.as_bytes()[..DIGEST_LEN]);
                    }
                    k += m;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a digest thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Hex text of digests, concatenated.
pub fn to_hex(d: &[[u8; DIGEST_LEN]]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(d.len() * DIGEST_LEN * 2);
    for b in d.iter().flatten() {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parses [`to_hex`]'s text.
pub fn from_hex(s: &str) -> Result<Vec<[u8; DIGEST_LEN]>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(DIGEST_LEN * 2) {
        bail!(
            "digest text of {} characters is not a whole number of {}-byte digests",
            b.len(),
            DIGEST_LEN
        );
    }
    let nib = |c: u8| -> Result<u8> {
        Ok(match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => bail!(
                "digest text has a character that is not lowercase hex: {:?}",
                c as char
            ),
        })
    };
    b.chunks(DIGEST_LEN * 2)
        .map(|c| {
            let mut d = [0u8; DIGEST_LEN];
            for (i, x) in d.iter_mut().enumerate() {
                *x = (nib(c[2 * i])? << 4) | nib(c[2 * i + 1])?;
            }
            Ok(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_find_exactly_the_changed_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let size = 10 * 4096 + 100;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&a, &data).unwrap();
        let mut changed = data.clone();
        changed[3 * 4096 + 5] ^= 1;
        changed[size as usize - 1] ^= 1;
        std::fs::write(&b, &changed).unwrap();
        let da = digests(&a, size, 4096).unwrap();
        let db = digests(&b, size, 4096).unwrap();
        assert_eq!(da.len(), 11);
        let diff = lifeboat_policy::diff_digests(&da, &db, 4096, size);
        assert_eq!(diff.ranges(), &[(3 * 4096, 4096), (10 * 4096, 100)]);
        assert_eq!(from_hex(&to_hex(&da)).unwrap(), da);
        assert!(from_hex("zz").is_err());
        assert!(from_hex(&"g".repeat(32)).is_err());
        assert!(digests(&a, size, 0).is_err());
    }
}
