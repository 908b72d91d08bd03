//! Replication groups (multi-VM consistency) with real processes: three protected VMs whose
//! disks the test writes through the agent's real NBD disk servers, causally (VM b's write `i`
//! only after VM a acknowledged its write `i`, c's only after b's), while the group's shared
//! points are cut again and again. Every cut, restored from the secondary region's store, is
//! causally consistent: `a - 1 <= c <= b <= a`. Then the group fails over to its latest
//! multi-VM processed point (a VM of the group alone is refused), each VM from its own point of
//! that one cut.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::Cluster;
use lifeboat_testkit::nbd_client::Client as Nbd;
use lifeboat_testkit::{tempdir, wait_until};
use serde_json::Value;

const VMS: [&str; 3] = ["ga", "gb", "gc"];
const DISK: u64 = 8 << 20;

/// Creates VM `name` with one raw 8 MiB data disk (no guest: the test is its application).
fn create_vm(c: &Cluster, name: &str) {
    let img = c.dir.join(format!("{name}.img"));
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(DISK))
        .expect("disk image");
    let def = serde_json::json!({
        "name": name, "vcpus": 1, "memory_mib": 32,
        "disks": [{"source": {"file": {"path": img, "format": "raw"}}}],
        "serial_log": c.dir.join(format!("{name}.serial")),
    });
    let f = c.dir.join(format!("{name}.json"));
    std::fs::write(&f, def.to_string()).expect("definition");
    c.cli_ok(&[
        "vm",
        "create",
        name,
        "--region",
        "primary",
        "--definition",
        &f.display().to_string(),
    ]);
}

/// The counter at the start of disk 0 of `vm`'s recovery point `point` (secondary store).
fn counter_at(c: &Cluster, vm: &str, point: &str) -> u64 {
    let out = c.dir.join(format!("restore-{vm}-{point}.img"));
    c.cli_ok(&[
        "restore",
        "--store",
        &c.store("secondary").display().to_string(),
        "--vm",
        vm,
        "--point",
        point,
        "--disk",
        "0",
        "--output",
        &out.display().to_string(),
    ]);
    let data = std::fs::read(&out).expect("restored image");
    std::fs::remove_file(&out).ok();
    assert_eq!(data.len() as u64, DISK, "restored size");
    let block = &data[..4096];
    let n = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
    // The whole block is the counter repeated: a torn block would show.
    assert!(
        block.chunks(8).all(|w| w == &block[..8]),
        "VM {vm} point {point}: block 0 is not one counter repeated (torn write?)"
    );
    n
}

fn block(n: u64) -> Vec<u8> {
    n.to_le_bytes().repeat(512)
}

#[test]
fn a_groups_cuts_are_causally_consistent_and_the_group_fails_over_together() {
    // The agent appends the markers of a cut 30 ms apart, in the order the application writes
    // (ga, gb, gc), as hosts far apart would: only the holds keep such a cut consistent (with
    // them made no-ops, this test fails).
    std::env::set_var("LIFEBOAT_CUT_SPREAD_MS", "30");
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    for vm in VMS {
        create_vm(&c, vm);
        let job = c.json(&["protect", vm, "--target-region", "secondary"]);
        assert_eq!(job["status"], "succeeded", "{job}");
    }

    // Bad groups are refused with the reason.
    let e = c.cli_err(&["group", "create", "bad", "ga", "ga"]);
    assert!(e.contains("listed twice"), "{e}");
    let e = c.cli_err(&["group", "create", "bad", "ga", "nosuchvm"]);
    assert!(e.contains("nosuchvm"), "{e}");
    let many: Vec<String> = (0..17).map(|i| format!("vm{i}")).collect();
    let mut args = vec!["group", "create", "bad"];
    args.extend(many.iter().map(String::as_str));
    let e = c.cli_err(&args);
    assert!(e.contains("1 to 16 VMs"), "{e}");

    let g = c.json(&["group", "create", "app", "ga", "gb", "gc"]);
    assert_eq!(g["vms"], serde_json::json!(VMS), "{g}");
    assert!(g["warnings"].is_null(), "the agents were told: {g}");
    let e = c.cli_err(&["group", "create", "other", "ga"]);
    assert!(e.contains("already in replication group app"), "{e}");

    // The application: a, then b, then c, each only after the previous acknowledged.
    let sockets: Vec<_> = VMS
        .iter()
        .map(|vm| c.dir.join(format!("agents/primary/vms/{vm}/nbd.sock")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut disks: Vec<Nbd> = sockets
                .iter()
                .map(|s| Nbd::connect(Path::new(s), "disk0").expect("NBD connect"))
                .collect();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                for d in &mut disks {
                    d.write(0, &block(i), false).expect("NBD write");
                }
                written.store(i, Ordering::Release);
            }
            for d in disks {
                d.disconnect().ok();
            }
        })
    };
    wait_until(Duration::from_secs(30), "writes", || {
        written.load(Ordering::Acquire) > 100
    });
    let mut cut_ids = Vec::new();
    for _ in 0..20 {
        let cut = c.json(&["group", "cut", "app"]);
        assert_eq!(cut["members"].as_array().map(Vec::len), Some(3), "{cut}");
        cut_ids.push(cut["id"].as_i64().expect("cut id"));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Release);
    writer.join().expect("writer");
    let total = written.load(Ordering::Acquire);

    // Every cut becomes a recovery point of every VM (same time), then each is checked.
    let mut points = Value::Null;
    wait_until(Duration::from_secs(120), "every cut processed", || {
        points = c.json(&["group", "points", "app"]);
        cut_ids.iter().all(|id| {
            points
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["cut"]["id"] == *id && p["complete"] == true)
        })
    });
    let mut moving = 0;
    for p in points.as_array().expect("points") {
        if !cut_ids.contains(&p["cut"]["id"].as_i64().unwrap_or(-1)) {
            continue;
        }
        let n: Vec<u64> = VMS
            .iter()
            .map(|vm| {
                let id = p["points"][vm].as_str().expect("member point");
                counter_at(&c, vm, id)
            })
            .collect();
        let (a, b, cc) = (n[0], n[1], n[2]);
        assert!(
            cc <= b && b <= a && a <= cc + 1,
            "cut {} is not causally consistent: a={a} b={b} c={cc}",
            p["cut"]["id"]
        );
        assert!(a <= total);
        if a > 0 {
            moving += 1;
        }
    }
    assert!(moving >= 10, "only {moving} cuts were taken while writing");

    // A VM of the group cannot fail over alone; the group fails over to one shared point.
    let e = c.cli_err(&["failover", "ga"]);
    assert!(e.contains("replication group app"), "{e}");
    let e = c.cli_err(&["group", "failover", "app", "--recovery-point", "latest"]);
    assert!(e.contains("not a group point"), "{e}");
    // A drill of the whole group from one shared point, then its cleanup.
    c.cli_ok(&["group", "test-failover", "app"]);
    for vm in VMS {
        let item = c.item(vm);
        assert_eq!(item["state"], "test-failed-over", "{item}");
    }
    let e = c.cli_err(&["test-failover", "ga"]);
    assert!(e.contains("replication group app"), "{e}");
    c.cli_ok(&[
        "group",
        "cleanup-test-failover",
        "app",
        "--notes",
        "all three came up",
    ]);
    for vm in VMS {
        let item = c.item(vm);
        assert_eq!(item["state"], "protected", "{item}");
        assert_eq!(item["last_drill_notes"], "all three came up", "{item}");
    }

    let newest = c.json(&["group", "points", "app"]);
    let chosen = newest
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["complete"] == true))
        .expect("a complete group point")
        .clone();
    c.cli_ok(&["group", "failover", "app"]);
    for vm in VMS {
        let item = c.item(vm);
        assert_eq!(item["state"], "failed-over", "{item}");
        let jobs = c.json(&["jobs"]);
        let job = jobs
            .as_array()
            .and_then(|js| {
                js.iter()
                    .find(|j| j["vm"] == vm && j["operation"] == "failover")
            })
            .expect("the member's failover job")
            .clone();
        assert_eq!(job["params"]["group"], "app", "{job}");
        assert_eq!(
            job["params"]["recovery_point"], chosen["points"][vm],
            "VM {vm} failed over to its point of the newest complete cut"
        );
    }
}
