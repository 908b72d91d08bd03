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

fn cli(port: u16, token_file: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(LIFEBOAT)
        .args(args)
        .env("LIFEBOAT_VAULT", format!("http://127.0.0.1:{port}"))
        .env("LIFEBOAT_TOKEN_FILE", token_file)
        .output()
        .unwrap()
}

#[test]
fn the_cli_drives_the_vault_and_prints_its_errors() {
    let dir = lifeboat_testkit::tempdir();
    let data = dir.path().join("vault");
    let port = free_loopback_port();
    let mut procs = Procs::new();
    let _v = start(&mut procs, &data, port);
    let tf = data.join("token");
    let ok = |args: &[&str]| {
        let o = cli(port, &tf, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&["region", "add", "primary", "--store", "/srv/p"]);
    ok(&["region", "add", "secondary", "--store", "/srv/s"]);
    let def = dir.path().join("web.json");
    std::fs::write(&def, r#"{"vcpus": 1, "memory_mib": 128}"#).unwrap();
    ok(&[
        "vm",
        "create",
        "web-1",
        "--region",
        "primary",
        "--definition",
        def.to_str().unwrap(),
    ]);
    // With no agent, protection fails at once; the CLI follows the job and says why.
    let o = cli(
        port,
        &tf,
        &["protect", "web-1", "--target-region", "secondary"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("enable-protection of VM web-1) failed") && err.contains("no agent"),
        "{err}"
    );
    let items = ok(&["items", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&items).unwrap();
    assert_eq!(v[0]["state"], "not-protected");
    let show = ok(&["item", "show", "web-1"]);
    assert!(
        show.contains("Allowed operations: enable-protection"),
        "{show}"
    );
    assert!(show.contains("Health:             none"), "{show}");
    let table = ok(&["items"]);
    assert!(
        table.contains("HEALTH") && table.contains("none"),
        "{table}"
    );
    // The target region's store has no point of the VM: an empty list, not an error.
    let pts = ok(&["item", "points", "web-1", "--output", "json"]);
    assert_eq!(pts.trim(), "[]", "{pts}");
    // A wrong-state operation: the vault's 409 with the state and what is allowed.
    let o = cli(port, &tf, &["commit", "web-1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("409")
            && err.contains("the item is Not protected; allowed in this state: enable-protection"),
        "{err}"
    );
    // No token: a clear error before any request.
    let o = Command::new(LIFEBOAT)
        .args(["items"])
        .env("LIFEBOAT_VAULT", format!("http://127.0.0.1:{port}"))
        .env_remove("LIFEBOAT_TOKEN")
        .env_remove("LIFEBOAT_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("no API token"));
    let jobs = ok(&["jobs"]);
    assert!(
        jobs.contains("enable-protection") && jobs.contains("failed"),
        "{jobs}"
    );
}
