//! Re-protect and failback with real processes and a real QEMU guest (the seqwriter: numbered,
//! checksummed writes; its boot line says which write the disk it booted from ends with):
//! the whole round trip, the old primary coming back after a failover (split brain), kill -9
//! during re-protect, and re-protect without the original disks. At every step the data is
//! checked by hash: with the VM stopped, the newest recovery point in the region replication
//! goes to, restored, must equal the running side's disk byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{serial, step, wait_boot, wait_seq, Cluster};
use lifeboat_qemu::seqwriter;
use lifeboat_testkit::{tempdir, wait_until};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn hash(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    blake3::hash(&data).to_hex().to_string()
}

/// The disk image of `vm` recovered at `region`.
fn recovered_disk(c: &Cluster, region: &str, vm: &str) -> PathBuf {
    c.dir
        .join("agents")
        .join(region)
        .join("recovered")
        .join(vm)
        .join("disk0.img")
}

/// Stops `vm`, then waits until the newest point in `store_region`'s store, restored, is
/// byte for byte the disk `disk` the VM ran on; starts the VM again.
fn replica_equals_source(c: &Cluster, vm: &str, store_region: &str, disk: &Path) {
    c.cli_ok(&["vm", "stop", vm]);
    let want = hash(disk);
    let out = c.dir.join(format!("check-{vm}-{store_region}.img"));
    let mut last = String::new();
    let ok = lifeboat_testkit::wait_for(Duration::from_secs(60), || {
        let _ = std::fs::remove_file(&out);
        let r = c.cli(&[
            "restore",
            "--store",
            &c.store(store_region).display().to_string(),
            "--vm",
            vm,
            "--point",
            "latest-processed",
            "--output",
            &out.display().to_string(),
        ]);
        if !r.status.success() {
            last = String::from_utf8_lossy(&r.stderr).into_owned();
            return false;
        }
        last = hash(&out);
        last == want
    });
    if !ok {
        let a = seqwriter::verify_file(&out).map(|v| v.to_string());
        let b = seqwriter::verify_file(disk).map(|v| v.to_string());
        panic!(
            "the newest point of {vm} in {store_region} never equalled its disk {}: last \
             {last}; restored: {a:?}; disk: {b:?}",
            disk.display()
        );
    }
    let v = seqwriter::verify_file(&out).expect("verify the restored disk");
    assert!(v.is_crash_consistent(), "{v}");
    c.cli_ok(&["vm", "start", vm]);
}

fn protect_healthy(c: &Cluster, vm: &str) {
    let job = c.json(&["protect", vm, "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_healthy(c, vm);
}

fn wait_healthy(c: &Cluster, vm: &str) {
    wait_until(
        Duration::from_secs(60),
        "the item Healthy with an RPO",
        || {
            let i = c.item(vm);
            i["health"]["health"] == "healthy" && i["rpo_ms"].as_i64().is_some()
        },
    );
}

/// Fails `vm` over to `latest` with the source shut down and commits; returns the write the
/// guest resumed after at the target (boot number `boot` in `serial_at_target`).
fn failover_and_commit(
    c: &Cluster,
    vm: &str,
    source_serial: &Path,
    target_serial: &Path,
    boot: u32,
) -> u64 {
    let job = c.json(&[
        "failover",
        vm,
        "--recovery-point",
        "latest",
        "--shutdown-source",
        "--shutdown-timeout",
        "2",
    ]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let written = seqwriter::last_reported_seq(&serial(source_serial)).expect("it wrote");
    let m = wait_boot(target_serial, boot, BOOT);
    assert!(
        m == written || m == written + 1,
        "boot {boot} resumed after {m}, the source guest had written {written}"
    );
    let job = c.json(&["commit", vm]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(c.item(vm)["state"], "failover-committed");
    m
}

fn reprotect(c: &Cluster, vm: &str) -> Value {
    let plan = c.cli_ok(&["reprotect", vm, "--yes", "--no-wait"]);
    assert!(plan.contains("(new)"), "{plan}");
    assert!(plan.contains("reuse"), "{plan}");
    let job = c.json(&["jobs"])[0].clone();
    assert_eq!(job["operation"], "reprotect", "{job}");
    let id = job["id"].as_i64().expect("job id").to_string();
    let job = c.json(&["job", "watch", &id]);
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

#[test]
fn round_trip_protect_failover_commit_reprotect_failback_reprotect() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("rt");
    c.cli_ok(&["vm", "start", "rt"]);
    let primary_src = c.source_serial("primary", "rt");
    wait_seq(&primary_src, 50, BOOT);
    protect_healthy(&c, "rt");

    // Re-protect is refused before a committed failover.
    let e = c.cli_err(&["reprotect", "rt", "--yes"]);
    assert!(e.contains("reprotect is not allowed"), "{e}");

    // Failover to the secondary region and commit.
    let sec = c.recovered_serial("secondary", "rt");
    let m = failover_and_commit(&c, "rt", &primary_src, &sec, 2);
    wait_seq(&sec, m + 100, BOOT);

    // Re-protect: secondary → primary, the original disk reused, only what diverged sent.
    let job = reprotect(&c, "rt");
    let plan = step(&job, "Reverse replication")["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(plan.contains("reused") && plan.contains("delta"), "{job}");
    let item = c.item("rt");
    assert_eq!(item["state"], "protected", "{item}");
    assert_eq!(item["source_region"], "secondary", "{item}");
    assert_eq!(item["target_region"], "primary", "{item}");
    assert_eq!(item["active_region"], "secondary", "{item}");
    wait_healthy(&c, "rt");
    // The guest kept running through re-protect (no new boot), and kept writing.
    let now = wait_seq(&sec, m + 200, BOOT);
    assert_eq!(seqwriter::boots(&serial(&sec)).len(), 1, "{}", serial(&sec));
    replica_equals_source(&c, "rt", "primary", &recovered_disk(&c, "secondary", "rt"));
    wait_boot(&sec, 3, BOOT);
    wait_seq(&sec, now + 50, BOOT);

    // Failback: failover to the primary region, commit, re-protect again.
    let back = c.recovered_serial("primary", "rt");
    let m2 = failover_and_commit(&c, "rt", &sec, &back, 4);
    assert!(m2 > now, "failback resumed after {m2}, before {now}");
    wait_seq(&back, m2 + 100, BOOT);
    // The secondary's journal (what it wrote up to the end) is lost: the journals cannot tell
    // what diverged, and re-protect compares block digests of both sides instead.
    assert!(c.store("primary").join("vms/rt/divergence.json").exists());
    let journal = c.dir.join("agents/secondary/recovered/rt/journal");
    std::fs::remove_dir_all(&journal).expect("remove the secondary's journal");
    let job = reprotect(&c, "rt");
    let plan = step(&job, "Reverse replication")["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(plan.contains("digests"), "{job}");
    let item = c.item("rt");
    assert_eq!(item["state"], "protected", "{item}");
    assert_eq!(item["source_region"], "primary", "{item}");
    assert_eq!(item["target_region"], "secondary", "{item}");
    assert_eq!(item["active_region"], "primary", "{item}");
    wait_healthy(&c, "rt");
    replica_equals_source(&c, "rt", "secondary", &recovered_disk(&c, "primary", "rt"));
    let m3 = wait_boot(&back, 5, BOOT);
    wait_seq(&back, m3 + 50, BOOT);
}

#[test]
fn the_old_primary_coming_back_after_failover_is_fenced_and_not_started() {
    let t = tempdir();
    let mut c = Cluster::separate(&t.path().join("lb"));
    c.create_guest_vm("sb");
    c.cli_ok(&["vm", "start", "sb"]);
    let primary = c.source_serial("primary", "sb");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "sb");

    // The primary region is cut off: its agent (and its QEMU) die; failover without it.
    c.kill_agent("primary");
    let job = c.json(&["failover", "sb", "--shutdown-source"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_boot(&c.recovered_serial("secondary", "sb"), 2, BOOT);
    let segments = |c: &Cluster| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(c.store("secondary").join("vms/sb/segments"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = segments(&c);
    let primary_log = serial(&primary);

    // It comes back (its state says the VM should run and be protected).
    c.start_agent("primary");
    wait_until(Duration::from_secs(60), "the split-brain event", || {
        c.cli_ok(&["events"]).contains("came back with VM sb")
    });
    let events = c.cli_ok(&["events"]);
    assert!(events.contains("fenced"), "{events}");
    // The old VM is not started: no QEMU of it at the primary, no new serial output.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(serial(&primary), primary_log, "the old VM ran again");
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(
            !(cmd.contains("guest=sb")
                && cmd.contains(&*c.dir.join("agents/primary/vms").to_string_lossy())),
            "the old VM runs again: {cmd}"
        );
    }
    // Nothing it sent was accepted.
    assert_eq!(segments(&c), before);
    // Starting it by hand at the old host is refused with the reason.
    let hosts = c.json(&["hosts"]);
    assert!(hosts.as_array().is_some_and(|h| h.len() == 2), "{hosts}");
    let item = c.item("sb");
    assert_eq!(item["state"], "failed-over", "{item}");
}

#[test]
fn reprotect_survives_kill_9_and_without_the_original_disk_copies_everything() {
    let t = tempdir();
    let mut c = Cluster::separate(&t.path().join("lb"));
    let image = c.create_guest_vm("kr");
    c.cli_ok(&["vm", "start", "kr"]);
    let primary = c.source_serial("primary", "kr");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "kr");
    let sec = c.recovered_serial("secondary", "kr");
    let m = failover_and_commit(&c, "kr", &primary, &sec, 2);
    wait_seq(&sec, m + 50, BOOT);

    // Re-protect while both agents and the vault are killed along the way.
    c.cli_ok(&["reprotect", "kr", "--yes", "--no-wait"]);
    c.kill_agent("secondary");
    c.kill_agent("primary");
    c.kill_vault();
    let restarted = now_ms();
    c.start_vault();
    c.start_agent("primary");
    c.start_agent("secondary");
    c.wait_agents();
    wait_until(
        Duration::from_secs(60),
        "both agents registered again",
        || {
            c.json(&["hosts"])
                .as_array()
                .is_some_and(|h| h.iter().all(|h| h["last_seen"].as_i64() > Some(restarted)))
        },
    );
    wait_until(Duration::from_secs(60), "the killed job ended", || {
        c.json(&["jobs"])[0]["status"] != "running"
    });
    let item = c.item("kr");
    if item["state"] != "protected" {
        assert_eq!(item["state"], "failover-committed", "{item}");
        // The guest restarted with its agent; the operator retries.
        let job = c.json(&["reprotect", "kr", "--yes"]);
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    wait_healthy(&c, "kr");
    let disk = recovered_disk(&c, "secondary", "kr");
    replica_equals_source(&c, "kr", "primary", &disk);

    // Fail back and commit, then delete the original disk at the secondary (the recovered
    // disk of the first failover) before re-protecting: a full copy, and the job says why.
    let back = c.recovered_serial("primary", "kr");
    let mut boot = 0;
    wait_until(BOOT, "the guest booted again at the secondary", || {
        boot = seqwriter::boots(&serial(&sec))
            .iter()
            .map(|b| b.0)
            .max()
            .unwrap_or(0);
        boot > 2
    });
    wait_seq(&sec, m + 100, BOOT);
    let m2 = failover_and_commit(&c, "kr", &sec, &back, boot + 1);
    wait_seq(&back, m2 + 50, BOOT);
    std::fs::remove_file(&disk).expect("delete the original disk");
    let job = c.json(&["reprotect", "kr", "--yes"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let d = step(&job, "Reverse replication")["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(d.contains("full"), "{job}");
    wait_healthy(&c, "kr");
    replica_equals_source(&c, "kr", "secondary", &recovered_disk(&c, "primary", "kr"));
    drop(image);
}
