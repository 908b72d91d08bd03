//! The tutorial, click by click, in a real browser: `lifeboat up` with a real QEMU guest (the
//! seqwriter), protected with the CLI; then in headless Chromium (driven over WebDriver by
//! chromedriver): nothing readable before logging in with the vault's token; the VM Protected
//! and Healthy in Replicated items; its overview offers Failover and not Commit, and a forced
//! Commit shows the vault's message; Failover with Latest processed and "Shut down machine",
//! the notifications (started ... succeeded) arriving live; the guest resumes at the secondary;
//! Change recovery point to a Custom point; Commit with its warning; Re-protect showing the direction and the resources; Protected
//! again, the other way; a DR drill (test failover, cleanup with notes). A second test drills a
//! recovery plan from its page: test failover, the run waiting at its manual action, Confirm,
//! succeeded, then Cleanup. A third drills a replication group from its page: Cut now, the cut
//! a complete group point, test failover of both VMs to the latest multi-VM processed point,
//! Cleanup. Screenshots of each step go to `<target>/test-artifacts/portal/` (and
//! `portal-plan/`, `portal-group/`).

mod common;

use std::time::{Duration, Instant};

use common::cluster::{serial, wait_boot, wait_seq, Cluster};
use common::webdriver::Browser;
use lifeboat_qemu::seqwriter;
use lifeboat_testkit::{require_tool, tempdir, wait_until};

const BOOT: Duration = Duration::from_secs(120);
const JOB: Duration = Duration::from_secs(120);

fn artifacts(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("test-artifacts")
        .join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("artifacts dir");
    p.canonicalize().unwrap_or(p)
}

/// Confirms the open dialog of `op` on VM web; waits for its job's success on the job page and
/// in the notifications.
fn confirm_and_wait(b: &mut Browser, op: &str) {
    b.click("#confirm");
    b.wait_text("#job-status", "succeeded", JOB);
    b.wait_text(
        "#notes",
        &format!("{op} of VM web succeeded"),
        Duration::from_secs(10),
    );
    b.screenshot(&format!("{op}-job-succeeded"));
}

#[test]
fn tutorial_in_the_browser() {
    require_tool("chromium");
    let started = Instant::now();
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("web");
    c.cli_ok(&["vm", "start", "web"]);
    let primary = c.source_serial("primary", "web");
    wait_seq(&primary, 50, BOOT);
    let job = c.json(&["protect", "web", "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_until(Duration::from_secs(60), "the item Healthy", || {
        c.item("web")["health"]["health"] == "healthy"
    });
    let token = std::fs::read_to_string(c.token_file()).expect("token");
    let base = c.url();

    // Without a session: the pages redirect to the login page, the stream refuses.
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    for path in [
        "/portal/",
        "/portal/items/web",
        "/portal/jobs",
        "/portal/items/web/failover",
    ] {
        let r = http.get(format!("{base}{path}")).send().expect("GET");
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()["location"], "/portal/login", "{path}");
        assert!(!r.text().unwrap_or_default().contains("web"), "{path}");
    }
    let r = http
        .post(format!("{base}/portal/items/web/commit"))
        .body("csrf=x")
        .send()
        .expect("POST");
    assert_eq!(r.status(), 303, "a POST without a session");
    let r = http
        .get(format!("{base}/portal/events/stream"))
        .send()
        .expect("GET stream");
    assert_eq!(r.status(), 401);

    let shots = artifacts("portal");
    println!("portal screenshots: {}", shots.display());
    let mut b = Browser::start(&shots);
    b.goto(&format!("{base}/portal/items/web"));
    assert!(b.url().ends_with("/portal/login"), "{}", b.url());
    assert!(!b.text("body").contains("web"), "{}", b.text("body"));
    b.type_into("#token", "not-the-token");
    b.click("#sign-in");
    b.wait_text("#error", "wrong token", Duration::from_secs(10));
    b.screenshot("login-refused");
    b.type_into("#token", token.trim());
    b.click("#sign-in");

    // Replicated items: Protected and Healthy.
    let row = "#items tr[data-vm='web']";
    b.wait_text(
        &format!("{row} td.status"),
        "Protected",
        Duration::from_secs(10),
    );
    b.wait_text(
        &format!("{row} td.health"),
        "Healthy",
        Duration::from_secs(10),
    );
    assert_eq!(b.text(&format!("{row} td.region")), "primary");
    assert!(b.text(&format!("{row} td.point")).contains("UTC"));
    b.screenshot("items");
    b.goto(&format!("{base}/portal/?health=critical"));
    assert!(b.exists("#empty") && !b.exists(row), "{}", b.text("body"));
    b.goto(&format!("{base}/portal/?state=protected&health=healthy"));
    assert!(b.exists(row), "{}", b.text("body"));
    b.goto(&format!("{base}/portal/?health=purple"));
    b.wait_text("#error", "unknown health", Duration::from_secs(5));

    // The VM's overview: only what Protected allows.
    b.goto(&format!("{base}/portal/"));
    b.click(&format!("{row} td.name a"));
    b.wait_text("#item-state", "Protected", Duration::from_secs(10));
    assert_eq!(b.text("#item-health"), "Healthy");
    assert!(
        b.text("#latest-crash").contains("UTC"),
        "{}",
        b.text("#latest-crash")
    );
    let ready = b.text("#readiness");
    assert!(
        ready.contains("Ready for failover to secondary")
            && ready.contains("Agent in region secondary answering")
            && !ready.contains("✘"),
        "{ready}"
    );
    assert!(b.exists("#op-failover") && b.exists("#op-test-failover"));
    assert!(!b.exists("#op-commit") && !b.exists("#op-reprotect"));
    b.screenshot("overview-protected");

    // A forced Commit (not offered) shows the vault's message, with its 409.
    let forced = b.exec(
        "var x = new XMLHttpRequest(); x.open('POST', '/portal/items/web/commit', false);\
         x.setRequestHeader('Content-Type', 'application/x-www-form-urlencoded');\
         x.send('csrf=' + encodeURIComponent(document.querySelector('input[name=csrf]').value));\
         return [x.status, x.responseText];",
    );
    assert_eq!(forced[0], 409, "{forced}");
    b.exec(
        "var f = document.createElement('form'); f.method = 'post';\
         f.action = '/portal/items/web/commit'; var i = document.createElement('input');\
         i.type = 'hidden'; i.name = 'csrf'; i.value = document.querySelector('input[name=csrf]').value;\
         f.appendChild(i); document.body.appendChild(f); f.submit(); return true;",
    );
    let msg = b.wait_text("#error", "Protected", Duration::from_secs(10));
    assert!(msg.contains("VM web") && msg.contains("failover"), "{msg}");
    b.screenshot("forced-commit-refused");

    // Failover: Latest processed, shut down the machine first.
    let before = seqwriter::last_reported_seq(&serial(&primary)).unwrap_or(0);
    wait_seq(&primary, before + 200, BOOT);
    b.goto(&format!("{base}/portal/items/web"));
    b.click("#op-failover");
    b.click("#point-latest-processed");
    b.click("#shutdown");
    b.type_into("#shutdown-timeout", "2");
    assert!(b.exists("#point-latest") && b.exists("#point-latest-app-consistent"));
    assert!(b.exists("#custom-point option"), "Custom lists the points");
    b.screenshot("failover-dialog");
    b.click("#confirm");
    b.wait_text("#job-operation", "Failover", Duration::from_secs(10));
    b.exec("window.lifeboatMarker = 42; return true;");
    b.wait_text(
        "#notes",
        "failover of VM web started",
        Duration::from_secs(10),
    );
    b.wait_text("#notes", "failover of VM web succeeded", JOB);
    assert_eq!(
        b.exec("return window.lifeboatMarker;"),
        42,
        "the page was not reloaded: the notification came live"
    );
    let live = b.text("#notes li.live");
    assert!(!live.is_empty(), "live notifications: {}", b.text("#notes"));
    b.wait_text("#job-status", "succeeded", Duration::from_secs(10));
    assert!(
        b.text("#steps").contains("Shut down source VM"),
        "{}",
        b.text("#steps")
    );
    b.screenshot("failover-job-succeeded");

    // The guest resumed at the secondary.
    let m = wait_boot(&c.recovered_serial("secondary", "web"), 2, BOOT);
    assert!(
        m >= before,
        "resumed after write {m}, the primary had written {before}"
    );

    b.click("#job-vm");
    b.wait_text("#item-state", "Failed over", Duration::from_secs(10));
    assert_eq!(b.text("#active-region"), "secondary");
    assert!(b.exists("#op-commit") && !b.exists("#op-failover"));
    let ready = b.text("#readiness");
    assert!(
        ready.contains("Not ready") && ready.contains("failover is not possible now"),
        "{ready}"
    );
    b.screenshot("overview-failed-over");

    // Change recovery point: Custom, the second newest point of the list.
    b.click("#op-change-recovery-point");
    b.click("#point-custom");
    let chosen = b
        .exec("var o = document.querySelectorAll('#custom-point option'); return o.length > 1 ? o[1].value : null;");
    let chosen = chosen
        .as_str()
        .expect("at least two points listed")
        .to_string();
    b.click("#custom-point option:nth-child(2)");
    b.screenshot("change-recovery-point-dialog");
    confirm_and_wait(&mut b, "change-recovery-point");
    assert!(
        b.text("#job-panel").contains(&chosen),
        "{}",
        b.text("#job-panel")
    );
    b.click("#job-vm");
    b.wait_text("#item-state", "Failed over", Duration::from_secs(10));

    // Commit, with the warning.
    b.click("#op-commit");
    b.wait_text(
        "#warning",
        "deletes every other recovery point",
        Duration::from_secs(10),
    );
    b.screenshot("commit-dialog");
    confirm_and_wait(&mut b, "commit");
    b.click("#job-vm");
    b.wait_text("#item-state", "Failover committed", Duration::from_secs(10));

    // Re-protect: direction and resources, then confirm.
    b.click("#op-reprotect");
    b.wait_text("#reprotect-direction", "secondary", Duration::from_secs(30));
    let dir = b.text("#reprotect-direction");
    assert!(
        dir.contains("secondary") && dir.contains("primary"),
        "{dir}"
    );
    let plan = b.text("#reprotect-plan");
    assert!(plan.contains("original disks"), "{plan}");
    b.screenshot("reprotect-dialog");
    confirm_and_wait(&mut b, "reprotect");
    b.click("#job-vm");
    b.wait_text("#item-state", "Protected", Duration::from_secs(10));
    assert_eq!(b.text("#direction"), "secondary → primary");
    assert!(b.exists("#op-failover") && !b.exists("#op-commit"));
    b.screenshot("overview-reprotected");

    // A DR drill from the primary region's points, cleaned up with notes.
    b.click("#op-test-failover");
    b.click("#point-latest-processed");
    b.screenshot("test-failover-dialog");
    confirm_and_wait(&mut b, "test-failover");
    b.click("#job-vm");
    b.wait_text("#item-state", "Test failover done", Duration::from_secs(10));
    assert!(
        b.text("#drill").contains("from point"),
        "{}",
        b.text("#drill")
    );
    b.click("#op-cleanup-test-failover");
    b.type_into("#drill-notes", "app answered on its test IP");
    confirm_and_wait(&mut b, "cleanup-test-failover");
    b.click("#job-vm");
    b.wait_text("#item-state", "Protected", Duration::from_secs(10));
    b.wait_text(
        "#last-drill",
        "app answered on its test IP",
        Duration::from_secs(5),
    );
    b.screenshot("overview-after-drill");

    // Jobs page, then sign out: nothing readable again.
    b.goto(&format!("{base}/portal/jobs"));
    let jobs = b.text("#jobs");
    for op in [
        "Failover",
        "Commit",
        "Re-protect",
        "Test failover",
        "Cleanup test failover",
    ] {
        assert!(jobs.contains(op), "{jobs}");
    }
    b.click("#logout");
    wait_until(Duration::from_secs(10), "the login page", || {
        b.url().ends_with("/portal/login")
    });
    b.goto(&format!("{base}/portal/"));
    assert!(b.url().ends_with("/portal/login"), "{}", b.url());
    println!(
        "portal test took {:.0} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

/// Signs in at `base` with the vault's token.
fn sign_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/portal/login"));
    b.type_into("#token", token.trim());
    b.click("#sign-in");
    wait_until(Duration::from_secs(10), "the items page", || {
        b.url().ends_with("/portal/")
    });
}

#[test]
fn plan_drill_in_the_browser() {
    require_tool("chromium");
    let started = Instant::now();
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    c.create_guest_vm("app");
    c.cli_ok(&["vm", "start", "app"]);
    wait_seq(&c.source_serial("primary", "app"), 20, BOOT);
    let job = c.json(&["protect", "app", "--target-region", "secondary"]);
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_until(Duration::from_secs(60), "a restorable point", || {
        c.item("app")["health"]["latest_crash_consistent"].is_object()
    });
    let plan = serde_json::json!({"groups": [{"vms": ["app"],
        "post": [{"manual": {"name": "check the app", "on": ["test-failover"],
            "instructions": "open the app on its test address"}}]}]});
    let file = t.path().join("drill.json");
    std::fs::write(&file, plan.to_string()).expect("plan file");
    c.cli_ok(&[
        "plan",
        "create",
        "drill",
        "--file",
        &file.display().to_string(),
    ]);
    let token = std::fs::read_to_string(c.token_file()).expect("token");
    let base = c.url();

    let shots = artifacts("portal-plan");
    let mut b = Browser::start(&shots);
    sign_in(&b, &base, &token);

    // Plans: the plan, then its page with its group, its VM and its manual action.
    b.click("nav a[href='/portal/plans']");
    let row = "#plans tr[data-plan='drill']";
    b.wait_text(&format!("{row} td.vms"), "app", Duration::from_secs(10));
    assert_eq!(b.text(&format!("{row} td.run-status")), "-");
    b.screenshot("plans");
    b.click(&format!("{row} td.name a"));
    b.wait_text("#plan-groups", "check the app", Duration::from_secs(10));
    assert!(b.text("#plan-groups").contains("app: Protected"));
    assert!(b.exists("#pop-failover") && b.exists("#pop-test-failover"));
    assert!(!b.exists("#pop-commit") && !b.exists("#pop-cleanup-test-failover"));
    b.screenshot("plan");

    // Test failover of the whole plan: it waits at the manual action.
    b.click("#pop-test-failover");
    b.wait_text("#plan-steps", "check the app", Duration::from_secs(10));
    assert!(b.exists("#point-latest-processed") && !b.exists("#point-custom"));
    b.click("#point-latest-processed");
    b.screenshot("plan-test-failover-dialog");
    b.click("#confirm");
    b.wait_text("#run-status", "waiting", JOB);
    assert!(
        b.text("#run-waiting")
            .contains("open the app on its test address"),
        "{}",
        b.text("#run-panel")
    );
    assert!(!b.exists("#run-retry"));
    b.screenshot("plan-run-waiting");
    assert_eq!(c.item("app")["state"], "test-failed-over");

    // Confirm: the run succeeds.
    b.click("#run-confirm");
    b.wait_text("#run-status", "succeeded", JOB);
    let steps = b.text("#run-steps");
    assert!(steps.contains("confirmed"), "{steps}");
    assert!(!b.exists("#run-confirm"));
    b.screenshot("plan-run-succeeded");

    // Cleanup from the plan's page.
    b.click("#run-plan");
    b.click("#pop-cleanup-test-failover");
    b.type_into("#drill-notes", "plan drill from the portal");
    b.screenshot("plan-cleanup-dialog");
    b.click("#confirm");
    b.wait_text(
        "#run-operation",
        "cleanup-test-failover",
        Duration::from_secs(10),
    );
    b.wait_text("#run-status", "succeeded", JOB);
    b.screenshot("plan-cleanup-succeeded");
    let i = c.item("app");
    assert_eq!(i["state"], "protected", "{i}");
    assert_eq!(i["last_drill_notes"], "plan drill from the portal", "{i}");
    b.click("#run-plan");
    b.wait_text("#runs", "cleanup-test-failover", Duration::from_secs(10));
    println!(
        "plan portal test took {:.0} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

/// A replication group, from its pages: the group and its members listed, a member's readiness
/// pointing at the group, a cut taken with "Cut now" becoming a complete group point, a test
/// failover of the whole group to "Latest multi-VM processed" (both members drilled from their
/// points of that cut), and its cleanup with notes.
#[test]
fn group_drill_in_the_browser() {
    require_tool("chromium");
    let started = Instant::now();
    let t = tempdir();
    let c = Cluster::up(&t.path().join("lb"));
    let vms = ["ga", "gb"];
    for vm in vms {
        c.create_guest_vm(vm);
        c.cli_ok(&["vm", "start", vm]);
    }
    for vm in vms {
        wait_seq(&c.source_serial("primary", vm), 20, BOOT);
        let job = c.json(&["protect", vm, "--target-region", "secondary"]);
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    c.cli_ok(&["group", "create", "shop", "ga", "gb"]);
    let token = std::fs::read_to_string(c.token_file()).expect("token");
    let base = c.url();

    let shots = artifacts("portal-group");
    let mut b = Browser::start(&shots);
    sign_in(&b, &base, &token);

    // Groups: the group with its members, then a member's readiness names the group.
    b.click("nav a[href='/portal/groups']");
    let row = "#groups tr[data-group='shop']";
    b.wait_text(&format!("{row} td.members"), "gb", Duration::from_secs(10));
    assert!(b.text(&format!("{row} td.members")).contains("ga"));
    b.screenshot("groups");
    b.goto(&format!("{base}/portal/items/ga"));
    b.wait_text("body", "fail over the group shop", Duration::from_secs(10));
    b.screenshot("member-readiness");

    // Cut now: the cut becomes a group point once both targets processed it.
    let page = format!("{base}/portal/groups/shop");
    b.goto(&page);
    b.wait_text("#members", "gb", Duration::from_secs(10));
    assert!(!b.exists("#gop-commit") && !b.exists("#gop-cleanup-test-failover"));
    let before = newest_cut(&b.text("#group-points"));
    b.click("#cut-crash-consistent");
    wait_until(
        Duration::from_secs(60),
        "the new cut a complete group point",
        || {
            b.goto(&page);
            b.text("#group-points")
                .lines()
                .any(|row| cut_of(row).is_some_and(|id| id > before) && row.contains(" yes "))
        },
    );
    b.screenshot("group-point");

    // Test failover of the whole group to its latest multi-VM processed point.
    b.click("#gop-test-failover");
    b.click("#point-latest-multi-vm-processed");
    b.screenshot("group-test-failover-dialog");
    b.click("#confirm");
    wait_until(JOB, "both members drilled", || {
        vms.iter()
            .all(|vm| c.item(vm)["state"] == "test-failed-over")
    });
    b.goto(&page);
    b.wait_text("#members", "Test failover", Duration::from_secs(30));
    assert!(b.exists("#gop-cleanup-test-failover") && !b.exists("#gop-test-failover"));
    b.screenshot("group-drilled");

    // Cleanup, with notes, from the group's page.
    b.click("#gop-cleanup-test-failover");
    b.type_into("#drill-notes", "group drill from the portal");
    b.click("#confirm");
    wait_until(JOB, "both members protected again", || {
        vms.iter().all(|vm| {
            let i = c.item(vm);
            i["state"] == "protected" && i["last_drill_notes"] == "group drill from the portal"
        })
    });
    b.goto(&page);
    b.wait_text("#members", "Protected", Duration::from_secs(30));
    b.screenshot("group-cleaned-up");
    println!(
        "group portal test took {:.0} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}

/// The cut id a row of the group points table starts with (`cut-N ...`).
fn cut_of(row: &str) -> Option<u64> {
    row.trim()
        .strip_prefix("cut-")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The newest cut id in the group points table's text (0: none).
fn newest_cut(table: &str) -> u64 {
    table.lines().filter_map(cut_of).max().unwrap_or(0)
}
