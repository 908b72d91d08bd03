//! A client for the QEMU guest agent (qemu-ga): ping, info and filesystem freeze/thaw, for
//! application-consistent recovery points.
//!
//! ## The channel
//!
//! qemu-ga runs in the guest on the virtio-serial port `org.qemu.guest_agent.0`; QEMU connects
//! that port to the unix socket of the definition's `guest_agent_socket`
//! (`-chardev socket,id=qga0,...,server=on`). QEMU serves one client at a time: a second client
//! connects but gets no answers until the first one leaves (it then times out, see below).
//!
//! ## The protocol
//!
//! JSON commands `{"execute": NAME, "arguments": {...}}`; each answer is one line, `{"return": X}`
//! or `{"error": {"class": C, "desc": D}}`, in order. The channel has no connection state the
//! guest can see: answers to an earlier client's (or an earlier, timed-out) command may still be
//! in the pipe, and qemu-ga may hold half a command. So before the first command, and after any
//! timeout or malformed answer, the client synchronizes (qemu-ga's `guest-sync-delimited`): it
//! sends a 0xFF byte (which resets qemu-ga's JSON parser), then
//! `guest-sync-delimited {"id": ID}` with a fresh ID; qemu-ga answers with a 0xFF byte followed by
//! `{"return": ID}`. Everything before that 0xFF is stale and discarded, as is a delimited answer
//! with another ID; after it, answers match commands one to one.
//!
//! ## Only a guest is ever frozen: the peer check
//!
//! Freezing the wrong machine's filesystems stops its applications. [`Qga::connect`] therefore
//! checks, before it sends a single byte, that the process serving the socket (`SO_PEERCRED`:
//! the process that called `listen`) is the VM's own QEMU, whose pid the caller passes
//! ([`crate::RunningVm::pid`]). Anything else is [`QgaError::WrongPeer`], naming the socket, the
//! peer's pid and the expected one.
//!
//! ## Always thaw
//!
//! A frozen guest blocks every write of its applications until thawed, and Linux qemu-ga never
//! thaws by itself. [`Qga::frozen`] freezes, runs the caller's operation and then thaws, whatever
//! happened: when the operation's output is an error, and also when the freeze itself failed or
//! timed out (the guest may still complete a freeze that the client stopped waiting for). The
//! thaw is [`Qga::ensure_thawed`]: resynchronize, `guest-fsfreeze-thaw`, `guest-fsfreeze-status`,
//! repeated until the guest reports `thawed` or its deadline passes, which is
//! [`QgaError::ThawFailed`] (the guest may still be frozen: the error says so). While frozen,
//! qemu-ga accepts only a few commands (`guest-ping`, `guest-info`, `guest-sync*`,
//! `guest-fsfreeze-status`, `guest-fsfreeze-thaw`). Do not cancel (drop) a [`Qga::frozen`] future
//! midway: call [`Qga::ensure_thawed`] if that happened.
//!
//! Every wait has a deadline; answers are outside data: anything malformed is
//! [`QgaError::Malformed`], never a panic.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// The longest answer line accepted (`guest-info` lists every command: a few KiB).
pub const MAX_REPLY: usize = 1 << 20;
/// The delimiter qemu-ga writes before a `guest-sync-delimited` answer (and clients before it).
pub const DELIMITER: u8 = 0xFF;
/// How long [`Qga::frozen`] keeps trying to thaw the guest.
pub const THAW_TIMEOUT: Duration = Duration::from_secs(30);

/// A guest agent failure, naming the socket and what to do.
#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    /// The socket could not be connected to.
    #[error("guest agent socket {socket}: cannot connect (is the VM running, with guest_agent_socket set to this path?)")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The socket is not served by the VM's QEMU: nothing was sent.
    #[error("guest agent socket {socket} is served by process {peer}, not by the VM's QEMU (pid {expected}): refusing to send guest agent commands (fsfreeze) to it; check the VM's guest_agent_socket path and QEMU pid")]
    WrongPeer {
        /// The socket.
        socket: PathBuf,
        /// The peer's pid as the kernel reports it (`unknown` when it does not).
        peer: String,
        /// The VM's QEMU.
        expected: u32,
    },
    /// Reading or writing the socket failed.
    #[error("guest agent socket {socket}: {what}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("guest agent on {socket}: no answer to {command} within {after:?} (is qemu-ga running in the guest, and no other client connected to the socket?)")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// How long was waited.
        after: Duration,
    },
    /// QEMU closed the connection.
    #[error("guest agent socket {socket}: connection closed while waiting for the answer to {command} (did QEMU exit?)")]
    Closed {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
    },
    /// An answer that is not what the protocol says.
    #[error("guest agent on {socket}: malformed answer to {command}: {detail}")]
    Malformed {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// What is wrong (with the start of the answer).
        detail: String,
    },
    /// qemu-ga answered with an error.
    #[error("guest agent on {socket}: {command} failed: {class}: {desc}")]
    Command {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// qemu-ga's error class.
        class: String,
        /// qemu-ga's description.
        desc: String,
    },
    /// The guest's filesystems could not be confirmed thawed: its writes may be blocked.
    #[error("guest agent on {socket}: the guest's filesystems MAY STILL BE FROZEN (their writes blocked): no confirmed thaw within {after:?}; retry Qga::ensure_thawed, or restart the guest")]
    ThawFailed {
        /// The socket.
        socket: PathBuf,
        /// How long thawing was tried.
        after: Duration,
        /// The last failure.
        #[source]
        last: Box<QgaError>,
    },
}

/// `guest-fsfreeze-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsfreezeStatus {
    /// Writes proceed.
    Thawed,
    /// The guest's filesystems are frozen.
    Frozen,
}

/// `guest-info`: the agent's version and commands.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestInfo {
    /// qemu-ga's version.
    pub version: String,
    /// The commands it knows.
    pub supported_commands: Vec<GuestCommand>,
}

/// One command of [`GuestInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GuestCommand {
    /// Its name.
    pub name: String,
    /// Whether it is enabled (qemu-ga's `--blacklist`/`--allow-rpcs` disable commands).
    pub enabled: bool,
}

impl GuestInfo {
    /// Whether `name` is supported and enabled.
    pub fn supports(&self, name: &str) -> bool {
        self.supported_commands
            .iter()
            .any(|c| c.name == name && c.enabled)
    }
}

/// What [`Qga::frozen`] did.
#[derive(Debug)]
pub struct FreezeRun<T> {
    /// The operation's output: present when the freeze succeeded and the operation ran while
    /// the guest's filesystems were frozen.
    pub output: Option<T>,
    /// Filesystems the freeze froze (0 when it failed).
    pub frozen: u32,
    /// Why the freeze failed (the operation did not run).
    pub freeze_error: Option<QgaError>,
    /// Why the thaw was not confirmed: the guest may still be frozen.
    pub thaw_error: Option<QgaError>,
}

impl<T> FreezeRun<T> {
    /// The output when everything succeeded; else the thaw's error (the most urgent), else the
    /// freeze's.
    pub fn into_result(self) -> Result<T, QgaError> {
        if let Some(e) = self.thaw_error {
            return Err(e);
        }
        if let Some(e) = self.freeze_error {
            return Err(e);
        }
        self.output.ok_or_else(|| QgaError::Malformed {
            socket: PathBuf::new(),
            command: "guest-fsfreeze-freeze".into(),
            detail: "no output and no error (internal)".into(),
        })
    }
}

/// A connection to a VM's guest agent.
#[derive(Debug)]
pub struct Qga {
    socket: PathBuf,
    stream: UnixStream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The deadline for commands without their own.
    timeout: Duration,
    /// Whether answers match commands (false before the first sync and after a failure).
    in_sync: bool,
    next_id: u64,
    /// When the current command began (for timeout errors).
    began: Instant,
}

impl Qga {
    /// Connects to `socket`, checks that it is served by `qemu_pid` (the VM's QEMU: nothing is
    /// sent otherwise) and synchronizes with the guest agent. `timeout` bounds this and every
    /// later command that takes no timeout of its own.
    pub async fn connect(
        socket: impl AsRef<Path>,
        qemu_pid: u32,
        timeout: Duration,
    ) -> Result<Qga, QgaError> {
        let socket = socket.as_ref().to_path_buf();
        let deadline = Instant::now() + timeout;
        let stream = match tokio::time::timeout_at(deadline, UnixStream::connect(&socket)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QgaError::Connect { socket, source }),
            Err(_) => {
                return Err(QgaError::Timeout {
                    socket,
                    command: "connect".into(),
                    after: timeout,
                })
            }
        };
        let cred = stream.peer_cred().map_err(|source| QgaError::Io {
            socket: socket.clone(),
            what: "reading the peer's credentials (SO_PEERCRED)".into(),
            source,
        })?;
        if cred.pid().map(i64::from) != Some(i64::from(qemu_pid)) {
            return Err(QgaError::WrongPeer {
                socket,
                peer: cred
                    .pid()
                    .map_or_else(|| "unknown".into(), |p| p.to_string()),
                expected: qemu_pid,
            });
        }
        // A start that differs per connection, so a stale answer from an earlier client's sync
        // cannot match ours.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut qga = Qga {
            socket,
            stream,
            buf: Vec::new(),
            timeout,
            in_sync: false,
            began: Instant::now(),
            next_id: (nanos ^ (u64::from(std::process::id()) << 40)) & ((1 << 52) - 1),
        };
        qga.sync(deadline).await?;
        Ok(qga)
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `guest-ping`: the agent answers.
    pub async fn ping(&mut self) -> Result<(), QgaError> {
        self.execute("guest-ping", None, self.deadline()).await?;
        Ok(())
    }

    /// `guest-info`.
    pub async fn info(&mut self) -> Result<GuestInfo, QgaError> {
        let v = self.execute("guest-info", None, self.deadline()).await?;
        serde_json::from_value(v).map_err(|e| self.malformed("guest-info", e.to_string()))
    }

    /// `guest-fsfreeze-status`.
    pub async fn fsfreeze_status(&mut self) -> Result<FsfreezeStatus, QgaError> {
        self.status_until(self.deadline()).await
    }

    /// `guest-fsfreeze-freeze`: freezes every freezable filesystem of the guest; returns how
    /// many. Prefer [`Qga::frozen`], which always thaws.
    pub async fn fsfreeze_freeze(&mut self, timeout: Duration) -> Result<u32, QgaError> {
        let deadline = Instant::now() + timeout;
        self.count("guest-fsfreeze-freeze", deadline).await
    }

    /// `guest-fsfreeze-thaw`: thaws the guest's filesystems; returns how many.
    pub async fn fsfreeze_thaw(&mut self, timeout: Duration) -> Result<u32, QgaError> {
        let deadline = Instant::now() + timeout;
        self.count("guest-fsfreeze-thaw", deadline).await
    }

    /// Thaws until the guest reports `thawed` (resynchronizing after failures, e.g. behind a
    /// freeze that is still running), up to `timeout`. Returns the filesystems thawed.
    pub async fn ensure_thawed(&mut self, timeout: Duration) -> Result<u32, QgaError> {
        let deadline = Instant::now() + timeout;
        let mut thawed = 0u32;
        loop {
            let last = match self.count("guest-fsfreeze-thaw", deadline).await {
                Ok(n) => {
                    thawed = thawed.saturating_add(n);
                    match self.status_until(deadline).await {
                        Ok(FsfreezeStatus::Thawed) => return Ok(thawed),
                        Ok(FsfreezeStatus::Frozen) => None,
                        Err(e) => Some(e),
                    }
                }
                Err(e) => Some(e),
            };
            if Instant::now() >= deadline {
                let last = last.unwrap_or_else(|| QgaError::Timeout {
                    socket: self.socket.clone(),
                    command: "guest-fsfreeze-status (still frozen)".into(),
                    after: timeout,
                });
                return Err(QgaError::ThawFailed {
                    socket: self.socket.clone(),
                    after: timeout,
                    last: Box::new(last),
                });
            }
            if let Some(e @ QgaError::Closed { .. }) = last {
                return Err(QgaError::ThawFailed {
                    socket: self.socket.clone(),
                    after: timeout,
                    last: Box::new(e),
                });
            }
            tokio::time::sleep_until((Instant::now() + Duration::from_millis(100)).min(deadline))
                .await;
        }
    }

    /// Freezes the guest's filesystems (up to `freeze_timeout`), runs `op` while they are
    /// frozen, and thaws them again (up to [`THAW_TIMEOUT`]), always: also when `op`'s output is
    /// an error and when the freeze failed or timed out. `op` should be short: the guest's
    /// writes wait for it.
    pub async fn frozen<T, F, Fut>(&mut self, freeze_timeout: Duration, op: F) -> FreezeRun<T>
    where
        F: FnOnce(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut run = FreezeRun {
            output: None,
            frozen: 0,
            freeze_error: None,
            thaw_error: None,
        };
        match self.fsfreeze_freeze(freeze_timeout).await {
            Ok(n) => {
                run.frozen = n;
                run.output = Some(op(n).await);
            }
            Err(e) => run.freeze_error = Some(e),
        }
        if let Err(e) = self.ensure_thawed(THAW_TIMEOUT).await {
            tracing::error!(socket = %self.socket.display(), error = %e, "guest thaw not confirmed");
            run.thaw_error = Some(e);
        }
        run
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    fn malformed(&self, command: &str, detail: String) -> QgaError {
        QgaError::Malformed {
            socket: self.socket.clone(),
            command: command.into(),
            detail,
        }
    }

    async fn status_until(&mut self, deadline: Instant) -> Result<FsfreezeStatus, QgaError> {
        let cmd = "guest-fsfreeze-status";
        match self.execute(cmd, None, deadline).await? {
            Value::String(s) if s == "thawed" => Ok(FsfreezeStatus::Thawed),
            Value::String(s) if s == "frozen" => Ok(FsfreezeStatus::Frozen),
            v => Err(self.malformed(cmd, format!("expected \"thawed\" or \"frozen\", got {v}"))),
        }
    }

    async fn count(&mut self, cmd: &str, deadline: Instant) -> Result<u32, QgaError> {
        let v = self.execute(cmd, None, deadline).await?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.malformed(cmd, format!("expected a count, got {v}")))
    }

    /// Runs `cmd`, synchronizing first when needed; its `return` value.
    async fn execute(
        &mut self,
        cmd: &str,
        args: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, QgaError> {
        self.began = Instant::now();
        if !self.in_sync {
            self.sync(deadline).await?;
        }
        let mut req = json!({ "execute": cmd });
        if let Some(a) = args {
            req["arguments"] = a;
        }
        self.send(cmd, &[], &req, deadline).await?;
        let r = self.answer(cmd, deadline).await;
        // After a timeout or a malformed answer, the next answer may not be ours.
        self.in_sync = matches!(r, Ok(_) | Err(QgaError::Command { .. }));
        r
    }

    /// `guest-sync-delimited` (see the module doc).
    async fn sync(&mut self, deadline: Instant) -> Result<(), QgaError> {
        let cmd = "guest-sync-delimited";
        let id = self.next_id;
        self.next_id = (self.next_id + 1) & ((1 << 52) - 1);
        let req = json!({ "execute": cmd, "arguments": { "id": id } });
        self.send(cmd, &[DELIMITER], &req, deadline).await?;
        loop {
            // Discard up to and including the delimiter.
            loop {
                if let Some(i) = self.buf.iter().position(|&b| b == DELIMITER) {
                    self.buf.drain(..=i);
                    break;
                }
                self.buf.clear();
                self.fill(cmd, deadline).await?;
            }
            match self.answer(cmd, deadline).await? {
                v if v.as_u64() == Some(id) => {
                    self.in_sync = true;
                    return Ok(());
                }
                // An earlier sync's answer.
                Value::Number(_) => continue,
                v => return Err(self.malformed(cmd, format!("expected the id {id}, got {v}"))),
            }
        }
    }

    async fn send(
        &mut self,
        cmd: &str,
        prefix: &[u8],
        req: &Value,
        deadline: Instant,
    ) -> Result<(), QgaError> {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(req.to_string().as_bytes());
        bytes.push(b'\n');
        let r = tokio::time::timeout_at(deadline, self.stream.write_all(&bytes)).await;
        self.io_outcome(cmd, || format!("sending {cmd}"), r)
    }

    /// An I/O step's result; any failure puts the connection out of step.
    fn io_outcome<T>(
        &mut self,
        cmd: &str,
        what: impl FnOnce() -> String,
        r: Result<std::io::Result<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, QgaError> {
        let e = match r {
            Ok(Ok(t)) => return Ok(t),
            Ok(Err(source)) => QgaError::Io {
                socket: self.socket.clone(),
                what: what(),
                source,
            },
            Err(_) => self.timeout_error(cmd),
        };
        self.in_sync = false;
        Err(e)
    }

    fn timeout_error(&self, cmd: &str) -> QgaError {
        QgaError::Timeout {
            socket: self.socket.clone(),
            command: cmd.into(),
            after: self.began.elapsed(),
        }
    }

    /// Reads more bytes into the buffer (at least one), before `deadline`.
    async fn fill(&mut self, cmd: &str, deadline: Instant) -> Result<(), QgaError> {
        let mut chunk = [0u8; 4096];
        let r = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
        match self.io_outcome(cmd, || format!("reading the answer to {cmd}"), r)? {
            0 => {
                self.in_sync = false;
                Err(QgaError::Closed {
                    socket: self.socket.clone(),
                    command: cmd.into(),
                })
            }
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// The next answer line: its `return` value, or the agent's error.
    async fn answer(&mut self, cmd: &str, deadline: Instant) -> Result<Value, QgaError> {
        let line = loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                break line;
            }
            if self.buf.len() > MAX_REPLY {
                self.buf.clear();
                return Err(self.malformed(cmd, format!("an answer longer than {MAX_REPLY} bytes")));
            }
            self.fill(cmd, deadline).await?;
        };
        let shown = || String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        let v: Value = serde_json::from_slice(&line)
            .map_err(|e| self.malformed(cmd, format!("not JSON ({e}): {:?}", shown())))?;
        if let Some(r) = v.get("return") {
            return Ok(r.clone());
        }
        if let Some(err) = v.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
            return match (field("class"), field("desc")) {
                (Some(class), Some(desc)) => Err(QgaError::Command {
                    socket: self.socket.clone(),
                    command: cmd.into(),
                    class,
                    desc,
                }),
                _ => Err(self.malformed(cmd, format!("an error without class and desc: {v}"))),
            };
        }
        Err(self.malformed(
            cmd,
            format!("neither \"return\" nor \"error\": {:?}", shown()),
        ))
    }
}
