//! Shared by the `lifeboat` binary's integration tests: start `lifeboat disk serve` as a real
//! process in the test's process group.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lifeboat_testkit::{wait_for_socket, Procs};

pub const LIFEBOAT: &str = env!("CARGO_BIN_EXE_lifeboat");

/// A running `lifeboat disk serve`.
pub struct DiskServer {
    pub idx: usize,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DiskServer {
    /// The NBD URI of the export.
    pub fn uri(&self) -> String {
        format!("nbd+unix:///disk0?socket={}", self.socket.display())
    }
}

/// Starts a disk server over `image` with journal `journal`, socket and log in `dir`.
pub fn serve(
    procs: &mut Procs,
    dir: &Path,
    image: &Path,
    journal: &Path,
    extra: &[&str],
) -> DiskServer {
    let socket = dir.join("disk.sock");
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let log = dir.join(format!("server-{n}.log"));
    let mut cmd = Command::new(LIFEBOAT);
    cmd.args(["disk", "serve", "--image"])
        .arg(image)
        .arg("--journal")
        .arg(journal)
        .arg("--socket")
        .arg(&socket)
        .args(extra)
        .env("LIFEBOAT_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("server log"));
    let idx = procs.spawn(cmd);
    wait_for_socket(&socket, Duration::from_secs(30));
    DiskServer { idx, socket, log }
}

/// Stops a server with SIGTERM and checks it exits 0.
pub fn stop(procs: &mut Procs, s: &DiskServer) {
    procs.signal(s.idx, libc::SIGTERM);
    let status = procs.wait_exit(s.idx, Duration::from_secs(30), "lifeboat disk serve");
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    assert!(
        status.success(),
        "disk server exited with {status}; log:\n{log}"
    );
}

/// Creates a sparse raw image of `len` bytes.
pub fn sparse_image(path: &Path, len: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(len).expect("size image");
}
