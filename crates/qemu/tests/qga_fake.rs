//! The guest agent client against fake agents in this process (no QEMU): the peer check refuses
//! a socket not served by the expected process before sending anything, malformed and missing
//! answers are clear errors, and [`Qga::frozen`] thaws after a failing operation and after a
//! freeze that timed out.
//!
//! A fake agent is a `UnixListener` served by a thread of this test process, so the client is
//! told to expect this process's pid (or another one, for the peer check).

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lifeboat_qemu::{FsfreezeStatus, Qga, QgaError};
use lifeboat_testkit::tempdir;
use serde_json::Value;

const T: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(200);

/// What the fake answers to one command (sync is handled by the fake itself): bytes to send
/// (a newline is not added) after a delay, or nothing.
type Behavior = Box<dyn FnMut(&str, &mut FakeState) -> Option<(Duration, Vec<u8>)> + Send>;

#[derive(Debug, Default)]
struct FakeState {
    frozen: bool,
    /// Every command received, in order (with the sync's id).
    commands: Vec<String>,
    /// Every byte received.
    received: Vec<u8>,
}

struct Fake {
    path: PathBuf,
    state: Arc<Mutex<FakeState>>,
    thread: JoinHandle<()>,
}

impl Fake {
    fn commands(&self) -> Vec<String> {
        self.state.lock().expect("fake state").commands.clone()
    }
}

fn line(v: Value) -> Vec<u8> {
    let mut b = v.to_string().into_bytes();
    b.push(b'\n');
    b
}

/// A fake qemu-ga on `dir/qga.sock`, serving one connection.
fn fake(dir: &Path, mut behavior: Behavior) -> Fake {
    let path = dir.join("qga.sock");
    let listener = UnixListener::bind(&path).expect("bind the fake agent");
    let state = Arc::new(Mutex::new(FakeState::default()));
    let st = state.clone();
    let thread = std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        conn.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut s = st.lock().expect("fake state");
            s.received.extend_from_slice(&buf[..n]);
            pending.extend(buf[..n].iter().filter(|&&b| b != 0xFF));
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let req: Vec<u8> = pending.drain(..=i).collect();
                let Ok(req) = serde_json::from_slice::<Value>(&req) else {
                    continue;
                };
                let cmd = req["execute"].as_str().unwrap_or("?").to_owned();
                let reply = if cmd == "guest-sync-delimited" {
                    let id = req["arguments"]["id"].clone();
                    s.commands.push(format!("{cmd} {id}"));
                    let mut r = vec![0xFF];
                    r.extend(line(serde_json::json!({ "return": id })));
                    Some((Duration::ZERO, r))
                } else {
                    s.commands.push(cmd.clone());
                    behavior(&cmd, &mut s)
                };
                if let Some((delay, bytes)) = reply {
                    drop(s);
                    std::thread::sleep(delay);
                    if conn.write_all(&bytes).is_err() {
                        return;
                    }
                    s = st.lock().expect("fake state");
                }
            }
        }
    });
    Fake {
        path,
        state,
        thread,
    }
}

/// A well-behaved agent: freeze/thaw/status/ping, answering freeze after `freeze_delay`.
fn agent(freeze_delay: Duration) -> Behavior {
    Box::new(move |cmd, s| {
        let v = match cmd {
            "guest-ping" => serde_json::json!({}),
            "guest-fsfreeze-freeze" => {
                s.frozen = true;
                return Some((freeze_delay, line(serde_json::json!({ "return": 1 }))));
            }
            "guest-fsfreeze-thaw" => {
                let n = u32::from(s.frozen);
                s.frozen = false;
                serde_json::json!(n)
            }
            "guest-fsfreeze-status" => {
                serde_json::json!(if s.frozen { "frozen" } else { "thawed" })
            }
            _ => {
                return Some((
                    Duration::ZERO,
                    line(serde_json::json!({"error": {"class": "CommandNotFound", "desc": "no"}})),
                ))
            }
        };
        Some((Duration::ZERO, line(serde_json::json!({ "return": v }))))
    })
}

fn me() -> u32 {
    std::process::id()
}

#[tokio::test]
async fn a_socket_not_served_by_the_vms_qemu_is_refused_before_anything_is_sent() {
    let tmp = tempdir();
    let f = fake(tmp.path(), agent(Duration::ZERO));
    let not_me = me() + 1;
    let e = Qga::connect(&f.path, not_me, T)
        .await
        .expect_err("wrong peer");
    let msg = e.to_string();
    match &e {
        QgaError::WrongPeer {
            socket,
            peer,
            expected,
        } => {
            assert_eq!(socket, &f.path);
            assert_eq!(peer, &me().to_string());
            assert_eq!(*expected, not_me);
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }
    assert!(msg.contains(&f.path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("process {}", me())), "{msg}");
    assert!(msg.contains(&format!("pid {not_me}")), "{msg}");
    // The client closed the connection without writing: the fake saw EOF and no byte.
    f.thread.join().expect("fake agent thread");
    let s = f.state.lock().expect("fake state");
    assert!(s.received.is_empty(), "bytes were sent: {:?}", s.received);
}

#[tokio::test]
async fn connect_without_a_listener_names_the_socket() {
    let tmp = tempdir();
    let path = tmp.path().join("none.sock");
    let e = Qga::connect(&path, me(), T).await.expect_err("no socket");
    assert!(matches!(e, QgaError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("none.sock"), "{e}");
}

#[tokio::test]
async fn malformed_answers_are_errors_and_the_client_resynchronizes() {
    let tmp = tempdir();
    let mut n = 0;
    let behavior: Behavior = Box::new(move |cmd, _| {
        n += 1;
        let bytes: &[u8] = match (cmd, n) {
            ("guest-ping", 1) => b"this is not json\n",
            ("guest-ping", 2) => b"{\"neither\": 1}\n",
            ("guest-ping", 3) => b"{\"error\": {\"class\": 7}}\n",
            ("guest-ping", 4) => {
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n"
            }
            ("guest-fsfreeze-status", 5) => b"{\"return\": \"melting\"}\n",
            ("guest-fsfreeze-freeze", 6) => b"{\"return\": -3}\n",
            ("guest-info", 7) => b"{\"return\": {\"version\": 7}}\n",
            ("guest-ping", 8) => return None, // never answered: a timeout
            ("guest-ping", 9) => b"{\"return\": {}}\n",
            _ => b"\xff\xfe garbage\n",
        };
        Some((Duration::ZERO, bytes.to_vec()))
    });
    let f = fake(tmp.path(), behavior);
    let mut qga = Qga::connect(&f.path, me(), SHORT).await.expect("connect");
    let malformed = |r: Result<(), QgaError>, what: &str| match r {
        Err(QgaError::Malformed { detail, .. }) => assert!(detail.contains(what), "{detail}"),
        other => panic!("expected a malformed-answer error about {what:?}, got {other:?}"),
    };
    malformed(qga.ping().await, "not JSON");
    malformed(qga.ping().await, "neither");
    malformed(qga.ping().await, "without class and desc");
    match qga.ping().await {
        Err(e @ QgaError::Command { .. }) => {
            assert!(
                e.to_string()
                    .contains("guest-ping failed: GenericError: nope"),
                "{e}"
            )
        }
        other => panic!("expected the agent's error, got {other:?}"),
    }
    malformed(qga.fsfreeze_status().await.map(drop), "\"melting\"");
    malformed(qga.fsfreeze_freeze(T).await.map(drop), "expected a count");
    malformed(qga.info().await.map(drop), "expected a string");
    let t = Instant::now();
    match qga.ping().await {
        Err(e @ QgaError::Timeout { .. }) => {
            assert!(e.to_string().contains("no answer to guest-ping"), "{e}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = t.elapsed();
    assert!(waited >= SHORT && waited < SHORT * 4, "{waited:?}");
    qga.ping()
        .await
        .expect("a good answer after resynchronizing");

    // A sync precedes the first command and every command after an answer that was not one
    // JSON reply or after a timeout; not after the agent's own error or a well-formed reply of
    // the wrong type (one answer was read for one command: still in step).
    let kinds: Vec<&str> = f
        .commands()
        .iter()
        .map(|c| {
            if c.starts_with("guest-sync-delimited") {
                "sync"
            } else {
                "cmd"
            }
        })
        .collect();
    let expect = [
        "sync", "cmd", // connect, ping: not JSON
        "sync", "cmd", // ping: neither
        "sync", "cmd", // ping: error without class
        "sync", "cmd", // ping: the agent's error
        "cmd", // status: melting
        "cmd", // freeze: -3
        "cmd", // info: bad version
        "cmd", // ping: no answer
        "sync", "cmd", // ping: fine
    ];
    assert_eq!(kinds, expect, "{:?}", f.commands());
}

#[tokio::test]
async fn frozen_thaws_after_a_failing_operation() {
    let tmp = tempdir();
    let f = fake(tmp.path(), agent(Duration::ZERO));
    let mut qga = Qga::connect(&f.path, me(), T).await.expect("connect");
    let run = qga
        .frozen(T, |n| async move {
            Err::<(), String>(format!("op failed with {n} frozen"))
        })
        .await;
    assert_eq!(run.frozen, 1);
    assert!(
        run.freeze_error.is_none() && run.thaw_error.is_none(),
        "{run:?}"
    );
    assert_eq!(run.output, Some(Err("op failed with 1 frozen".to_owned())));
    assert!(!f.state.lock().expect("fake state").frozen);
    let cmds = f.commands();
    let freeze = cmds.iter().position(|c| c == "guest-fsfreeze-freeze");
    let thaw = cmds.iter().rposition(|c| c == "guest-fsfreeze-thaw");
    assert!(freeze < thaw && freeze.is_some(), "{cmds:?}");
    assert_eq!(
        cmds.last().map(String::as_str),
        Some("guest-fsfreeze-status")
    );
    assert_eq!(
        qga.fsfreeze_status().await.expect("status"),
        FsfreezeStatus::Thawed
    );
}

#[tokio::test]
async fn frozen_thaws_after_a_freeze_that_timed_out() {
    let tmp = tempdir();
    // The agent freezes but answers only after 1 s: the client gives up after 200 ms, and the
    // operation does not run; the thaw must still reach the agent.
    let f = fake(tmp.path(), agent(Duration::from_secs(1)));
    let mut qga = Qga::connect(&f.path, me(), T).await.expect("connect");
    let mut ran = false;
    let run = qga
        .frozen(SHORT, |_| {
            ran = true;
            async {}
        })
        .await;
    assert!(!ran, "the operation ran without a confirmed freeze");
    assert!(
        matches!(run.freeze_error, Some(QgaError::Timeout { .. })),
        "{run:?}"
    );
    assert!(run.thaw_error.is_none(), "{run:?}");
    assert!(
        !f.state.lock().expect("fake state").frozen,
        "{:?}",
        f.commands()
    );
    assert!(matches!(run.into_result(), Err(QgaError::Timeout { .. })));
}

#[tokio::test]
async fn thaw_that_never_confirms_is_reported_as_maybe_frozen() {
    let tmp = tempdir();
    // An agent that freezes and never thaws.
    let behavior: Behavior = Box::new(|cmd, s| {
        let v = match cmd {
            "guest-fsfreeze-freeze" => {
                s.frozen = true;
                serde_json::json!(1)
            }
            "guest-fsfreeze-thaw" => serde_json::json!(0),
            _ => serde_json::json!("frozen"),
        };
        Some((Duration::ZERO, line(serde_json::json!({ "return": v }))))
    });
    let f = fake(tmp.path(), behavior);
    let mut qga = Qga::connect(&f.path, me(), T).await.expect("connect");
    let e = qga.ensure_thawed(SHORT).await.expect_err("never thawed");
    assert!(matches!(e, QgaError::ThawFailed { .. }), "{e:?}");
    assert!(e.to_string().contains("MAY STILL BE FROZEN"), "{e}");
}
