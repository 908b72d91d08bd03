//! The server: exports, configuration, accept loops and the handshake phase. The transmission
//! phase lives in [`crate::transmission`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};

use crate::device::BlockDevice;
use crate::error::{error_chain, NbdError};
use crate::proto::{self, *};
use crate::transmission::{self, CloseReason, Negotiated};

/// Metadata context id this server gives `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Tunables of a [`Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest READ/WRITE length accepted (advertised as the maximum block size). A WRITE
    /// above it disconnects the client (its payload cannot be trusted); a READ above it gets
    /// `EINVAL`. Default 32 MiB.
    pub max_payload: u32,
    /// Largest option payload accepted during the handshake; above it the client gets
    /// `NBD_REP_ERR_TOO_BIG` and is disconnected. Default 16 KiB.
    pub max_option_len: u32,
    /// The whole handshake (greeting to `NBD_OPT_GO`) must finish within this. Default 30 s.
    pub handshake_timeout: Duration,
    /// How long `serve_*` waits for open connections after shutdown before aborting them.
    /// Default 10 s.
    pub shutdown_grace: Duration,
    /// Requests of one connection that may run on the blocking pool at once (FLUSH, FUA
    /// writes, TRIM, WRITE_ZEROES); the connection stops reading while at the limit.
    /// Default 64.
    pub max_blocking_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_payload: 32 << 20,
            max_option_len: 16 << 10,
            handshake_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            max_blocking_in_flight: 64,
        }
    }
}

/// One named disk served by a [`Server`].
#[derive(Clone)]
pub struct Export {
    /// Name clients ask for (`NBD_OPT_GO`); the empty name selects the sole export when there
    /// is exactly one.
    pub name: String,
    /// Free text shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// The bytes.
    pub device: Arc<dyn BlockDevice>,
}

impl Export {
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        device: Arc<dyn BlockDevice>,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            device,
        }
    }
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("size", &self.device.size())
            .field("read_only", &self.device.read_only())
            .finish()
    }
}

/// An NBD server. Cheap to clone (an `Arc` inside): clones share exports and configuration, so
/// one `Server` can run several listeners and be handed to each connection task.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    exports: RwLock<Vec<Export>>,
    next_conn: AtomicU64,
}

/// How the handshake ended.
enum Handshake {
    Transmission(Negotiated),
    /// The client sent `NBD_OPT_ABORT`.
    Aborted,
}

impl Server {
    /// A server with no exports.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                exports: RwLock::new(Vec::new()),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// A server with `exports` (names must be unique).
    pub fn with_exports(
        config: ServerConfig,
        exports: impl IntoIterator<Item = Export>,
    ) -> Result<Self, NbdError> {
        let server = Self::new(config);
        for e in exports {
            server.add_export(e)?;
        }
        Ok(server)
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Adds an export; new connections see it at once.
    pub fn add_export(&self, export: Export) -> Result<(), NbdError> {
        if export.name.len() > MAX_STRING_LEN || export.name.contains('\0') {
            return Err(NbdError::InvalidExportName(export.name));
        }
        let mut exports = self.write_exports();
        if exports.iter().any(|e| e.name == export.name) {
            return Err(NbdError::DuplicateExport(export.name));
        }
        exports.push(export);
        Ok(())
    }

    /// Removes an export from future handshakes (open connections keep using it).
    pub fn remove_export(&self, name: &str) -> Option<Export> {
        let mut exports = self.write_exports();
        let i = exports.iter().position(|e| e.name == name)?;
        Some(exports.remove(i))
    }

    /// Names of the exports, in the order they were added.
    pub fn export_names(&self) -> Vec<String> {
        self.read_exports().iter().map(|e| e.name.clone()).collect()
    }

    fn read_exports(&self) -> std::sync::RwLockReadGuard<'_, Vec<Export>> {
        // The list is always valid (no partial updates), so a poisoned lock is still usable.
        self.inner.exports.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_exports(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Export>> {
        self.inner
            .exports
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The export a client means by `name`: exact match, or the sole export for "".
    fn find_export(&self, name: &str) -> Option<Export> {
        let exports = self.read_exports();
        if let Some(e) = exports.iter().find(|e| e.name == name) {
            return Some(e.clone());
        }
        if name.is_empty() && exports.len() == 1 {
            return exports.first().cloned();
        }
        None
    }

    /// Serves one client over `stream` (handshake, then transmission) until it disconnects.
    /// Returns `Ok` for a clean end (`NBD_CMD_DISC`, `NBD_OPT_ABORT`, EOF between requests) and
    /// the reason otherwise; either way the reason is logged.
    pub async fn handle_connection<S>(&self, stream: S) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.connection(stream, None).await
    }

    /// Accepts clients on a unix socket until `shutdown` becomes true, one task per connection;
    /// then waits for the connections to finish their in-flight requests and close (at most
    /// [`ServerConfig::shutdown_grace`], then aborts them) and returns.
    pub async fn serve_unix(
        &self,
        listener: tokio::net::UnixListener,
        shutdown: watch::Receiver<bool>,
    ) {
        let l = &listener;
        self.serve(
            move || async move {
                let (stream, addr) = l.accept().await?;
                let peer = addr
                    .as_pathname()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "unix".to_owned());
                Ok((stream, peer))
            },
            shutdown,
        )
        .await
    }

    /// [`Server::serve_unix`] for TCP (sets `TCP_NODELAY` on every connection).
    pub async fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) {
        let l = &listener;
        self.serve(
            move || async move {
                let (stream, addr) = l.accept().await?;
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(peer = %addr, "cannot set TCP_NODELAY: {e}");
                }
                Ok((stream, addr.to_string()))
            },
            shutdown,
        )
        .await
    }

    async fn serve<F, Fut, S>(&self, mut accept: F, shutdown: watch::Receiver<bool>)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<(S, String)>>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut stop = Some(shutdown.clone());
        loop {
            tokio::select! {
                biased;
                () = wait_shutdown(&mut stop) => break,
                Some(res) = tasks.join_next(), if !tasks.is_empty() => log_task_end(res),
                accepted = accept() => match accepted {
                    Ok((stream, peer)) => {
                        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
                        let server = self.clone();
                        let rx = shutdown.clone();
                        let span = tracing::info_span!("nbd_conn", id, peer = %peer);
                        tasks.spawn(
                            async move {
                                debug!("accepted");
                                // The outcome is logged inside.
                                let _ = server.connection(stream, Some(rx)).await;
                            }
                            .instrument(span),
                        );
                    }
                    Err(e) => {
                        // Typically EMFILE: back off instead of spinning.
                        warn!("accepting an NBD connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let grace = self.inner.config.shutdown_grace;
        info!(
            open = tasks.len(),
            "NBD server stopping: no new connections, waiting up to {grace:?} for open ones"
        );
        let drained = tokio::time::timeout(grace, async {
            while let Some(res) = tasks.join_next().await {
                log_task_end(res);
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                open = tasks.len(),
                "NBD connections still open after {grace:?}: aborting them"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        info!("NBD server stopped");
    }

    /// One connection; logs how it ended.
    async fn connection<S>(
        &self,
        mut stream: S,
        mut shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<(), NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = &self.inner.config;
        let handshake = tokio::select! {
            biased;
            () = wait_shutdown(&mut shutdown) => {
                info!("NBD connection closed during the handshake: server shutting down");
                return Ok(());
            }
            r = tokio::time::timeout(cfg.handshake_timeout, self.handshake(&mut stream)) => {
                match r {
                    Ok(r) => r,
                    Err(_) => Err(NbdError::HandshakeTimeout(cfg.handshake_timeout)),
                }
            }
        };
        let negotiated = match handshake {
            Ok(Handshake::Transmission(n)) => n,
            Ok(Handshake::Aborted) => {
                info!("NBD connection closed: client aborted the handshake (NBD_OPT_ABORT)");
                return Ok(());
            }
            // A client that hangs up before saying anything (a socket probe, a health check)
            // is not worth a warning.
            Err(e @ NbdError::HandshakeIo(_)) if client_hung_up(&e) => {
                debug!("NBD connection dropped: {}", error_chain(&e));
                return Err(e);
            }
            Err(e) => {
                warn!("NBD connection dropped: {}", error_chain(&e));
                return Err(e);
            }
        };
        let export = negotiated.export.name.clone();
        info!(
            export = %export,
            structured = negotiated.structured,
            base_allocation = negotiated.base_allocation,
            "NBD handshake done"
        );
        match transmission::run(stream, negotiated, cfg, shutdown).await {
            Ok(reason) => {
                info!(export = %export, "NBD connection closed: {reason}");
                Ok(())
            }
            Err(e) => {
                warn!(export = %export, "NBD connection dropped: {}", error_chain(&e));
                Err(e)
            }
        }
    }

    fn transmission_flags(device: &dyn BlockDevice, structured: bool) -> u16 {
        let mut flags = NBD_FLAG_HAS_FLAGS
            | NBD_FLAG_SEND_FLUSH
            | NBD_FLAG_SEND_FUA
            | NBD_FLAG_SEND_TRIM
            | NBD_FLAG_SEND_WRITE_ZEROES
            | NBD_FLAG_SEND_FAST_ZERO;
        if device.read_only() {
            flags |= NBD_FLAG_READ_ONLY;
        }
        if device.can_multi_conn() {
            flags |= NBD_FLAG_CAN_MULTI_CONN;
        }
        if structured {
            // Every read is answered with a single data chunk, so DF always holds.
            flags |= NBD_FLAG_SEND_DF;
        }
        flags
    }

    /// Greeting and option haggling, up to the start of transmission.
    async fn handshake<S>(&self, stream: &mut S) -> Result<Handshake, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let cfg = &self.inner.config;
        let io = NbdError::HandshakeIo;
        stream
            .write_all(&encode_greeting(
                NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES,
            ))
            .await
            .map_err(io)?;
        stream.flush().await.map_err(io)?;

        let mut raw_flags = [0u8; 4];
        stream.read_exact(&mut raw_flags).await.map_err(io)?;
        let client = parse_client_flags(&raw_flags).map_err(NbdError::BadHandshake)?;
        if !client.fixed_newstyle {
            return Err(NbdError::NotFixedNewstyle(client.bits()));
        }

        let mut structured = false;
        // Canonical name of the export `base:allocation` was selected for, if any.
        let mut meta_export: Option<String> = None;
        let mut payload = Vec::new();
        let mut out = Vec::new();
        loop {
            let mut raw = [0u8; OPTION_HEADER_LEN];
            stream.read_exact(&mut raw).await.map_err(io)?;
            let header = OptionHeader::parse(&raw).map_err(NbdError::BadHandshake)?;
            out.clear();
            if header.length > cfg.max_option_len {
                let err = NbdError::OptionTooLong {
                    option: header.option,
                    length: header.length,
                    max: cfg.max_option_len,
                };
                if header.option != NBD_OPT_EXPORT_NAME {
                    encode_option_error(
                        &mut out,
                        header.option,
                        NBD_REP_ERR_TOO_BIG,
                        &err.to_string(),
                    );
                    // Best effort: the connection is dropped either way.
                    let _ = stream.write_all(&out).await;
                    let _ = stream.flush().await;
                }
                return Err(err);
            }
            payload.resize(header.length as usize, 0);
            stream.read_exact(&mut payload).await.map_err(io)?;

            let option = match proto::parse_option(header.option, &payload) {
                Ok(o) => o,
                Err(e) if header.option == NBD_OPT_EXPORT_NAME => {
                    return Err(NbdError::BadHandshake(e))
                }
                Err(e) => {
                    debug!(option = header.option, "invalid option: {e}");
                    encode_option_error(
                        &mut out,
                        header.option,
                        NBD_REP_ERR_INVALID,
                        &e.to_string(),
                    );
                    send(stream, &out).await?;
                    continue;
                }
            };
            let code = header.option;
            match option {
                ClientOption::ExportName(name) => {
                    let Some(export) = self.find_export(&name) else {
                        return Err(NbdError::UnknownExport(name));
                    };
                    let flags = Self::transmission_flags(&*export.device, structured);
                    encode_export_name_reply(
                        &mut out,
                        export.device.size(),
                        flags,
                        client.no_zeroes,
                    );
                    send(stream, &out).await?;
                    let base_allocation = meta_export.as_deref() == Some(export.name.as_str());
                    return Ok(Handshake::Transmission(Negotiated {
                        export,
                        structured,
                        base_allocation,
                        flags,
                    }));
                }
                ClientOption::Abort => {
                    let _ = encode_option_reply(&mut out, code, NBD_REP_ACK, &[]);
                    // The client may already have closed: a failed ACK is not an error.
                    let _ = send(stream, &out).await;
                    return Ok(Handshake::Aborted);
                }
                ClientOption::List => {
                    for e in self.read_exports().iter() {
                        if let Err(err) = encode_rep_server(&mut out, &e.name, &e.description) {
                            warn!(export = %e.name, "export left out of NBD_OPT_LIST: {err}");
                        }
                    }
                    let _ = encode_option_reply(&mut out, code, NBD_REP_ACK, &[]);
                    send(stream, &out).await?;
                }
                ClientOption::Info(req) | ClientOption::Go(req) => {
                    let go = code == NBD_OPT_GO;
                    let Some(export) = self.find_export(&req.name) else {
                        let msg = format!("export {:?} does not exist", req.name);
                        encode_option_error(&mut out, code, NBD_REP_ERR_UNKNOWN, &msg);
                        send(stream, &out).await?;
                        continue;
                    };
                    let flags = Self::transmission_flags(&*export.device, structured);
                    self.encode_export_info(&mut out, code, &export, &req.info_requests, flags);
                    let _ = encode_option_reply(&mut out, code, NBD_REP_ACK, &[]);
                    send(stream, &out).await?;
                    if go {
                        let base_allocation = meta_export.as_deref() == Some(export.name.as_str());
                        return Ok(Handshake::Transmission(Negotiated {
                            export,
                            structured,
                            base_allocation,
                            flags,
                        }));
                    }
                }
                ClientOption::StructuredReply => {
                    structured = true;
                    let _ = encode_option_reply(&mut out, code, NBD_REP_ACK, &[]);
                    send(stream, &out).await?;
                }
                ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
                    let set = code == NBD_OPT_SET_META_CONTEXT;
                    if set {
                        // SET replaces the selection even when it fails.
                        meta_export = None;
                    }
                    if !structured {
                        encode_option_error(
                            &mut out,
                            code,
                            NBD_REP_ERR_INVALID,
                            "metadata contexts need NBD_OPT_STRUCTURED_REPLY first",
                        );
                    } else if let Some(export) = self.find_export(&req.export) {
                        let matches = if set {
                            req.queries.iter().any(|q| q == BASE_ALLOCATION)
                        } else {
                            req.queries.is_empty()
                                || req
                                    .queries
                                    .iter()
                                    .any(|q| q == BASE_ALLOCATION || q == "base:")
                        };
                        if matches {
                            let id = if set { BASE_ALLOCATION_ID } else { 0 };
                            let _ = encode_meta_context(&mut out, code, id, BASE_ALLOCATION);
                            if set {
                                meta_export = Some(export.name.clone());
                            }
                        }
                        let _ = encode_option_reply(&mut out, code, NBD_REP_ACK, &[]);
                    } else {
                        let msg = format!("export {:?} does not exist", req.export);
                        encode_option_error(&mut out, code, NBD_REP_ERR_UNKNOWN, &msg);
                    }
                    send(stream, &out).await?;
                }
                ClientOption::Unknown(code) => {
                    debug!(option = code, "unsupported option");
                    let msg = format!("option {code} is not supported by this server");
                    encode_option_error(&mut out, code, NBD_REP_ERR_UNSUP, &msg);
                    send(stream, &out).await?;
                }
            }
        }
    }

    /// The `NBD_REP_INFO` replies for INFO/GO: export (always), name and description (when
    /// asked), block sizes (always: min 1, preferred 4096, max = max payload).
    fn encode_export_info(
        &self,
        out: &mut Vec<u8>,
        code: u32,
        export: &Export,
        requests: &[u16],
        flags: u16,
    ) {
        encode_info_export(out, code, export.device.size(), flags);
        if requests.contains(&NBD_INFO_NAME) {
            let _ = encode_info_string(out, code, NBD_INFO_NAME, &export.name);
        }
        if requests.contains(&NBD_INFO_DESCRIPTION) && !export.description.is_empty() {
            if let Err(e) = encode_info_string(out, code, NBD_INFO_DESCRIPTION, &export.description)
            {
                debug!(export = %export.name, "description not sent: {e}");
            }
        }
        let max = self.inner.config.max_payload.max(1);
        encode_info_block_size(out, code, 1, 4096.min(max), max);
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), NbdError> {
    stream
        .write_all(bytes)
        .await
        .map_err(NbdError::HandshakeIo)?;
    stream.flush().await.map_err(NbdError::HandshakeIo)
}

/// Resolves once `shutdown` is true; never when there is no receiver or its sender is gone
/// without having said so.
pub(crate) async fn wait_shutdown(shutdown: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = shutdown {
        if rx.wait_for(|stop| *stop).await.is_ok() {
            return;
        }
        *shutdown = None;
    }
    std::future::pending::<()>().await
}

fn log_task_end(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            error!("NBD connection task panicked: {e}");
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Disconnect => "client sent NBD_CMD_DISC",
            CloseReason::Eof => "client closed the connection between requests",
            CloseReason::Shutdown => "server shutting down",
        })
    }
}

/// Whether a handshake error is just the client going away (EOF, reset, broken pipe).
fn client_hung_up(e: &NbdError) -> bool {
    matches!(e, NbdError::HandshakeIo(io) if matches!(
        io.kind(),
        std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof
    ))
}
