//! The transmission phase of one connection: read requests, run them against the device,
//! write replies. See the crate documentation for the task structure.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
    WriteHalf,
};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::device::{BlockDevice, ZeroFlags};
use crate::error::NbdError;
use crate::proto::*;
use crate::server::{wait_shutdown, Export, ServerConfig, BASE_ALLOCATION_ID};

/// Buffer sizes of the socket reader and writer.
const READ_BUFFER: usize = 256 << 10;
const WRITE_BUFFER: usize = 256 << 10;
/// At most this many descriptors in one BLOCK_STATUS reply.
const MAX_DESCRIPTORS: usize = 1024;

/// What the handshake settled.
pub(crate) struct Negotiated {
    pub export: Export,
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
    /// Transmission flags sent to the client.
    pub flags: u16,
}

/// Why a connection ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Disconnect,
    Eof,
    Shutdown,
}

type SharedWriter<S> = Arc<Mutex<BufWriter<WriteHalf<S>>>>;

struct Conn<S> {
    reader: BufReader<tokio::io::ReadHalf<S>>,
    writer: SharedWriter<S>,
    device: Arc<dyn BlockDevice>,
    size: u64,
    read_only: bool,
    structured: bool,
    base_allocation: bool,
    max_payload: u32,
    max_blocking: usize,
    /// Requests running on the blocking pool; each task writes its own reply.
    blocking: JoinSet<Result<(), NbdError>>,
    /// Read data / write payload, reused across requests.
    data: Vec<u8>,
    /// Small reply encodings, reused.
    scratch: Vec<u8>,
}

/// Runs the transmission phase until the client disconnects, the server shuts down, or the
/// stream breaks. In-flight requests are always finished (and their replies sent when the
/// stream allows) before returning.
pub(crate) async fn run<S>(
    stream: S,
    neg: Negotiated,
    cfg: &ServerConfig,
    mut shutdown: Option<watch::Receiver<bool>>,
) -> Result<CloseReason, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let device = neg.export.device.clone();
    let mut conn = Conn {
        reader: BufReader::with_capacity(READ_BUFFER, r),
        writer: Arc::new(Mutex::new(BufWriter::with_capacity(WRITE_BUFFER, w))),
        size: device.size(),
        read_only: device.read_only() || neg.flags & NBD_FLAG_READ_ONLY != 0,
        device,
        structured: neg.structured,
        base_allocation: neg.base_allocation,
        max_payload: cfg.max_payload,
        max_blocking: cfg.max_blocking_in_flight.max(1),
        blocking: JoinSet::new(),
        data: Vec::new(),
        scratch: Vec::with_capacity(256),
    };
    let result = conn.serve(&mut shutdown).await;
    // Finish what is in flight whatever ended the loop; its replies go out if they can.
    let drained = conn.drain_blocking().await;
    let mut w = conn.writer.lock().await;
    let flushed = w.flush().await.map_err(NbdError::WriteReply);
    let _ = w.shutdown().await;
    let reason = result?;
    drained?;
    flushed?;
    Ok(reason)
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn serve(
        &mut self,
        shutdown: &mut Option<watch::Receiver<bool>>,
    ) -> Result<CloseReason, NbdError> {
        loop {
            // Replies are buffered; push them out once no whole request is waiting, i.e. just
            // before this task may block on the socket.
            if !complete_request_buffered(self.reader.buffer()) {
                self.flush().await?;
            }
            while let Some(done) = self.blocking.try_join_next() {
                flatten(done)?;
            }
            let next = tokio::select! {
                biased;
                () = wait_shutdown(shutdown) => return Ok(CloseReason::Shutdown),
                r = read_request(&mut self.reader, &mut self.data, self.max_payload) => r?,
            };
            let Some(req) = next else {
                return Ok(CloseReason::Eof);
            };
            match req.command {
                Command::Read => self.read(req).await?,
                Command::Write => self.write(req).await?,
                Command::Disc => return Ok(CloseReason::Disconnect),
                Command::Flush => self.flush_cmd(req).await?,
                Command::Trim => self.trim(req).await?,
                Command::WriteZeroes => self.write_zeroes(req).await?,
                Command::BlockStatus => self.block_status(req).await?,
                Command::Cache | Command::Unknown(_) => {
                    debug!(command = req.command.to_u16(), "unknown command");
                    self.reply_error(req.handle, NBD_EINVAL, "unknown command")
                        .await?
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), NbdError> {
        self.writer
            .lock()
            .await
            .flush()
            .await
            .map_err(NbdError::WriteReply)
    }

    async fn drain_blocking(&mut self) -> Result<(), NbdError> {
        let mut first_err = Ok(());
        while let Some(done) = self.blocking.join_next().await {
            if let Err(e) = flatten(done) {
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
        }
        first_err
    }

    /// Checks flags and range; on failure sends the error reply and returns `false`.
    async fn admit(
        &mut self,
        req: &Request,
        allowed_flags: u16,
        range_errno: u32,
    ) -> Result<bool, NbdError> {
        if req.flags & !allowed_flags != 0 {
            self.reply_error(
                req.handle,
                NBD_EINVAL,
                "command flags not valid for this command",
            )
            .await?;
            return Ok(false);
        }
        if !in_range(req.offset, u64::from(req.length), self.size) {
            self.reply_error(req.handle, range_errno, "range past the end of the export")
                .await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn read(&mut self, req: Request) -> Result<(), NbdError> {
        let allowed = if self.structured {
            NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF
        } else {
            NBD_CMD_FLAG_FUA
        };
        if req.length > self.max_payload {
            return self
                .reply_error(
                    req.handle,
                    NBD_EINVAL,
                    "read longer than the maximum block size",
                )
                .await;
        }
        if !self.admit(&req, allowed, NBD_EINVAL).await? {
            return Ok(());
        }
        let len = req.length as usize;
        if self.data.len() < len {
            self.data.resize(len, 0);
        }
        let device = &self.device;
        let buf = &mut self.data[..len];
        if let Err(e) = guarded(|| device.read_at(req.offset, buf)) {
            debug!(offset = req.offset, len, "read failed: {e}");
            return self
                .reply_error(req.handle, errno_for(&e), "read failed")
                .await;
        }
        let mut w = self.writer.lock().await;
        let res = if !self.structured {
            w.write_all(&encode_simple_reply(0, req.handle)).await
        } else if len == 0 {
            w.write_all(&encode_none_chunk(req.handle)).await
        } else {
            // len <= max_payload (u32), and the header checks the +8 again.
            match encode_offset_data_header(NBD_REPLY_FLAG_DONE, req.handle, req.offset, len) {
                Ok(h) => w.write_all(&h).await,
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        res.map_err(NbdError::WriteReply)?;
        w.write_all(&self.data[..len])
            .await
            .map_err(NbdError::WriteReply)
    }

    async fn write(&mut self, req: Request) -> Result<(), NbdError> {
        // The payload is in self.data[..length] already (read with the header).
        if !self.admit(&req, NBD_CMD_FLAG_FUA, NBD_ENOSPC).await? {
            return Ok(());
        }
        if self.read_only {
            return self
                .reply_error(req.handle, NBD_EPERM, "export is read-only")
                .await;
        }
        let len = req.length as usize;
        let fua = req.flags & NBD_CMD_FLAG_FUA != 0;
        if fua || self.device.write_may_wait() {
            // Durable before the reply (fdatasync-like), or held by the device: off the
            // connection task.
            let data = self.data[..len].to_vec();
            let offset = req.offset;
            return self
                .offload(req.handle, "write", move |d| d.write_at(offset, &data, fua))
                .await;
        }
        let device = &self.device;
        let data = &self.data[..len];
        let res = guarded(|| device.write_at(req.offset, data, false));
        self.reply_status(req.handle, res, "write").await
    }

    async fn flush_cmd(&mut self, req: Request) -> Result<(), NbdError> {
        if req.flags & !NBD_CMD_FLAG_FUA != 0 {
            return self
                .reply_error(req.handle, NBD_EINVAL, "command flags not valid for FLUSH")
                .await;
        }
        // Every write this connection acknowledged has already reached the device (writes run
        // inline, in order), so flushing now covers them.
        self.offload(req.handle, "flush", |d| d.flush()).await
    }

    async fn trim(&mut self, req: Request) -> Result<(), NbdError> {
        if !self.admit(&req, NBD_CMD_FLAG_FUA, NBD_EINVAL).await? {
            return Ok(());
        }
        if self.read_only {
            return self
                .reply_error(req.handle, NBD_EPERM, "export is read-only")
                .await;
        }
        let (offset, len, fua) = (
            req.offset,
            u64::from(req.length),
            req.flags & NBD_CMD_FLAG_FUA != 0,
        );
        self.offload(req.handle, "trim", move |d| d.trim(offset, len, fua))
            .await
    }

    async fn write_zeroes(&mut self, req: Request) -> Result<(), NbdError> {
        let allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
        if !self.admit(&req, allowed, NBD_ENOSPC).await? {
            return Ok(());
        }
        if self.read_only {
            return self
                .reply_error(req.handle, NBD_EPERM, "export is read-only")
                .await;
        }
        let flags = ZeroFlags {
            may_trim: req.flags & NBD_CMD_FLAG_NO_HOLE == 0,
            fast_only: req.flags & NBD_CMD_FLAG_FAST_ZERO != 0,
            fua: req.flags & NBD_CMD_FLAG_FUA != 0,
        };
        let (offset, len) = (req.offset, u64::from(req.length));
        self.offload(req.handle, "write zeroes", move |d| {
            d.write_zeroes(offset, len, flags)
        })
        .await
    }

    async fn block_status(&mut self, req: Request) -> Result<(), NbdError> {
        if !self.base_allocation {
            return self
                .reply_error(
                    req.handle,
                    NBD_EINVAL,
                    "no metadata context was negotiated (NBD_OPT_SET_META_CONTEXT)",
                )
                .await;
        }
        if !self
            .admit(&req, NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE, NBD_EINVAL)
            .await?
        {
            return Ok(());
        }
        if req.length == 0 {
            return self
                .reply_error(req.handle, NBD_EINVAL, "empty block status range")
                .await;
        }
        let device = &self.device;
        let extents = match guarded(|| device.block_status(req.offset, u64::from(req.length))) {
            Ok(e) => e,
            Err(e) => {
                debug!(offset = req.offset, "block status failed: {e}");
                return self
                    .reply_error(req.handle, errno_for(&e), "block status failed")
                    .await;
            }
        };
        let req_one = req.flags & NBD_CMD_FLAG_REQ_ONE != 0;
        let descriptors = extents_to_descriptors(&extents, req.length, req_one, MAX_DESCRIPTORS);
        self.scratch.clear();
        if let Err(e) = encode_block_status(
            &mut self.scratch,
            req.handle,
            BASE_ALLOCATION_ID,
            &descriptors,
        ) {
            // Cannot happen with MAX_DESCRIPTORS descriptors; answer rather than panic.
            warn!("block status reply not encodable: {e}");
            return self
                .reply_error(req.handle, NBD_EIO, "block status reply too large")
                .await;
        }
        self.writer
            .lock()
            .await
            .write_all(&self.scratch)
            .await
            .map_err(NbdError::WriteReply)
    }

    /// Runs `op` on the blocking pool; the spawned task sends the reply itself, so the
    /// connection keeps reading meanwhile.
    async fn offload<F>(&mut self, handle: u64, what: &'static str, op: F) -> Result<(), NbdError>
    where
        F: FnOnce(&dyn BlockDevice) -> io::Result<()> + Send + 'static,
    {
        while self.blocking.len() >= self.max_blocking {
            if let Some(done) = self.blocking.join_next().await {
                flatten(done)?;
            }
        }
        let device = self.device.clone();
        let writer = self.writer.clone();
        let structured = self.structured;
        self.blocking.spawn(async move {
            let res = match tokio::task::spawn_blocking(move || guarded(|| op(&*device))).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::other("device task was cancelled")),
            };
            let mut scratch = Vec::new();
            encode_status(&mut scratch, handle, structured, &res, what);
            let mut w = writer.lock().await;
            w.write_all(&scratch).await.map_err(NbdError::WriteReply)?;
            w.flush().await.map_err(NbdError::WriteReply)
        });
        Ok(())
    }

    async fn reply_status(
        &mut self,
        handle: u64,
        res: io::Result<()>,
        what: &'static str,
    ) -> Result<(), NbdError> {
        self.scratch.clear();
        encode_status(&mut self.scratch, handle, self.structured, &res, what);
        self.writer
            .lock()
            .await
            .write_all(&self.scratch)
            .await
            .map_err(NbdError::WriteReply)
    }

    async fn reply_error(&mut self, handle: u64, errno: u32, msg: &str) -> Result<(), NbdError> {
        self.scratch.clear();
        encode_error(&mut self.scratch, handle, self.structured, errno, msg);
        self.writer
            .lock()
            .await
            .write_all(&self.scratch)
            .await
            .map_err(NbdError::WriteReply)
    }
}

/// Reads the next request (and a WRITE's payload into `data`). `None` on EOF before a request.
async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    data: &mut Vec<u8>,
    max_payload: u32,
) -> Result<Option<Request>, NbdError> {
    if reader
        .fill_buf()
        .await
        .map_err(NbdError::ReadRequest)?
        .is_empty()
    {
        return Ok(None);
    }
    let mut raw = [0u8; REQUEST_LEN];
    reader
        .read_exact(&mut raw)
        .await
        .map_err(NbdError::ReadRequest)?;
    let req = Request::parse(&raw).map_err(NbdError::BadRequest)?;
    let payload = req.payload_len();
    if payload > max_payload {
        return Err(NbdError::PayloadTooLarge {
            length: payload,
            max: max_payload,
        });
    }
    let len = payload as usize;
    if data.len() < len {
        data.resize(len, 0);
    }
    reader
        .read_exact(&mut data[..len])
        .await
        .map_err(NbdError::ReadRequest)?;
    Ok(Some(req))
}

/// Appends the reply for a command without reply data.
fn encode_status(
    out: &mut Vec<u8>,
    handle: u64,
    structured: bool,
    res: &io::Result<()>,
    what: &str,
) {
    match res {
        Ok(()) => out.extend_from_slice(&encode_simple_reply(0, handle)),
        Err(e) => {
            debug!("{what} failed: {e}");
            encode_error(
                out,
                handle,
                structured,
                errno_for(e),
                &format!("{what} failed: {e}"),
            );
        }
    }
}

/// Appends an error reply: an error chunk when structured replies were negotiated (it carries
/// the message), a simple reply otherwise.
fn encode_error(out: &mut Vec<u8>, handle: u64, structured: bool, errno: u32, msg: &str) {
    if structured {
        encode_error_chunk(out, handle, errno, msg);
    } else {
        out.extend_from_slice(&encode_simple_reply(errno, handle));
    }
}

fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// Runs a device call, turning a panic in it into an I/O error so that one bad device call
/// cannot take the connection (or the server) down.
fn guarded<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(io::Error::other("device call panicked")))
}

fn flatten(done: Result<Result<(), NbdError>, tokio::task::JoinError>) -> Result<(), NbdError> {
    match done {
        Ok(r) => r,
        Err(e) => Err(NbdError::WriteReply(io::Error::other(format!(
            "reply task failed: {e}"
        )))),
    }
}
