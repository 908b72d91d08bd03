//! The portal over loopback HTTP, without a browser (the browser walk is
//! `crates/lifeboat/tests/portal.rs`): the session cookie, redirects to the login page, CSRF,
//! a forced wrong-state operation answered with the vault's message, a failover started from
//! its form, clear errors for bad parameters, the notifications stream, sign-out; replication
//! group and recovery plan pages (members, steps, forced wrong-state POSTs showing the vault's
//! message, CSRF on their forms), a plan drill waiting at its manual action and confirmed, a
//! failed plan step retried and skipped; a session surviving a vault restart (stored hashed);
//! the sixth bad login within a minute throttled.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{create_vms, protect, serve, setup, AllSucceed, TOKEN};
use serde_json::{json, Value};

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        form: Option<&str>,
    ) -> (u16, String, String) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        if let Some(f) = form {
            r = r
                .header("content-type", "application/x-www-form-urlencoded")
                .body(f.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, location, resp.text().await.unwrap())
    }
    async fn get(&self, path: &str) -> (u16, String, String) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, form: &str) -> (u16, String, String) {
        self.send(reqwest::Method::POST, path, Some(form)).await
    }
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with the CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn sessions_csrf_forced_operations_and_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("v.db"), Arc::new(AllSucceed)).await;
    setup(&api).await;
    api.ok(
        "POST",
        "/api/items",
        json!({"vm": "web-1", "target_region": "secondary"}),
    )
    .await;
    api.wait_item_state("web-1", "protected").await;
    let mut b = Browser {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: api.base.clone(),
        cookie: None,
    };

    // Nothing without a session.
    for p in [
        "/portal/",
        "/portal/items/web-1",
        "/portal/jobs/1",
        "/portal/nothing",
    ] {
        let (s, loc, body) = b.get(p).await;
        assert_eq!((s, loc.as_str()), (303, "/portal/login"), "{p}");
        assert!(!body.contains("web-1"), "{p}");
    }
    assert_eq!(b.get("/portal/events/stream").await.0, 401);
    assert_eq!(b.get("/").await.1, "/portal/");

    // Login: wrong token, bad form, then the token.
    let (s, _, body) = b.post("/portal/login", "token=nope").await;
    assert_eq!(s, 401);
    assert!(body.contains("wrong token"), "{body}");
    let (s, _, body) = b.post("/portal/login", "tok%%en").await;
    assert_eq!(s, 400, "{body}");
    let set = login_cookie(&b.http, &b.base).await;
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(TOKEN),
        "the token is never in the cookie: {set}"
    );
    b.cookie = Some(set.split(';').next().unwrap().to_string());

    // Items, filters, the overview with only the allowed buttons.
    let (s, _, page) = b.get("/portal/").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("web-1") && page.contains("Protected"),
        "{page}"
    );
    let (s, _, page) = b.get("/portal/?state=failed-over").await;
    assert_eq!(s, 200);
    assert!(!page.contains("data-vm=\"web-1\""), "{page}");
    let (s, _, page) = b.get("/portal/?health=purple").await;
    assert_eq!(s, 400);
    assert!(page.contains("unknown health"), "{page}");
    let (s, _, page) = b.get("/portal/?state=upside-down").await;
    assert_eq!(s, 400);
    assert!(page.contains("unknown state"), "{page}");
    let (_, _, page) = b.get("/portal/items/web-1").await;
    assert!(page.contains("id=\"op-failover\""), "{page}");
    assert!(!page.contains("id=\"op-commit\""), "{page}");
    let token = csrf(&page);
    let (s, _, page) = b.get("/portal/items/nope").await;
    assert_eq!(s, 404, "{page}");

    // A dialog of an operation not allowed, a forced POST: the vault's message, its status.
    let (s, _, page) = b.get("/portal/items/web-1/commit").await;
    assert_eq!(s, 409);
    assert!(
        page.contains("not possible while VM web-1 is Protected"),
        "{page}"
    );
    let (s, _, page) = b
        .post("/portal/items/web-1/commit", &format!("csrf={token}"))
        .await;
    assert_eq!(s, 409);
    assert!(
        page.contains("VM web-1: commit is not allowed: the item is Protected"),
        "{page}"
    );
    // CSRF: a missing or wrong token is refused.
    let (s, _, page) = b.post("/portal/items/web-1/failover", "point=latest").await;
    assert_eq!(s, 400, "{page}");
    let (s, _, page) = b
        .post("/portal/items/web-1/failover", "csrf=forged&point=latest")
        .await;
    assert_eq!(s, 403, "{page}");
    assert_eq!(
        api.ok("GET", "/api/items/web-1", Value::Null).await["state"],
        "protected"
    );
    // Bad choices are explained.
    let (s, _, page) = b
        .post(
            "/portal/items/web-1/failover",
            &format!("csrf={token}&point=yesterday"),
        )
        .await;
    assert_eq!(s, 400);
    assert!(page.contains("unknown recovery point choice"), "{page}");
    let (s, _, page) = b
        .post(
            "/portal/items/web-1/failover",
            &format!("csrf={token}&point=custom"),
        )
        .await;
    assert_eq!(s, 400);
    assert!(page.contains("none selected"), "{page}");

    // Failover from the form: the job, and its parameters as the API sees them.
    let (s, loc, _) = b
        .post(
            "/portal/items/web-1/failover",
            &format!("csrf={token}&point=latest-processed&shutdown=on&shutdown_timeout=5"),
        )
        .await;
    assert_eq!(s, 303);
    let id: i64 = loc.strip_prefix("/portal/jobs/").unwrap().parse().unwrap();
    let job = api.ok("GET", &format!("/api/jobs/{id}"), Value::Null).await;
    assert_eq!(job["params"]["recovery_point"], "latest-processed");
    assert_eq!(job["params"]["shutdown_source"], true);
    assert_eq!(job["params"]["shutdown_timeout_secs"], 5);
    api.wait_item_state("web-1", "failed-over").await;
    let (s, _, page) = b.get(&loc).await;
    assert_eq!(s, 200);
    assert!(
        page.contains("Failover") && page.contains("succeeded"),
        "{page}"
    );
    assert_eq!(b.get("/portal/jobs/abc").await.0, 400);
    assert_eq!(b.get("/portal/jobs/999").await.0, 404);
    let (_, _, page) = b.get("/portal/items/web-1").await;
    assert!(page.contains("id=\"op-commit\"") && !page.contains("id=\"op-failover\""));

    // The notifications stream replays the job's events after `since`.
    let mut resp = b
        .http
        .get(format!("{}/portal/events/stream?since=0", b.base))
        .header("cookie", b.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut got = String::new();
    while !got.contains("failover of VM web-1 succeeded") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("a notification within 10 s")
            .unwrap()
            .expect("the stream goes on");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        got.contains("event: note") && got.contains("failover of VM web-1 started"),
        "{got}"
    );

    // Sign out: the session is gone.
    let (s, loc, _) = b.post("/portal/logout", &format!("csrf={token}")).await;
    assert_eq!((s, loc.as_str()), (303, "/portal/login"));
    assert_eq!(b.get("/portal/").await.1, "/portal/login");
}

/// Signs in with the vault's token: the `Set-Cookie` of the session.
async fn login_cookie(http: &reqwest::Client, base: &str) -> String {
    let resp = http
        .post(format!("{base}/portal/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    resp.headers()["set-cookie"].to_str().unwrap().to_string()
}

/// A browser signed in with the vault's token.
async fn signed_in(base: &str) -> Browser {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let set = login_cookie(&http, base).await;
    Browser {
        http,
        base: base.to_string(),
        cookie: Some(set.split(';').next().unwrap().to_string()),
    }
}

/// Polls a page until it contains `want`.
async fn wait_page(b: &Browser, path: &str, want: &str) -> String {
    for _ in 0..500 {
        let (_, _, page) = b.get(path).await;
        if page.contains(want) {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never showed {want:?}: {}", b.get(path).await.2);
}

#[tokio::test]
async fn group_pages_show_members_and_refuse_with_the_vaults_message() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("v.db"), Arc::new(AllSucceed)).await;
    setup(&api).await;
    create_vms(&api, &["web-2"]).await;
    protect(&api, &["web-1", "web-2"]).await;
    api.ok(
        "POST",
        "/api/groups",
        json!({"name": "shop", "vms": ["web-1", "web-2"]}),
    )
    .await;
    let b = signed_in(&api.base).await;

    // The list: the group, its members with their state, its policy, no cut yet.
    let (s, _, page) = b.get("/portal/groups").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("href=\"/portal/groups\"") && page.contains("href=\"/portal/plans\""),
        "the nav: {page}"
    );
    assert!(page.contains("data-group=\"shop\""), "{page}");
    for vm in ["web-1", "web-2"] {
        assert!(
            page.contains(&format!(
                "<li data-vm=\"{vm}\"><a href=\"/portal/items/{vm}\">{vm}</a>: Protected"
            )),
            "{page}"
        );
    }
    assert!(page.contains("none yet"), "{page}");

    // A group's page: members, and only what Protected allows.
    let (s, _, page) = b.get("/portal/groups/shop").await;
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("<tr data-vm=\"web-2\">"), "{page}");
    assert!(
        page.contains("id=\"gop-failover\"") && page.contains("id=\"gop-test-failover\""),
        "{page}"
    );
    assert!(
        !page.contains("id=\"gop-commit\"") && !page.contains("id=\"gop-reprotect\""),
        "{page}"
    );
    assert!(page.contains("id=\"cut-app-consistent\""), "{page}");
    let token = csrf(&page);
    assert_eq!(b.get("/portal/groups/nope").await.0, 404);
    assert_eq!(b.get("/portal/groups/shop/explode").await.0, 404);

    // The failover dialog offers the group points, no single-VM point.
    let (s, _, page) = b.get("/portal/groups/shop/failover").await;
    assert_eq!(s, 200, "{page}");
    for id in [
        "point-latest-multi-vm-processed",
        "point-latest-multi-vm-app-consistent",
        "point-cut",
    ] {
        assert!(page.contains(&format!("id=\"{id}\"")), "{page}");
    }
    assert!(!page.contains("point-custom"), "{page}");

    // Not allowed: the dialog says so; a forced POST shows the vault's own message.
    let (s, _, page) = b.get("/portal/groups/shop/commit").await;
    assert_eq!(s, 409);
    assert!(page.contains("web-1 Protected"), "{page}");
    let (s, _, page) = b
        .post("/portal/groups/shop/commit", &format!("csrf={token}"))
        .await;
    assert_eq!(s, 409, "{page}");
    assert!(
        page.contains("VM web-1: commit is not allowed: the item is Protected"),
        "{page}"
    );
    assert!(
        page.contains("id=\"members\""),
        "on the group's page: {page}"
    );
    // No group point yet: the vault's refusal, not a blank error.
    let (s, _, page) = b
        .post(
            "/portal/groups/shop/failover",
            &format!("csrf={token}&point=latest-multi-vm-processed"),
        )
        .await;
    assert!(s >= 400, "{s}: {page}");
    assert!(
        page.contains("id=\"error\"") && page.contains("replication group shop"),
        "{page}"
    );
    let (s, _, page) = b
        .post(
            "/portal/groups/shop/failover",
            &format!("csrf={token}&point=cut"),
        )
        .await;
    assert_eq!(s, 400);
    assert!(page.contains("none selected"), "{page}");
    // A cut needs the agents: the vault says so.
    let (s, _, page) = b
        .post(
            "/portal/groups/shop/cut",
            &format!("csrf={token}&kind=crash-consistent"),
        )
        .await;
    assert_eq!(s, 503, "{page}");
    assert!(page.contains("start the agents"), "{page}");

    // CSRF on the new forms.
    for path in [
        "/portal/groups/shop/cut",
        "/portal/groups/shop/test-failover",
    ] {
        assert_eq!(b.post(path, "kind=crash-consistent").await.0, 400, "{path}");
        assert_eq!(b.post(path, "csrf=forged").await.0, 403, "{path}");
    }
    for vm in ["web-1", "web-2"] {
        assert_eq!(
            api.ok("GET", &format!("/api/items/{vm}"), Value::Null)
                .await["state"],
            "protected"
        );
    }

    // The readiness checklist of a member: it must fail over with its group.
    let (_, _, page) = b.get("/portal/items/web-1").await;
    assert!(page.contains("Not ready"), "{page}");
    assert!(
        page.contains("fail over the group shop") && page.contains("no agent has registered"),
        "{page}"
    );
    assert!(
        page.contains("<li class=\"pass\" data-check=\"state\">"),
        "{page}"
    );
}

#[tokio::test]
async fn plan_pages_run_a_drill_with_a_manual_action_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("v.db"), Arc::new(AllSucceed)).await;
    setup(&api).await;
    create_vms(&api, &["app-1", "app-2"]).await;
    protect(&api, &["app-1", "app-2"]).await;
    api.ok(
        "POST",
        "/api/plans",
        json!({"name": "shop", "groups": [
            {"vms": ["app-1"], "post": [{"manual": {"name": "check DNS",
                "instructions": "point <shop.example> at the secondary",
                "on": ["test-failover"]}}]},
            {"vms": ["app-2"], "pre": [{"script": {"name": "warm cache", "command": "true",
                "on": ["failover"]}}]}]}),
    )
    .await;
    let b = signed_in(&api.base).await;

    let (s, _, page) = b.get("/portal/plans").await;
    assert_eq!(s, 200);
    assert!(page.contains("data-plan=\"shop\""), "{page}");
    assert!(
        page.contains("<td class=\"groups\">2</td>")
            && page.contains("<td class=\"vms\">app-1, app-2</td>"),
        "{page}"
    );
    assert!(page.contains("never run"), "{page}");

    let (s, _, page) = b.get("/portal/plans/shop").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("check DNS") && page.contains("point &lt;shop.example&gt;"),
        "escaped: {page}"
    );
    assert!(
        page.contains("warm cache") && page.contains("app-2"),
        "{page}"
    );
    assert!(
        page.contains("id=\"pop-failover\"") && page.contains("id=\"pop-test-failover\""),
        "{page}"
    );
    assert!(
        !page.contains("id=\"pop-commit\"") && !page.contains("id=\"pop-cleanup-test-failover\""),
        "{page}"
    );
    let token = csrf(&page);

    // The dialog: the steps, the plan's point choices and no Custom.
    let (s, _, page) = b.get("/portal/plans/shop/test-failover").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("Group 1: post-action &quot;check DNS&quot; (manual)"),
        "{page}"
    );
    assert!(
        page.contains("id=\"point-latest-processed\"") && !page.contains("point-custom"),
        "{page}"
    );
    assert_eq!(b.get("/portal/plans/shop/commit").await.0, 409);

    // A forced commit: the vault's message; CSRF enforced.
    let (s, _, page) = b
        .post("/portal/plans/shop/commit", &format!("csrf={token}"))
        .await;
    assert_eq!(s, 409, "{page}");
    assert!(
        page.contains("commit of plan shop refused: group 1 VM app-1"),
        "{page}"
    );
    assert_eq!(
        b.post("/portal/plans/shop/test-failover", "csrf=forged")
            .await
            .0,
        403
    );
    assert_eq!(
        b.post("/portal/plans/shop/test-failover", "point=latest")
            .await
            .0,
        400
    );
    let (s, _, page) = b
        .post(
            "/portal/plans/shop/failover",
            &format!("csrf={token}&point=2026-01-01T00:00:00Z"),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        page.contains("Custom recovery points are not allowed"),
        "{page}"
    );

    // The drill: it waits at the manual action, Confirm, succeeded.
    let (s, run, _) = b
        .post(
            "/portal/plans/shop/test-failover",
            &format!("csrf={token}&point=latest-processed"),
        )
        .await;
    assert_eq!(s, 303);
    assert!(run.starts_with("/portal/plans/shop/runs/"), "{run}");
    let page = wait_page(&b, &run, "data-status=\"waiting\"").await;
    assert!(page.contains("id=\"run-confirm\""), "{page}");
    assert!(!page.contains("id=\"run-retry\""), "{page}");
    assert!(page.contains("point &lt;shop.example&gt;"), "{page}");
    let (_, _, panel) = b.get(&format!("{run}/panel")).await;
    assert!(
        panel.contains("id=\"run-panel\"") && !panel.contains("hx-get"),
        "a waiting run is not polled: {panel}"
    );
    assert_eq!(
        b.post(&format!("{run}/confirm"), "csrf=forged").await.0,
        403
    );
    let (s, loc, _) = b
        .post(&format!("{run}/confirm"), &format!("csrf={token}"))
        .await;
    assert_eq!((s, loc.as_str()), (303, run.as_str()));
    let page = wait_page(&b, &run, "data-status=\"succeeded\"").await;
    assert!(!page.contains("id=\"run-confirm\""), "{page}");
    assert!(page.contains("confirmed"), "{page}");
    // A succeeded run cannot be retried: the vault's message.
    let (s, _, page) = b
        .post(&format!("{run}/retry"), &format!("csrf={token}"))
        .await;
    assert_eq!(s, 409);
    assert!(page.contains("only a failed run can be retried"), "{page}");
    assert_eq!(b.get("/portal/plans/shop/runs/abc").await.0, 400);
    assert_eq!(b.get("/portal/plans/shop/runs/999").await.0, 404);

    // Cleanup from the plan's page, with notes.
    let (_, _, page) = b.get("/portal/plans/shop").await;
    assert!(
        page.contains("id=\"pop-cleanup-test-failover\"") && !page.contains("id=\"pop-failover\""),
        "{page}"
    );
    let (s, run2, _) = b
        .post(
            "/portal/plans/shop/cleanup-test-failover",
            &format!("csrf={token}&notes=plan+drill+ok"),
        )
        .await;
    assert_eq!(s, 303);
    assert_ne!(run2, run);
    let page = wait_page(&b, &run2, "data-status=\"succeeded\"").await;
    assert!(page.contains("<dd>plan drill ok</dd>"), "the notes: {page}");
    for vm in ["app-1", "app-2"] {
        api.wait_item_state(vm, "protected").await;
    }
    let (_, _, page) = b.get("/portal/plans").await;
    assert!(page.contains("cleanup-test-failover (run"), "{page}");
}

#[tokio::test]
async fn a_session_survives_a_vault_restart_and_is_stored_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v.db");
    let api = serve(&db, Arc::new(AllSucceed)).await;
    setup(&api).await;
    let mut b = signed_in(&api.base).await;
    assert_eq!(b.get("/portal/").await.0, 200);
    let id = b
        .cookie
        .clone()
        .unwrap()
        .strip_prefix("lifeboat_portal=")
        .unwrap()
        .to_string();
    let rows = || -> (i64, i64) {
        let c = rusqlite::Connection::open(&db).unwrap();
        let raw: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM portal_sessions WHERE id_hash = ?1 OR csrf = ?1",
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        let all: i64 = c
            .query_row("SELECT COUNT(*) FROM portal_sessions", [], |r| r.get(0))
            .unwrap();
        (raw, all)
    };
    assert_eq!(rows(), (0, 1), "one session, not under its raw id");

    // The vault stops and starts again on the same file: still signed in.
    api._server.abort();
    let _ = api._server.await;
    let api = serve(&db, Arc::new(AllSucceed)).await;
    b.base = api.base.clone();
    let (s, loc, page) = b.get("/portal/").await;
    assert_eq!((s, loc.as_str()), (200, ""), "{page}");
    let token = csrf(&page);
    // Sign-out deletes it; a forged cookie gets nothing.
    let (s, _, _) = b.post("/portal/logout", &format!("csrf={token}")).await;
    assert_eq!(s, 303);
    assert_eq!(rows(), (0, 0));
    assert_eq!(b.get("/portal/").await.1, "/portal/login");
    b.cookie = Some(format!("lifeboat_portal={id}x"));
    assert_eq!(b.get("/portal/").await.1, "/portal/login");
}

#[tokio::test]
async fn the_sixth_bad_login_within_a_minute_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("v.db"), Arc::new(AllSucceed)).await;
    let login = |token: &str| {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let url = format!("{}/portal/login", api.base);
        let body = format!("token={token}");
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (status, retry, r.text().await.unwrap())
        }
    };
    // Four failures, then a success: the count starts again.
    for _ in 0..4 {
        assert_eq!(login("wrong").await.0, 401);
    }
    assert_eq!(login(TOKEN).await.0, 303);
    for i in 0..5 {
        let (s, retry, _) = login("wrong").await;
        assert_eq!((s, retry), (401, None), "failure {}", i + 1);
    }
    // The sixth within a minute: 429, Retry-After, a clear message; the token is not checked.
    let (s, retry, page) = login("wrong").await;
    assert_eq!(s, 429, "{page}");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert!(
        page.contains("too many failed sign-ins") && page.contains("wait"),
        "{page}"
    );
    let (s, _, page) = login(TOKEN).await;
    assert_eq!(s, 429, "even the right token waits: {page}");
}

#[tokio::test]
async fn a_failed_plan_step_offers_retry_and_skip() {
    let dir = tempfile::tempdir().unwrap();
    let api = serve(&dir.path().join("v.db"), Arc::new(AllSucceed)).await;
    setup(&api).await;
    protect(&api, &["web-1"]).await;
    api.ok(
        "POST",
        "/api/plans",
        json!({"name": "p", "groups": [{"vms": ["web-1"], "pre": [{"script": {
            "name": "warm cache", "command": "echo cache cold >&2; exit 3",
            "timeout_secs": 5, "on": ["test-failover"]}}]}]}),
    )
    .await;
    let b = signed_in(&api.base).await;
    let (_, _, page) = b.get("/portal/plans/p").await;
    let token = csrf(&page);
    let (s, run, _) = b
        .post("/portal/plans/p/test-failover", &format!("csrf={token}"))
        .await;
    assert_eq!(s, 303);
    let page = wait_page(&b, &run, "data-status=\"failed\"").await;
    assert!(
        page.contains("id=\"run-retry\"")
            && page.contains("id=\"run-skip\"")
            && !page.contains("id=\"run-confirm\""),
        "{page}"
    );
    assert!(
        page.contains("exited with status 3") && page.contains("cache cold"),
        "{page}"
    );
    // The plan's page says a run is not active any more: operations are offered again.
    let (_, _, plan) = b.get("/portal/plans/p").await;
    assert!(plan.contains("id=\"pop-test-failover\""), "{plan}");
    // Confirm is refused on a failed run, with the vault's message.
    let (s, _, page) = b
        .post(&format!("{run}/confirm"), &format!("csrf={token}"))
        .await;
    assert_eq!(s, 409, "{page}");
    assert!(page.contains("id=\"error\""), "{page}");
    // Retry: the script fails again; Skip: the run goes on and succeeds.
    let (s, loc, _) = b
        .post(&format!("{run}/retry"), &format!("csrf={token}"))
        .await;
    assert_eq!((s, loc.as_str()), (303, run.as_str()));
    wait_page(&b, &run, "data-status=\"failed\"").await;
    assert_eq!(b.post(&format!("{run}/skip"), "csrf=forged").await.0, 403);
    let (s, _, _) = b
        .post(&format!("{run}/skip"), &format!("csrf={token}"))
        .await;
    assert_eq!(s, 303);
    let page = wait_page(&b, &run, "data-status=\"succeeded\"").await;
    assert!(page.contains("skipped by the operator"), "{page}");
    api.wait_item_state("web-1", "test-failed-over").await;
}
