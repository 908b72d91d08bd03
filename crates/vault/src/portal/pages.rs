//! The portal's read-only pages: replicated items, an item's overview, jobs.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use maud::{html, Markup};
use serde::Deserialize;

use super::{layout, message, utc, Portal, Session};
use crate::error::VaultError;
use crate::model::{Event, HealthInfo, Item, Job, PointInfo};
use crate::service::{event_of, query_rows};

/// The operations the portal offers, in the order of their buttons, with their labels.
pub(crate) const OPERATIONS: [(&str, &str); 7] = [
    ("failover", "Failover"),
    ("change-recovery-point", "Change recovery point"),
    ("commit", "Commit"),
    ("reprotect", "Re-protect"),
    ("test-failover", "Test failover"),
    ("cleanup-test-failover", "Cleanup test failover"),
    ("disable-protection", "Disable replication"),
];

/// The label of an operation (its kebab-case name when unknown).
pub(crate) fn op_label(op: &str) -> &str {
    OPERATIONS
        .iter()
        .find(|(o, _)| *o == op)
        .map(|(_, l)| *l)
        .unwrap_or(op)
}

/// An RPO for people (`0.8 s`, `3 min 12 s`, `-`).
fn rpo(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
        None => "-".to_string(),
    }
}

/// "Protected", or "Enabling protection (42% synchronized)".
pub(crate) fn status(i: &Item) -> String {
    if i.state == "enabling-protection" {
        format!("{} ({}% synchronized)", i.state_label, i.percent_synced)
    } else {
        i.state_label.clone()
    }
}

/// The health of an item (`unknown` with the reason when the store cannot be read).
async fn health(p: &Portal, vm: &str) -> Result<HealthInfo, String> {
    p.vault.health(vm).await.map_err(|e| e.to_string())
}

pub(crate) fn health_label(h: &str) -> String {
    let mut c = h.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn point_text(pt: &Option<PointInfo>) -> String {
    match pt {
        Some(pt) => format!("{} ({}, {})", utc(pt.time), pt.id, pt.disks),
        None => "none yet".to_string(),
    }
}

#[derive(Deserialize, Default)]
struct ItemFilter {
    #[serde(default)]
    health: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

const HEALTHS: [&str; 4] = ["healthy", "warning", "critical", "none"];

/// Replicated items, filtered by `?health=` and `?state=`.
pub(super) async fn items(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    RawQuery(q): RawQuery,
) -> Response {
    let bad = |m: String| message(&p, &s, StatusCode::BAD_REQUEST, "Replicated items", &m);
    let f: ItemFilter = match serde_urlencoded::from_str(q.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => {
            return bad(format!(
                "bad filter: {e}; use ?health=healthy|warning|critical|none&state=<state>"
            ))
        }
    };
    let f = ItemFilter {
        health: f.health.filter(|h| !h.is_empty()),
        state: f.state.filter(|h| !h.is_empty()),
    };
    if let Some(h) = &f.health {
        if !HEALTHS.contains(&h.as_str()) {
            return bad(format!(
                "unknown health {h:?}: use healthy, warning, critical or none"
            ));
        }
    }
    if let Some(st) = &f.state {
        if st.parse::<lifeboat_types::ItemState>().is_err() {
            return bad(format!(
                "unknown state {st:?}: use an item state such as protected or failed-over"
            ));
        }
    }
    let all = match p.vault.items() {
        Ok(i) => i,
        Err(e) => return vault_error(&p, &s, "Replicated items", &e),
    };
    let mut rows = Vec::new();
    for i in all {
        if f.state.as_ref().is_some_and(|st| *st != i.state) {
            continue;
        }
        let h = health(&p, &i.vm).await;
        let hname = h
            .as_ref()
            .map(|h| h.health.clone())
            .unwrap_or_else(|_| "unknown".to_string());
        if f.health.as_ref().is_some_and(|w| *w != hname) {
            continue;
        }
        rows.push((i, h, hname));
    }
    let states = [
        "protected",
        "enabling-protection",
        "failed-over",
        "failover-committed",
        "test-failed-over",
        "not-protected",
    ];
    let body = html! {
        form #filter method="get" action="/portal/" {
            label { "Health "
                select name="health" {
                    option value="" { "All" }
                    @for h in HEALTHS {
                        option value=(h) selected[f.health.as_deref() == Some(h)] { (health_label(h)) }
                    }
                }
            }
            " "
            label { "State "
                select name="state" {
                    option value="" { "All" }
                    @for st in states {
                        option value=(st) selected[f.state.as_deref() == Some(st)] { (st) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        table #items {
            thead { tr {
                th { "Name" } th { "Replication health" } th { "Status" } th { "Active region" }
                th { "RPO" } th { "Last recovery point" }
            } }
            tbody {
                @for (i, h, hname) in &rows {
                    tr data-vm=(i.vm) {
                        td.name { a href={ "/portal/items/" (i.vm) } { (i.vm) } }
                        td.health class=(hname) { (health_label(hname)) }
                        td.status { (status(i)) }
                        td.region { (i.active_region) }
                        td.rpo { (rpo(i.rpo_ms)) }
                        td.point {
                            @match h {
                                Ok(h) => {
                                    @let newest = [&h.latest_crash_consistent, &h.latest_app_consistent]
                                        .into_iter().flatten().max_by_key(|pt| pt.time);
                                    @match newest { Some(pt) => (utc(pt.time)), None => "-" }
                                }
                                Err(_) => "-"
                            }
                        }
                    }
                }
            }
        }
        @if rows.is_empty() { p #empty { "No replicated item matches." } }
    };
    layout(&p, &s, "Replicated items", body).into_response()
}

/// Shows a vault error as a page with its status.
pub(crate) fn vault_error(p: &Portal, s: &Session, title: &str, e: &VaultError) -> Response {
    message(p, s, e.status(), title, &e.to_string())
}

/// The newest events of `vm`, newest first.
fn vm_events(p: &Portal, vm: &str, limit: i64) -> Vec<Event> {
    p.vault
        .db
        .tx("reading a VM's events", |tx| {
            query_rows(
                tx,
                "reading a VM's events",
                "SELECT id, at, level, vm, job, message FROM events WHERE vm = ?1
                 ORDER BY id DESC LIMIT ?2",
                rusqlite::params![vm, limit],
                event_of,
            )
        })
        .unwrap_or_default()
}

/// An item's overview.
pub(super) async fn item(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(vm): Path<String>,
) -> Response {
    item_page(&p, &s, &vm, None).await
}

/// The overview of `vm`, with `error` (the vault's message and its status) on top.
pub(crate) async fn item_page(
    p: &Portal,
    s: &Session,
    vm: &str,
    error: Option<(StatusCode, String)>,
) -> Response {
    let panel = match panel(p, vm).await {
        Ok(m) => m,
        Err(e) => return vault_error(p, s, vm, &e),
    };
    let events = vm_events(p, vm, 10);
    let body = html! {
        @if let Some((_, e)) = &error { p #error .error { (e) } }
        (panel)
        h2 { "Recent events" }
        table #events {
            @for e in &events {
                tr class=(e.level) { td { (utc(e.at)) } td { (e.level) } td { (e.message) } }
            }
        }
    };
    let status = error.map(|(st, _)| st).unwrap_or(StatusCode::OK);
    (status, layout(p, s, &format!("VM {vm}"), body)).into_response()
}

/// The item's panel alone (htmx refreshes it while an operation runs).
pub(super) async fn item_panel(
    State(p): State<Portal>,
    Extension(_s): Extension<Session>,
    Path(vm): Path<String>,
) -> Response {
    match panel(&p, &vm).await {
        Ok(m) => m.into_response(),
        Err(e) => (e.status(), html! { p.error { (e.to_string()) } }).into_response(),
    }
}

/// State, health, points, drills, errors and the allowed operations' buttons.
async fn panel(p: &Portal, vm: &str) -> Result<Markup, VaultError> {
    let i = p.vault.item(vm)?;
    let h = health(p, vm).await;
    let busy = i.job.is_some();
    let checks = super::readiness::gather(p, &i).await;
    let offered: Vec<(&str, &str)> = OPERATIONS
        .iter()
        .copied()
        .filter(|(o, _)| i.allowed_operations.iter().any(|a| a == o))
        .collect();
    let url = format!("/portal/items/{vm}/panel");
    Ok(html! {
        section #item-panel hx-get=[busy.then_some(&url)] hx-trigger=[busy.then_some("every 1s")]
            hx-swap=[busy.then_some("outerHTML")] {
            dl {
                dt { "Status" } dd #item-state data-state=(i.state) { (status(&i)) }
                dt { "Replication health" }
                dd #item-health {
                    @match &h {
                        Ok(h) => span class=(h.health) { (health_label(&h.health)) },
                        Err(e) => span.error { "unknown: " (e) },
                    }
                }
                @if let Ok(h) = &h {
                    @if !h.reasons.is_empty() {
                        dt { "Health reasons" }
                        dd { ul #health-reasons { @for r in &h.reasons { li { (r) } } } }
                    }
                }
                dt { "Replication" } dd #direction { (i.source_region) " → " (i.target_region) }
                dt { "Active region" } dd #active-region { (i.active_region) }
                dt { "RPO" } dd #rpo { (rpo(i.rpo_ms)) }
                dt { "Policy" } dd { (i.policy) }
                dt { "Latest crash-consistent point" }
                dd #latest-crash {
                    @match &h { Ok(h) => (point_text(&h.latest_crash_consistent)), Err(_) => "-" }
                }
                dt { "Latest app-consistent point" }
                dd #latest-app {
                    @match &h { Ok(h) => (point_text(&h.latest_app_consistent)), Err(_) => "-" }
                }
                dt { "Failover readiness" }
                dd #readiness { (super::readiness::markup(&i, &checks)) }
                @if let Some(pct) = i.hydrated_percent {
                    dt { "Disks made local" } dd { (pct) "%" }
                }
                @if let Some(d) = &i.drill {
                    dt { "Drill in place" }
                    dd #drill { "from point " (d.point) " on host " (d.host) ", since " (utc(d.started_at))
                        @if !d.succeeded { " (test failover failed: clean it up)" } }
                }
                dt { "Last drill" }
                dd #last-drill {
                    @match i.last_drill_at {
                        Some(at) => { (utc(at)) @if let Some(n) = &i.last_drill_notes { ": " (n) } }
                        None => "never",
                    }
                }
                @if let Some(g) = &i.replication_group {
                    dt { "Replication group" }
                    dd #item-group { a href={ "/portal/groups/" (g) } { (g) } }
                }
                @if let Some(e) = &i.app_error {
                    dt { "App-consistent errors" }
                    dd.error { (i.app_misses) " in a row: " (e) }
                }
                @if let Some(j) = i.job {
                    dt { "Running job" } dd #running-job { a href={ "/portal/jobs/" (j) } { "job " (j) } }
                }
            }
            div #actions {
                @for (op, label) in &offered {
                    a.button id={ "op-" (op) } href={ "/portal/items/" (vm) "/" (op) } { (label) }
                }
                @if offered.is_empty() { span.hint { "No operation is possible while the item is " (i.state_label) "." } }
            }
        }
    })
}

/// The jobs, newest first.
pub(super) async fn jobs(State(p): State<Portal>, Extension(s): Extension<Session>) -> Response {
    let jobs = match p.vault.jobs(50) {
        Ok(j) => j,
        Err(e) => return vault_error(&p, &s, "Jobs", &e),
    };
    let body = html! {
        table #jobs {
            thead { tr { th { "Job" } th { "Operation" } th { "VM" } th { "Status" } th { "Progress" } th { "Started" } } }
            tbody {
                @for j in &jobs {
                    tr data-job=(j.id) {
                        td { a href={ "/portal/jobs/" (j.id) } { (j.id) } }
                        td { (op_label(&j.operation)) }
                        td { @if let Some(vm) = &j.vm { a href={ "/portal/items/" (vm) } { (vm) } } }
                        td.status { (j.status) }
                        td { (j.progress) "%" }
                        td { (utc(j.created_at)) }
                    }
                }
            }
        }
    };
    layout(&p, &s, "Jobs", body).into_response()
}

/// The job whose id is in the path (the error as a page, or as a fragment for htmx).
fn load_job(p: &Portal, s: &Session, id: &str, fragment: bool) -> Result<Job, Box<Response>> {
    let r = id
        .parse::<i64>()
        .map_err(|_| VaultError::BadRequest(format!("bad job id {id:?}: a job id is a number")))
        .and_then(|id| p.vault.job(id));
    r.map_err(|e| {
        Box::new(if fragment {
            (e.status(), html! { p.error { (e.to_string()) } }).into_response()
        } else {
            vault_error(p, s, "Job", &e)
        })
    })
}

/// One job with its steps.
pub(super) async fn job(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    match load_job(&p, &s, &id, false) {
        Ok(j) => {
            let title = format!("Job {}: {}", j.id, op_label(&j.operation));
            layout(&p, &s, &title, job_panel_markup(&j)).into_response()
        }
        Err(r) => *r,
    }
}

/// The job's panel alone (htmx refreshes it while the job runs).
pub(super) async fn job_panel(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    match load_job(&p, &s, &id, true) {
        Ok(j) => job_panel_markup(&j).into_response(),
        Err(r) => *r,
    }
}

fn job_panel_markup(j: &Job) -> Markup {
    let running = j.status == "running";
    let url = format!("/portal/jobs/{}/panel", j.id);
    html! {
        section #job-panel hx-get=[running.then_some(&url)] hx-trigger=[running.then_some("every 1s")]
            hx-swap=[running.then_some("outerHTML")] {
            dl {
                dt { "Operation" } dd #job-operation { (op_label(&j.operation)) }
                @if let Some(vm) = &j.vm {
                    dt { "VM" } dd { a #job-vm href={ "/portal/items/" (vm) } { (vm) } }
                }
                dt { "Status" } dd #job-status data-status=(j.status) { (j.status) }
                dt { "Progress" } dd #job-progress { (j.progress) "%" }
                @if let Some(rp) = &j.params.recovery_point { dt { "Recovery point" } dd { (rp) } }
                @if j.operation == "failover" {
                    dt { "Shut down machine first" } dd { @if j.params.shutdown_source { "yes" } @else { "no" } }
                }
                @if let Some(n) = &j.params.notes { dt { "Notes" } dd { (n) } }
                dt { "Started" } dd { (utc(j.created_at)) }
                @if let Some(f) = j.finished_at { dt { "Finished" } dd { (utc(f)) } }
            }
            @if let Some(e) = &j.error { p #job-error .error { (e) } }
            h2 { "Steps" }
            table #steps {
                thead { tr { th { "Step" } th { "Status" } th { "Details" } } }
                tbody {
                    @for st in &j.steps {
                        tr class=(st.status) {
                            td { (st.name) } td.step-status { (st.status) }
                            td { @if let Some(d) = &st.detail { (d) } }
                        }
                    }
                }
            }
        }
    }
}
