//! Handshake phase: greeting, client flags, option requests and option replies.

use super::*;

// --- handshake -----------------------------------------------------------------------------

/// The 18-byte greeting the server sends first.
pub fn encode_greeting(handshake_flags: u16) -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&handshake_flags.to_be_bytes());
    out
}

/// Parses the greeting (client side): returns the handshake flags.
pub fn parse_greeting(buf: &[u8]) -> Result<u16, ProtoError> {
    let mut c = Cursor::new(buf, "server greeting");
    let magic = c.u64()?;
    if magic != NBD_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "server greeting",
            got: magic,
        });
    }
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic {
            what: "server greeting",
            got: magic,
        });
    }
    let flags = c.u16()?;
    c.finish()?;
    Ok(flags)
}

/// The client's 32-bit flags, sent after the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientFlags {
    pub fixed_newstyle: bool,
    pub no_zeroes: bool,
}

impl ClientFlags {
    pub fn bits(self) -> u32 {
        (if self.fixed_newstyle {
            NBD_FLAG_C_FIXED_NEWSTYLE
        } else {
            0
        }) | (if self.no_zeroes {
            NBD_FLAG_C_NO_ZEROES
        } else {
            0
        })
    }
}

/// Parses the 4-byte client flags; unknown bits are an error (the spec says the server MUST
/// drop the connection then).
pub fn parse_client_flags(buf: &[u8]) -> Result<ClientFlags, ProtoError> {
    let mut c = Cursor::new(buf, "client flags");
    let bits = c.u32()?;
    c.finish()?;
    if bits & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::UnknownClientFlags(bits));
    }
    Ok(ClientFlags {
        fixed_newstyle: bits & NBD_FLAG_C_FIXED_NEWSTYLE != 0,
        no_zeroes: bits & NBD_FLAG_C_NO_ZEROES != 0,
    })
}

/// The 16-byte header of an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "option header");
        let magic = c.u64()?;
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic {
                what: "option header",
                got: magic,
            });
        }
        let option = c.u32()?;
        let length = c.u32()?;
        c.finish()?;
        Ok(Self { option, length })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportRequest {
    pub name: String,
    pub info_requests: Vec<u16>,
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// A parsed option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    Info(ExportRequest),
    Go(ExportRequest),
    StructuredReply,
    ListMetaContext(MetaContextRequest),
    SetMetaContext(MetaContextRequest),
    /// Any option this server does not implement (answered with `NBD_REP_ERR_UNSUP`).
    Unknown(u32),
}

/// Parses the payload of option `option`. A known option with a malformed payload is an error
/// (the server answers `NBD_REP_ERR_INVALID`, or disconnects for `NBD_OPT_EXPORT_NAME`).
pub fn parse_option(option: u32, payload: &[u8]) -> Result<ClientOption, ProtoError> {
    match option {
        NBD_OPT_EXPORT_NAME => Ok(ClientOption::ExportName(to_string(payload, "export name")?)),
        // The spec says ABORT has no data; ignoring stray data is the kinder reading.
        NBD_OPT_ABORT => Ok(ClientOption::Abort),
        NBD_OPT_LIST => no_payload(payload, "NBD_OPT_LIST").map(|()| ClientOption::List),
        NBD_OPT_STRUCTURED_REPLY => {
            no_payload(payload, "NBD_OPT_STRUCTURED_REPLY").map(|()| ClientOption::StructuredReply)
        }
        NBD_OPT_INFO => parse_export_request(payload, "NBD_OPT_INFO").map(ClientOption::Info),
        NBD_OPT_GO => parse_export_request(payload, "NBD_OPT_GO").map(ClientOption::Go),
        NBD_OPT_LIST_META_CONTEXT => parse_meta_request(payload, "NBD_OPT_LIST_META_CONTEXT")
            .map(ClientOption::ListMetaContext),
        NBD_OPT_SET_META_CONTEXT => parse_meta_request(payload, "NBD_OPT_SET_META_CONTEXT")
            .map(ClientOption::SetMetaContext),
        other => Ok(ClientOption::Unknown(other)),
    }
}

fn no_payload(payload: &[u8], what: &'static str) -> Result<(), ProtoError> {
    Cursor::new(payload, what).finish()
}

fn parse_export_request(payload: &[u8], what: &'static str) -> Result<ExportRequest, ProtoError> {
    let mut c = Cursor::new(payload, what);
    let name = c.string32("export name")?;
    let count = c.u16()? as usize;
    let raw = c.take(count * 2)?;
    c.finish()?;
    let info_requests = raw
        .chunks_exact(2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .collect();
    Ok(ExportRequest {
        name,
        info_requests,
    })
}

fn parse_meta_request(
    payload: &[u8],
    what: &'static str,
) -> Result<MetaContextRequest, ProtoError> {
    let mut c = Cursor::new(payload, what);
    let export = c.string32("export name")?;
    let count = c.u32()? as usize;
    // Each query takes at least 4 bytes: refuse counts the payload cannot hold before
    // allocating anything for them.
    if count > c.buf.len() / 4 {
        return Err(ProtoError::Truncated {
            what,
            need: count.saturating_mul(4),
            got: c.buf.len(),
        });
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        queries.push(c.string32("metadata context query")?);
    }
    c.finish()?;
    Ok(MetaContextRequest { export, queries })
}

impl ClientOption {
    /// The option number.
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => NBD_OPT_EXPORT_NAME,
            ClientOption::Abort => NBD_OPT_ABORT,
            ClientOption::List => NBD_OPT_LIST,
            ClientOption::Info(_) => NBD_OPT_INFO,
            ClientOption::Go(_) => NBD_OPT_GO,
            ClientOption::StructuredReply => NBD_OPT_STRUCTURED_REPLY,
            ClientOption::ListMetaContext(_) => NBD_OPT_LIST_META_CONTEXT,
            ClientOption::SetMetaContext(_) => NBD_OPT_SET_META_CONTEXT,
            ClientOption::Unknown(code) => *code,
        }
    }

    /// Client side: appends header and payload to `out`. `Unknown` gets an empty payload.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtoError> {
        let mut payload = Vec::new();
        match self {
            ClientOption::ExportName(name) => payload.extend_from_slice(name.as_bytes()),
            ClientOption::Info(req) | ClientOption::Go(req) => {
                put_string32(&mut payload, &req.name, "export name")?;
                let count =
                    u16::try_from(req.info_requests.len()).map_err(|_| ProtoError::TooLarge {
                        what: "info request list",
                        len: req.info_requests.len(),
                    })?;
                payload.extend_from_slice(&count.to_be_bytes());
                for info in &req.info_requests {
                    payload.extend_from_slice(&info.to_be_bytes());
                }
            }
            ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
                put_string32(&mut payload, &req.export, "export name")?;
                let count = len_u32(req.queries.len(), "query list")?;
                payload.extend_from_slice(&count.to_be_bytes());
                for q in &req.queries {
                    put_string32(&mut payload, q, "metadata context query")?;
                }
            }
            ClientOption::Abort
            | ClientOption::List
            | ClientOption::StructuredReply
            | ClientOption::Unknown(_) => {}
        }
        let header = OptionHeader {
            option: self.code(),
            length: len_u32(payload.len(), "option payload")?,
        };
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&payload);
        Ok(())
    }
}

fn put_string32(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), ProtoError> {
    out.extend_from_slice(&len_u32(s.len(), what)?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

// --- option replies ------------------------------------------------------------------------

/// Header of an option reply (client side parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub reply_type: u32,
    pub length: u32,
}

impl OptionReplyHeader {
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "option reply header");
        let magic = c.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "option reply header",
                got: magic,
            });
        }
        let option = c.u32()?;
        let reply_type = c.u32()?;
        let length = c.u32()?;
        c.finish()?;
        Ok(Self {
            option,
            reply_type,
            length,
        })
    }
}

/// Appends an option reply with `payload`.
pub fn encode_option_reply(
    out: &mut Vec<u8>,
    option: u32,
    reply_type: u32,
    payload: &[u8],
) -> Result<(), ProtoError> {
    let length = len_u32(payload.len(), "option reply payload")?;
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends an error option reply; the message is cut to [`MAX_STRING_LEN`].
pub fn encode_option_error(out: &mut Vec<u8>, option: u32, reply_type: u32, message: &str) {
    let msg = truncate_str(message, MAX_STRING_LEN);
    // Cannot fail: the message is at most 4096 bytes.
    let _ = encode_option_reply(out, option, reply_type, msg.as_bytes());
}

/// `NBD_REP_SERVER`: one export in the answer to `NBD_OPT_LIST`.
pub fn encode_rep_server(
    out: &mut Vec<u8>,
    name: &str,
    description: &str,
) -> Result<(), ProtoError> {
    let mut payload = Vec::with_capacity(4 + name.len() + description.len());
    put_string32(&mut payload, name, "export name")?;
    payload.extend_from_slice(description.as_bytes());
    encode_option_reply(out, NBD_OPT_LIST, NBD_REP_SERVER, &payload)
}

/// `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
pub fn encode_info_export(out: &mut Vec<u8>, option: u32, size: u64, transmission_flags: u16) {
    let mut payload = [0u8; 12];
    payload[..2].copy_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    payload[2..10].copy_from_slice(&size.to_be_bytes());
    payload[10..].copy_from_slice(&transmission_flags.to_be_bytes());
    let _ = encode_option_reply(out, option, NBD_REP_INFO, &payload);
}

/// `NBD_REP_INFO` / `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` (`info` selects which).
pub fn encode_info_string(
    out: &mut Vec<u8>,
    option: u32,
    info: u16,
    value: &str,
) -> Result<(), ProtoError> {
    if value.len() > MAX_STRING_LEN {
        return Err(ProtoError::StringTooLong {
            what: "info string",
            len: value.len(),
        });
    }
    let mut payload = Vec::with_capacity(2 + value.len());
    payload.extend_from_slice(&info.to_be_bytes());
    payload.extend_from_slice(value.as_bytes());
    encode_option_reply(out, option, NBD_REP_INFO, &payload)
}

/// `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(out: &mut Vec<u8>, option: u32, min: u32, preferred: u32, max: u32) {
    let mut payload = [0u8; 14];
    payload[..2].copy_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    payload[2..6].copy_from_slice(&min.to_be_bytes());
    payload[6..10].copy_from_slice(&preferred.to_be_bytes());
    payload[10..].copy_from_slice(&max.to_be_bytes());
    let _ = encode_option_reply(out, option, NBD_REP_INFO, &payload);
}

/// `NBD_REP_META_CONTEXT`.
pub fn encode_meta_context(
    out: &mut Vec<u8>,
    option: u32,
    context_id: u32,
    name: &str,
) -> Result<(), ProtoError> {
    let mut payload = Vec::with_capacity(4 + name.len());
    payload.extend_from_slice(&context_id.to_be_bytes());
    payload.extend_from_slice(name.as_bytes());
    encode_option_reply(out, option, NBD_REP_META_CONTEXT, &payload)
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes unless the
/// client negotiated `NBD_FLAG_C_NO_ZEROES`.
pub fn encode_export_name_reply(
    out: &mut Vec<u8>,
    size: u64,
    transmission_flags: u16,
    no_zeroes: bool,
) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&transmission_flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// Parsed `NBD_REP_INFO` payload (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoReply {
    Export { size: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize { min: u32, preferred: u32, max: u32 },
    Unknown(u16),
}

pub fn parse_info_reply(payload: &[u8]) -> Result<InfoReply, ProtoError> {
    let mut c = Cursor::new(payload, "NBD_REP_INFO");
    let info = c.u16()?;
    let reply = match info {
        NBD_INFO_EXPORT => InfoReply::Export {
            size: c.u64()?,
            flags: c.u16()?,
        },
        NBD_INFO_NAME => InfoReply::Name(to_string(c.rest(), "export name")?),
        NBD_INFO_DESCRIPTION => InfoReply::Description(to_string(c.rest(), "description")?),
        NBD_INFO_BLOCK_SIZE => InfoReply::BlockSize {
            min: c.u32()?,
            preferred: c.u32()?,
            max: c.u32()?,
        },
        other => {
            c.rest();
            InfoReply::Unknown(other)
        }
    };
    c.finish()?;
    Ok(reply)
}
