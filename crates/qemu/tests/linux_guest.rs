//! The guest agent client with a real Linux guest (`scripts/build-linux-guest`, booted with
//! [`KernelBoot`]): a disk copied while the guest's filesystems are frozen is
//! application-consistent, and the guest is always thawed again.
//!
//! KVM is used when `/dev/kvm` works (`LIFEBOAT_TEST_ACCEL=tcg|kvm` forces one). Some nested
//! KVM hosts run a BIOS but never get a Linux kernel past its decompressor: when the guest does
//! not come up under KVM within [`KVM_BOOT`] and KVM was not forced, the test says so and boots
//! it again under TCG.
//!
//! `app_check_refuses_a_logged_file_that_is_torn_or_absent` shows the consistency check can fail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_qemu::{
    start_with, Accel, AccelKind, Disk, DiskBus, DiskSource, FsfreezeStatus, ImageFormat,
    KernelBoot, QemuError, Qga, RunningVm, StartOptions, VmDefinition,
};
use lifeboat_testkit::linux_guest::{
    check_app_consistent, e2fsck_clean, ext4_disk, last_wrote, linux_guest, ERROR, READY,
};
use lifeboat_testkit::{require_tool, tempdir, Procs};

/// From start to `lbguest: ready` under KVM (a second or two where KVM works).
const KVM_BOOT: Duration = Duration::from_secs(20);
/// The same under TCG (about 8 s on an idle machine).
const TCG_BOOT: Duration = Duration::from_secs(180);
/// For more writes once the guest runs.
const PROGRESS: Duration = Duration::from_secs(60);
/// Guest agent commands (the freeze flushes the guest's dirty data first).
const QGA: Duration = Duration::from_secs(60);
const DISK_BYTES: u64 = 64 << 20;

fn after(d: Duration) -> Instant {
    Instant::now() + d
}

fn ok<T, E: std::error::Error>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(&format!("\n  caused by: {c}"));
            cur = c.source();
        }
        panic!("{what}: {s}")
    })
}

fn definition(dir: &Path, disk: &Path) -> VmDefinition {
    let g = linux_guest();
    VmDefinition {
        name: "lbguest".into(),
        vcpus: 1,
        memory_mib: 256,
        disks: vec![Disk {
            source: DiskSource::File {
                path: disk.to_owned(),
                format: ImageFormat::Raw,
            },
            bus: DiskBus::Virtio,
        }],
        nics: vec![],
        serial_log: dir.join("lbguest.serial"),
        guest_agent_socket: Some(dir.join("qga.sock")),
        kernel: Some(KernelBoot {
            kernel: g.kernel.clone(),
            initrd: Some(g.initrd.clone()),
            append: g.append.clone(),
        }),
    }
}

/// Boots the guest on a fresh ext4 disk `dir/data.img` and waits for `lbguest: ready`.
async fn boot(dir: &Path, procs: &mut Procs) -> (RunningVm, VmDefinition, PathBuf) {
    let disk = dir.join("data.img");
    ext4_disk(&disk, DISK_BYTES);
    let def = definition(dir, &disk);
    let forced = std::env::var("LIFEBOAT_TEST_ACCEL").ok();
    let mut accel = match forced.as_deref() {
        Some("tcg") => Accel::Tcg,
        Some("kvm") => Accel::Kvm,
        _ => Accel::Auto,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut opts = StartOptions::new(dir.join(format!("run{attempt}")));
        opts.qemu_binary = require_tool("qemu-system-x86_64");
        opts.accel = accel;
        let started = Instant::now();
        let mut vm = ok(
            "start",
            start_with(&def, &opts, |cmd| {
                let i = procs.spawn(cmd);
                Ok(procs.child(i).id())
            })
            .await,
        );
        let kvm = vm.accel() == AccelKind::Kvm;
        let limit = if kvm { KVM_BOOT } else { TCG_BOOT };
        match vm.wait_for_serial(READY, after(limit)).await {
            Ok(_) => {
                eprintln!(
                    "guest ready after {:?} with {} (QEMU {})",
                    started.elapsed(),
                    vm.accel(),
                    vm.pid()
                );
                return (vm, def, disk);
            }
            Err(QemuError::SerialTimeout { .. }) if kvm && forced.is_none() => {
                eprintln!(
                    "the Linux guest did not come up under KVM within {KVM_BOOT:?} (nested KVM \
                     on this host?): booting it again under TCG"
                );
                ok("kill", vm.kill().await);
                accel = Accel::Tcg;
            }
            Err(e) => panic!("boot: {e}\nserial log:\n{}", vm.serial().read()),
        }
    }
}

/// Waits until the guest reports a write beyond `n`; returns the last one reported.
async fn wait_wrote_beyond(vm: &mut RunningVm, n: u64) -> u64 {
    let r = vm
        .wait_serial_until(
            &format!("lbguest: wrote N with N > {n}"),
            after(PROGRESS),
            |log| last_wrote(log).filter(|&w| w > n),
        )
        .await;
    match r {
        Ok(w) => w,
        Err(e) => panic!("{e}\nserial log:\n{}", vm.serial().read()),
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_copied_while_frozen_is_app_consistent_and_guest_always_thaws() {
    let tmp = tempdir();
    let dir = tmp.path();
    let mut procs = Procs::new();
    let (mut vm, def, disk) = boot(dir, &mut procs).await;
    let sock = def.guest_agent_socket.clone().expect("guest agent socket");
    let w0 = wait_wrote_beyond(&mut vm, 16).await;

    let t = Instant::now();
    let mut qga = ok("connect", Qga::connect(&sock, vm.pid(), QGA).await);
    eprintln!(
        "guest agent connected and synchronized in {:?}",
        t.elapsed()
    );
    ok("ping", qga.ping().await);
    let info = ok("info", qga.info().await);
    eprintln!("qemu-ga {}", info.version);
    for cmd in [
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-thaw",
        "guest-fsfreeze-status",
    ] {
        assert!(info.supports(cmd), "qemu-ga lacks {cmd}: {info:?}");
    }
    assert_eq!(
        ok("status", qga.fsfreeze_status().await),
        FsfreezeStatus::Thawed
    );

    // Freeze, copy, thaw, step by step.
    let t = Instant::now();
    let frozen = ok("freeze", qga.fsfreeze_freeze(QGA).await);
    eprintln!("froze {frozen} filesystem(s) in {:?}", t.elapsed());
    assert!(frozen >= 1, "nothing frozen (the guest's /data is ext4)");
    let before = last_wrote(&vm.serial().read()).unwrap_or(0);
    assert_eq!(
        ok("status", qga.fsfreeze_status().await),
        FsfreezeStatus::Frozen
    );
    ok("ping while frozen", qga.ping().await);
    let copy1 = dir.join("frozen1.img");
    copy(&disk, &copy1);
    let thawed = ok("thaw", qga.fsfreeze_thaw(QGA).await);
    assert_eq!(thawed, frozen);
    assert_eq!(
        ok("status", qga.fsfreeze_status().await),
        FsfreezeStatus::Thawed
    );
    let w1 = wait_wrote_beyond(&mut vm, before.max(w0) + 16).await;
    eprintln!("writes continue after the thaw: {w1}");

    let c1 = check_app_consistent(&copy1, &dir.join("check1"))
        .unwrap_or_else(|e| panic!("the copy made while frozen is not app-consistent: {e}"));
    eprintln!("frozen copy 1: {c1:?}");
    assert!(
        c1.last >= before,
        "the copy's log ends at {} but the guest reported {before} written before the freeze",
        c1.last
    );

    // The same through `frozen`, with an operation that fails: the guest is thawed anyway.
    let copy2 = dir.join("frozen2.img");
    let run = qga
        .frozen(QGA, |n| {
            copy(&disk, &copy2);
            async move {
                Err::<(), String>(format!("the operation failed after copying ({n} frozen)"))
            }
        })
        .await;
    assert!(run.freeze_error.is_none(), "{run:?}");
    assert!(run.thaw_error.is_none(), "{run:?}");
    assert!(matches!(run.output, Some(Err(_))), "{run:?}");
    assert!(run.frozen >= 1, "{run:?}");
    assert_eq!(
        ok("status", qga.fsfreeze_status().await),
        FsfreezeStatus::Thawed
    );
    let w2 = wait_wrote_beyond(&mut vm, w1 + 16).await;
    let c2 = check_app_consistent(&copy2, &dir.join("check2"))
        .unwrap_or_else(|e| panic!("the copy made in `frozen` is not app-consistent: {e}"));
    eprintln!("frozen copy 2: {c2:?}; writes continue: {w2}");
    assert!(c2.last > c1.last, "{c2:?} after {c1:?}");

    // For contrast, a copy taken while the guest writes (crash-consistent at best): usually
    // its journal needs replaying. Not asserted: it depends on timing.
    let hot = dir.join("hot.img");
    copy(&disk, &hot);
    let (clean, fsck) = e2fsck_clean(&hot);
    eprintln!(
        "a copy without freeze: e2fsck -fn {}; app check: {:?}",
        if clean { "clean" } else { "NOT clean" },
        check_app_consistent(&hot, &dir.join("check-hot")).map_err(|e| e
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    );
    if !clean {
        eprintln!("{}", fsck.lines().take(3).collect::<Vec<_>>().join("\n"));
    }

    assert!(
        !vm.serial().read().contains(ERROR),
        "{}",
        vm.serial().read()
    );
    ok("kill", vm.kill().await);
}

/// The consistency check itself can fail: an image whose log names a file that is short, or
/// that is absent, is refused (no VM: the image is written with `debugfs -w`).
#[test]
fn app_check_refuses_a_logged_file_that_is_torn_or_absent() {
    use lifeboat_testkit::linux_guest::expected_file;
    use lifeboat_testkit::run_ok;
    let tmp = tempdir();
    let dir = tmp.path();
    let sha = |data: &[u8]| {
        let p = dir.join("sha-input");
        std::fs::write(&p, data).expect("write");
        let out = run_ok(std::process::Command::new("sha256sum").arg(&p));
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    };
    let put = |image: &Path, name: &str, data: &[u8]| {
        let src = dir.join("put-input");
        std::fs::write(&src, data).expect("write");
        run_ok(
            std::process::Command::new(require_tool("debugfs"))
                .arg("-w")
                .arg("-R")
                .arg(format!("write {} {name}", src.display()))
                .arg(image),
        );
    };
    let make = |name: &str, f2: Option<&[u8]>| {
        let image = dir.join(name);
        ext4_disk(&image, 8 << 20);
        let log = format!(
            "1 {}\n2 {}\n",
            sha(&expected_file(1)),
            sha(&expected_file(2))
        );
        put(&image, "log", log.as_bytes());
        put(&image, "f1", &expected_file(1));
        if let Some(f2) = f2 {
            put(&image, "f2", f2);
        }
        image
    };
    let good = make("good.img", Some(&expected_file(2)));
    let c = check_app_consistent(&good, &dir.join("c-good")).expect("a consistent image");
    assert_eq!((c.first, c.last, c.files_checked), (1, 2, 2));
    let torn = make("torn.img", Some(&expected_file(2)[..4096]));
    let e = check_app_consistent(&torn, &dir.join("c-torn")).expect_err("a torn file");
    assert!(
        e.contains("/f2") && e.contains("not what was written"),
        "{e}"
    );
    let absent = make("absent.img", None);
    let e = check_app_consistent(&absent, &dir.join("c-absent")).expect_err("an absent file");
    assert!(e.contains("/f2 is logged but absent"), "{e}");
}
