//! Replication groups in the portal: the list, a group's page (its members, its cuts and
//! points, and only the operations every member's state allows), the dialogs of the group
//! operations, and on-demand cuts. Everything goes through the vault in-process
//! ([`Vault::groups`], [`Vault::group_points`], [`Vault::group_operation`],
//! [`Vault::cut_group`]), as `/api/groups*` does.
//!
//! [`Vault::groups`]: crate::service::Vault::groups
//! [`Vault::group_points`]: crate::service::Vault::group_points
//! [`Vault::group_operation`]: crate::service::Vault::group_operation
//! [`Vault::cut_group`]: crate::service::Vault::cut_group

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use lifeboat_types::{CheckpointKind, ItemState, Operation};
use maud::{html, Markup};

use super::actions::{op_form, point_choices, read_form, OpForm};
use super::pages::{health_label, status, vault_error};
use super::{layout, message, utc, Portal, Session};
use crate::error::VaultError;
use crate::groups::Group;
use crate::model::{HealthInfo, Item, OperationRequest};

/// The group operations, in the order of their buttons, with their labels.
pub(crate) const GROUP_OPERATIONS: [(&str, &str); 5] = [
    ("failover", "Failover"),
    ("test-failover", "Test failover"),
    ("cleanup-test-failover", "Cleanup test failover"),
    ("commit", "Commit"),
    ("reprotect", "Re-protect"),
];

/// A member of a group: its item and health (or why they cannot be read).
pub(crate) struct Member {
    pub(crate) vm: String,
    pub(crate) item: Result<Item, String>,
    pub(crate) health: Result<HealthInfo, String>,
}

async fn members(p: &Portal, g: &Group) -> Vec<Member> {
    let mut out = Vec::new();
    for vm in &g.vms {
        let item = p.vault.item(vm).map_err(|e| e.to_string());
        let health = p.vault.health(vm).await.map_err(|e| e.to_string());
        out.push(Member {
            vm: vm.clone(),
            item,
            health,
        });
    }
    out
}

/// The group operations every member allows now (none while a member is busy or unreadable).
pub(crate) fn offered(members: &[Member]) -> Vec<(&'static str, &'static str)> {
    if members.is_empty() {
        return Vec::new();
    }
    GROUP_OPERATIONS
        .iter()
        .copied()
        .filter(|(op, _)| {
            members.iter().all(|m| {
                m.item
                    .as_ref()
                    .is_ok_and(|i| i.job.is_none() && i.allowed_operations.iter().any(|a| a == op))
            })
        })
        .collect()
}

/// Whether a cut can be made now: every member replicates and none is busy.
pub(crate) fn can_cut(members: &[Member]) -> bool {
    !members.is_empty()
        && members.iter().all(|m| {
            m.item.as_ref().is_ok_and(|i| {
                i.state
                    .parse::<ItemState>()
                    .is_ok_and(crate::service::replicates)
            })
        })
}

/// "a Protected, b Failed over": the members' states, for refusals.
fn states(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| match &m.item {
            Ok(i) => format!("{} {}", m.vm, i.state_label),
            Err(e) => format!("{} ({e})", m.vm),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A cut's time (ns since 1970) as UTC text.
fn utc_ns(ns: u64) -> String {
    utc(i64::try_from(ns / 1_000_000).unwrap_or(-1))
}

fn member_health(m: &Member) -> Markup {
    match &m.health {
        Ok(h) => html! { span class=(h.health) { (health_label(&h.health)) } },
        Err(e) => html! { span.error { "unknown: " (e) } },
    }
}

/// The replication groups.
pub(super) async fn list(State(p): State<Portal>, Extension(s): Extension<Session>) -> Response {
    let groups = match p.vault.groups() {
        Ok(g) => g,
        Err(e) => return vault_error(&p, &s, "Replication groups", &e),
    };
    let mut rows = Vec::new();
    for g in groups {
        let ms = members(&p, &g).await;
        let newest = p.vault.newest_cuts(&g.name).unwrap_or_default();
        rows.push((g, ms, newest));
    }
    let crash = CheckpointKind::CrashConsistent.to_string();
    let app = CheckpointKind::AppConsistent.to_string();
    let body = html! {
        table #groups {
            thead { tr {
                th { "Name" } th { "Members" } th { "Policy" }
                th { "Latest multi-VM crash-consistent cut" } th { "Latest multi-VM app-consistent cut" }
            } }
            tbody {
                @for (g, ms, newest) in &rows {
                    tr data-group=(g.name) {
                        td.name { a href={ "/portal/groups/" (g.name) } { (g.name) } }
                        td.members {
                            ul { @for m in ms {
                                li data-vm=(m.vm) {
                                    a href={ "/portal/items/" (m.vm) } { (m.vm) } ": "
                                    @match &m.item { Ok(i) => (status(i)), Err(e) => span.error { (e) } }
                                    ", " (member_health(m))
                                }
                            } }
                        }
                        td.policy {
                            @match ms.first().and_then(|m| m.item.as_ref().ok()) {
                                Some(i) => (i.policy),
                                None => "-",
                            }
                        }
                        td.crash-cut { @match newest.get(&crash) { Some(ns) => (utc_ns(*ns)), None => "none yet" } }
                        td.app-cut { @match newest.get(&app) { Some(ns) => (utc_ns(*ns)), None => "none yet" } }
                    }
                }
            }
        }
        @if rows.is_empty() {
            p #empty { "No replication group. Create one with " code { "lifeboat group create" } "." }
        }
    };
    layout(&p, &s, "Replication groups", body).into_response()
}

/// A group's page.
pub(super) async fn group(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
) -> Response {
    group_page(&p, &s, &name, None).await
}

/// The page of group `name`, with `error` (the vault's message and its status) on top.
async fn group_page(
    p: &Portal,
    s: &Session,
    name: &str,
    error: Option<(StatusCode, String)>,
) -> Response {
    let title = format!("Replication group {name}");
    let g = match p.vault.group(name) {
        Ok(g) => g,
        Err(e) => return vault_error(p, s, &title, &e),
    };
    let panel = panel_markup(p, s, &g).await;
    let points = p.vault.group_points(name).await;
    let body = html! {
        @if let Some((_, e)) = &error { p #error .error { (e) } }
        (panel)
        h2 { "Cuts and group points" }
        p.hint { "A cut is a group point once every member's target store has processed it." }
        @match &points {
            Ok(pts) => {
                table #group-points {
                    thead { tr {
                        th { "Cut" } th { "Time" } th { "Kind" } th { "Group point" }
                        @for vm in &g.vms { th { (vm) } }
                    } }
                    tbody {
                        @for pt in pts {
                            tr data-cut=(pt.cut.id) {
                                td { "cut-" (pt.cut.id) } td { (utc_ns(pt.cut.time_ns)) } td { (pt.cut.kind) }
                                td.complete { @if pt.complete { "yes" } @else { "not processed yet" } }
                                @for vm in &g.vms {
                                    td { @match pt.points.get(vm).cloned().flatten() { Some(id) => (id), None => "-" } }
                                }
                            }
                        }
                    }
                }
                @if pts.is_empty() { p #no-cuts { "No cut yet." } }
            }
            Err(e) => { p.error { "the group's points cannot be read: " (e.to_string()) } }
        }
    };
    let status = error.map(|(st, _)| st).unwrap_or(StatusCode::OK);
    (status, layout(p, s, &title, body)).into_response()
}

/// The group's panel alone (htmx refreshes it while a member's job runs).
pub(super) async fn panel(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
) -> Response {
    match p.vault.group(&name) {
        Ok(g) => panel_markup(&p, &s, &g).await.into_response(),
        Err(e) => (e.status(), html! { p.error { (e.to_string()) } }).into_response(),
    }
}

/// Members with their state, health and job; the cut buttons; the operations allowed.
async fn panel_markup(p: &Portal, s: &Session, g: &Group) -> Markup {
    let ms = members(p, g).await;
    let busy = ms
        .iter()
        .any(|m| m.item.as_ref().is_ok_and(|i| i.job.is_some()));
    let ops = offered(&ms);
    let cut = can_cut(&ms);
    let url = format!("/portal/groups/{}/panel", g.name);
    let policy = ms
        .first()
        .and_then(|m| m.item.as_ref().ok())
        .map(|i| i.policy.clone());
    html! {
        section #group-panel hx-get=[busy.then_some(&url)] hx-trigger=[busy.then_some("every 1s")]
            hx-swap=[busy.then_some("outerHTML")] {
            dl {
                dt { "Policy" } dd #group-policy { @match &policy { Some(p) => (p), None => "-" } }
                dt { "Cuts recorded" } dd #group-cuts { (g.cuts) }
                dt { "Created" } dd { (utc(g.created_at)) }
            }
            table #members {
                thead { tr { th { "VM" } th { "Status" } th { "Replication health" } th { "Active region" } th { "Job" } } }
                tbody {
                    @for m in &ms {
                        tr data-vm=(m.vm) {
                            td { a href={ "/portal/items/" (m.vm) } { (m.vm) } }
                            @match &m.item {
                                Ok(i) => {
                                    td.status data-state=(i.state) { (status(i)) }
                                    td.health { (member_health(m)) }
                                    td { (i.active_region) }
                                    td { @if let Some(j) = i.job { a href={ "/portal/jobs/" (j) } { "job " (j) } } }
                                }
                                Err(e) => { td.error colspan="4" { (e) } }
                            }
                        }
                    }
                }
            }
            div #actions {
                @if cut {
                    @for (kind, label) in [("crash-consistent", "Cut now (crash-consistent)"), ("app-consistent", "Cut now (app-consistent)")] {
                        form.inline-form method="post" action={ "/portal/groups/" (g.name) "/cut" } {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="kind" value=(kind);
                            button id={ "cut-" (kind) } type="submit" { (label) }
                        }
                    }
                }
                @for (op, label) in &ops {
                    a.button id={ "gop-" (op) } href={ "/portal/groups/" (g.name) "/" (op) } { (label) }
                }
                @if ops.is_empty() && !cut {
                    span.hint { "No operation is possible now: " (states(&ms)) "." }
                }
            }
        }
    }
}

/// The group operation named in the path.
fn group_op(op: &str) -> Result<(Operation, &'static str), String> {
    GROUP_OPERATIONS
        .iter()
        .find(|(o, _)| *o == op)
        .and_then(|(o, l)| o.parse::<Operation>().ok().map(|x| (x, *l)))
        .ok_or_else(|| {
            format!(
                "no group operation {op:?}: use failover, test-failover, cleanup-test-failover, \
                 commit or reprotect"
            )
        })
}

/// The dialog of a group operation.
pub(super) async fn dialog(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, op)): Path<(String, String)>,
) -> Response {
    let (o, label) = match group_op(&op) {
        Ok(x) => x,
        Err(text) => return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text),
    };
    let title = format!("{label} · group {name}");
    let g = match p.vault.group(&name) {
        Ok(g) => g,
        Err(e) => return vault_error(&p, &s, &title, &e),
    };
    let ms = members(&p, &g).await;
    if !offered(&ms).iter().any(|(x, _)| *x == op) {
        let text = format!(
            "{label} of replication group {name} is not possible now: {}",
            states(&ms)
        );
        return message(&p, &s, StatusCode::CONFLICT, &title, &text);
    }
    let fields = match o {
        Operation::Failover | Operation::TestFailover => {
            let points = p.vault.group_points(&name).await;
            let choices = [
                (
                    "latest-multi-vm-processed",
                    "Latest multi-VM processed",
                    "the newest cut every member has processed",
                ),
                (
                    "latest-multi-vm-app-consistent",
                    "Latest multi-VM app-consistent",
                    "the newest such cut taken with the guests' filesystems frozen",
                ),
                ("cut", "A specific cut", "one from the list"),
            ];
            html! {
                p { "Every member fails over to its own point of one cut, in one go: "
                    (g.vms.join(", ")) "." }
                fieldset #recovery-point {
                    legend { "Group point" }
                    (point_choices(&choices))
                    @match &points {
                        Ok(pts) => {
                            select #group-cut name="cut" {
                                @for pt in pts.iter().filter(|pt| pt.complete) {
                                    option value={ "cut-" (pt.cut.id) } {
                                        (utc_ns(pt.cut.time_ns)) " · " (pt.cut.kind) " · cut-" (pt.cut.id)
                                    }
                                }
                            }
                        }
                        Err(e) => p.error { "the group's points cannot be listed: " (e.to_string()) }
                    }
                }
                @if o == Operation::Failover {
                    p {
                        input #shutdown type="checkbox" name="shutdown" value="on";
                        label for="shutdown" { "Shut down machines before beginning failover" }
                    }
                }
            }
        }
        Operation::Commit => html! {
            p #warning .warning {
                "Commit deletes every other recovery point of the group's VMs ("
                (g.vms.join(", ")) "): the points they run from can no longer be changed."
            }
        },
        Operation::CleanupTestFailover => html! {
            p { "Removes the drill's copies of " (g.vms.join(", ")) " and records the drill." }
            label for="drill-notes" { "Notes" }
            br;
            textarea #drill-notes name="notes" rows="4" cols="60" {}
        },
        _ => html! {
            p #reprotect-note {
                "Re-protect reverses the replication of every member (" (g.vms.join(", "))
                "): the original disks are reused, only the blocks that differ are sent."
            }
        },
    };
    let form = op_form(
        &s,
        &format!("/portal/groups/{name}/{op}"),
        &format!("/portal/groups/{name}"),
        label,
        fields,
    );
    layout(&p, &s, &title, form).into_response()
}

/// The group point a form chose (none for operations that take none).
fn chosen_point(o: Operation, f: &OpForm) -> Result<Option<String>, String> {
    if !matches!(o, Operation::Failover | Operation::TestFailover) {
        return Ok(None);
    }
    match f.point.as_deref().filter(|x| !x.is_empty()) {
        None => Ok(None),
        Some(x @ ("latest-multi-vm-processed" | "latest-multi-vm-app-consistent")) => {
            Ok(Some(x.to_string()))
        }
        Some("cut") => f
            .cut
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| Some(c.to_string()))
            .ok_or_else(|| {
                "A specific cut chosen but none selected: pick one from the list".into()
            }),
        Some(x) => Err(format!(
            "unknown group point choice {x:?}: use latest-multi-vm-processed, \
             latest-multi-vm-app-consistent or cut"
        )),
    }
}

/// Starts a group operation; shows the group, or the vault's refusal on it.
pub(super) async fn operate(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, op)): Path<(String, String)>,
    b: Bytes,
) -> Response {
    let (o, label) = match group_op(&op) {
        Ok(x) => x,
        Err(text) => return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text),
    };
    let f = match read_form(&p, &s, &b, label) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let recovery_point = match chosen_point(o, &f) {
        Ok(x) => x,
        Err(text) => return message(&p, &s, StatusCode::BAD_REQUEST, "Form refused", &text),
    };
    let req = OperationRequest {
        recovery_point,
        shutdown_source: o == Operation::Failover && f.shutdown.is_some(),
        notes: if o == Operation::CleanupTestFailover {
            f.notes.filter(|n| !n.trim().is_empty())
        } else {
            None
        },
        ..OperationRequest::default()
    };
    let r = p.vault.group_operation(&name, o, &req).await;
    done(&p, &s, &name, r.map(|_| ())).await
}

/// After a POST on group `name`: back to its page, or its page with the vault's refusal.
async fn done(p: &Portal, s: &Session, name: &str, r: Result<(), VaultError>) -> Response {
    match r {
        Ok(()) => Redirect::to(&format!("/portal/groups/{name}")).into_response(),
        Err(e) if p.vault.group(name).is_ok() => {
            group_page(p, s, name, Some((e.status(), e.to_string()))).await
        }
        Err(e) => vault_error(p, s, &format!("Replication group {name}"), &e),
    }
}

/// Cuts a group point now.
pub(super) async fn cut(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
    b: Bytes,
) -> Response {
    let f = match read_form(&p, &s, &b, "cut") {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let kind = match f
        .kind
        .as_deref()
        .unwrap_or("crash-consistent")
        .parse::<CheckpointKind>()
    {
        Ok(k) => k,
        Err(e) => return message(&p, &s, StatusCode::BAD_REQUEST, "Form refused", &e),
    };
    let r = p.vault.cut_group(&name, kind).await;
    done(&p, &s, &name, r.map(|_| ())).await
}
