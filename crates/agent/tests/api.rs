//! The agent's API as a client sees it: the token, bad bodies, unknown VMs, bad definitions,
//! and an agent that refuses to start on a corrupt state file (naming it).

use std::time::Duration;

use lifeboat_agent::{Agent, AgentConfig};
use serde_json::{json, Value};
use tokio::sync::watch;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn config(data: &std::path::Path, port: u16) -> AgentConfig {
    AgentConfig {
        name: "h1".into(),
        region: "primary".into(),
        data: data.to_path_buf(),
        // No vault listens here: the agent keeps serving and retries its heartbeat.
        vault: "http://127.0.0.1:9".into(),
        token: TOKEN.into(),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        accel: lifeboat_qemu::Accel::Tcg,
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut r = http.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = r.send().await.expect("agent answers");
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_it_cannot_use_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = lifeboat_testkit::free_loopback_port();
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = tokio::spawn(Agent::run(config(dir.path(), port), stop_rx));
    let base = format!("http://127.0.0.1:{port}/agent/v1");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/status")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use reqwest::Method;

    let (s, v) = call(&http, Method::GET, &format!("{base}/status"), None, None).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("bearer token"), "{v}");
    let (s, v) = call(
        &http,
        Method::GET,
        &format!("{base}/status"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"sources": [], "replicas": [], "recovered": []}));

    let (s, v) = call(
        &http,
        Method::GET,
        &format!("{base}/sources/web"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no source VM web"),
        "{v}"
    );

    let url = format!("{base}/sources/web");
    let (s, v) = call(&http, Method::PUT, &url, Some(TOKEN), Some("{not json")).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("bad source VM body"),
        "{v}"
    );

    let nbd = json!({"definition": {"name": "web", "vcpus": 1, "memory_mib": 32,
        "disks": [{"source": {"nbd": {"socket": "/tmp/x.sock"}}}], "serial_log": "/tmp/s"}});
    let (s, v) = call(
        &http,
        Method::PUT,
        &url,
        Some(TOKEN),
        Some(&nbd.to_string()),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("not an NBD export"),
        "{v}"
    );

    let bad_def = json!({"definition": {"name": "web", "vcpus": 0}});
    let (s, v) = call(
        &http,
        Method::PUT,
        &url,
        Some(TOKEN),
        Some(&bad_def.to_string()),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["causes"].as_array().unwrap().len() >= 2,
        "the cause chain: {v}"
    );

    let missing = json!({"definition": {"name": "web", "vcpus": 1, "memory_mib": 32,
        "disks": [{"source": {"file": {"path": dir.path().join("nope.img"), "format": "raw"}}}],
        "serial_log": "/tmp/s"}});
    let (s, v) = call(
        &http,
        Method::PUT,
        &url,
        Some(TOKEN),
        Some(&missing.to_string()),
    )
    .await;
    assert_eq!(s, 500, "{v}");
    let text = v["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        text.contains("nope.img"),
        "the error names the image: {text}"
    );

    let url = format!("{base}/recovered/web/jump");
    let (s, v) = call(&http, Method::POST, &url, Some(TOKEN), None).await;
    assert_eq!(s, 404, "{v}");

    // Re-protect and drill routes: wrong bodies and missing VMs are named.
    let ok_def = json!({"name": "web", "vcpus": 1, "memory_mib": 32,
        "disks": [{"source": {"file": {"path": "/x.img", "format": "raw"}}}],
        "serial_log": "/tmp/s"});
    let not_drill = json!({"definition": ok_def, "store_url": "/tmp/none",
        "recovery_point": "latest", "epoch": 2});
    let (s, v) = call(
        &http,
        Method::PUT,
        &format!("{base}/drills/web"),
        Some(TOKEN),
        Some(&not_drill.to_string()),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("\"drill\": true"),
        "{v}"
    );
    for (path, body, want) in [
        ("recovered/web/reverse", "{}", "no recovered VM web"),
        (
            "local/web/seed",
            r#"{"store_url":"/x","epoch":2,"start":1,"end":2}"#,
            "no released VM web",
        ),
        (
            "local/web/digests",
            r#"{"block":65536}"#,
            "no released VM web",
        ),
        ("local/web/release", r#"{"after":1}"#, "bad release body"),
        ("local/web/fly", "{}", "use release, digests or seed"),
        ("drills/web/start", "", "no drill VM web"),
        ("vms/web/start", "", "no source VM web"),
    ] {
        let (s, v) = call(
            &http,
            Method::POST,
            &format!("{base}/{path}"),
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert!(s == 400 || s == 404, "{path}: {s} {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(want),
            "{path}: {v}"
        );
    }
    // Nothing here to reuse: re-protect would copy everything, and says why.
    let (s, v) = call(
        &http,
        Method::GET,
        &format!("{base}/local/web"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["kind"], "none", "{v}");
    assert!(v["unusable"].as_str().unwrap().contains("no disks"), "{v}");

    stop_tx.send(true).unwrap();
    agent.await.unwrap().unwrap();

    // A corrupt state file: the agent refuses to start and names it.
    let f = dir.path().join("state/replicas/web.json");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, b"{\"store_url\": 7").unwrap();
    let (_tx, rx) = watch::channel(false);
    let port = lifeboat_testkit::free_loopback_port();
    let e = Agent::run(config(dir.path(), port), rx).await.unwrap_err();
    assert!(format!("{e:#}").contains("web.json is not valid"), "{e:#}");
}
