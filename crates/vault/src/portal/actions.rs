//! The operations' dialogs (GET) and their submission (POST, through [`Vault::start`]).
//!
//! [`Vault::start`]: crate::service::Vault::start

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use lifeboat_types::Operation;
use maud::{html, Markup};
use serde::Deserialize;

use super::pages::{item_page, op_label, vault_error};
use super::{check_csrf, layout, message, utc, Portal, Session};
use crate::model::{Item, OperationRequest};

/// The operation named in the path, if the portal offers it.
fn operation(op: &str) -> Result<Operation, String> {
    op.parse::<Operation>()
        .ok()
        .filter(|o| *o != Operation::EnableProtection)
        .ok_or_else(|| format!("no operation {op:?} in the portal"))
}

/// The dialog of an operation on an item.
pub(super) async fn dialog(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((vm, op)): Path<(String, String)>,
) -> Response {
    let o = match operation(&op) {
        Ok(o) => o,
        Err(text) => return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text),
    };
    let item = match p.vault.item(&vm) {
        Ok(i) => i,
        Err(e) => return vault_error(&p, &s, &vm, &e),
    };
    let title = format!("{} · VM {vm}", op_label(o.as_str()));
    if !item.allowed_operations.iter().any(|a| a == o.as_str()) {
        let text = format!(
            "{} is not possible while VM {vm} is {}: allowed now: {}",
            op_label(o.as_str()),
            item.state_label,
            allowed(&item)
        );
        return message(&p, &s, StatusCode::CONFLICT, &title, &text);
    }
    let form = match o {
        Operation::Failover | Operation::ChangeRecoveryPoint | Operation::TestFailover => {
            point_form(&p, &s, &item, o).await
        }
        Operation::Commit => confirm_form(
            &s,
            &item,
            o,
            html! {
                p #warning .warning {
                    "Commit deletes every other recovery point of VM " (vm) ": the recovery \
                     point it runs from can no longer be changed. Commit once the VM works in "
                    (item.active_region) "."
                }
            },
        ),
        Operation::Reprotect => reprotect_form(&p, &s, &item).await,
        Operation::CleanupTestFailover => confirm_form(
            &s,
            &item,
            o,
            html! {
                p { "Removes the drill's copy of VM " (vm) " and records the drill." }
                label for="drill-notes" { "Notes" }
                br;
                textarea #drill-notes name="notes" rows="4" cols="60" {}
            },
        ),
        _ => confirm_form(
            &s,
            &item,
            o,
            html! {
                p #warning .warning {
                    "Replication of VM " (vm) " stops and its recovery points are deleted."
                }
            },
        ),
    };
    layout(&p, &s, &title, form).into_response()
}

fn allowed(item: &Item) -> String {
    if item.allowed_operations.is_empty() {
        "none".to_string()
    } else {
        item.allowed_operations.join(", ")
    }
}

/// A form that posts operation `o` on `item`, with `fields` and a confirm button.
fn confirm_form(s: &Session, item: &Item, o: Operation, fields: Markup) -> Markup {
    let action = format!("/portal/items/{}/{}", item.vm, o.as_str());
    let cancel = format!("/portal/items/{}", item.vm);
    op_form(s, &action, &cancel, op_label(o.as_str()), fields)
}

/// A dialog's form: posts to `action` with the session's CSRF token and `fields`; its confirm
/// button says `label`, Cancel goes back to `cancel`.
pub(super) fn op_form(
    s: &Session,
    action: &str,
    cancel: &str,
    label: &str,
    fields: Markup,
) -> Markup {
    html! {
        form #op-form method="post" action=(action) {
            input type="hidden" name="csrf" value=(s.csrf);
            (fields)
            p {
                button #confirm type="submit" { (label) }
                a.button #cancel href=(cancel) { "Cancel" }
            }
        }
    }
}

/// Radio buttons `point` (value, label, help), the first checked.
pub(super) fn point_choices(choices: &[(&str, &str, &str)]) -> Markup {
    html! {
        @for (i, (v, label, help)) in choices.iter().enumerate() {
            div {
                input type="radio" name="point" id={ "point-" (v) } value=(v) checked[i == 0];
                label for={ "point-" (v) } { strong { (label) } " — " (help) }
            }
        }
    }
}

/// Failover, change recovery point, test failover: the recovery point (and the shutdown).
async fn point_form(p: &Portal, s: &Session, item: &Item, o: Operation) -> Markup {
    let points = p.vault.points(&item.vm).await;
    let choices = [
        (
            "latest-processed",
            "Latest processed",
            "the newest point already processed: no processing time, lowest RTO",
        ),
        (
            "latest",
            "Latest",
            "process all data that reached the target region first, then fail over to it: \
             lowest RPO",
        ),
        (
            "latest-app-consistent",
            "Latest app-consistent",
            "the newest point taken with the guest's filesystems frozen",
        ),
        ("custom", "Custom", "a point from the list"),
    ];
    let fields = html! {
        p { "From " (item.source_region) " to " (item.target_region) "." }
        fieldset #recovery-point {
            legend { "Recovery point" }
            (point_choices(&choices))
            @match &points {
                Ok(pts) => {
                    select #custom-point name="custom_point" {
                        @for pt in pts.iter().rev() {
                            option value=(pt.id) {
                                (utc(pt.time)) " · " (pt.kind) " · " (pt.disks) " · " (pt.id)
                            }
                        }
                    }
                }
                Err(e) => p.error { "the recovery points cannot be listed: " (e.to_string()) }
            }
        }
        @if o == Operation::Failover {
            p {
                input #shutdown type="checkbox" name="shutdown" value="on";
                label for="shutdown" { "Shut down machine before beginning failover" }
            }
            p {
                label for="shutdown-timeout" { "Seconds the guest gets to power off " }
                input #shutdown-timeout type="number" name="shutdown_timeout" min="1" max="600" value="30";
            }
            p.hint { "Best effort: the failover goes on if the machine cannot be shut down." }
        }
    };
    confirm_form(s, item, o, fields)
}

/// Re-protect: the direction and the resources created "(new)" and reused, then confirm.
async fn reprotect_form(p: &Portal, s: &Session, item: &Item) -> Markup {
    let plan = p.vault.reprotect_plan(&item.vm).await;
    let list = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let fields = html! {
        @match &plan {
            Ok(plan) => {
                dl #reprotect-plan {
                    dt { "Direction" } dd #reprotect-direction { (plan["direction"].as_str().unwrap_or("-")) }
                    dt { "Resources created" }
                    dd { ul #reprotect-new { @for r in list(plan, "create") { li { (r) } } } }
                    dt { "Resources reused" }
                    dd { ul #reprotect-reused { @for r in list(plan, "reuse") { li { (r) } } } }
                    dt { "Data sent" } dd #reprotect-sync { (plan["sync"].as_str().unwrap_or("-")) }
                }
            }
            Err(e) => p #error .error { "the re-protect plan cannot be made: " (e.to_string()) }
        }
    };
    confirm_form(s, item, Operation::Reprotect, fields)
}

/// The fields of the portal's operation forms (items, groups, plans, runs, cuts; all optional
/// but the CSRF token).
#[derive(Deserialize)]
pub(super) struct OpForm {
    csrf: String,
    #[serde(default)]
    pub(super) point: Option<String>,
    #[serde(default)]
    custom_point: Option<String>,
    /// A group's cut (`cut-<id>`).
    #[serde(default)]
    pub(super) cut: Option<String>,
    /// The kind of a cut.
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) shutdown: Option<String>,
    #[serde(default)]
    shutdown_timeout: Option<String>,
    #[serde(default)]
    pub(super) notes: Option<String>,
}

/// The form of a POST (`what` names it in the refusal), its CSRF token checked.
pub(super) fn read_form(
    p: &Portal,
    s: &Session,
    b: &Bytes,
    what: &str,
) -> Result<OpForm, Box<Response>> {
    let f: OpForm = serde_urlencoded::from_bytes(b).map_err(|e| {
        let text = format!("bad {what} form: {e}");
        Box::new(message(
            p,
            s,
            StatusCode::BAD_REQUEST,
            "Form refused",
            &text,
        ))
    })?;
    match check_csrf(p, s, &f.csrf) {
        Some(r) => Err(Box::new(r)),
        None => Ok(f),
    }
}

/// Starts an operation from its dialog; shows its job, or the vault's refusal on the item.
pub(super) async fn operate(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((vm, op)): Path<(String, String)>,
    b: Bytes,
) -> Response {
    let o = match operation(&op) {
        Ok(o) => o,
        Err(text) => return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text),
    };
    let f = match read_form(&p, &s, &b, op_label(o.as_str())) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let takes_point = matches!(
        o,
        Operation::Failover | Operation::ChangeRecoveryPoint | Operation::TestFailover
    );
    let recovery_point =
        if takes_point {
            match f.point.as_deref().filter(|x| !x.is_empty()) {
                None => None,
                Some("custom") => match f.custom_point.filter(|x| !x.trim().is_empty()) {
                    Some(c) => Some(c.trim().to_string()),
                    None => return message(
                        &p,
                        &s,
                        StatusCode::BAD_REQUEST,
                        "Form refused",
                        "Custom recovery point chosen but none selected: pick one from the list",
                    ),
                },
                Some(x @ ("latest-processed" | "latest" | "latest-app-consistent")) => {
                    Some(x.to_string())
                }
                Some(x) => {
                    return message(
                        &p,
                        &s,
                        StatusCode::BAD_REQUEST,
                        "Form refused",
                        &format!(
                            "unknown recovery point choice {x:?}: use latest-processed, latest, \
                         latest-app-consistent or custom"
                        ),
                    )
                }
            }
        } else {
            None
        };
    let shutdown_source = o == Operation::Failover && f.shutdown.is_some();
    let shutdown_timeout_secs = match f.shutdown_timeout.as_deref().map(str::trim) {
        Some(t) if shutdown_source && !t.is_empty() => match t.parse::<u64>() {
            Ok(n) if (1..=600).contains(&n) => Some(n),
            _ => {
                return message(
                    &p,
                    &s,
                    StatusCode::BAD_REQUEST,
                    "Form refused",
                    &format!("bad shutdown timeout {t:?}: give 1 to 600 seconds"),
                )
            }
        },
        _ => None,
    };
    let req = OperationRequest {
        recovery_point,
        shutdown_source,
        shutdown_timeout_secs,
        notes: if o == Operation::CleanupTestFailover {
            f.notes.filter(|n| !n.trim().is_empty())
        } else {
            None
        },
        ..OperationRequest::default()
    };
    match p.vault.start(&vm, o, &req) {
        Ok(job) => Redirect::to(&format!("/portal/jobs/{}", job.id)).into_response(),
        Err(e) if p.vault.item(&vm).is_ok() => {
            item_page(&p, &s, &vm, Some((e.status(), e.to_string()))).await
        }
        Err(e) => vault_error(&p, &s, &vm, &e),
    }
}
