//! The vault's REST API over real HTTP on loopback, with a real SQLite file: authentication,
//! the OpenAPI document, resources, the state machine's refusals (409 with the state and what
//! is allowed), malformed bodies (400 with the reason), and jobs left running by a vault that
//! stopped (ended as failed on restart, the item back where it was).

use std::sync::Arc;
use std::time::Duration;

use lifeboat_vault::NoAgents;
use serde_json::{json, Value};

mod common;

use common::{serve, setup, AllSucceed, Hangs};

#[tokio::test]
async fn the_api_needs_the_token_and_documents_itself() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("vault.db"), Arc::new(NoAgents)).await;
    let r = api
        .http
        .get(format!("{}/api/items", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("bearer token"), "{v}");
    let r = api
        .http
        .get(format!("{}/api/items", api.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let doc: Value = api
        .http
        .get(format!("{}/api/openapi.json", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/items",
        "/api/items/{vm}/{operation}",
        "/api/jobs/{id}",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Item"].is_object());
    let (s, v) = api.call("GET", "/api/nothing", None).await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test]
async fn bad_bodies_and_wrong_states_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("vault.db"), Arc::new(NoAgents)).await;
    setup(&api).await;
    // Malformed bodies: 400 with serde's reason.
    let (s, v) = api.call("POST", "/api/vms", Some("{\"name\": 5")).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("bad VM body"),
        "{v}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/regions",
            Some(r#"{"name":"x","store_url":"/x","extra":1}"#),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `extra`"),
        "{v}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/vms",
            Some(r#"{"name":"bad name!","region":"primary","definition":{}}"#),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("invalid VM name"),
        "{v}"
    );
    let (s, v) = api
        .call("PUT", "/api/policies/fast", Some(r#"{"retention":"90d"}"#))
        .await;
    assert_eq!(s, 400, "{v}");
    // Unknown objects: 404.
    let (s, v) = api.call("GET", "/api/items/none", None).await;
    assert_eq!(s, 404, "{v}");
    let (s, _) = api
        .call(
            "POST",
            "/api/items",
            Some(r#"{"vm":"web-1","target_region":"mars"}"#),
        )
        .await;
    assert_eq!(s, 404);
    // Duplicates: 409.
    let (s, v) = api
        .call(
            "POST",
            "/api/vms",
            Some(r#"{"name":"web-1","region":"primary","definition":{}}"#),
        )
        .await;
    assert_eq!(s, 409, "{v}");

    // Protect: with no agent the job fails, says why, and the item is back to Not protected.
    let job = api
        .ok(
            "POST",
            "/api/items",
            json!({"vm": "web-1", "target_region": "secondary"}),
        )
        .await;
    assert_eq!(job["operation"], "enable-protection");
    let item = api.wait_item_state("web-1", "not-protected").await;
    assert_eq!(item["allowed_operations"], json!(["enable-protection"]));
    let j = api
        .ok("GET", &format!("/api/jobs/{}", job["id"]), Value::Null)
        .await;
    assert_eq!(j["status"], "failed");
    assert!(j["error"].as_str().unwrap().contains("no agent"), "{j}");
    // Wrong state: 409 naming the state and what is allowed.
    let (s, v) = api.call("POST", "/api/items/web-1/commit", None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(
        v["error"],
        "VM web-1: commit is not allowed: the item is Not protected; allowed in this state: \
         enable-protection"
    );
    let (s, v) = api.call("POST", "/api/items/web-1/fly", None).await;
    assert_eq!(s, 400, "{v}");
    // The event log tells the story.
    let ev = api.ok("GET", "/api/events", Value::Null).await;
    let msgs: Vec<&str> = ev
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("enable-protection of VM web-1 failed")),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn the_tutorial_states_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("vault.db"), Arc::new(AllSucceed)).await;
    setup(&api).await;
    api.ok(
        "POST",
        "/api/items",
        json!({"vm": "web-1", "target_region": "secondary"}),
    )
    .await;
    let item = api.wait_item_state("web-1", "protected").await;
    assert_eq!(
        item["allowed_operations"],
        json!(["failover", "test-failover", "disable-protection"])
    );
    // A parameter that does not fit the operation is refused before anything starts.
    let (s, v) = api
        .call(
            "POST",
            "/api/items/web-1/commit",
            Some(r#"{"shutdown_source":true}"#),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let job = api
        .ok(
            "POST",
            "/api/items/web-1/failover",
            json!({"recovery_point": "latest-processed", "shutdown_source": true}),
        )
        .await;
    let names: Vec<&str> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Prerequisites check",
            "Shut down source VM",
            "Process data",
            "Create VM",
            "Start VM"
        ]
    );
    api.wait_item_state("web-1", "failed-over").await;
    let (s, v) = api.call("POST", "/api/items/web-1/failover", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Failed over (not committed)"),
        "{v}"
    );
    api.ok(
        "POST",
        "/api/items/web-1/change-recovery-point",
        json!({"recovery_point": "latest"}),
    )
    .await;
    api.wait_item_state("web-1", "failed-over").await;
    api.ok("POST", "/api/items/web-1/commit", Value::Null).await;
    api.wait_item_state("web-1", "failover-committed").await;
    let (s, v) = api
        .call("POST", "/api/items/web-1/change-recovery-point", Some("{}"))
        .await;
    assert_eq!(s, 409, "{v}");
    let jobs = api.ok("GET", "/api/jobs", Value::Null).await;
    assert_eq!(jobs.as_array().unwrap().len(), 4);
    assert!(jobs
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["status"] == "succeeded" && j["progress"] == 100));
}

#[tokio::test]
async fn a_job_left_running_by_a_stopped_vault_ends_as_failed_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("vault.db");
    {
        let api = serve(&db, Arc::new(AllSucceed)).await;
        setup(&api).await;
        api.ok(
            "POST",
            "/api/items",
            json!({"vm": "web-1", "target_region": "secondary"}),
        )
        .await;
        api.wait_item_state("web-1", "protected").await;
    }
    {
        // A failover in flight when the vault goes away.
        let api = serve(&db, Arc::new(Hangs)).await;
        api.ok("POST", "/api/items/web-1/failover", json!({})).await;
        api.wait_item_state("web-1", "failover-in-progress").await;
        let (s, v) = api.call("POST", "/api/items/web-1/failover", None).await;
        assert_eq!(s, 409, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("until it finishes"),
            "{v}"
        );
        api._server.abort();
    }
    // Restart: the item is back to Protected and the job says to retry.
    let api = serve(&db, Arc::new(NoAgents)).await;
    let item = api.wait_item_state("web-1", "protected").await;
    assert!(item["job"].is_null());
    let jobs = api.ok("GET", "/api/jobs", Value::Null).await;
    let j = &jobs[0];
    assert_eq!(
        (j["operation"].as_str(), j["status"].as_str()),
        (Some("failover"), Some("failed"))
    );
    assert!(
        j["error"].as_str().unwrap().contains("retry the operation"),
        "{j}"
    );
}

#[tokio::test]
async fn points_and_health_come_from_the_target_regions_store() {
    use lifeboat_store::{PointMeta, Store};
    use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("vault.db"), Arc::new(AllSucceed)).await;
    let secondary = dir.path().join("secondary-store");
    for (n, u) in [
        ("primary", dir.path().join("primary-store")),
        ("secondary", secondary.clone()),
    ] {
        api.ok(
            "POST",
            "/api/regions",
            json!({"name": n, "store_url": u.to_str().unwrap()}),
        )
        .await;
    }
    api.ok(
        "POST",
        "/api/vms",
        json!({"name": "db-1", "region": "primary", "definition": {"vcpus": 1}}),
    )
    .await;
    // Not an item yet.
    let (st, v) = api.call("GET", "/api/items/db-1/health", None).await;
    assert_eq!(st, 404, "{v}");
    api.ok(
        "POST",
        "/api/items",
        json!({"vm": "db-1", "target_region": "secondary"}),
    )
    .await;
    api.wait_item_state("db-1", "protected").await;
    // Protected but the store has no point: Critical, saying why.
    let h = api.ok("GET", "/api/items/db-1/health", Value::Null).await;
    assert_eq!(h["health"], "critical", "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .contains("initial replication"),
        "{h}"
    );

    // A crash-consistent point two hours old, then a fresh one.
    let store = Store::open(secondary.to_str().unwrap()).unwrap();
    let vm = VmId::new("db-1").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let mut w = store.point_writer(&vm, None).await.unwrap();
    w.add_disk(DiskId(0), 1 << 20).unwrap();
    let old = w
        .commit(PointMeta::marker(
            Seq(5),
            Epoch(1),
            CheckpointKind::CrashConsistent,
            two_hours_ago,
        ))
        .await
        .unwrap();
    let h = api.ok("GET", "/api/items/db-1/health", Value::Null).await;
    assert_eq!(h["health"], "critical", "{h}");
    assert!(
        h["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("no crash-consistent recovery point for 120 min"),
        "{h}"
    );
    assert_eq!(h["latest_crash_consistent"]["id"], old.id.as_str());
    let w = store.point_writer(&vm, Some(&old)).await.unwrap();
    let fresh = w
        .commit(PointMeta::marker(
            Seq(9),
            Epoch(1),
            CheckpointKind::AppConsistent,
            std::time::SystemTime::now(),
        ))
        .await
        .unwrap();
    let points = api.ok("GET", "/api/items/db-1/points", Value::Null).await;
    let ids: Vec<&str> = points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [old.id.as_str(), fresh.id.as_str()]);
    assert_eq!(points[1]["form"], "stored");
    assert_eq!(points[1]["kind"], "app-consistent");
    // The newest crash-consistent point is still two hours old.
    let h = api.ok("GET", "/api/items/db-1/health", Value::Null).await;
    assert_eq!(h["health"], "critical", "{h}");
    assert_eq!(h["latest_app_consistent"]["id"], fresh.id.as_str());
}
