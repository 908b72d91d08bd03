//! Errors of the NBD server.

use std::io;
use std::time::Duration;

use crate::proto::ProtoError;

/// Why a connection ended abnormally, or why an export could not be added.
///
/// Messages name what failed; the underlying cause is the [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("export {0:?} is already defined")]
    DuplicateExport(String),
    #[error("export name {0:?} is not a valid NBD string (at most 4096 bytes, no NUL)")]
    InvalidExportName(String),
    #[error("connection I/O failed during the handshake")]
    HandshakeIo(#[source] io::Error),
    #[error("client did not finish the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("client does not speak fixed newstyle negotiation (client flags {0:#x})")]
    NotFixedNewstyle(u32),
    #[error("client sent a malformed handshake message")]
    BadHandshake(#[source] ProtoError),
    #[error(
        "client sent option {option} with {length} bytes of data, more than the {max} allowed"
    )]
    OptionTooLong { option: u32, length: u32, max: u32 },
    #[error("client asked for unknown export {0:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("client sent a malformed request header")]
    BadRequest(#[source] ProtoError),
    #[error("client sent a WRITE of {length} bytes, more than the {max} allowed")]
    PayloadTooLarge { length: u32, max: u32 },
    #[error("reading a request from the client failed")]
    ReadRequest(#[source] io::Error),
    #[error("writing a reply to the client failed")]
    WriteReply(#[source] io::Error),
}

/// `err` and its chain of sources, joined with ": " (for logs).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}
