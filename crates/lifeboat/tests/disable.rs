//! Disable protection with real processes and a real QEMU guest: the VM keeps running and
//! writing, its source no longer ships, the secondary store has nothing of it left, its spool
//! stays bounded, and it can be protected again (a new initial copy) and turns Healthy.

mod common;

use std::time::Duration;

use common::cluster::{wait_seq, Cluster};
use lifeboat_testkit::{tempdir, wait_until};

const BOOT: Duration = Duration::from_secs(120);

fn store_objects(c: &Cluster, vm: &str) -> Vec<String> {
    let dir = c.store("secondary").join("vms").join(vm);
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn disabling_protection_keeps_the_vm_running_and_deletes_its_points() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("off");
    c.cli_ok(&["vm", "start", "off"]);
    let serial = c.source_serial("primary", "off");
    wait_seq(&serial, 50, BOOT);
    let job = c.json(&["protect", "off", "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_until(
        Duration::from_secs(60),
        "points in the secondary store",
        || {
            store_objects(&c, "off")
                .iter()
                .any(|p| p.contains("/points/"))
        },
    );

    let job = c.json(&["disable-protection", "off"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let item = c.item("off");
    assert_eq!(item["state"], "not-protected", "{item}");
    let left: Vec<String> = store_objects(&c, "off")
        .into_iter()
        .filter(|p| p.contains("/points/") || p.contains("/segments/") || p.contains("/pins/"))
        .collect();
    assert!(left.is_empty(), "left in the store: {left:?}");
    // The guest goes on writing; nothing new reaches the store.
    let before = wait_seq(&serial, 0, BOOT);
    wait_seq(&serial, before + 100, BOOT);
    let left: Vec<String> = store_objects(&c, "off")
        .into_iter()
        .filter(|p| p.contains("/segments/") || p.contains("/points/"))
        .collect();
    assert!(left.is_empty(), "shipped after disable: {left:?}");
    let e = c.cli_err(&["failover", "off"]);
    assert!(e.contains("not allowed"), "{e}");

    // The unprotected VM's spool stays bounded: sealed segments (one per 10 s of writes) are
    // dropped at each persist (every 30 s) once the image holds them.
    let journal = c.dir.join("agents/primary/vms/off/journal");
    let sealed = || {
        std::fs::read_dir(&journal)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".lbj"))
            .count()
    };
    let mut most = 0;
    let mut shrank = false;
    wait_until(Duration::from_secs(100), "the spool to shrink", || {
        let n = sealed();
        shrank |= n < most;
        most = most.max(n);
        shrank
    });
    assert!(most <= 5, "the spool grew to {most} sealed segments");

    // Protected again: a new initial copy, then points with the guest's later writes.
    let job = c.json(&["protect", "off", "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_until(
        Duration::from_secs(60),
        "Protected and Healthy again",
        || {
            let i = c.item("off");
            i["state"] == "protected" && i["health"]["health"] == "healthy"
        },
    );
}
