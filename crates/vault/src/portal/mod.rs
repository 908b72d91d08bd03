//! # The portal: the tutorial, click by click, in a browser
//!
//! Server-rendered HTML (maud) served by the vault under `/portal/`, next to the REST API and
//! on the same listener. Every action goes through the vault's own [`Vault`] in-process (the
//! state machine, the jobs, the 409 messages are the API's), never over HTTP. htmx (vendored
//! from the npm package `htmx.org`, `assets/htmx.min.js`, served from the binary) refreshes the
//! panels of an item or a job while an operation runs; there is no JavaScript build step and
//! nothing is fetched from elsewhere at build or run time.
//!
//! ## Pages
//!
//! - `/portal/login` (GET form, POST token), `/portal/logout` (POST).
//! - `/portal/` **Replicated items**: name, replication health, status (with % synchronized
//!   while protection is being enabled), active region, RPO, last recovery point; filtered by
//!   `?health=` (`healthy`, `warning`, `critical`, `none`) and `?state=` (an item state).
//! - `/portal/items/{vm}` **overview**: protection state, health and its reasons, the newest
//!   crash- and app-consistent points with their UTC times, failover readiness, the drill in
//!   place and the last one, errors, recent events, and a button for each operation the item's
//!   `allowed_operations` permit, and no other.
//! - `/portal/items/{vm}/{operation}`: GET is the operation's dialog (failover with Latest
//!   processed / Latest / Latest app-consistent / Custom and "Shut down machine before
//!   beginning failover"; change recovery point; commit with its warning; re-protect with the
//!   direction and the resources "(new)" and reused from the re-protect plan; test failover;
//!   cleanup test failover with notes; disable replication); POST starts it with
//!   [`Vault::start`] and shows the job. A refused start (wrong state: 409) shows the vault's
//!   own message on the item's page with the same status.
//! - The overview's **failover readiness** is a checklist (`readiness.rs`, a pure function
//!   from the item, the target region's agent liveness and its recovery points to the checks,
//!   unit-tested): the target region's agent answers (seen within `HOST_ALIVE`), a restorable
//!   recovery point exists in the target region, the state allows failover, the VM is not in a
//!   replication group (else: fail over the group). Each check shows pass or fail and why.
//! - `/portal/groups` **Replication groups** (`groups.rs`): name, members with their state and
//!   health, policy, the newest multi-VM crash- and app-consistent cut (UTC).
//!   `/portal/groups/{name}`: members (linking to their overviews, refreshed by htmx while a
//!   member's job runs), the cuts and group points, and only the buttons every member's state
//!   allows: Cut now (crash- or app-consistent, `POST .../cut`), Failover and Test failover
//!   (dialog: Latest multi-VM processed / Latest multi-VM app-consistent / a specific cut),
//!   Cleanup test failover (notes), Commit (with its warning), Re-protect. POSTs go through
//!   [`Vault::group_operation`] and [`Vault::cut_group`] as the API's do; a refusal shows the
//!   vault's message on the group's page with its status.
//! - `/portal/plans` **Recovery plans** (`plans.rs`): name, groups, VMs, last run and its
//!   status. `/portal/plans/{name}`: the ordered groups with their VMs and pre/post actions,
//!   the runs, and the plan operations its VMs' states allow (none while a run is active), each
//!   with a confirm dialog listing the run's steps (no Custom point: a plan takes Latest
//!   processed / Latest / Latest app-consistent). `/portal/plans/{name}/runs/{id}`: the steps
//!   with status and details, refreshed by htmx while the run runs; **Confirm** while it waits
//!   at a manual action, **Retry** and **Skip** when a step failed ([`Vault::start_plan`],
//!   [`Vault::confirm_plan_run`], [`Vault::retry_plan_run`], [`Vault::skip_plan_run_step`]).
//! - `/portal/jobs`, `/portal/jobs/{id}`: jobs, and one job with its steps and their details.
//! - `/portal/events/stream`: server-sent events feeding the **notifications** area of every
//!   page (job started, progress, succeeded, failed); `assets/portal.js` (a few lines of plain
//!   `EventSource`) shows them. Each page renders the latest job notifications itself and the
//!   stream continues after the newest of them (`?since=` / `Last-Event-ID`), so nothing is
//!   missed between a POST and the page it leads to.
//!
//! ## Session
//!
//! The login form takes the vault's token (compared in constant time). On success the browser
//! gets an opaque random session id (256 bits from the OS) in a cookie `lifeboat_portal`
//! (`HttpOnly; SameSite=Strict; Path=/portal`). The session (its own CSRF token and an expiry,
//! 12 h) is kept in the vault's database (`portal_sessions`, migration 8), keyed by the BLAKE3
//! hash of the id: the id itself is only in the browser, so a copy of the database opens no
//! session. Sessions survive a vault restart; expired ones are deleted (when met, and at each
//! login), and at most 1,024 are kept. Sign-out deletes the session. The token itself is never
//! in the cookie. Without a valid session every portal route but the login page redirects to it
//! (the event stream answers 401): nothing is readable or clickable without logging in.
//!
//! **Login throttling**: after 5 failed logins from one client address (the TCP peer's IP;
//! forwarded-for headers are not trusted) within a minute, the login answers 429 with
//! `Retry-After` and says how long to wait, without checking the token, until the oldest
//! failure is a minute old. A successful login forgets the address's failures. The counts are
//! in memory (a restart forgets them). A server started without connection info (tests' own
//! routers) counts every client as one.
//!
//! ## Safety
//!
//! - CSRF: the cookie is `SameSite=Strict` (other sites' requests carry no session), and every
//!   form carries the session's CSRF token, checked on every POST.
//! - Pages are sent with `Content-Security-Policy: default-src 'self'` (scripts only from the
//!   portal's own assets, no inline script), `frame-ancestors 'none'` and `no-store`.
//! - Everything from outside (form bodies, query parameters, cookies, path segments) is parsed
//!   with clear errors shown on the page; all text is HTML-escaped by maud.

mod actions;
mod groups;
mod notify;
mod pages;
mod plans;
mod readiness;
mod session;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::db::now_ms;
use crate::model::Event;
use crate::service::{event_of, query_rows, Vault};
pub(crate) use session::Session;
use session::Throttle;

/// The vendored htmx (npm `htmx.org`, `dist/htmx.min.js`, with its licence header).
const HTMX: &str = include_str!("../../assets/htmx.min.js");
/// The portal's own script: the notifications' `EventSource`.
const PORTAL_JS: &str = include_str!("../../assets/portal.js");
/// The session cookie's name.
const COOKIE: &str = "lifeboat_portal";

/// The portal's state: the vault, its token, the login throttle.
#[derive(Clone)]
pub(crate) struct Portal {
    pub(crate) vault: Vault,
    token: Arc<String>,
    throttle: Arc<Mutex<Throttle>>,
}

/// The portal's router (merged into the API's by [`crate::api::router`]).
pub fn router(vault: Vault, token: Arc<String>) -> Router {
    let p = Portal {
        vault,
        token,
        throttle: Arc::default(),
    };
    let private = Router::new()
        .route("/portal", get(|| async { Redirect::to("/portal/") }))
        .route("/portal/", get(pages::items))
        .route("/portal/items/{vm}", get(pages::item))
        .route("/portal/items/{vm}/panel", get(pages::item_panel))
        .route(
            "/portal/items/{vm}/{operation}",
            get(actions::dialog).post(actions::operate),
        )
        .route("/portal/groups", get(groups::list))
        .route("/portal/groups/{name}", get(groups::group))
        .route("/portal/groups/{name}/panel", get(groups::panel))
        .route("/portal/groups/{name}/cut", post(groups::cut))
        .route(
            "/portal/groups/{name}/{operation}",
            get(groups::dialog).post(groups::operate),
        )
        .route("/portal/plans", get(plans::list))
        .route("/portal/plans/{name}", get(plans::plan))
        .route(
            "/portal/plans/{name}/{operation}",
            get(plans::dialog).post(plans::operate),
        )
        .route("/portal/plans/{name}/runs/{id}", get(plans::run))
        .route(
            "/portal/plans/{name}/runs/{id}/panel",
            get(plans::run_panel),
        )
        .route(
            "/portal/plans/{name}/runs/{id}/{action}",
            post(plans::run_action),
        )
        .route("/portal/jobs", get(pages::jobs))
        .route("/portal/jobs/{id}", get(pages::job))
        .route("/portal/jobs/{id}/panel", get(pages::job_panel))
        .route("/portal/events/stream", get(notify::stream))
        .route("/portal/logout", post(logout))
        .route("/portal/assets/htmx.min.js", get(|| async { js(HTMX) }))
        .route("/portal/assets/portal.js", get(|| async { js(PORTAL_JS) }))
        .route("/portal/{*rest}", get(not_found))
        .layer(middleware::from_fn_with_state(p.clone(), require_session));
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal/") }))
        .route("/portal/login", get(login_form).post(login))
        .merge(private)
        .layer(middleware::from_fn(headers))
        .with_state(p)
}

fn js(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every portal response.
async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; \
             form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The session id in the request's cookies, if any.
fn session_id(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

async fn require_session(State(p): State<Portal>, mut req: Request, next: Next) -> Response {
    match session_id(req.headers()).and_then(|id| p.session(&id)) {
        Some(s) => {
            req.extensions_mut().insert(s);
            next.run(req).await
        }
        None if req.uri().path() == "/portal/events/stream" => {
            (StatusCode::UNAUTHORIZED, "log in at /portal/login").into_response()
        }
        None => Redirect::to("/portal/login").into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Sign in · Lifeboat" } (style()) }
            body {
                main.login {
                    h1 { "Lifeboat vault" }
                    @if let Some(e) = error { p #error .error { (e) } }
                    form method="post" action="/portal/login" {
                        label for="token" { "Vault token" }
                        input #token type="password" name="token" autocomplete="off" autofocus;
                        button #sign-in type="submit" { "Sign in" }
                    }
                    p.hint { "The token is in the vault's data directory (" code { "vault/token" } ")." }
                }
            }
        }
    };
    (status, m).into_response()
}

/// The client's address (all clients share one when the server gives no address).
fn client(req_ext: Option<&ConnectInfo<SocketAddr>>) -> String {
    req_ext
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

async fn login(State(p): State<Portal>, req: Request) -> Response {
    let addr = client(req.extensions().get::<ConnectInfo<SocketAddr>>());
    let refused = {
        let mut t = p.throttle.lock().unwrap_or_else(|e| e.into_inner());
        t.refused(&addr, Instant::now())
    };
    if let Some(wait) = refused {
        let secs = wait.as_secs().max(1);
        let text = format!(
            "too many failed sign-ins from your address ({} within a minute): wait {secs} s \
             and retry with the vault's token",
            session::MAX_FAILED_LOGINS
        );
        let mut r = login_page(StatusCode::TOO_MANY_REQUESTS, Some(&text));
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return r;
    }
    let f: Result<LoginForm, String> = match axum::body::to_bytes(req.into_body(), 64 * 1024).await
    {
        Ok(b) => serde_urlencoded::from_bytes(&b).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let f = match f {
        Ok(f) => f,
        Err(e) => {
            return login_page(
                StatusCode::BAD_REQUEST,
                Some(&format!("bad login form: {e}")),
            )
        }
    };
    if !crate::api::same(f.token.trim().as_bytes(), p.token.as_bytes()) {
        let mut t = p.throttle.lock().unwrap_or_else(|e| e.into_inner());
        t.failed(&addr, Instant::now());
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("wrong token: use the vault's token (file vault/token in its data directory)"),
        );
    }
    p.throttle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .succeeded(&addr);
    match p.new_session() {
        Ok((id, _)) => {
            let cookie = format!("{COOKIE}={id}; Path=/portal; HttpOnly; SameSite=Strict");
            let mut r = Redirect::to("/portal/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => login_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&e)),
    }
}

async fn logout(
    State(p): State<Portal>,
    axum::Extension(s): axum::Extension<Session>,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    if let Err(r) = actions::read_form(&p, &s, &b, "sign-out") {
        return *r;
    }
    if let Some(id) = session_id(&h) {
        p.end_session(&id);
    }
    let mut r = Redirect::to("/portal/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "lifeboat_portal=; Path=/portal; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// The refusal of a form whose CSRF token is not the session's (None: the token is right).
pub(crate) fn check_csrf(p: &Portal, s: &Session, got: &str) -> Option<Response> {
    if crate::api::same(got.as_bytes(), s.csrf.as_bytes()) {
        None
    } else {
        Some(message(
            p,
            s,
            StatusCode::FORBIDDEN,
            "Form refused",
            "this form is not from this session (stale page or another site): reload the page \
             and retry",
        ))
    }
}

async fn not_found(
    State(p): State<Portal>,
    axum::Extension(s): axum::Extension<Session>,
) -> Response {
    message(
        &p,
        &s,
        StatusCode::NOT_FOUND,
        "Not found",
        "no such portal page: start from Replicated items",
    )
}

/// A page that only says `text` (an error), with `status`.
pub(crate) fn message(
    p: &Portal,
    s: &Session,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let body = html! { p #error .error { (text) } p { a href="/portal/" { "Replicated items" } } };
    (status, layout(p, s, title, body)).into_response()
}

/// The newest job notifications (for the notifications area) and the newest event id.
fn recent_notes(vault: &Vault) -> (Vec<Event>, i64) {
    let r = vault.db.tx("reading notifications", |tx| {
        let max: i64 = tx
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))
            .map_err(crate::db::sql("reading events"))?;
        let since = now_ms() - 15 * 60 * 1000;
        let rows = query_rows(
            tx,
            "reading events",
            "SELECT id, at, level, vm, job, message FROM events WHERE job IS NOT NULL
             AND at > ?1 ORDER BY id DESC LIMIT 6",
            rusqlite::params![since],
            event_of,
        )?;
        Ok((rows, max))
    });
    r.unwrap_or_default()
}

/// A time in ms since 1970 as UTC text.
pub(crate) fn utc(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(m) => lifeboat_policy::format_utc(UNIX_EPOCH + Duration::from_millis(m))
            .replace('T', " ")
            .replace('Z', " UTC"),
        Err(_) => "-".to_string(),
    }
}

/// Every page: navigation, notifications, the content.
pub(crate) fn layout(p: &Portal, s: &Session, title: &str, content: Markup) -> Markup {
    let (notes, max) = recent_notes(&p.vault);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Lifeboat" }
                (style())
                script src="/portal/assets/htmx.min.js" {}
                script src="/portal/assets/portal.js" defer {}
            }
            body {
                header {
                    nav {
                        strong { "Lifeboat" }
                        a href="/portal/" { "Replicated items" }
                        a href="/portal/groups" { "Groups" }
                        a href="/portal/plans" { "Plans" }
                        a href="/portal/jobs" { "Jobs" }
                        form.inline method="post" action="/portal/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button #logout type="submit" { "Sign out" }
                        }
                    }
                }
                aside #notifications data-since=(max) {
                    h2 { "Notifications" }
                    ul #notes {
                        @for e in &notes {
                            li class={ "note " (e.level) } { (utc(e.at)) " " (e.message) }
                        }
                    }
                }
                main { h1 { (title) } (content) }
            }
        }
    }
}

fn style() -> Markup {
    html! { style { (PreEscaped(CSS)) } }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b}\
header{background:#0b3d62;color:#fff;padding:.5em 1em}\
nav{display:flex;gap:1.2em;align-items:center}nav a{color:#fff}\
form.inline{display:inline;margin-left:auto}\
main{padding:1em 1.5em;max-width:70em}\
aside#notifications{float:right;width:26em;margin:1em;padding:.5em;border:1px solid #ccc;\
background:#fafafa;font-size:.9em}aside h2{font-size:1em;margin:.2em 0}\
ul#notes{list-style:none;padding:0;margin:0}li.note{padding:.2em 0;border-bottom:1px solid #eee}\
li.error{color:#a00}li.progress{color:#555}\
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.3em .6em;\
text-align:left}\
.error{color:#a00;background:#fee;padding:.5em;border:1px solid #e99}\
.warning{background:#fff6d6;padding:.5em;border:1px solid #e5c100}\
.healthy{color:#070}.critical{color:#a00}\
p#readiness-summary{margin:0 0 .3em}li.pass{color:#070}li.fail{color:#a00}ul#readiness-checks{margin:.3em 0;padding-left:1.2em}\
form.inline-form{display:inline}\
a.button,button{display:inline-block;padding:.35em .9em;margin:.2em;border:1px solid #0b3d62;\
background:#e8f0f8;color:#0b3d62;text-decoration:none;border-radius:3px;cursor:pointer}\
main.login{max-width:24em;margin:5em auto}main.login input{display:block;width:100%;\
margin:.5em 0}dl{display:grid;grid-template-columns:14em 1fr}dt{font-weight:bold}";
