//! `lifeboat vault` as a real process: it creates its token (0600), serves the API on loopback,
//! refuses requests without the token, and keeps its state across kill -9.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::LIFEBOAT;
use lifeboat_testkit::{free_loopback_port, wait_for_port, Procs};

/// One HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn start(procs: &mut Procs, data: &std::path::Path, port: u16) -> usize {
    let mut c = Command::new(LIFEBOAT);
    c.args(["vault", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let i = procs.spawn(c);
    wait_for_port(port, Duration::from_secs(30));
    i
}

#[test]
fn the_vault_serves_its_api_and_survives_kill9() {
    let dir = lifeboat_testkit::tempdir();
    let data = dir.path().join("vault");
    let port = free_loopback_port();
    let mut procs = Procs::new();
    let v = start(&mut procs, &data, port);
    let token_path = data.join("token");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_string();

    let (s, b) = http(port, "GET", "/api/regions", None, "");
    assert_eq!(s, 401, "{b}");
    let (s, b) = http(
        port,
        "POST",
        "/api/regions",
        Some(&token),
        r#"{"name":"primary","store_url":"/srv/p"}"#,
    );
    assert_eq!(s, 200, "{b}");
    procs.kill9(v);

    let _v = start(&mut procs, &data, port);
    let (s, b) = http(port, "GET", "/api/regions", Some(&token), "");
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""name":"primary""#), "{b}");
    let (s, b) = http(port, "GET", "/api/policies", Some(&token), "");
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""name":"default""#), "{b}");
}
