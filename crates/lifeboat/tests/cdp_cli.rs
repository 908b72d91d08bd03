//! Any point in time, to the write, through the CLI: seed, serve with shipping, write A, note the
//! time, write B, stop; `lifeboat restore --point <time>` gives the disk after A only, byte for
//! byte, with no recovery point cut in between.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{stop, TestDisk, LIFEBOAT};
use lifeboat_testkit::{hash_file, random_file, require_tool, run_ok, Procs};

const MIB: u64 = 1 << 20;

fn at(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    format!("@{}.{:09}", d.as_secs(), d.subsec_nanos())
}

fn restore(store: &str, point: &str, out: &std::path::Path) -> std::process::Output {
    Command::new(LIFEBOAT)
        .args([
            "restore", "--store", store, "--vm", "cdp-1", "--disk", "0", "--point", point,
            "--output",
        ])
        .arg(out)
        .output()
        .expect("run lifeboat")
}

#[test]
fn restore_to_a_time_gives_the_disk_as_it_was_then() {
    require_tool("nbdcopy");
    require_tool("qemu-io");
    let d = TestDisk::random(8 * MIB, 21);
    let dir = d.dir.path();
    let store = dir.join("store");
    let store_s = store.to_str().unwrap();
    // Initial replication of the disk as it is before the VM runs: the point at position 0.
    let mut procs = Procs::new();
    let s = d.seed_and_serve_shipping(&mut procs, "cdp-1", &[]);
    // A: 3 MiB of random data over the start of the disk, and a zeroed range.
    let a = dir.join("a.img");
    random_file(&a, (3 * MIB) as usize, 22);
    run_ok(Command::new("nbdcopy").arg(&a).arg(s.uri()));
    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -z 6m 512k", &s.uri()]));
    let after_a_time = SystemTime::now();
    let after_a = dir.join("after-a.img");
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&after_a));
    std::thread::sleep(Duration::from_millis(50));
    // B: overwrites part of A and data A did not touch.
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1m 2m",
        "-c",
        "write -P 0xa5 7m 256k",
        &s.uri(),
    ]));
    stop(&mut procs, &s);
    assert_ne!(
        hash_file(&after_a),
        hash_file(&d.image),
        "B changed nothing"
    );

    // The time right after A, in both spellings: the disk after A only.
    let iso = lifeboat_process::format_utc_ms(after_a_time);
    for (i, point) in [at(after_a_time), iso].iter().enumerate() {
        let out = dir.join(format!("at-a-{i}.img"));
        let r = restore(store_s, point, &out);
        let stdout = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "restore --point {point}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            stdout.contains("journal record") && stdout.contains("point 00000000000000000000"),
            "{stdout}"
        );
        assert!(!stdout.contains("after the last record"), "{stdout}");
        assert_eq!(
            hash_file(&out),
            hash_file(&after_a),
            "restore --point {point} is not the disk after A"
        );
    }

    // After the last record: the final disk, and it says so.
    let out = dir.join("at-end.img");
    let r = restore(
        store_s,
        &at(SystemTime::now() + Duration::from_secs(3600)),
        &out,
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("after the last record"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert_eq!(hash_file(&out), hash_file(&d.image));
    // Each restore pinned what it read while it read it, and removed its pin at the end.
    let pins = store.join("vms/cdp-1/pins");
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left behind: {left:?}");

    // Before the window: a clear refusal, nothing written.
    let out = dir.join("too-early.img");
    let r = restore(store_s, "2001-01-01T00:00:00Z", &out);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("before the continuous-data-protection window of VM cdp-1")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(!out.with_extension("restoring").exists());

    // A malformed time is refused before anything happens.
    let r = restore(store_s, "2026-02-30T00:00:00Z", &out);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("invalid time"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn restore_to_a_time_builds_every_changed_chunk() {
    require_tool("qemu-io");
    // 21 chunks of 4 MiB: more changed chunks than one build batch (16).
    let d = TestDisk::sparse(84 * MIB);
    let dir = d.dir.path();
    let store = d.store();
    let mut procs = Procs::new();
    let s = d.seed_and_serve_shipping(&mut procs, "cdp-1", &[]);
    // A little of every chunk, one write across a chunk boundary, then chunk 10 zeroed whole
    // (known zero without reading) and chunk 12 zeroed whole then written again.
    let mut cmds: Vec<String> = (0..21u64)
        .map(|c| format!("write -P {} {}k 8k", 0x10 + c, c * 4096 + c * 100))
        .collect();
    cmds.push("write -P 0x33 8188k 8k".into());
    cmds.push("write -z 40m 4m".into());
    cmds.push("write -z 48m 4m".into());
    cmds.push("write -P 0x44 49m 4k".into());
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw"]);
    for c in &cmds {
        q.args(["-c", c]);
    }
    run_ok(q.arg(s.uri()));
    stop(&mut procs, &s);

    // While the restore reads, a leased pin of what it reads is in the store (retention keeps
    // its base and journal, and does not roll past them); it is gone afterwards.
    let pins = std::path::Path::new(&store).join("vms/cdp-1/pins");
    let done = std::sync::atomic::AtomicBool::new(false);
    let out = dir.join("at-end.img");
    let (r, seen) = std::thread::scope(|sc| {
        let watcher = sc.spawn(|| {
            let mut seen: Vec<String> = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for e in std::fs::read_dir(&pins).into_iter().flatten().flatten() {
                    if let Ok(body) = std::fs::read_to_string(e.path()) {
                        seen.push(body);
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        let r = restore(&store, &at(SystemTime::now()), &out);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (r, watcher.join().unwrap())
    });
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        seen.iter()
            .any(|b| b.contains("lifeboat restore") && b.contains("\"lease_secs\":600")),
        "no leased pin seen during the restore: {seen:?}"
    );
    assert_eq!(std::fs::read_dir(&pins).map_or(0, |d| d.count()), 0);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains(" plus 25 records"), "{stdout}");
    assert_eq!(hash_file(&out), hash_file(&d.image), "restore at the end");
}
