//! [`MemDevice`]: an in-memory [`BlockDevice`], a **test double** for tests, fuzzing and
//! benchmarks of the protocol layer. Not for production data: nothing is persisted.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::device::{BlockDevice, Extent, ZeroFlags};

/// Allocation granularity of a [`MemDevice`] unless set otherwise.
pub const DEFAULT_MEM_BLOCK: u64 = 4096;

/// An in-memory disk: bytes in a `Vec<u8>` behind a mutex, plus one "allocated" bit per block
/// so that `block_status` reports holes the way a sparse file would.
///
/// Semantics: a block becomes allocated when any byte of it is written; TRIM and WRITE_ZEROES
/// (unless `NO_HOLE`) deallocate the blocks they cover entirely and zero the partial ones;
/// unallocated blocks always read as zeroes. FLUSH only counts calls (and can be slowed down
/// with [`MemDevice::with_flush_delay`] to test that a flush does not stall a connection).
#[derive(Debug)]
pub struct MemDevice {
    state: Mutex<State>,
    size: u64,
    block: u64,
    read_only: bool,
    multi_conn: bool,
    flush_delay: Duration,
    flushes: AtomicU64,
}

#[derive(Debug)]
struct State {
    data: Vec<u8>,
    allocated: Vec<bool>,
}

impl MemDevice {
    /// An all-hole device of `size` bytes (4 KiB blocks, writable, multi-conn).
    pub fn new(size: usize) -> Self {
        Self::with_block_size(size, DEFAULT_MEM_BLOCK)
    }

    /// An all-hole device with allocation blocks of `block` bytes (at least 1).
    pub fn with_block_size(size: usize, block: u64) -> Self {
        let block = block.max(1);
        let blocks = (size as u64).div_ceil(block) as usize;
        Self {
            state: Mutex::new(State {
                data: vec![0; size],
                allocated: vec![false; blocks],
            }),
            size: size as u64,
            block,
            read_only: false,
            multi_conn: true,
            flush_delay: Duration::ZERO,
            flushes: AtomicU64::new(0),
        }
    }

    /// A device holding `data`; blocks that are entirely zero start as holes.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let dev = Self::new(data.len());
        {
            let mut st = dev.lock();
            let block = dev.block as usize;
            for (i, chunk) in data.chunks(block).enumerate() {
                st.allocated[i] = chunk.iter().any(|&b| b != 0);
            }
            st.data = data;
        }
        dev
    }

    /// Sets whether writes are refused (`EPERM`) and the export is advertised read-only.
    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets whether the export is advertised with `NBD_FLAG_CAN_MULTI_CONN`.
    pub fn with_multi_conn(mut self, multi_conn: bool) -> Self {
        self.multi_conn = multi_conn;
        self
    }

    /// Makes every flush sleep this long (on the calling thread).
    pub fn with_flush_delay(mut self, delay: Duration) -> Self {
        self.flush_delay = delay;
        self
    }

    /// A copy of the whole contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().data.clone()
    }

    /// Whether block `index` (of the allocation granularity) is allocated.
    pub fn is_allocated(&self, index: usize) -> bool {
        self.lock().allocated.get(index).copied().unwrap_or(false)
    }

    /// Allocation granularity in bytes.
    pub fn block_size(&self) -> u64 {
        self.block
    }

    /// Number of completed flushes.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the Vecs inconsistent in a way that
        // matters for a test double; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn range(&self, offset: u64, len: u64) -> io::Result<(usize, usize)> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok((offset as usize, end as usize)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range past the end of the device",
            )),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only device",
            ))
        } else {
            Ok(())
        }
    }

    /// Zeroes `[start, end)`; deallocates whole blocks inside it when `punch`.
    fn zero_range(&self, st: &mut State, start: usize, end: usize, punch: bool) {
        st.data[start..end].fill(0);
        if punch {
            let b = self.block as usize;
            let first = start.div_ceil(b);
            // A partial last block at the end of the device counts as whole.
            let last = if end == self.size as usize {
                end.div_ceil(b)
            } else {
                end / b
            };
            for i in first..last.max(first) {
                st.allocated[i] = false;
            }
        }
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        self.multi_conn
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (start, end) = self.range(offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.lock().data[start..end]);
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.check_writable()?;
        let (start, end) = self.range(offset, data.len() as u64)?;
        if start == end {
            return Ok(());
        }
        {
            let mut st = self.lock();
            st.data[start..end].copy_from_slice(data);
            let b = self.block as usize;
            for i in start / b..end.div_ceil(b) {
                st.allocated[i] = true;
            }
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check_writable()?;
        let (start, end) = self.range(offset, len)?;
        let mut st = self.lock();
        self.zero_range(&mut st, start, end, flags.may_trim);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        self.check_writable()?;
        let (start, end) = self.range(offset, len)?;
        let mut st = self.lock();
        self.zero_range(&mut st, start, end, true);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if !self.flush_delay.is_zero() {
            std::thread::sleep(self.flush_delay);
        }
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let (start, end) = self.range(offset, len)?;
        let st = self.lock();
        let b = self.block;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = start as u64;
        while pos < end as u64 {
            let index = (pos / b) as usize;
            let next = ((pos / b + 1) * b).min(end as u64);
            let hole = !st.allocated.get(index).copied().unwrap_or(false);
            match out.last_mut() {
                Some(last) if last.hole == hole => last.length += next - pos,
                _ => out.push(Extent {
                    length: next - pos,
                    hole,
                    zero: hole,
                }),
            }
            pos = next;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_allocates_and_trim_punches() {
        let d = MemDevice::new(4 * 4096);
        d.write_at(4096 + 10, b"abc", false).unwrap();
        assert!(!d.is_allocated(0));
        assert!(d.is_allocated(1));
        let ext = d.block_status(0, 4 * 4096).unwrap();
        assert_eq!(ext.len(), 3);
        assert!(ext[0].hole && !ext[1].hole && ext[2].hole);
        d.trim(4096, 4096, false).unwrap();
        assert!(!d.is_allocated(1));
        let mut buf = [1u8; 3];
        d.read_at(4096 + 10, &mut buf).unwrap();
        assert_eq!(buf, [0, 0, 0]);
    }

    #[test]
    fn out_of_range_is_invalid_input() {
        let d = MemDevice::new(100);
        let mut buf = [0u8; 10];
        let err = d.read_at(95, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
