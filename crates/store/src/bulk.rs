//! Bulk writing: reusable chunk buffers, and a local directory's unsynced put.
//!
//! A [`ChunkBuf`] holds a chunk's plain data after room for the chunk object's header: when the
//! chunk is stored uncompressed, its object is the buffer itself (header written in place), so
//! the data is copied once, into the file. Buffers come from a [`ChunkPool`] and go back to it,
//! so a copy keeps touching the same memory. A local directory's unsynced put
//! ([`put_local`]) starts the file's write-back at once, and its sync drops the written pages
//! from the page cache once they are on disk: the page cache a bulk copy fills stays a few
//! batches deep and its pages are reused, instead of gigabytes of fresh memory (which the
//! kernel must find, zero and later reclaim; in a virtual machine, often fault in from the
//! host) filled with data nobody reads soon.

use std::alloc::Layout;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::backend::{PutMode, PutOutcome};
use crate::format::CHUNK_HEADER_LEN;

/// Alignment of chunk buffers: a page.
const BUF_ALIGN: usize = 4096;

/// One chunk's plain data, with room before it for its object header (see the module doc).
/// Fill it with [`ChunkBuf::read_exact_at`] (or a [`ChunkPool`]'s); hand it to
/// [`crate::PreparedChunk::from_buf`].
pub struct ChunkBuf {
    mem: Option<Mem>,
    /// Plain length; bytes `0..CHUNK_HEADER_LEN + len` of `mem` are initialized.
    len: usize,
    /// Where the memory goes back when the buffer is dropped.
    pool: Option<Arc<PoolInner>>,
}

/// A page-aligned allocation.
struct Mem {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: a `Mem` owns its allocation alone (like a `Vec<u8>`).
unsafe impl Send for Mem {}
// SAFETY: as above; shared references only read it.
unsafe impl Sync for Mem {}

impl Mem {
    /// At least `size` bytes.
    fn new(size: usize) -> io::Result<Self> {
        let size = size.div_ceil(BUF_ALIGN).max(1) * BUF_ALIGN;
        let layout = Layout::from_size_align(size, BUF_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // SAFETY: at most `size` bytes, inside the allocation. The header room is initialized
        // from here on (reused memory keeps an older header: initialized too).
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, CHUNK_HEADER_LEN.min(size)) };
        Ok(Mem { ptr, layout })
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in `Mem::new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Chunk buffers for a bulk reader to reuse: a buffer comes back to its pool when its chunk
/// (or its object, once written) is dropped, so a copy that keeps a few chunks in flight
/// touches the same memory over and over instead of having fresh memory mapped and zeroed by
/// the kernel for every chunk. Keeps at most `keep` free buffers; the memory goes when the
/// pool and its last buffer are dropped.
#[derive(Clone)]
pub struct ChunkPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    free: Mutex<Vec<Mem>>,
    keep: usize,
}

impl ChunkPool {
    /// A pool that keeps up to `keep` free buffers.
    pub fn new(keep: usize) -> Self {
        ChunkPool {
            inner: Arc::new(PoolInner {
                free: Mutex::new(Vec::new()),
                keep,
            }),
        }
    }

    /// [`ChunkBuf::read_exact_at`] into a buffer of this pool.
    pub fn read_exact_at(&self, file: &File, offset: u64, len: usize) -> io::Result<ChunkBuf> {
        let need = CHUNK_HEADER_LEN + len;
        let reused = {
            let mut free = self.inner.free.lock().unwrap_or_else(|p| p.into_inner());
            free.iter()
                .position(|m| m.layout.size() >= need)
                .map(|i| free.swap_remove(i))
        };
        let mem = match reused {
            Some(m) => m,
            None => Mem::new(need)?,
        };
        ChunkBuf::fill(mem, Some(self.inner.clone()), file, offset, len)
    }
}

impl std::fmt::Debug for ChunkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkPool")
            .field("keep", &self.inner.keep)
            .finish()
    }
}

impl ChunkBuf {
    /// Reads exactly `len` bytes of `file` at `offset` into a new buffer (an error if the file
    /// ends first).
    pub fn read_exact_at(file: &File, offset: u64, len: usize) -> io::Result<Self> {
        ChunkBuf::fill(Mem::new(CHUNK_HEADER_LEN + len)?, None, file, offset, len)
    }

    fn fill(
        mem: Mem,
        pool: Option<Arc<PoolInner>>,
        file: &File,
        offset: u64,
        len: usize,
    ) -> io::Result<Self> {
        let dst = mem.ptr.as_ptr();
        debug_assert!(CHUNK_HEADER_LEN + len <= mem.layout.size());
        // Until filled, the buffer's length is 0 (only the header is initialized).
        let mut buf = ChunkBuf {
            mem: Some(mem),
            len: 0,
            pool,
        };
        let mut got = 0usize;
        while got < len {
            let at = libc::off_t::try_from(offset + got as u64)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            // SAFETY: `CHUNK_HEADER_LEN + len` bytes fit in the allocation: the destination,
            // `len - got` bytes from `CHUNK_HEADER_LEN + got`, lies inside it, and pread writes
            // at most that many.
            let n = unsafe {
                libc::pread(
                    std::os::fd::AsRawFd::as_raw_fd(file),
                    dst.add(CHUNK_HEADER_LEN + got).cast(),
                    len - got,
                    at,
                )
            };
            match n {
                n if n < 0 => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => got += n as usize,
            }
        }
        buf.len = len;
        Ok(buf)
    }

    /// The plain data.
    pub fn plain(&self) -> &[u8] {
        &self.object()[CHUNK_HEADER_LEN..]
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The object: header room, then the plain data.
    fn object(&self) -> &[u8] {
        match &self.mem {
            // SAFETY: these bytes are initialized (struct invariant) and owned by `self`.
            Some(m) => unsafe {
                std::slice::from_raw_parts(m.ptr.as_ptr(), CHUNK_HEADER_LEN + self.len)
            },
            None => &[],
        }
    }

    /// Writes the object header in place and returns the whole object (header and data) as
    /// one [`Bytes`] over this buffer (no copy).
    pub(crate) fn into_object(self, header: &[u8; CHUNK_HEADER_LEN]) -> Bytes {
        if let Some(m) = &self.mem {
            // SAFETY: the header room is inside the allocation, owned by `self` (not shared
            // yet).
            unsafe {
                std::ptr::copy_nonoverlapping(header.as_ptr(), m.ptr.as_ptr(), CHUNK_HEADER_LEN)
            };
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        self.object()
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let (Some(mem), Some(pool)) = (self.mem.take(), &self.pool) {
            let mut free = pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < pool.keep {
                free.push(mem);
            }
        }
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuf").field("len", &self.len).finish()
    }
}

/// [`crate::Backend::put_unsynced`] of a local directory: writes `parts` to a staging file
/// `<path>#<n>` (the same names as `object_store`'s `LocalFileSystem`, so listings skip them
/// and GC removes them when left behind), starts its write-back, then publishes it
/// ([`publish`]). No fsync: see [`crate::Backend::sync`].
pub(crate) fn put_local(path: &Path, parts: &[Bytes], mode: PutMode) -> io::Result<PutOutcome> {
    let (file, staging) = new_staging(path)?;
    if let Err(e) = write_parts(&file, parts) {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    start_writeback(&file);
    drop(file);
    publish(&staging, path, mode)
}

/// Publishes the written staging file `staging` as `path`: `rename(2)` (overwrite), or for a
/// create `renameat2(RENAME_NOREPLACE)` where the filesystem has it, else `link(2)` then
/// unlink (both fail if `path` exists: [`PutOutcome::AlreadyExists`]). `path`'s directory is
/// created if missing. The staging file's name is always gone afterwards.
pub(crate) fn publish(staging: &Path, path: &Path, mode: PutMode) -> io::Result<PutOutcome> {
    let attempt = || -> io::Result<(PutOutcome, bool)> {
        match mode {
            PutMode::Overwrite => {
                std::fs::rename(staging, path).map(|()| (PutOutcome::Written, true))
            }
            PutMode::Create => match rename_noreplace(staging, path) {
                Ok(true) => Ok((PutOutcome::Written, true)),
                Ok(false) => match std::fs::hard_link(staging, path) {
                    Ok(()) => Ok((PutOutcome::Written, false)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Ok((PutOutcome::AlreadyExists, false))
                    }
                    Err(e) => Err(e),
                },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Ok((PutOutcome::AlreadyExists, false))
                }
                Err(e) => Err(e),
            },
        }
    };
    // The outcome, and whether the staging file's name is gone (renamed into place).
    let mut published = attempt();
    if matches!(&published, Err(e) if e.kind() == io::ErrorKind::NotFound) {
        if let Some(dir) = path.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                published = attempt();
            }
        }
    }
    if !matches!(published, Ok((_, true))) {
        // The staging file was linked (or publishing failed): remove its name. A leftover
        // (crash) is removed by GC.
        let _ = std::fs::remove_file(staging);
    }
    published.map(|(outcome, _)| outcome)
}

/// Renames `from` to `to` unless `to` exists (Linux `renameat2(RENAME_NOREPLACE)`: one
/// directory operation where link + unlink are two). `Ok(false)`: the filesystem or system
/// cannot do it (the caller links instead); an existing `to` is `AlreadyExists`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
        };
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: two NUL-terminated paths that outlive the call.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (from, to);
        Ok(false)
    }
}

/// A new staging file for `path` (its directories created if missing).
pub(crate) fn new_staging(path: &Path) -> io::Result<(File, PathBuf)> {
    let mut n = 1u32;
    loop {
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!("#{n}"));
        let staging = PathBuf::from(staging);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => return Ok((f, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = path
                    .parent()
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory"))?;
                std::fs::create_dir_all(dir)?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn write_parts(file: &File, parts: &[Bytes]) -> io::Result<()> {
    let mut at = 0u64;
    for p in parts {
        file.write_all_at(p, at)?;
        at += p.len() as u64;
    }
    Ok(())
}

/// Asks the kernel to start writing a file's dirty pages back, without waiting (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`); elsewhere nothing (the sync does it all).
pub(crate) fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it touches no memory of ours. Its
        // result does not matter: the sync that follows is what makes the file durable.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Drops a file's clean pages from the page cache (after a sync: all of them); a hint.
pub(crate) fn drop_cached(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it touches no memory of ours.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_buf_reads_and_becomes_its_object() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let b = ChunkBuf::read_exact_at(&f, 1000, 50_000).unwrap();
        assert_eq!(b.plain(), &data[1000..51_000]);
        assert!(
            ChunkBuf::read_exact_at(&f, 60_000, 50_000).is_err(),
            "past the end"
        );
        let obj = b.into_object(&[7u8; CHUNK_HEADER_LEN]);
        assert_eq!(&obj[..CHUNK_HEADER_LEN], &[7u8; CHUNK_HEADER_LEN]);
        assert_eq!(&obj[CHUNK_HEADER_LEN..], &data[1000..51_000]);
    }

    #[test]
    fn pooled_buffers_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 249) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        let pool = ChunkPool::new(2);
        let a = pool.read_exact_at(&f, 0, 100_000).unwrap();
        let a_ptr = a.plain().as_ptr();
        let obj = a.into_object(&[3u8; CHUNK_HEADER_LEN]);
        assert_eq!(&obj[CHUNK_HEADER_LEN..], &data[..100_000]);
        drop(obj);
        // The same memory again, refilled; a smaller chunk fits in it too.
        let b = pool.read_exact_at(&f, 1, 99_000).unwrap();
        assert_eq!(b.plain().as_ptr(), a_ptr);
        assert_eq!(b.plain(), &data[1..99_001]);
        // A larger one does not: new memory.
        let c = pool.read_exact_at(&f, 0, 150_000).unwrap();
        assert_eq!(c.plain(), &data[..150_000]);
        // At most `keep` are kept; dropping the pool first is fine.
        let d = pool.read_exact_at(&f, 0, 10).unwrap();
        drop(pool);
        drop((b, c, d));
    }

    #[test]
    fn local_puts() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..3 * BUF_ALIGN as u32 + 77)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let f = File::open(&src).unwrap();
        for len in [1usize, 100, BUF_ALIGN, 2 * BUF_ALIGN + 5, data.len()] {
            let obj = ChunkBuf::read_exact_at(&f, 0, len)
                .unwrap()
                .into_object(&[1u8; CHUNK_HEADER_LEN]);
            let key = dir.path().join(format!("o/{len}/x"));
            let out = put_local(&key, std::slice::from_ref(&obj), PutMode::Create).unwrap();
            assert_eq!(out, PutOutcome::Written);
            assert_eq!(std::fs::read(&key).unwrap(), obj);
            // Create-only: refused, unchanged; overwrite replaces; no staging file left.
            let other = Bytes::from_static(b"other");
            let again = put_local(&key, std::slice::from_ref(&other), PutMode::Create).unwrap();
            assert_eq!(again, PutOutcome::AlreadyExists);
            assert_eq!(std::fs::read(&key).unwrap(), obj);
            put_local(&key, &[Bytes::new(), other.clone()], PutMode::Overwrite).unwrap();
            assert_eq!(std::fs::read(&key).unwrap(), other);
            let names: Vec<_> = std::fs::read_dir(key.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["x"]);
        }
    }
}
