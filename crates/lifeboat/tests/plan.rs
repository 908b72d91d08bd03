//! Recovery plans with real processes and real QEMU guests (the seqwriter): two protected VMs
//! in a plan of two groups, a DR drill and its cleanup of the whole plan, then a failover that
//! stops at a post-action that times out (skipped), at a pre-action that exits 3 (retried
//! once fixed), and at a manual action (confirmed); both VMs end failed over, their guests
//! resuming from their data at the secondary; then the plan is committed. Custom recovery
//! points are refused.

mod common;

use std::time::Duration;

use common::cluster::{serial, wait_boot, wait_seq, Cluster};
use lifeboat_qemu::seqwriter;
use lifeboat_testkit::{tempdir, wait_until};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(120);

#[test]
fn a_plan_stops_at_failing_and_manual_steps_and_is_skipped_retried_and_confirmed() {
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    let vms = ["pa", "pb"];
    for vm in vms {
        c.create_guest_vm(vm);
        c.cli_ok(&["vm", "start", vm]);
    }
    for vm in vms {
        wait_seq(&c.source_serial("primary", vm), 50, BOOT);
        c.cli_ok(&["protect", vm, "--target-region", "secondary", "--no-wait"]);
    }
    wait_until(Duration::from_secs(120), "both VMs protected", || {
        vms.iter().all(|vm| c.item(vm)["state"] == "protected")
    });

    let flag = t.path().join("cache-warm");
    let env_file = t.path().join("env.log");
    let plan = json!({"groups": [
        {"vms": ["pa"],
         "pre": [{"script": {"name": "drill note", "timeout_secs": 5,
             "command": format!("echo \"$LIFEBOAT_PLAN $LIFEBOAT_OPERATION $LIFEBOAT_GROUP \
                 $LIFEBOAT_VMS\" >> {}", env_file.display()),
             "on": ["test-failover", "cleanup-test-failover"]}}],
         "post": [{"script": {"name": "flush caches", "timeout_secs": 2,
             "command": "sleep 60", "on": ["failover"]}}]},
        {"vms": ["pb"],
         "pre": [
             {"script": {"name": "warm cache", "timeout_secs": 30, "on": ["failover"],
                 "command": format!("test -f {} || {{ echo cache cold >&2; exit 3; }}",
                     flag.display())}},
             {"manual": {"name": "check DNS", "on": ["failover"],
                 "instructions": "point shop.example at the secondary region"}}]}]});
    let file = t.path().join("shop.json");
    std::fs::write(&file, plan.to_string()).expect("plan file");
    let out = c.cli_ok(&[
        "plan",
        "create",
        "shop",
        "--file",
        &file.display().to_string(),
    ]);
    assert!(out.contains("plan shop created (2 groups)"), "{out}");
    let shown = c.cli_ok(&["plan", "show", "shop"]);
    assert!(
        shown.contains("Group 2: pb") && shown.contains("manual \"check DNS\""),
        "{shown}"
    );

    // A DR drill of the whole plan, then its cleanup (only the drill's action runs).
    let out = c.cli_ok(&["plan", "test-failover", "shop"]);
    assert!(out.contains("(test-failover): succeeded"), "{out}");
    for vm in vms {
        assert_eq!(c.item(vm)["state"], "test-failed-over");
    }
    let out = c.cli_ok(&["plan", "cleanup", "shop", "--notes", "plan drill ok"]);
    assert!(out.contains("succeeded"), "{out}");
    for vm in vms {
        let i = c.item(vm);
        assert_eq!(i["state"], "protected", "{i}");
        assert_eq!(i["last_drill_notes"], "plan drill ok", "{i}");
    }
    let env = std::fs::read_to_string(&env_file).expect("the drill note ran");
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        ["shop test-failover 1 pa", "shop cleanup-test-failover 1 pa"]
    );

    // No custom point in a plan.
    for p in ["2026-01-01T00:00:00Z", "12-crash"] {
        let e = c.cli_err(&["plan", "failover", "shop", "--recovery-point", p]);
        assert!(
            e.contains("Custom recovery points are not allowed for recovery plans"),
            "{e}"
        );
    }

    // Failover: group 1 fails over, then its post-action times out.
    let e = c.cli_err(&["plan", "failover", "shop"]);
    assert!(
        e.contains("group 1 post-action \"flush caches\" timed out after 2 s and was killed"),
        "{e}"
    );
    let p = c.json(&["plan", "show", "shop"]);
    let run = &p["latest_run"];
    assert_eq!(run["status"], "failed", "{p}");
    assert_eq!(run["steps"][1]["status"], "failed", "{p}");
    assert_eq!(c.item("pa")["state"], "failed-over");
    assert_eq!(c.item("pb")["state"], "protected");

    // Skip it: on to group 2's pre-action, which exits 3; a retry without a fix fails again.
    let e = c.cli_err(&["plan", "skip", "shop"]);
    let exit3 = "group 2 pre-action \"warm cache\" exited with status 3: cache cold";
    assert!(e.contains(exit3), "{e}");
    let e = c.cli_err(&["plan", "retry", "shop"]);
    assert!(e.contains(exit3), "{e}");

    // Fixed and retried: it passes, and the manual action pauses the run.
    std::fs::write(&flag, "").expect("flag");
    let out = c.cli_ok(&["plan", "retry", "shop"]);
    assert!(
        out.contains("waiting") && out.contains("point shop.example at the secondary region"),
        "{out}"
    );
    assert_eq!(c.item("pb")["state"], "protected", "group 2 waits");
    let e = c.cli_err(&["plan", "commit", "shop"]);
    assert!(e.contains("waiting"), "{e}");

    // Confirmed: group 2 fails over.
    let out = c.cli_ok(&["plan", "confirm", "shop"]);
    assert!(out.contains("(failover): succeeded"), "{out}");
    let p = c.json(&["plan", "show", "shop"]);
    let statuses: Vec<&str> = p["latest_run"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        [
            "succeeded",
            "skipped",
            "succeeded",
            "succeeded",
            "succeeded"
        ],
        "{p}"
    );
    for vm in vms {
        let i = c.item(vm);
        assert_eq!(i["state"], "failed-over", "{i}");
        assert_eq!(i["active_region"], "secondary", "{i}");
        // The guest booted again at the secondary and found its writes there.
        let m = wait_boot(&c.recovered_serial("secondary", vm), 2, BOOT);
        let written =
            seqwriter::last_reported_seq(&serial(&c.source_serial("primary", vm))).unwrap_or(0);
        assert!(
            m >= 50 && m <= written + 1,
            "{vm} resumed after {m}, the primary wrote {written}"
        );
    }
    let shown = c.cli_ok(&["plan", "show", "shop"]);
    assert!(
        shown.contains("skipped    Group 1: post-action \"flush caches\"")
            && shown.contains("succeeded  Group 2: failover of pb"),
        "{shown}"
    );

    // Commit the plan.
    let out = c.cli_ok(&["plan", "commit", "shop"]);
    assert!(out.contains("(commit): succeeded"), "{out}");
    for vm in vms {
        assert_eq!(c.item(vm)["state"], "failover-committed");
    }
    let list = c.cli_ok(&["plan", "list"]);
    assert!(list.contains("commit succeeded"), "{list}");
}
