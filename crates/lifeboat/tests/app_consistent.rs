//! App-consistent recovery points of a real Linux guest (a Debian kernel, busybox and qemu-ga,
//! built by `scripts/build-linux-guest`) whose ext4 data disk is served and journaled by the
//! agent while its writer keeps writing: an app-consistent point (the guest frozen through its
//! guest agent while the marker goes in), restored from the secondary region's store, is a
//! filesystem `e2fsck -fn` finds clean, with every logged file whole. Both ways to cut one:
//! `lifeboat checkpoint --app-consistent` for the VM, and a replication group's app-consistent
//! cut. A VM that cannot be frozen gets crash-consistent points instead, an event each, and
//! Warning health after three in a row.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::Cluster;
use lifeboat_testkit::linux_guest::{
    check_app_consistent, ext4_disk, last_wrote, linux_guest, READY,
};
use lifeboat_testkit::{tempdir, wait_for, wait_until};
use serde_json::Value;

const VM: &str = "lin";
/// TCG boots the guest in 10-20 s; allow for a loaded machine.
const BOOT: Duration = Duration::from_secs(180);

fn serial(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Restores `point` of the VM from the secondary store, once processed, and checks it.
fn restored_is_app_consistent(c: &Cluster, point: &str) -> u64 {
    let out = c.dir.join(format!("{point}.img"));
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(60), || {
        let r = c.cli(&[
            "restore",
            "--store",
            &c.store("secondary").display().to_string(),
            "--vm",
            VM,
            "--point",
            point,
            "--output",
            &out.display().to_string(),
        ]);
        last = String::from_utf8_lossy(&r.stderr).into_owned();
        r.status.success()
    });
    assert!(ok, "point {point} was never restorable: {last}");
    let work = c.dir.join(format!("{point}.check"));
    std::fs::create_dir_all(&work).expect("work dir");
    let check = check_app_consistent(&out, &work)
        .unwrap_or_else(|e| panic!("point {point} is not app-consistent: {e}"));
    std::fs::remove_file(&out).ok();
    check.last
}

fn point_id(seq: &Value, kind: &str) -> String {
    format!("{:020}-{kind}", seq.as_u64().expect("seq"))
}

#[test]
fn app_consistent_points_of_a_linux_guest_are_clean_filesystems() {
    let g = linux_guest();
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    let disk = c.dir.join("lin-data.img");
    ext4_disk(&disk, 64 << 20);
    let def = serde_json::json!({
        "name": VM, "vcpus": 1, "memory_mib": 256,
        "disks": [{"source": {"file": {"path": disk, "format": "raw"}}, "bus": "virtio"}],
        "serial_log": c.dir.join("lin.unused.serial"),
        "guest_agent_socket": c.dir.join("lin.unused.qga"),
        "kernel": {"kernel": g.kernel, "initrd": g.initrd, "append": g.append},
    });
    let f = c.dir.join("lin.json");
    std::fs::write(&f, def.to_string()).expect("definition");
    c.cli_ok(&[
        "vm",
        "create",
        VM,
        "--region",
        "primary",
        "--definition",
        &f.display().to_string(),
    ]);
    c.cli_ok(&["vm", "start", VM]);
    let console = c.source_serial("primary", VM);
    wait_until(BOOT, "the guest's qemu-ga and writer", || {
        serial(&console).contains(READY)
    });
    let job = c.json(&["protect", VM, "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_until(Duration::from_secs(60), "writes", || {
        last_wrote(&serial(&console)).is_some_and(|n| n > 32)
    });

    // The VM's own app-consistent point.
    let a = c.json(&["checkpoint", VM, "--app-consistent"]);
    assert_eq!(a["kind"], "app-consistent", "{a}");
    assert!(a["freeze_error"].is_null(), "{a}");
    let point = point_id(&a["seq"], "app");
    let n = restored_is_app_consistent(&c, &point);
    assert!(n > 32, "the point has the guest's writes up to {n}");
    let points = c.json(&["points", VM]);
    let p = points
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == point.as_str()))
        .unwrap_or_else(|| panic!("point {point} in {points}"));
    assert_eq!(p["kind"], "app-consistent", "{p}");

    // A replication group's app-consistent cut (here of one VM).
    c.cli_ok(&["group", "create", "solo", VM]);
    let e = c.cli_err(&["checkpoint", VM]);
    assert!(e.contains("replication group solo"), "{e}");
    let cut = c.json(&["group", "cut", "solo", "--app-consistent"]);
    assert_eq!(cut["kind"], "app-consistent", "{cut}");
    let seq = &cut["members"][0]["seq"];
    let m = restored_is_app_consistent(&c, &point_id(seq, "app"));
    assert!(m >= n, "the cut has later writes ({m} >= {n})");
    c.cli_ok(&["group", "delete", "solo"]);

    // The guest cannot be frozen (the VM is stopped): crash-consistent points, events, and
    // Warning health after three in a row.
    c.cli_ok(&["vm", "stop", VM]);
    for i in 1..=3 {
        let a = c.json(&["checkpoint", VM, "--app-consistent"]);
        assert_eq!(a["kind"], "crash-consistent", "{a}");
        let why = a["freeze_error"].as_str().unwrap_or_default();
        assert!(why.contains("not running"), "miss {i}: {a}");
    }
    wait_until(Duration::from_secs(30), "Warning health", || {
        let item = c.item(VM);
        item["health"]["health"] == "warning"
            && item["health"]["reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r.as_str().unwrap_or("").contains("could not be frozen"))
    });
    let events = c.cli_ok(&["events"]);
    assert!(
        events.contains("app-consistent recovery point of VM lin failed"),
        "{events}"
    );
}
