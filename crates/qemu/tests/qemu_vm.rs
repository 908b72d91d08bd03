//! The QEMU driver with real QEMU and the seqwriter guest (`guest/seqwriter.S`).
//!
//! Every QEMU (and disk server) runs in the test's process group (`Procs`, killed on drop); all
//! waits poll against deadlines. KVM is used when `/dev/kvm` works, like the driver's default
//! (`LIFEBOAT_TEST_ACCEL=tcg|kvm` forces one). Deadlines are generous: on nested or emulated KVM
//! a BIOS boot alone can take several seconds.
//!
//! * A raw-file disk: the guest boots and reports writes, QMP says running, stop/cont round-trips
//!   with their events, the ACPI power button is ignored (no OS) so shutdown falls back to
//!   `quit` and says so; the disk holds exactly the writes 1..N with N at least the last one
//!   reported. A second boot resumes at exactly N + 1 (what a failed-over copy does), then
//!   SIGKILL, and the disk is again crash-consistent.
//! * An NBD disk served by the repository's own `lifeboat disk serve` (the binary next to this
//!   test in the target directory, or `LIFEBOAT_BIN`); when it was not built, `qemu-nbd` serves
//!   the same export instead, and the test says so (`LIFEBOAT_TEST_NBD=qemu-nbd` forces it).
//! * User networking with `restrict=on` and the guest agent channel are accepted by QEMU.
//! * A missing NBD socket fails the start with QEMU's own message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_qemu::seqwriter::{self, GuestParams};
use lifeboat_qemu::{
    start_with, Accel, Disk, DiskBus, DiskSource, ExitInfo, ImageFormat, Network, Nic, NicModel,
    QemuError, RunningVm, ShutdownOutcome, StartOptions, VmDefinition, VmStatus, QUIT_GRACE,
};
use lifeboat_testkit::{require_tool, tempdir, wait_for_socket, Procs};

/// From QEMU's start to the guest's first output (SeaBIOS boot; slow on emulated KVM or TCG).
const BOOT: Duration = Duration::from_secs(120);
/// For a few more `seq` reports once the guest runs.
const PROGRESS: Duration = Duration::from_secs(60);
/// Small enough that the guest's boot-time scan is quick even on slow KVM, small enough that
/// the ring wraps during a test.
const PARAMS: GuestParams = GuestParams {
    ring_blocks: 64,
    writes_per_tick: 4,
    print_every: 4,
};
const DISK_BYTES: u64 = 4 << 20;

fn accel() -> Accel {
    match std::env::var("LIFEBOAT_TEST_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ => Accel::Auto,
    }
}

fn after(d: Duration) -> Instant {
    Instant::now() + d
}

/// The error and its sources, one per line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!("\n  caused by: {c}"));
        cur = c.source();
    }
    s
}

fn ok<T>(what: &str, r: Result<T, QemuError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {}", chain(&e)))
}

/// A spawner that puts QEMU into the test's process group.
fn in_group(procs: &mut Procs) -> impl FnOnce(Command) -> std::io::Result<u32> + '_ {
    move |cmd| {
        let i = procs.spawn(cmd);
        Ok(procs.child(i).id())
    }
}

/// Assembles the guest and writes a fresh seqwriter disk at `dir/name`.
fn guest_disk(dir: &Path, name: &str) -> PathBuf {
    require_tool("as");
    require_tool("ld");
    let code = seqwriter::assemble(&dir.join("guest-build")).expect("assemble seqwriter.S");
    let path = dir.join(name);
    seqwriter::write_image(&path, &code, PARAMS, DISK_BYTES).expect("write the guest disk");
    path
}

fn definition(dir: &Path, name: &str, source: DiskSource) -> VmDefinition {
    VmDefinition {
        name: name.into(),
        vcpus: 1,
        memory_mib: 32,
        disks: vec![Disk {
            source,
            bus: DiskBus::Ide,
        }],
        nics: vec![],
        serial_log: dir.join(format!("{name}.serial")),
        guest_agent_socket: None,
        kernel: None,
    }
}

fn options(dir: &Path, run: &str) -> StartOptions {
    let mut o = StartOptions::new(dir.join(run));
    o.qemu_binary = require_tool("qemu-system-x86_64");
    o.accel = accel();
    o
}

/// Waits until the guest has printed `n` more `seq` lines than `since`; returns the last one.
async fn wait_reports(vm: &mut RunningVm, since: usize, n: usize) -> u64 {
    ok(
        "seq reports",
        vm.wait_serial_until(&format!("{n} more `seq N` lines"), after(PROGRESS), |log| {
            let seqs: Vec<u64> = seqwriter::reported_seqs(log).collect();
            (seqs.len() >= since + n).then(|| *seqs.last().unwrap_or(&0))
        })
        .await,
    )
}

/// Checks the disk after QEMU stopped: crash-consistent writes 1..N, N >= the last reported.
fn verify_after_stop(disk: &Path, vm: &RunningVm, boot: u32) -> u64 {
    let log = vm.serial().read();
    let last_reported = seqwriter::last_reported_seq(&log).expect("some seq was reported");
    let report = seqwriter::verify_file(disk).expect("verify the disk");
    assert!(
        report.is_crash_consistent(),
        "{}: not exactly the writes 1..N:\n{report}",
        disk.display()
    );
    assert!(
        report.last_seq >= last_reported,
        "the disk holds writes up to {} but the guest reported {last_reported} as written:\n{report}",
        report.last_seq
    );
    assert_eq!(report.last_boot, boot, "{report}");
    assert!(seqwriter::error_line(&log).is_none(), "guest error:\n{log}");
    eprintln!("{}: {report}", disk.display());
    report.last_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_disk_runs_ignores_acpi_falls_back_to_quit_and_resumes_after_reboot() {
    let tmp = tempdir();
    let dir = tmp.path();
    let disk = guest_disk(dir, "vm.raw");
    let def = definition(
        dir,
        "seqwriter-raw",
        DiskSource::File {
            path: disk.clone(),
            format: ImageFormat::Raw,
        },
    );
    let mut procs = Procs::new();

    // Boot 1.
    let mut vm = ok(
        "start",
        start_with(&def, &options(dir, "run1"), in_group(&mut procs)).await,
    );
    eprintln!("QEMU {} with {}", vm.pid(), vm.accel());
    ok(
        "boot banner",
        vm.wait_for_serial("seqwriter boot 1 after seq 0\r\n", after(BOOT))
            .await,
    );
    wait_reports(&mut vm, 0, 3).await;
    assert_eq!(
        ok("status", vm.status().await),
        VmStatus::Alive {
            running: true,
            state: "running".into()
        }
    );

    // stop / cont, with their events.
    vm.qmp().stop().await.expect("QMP stop");
    assert!(vm.wait_for_event("STOP", after(PROGRESS)).await.is_some());
    assert_eq!(
        ok("status", vm.status().await),
        VmStatus::Alive {
            running: false,
            state: "paused".into()
        }
    );
    vm.qmp().cont().await.expect("cont");
    assert!(vm.wait_for_event("RESUME", after(PROGRESS)).await.is_some());
    let reported = seqwriter::reported_seqs(&vm.serial().read()).count();
    wait_reports(&mut vm, reported, 2).await;

    // The guest has no ACPI handling: powerdown times out, quit stops QEMU.
    let timeout = Duration::from_secs(2);
    let report = ok("shutdown", vm.shutdown(timeout).await);
    eprintln!("shutdown: {report}");
    assert_eq!(report.outcome, ShutdownOutcome::Quit, "{report}");
    assert_eq!(report.exit, ExitInfo::Code(0), "{report}");
    assert!(
        report.elapsed >= timeout && report.elapsed < timeout + QUIT_GRACE,
        "{report}"
    );
    assert!(
        report.notes.iter().any(|n| n.contains("did not power off")),
        "{report}"
    );
    let mut names = Vec::new();
    while let Some(ev) = vm.next_event(after(Duration::from_secs(5))).await {
        names.push(ev.name);
    }
    assert!(names.iter().any(|n| n == "POWERDOWN"), "events: {names:?}");
    assert!(matches!(
        ok("status", vm.status().await),
        VmStatus::Exited(ExitInfo::Code(0))
    ));
    let n1 = verify_after_stop(&disk, &vm, 1);
    drop(vm);

    // Boot 2 from the same disk: resumes at exactly N + 1 (as a failed-over copy does).
    let mut vm = ok(
        "start again",
        start_with(&def, &options(dir, "run2"), in_group(&mut procs)).await,
    );
    let banner = format!("seqwriter boot 2 after seq {n1}\r\n");
    ok(
        "boot 2 banner",
        vm.wait_for_serial(&banner, after(BOOT)).await,
    );
    let first = wait_reports(&mut vm, 0, 2).await;
    assert!(first > n1, "boot 2 reported {first}, not after {n1}");
    let exit = ok("kill", vm.kill().await);
    assert_eq!(exit, ExitInfo::Signal(libc::SIGKILL));
    let report = ok("shutdown after kill", vm.shutdown(timeout).await);
    assert_eq!(report.outcome, ShutdownOutcome::AlreadyExited);
    let n2 = verify_after_stop(&disk, &vm, 2);
    assert!(n2 > n1);
    assert_eq!(seqwriter::boots(&vm.serial().read()), [(2, n1)]);
}

/// The program serving the NBD export.
enum Server {
    Lifeboat(PathBuf),
    QemuNbd(PathBuf),
}

/// `lifeboat` from `LIFEBOAT_BIN`, or next to this test binary (`target/<profile>/lifeboat`,
/// built by `cargo build -p lifeboat` or any workspace build); else `qemu-nbd`
/// (`LIFEBOAT_TEST_NBD=qemu-nbd` forces it).
fn nbd_server() -> Server {
    if std::env::var("LIFEBOAT_TEST_NBD").as_deref() == Ok("qemu-nbd") {
        return Server::QemuNbd(require_tool("qemu-nbd"));
    }
    if let Some(p) = std::env::var_os("LIFEBOAT_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LIFEBOAT_BIN={} is not a file", p.display());
        return Server::Lifeboat(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("lifeboat")));
    match beside {
        Some(p) if p.is_file() => Server::Lifeboat(p),
        _ => Server::QemuNbd(require_tool("qemu-nbd")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_disk_from_the_disk_server() {
    let tmp = tempdir();
    let dir = tmp.path();
    let disk = guest_disk(dir, "vm.raw");
    let socket = dir.join("nbd.sock");
    let journal = dir.join("journal");
    let mut procs = Procs::new();
    let server = nbd_server();
    let mut cmd = match &server {
        Server::Lifeboat(bin) => {
            eprintln!("NBD export served by {}", bin.display());
            let mut c = Command::new(bin);
            c.args([
                "disk",
                "serve",
                "--vm",
                "seqwriter-nbd",
                "--export",
                "disk0",
            ])
            .arg("--image")
            .arg(&disk)
            .arg("--journal")
            .arg(&journal)
            .arg("--socket")
            .arg(&socket);
            c
        }
        Server::QemuNbd(bin) => {
            eprintln!(
                "NBD export served by qemu-nbd: no lifeboat binary beside this test \
                 (cargo build -p lifeboat, or set LIFEBOAT_BIN), or LIFEBOAT_TEST_NBD=qemu-nbd"
            );
            let mut c = Command::new(bin);
            c.args(["--format=raw", "--export-name=disk0", "--persistent"])
                .arg(format!("--socket={}", socket.display()))
                .arg(&disk);
            c
        }
    };
    let log = dir.join("server.log");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let srv = procs.spawn(cmd);
    wait_for_socket(&socket, Duration::from_secs(30));

    let def = definition(
        dir,
        "seqwriter-nbd",
        DiskSource::Nbd {
            socket: socket.clone(),
            export: "disk0".into(),
        },
    );
    let mut vm = ok(
        "start",
        start_with(&def, &options(dir, "run"), in_group(&mut procs)).await,
    );
    ok(
        "boot banner",
        vm.wait_for_serial("seqwriter boot 1 after seq 0\r\n", after(BOOT))
            .await,
    );
    wait_reports(&mut vm, 0, 4).await;
    assert!(matches!(
        ok("status", vm.status().await),
        VmStatus::Alive { running: true, .. }
    ));
    let report = ok("shutdown", vm.shutdown(Duration::from_secs(1)).await);
    eprintln!("shutdown: {report}");
    assert_eq!(report.outcome, ShutdownOutcome::Quit, "{report}");

    // Stop the server cleanly: the image file then holds every acknowledged write.
    procs.signal(srv, libc::SIGTERM);
    let st = procs.wait_exit(srv, Duration::from_secs(30), "the NBD server after SIGTERM");
    assert!(
        st.success() || matches!(server, Server::QemuNbd(_)),
        "disk server exited with {st}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    verify_after_stop(&disk, &vm, 1);
    if let Server::Lifeboat(_) = server {
        let journaled = std::fs::read_dir(&journal)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            })
            .unwrap_or(false);
        assert!(journaled, "no journal segment in {}", journal.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_user_network_and_guest_agent_channel() {
    let tmp = tempdir();
    let dir = tmp.path();
    let disk = guest_disk(dir, "vm.raw");
    let mut def = definition(
        dir,
        "drill",
        DiskSource::File {
            path: disk,
            format: ImageFormat::Raw,
        },
    );
    def.nics = vec![Nic {
        network: Network::User { restrict: true },
        model: NicModel::VirtioNetPci,
        mac: Some("52:54:00:12:34:56".into()),
    }];
    def.guest_agent_socket = Some(dir.join("qga.sock"));
    let mut procs = Procs::new();
    let mut vm = ok(
        "start",
        start_with(&def, &options(dir, "run"), in_group(&mut procs)).await,
    );
    let info = vm
        .qmp()
        .execute(
            "human-monitor-command",
            Some(serde_json::json!({"command-line": "info network"})),
        )
        .await
        .expect("info network");
    let info = info.as_str().unwrap_or_default();
    assert!(info.contains("restrict=on"), "info network:\n{info}");
    assert!(info.contains("52:54:00:12:34:56"), "info network:\n{info}");
    let chardevs = vm
        .qmp()
        .execute("query-chardev", None)
        .await
        .expect("query-chardev");
    let labels: Vec<&str> = chardevs
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["label"].as_str()).collect())
        .unwrap_or_default();
    assert!(labels.contains(&"qga0"), "chardevs: {labels:?}");
    assert!(dir.join("qga.sock").exists());
    let exit = ok("kill", vm.kill().await);
    assert_eq!(exit, ExitInfo::Signal(libc::SIGKILL));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_nbd_socket_fails_the_start_with_qemus_message() {
    let tmp = tempdir();
    let dir = tmp.path();
    let absent = dir.join("no-server.sock");
    let def = definition(
        dir,
        "orphan",
        DiskSource::Nbd {
            socket: absent.clone(),
            export: "disk0".into(),
        },
    );
    let mut procs = Procs::new();
    let e = start_with(&def, &options(dir, "run"), in_group(&mut procs))
        .await
        .expect_err("QEMU cannot start without its disk");
    let msg = chain(&e);
    assert!(
        matches!(e, QemuError::StartExited { .. }) && msg.contains(&*absent.to_string_lossy()),
        "{msg}"
    );
    assert!(msg.contains("orphan"), "the error names the VM: {msg}");
}

/// `start` (not `start_with`): the driver owns QEMU, in its own process group, and kills it
/// when the handle is dropped (also when a test panics: the drop runs while unwinding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_qemu_is_killed_when_its_handle_is_dropped() {
    let tmp = tempdir();
    let dir = tmp.path();
    let disk = guest_disk(dir, "vm.raw");
    let def = definition(
        dir,
        "owned",
        DiskSource::File {
            path: disk,
            format: ImageFormat::Raw,
        },
    );
    let mut vm = ok(
        "start",
        lifeboat_qemu::start(&def, &options(dir, "run")).await,
    );
    let pid = vm.pid() as libc::pid_t;
    assert!(matches!(
        ok("status", vm.status().await),
        VmStatus::Alive { running: true, .. }
    ));
    // SAFETY: getpgid on QEMU's pid, which is alive (its handle is held).
    assert_eq!(
        unsafe { libc::getpgid(pid) },
        pid,
        "QEMU leads its own group"
    );
    drop(vm);
    // SAFETY: signal 0 only checks existence; the child was reaped by the drop.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "QEMU {pid} survived the drop of its RunningVm");
}
