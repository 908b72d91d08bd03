//! The narrow trait between the NBD protocol and whatever stores the bytes.

use std::io;

/// One run of blocks reported by [`BlockDevice::block_status`] (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (the server clamps and merges as the protocol needs).
    pub length: u64,
    /// `NBD_STATE_HOLE`: the range is not allocated.
    pub hole: bool,
    /// `NBD_STATE_ZERO`: the range reads as zeroes.
    pub zero: bool,
}

/// Options of a WRITE_ZEROES request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The client allows the range to be punched (no `NBD_CMD_FLAG_NO_HOLE`).
    pub may_trim: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with [`io::ErrorKind::Unsupported`] rather than write
    /// zeroes slowly.
    pub fast_only: bool,
    /// `NBD_CMD_FLAG_FUA`: durable before the reply.
    pub fua: bool,
}

/// A disk the NBD server exports. All methods are called from the server's tasks and must be
/// safe to call concurrently from several connections. Offsets and lengths have already been
/// checked against [`BlockDevice::size`] by the server.
///
/// Error mapping to NBD error codes: `PermissionDenied` -> EPERM, `InvalidInput` -> EINVAL,
/// `Unsupported` -> ENOTSUP, `StorageFull` / ENOSPC -> ENOSPC, anything else -> EIO.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused (the export is advertised read-only).
    fn read_only(&self) -> bool;
    /// Whether FLUSH on one connection makes the acknowledged writes of every connection durable
    /// (then the server advertises `NBD_FLAG_CAN_MULTI_CONN`).
    fn can_multi_conn(&self) -> bool;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`; durable before returning when `fua`.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;
    /// Sets `len` bytes at `offset` to zero.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()>;
    /// Discards `len` bytes at `offset` (advisory; Lifeboat devices read them back as zeroes).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Makes every write acknowledged so far durable.
    /// Whether a write may have to wait now (e.g. the device's journal holds writes for a
    /// multi-VM consistency cut): the server then runs it off the connection task, as it does
    /// FUA writes, so that a waiting write never blocks an async worker. Default: never.
    fn write_may_wait(&self) -> bool {
        false
    }
    fn flush(&self) -> io::Result<()>;
    /// Allocation status of `[offset, offset + len)`: at least one extent, extents in order,
    /// starting at `offset`; may cover less than `len` (the client asks again).
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>>;
}
