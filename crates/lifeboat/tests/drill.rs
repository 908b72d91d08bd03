//! DR drills with real processes and a real QEMU guest (the seqwriter): test failover boots a
//! copy at the secondary from a recovery point while the primary keeps writing and replicating;
//! the copy has exactly the point's data, runs on an isolated network, and cleanup leaves
//! nothing behind (no QEMU, no files, no pin in the store) and records the drill.

mod common;

use std::time::Duration;

use common::cluster::{serial, step, wait_boot, wait_seq, Cluster};
use lifeboat_qemu::seqwriter;
use lifeboat_testkit::{tempdir, wait_until};

const BOOT: Duration = Duration::from_secs(120);

/// The command lines of the QEMU processes whose arguments mention `needle`.
fn qemus_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let c = String::from_utf8_lossy(&c).replace('\0', " ");
        if c.starts_with("qemu-system") && c.contains(needle) {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_drill_boots_the_point_isolated_while_replication_goes_on_and_cleanup_leaves_nothing() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("dr");
    c.cli_ok(&["vm", "start", "dr"]);
    let primary = c.source_serial("primary", "dr");
    wait_seq(&primary, 50, BOOT);
    let job = c.json(&["protect", "dr", "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_until(Duration::from_secs(60), "Healthy", || {
        c.item("dr")["health"]["health"] == "healthy"
    });
    let before = wait_seq(&primary, 300, BOOT);

    let job = c.json(&["test-failover", "dr", "--recovery-point", "latest"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(step(&job, "Start VM")["status"], "succeeded", "{job}");
    let item = c.item("dr");
    assert_eq!(item["state"], "test-failed-over", "{item}");
    assert_eq!(item["drill"]["succeeded"], true, "{item}");
    let point = item["drill"]["point"]
        .as_str()
        .expect("drill point")
        .to_string();
    // The copy boots from the point: exactly its writes, no more than the primary wrote.
    let drill_serial = c.dir.join("agents/secondary/drills/dr/serial.log");
    let m = wait_boot(&drill_serial, 2, BOOT);
    // "latest" is everything received (the source is not stopped for a drill): within a
    // second of what the guest had written when the drill began.
    assert!(
        m > before / 2,
        "the drill copy resumed after {m}, the primary had written {before}"
    );
    let written = seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0);
    assert!(
        m <= written + 1,
        "the copy has writes the primary never made"
    );
    let out = c.dir.join("drill-point.img");
    c.cli_ok(&[
        "restore",
        "--store",
        &c.store("secondary").display().to_string(),
        "--vm",
        "dr",
        "--point",
        &point,
        "--output",
        &out.display().to_string(),
    ]);
    let v = seqwriter::verify_file(&out).expect("verify the point");
    assert!(v.is_crash_consistent(), "{v}");
    assert_eq!(
        v.last_seq, m,
        "the copy booted from another state than its point"
    );
    // Isolated: its only network is user networking with restrict=on.
    let drills = qemus_with("/drills/dr/");
    assert_eq!(drills.len(), 1, "{drills:?}");
    assert!(drills[0].contains("restrict=on"), "{}", drills[0]);
    assert!(!drills[0].contains("tap"), "{}", drills[0]);
    // The point is pinned while the drill runs.
    let pin = c.store("secondary").join("vms/dr/pins/drill.json");
    assert!(pin.exists());
    // Replication goes on, the item stays healthy and its RPO bounded.
    let during = wait_seq(&primary, written + 300, BOOT);
    assert!(during > written);
    wait_until(
        Duration::from_secs(30),
        "a fresh RPO during the drill",
        || {
            let i = c.item("dr");
            i["health"]["health"] == "healthy" && i["rpo_ms"].as_i64().is_some_and(|r| r < 5_000)
        },
    );
    // No failover in the middle of a drill.
    let e = c.cli_err(&["failover", "dr"]);
    assert!(e.contains("not allowed"), "{e}");

    let job = c.json(&[
        "cleanup-test-failover",
        "dr",
        "--notes",
        "app came up; DNS ok",
    ]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let item = c.item("dr");
    assert_eq!(item["state"], "protected", "{item}");
    assert!(item["drill"].is_null(), "{item}");
    assert!(item["last_drill_at"].as_i64().is_some(), "{item}");
    assert_eq!(item["last_drill_notes"], "app came up; DNS ok", "{item}");
    assert!(
        qemus_with("/drills/dr/").is_empty(),
        "the drill copy still runs"
    );
    assert!(!c.dir.join("agents/secondary/drills/dr").exists());
    assert!(!pin.exists(), "the pin outlived the drill");
    assert!(c
        .cli_ok(&["events"])
        .contains("DR drill of VM dr completed"));
    // The protected VM was never disturbed.
    assert_eq!(seqwriter::boots(&serial(&primary)).len(), 1);
    wait_seq(&primary, during + 100, BOOT);
}

#[test]
fn a_drill_survives_kill_9_of_its_agent_and_of_the_vault() {
    let t = tempdir();
    let mut c = Cluster::separate(&t.path().join("lb"));
    c.create_guest_vm("dk");
    c.cli_ok(&["vm", "start", "dk"]);
    let primary = c.source_serial("primary", "dk");
    wait_seq(&primary, 50, BOOT);
    let job = c.json(&["protect", "dk", "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let job = c.json(&["test-failover", "dk"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let drill_serial = c.dir.join("agents/secondary/drills/dk/serial.log");
    let m = wait_boot(&drill_serial, 2, BOOT);
    // The copy's own writes (acknowledged before the kill) must survive it. (Killed before its
    // first whole record, the copy would rightly boot as boot 2 again: a torn record is not a
    // record.)
    let m = wait_seq(&drill_serial, m + 50, BOOT);

    // The target agent dies (its QEMU with it) and comes back: the drill copy runs again from
    // the same pinned point, with the writes it made.
    c.kill_agent("secondary");
    c.start_agent("secondary");
    let booted = lifeboat_testkit::wait_for(BOOT, || {
        seqwriter::boots(&serial(&drill_serial))
            .iter()
            .any(|b| b.0 == 3)
    });
    if !booted {
        // Say what the agent and the guest did.
        let mut logs = String::new();
        if let Some(root) = c.dir.parent() {
            for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("agent-secondary") {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text
                        .lines()
                        .filter(|l| !l.contains("heartbeat"))
                        .rev()
                        .take(40)
                        .collect();
                    logs.push_str(&format!("== {name}\n"));
                    for l in tail.into_iter().rev() {
                        logs.push_str(l);
                        logs.push('\n');
                    }
                }
            }
        }
        panic!(
            "the drill copy did not boot again after its agent restarted; serial:\n{}\n{logs}",
            serial(&drill_serial)
        );
    }
    let again = wait_boot(&drill_serial, 3, BOOT);
    assert!(
        again >= m,
        "the drill copy lost its own writes: {again} < {m}"
    );
    // The vault dies and comes back: the item still shows the drill, cleanup works.
    c.kill_vault();
    c.start_vault();
    c.wait_agents();
    let item = c.item("dk");
    assert_eq!(item["state"], "test-failed-over", "{item}");
    wait_until(
        Duration::from_secs(60),
        "cleanup after the restarts",
        || {
            let out = c.cli(&["cleanup-test-failover", "dk", "--notes", "after kill -9"]);
            out.status.success()
        },
    );
    let item = c.item("dk");
    assert_eq!(item["state"], "protected", "{item}");
    assert_eq!(item["last_drill_notes"], "after kill -9", "{item}");
    assert!(
        qemus_with("/drills/dk/").is_empty(),
        "the drill copy still runs"
    );
    assert!(!c.store("secondary").join("vms/dk/pins/drill.json").exists());
}
