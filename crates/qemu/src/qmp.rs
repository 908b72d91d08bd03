//! An in-house QMP client on tokio (QEMU Machine Protocol: line-delimited JSON on a unix socket).
//!
//! Protocol, as QEMU 7.2 speaks it:
//!
//! ```text
//! QEMU:   {"QMP": {"version": {"qemu": {"major": 7, ...}, "package": "..."}, "capabilities": [...]}}
//! client: {"execute": "qmp_capabilities", "id": 1}
//! QEMU:   {"return": {}, "id": 1}
//! client: {"execute": "query-status", "id": 2}
//! QEMU:   {"event": "STOP", "data": {}, "timestamp": {"seconds": ..., "microseconds": ...}}
//! QEMU:   {"return": {"status": "running", "running": true, ...}, "id": 2}
//!         {"error": {"class": "GenericError", "desc": "..."}, "id": 3}
//! ```
//!
//! * One reader task owns the socket's read half. Replies are matched to commands by `id` (every
//!   command gets a fresh number) and handed over through a oneshot channel; events go to a
//!   broadcast channel ([`QmpClient::events`]), never to a command's caller.
//! * An error reply becomes [`QmpError::Command`] with QMP's `class` and `desc`.
//! * Anything else from the socket is outside data and never trusted: a line that is not JSON,
//!   not an object, not one of greeting / reply / error / event, a reply without an id, a second
//!   greeting, a line longer than [`MAX_LINE`], or bytes after which the socket closes mid-line
//!   all **break the connection**: every waiting command and every later one gets
//!   [`QmpError::Disconnected`] with the reason, and event receivers see the channel close. No
//!   input makes the client panic ([`parse_line`] is property-tested on arbitrary bytes).
//! * A reply whose id matches no waiting command (the reply to a command that timed out) is
//!   dropped.
//! * Every command has a timeout ([`QmpClient::set_timeout`]; default 30 s); a command that
//!   timed out may still run in QEMU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Longest line accepted from the socket (QEMU's largest replies, e.g. `query-qmp-schema`, are
/// a few hundred KiB).
pub const MAX_LINE: usize = 16 << 20;
/// Default timeout of one command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for a receiver that lags behind.
const EVENT_BUFFER: usize = 1024;

/// A QMP failure, naming the socket and the command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to.
    #[error("connecting to QMP socket {socket}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed (no greeting, a malformed one, or capabilities refused).
    #[error("QMP handshake on {socket}: {reason}")]
    Handshake {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command {command} on {socket} failed: {class}: {desc}")]
    Command {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// QMP's error class (`GenericError`, `CommandNotFound`, `DeviceNotFound`, ...).
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// No reply in time.
    #[error("QMP command {command} on {socket}: no reply within {after:?}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The connection is gone (closed by QEMU, or broken by a malformed line).
    #[error("QMP command {command} on {socket}: connection lost: {reason}")]
    Disconnected {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// Why the connection ended.
        reason: String,
    },
    /// The caller's arguments are not a JSON object.
    #[error("QMP command {command} on {socket}: arguments must be a JSON object, got {found}")]
    BadArguments {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// What was given instead.
        found: String,
    },
    /// The reply's `return` value does not have the expected shape.
    #[error("QMP command {command} on {socket}: unexpected return value {value}: {reason}")]
    BadReturn {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// The value (shortened).
        value: String,
        /// The decoding error.
        reason: String,
    },
}

impl QmpError {
    /// Whether the connection is gone (as after `quit`, or when QEMU exited).
    pub fn is_disconnected(&self) -> bool {
        matches!(self, QmpError::Disconnected { .. })
    }
}

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// The event name (`SHUTDOWN`, `POWERDOWN`, `STOP`, `RESUME`, `RESET`, ...).
    pub name: String,
    /// Its data (`Value::Null` when absent).
    pub data: Value,
    /// When QEMU emitted it: seconds and microseconds since the Unix epoch.
    pub timestamp: Option<(i64, i64)>,
}

/// QEMU's greeting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QmpGreeting {
    /// QEMU's version (major, minor, micro), zeros when not given.
    pub version: (u64, u64, u64),
    /// The distribution's package string.
    pub package: String,
    /// Capabilities QEMU offers (not enabled by this client).
    pub capabilities: Vec<String>,
}

/// `query-status`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `shutdown`, `internal-error`, ...).
    pub status: String,
}

/// One line from the socket, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting (first line only).
    Greeting(QmpGreeting),
    /// A successful reply.
    Return {
        /// The command's id, if any.
        id: Option<Value>,
        /// The `return` value.
        value: Value,
    },
    /// An error reply.
    Error {
        /// The command's id, if any (QEMU omits it when it could not parse the command).
        id: Option<Value>,
        /// QMP's error class.
        class: String,
        /// QMP's description.
        desc: String,
    },
    /// An event.
    Event(QmpEvent),
}

/// Classifies one line (without its newline). Never panics, whatever the bytes.
pub fn parse_line(line: &[u8]) -> Result<Message, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Object(mut obj) = v else {
        return Err("not a JSON object".into());
    };
    let id = obj.remove("id");
    if let Some(g) = obj.remove("QMP") {
        return parse_greeting(g).map(Message::Greeting);
    }
    if let Some(name) = obj.remove("event") {
        let Value::String(name) = name else {
            return Err("an event whose name is not a string".into());
        };
        let data = obj.remove("data").unwrap_or(Value::Null);
        let timestamp = obj.remove("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_i64()?,
                t.get("microseconds")?.as_i64()?,
            ))
        });
        return Ok(Message::Event(QmpEvent {
            name,
            data,
            timestamp,
        }));
    }
    if let Some(value) = obj.remove("return") {
        return Ok(Message::Return { id, value });
    }
    if let Some(err) = obj.remove("error") {
        let class = err.get("class").and_then(Value::as_str);
        let desc = err.get("desc").and_then(Value::as_str);
        let (Some(class), Some(desc)) = (class, desc) else {
            return Err("an error without a string class and desc".into());
        };
        return Ok(Message::Error {
            id,
            class: class.to_owned(),
            desc: desc.to_owned(),
        });
    }
    Err("neither a greeting, a reply, an error nor an event".into())
}

fn parse_greeting(g: Value) -> Result<QmpGreeting, String> {
    if !g.is_object() {
        return Err("a greeting that is not an object".into());
    }
    let ver = |k: &str| {
        g.pointer(&format!("/version/qemu/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(QmpGreeting {
        version: (ver("major"), ver("minor"), ver("micro")),
        package: g
            .pointer("/version/package")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        capabilities: g
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The first `n` characters of a line, for error messages.
fn preview(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    let mut p: String = s.chars().take(120).collect();
    if s.chars().count() > 120 {
        p.push_str("...");
    }
    p
}

/// Reads one `\n`-terminated line of at most `max` bytes; `None` at a clean end of stream.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the socket closed in the middle of a line: {}",
                    preview(&line)
                ),
            ));
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a line longer than {max} bytes"),
            ));
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(line));
        }
    }
}

/// How a command's reply arrives from the reader task.
enum Reply {
    Ok(Value),
    Err { class: String, desc: String },
    Broken(String),
}

struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Why the connection is broken, once it is.
    broken: Option<String>,
    /// None once broken (receivers then see the channel closed).
    events: Option<broadcast::Sender<QmpEvent>>,
    /// The receiver made at connect time, for the first `events()` call.
    first_events: Option<broadcast::Receiver<QmpEvent>>,
}

struct Inner {
    socket: PathBuf,
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (single inserts and
        // removals), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail_all(&self, reason: String) {
        let mut st = self.lock();
        if st.broken.is_none() {
            tracing::debug!(socket = %self.socket.display(), %reason, "QMP connection ended");
            st.broken = Some(reason.clone());
        }
        st.events = None;
        for (_, tx) in st.pending.drain() {
            let _ = tx.send(Reply::Broken(reason.clone()));
        }
    }

    fn complete(&self, id: Option<Value>, reply: Reply) -> Result<(), String> {
        let Some(id) = id else {
            return Err(match reply {
                Reply::Err { class, desc } => {
                    format!("an error reply without an id: {class}: {desc}")
                }
                _ => "a reply without an id".into(),
            });
        };
        let tx = id.as_u64().and_then(|n| self.lock().pending.remove(&n));
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => {
                tracing::debug!(socket = %self.socket.display(), %id, "QMP reply to no waiting command (timed out?) dropped")
            }
        }
        Ok(())
    }
}

async fn read_loop<R: AsyncBufRead + Unpin>(inner: Arc<Inner>, mut rd: R) {
    let reason = loop {
        let line = match read_line(&mut rd, MAX_LINE).await {
            Ok(Some(line)) => line,
            Ok(None) => break "QEMU closed the QMP socket".to_owned(),
            Err(e) => break format!("reading the QMP socket: {e}"),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let outcome = match parse_line(&line) {
            Err(e) => Err(e),
            Ok(Message::Event(ev)) => {
                if let Some(tx) = &inner.lock().events {
                    let _ = tx.send(ev);
                }
                Ok(())
            }
            Ok(Message::Return { id, value }) => inner.complete(id, Reply::Ok(value)),
            Ok(Message::Error { id, class, desc }) => {
                inner.complete(id, Reply::Err { class, desc })
            }
            Ok(Message::Greeting(_)) => Err("a second greeting".into()),
        };
        if let Err(e) = outcome {
            break format!("malformed line from QEMU ({e}): {}", preview(&line));
        }
    };
    inner.fail_all(reason);
}

/// A connected, negotiated QMP session. Cheap to share behind an `Arc`; commands may run
/// concurrently.
pub struct QmpClient {
    inner: Arc<Inner>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    timeout: Duration,
    greeting: QmpGreeting,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("socket", &self.inner.socket)
            .field("greeting", &self.greeting)
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to `socket`, reads the greeting and negotiates capabilities (none enabled), each
    /// step within `timeout`.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let handshake = |reason: String| QmpError::Handshake {
            socket: socket.to_owned(),
            reason,
        };
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| QmpError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let line = match tokio::time::timeout(timeout, read_line(&mut rd, MAX_LINE)).await {
            Err(_) => return Err(handshake(format!("no greeting within {timeout:?}"))),
            Ok(Err(e)) => return Err(handshake(format!("reading the greeting: {e}"))),
            Ok(Ok(None)) => return Err(handshake("the socket closed before the greeting".into())),
            Ok(Ok(Some(line))) => line,
        };
        let greeting = match parse_line(&line) {
            Ok(Message::Greeting(g)) => g,
            Ok(_) => {
                return Err(handshake(format!(
                    "the first line is not a greeting: {}",
                    preview(&line)
                )))
            }
            Err(e) => {
                return Err(handshake(format!(
                    "malformed greeting ({e}): {}",
                    preview(&line)
                )))
            }
        };
        let (tx, rx) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(Inner {
            socket: socket.to_owned(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                broken: None,
                events: Some(tx),
                first_events: Some(rx),
            }),
        });
        let reader = tokio::spawn(read_loop(inner.clone(), rd));
        let client = QmpClient {
            inner,
            writer: tokio::sync::Mutex::new(wr),
            next_id: AtomicU64::new(1),
            timeout,
            greeting,
            reader,
        };
        client
            .execute("qmp_capabilities", None)
            .await
            .map_err(|e| handshake(e.to_string()))?;
        Ok(client)
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// QEMU's greeting.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// Sets the timeout of each later command.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Events: the first call gets every event since the handshake, later calls those from then
    /// on. A receiver that falls more than 1024 events behind loses the oldest (`Lagged`); the
    /// channel closes when the connection ends.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        let mut st = self.inner.lock();
        if let Some(rx) = st.first_events.take() {
            return rx;
        }
        match &st.events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Why the connection is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.inner.lock().broken.clone()
    }

    /// Runs `command` with `arguments` (a JSON object, or None) and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let socket = || self.inner.socket.clone();
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::String(command.to_owned()));
        match arguments {
            None => {}
            Some(Value::Object(args)) => {
                msg.insert("arguments".into(), Value::Object(args));
            }
            Some(other) => {
                return Err(QmpError::BadArguments {
                    socket: socket(),
                    command: command.to_owned(),
                    found: preview(other.to_string().as_bytes()),
                })
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string().into_bytes();
        line.push(b'\n');

        let disconnected = |reason: String| QmpError::Disconnected {
            socket: socket(),
            command: command.to_owned(),
            reason,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.inner.lock();
            if let Some(reason) = &st.broken {
                return Err(disconnected(reason.clone()));
            }
            st.pending.insert(id, tx);
        }
        let written = {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await
        };
        if let Err(e) = written {
            self.inner.lock().pending.remove(&id);
            return Err(disconnected(format!("writing the command: {e}")));
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => {
                self.inner.lock().pending.remove(&id);
                Err(QmpError::Timeout {
                    socket: socket(),
                    command: command.to_owned(),
                    after: self.timeout,
                })
            }
            Ok(Err(_)) => Err(disconnected("the reader stopped".into())),
            Ok(Ok(Reply::Ok(v))) => Ok(v),
            Ok(Ok(Reply::Err { class, desc })) => Err(QmpError::Command {
                socket: socket(),
                command: command.to_owned(),
                class,
                desc,
            }),
            Ok(Ok(Reply::Broken(reason))) => Err(disconnected(reason)),
        }
    }

    /// Runs `command` and decodes its `return` value as `T`.
    pub async fn execute_as<T: serde::de::DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self.execute(command, arguments).await?;
        serde_json::from_value(v.clone()).map_err(|e| QmpError::BadReturn {
            socket: self.inner.socket.clone(),
            command: command.to_owned(),
            value: preview(v.to_string().as_bytes()),
            reason: e.to_string(),
        })
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute_as("query-status", None).await
    }

    /// `system_powerdown`: presses the ACPI power button (the guest decides what to do).
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once (after draining I/O); the connection then closes.
    pub async fn quit(&self) -> Result<(), QmpError> {
        self.execute("quit", None).await.map(drop)
    }

    /// `stop`: pauses the vCPUs.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// `cont`: resumes the vCPUs.
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_qemu_lines() {
        let g = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2"}, "capabilities": ["oob"]}}"#;
        assert_eq!(
            parse_line(g).unwrap(),
            Message::Greeting(QmpGreeting {
                version: (7, 2, 22),
                package: "Debian 1:7.2".into(),
                capabilities: vec!["oob".into()],
            })
        );
        assert_eq!(
            parse_line(br#"{"return": {}, "id": 3}"#).unwrap(),
            Message::Return {
                id: Some(json!(3)),
                value: json!({})
            }
        );
        assert_eq!(
            parse_line(br#"{"id": 4, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#).unwrap(),
            Message::Error {
                id: Some(json!(4)),
                class: "CommandNotFound".into(),
                desc: "The command nope has not been found".into()
            }
        );
        assert_eq!(
            parse_line(br#"{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "POWERDOWN"}"#).unwrap(),
            Message::Event(QmpEvent {
                name: "POWERDOWN".into(),
                data: Value::Null,
                timestamp: Some((1_700_000_000, 5)),
            })
        );
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"\"text\"",
            b"{}",
            b"{\"event\": 5}",
            b"{\"error\": {\"class\": 1}}",
            b"{\"error\": \"x\"}",
            b"{\"QMP\": []}",
            b"\xff\xfe{",
            b"{\"return\": {}",
        ] {
            assert!(parse_line(bad).is_err(), "{:?} accepted", preview(bad));
        }
    }

    proptest! {
        #[test]
        fn parse_line_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn parse_line_never_panics_on_json_like(s in r#"[{}\[\]":,a-zA-Z0-9 \\.-]{0,80}"#) {
            let _ = parse_line(s.as_bytes());
            let wrapped = format!(r#"{{"return": {s}, "id": {s}}}"#);
            let _ = parse_line(wrapped.as_bytes());
            let ev = format!(r#"{{"event": "X", "data": {s}, "timestamp": {s}}}"#);
            let _ = parse_line(ev.as_bytes());
        }
    }

    #[tokio::test]
    async fn read_line_limits_and_eof() {
        let data: &[u8] = b"one\ntwo\nthree";
        let mut r = BufReader::new(data);
        assert_eq!(read_line(&mut r, 10).await.unwrap().unwrap(), b"one");
        assert_eq!(read_line(&mut r, 10).await.unwrap().unwrap(), b"two");
        let e = read_line(&mut r, 10).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let mut r = BufReader::new(&b""[..]);
        assert!(read_line(&mut r, 10).await.unwrap().is_none());
        let long = [b'x'; 100];
        let mut r = BufReader::with_capacity(7, &long[..]);
        let e = read_line(&mut r, 50).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
