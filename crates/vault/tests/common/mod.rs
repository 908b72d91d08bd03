//! Shared by the vault's API tests: a vault on a real SQLite file served over loopback HTTP,
//! executor doubles, and a small JSON client.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_types::Outcome;
use lifeboat_vault::{api, Db, Executor, Vault};
use serde_json::{json, Value};

pub const TOKEN: &str = "s3cret-token";

/// Succeeds every job at once (stands in for the agents while they do not exist; beside it,
/// `NoAgents` is tested as the vault's real executor).
pub struct AllSucceed;
impl Executor for AllSucceed {
    fn run(&self, vault: Vault, job: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let n = vault.job(job).map(|j| j.steps.len()).unwrap_or(0);
            for i in 0..n {
                vault.set_step(job, i, "succeeded", None).unwrap();
            }
            vault.finish_job(job, Outcome::Succeeded, None).unwrap();
        })
    }
}

/// Never finishes (a job in flight when the vault is killed).
pub struct Hangs;
impl Executor for Hangs {
    fn run(&self, _vault: Vault, _job: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::pending())
    }
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub _server: tokio::task::JoinHandle<()>,
}

pub async fn serve(db: &std::path::Path, executor: Arc<dyn Executor>) -> Api {
    let vault = Vault::new(Db::open(db).unwrap(), executor).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = api::router(vault, TOKEN.to_string());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        _server: server,
    }
}

impl Api {
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    pub async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let b = body.to_string();
        let (s, v) = self
            .call(method, path, (!body.is_null()).then_some(b.as_str()))
            .await;
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }
    pub async fn wait_item_state(&self, vm: &str, state: &str) -> Value {
        for _ in 0..500 {
            let v = self
                .ok("GET", &format!("/api/items/{vm}"), Value::Null)
                .await;
            if v["state"] == state {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("item {vm} never reached {state}");
    }
}

pub async fn setup(api: &Api) {
    for (n, u) in [("primary", "/tmp/p"), ("secondary", "/tmp/s")] {
        api.ok("POST", "/api/regions", json!({"name": n, "store_url": u}))
            .await;
    }
    api.ok(
        "POST",
        "/api/vms",
        json!({"name": "web-1", "region": "primary", "definition": {"vcpus": 1, "memory_mib": 128}}),
    )
    .await;
}

/// Creates VMs in region `primary` (the regions exist).
pub async fn create_vms(api: &Api, vms: &[&str]) {
    for vm in vms {
        api.ok(
            "POST",
            "/api/vms",
            json!({"name": vm, "region": "primary", "definition": {"vcpus": 1}}),
        )
        .await;
    }
}

/// Protects VMs to region `secondary`, one after the other, each until it is protected.
pub async fn protect(api: &Api, vms: &[&str]) {
    for vm in vms {
        api.ok(
            "POST",
            "/api/items",
            json!({"vm": vm, "target_region": "secondary"}),
        )
        .await;
        api.wait_item_state(vm, "protected").await;
    }
}
