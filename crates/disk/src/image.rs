//! A raw disk image file: positional reads and writes, zeroing and allocation status.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use lifeboat_nbd::Extent;

/// A raw image file opened for the disk server.
#[derive(Debug)]
pub struct RawImage {
    path: PathBuf,
    file: File,
    size: u64,
}

impl RawImage {
    /// Opens `path` (read-write unless `read_only`).
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (give a raw image file)",
            ));
        }
        Ok(RawImage {
            path: path.to_path_buf(),
            file,
            size: meta.len(),
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `data` at `offset` (page cache; see [`RawImage::sync`]).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Makes the image's data durable (fdatasync).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Sets a range to zeroes: punches a hole when `may_punch`, else zeroes it in place
    /// (`FALLOC_FL_ZERO_RANGE`). Returns `Unsupported` if the filesystem cannot do either fast,
    /// leaving the caller to write zeroes.
    pub fn zero_fast(&self, offset: u64, len: u64, may_punch: bool) -> io::Result<()> {
        let mode = if may_punch {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        let (off, l) = (to_off(offset)?, to_off(len)?);
        // SAFETY: fallocate(2) on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, l) };
        if r == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the image's filesystem cannot zero ranges fast",
            )),
            _ => Err(err),
        }
    }

    /// Sets a range to zeroes, the slow way if need be.
    pub fn zero(&self, offset: u64, len: u64, may_punch: bool) -> io::Result<()> {
        match self.zero_fast(offset, len, may_punch) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.write_zeroes_slow(offset, len),
            other => other,
        }
    }

    fn write_zeroes_slow(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Allocation of `[offset, offset + len)` from `SEEK_DATA` / `SEEK_HOLE`: holes read as
    /// zeroes. Returns at least one extent.
    pub fn extents(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let end = offset.saturating_add(len).min(self.size);
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < 1024 {
            let data = seek(fd, pos, libc::SEEK_DATA)?;
            match data {
                Some(d) if d <= pos => {
                    let hole = seek(fd, pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
                    let hole = hole.max(pos + 1).min(end);
                    out.push(Extent {
                        length: hole - pos,
                        hole: false,
                        zero: false,
                    });
                    pos = hole;
                }
                other => {
                    // A hole up to the next data (or the end).
                    let next = other.unwrap_or(end).min(end);
                    out.push(Extent {
                        length: next - pos,
                        hole: true,
                        zero: true,
                    });
                    pos = next;
                }
            }
        }
        if out.is_empty() {
            out.push(Extent {
                length: len.max(1),
                hole: false,
                zero: false,
            });
        }
        Ok(out)
    }
}

fn to_off(v: u64) -> io::Result<i64> {
    i64::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// lseek(2) with SEEK_DATA / SEEK_HOLE: `None` when there is no more data (ENXIO).
fn seek(fd: i32, pos: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: lseek(2) on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(fd, to_off(pos)?, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}
