//! The QMP client against a scripted fake QMP server on a unix socket (a test double beside the
//! real-QEMU tests in `qemu_vm.rs`): replies, error replies, interleaved events, and malformed
//! input from the socket, which must give errors, never panics or hangs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_qemu::{QmpClient, QmpError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}"#;
const T: Duration = Duration::from_secs(10);

/// The server side of one connection.
struct Peer {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Peer {
    /// The next command the client sent: (name, id, arguments).
    async fn command(&mut self) -> (String, Value, Value) {
        let mut line = String::new();
        let n = tokio::time::timeout(T, self.rd.read_line(&mut line))
            .await
            .expect("a command within the timeout")
            .expect("read a command");
        assert!(n > 0, "the client closed the socket");
        let v: Value = serde_json::from_str(&line).expect("the client sends JSON");
        (
            v["execute"]
                .as_str()
                .expect("execute is a string")
                .to_owned(),
            v["id"].clone(),
            v.get("arguments").cloned().unwrap_or(Value::Null),
        )
    }

    async fn send(&mut self, line: &str) {
        self.wr.write_all(line.as_bytes()).await.unwrap();
        self.wr.write_all(b"\r\n").await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
    }

    async fn reply(&mut self, id: &Value, ret: Value) {
        self.send(&json!({"return": ret, "id": id}).to_string())
            .await;
    }

    /// Greeting and capabilities negotiation.
    async fn handshake(&mut self) {
        self.send(GREETING).await;
        let (cmd, id, _) = self.command().await;
        assert_eq!(cmd, "qmp_capabilities");
        self.reply(&id, json!({})).await;
    }
}

/// A fake server at a fresh socket; `script` runs on the first connection.
fn fake<F, Fut>(dir: &Path, script: F) -> (PathBuf, tokio::task::JoinHandle<()>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let sock = dir.join("qmp.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, wr) = stream.into_split();
        script(Peer {
            rd: BufReader::new(rd),
            wr,
        })
        .await;
    });
    (sock, task)
}

#[tokio::test]
async fn replies_errors_and_events_are_kept_apart() {
    let tmp = lifeboat_testkit::tempdir();
    let (sock, server) = fake(tmp.path(), |mut p| async move {
        p.handshake().await;
        let (cmd, id, _) = p.command().await;
        assert_eq!(cmd, "query-status");
        // An event before the reply: it goes to the event channel, not to the caller.
        p.send(r#"{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#)
            .await;
        p.reply(
            &id,
            json!({"status": "paused", "running": false, "singlestep": false}),
        )
        .await;
        let (cmd, id, args) = p.command().await;
        assert_eq!(cmd, "human-monitor-command");
        assert_eq!(args, json!({"command-line": "info nope"}));
        p.send(
            &json!({"error": {"class": "GenericError", "desc": "no such info"}, "id": id})
                .to_string(),
        )
        .await;
        let (cmd, id, _) = p.command().await;
        assert_eq!(cmd, "cont");
        p.send(r#"{"event": "RESUME", "timestamp": {"seconds": 3, "microseconds": 4}}"#)
            .await;
        p.reply(&id, json!({})).await;
        // A reply to no waiting command (one that timed out) is dropped, not fatal.
        p.reply(&json!(9999), json!({})).await;
        let (cmd, id, _) = p.command().await;
        assert_eq!(cmd, "stop");
        p.reply(&id, json!({})).await;
    });
    let qmp = QmpClient::connect(&sock, T).await.unwrap();
    assert_eq!(qmp.greeting().version, (7, 2, 0));
    assert_eq!(qmp.greeting().capabilities, ["oob"]);
    let mut events = qmp.events();

    let st = qmp.query_status().await.unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "paused"));
    let e = qmp
        .execute(
            "human-monitor-command",
            Some(json!({"command-line": "info nope"})),
        )
        .await
        .unwrap_err();
    match &e {
        QmpError::Command {
            class,
            desc,
            command,
            socket,
        } => {
            assert_eq!(class, "GenericError");
            assert_eq!(desc, "no such info");
            assert_eq!(command, "human-monitor-command");
            assert_eq!(socket, &sock);
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(e.to_string().contains("GenericError: no such info"), "{e}");
    qmp.cont().await.unwrap();
    qmp.stop().await.unwrap();

    let ev = events.recv().await.unwrap();
    assert_eq!(ev.name, "STOP");
    assert_eq!(ev.timestamp, Some((1, 2)));
    let ev = events.recv().await.unwrap();
    assert_eq!(ev.name, "RESUME");
    assert_eq!(ev.data, Value::Null);
    server.await.unwrap();
}

#[tokio::test]
async fn arguments_must_be_an_object() {
    let tmp = lifeboat_testkit::tempdir();
    let (sock, _server) = fake(tmp.path(), |mut p| async move {
        p.handshake().await;
        let _ = p.command().await; // never answered
    });
    let qmp = QmpClient::connect(&sock, T).await.unwrap();
    let e = qmp.execute("x", Some(json!([1, 2]))).await.unwrap_err();
    assert!(matches!(e, QmpError::BadArguments { .. }), "{e}");
}

/// Each malformed input breaks the connection: the waiting command and every later one fail
/// with the reason; the event channel closes.
#[tokio::test]
async fn malformed_lines_break_the_connection_with_a_clear_error() {
    let cases: &[(&str, &[u8])] = &[
        ("not JSON", b"this is not json\r\n"),
        ("not a JSON object", b"[1, 2, 3]\r\n"),
        ("neither a greeting", b"{\"hello\": 1}\r\n"),
        (
            "without a string class",
            b"{\"error\": {\"class\": 5}, \"id\": 2}\r\n",
        ),
        ("a reply without an id", b"{\"return\": {}}\r\n"),
        (
            "an error reply without an id",
            b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\r\n",
        ),
        ("a second greeting", b"{\"QMP\": {}}\r\n"),
        ("not JSON", b"\xff\xfe\xfd\r\n"),
        ("closed in the middle of a line", b"{\"return\": {}, \"id\""),
        ("not JSON", b"{\"return\": {}, \"id\": 2\r\n"),
    ];
    for (want, bytes) in cases {
        let tmp = lifeboat_testkit::tempdir();
        let bytes = bytes.to_vec();
        let (sock, server) = fake(tmp.path(), move |mut p| async move {
            p.handshake().await;
            let _ = p.command().await;
            p.send_raw(&bytes).await;
            // Close (the mid-line case needs EOF); the others are broken before this matters.
        });
        let qmp = QmpClient::connect(&sock, T).await.unwrap();
        let mut events = qmp.events();
        let e = qmp.query_status().await.unwrap_err();
        assert!(
            e.is_disconnected() && e.to_string().contains(want),
            "input {:?}: expected a lost connection mentioning {want:?}, got: {e}",
            String::from_utf8_lossy(bytes_of(cases, want))
        );
        let later = qmp.cont().await.unwrap_err();
        assert!(later.is_disconnected(), "{later}");
        assert!(qmp.broken().is_some());
        assert!(matches!(
            events.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ));
        server.await.unwrap();
    }
}

fn bytes_of<'a>(cases: &'a [(&str, &[u8])], want: &str) -> &'a [u8] {
    cases
        .iter()
        .find(|(w, _)| *w == want)
        .map(|(_, b)| *b)
        .unwrap_or(b"")
}

#[tokio::test]
async fn oversized_line_is_refused() {
    let tmp = lifeboat_testkit::tempdir();
    let (sock, server) = fake(tmp.path(), |mut p| async move {
        p.handshake().await;
        let _ = p.command().await;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..17 {
            if p.wr.write_all(&chunk).await.is_err() {
                break; // the client gave up reading: fine
            }
        }
    });
    let qmp = QmpClient::connect(&sock, T).await.unwrap();
    let e = qmp.query_status().await.unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    drop(qmp); // closes the socket, so the server's last writes fail instead of blocking
    server.await.unwrap();
}

#[tokio::test]
async fn bad_greetings_fail_the_handshake() {
    for greeting in [
        &b"{\"return\": {}}\r\n"[..],
        b"garbage\r\n",
        b"",
        b"{\"QMP\": 1}\r\n",
    ] {
        let tmp = lifeboat_testkit::tempdir();
        let g = greeting.to_vec();
        let (sock, server) = fake(tmp.path(), move |mut p| async move {
            p.send_raw(&g).await;
        });
        let e = QmpClient::connect(&sock, T).await.unwrap_err();
        assert!(
            matches!(e, QmpError::Handshake { .. }),
            "greeting {:?}: {e}",
            String::from_utf8_lossy(greeting)
        );
        server.await.unwrap();
    }
    // Capabilities refused.
    let tmp = lifeboat_testkit::tempdir();
    let (sock, server) = fake(tmp.path(), |mut p| async move {
        p.send(GREETING).await;
        let (_, id, _) = p.command().await;
        p.send(&json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id}).to_string())
            .await;
    });
    let e = QmpClient::connect(&sock, T).await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    server.await.unwrap();
    // Nobody listening.
    let e = QmpClient::connect(&tmp.path().join("absent.sock"), T)
        .await
        .unwrap_err();
    assert!(matches!(e, QmpError::Connect { .. }), "{e}");
}

#[tokio::test]
async fn silent_server_times_out_and_late_reply_is_dropped() {
    let tmp = lifeboat_testkit::tempdir();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (sock, server) = fake(tmp.path(), |mut p| async move {
        p.handshake().await;
        let (_, late_id, _) = p.command().await;
        let _ = rx.await; // answer only after the client gave up
        p.reply(&late_id, json!({"status": "running", "running": true}))
            .await;
        let (cmd, id, _) = p.command().await;
        assert_eq!(cmd, "query-status");
        p.reply(&id, json!({"status": "running", "running": true}))
            .await;
    });
    let mut qmp = QmpClient::connect(&sock, T).await.unwrap();
    qmp.set_timeout(Duration::from_millis(200));
    let e = qmp.query_status().await.unwrap_err();
    assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    tx.send(()).unwrap();
    qmp.set_timeout(T);
    assert!(qmp.query_status().await.unwrap().running);
    server.await.unwrap();
}

#[tokio::test]
async fn concurrent_commands_get_their_own_replies() {
    let tmp = lifeboat_testkit::tempdir();
    let (sock, server) = fake(tmp.path(), |mut p| async move {
        p.handshake().await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(p.command().await);
        }
        // Answer in reverse order, each with its command's name.
        for (cmd, id, _) in got.iter().rev() {
            p.reply(id, json!({ "name": cmd })).await;
        }
    });
    let qmp = QmpClient::connect(&sock, T).await.unwrap();
    let (a, b, c) = tokio::join!(
        qmp.execute("a", None),
        qmp.execute("b", None),
        qmp.execute("c", None)
    );
    assert_eq!(a.unwrap(), json!({"name": "a"}));
    assert_eq!(b.unwrap(), json!({"name": "b"}));
    assert_eq!(c.unwrap(), json!({"name": "c"}));
    server.await.unwrap();
}
