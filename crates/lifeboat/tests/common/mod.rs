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

/// `lifeboat disk serve --image IMAGE --journal JOURNAL` (the listener still to add).
pub fn serve_command(image: &Path, journal: &Path) -> Command {
    let mut cmd = Command::new(LIFEBOAT);
    cmd.args(["disk", "serve", "--image"])
        .arg(image)
        .arg("--journal")
        .arg(journal);
    cmd
}

/// Runs a disk server that must refuse to start; returns what it printed on stderr.
pub fn serve_error(image: &Path, journal: &Path, socket: &Path) -> String {
    let out = serve_command(image, journal)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run lifeboat");
    assert!(
        !out.status.success(),
        "disk server should have refused to start"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    let mut cmd = serve_command(image, journal);
    cmd.arg("--socket")
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

/// A test's disk: an image, a copy of its original content, and a journal directory.
pub struct TestDisk {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub original: PathBuf,
    pub journal: PathBuf,
}

impl TestDisk {
    /// A sparse (all-zero) image of `len` bytes.
    pub fn sparse(len: u64) -> Self {
        let d = Self::empty();
        sparse_image(&d.image, len);
        sparse_image(&d.original, len);
        d
    }

    /// An image of `len` random bytes.
    pub fn random(len: u64, seed: u64) -> Self {
        let d = Self::empty();
        lifeboat_testkit::random_file(&d.image, len as usize, seed);
        std::fs::copy(&d.image, &d.original).expect("copy the original image");
        d
    }

    fn empty() -> Self {
        let dir = lifeboat_testkit::tempdir();
        let p = dir.path().to_path_buf();
        TestDisk {
            image: p.join("vm.img"),
            original: p.join("original.img"),
            journal: p.join("j"),
            dir,
        }
    }

    /// Starts a disk server over this disk.
    pub fn serve(&self, procs: &mut Procs, extra: &[&str]) -> DiskServer {
        serve(procs, self.dir.path(), &self.image, &self.journal, extra)
    }

    /// The region store directory of this test (`<dir>/store`).
    pub fn store(&self) -> String {
        self.dir.path().join("store").to_string_lossy().into_owned()
    }

    /// Seeds the store with the original image as VM `vm`'s first point (position 0), then
    /// starts a disk server that ships to the store (1 MiB segments), with `extra` arguments.
    pub fn seed_and_serve_shipping(
        &self,
        procs: &mut Procs,
        vm: &str,
        extra: &[&str],
    ) -> DiskServer {
        let store = self.store();
        lifeboat_testkit::run_ok(Command::new(LIFEBOAT).args([
            "seed",
            "--store",
            &store,
            "--vm",
            vm,
            "--disk",
            &format!("0={}", self.original.display()),
        ]));
        let mut args = vec!["--vm", vm, "--segment-mib", "1", "--ship-to", &store];
        args.extend_from_slice(extra);
        self.serve(procs, &args)
    }

    /// Replays the whole journal onto the original image (with `lifeboat journal replay`) and
    /// checks that it equals the served image, byte for byte.
    pub fn assert_replay_reproduces(&self) {
        lifeboat_testkit::run_ok(
            Command::new(LIFEBOAT)
                .args(["journal", "replay", "--journal"])
                .arg(&self.journal)
                .arg("--image")
                .arg(&self.original),
        );
        assert_eq!(
            lifeboat_testkit::hash_file(&self.original),
            lifeboat_testkit::hash_file(&self.image),
            "journal replay onto the original image differs from the served image"
        );
    }
}

/// Creates a sparse raw image of `len` bytes.
pub fn sparse_image(path: &Path, len: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(len).expect("size image");
}
pub mod cluster;
pub mod webdriver;
