//! The portal over loopback HTTP, without a browser (the browser walk is
//! `crates/lifeboat/tests/portal.rs`): the session cookie, redirects to the login page, CSRF,
//! a forced wrong-state operation answered with the vault's message, a failover started from
//! its form, clear errors for bad parameters, the notifications stream, sign-out.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{serve, setup, AllSucceed, TOKEN};
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
    let resp = b
        .http
        .post(format!("{}/portal/login", b.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
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
