//! Recovery plans in the portal: the list, a plan's page (its ordered groups with their VMs and
//! actions, its runs, the operations of the whole plan), the confirm dialogs, and a run's page
//! (its steps, live while it runs; Confirm when it waits for a manual action; Retry and Skip
//! when a step failed). Everything goes through the vault in-process ([`Vault::plans`],
//! [`Vault::start_plan`], [`Vault::confirm_plan_run`], ...), as `/api/plans*` does.
//!
//! [`Vault::plans`]: crate::service::Vault::plans
//! [`Vault::start_plan`]: crate::service::Vault::start_plan
//! [`Vault::confirm_plan_run`]: crate::service::Vault::confirm_plan_run

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use lifeboat_types::ItemState;
use maud::{html, Markup};

use super::actions::{op_form, point_choices, read_form};
use super::groups::GROUP_OPERATIONS;
use super::pages::{status, vault_error};
use super::{layout, message, utc, Portal, Session};
use crate::error::VaultError;
use crate::model::Item;
use crate::plan::{steps_for, PlanAction, PlanInfo, PlanOperation, PlanRequest, PlanRun};

/// The label of a plan operation.
fn label(op: PlanOperation) -> &'static str {
    GROUP_OPERATIONS
        .iter()
        .find(|(o, _)| *o == op.as_str())
        .map(|(_, l)| *l)
        .unwrap_or("Operation")
}

/// Whether a run is still going (no other can start).
fn active(run: &PlanRun) -> bool {
    run.status == "running" || run.status == "waiting"
}

/// Whether `op` can start on a plan whose VMs are `items` (`None`: not protected): every VM
/// allows it or is already where it leads, and at least one allows it.
pub(crate) fn plan_allows(op: PlanOperation, items: &[Option<Item>]) -> bool {
    let item_op = op.item_operation();
    let mut some = false;
    for i in items {
        let Some(i) = i else { return false };
        if i.allowed_operations.iter().any(|a| a == item_op.as_str()) {
            some = true;
        } else if i.state.parse::<ItemState>().ok() != Some(item_op.target()) {
            return false;
        }
    }
    some
}

fn plan_items(p: &Portal, plan: &PlanInfo) -> Vec<(String, Option<Item>)> {
    plan.definition
        .groups
        .iter()
        .flat_map(|g| g.vms.iter())
        .map(|vm| (vm.clone(), p.vault.item(vm).ok()))
        .collect()
}

/// The plan operations that can start now (none while a run is active).
fn offered(plan: &PlanInfo, items: &[(String, Option<Item>)]) -> Vec<PlanOperation> {
    if plan.latest_run.as_ref().is_some_and(active) {
        return Vec::new();
    }
    let items: Vec<Option<Item>> = items.iter().map(|(_, i)| i.clone()).collect();
    PlanOperation::ALL
        .into_iter()
        .filter(|op| plan_allows(*op, &items))
        .collect()
}

fn run_link(run: &PlanRun) -> String {
    format!("/portal/plans/{}/runs/{}", run.plan, run.id)
}

/// The recovery plans.
pub(super) async fn list(State(p): State<Portal>, Extension(s): Extension<Session>) -> Response {
    let plans = match p.vault.plans() {
        Ok(x) => x,
        Err(e) => return vault_error(&p, &s, "Recovery plans", &e),
    };
    let body = html! {
        table #plans {
            thead { tr { th { "Name" } th { "Groups" } th { "VMs" } th { "Last run" } th { "Status" } } }
            tbody {
                @for pl in &plans {
                    @let vms: Vec<&str> = pl.definition.groups.iter().flat_map(|g| g.vms.iter().map(String::as_str)).collect();
                    tr data-plan=(pl.name) {
                        td.name { a href={ "/portal/plans/" (pl.name) } { (pl.name) } }
                        td.groups { (pl.definition.groups.len()) }
                        td.vms { (vms.join(", ")) }
                        @match &pl.latest_run {
                            Some(r) => {
                                td.last-run { a href=(run_link(r)) { (r.operation) " (run " (r.id) "), " (utc(r.created_at)) } }
                                td.run-status data-status=(r.status) { (r.status) }
                            }
                            None => { td.last-run { "never run" } td.run-status { "-" } }
                        }
                    }
                }
            }
        }
        @if plans.is_empty() {
            p #empty { "No recovery plan. Create one with " code { "lifeboat plan create" } "." }
        }
    };
    layout(&p, &s, "Recovery plans", body).into_response()
}

/// What an action does, for people.
fn action_text(a: &PlanAction) -> Markup {
    let on = |on: &Option<Vec<String>>| match on {
        Some(l) => l.join(", "),
        None => "failover, test-failover".to_string(),
    };
    match a {
        PlanAction::Script(x) => html! {
            "script " strong { (x.name) } " (on " (on(&x.on)) "; killed after " (x.timeout_secs) " s): "
            code { (x.command) }
        },
        PlanAction::Manual(m) => html! {
            "manual " strong { (m.name) } " (on " (on(&m.on)) "): " (m.instructions)
        },
    }
}

/// A plan's page.
pub(super) async fn plan(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path(name): Path<String>,
) -> Response {
    plan_page(&p, &s, &name, None)
}

/// The page of plan `name`, with `error` (the vault's message and its status) on top.
fn plan_page(p: &Portal, s: &Session, name: &str, error: Option<(StatusCode, String)>) -> Response {
    let title = format!("Recovery plan {name}");
    let (pl, runs) = match p.vault.plan(name).and_then(|pl| {
        let runs = p.vault.plan_runs(name, 20)?;
        Ok((pl, runs))
    }) {
        Ok(x) => x,
        Err(e) => return vault_error(p, s, &title, &e),
    };
    let items = plan_items(p, &pl);
    let state_of = |vm: &str| {
        items
            .iter()
            .find(|(v, _)| v == vm)
            .and_then(|(_, i)| i.as_ref())
            .map(status)
            .unwrap_or_else(|| "not protected".to_string())
    };
    let ops = offered(&pl, &items);
    let body = html! {
        @if let Some((_, e)) = &error { p #error .error { (e) } }
        @if let Some(r) = pl.latest_run.as_ref().filter(|r| active(r)) {
            p #active-run .warning {
                "Run " (r.id) " (" (r.operation) ") is " (r.status) ": "
                a href=(run_link(r)) { "follow it" } "; no other operation can start until it ends."
            }
        }
        div #actions {
            @for op in &ops {
                a.button id={ "pop-" (op.as_str()) } href={ "/portal/plans/" (name) "/" (op.as_str()) } { (label(*op)) }
            }
            @if ops.is_empty() && !pl.latest_run.as_ref().is_some_and(active) {
                span.hint { "No plan operation is possible with its VMs' states now." }
            }
        }
        h2 { "Groups, in order" }
        ol #plan-groups {
            @for (i, g) in pl.definition.groups.iter().enumerate() {
                li data-group=(i + 1) {
                    strong { "Group " (i + 1) }
                    @if !g.pre.is_empty() {
                        div.pre { "Before: " ul { @for a in &g.pre { li.action { (action_text(a)) } } } }
                    }
                    ul.vms {
                        @for vm in &g.vms {
                            li data-vm=(vm) { a href={ "/portal/items/" (vm) } { (vm) } ": " (state_of(vm)) }
                        }
                    }
                    @if !g.post.is_empty() {
                        div.post { "After: " ul { @for a in &g.post { li.action { (action_text(a)) } } } }
                    }
                }
            }
        }
        h2 { "Runs" }
        table #runs {
            thead { tr { th { "Run" } th { "Operation" } th { "Status" } th { "Started" } th { "Finished" } } }
            tbody {
                @for r in &runs {
                    tr data-run=(r.id) {
                        td { a href=(run_link(r)) { (r.id) } }
                        td { (r.operation) }
                        td.run-status { (r.status) }
                        td { (utc(r.created_at)) }
                        td { @if let Some(f) = r.finished_at { (utc(f)) } }
                    }
                }
            }
        }
        @if runs.is_empty() { p #no-runs { "Never run." } }
    };
    let st = error.map(|(st, _)| st).unwrap_or(StatusCode::OK);
    (st, layout(p, s, &title, body)).into_response()
}

fn plan_op(op: &str) -> Result<PlanOperation, String> {
    op.parse::<PlanOperation>()
}

/// The confirm dialog of an operation of the whole plan.
pub(super) async fn dialog(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, op)): Path<(String, String)>,
) -> Response {
    let o = match plan_op(&op) {
        Ok(o) => o,
        Err(text) => return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text),
    };
    let title = format!("{} · plan {name}", label(o));
    let pl = match p.vault.plan(&name) {
        Ok(x) => x,
        Err(e) => return vault_error(&p, &s, &title, &e),
    };
    let items = plan_items(&p, &pl);
    if !offered(&pl, &items).contains(&o) {
        let states: Vec<String> = items
            .iter()
            .map(|(vm, i)| match i {
                Some(i) => format!("{vm} {}", i.state_label),
                None => format!("{vm} not protected"),
            })
            .collect();
        let busy = match pl.latest_run.as_ref().filter(|r| active(r)) {
            Some(r) => format!(" (run {} is {})", r.id, r.status),
            None => String::new(),
        };
        let text = format!(
            "{} of recovery plan {name} is not possible now{busy}: {}",
            label(o),
            states.join(", ")
        );
        return message(&p, &s, StatusCode::CONFLICT, &title, &text);
    }
    let steps = steps_for(&pl.definition, o);
    let choices = [
        (
            "latest-processed",
            "Latest processed",
            "no processing time, lowest RTO",
        ),
        ("latest", "Latest", "process all data first: lowest RPO"),
        (
            "latest-app-consistent",
            "Latest app-consistent",
            "the newest point taken with the guests' filesystems frozen",
        ),
    ];
    let takes_point = matches!(o, PlanOperation::Failover | PlanOperation::TestFailover);
    let fields = html! {
            p { (label(o)) " of every VM of recovery plan " (name) ", group by group, in these steps:" }
            ol #plan-steps { @for st in &steps { li { (st.name) } } }
            @if takes_point {
                fieldset #recovery-point {
                    legend { "Recovery point of each VM" }
                    (point_choices(&choices))
                    p.hint { "No custom point in a recovery plan: fail a VM over alone to choose one." }
                }
            }
            @if o == PlanOperation::Failover {
                p {
                    input #shutdown type="checkbox" name="shutdown" value="on";
                    label for="shutdown" { "Shut down machines before beginning failover" }
                }
            }
            @if o == PlanOperation::CleanupTestFailover {
                label for="drill-notes" { "Notes" }
                br;
                textarea #drill-notes name="notes" rows="4" cols="60" {}
            }
            @if o == PlanOperation::Commit {
                p #warning .warning {
                    "Commit deletes every other recovery point of the plan's VMs: the points they \
                     run from can no longer be changed."
                }
            }
    };
    let form = op_form(
        &s,
        &format!("/portal/plans/{name}/{}", o.as_str()),
        &format!("/portal/plans/{name}"),
        label(o),
        fields,
    );
    layout(&p, &s, &title, form).into_response()
}

/// Starts an operation of the whole plan; shows its run, or the vault's refusal on the plan.
pub(super) async fn operate(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, op)): Path<(String, String)>,
    b: Bytes,
) -> Response {
    let o = match plan_op(&op) {
        Ok(o) => o,
        Err(text) => return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text),
    };
    let f = match read_form(&p, &s, &b, label(o)) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let takes_point = matches!(o, PlanOperation::Failover | PlanOperation::TestFailover);
    let req = PlanRequest {
        recovery_point: f.point.filter(|x| takes_point && !x.is_empty()),
        shutdown_source: o == PlanOperation::Failover && f.shutdown.is_some(),
        notes: f
            .notes
            .filter(|n| o == PlanOperation::CleanupTestFailover && !n.trim().is_empty()),
    };
    match p.vault.start_plan(&name, o, &req) {
        Ok(run) => Redirect::to(&run_link(&run)).into_response(),
        Err(e) if p.vault.plan(&name).is_ok() => {
            plan_page(&p, &s, &name, Some((e.status(), e.to_string())))
        }
        Err(e) => vault_error(&p, &s, &format!("Recovery plan {name}"), &e),
    }
}

/// The run in the path (its id parsed).
fn load_run(p: &Portal, name: &str, id: &str) -> Result<PlanRun, VaultError> {
    let id = id
        .parse::<i64>()
        .map_err(|_| VaultError::BadRequest(format!("bad run id {id:?}: a run id is a number")))?;
    p.vault.plan_run(name, id)
}

/// A run's page.
pub(super) async fn run(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    run_page(&p, &s, &name, &id, None)
}

fn run_page(
    p: &Portal,
    s: &Session,
    name: &str,
    id: &str,
    error: Option<(StatusCode, String)>,
) -> Response {
    let title = format!("Recovery plan {name}: run {id}");
    let run = match load_run(p, name, id) {
        Ok(r) => r,
        Err(e) => return vault_error(p, s, &title, &e),
    };
    let body = html! {
        @if let Some((_, e)) = &error { p #error .error { (e) } }
        p { a #run-plan href={ "/portal/plans/" (name) } { "Recovery plan " (name) } }
        (run_panel_markup(s, &run))
    };
    let st = error.map(|(st, _)| st).unwrap_or(StatusCode::OK);
    (st, layout(p, s, &title, body)).into_response()
}

/// The run's panel alone (htmx refreshes it while the run runs).
pub(super) async fn run_panel(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match load_run(&p, &name, &id) {
        Ok(r) => run_panel_markup(&s, &r).into_response(),
        Err(e) => (e.status(), html! { p.error { (e.to_string()) } }).into_response(),
    }
}

fn run_panel_markup(s: &Session, run: &PlanRun) -> Markup {
    let running = run.status == "running";
    let url = format!("{}/panel", run_link(run));
    let button = |action: &str, text: &str| {
        html! {
            form.inline-form method="post" action={ (run_link(run)) "/" (action) } {
                input type="hidden" name="csrf" value=(s.csrf);
                button id={ "run-" (action) } type="submit" { (text) }
            }
        }
    };
    html! {
        section #run-panel hx-get=[running.then_some(&url)] hx-trigger=[running.then_some("every 1s")]
            hx-swap=[running.then_some("outerHTML")] {
            dl {
                dt { "Operation" } dd #run-operation { (run.operation) }
                dt { "Status" } dd #run-status data-status=(run.status) { (run.status) }
                @if let Some(rp) = &run.params.recovery_point { dt { "Recovery point" } dd { (rp) } }
                @if run.params.shutdown_source { dt { "Shut down machines first" } dd { "yes" } }
                @if let Some(n) = &run.params.notes { dt { "Notes" } dd { (n) } }
                dt { "Started" } dd { (utc(run.created_at)) }
                @if let Some(f) = run.finished_at { dt { "Finished" } dd { (utc(f)) } }
            }
            @if let Some(e) = &run.error {
                @if run.status == "waiting" { p #run-waiting .warning { (e) } }
                @else { p #run-error .error { (e) } }
            }
            div #run-actions {
                @if run.status == "waiting" { (button("confirm", "Confirm")) }
                @if run.status == "failed" { (button("retry", "Retry")) (button("skip", "Skip")) }
            }
            h2 { "Steps" }
            table #run-steps {
                thead { tr { th { "Step" } th { "Status" } th { "Details" } th { "Jobs" } } }
                tbody {
                    @for (i, st) in run.steps.iter().enumerate() {
                        tr class=(st.status) data-step=(i) {
                            td { (st.name) } td.step-status { (st.status) }
                            td { @if let Some(d) = &st.detail { (d) } }
                            td { @for j in &st.jobs { a href={ "/portal/jobs/" (j) } { (j) } " " } }
                        }
                    }
                }
            }
        }
    }
}

/// Confirm, retry or skip: the run goes on (its page), or the vault's refusal on it.
pub(super) async fn run_action(
    State(p): State<Portal>,
    Extension(s): Extension<Session>,
    Path((name, id, action)): Path<(String, String, String)>,
    b: Bytes,
) -> Response {
    if let Err(r) = read_form(&p, &s, &b, &action) {
        return *r;
    }
    let run = match load_run(&p, &name, &id) {
        Ok(r) => r,
        Err(e) => return vault_error(&p, &s, &format!("Recovery plan {name}"), &e),
    };
    let r = match action.as_str() {
        "confirm" => p.vault.confirm_plan_run(&name, run.id),
        "retry" => p.vault.retry_plan_run(&name, run.id),
        "skip" => p.vault.skip_plan_run_step(&name, run.id),
        _ => {
            let text = format!("unknown plan run action {action:?}: use confirm, retry or skip");
            return message(&p, &s, StatusCode::NOT_FOUND, "Not found", &text);
        }
    };
    match r {
        Ok(run) => Redirect::to(&run_link(&run)).into_response(),
        Err(e) => run_page(&p, &s, &name, &id, Some((e.status(), e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(state: ItemState) -> Option<Item> {
        let allowed: Vec<&str> = lifeboat_types::item::allowed_operations(state)
            .iter()
            .map(|o| o.as_str())
            .collect();
        Some(super::super::readiness::test_item(
            state.as_str(),
            &allowed,
            None,
        ))
    }

    #[test]
    fn a_plan_operation_is_offered_when_every_vm_allows_it_or_is_already_there() {
        use PlanOperation as P;
        let both = [item(ItemState::Protected), item(ItemState::Protected)];
        assert!(plan_allows(P::Failover, &both) && plan_allows(P::TestFailover, &both));
        assert!(!plan_allows(P::Commit, &both) && !plan_allows(P::CleanupTestFailover, &both));
        let half = [item(ItemState::FailedOver), item(ItemState::Protected)];
        assert!(plan_allows(P::Failover, &half), "one already failed over");
        assert!(!plan_allows(P::Commit, &half), "one cannot commit");
        let done = [item(ItemState::FailedOver), item(ItemState::FailedOver)];
        assert!(
            !plan_allows(P::Failover, &done),
            "nothing left to fail over"
        );
        assert!(plan_allows(P::Commit, &done));
        assert!(!plan_allows(
            P::Failover,
            &[item(ItemState::Protected), None]
        ));
    }
}
