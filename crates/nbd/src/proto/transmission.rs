//! Transmission phase: requests, simple and structured replies, block status.

use std::io;

use super::*;
use crate::device::Extent;

// --- transmission --------------------------------------------------------------------------

/// A transmission command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Command {
    pub fn from_u16(v: u16) -> Self {
        match v {
            NBD_CMD_READ => Command::Read,
            NBD_CMD_WRITE => Command::Write,
            NBD_CMD_DISC => Command::Disc,
            NBD_CMD_FLUSH => Command::Flush,
            NBD_CMD_TRIM => Command::Trim,
            NBD_CMD_CACHE => Command::Cache,
            NBD_CMD_WRITE_ZEROES => Command::WriteZeroes,
            NBD_CMD_BLOCK_STATUS => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Command::Read => NBD_CMD_READ,
            Command::Write => NBD_CMD_WRITE,
            Command::Disc => NBD_CMD_DISC,
            Command::Flush => NBD_CMD_FLUSH,
            Command::Trim => NBD_CMD_TRIM,
            Command::Cache => NBD_CMD_CACHE,
            Command::WriteZeroes => NBD_CMD_WRITE_ZEROES,
            Command::BlockStatus => NBD_CMD_BLOCK_STATUS,
            Command::Unknown(v) => v,
        }
    }
}

/// The 28-byte transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "request header");
        let magic = c.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request header",
                got: u64::from(magic),
            });
        }
        let flags = c.u16()?;
        let command = Command::from_u16(c.u16()?);
        let handle = c.u64()?;
        let offset = c.u64()?;
        let length = c.u32()?;
        c.finish()?;
        Ok(Self {
            flags,
            command,
            handle,
            offset,
            length,
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_u16().to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }
}

/// Whether `buf` starts with a whole request (header and, for WRITE, payload). Used to decide
/// whether more work is already queued before flushing replies; a malformed header counts as
/// complete (it will be processed, and refused, without reading more).
pub fn complete_request_buffered(buf: &[u8]) -> bool {
    if buf.len() < REQUEST_LEN {
        return false;
    }
    match Request::parse(&buf[..REQUEST_LEN]) {
        Ok(req) => buf.len() - REQUEST_LEN >= req.payload_len() as usize,
        Err(_) => true,
    }
}

/// A simple reply header (no payload, or followed by read data).
pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&handle.to_be_bytes());
    out
}

/// A parsed simple reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub handle: u64,
}

impl SimpleReply {
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "simple reply");
        let magic = c.u32()?;
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "simple reply",
                got: u64::from(magic),
            });
        }
        let error = c.u32()?;
        let handle = c.u64()?;
        c.finish()?;
        Ok(Self { error, handle })
    }
}

/// A structured reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub length: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut out = [0u8; CHUNK_HEADER_LEN];
        out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "structured reply chunk");
        let magic = c.u32()?;
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "structured reply chunk",
                got: u64::from(magic),
            });
        }
        let flags = c.u16()?;
        let kind = c.u16()?;
        let handle = c.u64()?;
        let length = c.u32()?;
        c.finish()?;
        Ok(Self {
            flags,
            kind,
            handle,
            length,
        })
    }
}

/// `NBD_REPLY_TYPE_NONE` with `NBD_REPLY_FLAG_DONE`.
pub fn encode_none_chunk(handle: u64) -> [u8; CHUNK_HEADER_LEN] {
    ChunkHeader {
        flags: NBD_REPLY_FLAG_DONE,
        kind: NBD_REPLY_TYPE_NONE,
        handle,
        length: 0,
    }
    .encode()
}

/// Header and offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk carrying `data_len` bytes; the
/// data follows on the wire.
pub fn encode_offset_data_header(
    flags: u16,
    handle: u64,
    offset: u64,
    data_len: usize,
) -> Result<[u8; CHUNK_HEADER_LEN + 8], ProtoError> {
    let length = data_len
        .checked_add(8)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(ProtoError::TooLarge {
            what: "OFFSET_DATA chunk",
            len: data_len,
        })?;
    let mut out = [0u8; CHUNK_HEADER_LEN + 8];
    out[..CHUNK_HEADER_LEN].copy_from_slice(
        &ChunkHeader {
            flags,
            kind: NBD_REPLY_TYPE_OFFSET_DATA,
            handle,
            length,
        }
        .encode(),
    );
    out[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    Ok(out)
}

/// Appends an `NBD_REPLY_TYPE_ERROR` chunk (with `NBD_REPLY_FLAG_DONE`); the message is cut to
/// [`MAX_STRING_LEN`].
pub fn encode_error_chunk(out: &mut Vec<u8>, handle: u64, error: u32, message: &str) {
    let msg = truncate_str(message, MAX_STRING_LEN);
    let header = ChunkHeader {
        flags: NBD_REPLY_FLAG_DONE,
        kind: NBD_REPLY_TYPE_ERROR,
        handle,
        // At most 6 + 4096.
        length: 6 + msg.len() as u32,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// Parses the payload of an error chunk (client side): error value and message.
pub fn parse_error_chunk(payload: &[u8]) -> Result<(u32, String), ProtoError> {
    let mut c = Cursor::new(payload, "error chunk");
    let error = c.u32()?;
    let len = c.u16()? as usize;
    let msg = to_string(c.take(len)?, "error message")?;
    Ok((error, msg))
}

/// One `base:allocation` descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDescriptor {
    pub length: u32,
    pub status: u32,
}

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk (with `NBD_REPLY_FLAG_DONE`).
pub fn encode_block_status(
    out: &mut Vec<u8>,
    handle: u64,
    context_id: u32,
    descriptors: &[BlockDescriptor],
) -> Result<(), ProtoError> {
    let length = descriptors
        .len()
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(ProtoError::TooLarge {
            what: "BLOCK_STATUS chunk",
            len: descriptors.len(),
        })?;
    let header = ChunkHeader {
        flags: NBD_REPLY_FLAG_DONE,
        kind: NBD_REPLY_TYPE_BLOCK_STATUS,
        handle,
        length,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&context_id.to_be_bytes());
    for d in descriptors {
        out.extend_from_slice(&d.length.to_be_bytes());
        out.extend_from_slice(&d.status.to_be_bytes());
    }
    Ok(())
}

/// Parses a BLOCK_STATUS chunk payload (client side): context id and descriptors.
pub fn parse_block_status(payload: &[u8]) -> Result<(u32, Vec<BlockDescriptor>), ProtoError> {
    let mut c = Cursor::new(payload, "BLOCK_STATUS chunk");
    let id = c.u32()?;
    let extra = c.buf.len() % 8;
    if extra != 0 {
        return Err(ProtoError::TrailingBytes {
            what: "BLOCK_STATUS chunk",
            extra,
        });
    }
    let mut out = Vec::with_capacity(c.buf.len() / 8);
    while !c.buf.is_empty() {
        out.push(BlockDescriptor {
            length: c.u32()?,
            status: c.u32()?,
        });
    }
    Ok((id, out))
}

/// Turns a device's extents into `base:allocation` descriptors for a request of `length` bytes:
/// drops empty extents, merges neighbours with the same status, cuts the total to `length`
/// (so every descriptor fits in 32 bits), keeps one descriptor when `req_one`, and at most
/// `max_descriptors`. Never empty for `length > 0`: with no usable extent it reports the whole
/// range as allocated data (status 0), which the spec allows.
pub fn extents_to_descriptors(
    extents: &[Extent],
    length: u32,
    req_one: bool,
    max_descriptors: usize,
) -> Vec<BlockDescriptor> {
    let max = if req_one { 1 } else { max_descriptors.max(1) };
    let mut out: Vec<BlockDescriptor> = Vec::new();
    let mut remaining = u64::from(length);
    for e in extents {
        if remaining == 0 {
            break;
        }
        if e.length == 0 {
            continue;
        }
        let status =
            (if e.hole { NBD_STATE_HOLE } else { 0 }) | (if e.zero { NBD_STATE_ZERO } else { 0 });
        // `take` <= remaining <= u32::MAX.
        let take = e.length.min(remaining) as u32;
        remaining -= u64::from(take);
        match out.last_mut() {
            Some(last) if last.status == status => last.length += take,
            _ => {
                if out.len() == max {
                    break;
                }
                out.push(BlockDescriptor {
                    length: take,
                    status,
                });
            }
        }
    }
    if out.is_empty() && length > 0 {
        out.push(BlockDescriptor { length, status: 0 });
    }
    out
}

/// Maps a device error to an NBD error value (see [`crate::BlockDevice`]).
pub fn errno_for(err: &io::Error) -> u32 {
    match err.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => NBD_EPERM,
        io::ErrorKind::InvalidInput => NBD_EINVAL,
        io::ErrorKind::Unsupported => NBD_ENOTSUP,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge => {
            NBD_ENOSPC
        }
        io::ErrorKind::OutOfMemory => NBD_ENOMEM,
        _ => match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => NBD_ENOSPC,
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => NBD_EPERM,
            Some(libc::EINVAL) => NBD_EINVAL,
            Some(libc::EOPNOTSUPP) => NBD_ENOTSUP,
            _ => NBD_EIO,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request {
            flags: NBD_CMD_FLAG_FUA,
            command: Command::Write,
            handle: 0xdead_beef,
            offset: 4096,
            length: 512,
        };
        assert_eq!(Request::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn descriptors_merge_clamp_and_req_one() {
        let ext = [
            Extent {
                length: 4096,
                hole: false,
                zero: false,
            },
            Extent {
                length: 4096,
                hole: false,
                zero: false,
            },
            Extent {
                length: 0,
                hole: true,
                zero: true,
            },
            Extent {
                length: u64::MAX,
                hole: true,
                zero: true,
            },
        ];
        let d = extents_to_descriptors(&ext, u32::MAX, false, 16);
        assert_eq!(
            d,
            vec![
                BlockDescriptor {
                    length: 8192,
                    status: 0
                },
                BlockDescriptor {
                    length: u32::MAX - 8192,
                    status: NBD_STATE_HOLE | NBD_STATE_ZERO
                },
            ]
        );
        let d = extents_to_descriptors(&ext, 100_000, true, 16);
        assert_eq!(
            d,
            vec![BlockDescriptor {
                length: 8192,
                status: 0
            }]
        );
        assert_eq!(
            extents_to_descriptors(&[], 10, false, 16),
            vec![BlockDescriptor {
                length: 10,
                status: 0
            }]
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("abc", 10), "abc");
    }

    #[test]
    fn meta_request_with_huge_count_is_refused_without_allocating() {
        let mut p = Vec::new();
        p.extend_from_slice(&0u32.to_be_bytes());
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_option(NBD_OPT_SET_META_CONTEXT, &p),
            Err(ProtoError::Truncated { .. })
        ));
    }
}
