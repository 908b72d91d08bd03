//! Reading disk images for initial replication ([`crate::Processor::seed_copy`]): threads that
//! read an image's chunks (holes of a sparse image are not read) and prepare them for the store
//! (zero check, BLAKE3, zstd), ahead of the writer, into a bounded queue.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lifeboat_store::{ChunkPool, ChunkStager, PreparedChunk};
use tokio::sync::mpsc;

/// A chunk of the image, prepared, or why it could not be read.
pub(crate) type Item = io::Result<(u64, PreparedChunk)>;

/// Starts `threads` blocking tasks that read and prepare the chunks of `file` (`size` bytes,
/// chunks of `chunk` bytes), taking the next unread chunk each time, and returns the queue
/// they fill: at most `ahead` chunks wait in it (each thread holds one more while it waits),
/// so memory stays bounded however fast the readers are. The chunks arrive roughly in order.
/// The readers stop after the first error (sent) or when the receiver is dropped.
pub(crate) fn read_ahead(
    file: Arc<File>,
    size: u64,
    chunk: u64,
    prep: Prepare,
    threads: usize,
    ahead: usize,
    pool: &ChunkPool,
) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(ahead.max(1));
    let chunks = size.div_ceil(chunk);
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..threads.max(1) {
        let (tx, next, file, pool) = (tx.clone(), next.clone(), file.clone(), pool.clone());
        let prep = prep.clone();
        tokio::task::spawn_blocking(move || loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= chunks {
                return;
            }
            let start = index * chunk;
            let len = (size - start).min(chunk) as usize;
            let item = prepare(&pool, &prep, &file, start, len).map(|c| (index, c));
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                // Stop the others too.
                next.store(chunks, Ordering::Relaxed);
                return;
            }
        });
    }
    rx
}

/// How chunks are prepared: zstd's level, and a stager when the store is a local directory.
#[derive(Debug, Clone)]
pub(crate) struct Prepare {
    pub(crate) zstd_level: i32,
    pub(crate) stager: Option<ChunkStager>,
}

/// The chunk of `file` at `start`, prepared: a hole is a zero chunk; with a stager (a
/// local-directory store) it is streamed into the store unless it would compress; else it is
/// read into a buffer of `pool` and prepared there.
fn prepare(
    pool: &ChunkPool,
    prep: &Prepare,
    file: &File,
    start: u64,
    len: usize,
) -> io::Result<PreparedChunk> {
    if in_hole(file, start, len as u64) {
        return Ok(PreparedChunk::zero(len));
    }
    if let Some(Some(staged)) = prep
        .stager
        .as_ref()
        .map(|s| s.stage(file, start, len))
        .transpose()?
    {
        return Ok(staged);
    }
    Ok(PreparedChunk::from_buf(
        pool.read_exact_at(file, start, len)?,
        prep.zstd_level,
    ))
}

/// Whether `[start, start + len)` of `file` lies in a hole (Linux `SEEK_DATA`: the next data at
/// or after `start` is past the range, or there is none). False when the filesystem cannot
/// tell. A write racing with this is like one racing with a read: the caller copies an image
/// while it may change, and the journal covers what changes meanwhile.
fn in_hole(file: &File, start: u64, len: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(off) = libc::off_t::try_from(start) else {
            return false;
        };
        // SAFETY: a plain syscall on an open descriptor; it touches no memory of ours. The file
        // offset it moves is not used (reads are positional).
        let next = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
        if next < 0 {
            // ENXIO: no data at or after `start`. Anything else: cannot tell.
            return io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
        }
        next as u64 >= start.saturating_add(len)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, start, len);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// The `len` bytes of `file` at `start` (in a buffer of `pool`), or `None` if they are all in
    /// a hole (they read as zeroes: nothing to read).
    fn read_chunk(
        pool: &ChunkPool,
        file: &File,
        start: u64,
        len: usize,
    ) -> io::Result<Option<lifeboat_store::ChunkBuf>> {
        if in_hole(file, start, len as u64) {
            return Ok(None);
        }
        pool.read_exact_at(file, start, len).map(Some)
    }

    #[test]
    fn reads_data_and_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8 | 1).collect();
        f.write_all_at(&data, 3 << 20).unwrap();
        f.write_all_at(&vec![0u8; 1 << 20], 6 << 20).unwrap();
        f.flush().unwrap();
        let f = File::open(&path).unwrap();
        let pool = ChunkPool::new(1);
        let mib = 1usize << 20;
        // Data is returned as it is.
        assert_eq!(
            read_chunk(&pool, &f, 3 << 20, mib)
                .unwrap()
                .unwrap()
                .plain(),
            &data[..]
        );
        // Across the edge of data and hole.
        let got = read_chunk(&pool, &f, (3 << 20) + 4096, mib)
            .unwrap()
            .unwrap();
        let got = got.plain();
        assert_eq!(&got[..mib - 4096], &data[4096..]);
        assert!(got[mib - 4096..].iter().all(|&b| b == 0));
        // Written zeroes are data (read, then found zero by the store).
        let z = read_chunk(&pool, &f, 6 << 20, mib).unwrap();
        if let Some(z) = z {
            assert!(z.plain().iter().all(|&b| b == 0));
        }
        // A hole is never wrong: if reported, it reads as zeroes.
        for at in [0u64, 1 << 20, 5 << 20, 7 << 20] {
            if let Some(d) = read_chunk(&pool, &f, at, mib).unwrap() {
                assert!(d.plain().iter().all(|&b| b == 0));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_yields_every_chunk_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let f = File::create(&path).unwrap();
        let size = (5 << 20) + 12345;
        f.set_len(size).unwrap();
        let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 253) as u8 | 1).collect();
        f.write_all_at(&data, 2 << 20).unwrap();
        let f = Arc::new(File::open(&path).unwrap());
        let prep = Prepare {
            zstd_level: 1,
            stager: None,
        };
        let mut rx = read_ahead(f, size, 1 << 20, prep, 3, 2, &ChunkPool::new(4));
        let mut seen = Vec::new();
        while let Some(item) = rx.recv().await {
            let (i, c) = item.unwrap();
            assert_eq!(c.is_zero(), i != 2, "chunk {i}");
            let want = if i == 5 { 12345 } else { 1 << 20 };
            assert_eq!(c.len(), want);
            seen.push(i);
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
    }
}
