//! # lifeboat-testkit: the harness every process-level test uses
//!
//! Lifeboat's tests run the real thing: the `lifeboat` binary, QEMU, `nbdinfo`, `nbdcopy`,
//! `qemu-io`, fio. This crate makes that safe and fast:
//!
//! * [`Procs`] starts children **in one process group per test** (the first child leads the
//!   group, later ones join it) and kills the whole group with SIGKILL when dropped, so a failing
//!   or panicking test never leaves a disk server or a VM behind.
//! * [`wait_until`] polls a condition until a **deadline** instead of sleeping a fixed time: tests
//!   are as fast as the machine allows and fail with a message naming what never happened.
//! * [`require_tool`] finds an external program or fails the test with the Debian package that
//!   provides it (`.ci/run` installs them all), so a missing tool is never a silent skip.
//! * [`hash_file`] hashes whole disks (BLAKE3): data tests compare bytes, not exit codes.
//!
//! Network tests use unix sockets in the test's temporary directory, or loopback TCP on a port
//! the kernel picked ([`free_loopback_port`]).

pub mod linux_guest;
pub mod nbd_client;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The children of one test, in one process group that is killed when this is dropped.
#[derive(Default)]
pub struct Procs {
    pgid: Option<i32>,
    sentinel: Option<Child>,
    children: Vec<Child>,
}

impl Procs {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `cmd` into this test's process group and returns its index (for [`Procs::child`]).
    ///
    /// The group is led by a sentinel `sleep` started with the first child, so the group outlives
    /// any child a test kills on purpose and later children can still join it.
    pub fn spawn(&mut self, mut cmd: Command) -> usize {
        let pgid = match self.pgid {
            Some(p) => p,
            None => {
                let mut sentinel = Command::new("sleep");
                sentinel
                    .arg("86400")
                    .process_group(0)
                    .stdin(std::process::Stdio::null());
                let s = sentinel.spawn().expect("start the process-group sentinel");
                let pgid = s.id() as i32;
                self.sentinel = Some(s);
                self.pgid = Some(pgid);
                pgid
            }
        };
        cmd.process_group(pgid);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        self.children.push(child);
        self.children.len() - 1
    }

    /// The child started as number `idx`.
    pub fn child(&mut self, idx: usize) -> &mut Child {
        &mut self.children[idx]
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`, `libc::SIGTERM`) to one child.
    pub fn signal(&mut self, idx: usize, signal: i32) {
        let pid = self.children[idx].id() as i32;
        // SAFETY: kill(2) with a pid we spawned; no memory is touched.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits for child `idx` to exit, up to `timeout`; panics naming `what` if it does not.
    pub fn wait_exit(
        &mut self,
        idx: usize,
        timeout: Duration,
        what: &str,
    ) -> std::process::ExitStatus {
        let child = &mut self.children[idx];
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => panic!("{what} did not exit within {timeout:?}"),
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    }

    /// Kills child `idx` with SIGKILL and reaps it.
    pub fn kill9(&mut self, idx: usize) {
        self.signal(idx, libc::SIGKILL);
        let _ = self.children[idx].wait();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) on the process group we created; no memory is touched.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        for c in self.children.iter_mut().chain(self.sentinel.as_mut()) {
            let _ = c.wait();
        }
    }
}

/// Polls `cond` every few milliseconds until it returns true or `timeout` passes; panics with
/// `what` (what the test was waiting for) on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Polls `cond` as [`wait_until`] does; returns whether it became true before `timeout`
/// (for tests that explain a timeout themselves).
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Waits until a unix socket at `path` accepts connections.
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    wait_until(timeout, &format!("socket {}", path.display()), || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    });
}

/// Waits until something listens on loopback TCP `port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    wait_until(timeout, &format!("127.0.0.1:{port}"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A loopback TCP port that was free a moment ago.
pub fn free_loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// The Debian package that provides each external tool the tests use.
const PACKAGES: &[(&str, &str)] = &[
    ("nbdinfo", "libnbd-bin"),
    ("nbdcopy", "libnbd-bin"),
    ("nbdsh", "libnbd-bin"),
    ("qemu-img", "qemu-utils"),
    ("qemu-io", "qemu-utils"),
    ("qemu-nbd", "qemu-utils"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("fio", "fio"),
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
];

/// The path of an external program, or a panic naming the package to install.
pub fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    let pkg = PACKAGES
        .iter()
        .find(|(t, _)| *t == name)
        .map(|(_, p)| *p)
        .unwrap_or("?");
    panic!("{name} is not installed: apt-get install {pkg} (.ci/run installs every test tool)");
}

/// Runs a command to completion, panicking with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    if !out.status.success() {
        panic!(
            "{:?} failed ({}):\nstdout: {}\nstderr: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// BLAKE3 of a whole file.
pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize()
}

/// A file of `len` bytes of deterministic pseudo-random data (xorshift from `seed`).
pub fn random_file(path: &Path, len: usize, seed: u64) {
    std::fs::write(path, random_bytes(len, seed))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// `len` bytes of deterministic pseudo-random data.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Whether KVM can be used by this process (else QEMU runs under TCG).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The seed of a randomized test: the environment variable `var` if it is set (to replay a
/// failure), else one from the clock. Printed, so that a failing run names it.
pub fn test_seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("{var}={seed}");
    seed
}

/// A fresh temporary directory for one test (kept after the test, for its logs, when
/// `LIFEBOAT_KEEP_TEST_DIRS` is set).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lifeboat-test-")
        .disable_cleanup(std::env::var_os("LIFEBOAT_KEEP_TEST_DIRS").is_some())
        .tempdir()
        .expect("create temp dir")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_is_killed_on_drop() {
        let pid;
        {
            let mut p = Procs::new();
            let mut c = Command::new("sleep");
            c.arg("30");
            let i = p.spawn(c);
            pid = p.child(i).id() as i32;
            let mut c2 = Command::new("sleep");
            c2.arg("30");
            let j = p.spawn(c2);
            // SAFETY: getpgid on a child we spawned.
            let (g1, g2) = unsafe { (libc::getpgid(pid), libc::getpgid(p.child(j).id() as i32)) };
            assert_eq!(g1, g2, "children share one process group");
            assert_ne!(g1, unsafe { libc::getpgid(0) }, "not the test's own group");
            // Killing a child on purpose does not dissolve the group.
            p.kill9(i);
            let mut c3 = Command::new("sleep");
            c3.arg("30");
            p.spawn(c3);
        }
        // SAFETY: kill with signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} survived the drop of its Procs");
    }

    #[test]
    #[should_panic(expected = "timed out")]
    fn wait_until_times_out() {
        wait_until(Duration::from_millis(30), "never", || false);
    }

    #[test]
    fn random_bytes_are_deterministic() {
        assert_eq!(random_bytes(100, 7), random_bytes(100, 7));
        assert_ne!(random_bytes(100, 7), random_bytes(100, 8));
    }
}
