//! The user's whole story with real processes and real QEMU VMs: protect a running VM, see it
//! Protected and Healthy, fail it over to the secondary region with each recovery-point choice
//! (with and without shutting the source down, with the primary agent killed, with the vault
//! killed in the middle), change the point, commit.
//!
//! The guest is the project's seqwriter (numbered, checksummed 4 KiB records in a ring; it
//! prints `seq N` after each write and `seqwriter boot B after seq M` when it boots and finds
//! writes 1..M on its disk). At the secondary, its boot line says which write the failed-over
//! disk ends with; the same recovery point restored with `lifeboat restore` must hold exactly
//! the writes 1..M (checked record by record), and M must never be more than the primary guest
//! wrote.

mod common;

use std::time::Duration;

use common::cluster::{serial, step, wait_boot, wait_seq, Cluster};
use lifeboat_qemu::seqwriter;
use lifeboat_testkit::{tempdir, wait_until};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);

/// The recovery point a failover or change-recovery-point job recovered from: (label, seq).
fn recovered_point(job: &Value) -> (String, u64) {
    let d = step(job, "Create VM")["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let label = d
        .strip_prefix("from recovery point ")
        .and_then(|r| r.split(" (journal record ").next())
        .unwrap_or_else(|| panic!("Create VM detail: {d}"))
        .to_string();
    let seq = d
        .split("(journal record ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("Create VM detail: {d}"));
    (label, seq)
}

/// Restores `point` of `vm` from the secondary store and returns the last write it holds,
/// after checking the disk holds exactly the writes 1..that one.
fn restored_writes(c: &Cluster, vm: &str, point: &str) -> u64 {
    let out = c
        .dir
        .join(format!("restored-{}.img", point.replace([':', '.'], "_")));
    c.cli_ok(&[
        "restore",
        "--store",
        &c.store("secondary").display().to_string(),
        "--vm",
        vm,
        "--point",
        point,
        "--output",
        &out.display().to_string(),
    ]);
    let r = seqwriter::verify_file(&out).expect("verify the restored disk");
    assert!(
        r.is_crash_consistent(),
        "point {point} of {vm} is not exactly writes 1..N: {r}"
    );
    r.last_seq
}

/// The command line of the QEMU running recovered VM `vm` (NUL-separated, from /proc).
fn qemu_cmdline(vm: &str) -> String {
    let want = format!("guest={vm}");
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let c = String::from_utf8_lossy(&c).into_owned();
        if c.starts_with("qemu-system")
            && c.split('\0').any(|a| a == want)
            && c.contains("/recovered/")
        {
            return c;
        }
    }
    panic!("no QEMU runs recovered VM {vm}");
}

/// Protects `vm` and waits until it is Protected and Healthy (RPO reported).
fn protect_healthy(c: &Cluster, vm: &str) {
    protect_healthy_with(c, vm, &[]);
}

fn protect_healthy_with(c: &Cluster, vm: &str, extra: &[&str]) {
    let mut args = vec!["protect", vm, "--target-region", "secondary"];
    args.extend_from_slice(extra);
    let job = c.json(&args);
    assert_eq!(job["status"], "succeeded", "{job}");
    let item = c.item(vm);
    assert_eq!(item["state"], "protected", "{item}");
    assert_eq!(item["percent_synced"], 100, "{item}");
    wait_until(
        Duration::from_secs(30),
        "the item Healthy with an RPO",
        || {
            let i = c.item(vm);
            i["health"]["health"] == "healthy" && i["rpo_ms"].as_i64().is_some()
        },
    );
    let i = c.item(vm);
    assert!(
        i["rpo_ms"].as_i64().unwrap_or(i64::MAX) < 10_000,
        "RPO of a healthy item: {i}"
    );
}

#[test]
fn protect_failover_change_point_and_commit() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("web");
    c.cli_ok(&["vm", "start", "web"]);
    let primary = c.source_serial("primary", "web");
    wait_seq(&primary, 50, BOOT);
    let e = c.cli_err(&[
        "protect",
        "web",
        "--target-region",
        "secondary",
        "--target-vcpus",
        "0",
    ]);
    assert!(e.contains("target_vcpus must be 1 to 255"), "{e}");
    protect_healthy_with(
        &c,
        "web",
        &["--target-vcpus", "2", "--target-memory-mib", "48"],
    );
    let items = c.cli_ok(&["items"]);
    assert!(
        items.contains("Protected") && items.contains("healthy"),
        "{items}"
    );

    // Wrong states before failover.
    let e = c.cli_err(&["commit", "web"]);
    assert!(e.contains("Protected") && e.contains("failover"), "{e}");
    let e = c.cli_err(&["change-recovery-point", "web", "--recovery-point", "latest"]);
    assert!(e.contains("Protected"), "{e}");

    // Let a few points accumulate, then fail over to the latest processed one, the source
    // left running (it is fenced: its segments are refused from now on).
    wait_seq(
        &primary,
        seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0) + 600,
        BOOT,
    );
    let job = c.json(&["failover", "web", "--recovery-point", "latest-processed"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(step(&job, "Process data")["status"], "succeeded");
    let (point, _) = recovered_point(&job);
    let recovered = c.recovered_serial("secondary", "web");
    let m = wait_boot(&recovered, 2, BOOT);
    let written = seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0);
    assert!(
        m >= 600 && m <= written + 1,
        "resumed after {m}, primary wrote {written}"
    );
    assert_eq!(restored_writes(&c, "web", &point), m, "point {point}");
    let item = c.item("web");
    assert_eq!(item["state"], "failed-over", "{item}");
    assert_eq!(item["active_region"], "secondary", "{item}");
    assert_eq!(item["epoch"], 2, "{item}");
    // Sized per the item's target settings.
    let cmdline = qemu_cmdline("web");
    assert!(
        cmdline.contains("-smp\x002\x00") && cmdline.contains("-m\x0048M\x00"),
        "{cmdline:?}"
    );
    let e = c.cli_err(&["failover", "web"]);
    assert!(e.contains("Failed over"), "{e}");

    // Change to an older point by id, then to a time between two points.
    let points = c.json(&["item", "points", "web"]);
    let pts: Vec<&Value> = points
        .as_array()
        .expect("points")
        .iter()
        .filter(|p| p["form"] != "initial-copy")
        .collect();
    assert!(pts.len() >= 3, "{points}");
    let older = pts[pts.len() / 2]["id"].as_str().expect("id").to_string();
    let job = c.json(&["change-recovery-point", "web", "--recovery-point", &older]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(recovered_point(&job).0, older);
    let m2 = wait_boot(&recovered, 2, BOOT);
    assert_eq!(restored_writes(&c, "web", &older), m2);
    assert!(
        m2 < m,
        "older point {older}: after {m2}, latest processed after {m}"
    );

    let (t0, t1) = (
        pts[1]["time"].as_i64().unwrap(),
        pts[2]["time"].as_i64().unwrap(),
    );
    let when = lifeboat_process::format_utc_ms(
        std::time::UNIX_EPOCH + Duration::from_millis(((t0 + t1) / 2) as u64),
    );
    let job = c.json(&["change-recovery-point", "web", "--recovery-point", &when]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let m3 = wait_boot(&recovered, 2, BOOT);
    assert_eq!(restored_writes(&c, "web", &when), m3, "time {when}");

    // Commit: the disk becomes local and final; the points go.
    let job = c.json(&["commit", "web"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let item = c.item("web");
    assert_eq!(item["state"], "failover-committed", "{item}");
    assert_eq!(c.json(&["points", "web"]), serde_json::json!([]));
    let e = c.cli_err(&["change-recovery-point", "web", "--recovery-point", "latest"]);
    assert!(e.contains("Failover committed"), "{e}");
    // The guest goes on writing at the secondary.
    let now = seqwriter::last_reported_seq(&serial(&recovered)).unwrap_or(0);
    wait_seq(&recovered, now + 100, BOOT);
}

#[test]
fn planned_failover_to_latest_loses_no_acknowledged_write() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("db");
    c.cli_ok(&["vm", "start", "db"]);
    let primary = c.source_serial("primary", "db");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "db");

    // No app-consistent point exists: refused, and the item stays Protected.
    let e = c.cli_err(&[
        "failover",
        "db",
        "--recovery-point",
        "latest-app-consistent",
    ]);
    assert!(e.contains("no latest-app-consistent recovery point"), "{e}");
    let item = c.item("db");
    assert_eq!(item["state"], "protected", "{item}");
    assert_eq!(
        item["epoch"], 1,
        "a refused failover must not fence the source: {item}"
    );

    let job = c.json(&[
        "failover",
        "db",
        "--recovery-point",
        "latest",
        "--shutdown-source",
        "--shutdown-timeout",
        "2",
    ]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        step(&job, "Shut down source VM")["status"],
        "succeeded",
        "{job}"
    );
    let written = seqwriter::last_reported_seq(&serial(&primary)).expect("primary wrote");
    let (point, _) = recovered_point(&job);
    let m = wait_boot(&c.recovered_serial("secondary", "db"), 2, BOOT);
    // Every write the guest saw acknowledged is there (and at most the one in flight).
    assert!(
        m == written || m == written + 1,
        "resumed after {m}, the primary guest had written {written}"
    );
    assert_eq!(restored_writes(&c, "db", &point), m);
}

#[test]
fn failover_with_the_primary_agent_killed() {
    let t = tempdir();
    let mut c = Cluster::separate(&t.path().join("lb"));
    c.create_guest_vm("app");
    c.cli_ok(&["vm", "start", "app"]);
    let primary = c.source_serial("primary", "app");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "app");
    wait_seq(
        &primary,
        seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0) + 300,
        BOOT,
    );

    // The primary region is lost: its agent (and with it QEMU) is killed.
    c.kill_agent("primary");
    let written = seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0);
    let job = c.json(&["failover", "app", "--shutdown-source"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let shut = step(&job, "Shut down source VM");
    assert_eq!(shut["status"], "skipped", "{job}");
    assert!(
        shut["detail"]
            .as_str()
            .unwrap_or("")
            .contains("failover goes on"),
        "{job}"
    );
    let (point, _) = recovered_point(&job);
    let m = wait_boot(&c.recovered_serial("secondary", "app"), 2, BOOT);
    assert!(
        m > 0 && m <= written + 1,
        "resumed after {m}, wrote {written}"
    );
    assert_eq!(restored_writes(&c, "app", &point), m);
    let item = c.item("app");
    assert_eq!(item["state"], "failed-over", "{item}");
    assert_eq!(item["epoch"], 2, "the dead source is fenced: {item}");
}

#[test]
fn vault_killed_during_failover_leaves_nothing_stuck() {
    let t = tempdir();
    let mut c = Cluster::separate(&t.path().join("lb"));
    c.create_guest_vm("erp");
    c.cli_ok(&["vm", "start", "erp"]);
    let primary = c.source_serial("primary", "erp");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "erp");

    let job = c.json(&["failover", "erp", "--recovery-point", "latest", "--no-wait"]);
    let id = job["id"].as_i64().expect("job id");
    // Kill the vault once the job is past its prerequisites (the source fenced or about to be).
    wait_until(
        Duration::from_secs(60),
        "the failover job under way",
        || {
            let jobs = c.json(&["jobs"]);
            let Some(j) = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == id))
            else {
                return false;
            };
            j["status"] != "running" || step(j, "Prerequisites check")["status"] == "succeeded"
        },
    );
    c.kill_vault();
    c.start_vault();
    let out = c.cli(&["job", "watch", &id.to_string(), "--output", "json"]);
    let job: Value = serde_json::from_slice(&out.stdout).expect("job JSON");
    let item = c.item("erp");
    eprintln!("after the vault restarted: job {id} {}", job["status"]);
    let done = match job["status"].as_str() {
        Some("failed") => {
            assert!(
                job["error"].as_str().unwrap_or("").contains("retry"),
                "{job}"
            );
            assert_eq!(item["state"], "protected", "{item}");
            c.wait_agents();
            let job = c.json(&["failover", "erp", "--recovery-point", "latest"]);
            assert_eq!(job["status"], "succeeded", "{job}");
            job
        }
        Some("succeeded") => {
            assert_eq!(item["state"], "failed-over", "{item}");
            job
        }
        other => panic!("job {id} is {other:?} after the vault restarted: {job}"),
    };
    assert_eq!(c.item("erp")["state"], "failed-over");
    let m = wait_boot(&c.recovered_serial("secondary", "erp"), 2, BOOT);
    assert!(m >= 50, "resumed after {m}");
    let (point, _) = recovered_point(&done);
    assert_eq!(restored_writes(&c, "erp", &point), m);
}

#[test]
fn agents_killed_with_sigkill_come_back_where_they_were() {
    let t = tempdir();
    let mut c = Cluster::separate(&t.path().join("lb"));
    c.create_guest_vm("crm");
    c.cli_ok(&["vm", "start", "crm"]);
    let primary = c.source_serial("primary", "crm");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "crm");

    // The primary agent dies with its VM; restarted, it serves the disk again, restarts the
    // VM (which resumes from its disk) and replication goes on.
    let before = seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0);
    c.kill_agent("primary");
    c.start_agent("primary");
    let resumed = wait_boot(&primary, 2, BOOT);
    assert!(
        resumed >= before,
        "resumed after {resumed}, had written {before}"
    );
    wait_seq(&primary, resumed + 300, BOOT);
    let rpo_fresh = || {
        let i = c.item("crm");
        i["health"]["health"] == "healthy" && i["rpo_ms"].as_i64().is_some_and(|r| r < 5_000)
    };
    wait_until(
        Duration::from_secs(60),
        "replication going on after the restart",
        rpo_fresh,
    );

    // Failover, then the secondary agent dies while the recovered VM runs: restarted, it
    // reopens the recovered disks and starts the VM again; commit still works.
    let job = c.json(&["failover", "crm", "--recovery-point", "latest"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let recovered = c.recovered_serial("secondary", "crm");
    let m = wait_boot(&recovered, 3, BOOT);
    wait_seq(&recovered, m + 200, BOOT);
    let written = seqwriter::last_reported_seq(&serial(&recovered)).unwrap_or(0);
    c.kill_agent("secondary");
    c.start_agent("secondary");
    let again = wait_boot(&recovered, 4, BOOT);
    assert!(
        again >= written,
        "the recovered VM lost writes across the agent restart: resumed after {again}, had \
         written {written}"
    );
    c.wait_agents();
    let job = c.json(&["commit", "crm"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(c.item("crm")["state"], "failover-committed");
}

#[test]
fn a_qcow2_vm_is_imported_protected_and_failed_over() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    let qcow2 = c.create_guest_vm_as("q", "qcow2");
    let before = lifeboat_testkit::hash_file(&qcow2);
    c.cli_ok(&["vm", "start", "q"]);
    let primary = c.source_serial("primary", "q");
    wait_seq(&primary, 50, BOOT);
    protect_healthy(&c, "q");
    let job = c.json(&[
        "failover",
        "q",
        "--recovery-point",
        "latest",
        "--shutdown-source",
        "--shutdown-timeout",
        "1",
    ]);
    assert_eq!(job["status"], "succeeded", "{job}");
    let written = seqwriter::last_reported_seq(&serial(&primary)).expect("primary wrote");
    let m = wait_boot(&c.recovered_serial("secondary", "q"), 2, BOOT);
    assert!(
        m == written || m == written + 1,
        "resumed after {m}, wrote {written}"
    );
    // The qcow2 file was imported, not written: the agent served a raw copy.
    assert_eq!(lifeboat_testkit::hash_file(&qcow2), before);
}
