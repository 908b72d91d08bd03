//! Recovery plans through the vault's REST API, with an executor double standing in for the
//! agents and real `sh` scripts: validation, runs that stop at a failing script (non-zero exit,
//! timeout) or a failing VM, retry, skip, manual actions and confirm, custom points and
//! wrong states refused, and a run interrupted by a vault restart.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_types::Outcome;
use lifeboat_vault::{Executor, Vault};
use serde_json::{json, Value};

mod common;

use common::{create_vms, protect, serve, AllSucceed, Api, Hangs};

/// Succeeds every job after a few ms, except the jobs of the VMs in `fail`.
#[derive(Clone, Default)]
struct FailFor {
    fail: Arc<Mutex<BTreeSet<String>>>,
}

impl Executor for FailFor {
    fn run(&self, vault: Vault, job: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let fail = self.fail.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let vm = vault.job(job).ok().and_then(|j| j.vm).unwrap_or_default();
            let failed = fail.lock().unwrap().contains(&vm);
            let (outcome, why) = if failed {
                (Outcome::Failed, Some("the target agent said no"))
            } else {
                (Outcome::Succeeded, None)
            };
            vault.finish_job(job, outcome, why).unwrap();
        })
    }
}

async fn setup_vms(api: &Api, vms: &[&str]) {
    for (n, u) in [("primary", "/tmp/p"), ("secondary", "/tmp/s")] {
        api.ok("POST", "/api/regions", json!({"name": n, "store_url": u}))
            .await;
    }
    create_vms(api, vms).await;
}

/// Polls the plan's latest run until its status is not `running`.
async fn settled(api: &Api, plan: &str) -> Value {
    for _ in 0..1000 {
        let p = api
            .ok("GET", &format!("/api/plans/{plan}"), Value::Null)
            .await;
        let run = &p["latest_run"];
        if run["status"] != "running" {
            return run.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("plan {plan}'s run never settled");
}

async fn err(api: &Api, method: &str, path: &str, body: Value, status: u16) -> String {
    let b = body.to_string();
    let (s, v) = api.call(method, path, Some(&b)).await;
    assert_eq!(s, status, "{method} {path}: {v}");
    v["error"].as_str().unwrap_or_default().to_string()
}

/// `action` (confirm, retry, skip) on run `id` of `plan`; then the run once settled.
async fn act(api: &Api, plan: &str, id: i64, action: &str) -> Value {
    api.ok(
        "POST",
        &format!("/api/plans/{plan}/runs/{id}/{action}"),
        Value::Null,
    )
    .await;
    settled(api, plan).await
}

/// `action` on run `id` of `plan`, which must be refused with 409: the message.
async fn refused(api: &Api, plan: &str, id: i64, action: &str) -> String {
    let path = format!("/api/plans/{plan}/runs/{id}/{action}");
    err(api, "POST", &path, json!({}), 409).await
}

fn step_status(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn plans_are_validated_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("vault.db"), Arc::new(AllSucceed)).await;
    setup_vms(&api, &["a", "b"]).await;
    let e = err(
        &api,
        "POST",
        "/api/plans",
        json!({"name": "p", "groups": [{"vms": ["a"]}, {"vms": ["ghost"]}]}),
        400,
    )
    .await;
    assert!(
        e.contains("group 2") && e.contains("\"ghost\" does not exist"),
        "{e}"
    );
    let e = err(
        &api,
        "POST",
        "/api/plans",
        json!({"name": "p", "groups": [{"vms": ["a", "b"]}, {"vms": ["b"]}]}),
        400,
    )
    .await;
    assert!(e.contains("VM b is in group 1 and group 2"), "{e}");
    let groups: Vec<Value> = (0..8).map(|_| json!({"vms": ["a"]})).collect();
    let e = err(
        &api,
        "POST",
        "/api/plans",
        json!({"name": "p", "groups": groups}),
        400,
    )
    .await;
    assert!(e.contains("has 8 groups"), "{e}");
    let e = err(
        &api,
        "POST",
        "/api/plans",
        json!({"name": "p", "groups": [{"vms": ["a"], "pre": [{"script": {"name": "s",
            "command": "true", "timeout_secs": 0}}]}]}),
        400,
    )
    .await;
    assert!(e.contains("timeout_secs 0"), "{e}");
    let e = err(
        &api,
        "POST",
        "/api/plans",
        json!({"name": "p", "groupz": []}),
        400,
    )
    .await;
    assert!(e.starts_with("bad recovery plan body"), "{e}");

    let p = api
        .ok(
            "POST",
            "/api/plans",
            json!({"name": "p", "groups": [{"vms": ["a"]}, {"vms": ["b"]}]}),
        )
        .await;
    assert!(p["latest_run"].is_null(), "{p}");
    err(
        &api,
        "POST",
        "/api/plans",
        json!({"name": "p", "groups": [{"vms": ["a"]}]}),
        409,
    )
    .await;
    let list = api.ok("GET", "/api/plans", Value::Null).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let e = err(
        &api,
        "PUT",
        "/api/plans/p",
        json!({"name": "q", "groups": [{"vms": ["a"]}]}),
        400,
    )
    .await;
    assert!(e.contains("cannot be renamed"), "{e}");
    api.ok(
        "PUT",
        "/api/plans/p",
        json!({"name": "p", "groups": [{"vms": ["a", "b"]}]}),
    )
    .await;
    err(&api, "GET", "/api/plans/nope", Value::Null, 404).await;
    // Not protected yet: refused up front, naming the VM.
    let e = err(&api, "POST", "/api/plans/p/failover", json!({}), 409).await;
    assert!(e.contains("VM a is not protected"), "{e}");
    let e = err(
        &api,
        "POST",
        "/api/plans/p/change-recovery-point",
        json!({}),
        400,
    )
    .await;
    assert!(e.contains("unknown plan operation"), "{e}");
    api.ok("DELETE", "/api/plans/p", Value::Null).await;
    err(&api, "GET", "/api/plans/p", Value::Null, 404).await;
}

#[tokio::test]
async fn a_plan_run_stops_at_a_failing_step_and_is_retried_skipped_and_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let exec = FailFor::default();
    let api = serve(&dir.path().join("vault.db"), Arc::new(exec.clone())).await;
    setup_vms(&api, &["a", "b", "c"]).await;
    protect(&api, &["a", "b", "c"]).await;
    let flag = dir.path().join("warm");
    let env_file = dir.path().join("env");
    let plan = json!({"name": "shop", "groups": [
        {"vms": ["a"], "post": [{"script": {"name": "warm cache",
            "command": format!("echo \"$LIFEBOAT_PLAN $LIFEBOAT_OPERATION $LIFEBOAT_GROUP \
                $LIFEBOAT_VMS\" > {}; test -f {} || {{ echo cache cold >&2; exit 3; }}",
                env_file.display(), flag.display()),
            "timeout_secs": 10}}]},
        {"vms": ["b", "c"], "pre": [
            {"script": {"name": "slow", "command": format!("test -f {}.never || sleep 30",
                flag.display()), "timeout_secs": 1}},
            {"manual": {"name": "check DNS", "instructions": "point shop.example at the \
                secondary"}},
            {"script": {"name": "commit only", "command": "exit 9", "on": ["commit"]}}]}]});
    api.ok("POST", "/api/plans", plan).await;

    // Custom points are refused for plans; so are parameters that do not apply.
    for p in ["12-crash", "2026-01-01T00:00:00Z"] {
        let e = err(
            &api,
            "POST",
            "/api/plans/shop/failover",
            json!({"recovery_point": p}),
            400,
        )
        .await;
        assert!(
            e.starts_with("Custom recovery points are not allowed for recovery plans"),
            "{e}"
        );
    }
    let e = err(
        &api,
        "POST",
        "/api/plans/shop/commit",
        json!({"notes": "x"}),
        400,
    )
    .await;
    assert!(e.contains("notes do not apply"), "{e}");
    // Wrong state for the whole plan: refused up front naming the VM and its state.
    let e = err(&api, "POST", "/api/plans/shop/commit", json!({}), 409).await;
    assert!(e.contains("VM a") && e.contains("Protected"), "{e}");

    // Group 1 fails over, then its post-action exits 3.
    let run = api
        .ok(
            "POST",
            "/api/plans/shop/failover",
            json!({"recovery_point": "latest"}),
        )
        .await;
    let id = run["id"].as_i64().unwrap();
    assert_eq!(run["status"], "running");
    let run = settled(&api, "shop").await;
    assert_eq!(run["status"], "failed", "{run}");
    let e = run["error"].as_str().unwrap();
    assert!(
        e.starts_with("group 1 post-action \"warm cache\" exited with status 3: cache cold"),
        "{e}"
    );
    assert!(e.contains("lifeboat plan retry shop"), "{e}");
    assert_eq!(run["current_step"], 1);
    assert!(run["steps"][1]["detail"]
        .as_str()
        .unwrap()
        .contains("stderr: cache cold"));
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env.trim(), "shop failover 1 a");
    assert!(
        run["steps"][0]["detail"].as_str().unwrap().contains("job"),
        "{run}"
    );
    api.wait_item_state("a", "failed-over").await;
    let job = &run["steps"][0]["jobs"][0];
    let j = api
        .ok("GET", &format!("/api/jobs/{job}"), Value::Null)
        .await;
    assert_eq!(j["params"]["recovery_point"], "latest", "{j}");

    // Retry without a fix: the same failure; with the fix, on to the next: a timeout.
    let run = act(&api, "shop", id, "retry").await;
    assert_eq!(run["current_step"], 1, "{run}");
    std::fs::write(&flag, "").unwrap();
    let started = std::time::Instant::now();
    let run = act(&api, "shop", id, "retry").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .starts_with("group 2 pre-action \"slow\" timed out after 1 s and was killed"),
        "{run}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Only the latest run is driven: retrying a step twice at once is refused.
    let e = refused(&api, "shop", id, "confirm").await;
    assert!(e.contains("not waiting on a manual action"), "{e}");

    // Skip it: the manual action waits with its instructions.
    let run = act(&api, "shop", id, "skip").await;
    assert_eq!(run["status"], "waiting", "{run}");
    assert!(run["error"]
        .as_str()
        .unwrap()
        .contains("point shop.example at the secondary"));
    assert_eq!(
        step_status(&run)[..4],
        [
            ("Group 1: failover of a".into(), "succeeded".into()),
            (
                "Group 1: post-action \"warm cache\"".into(),
                "succeeded".into()
            ),
            ("Group 2: pre-action \"slow\"".into(), "skipped".into()),
            (
                "Group 2: pre-action \"check DNS\" (manual)".into(),
                "waiting".into()
            ),
        ]
    );
    assert_eq!(
        run["steps"].as_array().unwrap().len(),
        5,
        "commit-only action left out"
    );
    // One active run per plan.
    let e = err(&api, "POST", "/api/plans/shop/failover", json!({}), 409).await;
    assert!(e.contains("waiting") && e.contains("confirm"), "{e}");
    let e = err(&api, "DELETE", "/api/plans/shop", Value::Null, 409).await;
    assert!(e.contains("cannot delete plan shop"), "{e}");
    let e = refused(&api, "shop", id, "retry").await;
    assert!(e.contains("only a failed run can be retried"), "{e}");

    // Confirm: group 2 fails over; VM c fails; retry skips b (already failed over).
    exec.fail.lock().unwrap().insert("c".into());
    let run = act(&api, "shop", id, "confirm").await;
    assert_eq!(run["status"], "failed", "{run}");
    let e = run["error"].as_str().unwrap();
    assert!(
        e.starts_with("group 2: failover of VM c failed (job")
            && e.contains("the target agent said no"),
        "{e}"
    );
    api.wait_item_state("b", "failed-over").await;
    api.wait_item_state("c", "protected").await;
    exec.fail.lock().unwrap().clear();
    let run = act(&api, "shop", id, "retry").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let d = run["steps"][4]["detail"].as_str().unwrap();
    assert!(
        d.contains("b: already Failed over (not committed), skipped"),
        "{d}"
    );
    assert!(d.contains("c: job"), "{d}");
    for vm in ["a", "b", "c"] {
        api.wait_item_state(vm, "failed-over").await;
    }

    // Commit the plan: the commit-only action runs and fails (exit 9); skip it.
    let run = api.ok("POST", "/api/plans/shop/commit", json!({})).await;
    let id2 = run["id"].as_i64().unwrap();
    assert!(id2 > id);
    let e = refused(&api, "shop", id, "retry").await;
    assert!(e.contains("a newer run exists"), "{e}");
    let run = settled(&api, "shop").await;
    assert!(run["error"]
        .as_str()
        .unwrap()
        .starts_with("group 2 pre-action \"commit only\" exited with status 9"));
    let run = act(&api, "shop", id2, "skip").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    for vm in ["a", "b", "c"] {
        api.wait_item_state(vm, "failover-committed").await;
    }
    // Re-protect the plan (the commit-only action stays out of it).
    api.ok("POST", "/api/plans/shop/reprotect", json!({})).await;
    let run = settled(&api, "shop").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"].as_array().unwrap().len(), 2, "{run}");
    for vm in ["a", "b", "c"] {
        let i = api.wait_item_state(vm, "protected").await;
        assert_eq!(i["source_region"], "secondary", "{i}");
    }
    let runs = api.ok("GET", "/api/plans/shop/runs", Value::Null).await;
    assert_eq!(runs.as_array().unwrap().len(), 3);
    let one = api
        .ok("GET", &format!("/api/plans/shop/runs/{id}"), Value::Null)
        .await;
    assert_eq!(one["operation"], "failover");
    let events = api.ok("GET", "/api/events?limit=10000", Value::Null).await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"] == format!("failover of recovery plan shop succeeded (run {id})")));
}

#[tokio::test]
async fn a_run_interrupted_by_a_vault_restart_fails_at_its_step_and_retry_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    {
        let api = serve(&db, Arc::new(AllSucceed)).await;
        setup_vms(&api, &["a", "b"]).await;
        protect(&api, &["a", "b"]).await;
        api.ok(
            "POST",
            "/api/plans",
            json!({"name": "p", "groups": [{"vms": ["a"]}, {"vms": ["b"], "pre": [
                {"manual": {"name": "m", "instructions": "wait"}}]}]}),
        )
        .await;
    }
    // The item job hangs: the vault "dies" (its runtime and every task of it) with the run
    // at step 1.
    let db2 = db.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let api = serve(&db2, Arc::new(Hangs)).await;
            api.ok("POST", "/api/plans/p/failover", json!({})).await;
            api.wait_item_state("a", "failover-in-progress").await;
        });
        rt.shutdown_background();
    })
    .join()
    .unwrap();
    let api = serve(&db, Arc::new(AllSucceed)).await;
    let run = settled(&api, "p").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["steps"][0]["status"], "failed");
    assert_eq!(
        run["steps"][0]["detail"],
        "the vault restarted while this step ran; retry"
    );
    api.wait_item_state("a", "protected").await;
    let id = run["id"].as_i64().unwrap();
    let run = act(&api, "p", id, "retry").await;
    assert_eq!(run["status"], "waiting", "{run}");
    drop(api);
    // A waiting run stays waiting across a restart and can be confirmed after it.
    let api = serve(&db, Arc::new(AllSucceed)).await;
    let run = settled(&api, "p").await;
    assert_eq!(run["status"], "waiting", "{run}");
    let run = act(&api, "p", id, "confirm").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    api.wait_item_state("b", "failed-over").await;
}
