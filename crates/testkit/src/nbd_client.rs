//! A minimal blocking NBD client (fixed newstyle, `NBD_OPT_GO`, simple replies) for tests that
//! must know exactly which requests were acknowledged, e.g. the kill -9 durability test. It is a
//! test double for QEMU's client, used beside the real clients (nbdinfo, nbdcopy, qemu-io, fio,
//! QEMU), never instead of them. It can also send raw bytes, for malformed-input tests.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC_OPT: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const INFO_EXPORT: u16 = 0;

/// NBD command numbers.
pub mod cmd {
    /// NBD_CMD_READ
    pub const READ: u16 = 0;
    /// NBD_CMD_WRITE
    pub const WRITE: u16 = 1;
    /// NBD_CMD_DISC
    pub const DISC: u16 = 2;
    /// NBD_CMD_FLUSH
    pub const FLUSH: u16 = 3;
    /// NBD_CMD_TRIM
    pub const TRIM: u16 = 4;
    /// NBD_CMD_WRITE_ZEROES
    pub const WRITE_ZEROES: u16 = 6;
}

/// `NBD_CMD_FLAG_FUA`.
pub const FLAG_FUA: u16 = 1;

/// A connected client in the transmission phase.
pub struct Client {
    stream: UnixStream,
    /// Export size from `NBD_INFO_EXPORT`.
    pub size: u64,
    /// Transmission flags from `NBD_INFO_EXPORT`.
    pub flags: u16,
    next_handle: u64,
}

fn io_err(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Client {
    /// Connects to a unix socket and selects `export` with `NBD_OPT_GO`.
    pub fn connect(socket: &Path, export: &str) -> io::Result<Client> {
        let mut s = UnixStream::connect(socket)?;
        let mut hdr = [0u8; 18];
        s.read_exact(&mut hdr)?;
        if u64::from_be_bytes(hdr[0..8].try_into().unwrap_or_default()) != NBDMAGIC
            || u64::from_be_bytes(hdr[8..16].try_into().unwrap_or_default()) != IHAVEOPT
        {
            return Err(io_err("server greeting has wrong magic".into()));
        }
        s.write_all(&3u32.to_be_bytes())?; // FIXED_NEWSTYLE | NO_ZEROES
        let mut data = Vec::new();
        data.extend_from_slice(&(export.len() as u32).to_be_bytes());
        data.extend_from_slice(export.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        s.write_all(&opt)?;
        let (mut size, mut flags) = (None, 0u16);
        loop {
            let mut r = [0u8; 20];
            s.read_exact(&mut r)?;
            let magic = u64::from_be_bytes(r[0..8].try_into().unwrap_or_default());
            let typ = u32::from_be_bytes(r[12..16].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(r[16..20].try_into().unwrap_or_default()) as usize;
            if magic != REPLY_MAGIC_OPT || len > 1 << 20 {
                return Err(io_err(format!(
                    "bad option reply magic {magic:#x} len {len}"
                )));
            }
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload)?;
            if typ & 0x8000_0000 != 0 {
                return Err(io_err(format!(
                    "NBD_OPT_GO refused: error {typ:#x} {}",
                    String::from_utf8_lossy(&payload)
                )));
            }
            if typ == REP_INFO && len >= 12 && payload[0..2] == INFO_EXPORT.to_be_bytes() {
                size = Some(u64::from_be_bytes(
                    payload[2..10].try_into().unwrap_or_default(),
                ));
                flags = u16::from_be_bytes(payload[10..12].try_into().unwrap_or_default());
            }
            if typ == REP_ACK {
                break;
            }
        }
        let size = size.ok_or_else(|| io_err("no NBD_INFO_EXPORT before ACK".into()))?;
        Ok(Client {
            stream: s,
            size,
            flags,
            next_handle: 1,
        })
    }

    /// Sends one request and waits for its simple reply; returns the NBD error code (0 = ok).
    pub fn request(
        &mut self,
        typ: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> io::Result<u32> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut req = Vec::with_capacity(28 + data.len());
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&typ.to_be_bytes());
        req.extend_from_slice(&handle.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        req.extend_from_slice(data);
        self.stream.write_all(&req)?;
        let mut r = [0u8; 16];
        self.stream.read_exact(&mut r)?;
        let magic = u32::from_be_bytes(r[0..4].try_into().unwrap_or_default());
        let err = u32::from_be_bytes(r[4..8].try_into().unwrap_or_default());
        let h = u64::from_be_bytes(r[8..16].try_into().unwrap_or_default());
        if magic != SIMPLE_REPLY_MAGIC || h != handle {
            return Err(io_err(format!("bad reply magic {magic:#x} or handle {h}")));
        }
        Ok(err)
    }

    /// Writes `data` at `offset`; an NBD error becomes an `io::Error`.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        let flags = if fua { FLAG_FUA } else { 0 };
        match self.request(cmd::WRITE, flags, offset, data.len() as u32, data)? {
            0 => Ok(()),
            e => Err(io_err(format!(
                "WRITE at {offset} failed with NBD error {e}"
            ))),
        }
    }

    /// FLUSH; returns when the server acknowledged it.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.request(cmd::FLUSH, 0, 0, 0, &[])? {
            0 => Ok(()),
            e => Err(io_err(format!("FLUSH failed with NBD error {e}"))),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        match self.request(cmd::READ, 0, offset, len, &[])? {
            0 => {
                let mut buf = vec![0u8; len as usize];
                self.stream.read_exact(&mut buf)?;
                Ok(buf)
            }
            e => Err(io_err(format!(
                "READ at {offset} failed with NBD error {e}"
            ))),
        }
    }

    /// Sends DISC and closes.
    pub fn disconnect(mut self) -> io::Result<()> {
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&0u16.to_be_bytes());
        req.extend_from_slice(&cmd::DISC.to_be_bytes());
        req.extend_from_slice(&[0u8; 20]);
        self.stream.write_all(&req)
    }
}
