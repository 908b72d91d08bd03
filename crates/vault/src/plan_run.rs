//! Recovery plans, the runner: plans stored in the vault's database, and runs of plan
//! operations ([`crate::plan`] has the definition and the step list).
//!
//! ## A run
//!
//! Starting a plan operation ([`Vault::start_plan`]) checks, in one transaction, that the plan
//! has no active run (`running` or `waiting`), that the recovery-point choice is one a plan
//! allows, and that every VM of the plan is protected and either allows the operation or is
//! already where the operation leads (those are skipped, as ASR skips VMs already failed over);
//! otherwise it is refused naming the VM and its state. It then records the run with its steps
//! (the definition is copied into the run, so editing the plan does not change a run) and a
//! task drives it, one step at a time, from the first step that is `pending`:
//!
//! * a script step runs `sh -c` in its own process group, killed at its timeout
//!   (`plan_script.rs`); its exit
//!   status, and the tails of its stdout and stderr, go into the step's detail;
//! * a manual step sets the step and the run `waiting` with the instructions, and the task ends;
//! * a VMs step starts the item operation on every VM of the group at once through
//!   [`Vault::start`] (the item state machine and the executor, as for a single VM), in
//!   [`start_member_jobs`], then polls the jobs until they all end.
//!
//! ```text
//!            start                     confirm (manual step → succeeded)
//!   ─────────────▶ running ◀──────────────────────────────── waiting
//!                  │  │  │ ──── manual step ─────────────────▲   │ skip
//!                  │  │  └──── step fails ──▶ failed ──retry (step → pending)──▶ running
//!                  │  │                          └──skip (step → skipped)──▶ running
//!                  │  └── vault restarts: failed at its step ("the vault restarted; retry")
//!                  └── no step left ──▶ succeeded
//! ```
//!
//! A run stops at its first failing step (status `failed`, the run's `error` says which step
//! and why). `retry` runs that step again; `skip` marks it skipped and goes on; `confirm` ends
//! a manual step. Only the plan's latest run can be retried, skipped or confirmed.
//!
//! ## Persistence
//!
//! Tables `plans` and `plan_runs` (migration 5 in [`crate::db`]); every change of a run is one
//! transaction. When the vault starts, a run left `running` is marked failed at the step it
//! was at (the item jobs it started were ended by the vault's own recovery), so `retry` resumes
//! it; a `waiting` run stays waiting.

use std::collections::BTreeSet;
use std::time::Duration;

use lifeboat_types::item::begin;
use lifeboat_types::{ItemState, Operation};
use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::db::{now_ms, sql};
use crate::error::VaultError;
use crate::model::OperationRequest;
use crate::plan::{
    plan_point_choice, steps_for, validate, Phase, PlanAction, PlanDefinition, PlanInfo,
    PlanOperation, PlanRequest, PlanRun, PlanStep,
};
use crate::plan_script::{run_script, ScriptEnv};
use crate::service::{event, query_rows, read_item, Vault};

/// How often a VMs step looks at its jobs.
const JOB_POLL: Duration = Duration::from_millis(100);

const RUN_COLS: &str = "id, plan, operation, params, status, current_step, steps, error, \
                        created_at, updated_at, finished_at, definition";

fn json_err(e: serde_json::Error) -> VaultError {
    VaultError::BadRequest(e.to_string())
}

fn corrupt(what: &'static str, value: String) -> VaultError {
    VaultError::Corrupt { what, value }
}

type RunRow = (PlanRun, String, String, String);

fn run_of(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok((
        PlanRun {
            id: r.get(0)?,
            plan: r.get(1)?,
            operation: r.get(2)?,
            params: PlanRequest::default(),
            status: r.get(4)?,
            current_step: r.get::<_, i64>(5)?.max(0) as usize,
            steps: Vec::new(),
            error: r.get(7)?,
            created_at: r.get(8)?,
            updated_at: r.get(9)?,
            finished_at: r.get(10)?,
        },
        r.get(3)?,
        r.get(6)?,
        r.get(11)?,
    ))
}

/// A run and the definition it runs.
fn complete_run(
    (mut run, params, steps, def): RunRow,
) -> Result<(PlanRun, PlanDefinition), VaultError> {
    run.params =
        serde_json::from_str(&params).map_err(|_| corrupt("plan run parameters", params))?;
    run.steps = serde_json::from_str(&steps).map_err(|_| corrupt("plan run steps", steps))?;
    let def = serde_json::from_str(&def).map_err(|_| corrupt("plan definition", def))?;
    Ok((run, def))
}

fn read_run(tx: &Transaction<'_>, id: i64) -> Result<(PlanRun, PlanDefinition), VaultError> {
    let row = tx
        .query_row(
            &format!("SELECT {RUN_COLS} FROM plan_runs WHERE id = ?1"),
            params![id],
            run_of,
        )
        .optional()
        .map_err(sql("reading a plan run"))?
        .ok_or_else(|| VaultError::NotFound {
            kind: "plan run",
            name: id.to_string(),
        })?;
    complete_run(row)
}

fn write_run(tx: &Transaction<'_>, run: &PlanRun) -> Result<(), VaultError> {
    let steps = serde_json::to_string(&run.steps).map_err(json_err)?;
    tx.execute(
        "UPDATE plan_runs SET status = ?1, current_step = ?2, steps = ?3, error = ?4,
         updated_at = ?5, finished_at = ?6 WHERE id = ?7",
        params![
            run.status,
            run.current_step as i64,
            steps,
            run.error,
            now_ms(),
            run.finished_at,
            run.id
        ],
    )
    .map_err(sql("updating a plan run"))?;
    Ok(())
}

fn latest_run_id(tx: &Transaction<'_>, plan: &str) -> Result<Option<i64>, VaultError> {
    tx.query_row(
        "SELECT MAX(id) FROM plan_runs WHERE plan = ?1",
        params![plan],
        |r| r.get(0),
    )
    .map_err(sql("reading a plan's runs"))
}

fn read_plan(tx: &Transaction<'_>, name: &str) -> Result<PlanInfo, VaultError> {
    let (def, created_at, updated_at): (String, i64, i64) = tx
        .query_row(
            "SELECT definition, created_at, updated_at FROM plans WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql("reading a plan"))?
        .ok_or_else(|| VaultError::NotFound {
            kind: "recovery plan",
            name: name.to_string(),
        })?;
    let definition = serde_json::from_str(&def).map_err(|_| corrupt("plan definition", def))?;
    let latest_run = match latest_run_id(tx, name)? {
        Some(id) => Some(read_run(tx, id)?.0),
        None => None,
    };
    Ok(PlanInfo {
        name: name.to_string(),
        definition,
        created_at,
        updated_at,
        latest_run,
    })
}

/// Refuses a change of plan `name` while it has an active run.
fn no_active_run(tx: &Transaction<'_>, name: &str, doing: &str) -> Result<(), VaultError> {
    let active: Option<(i64, String, String)> = tx
        .query_row(
            "SELECT id, operation, status FROM plan_runs WHERE plan = ?1
             AND status IN ('running', 'waiting') ORDER BY id DESC LIMIT 1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(sql("reading a plan's runs"))?;
    match active {
        None => Ok(()),
        Some((id, op, status)) => Err(VaultError::Conflict(format!(
            "cannot {doing}: plan {name} has run {id} ({op}) {status}{}",
            if status == "waiting" {
                ": confirm its manual action (`lifeboat plan confirm`) or skip it first"
            } else {
                ": wait until it ends"
            }
        ))),
    }
}

fn check_definition(tx: &Transaction<'_>, def: &PlanDefinition) -> Result<String, VaultError> {
    let vms: BTreeSet<String> =
        query_rows(tx, "listing VMs", "SELECT name FROM vms", [], |r| r.get(0))?
            .into_iter()
            .collect();
    validate(def, |vm| vms.contains(vm)).map_err(VaultError::BadRequest)?;
    serde_json::to_string(def).map_err(json_err)
}

/// The item request each VM of a plan gets.
fn member_request(op: PlanOperation, req: &PlanRequest, choice: &str) -> OperationRequest {
    OperationRequest {
        recovery_point: matches!(op, PlanOperation::Failover | PlanOperation::TestFailover)
            .then(|| choice.to_string()),
        shutdown_source: req.shutdown_source,
        shutdown_timeout_secs: None,
        notes: req.notes.clone(),
        group: None,
    }
}

fn check_plan_request(op: PlanOperation, req: &PlanRequest) -> Result<&'static str, VaultError> {
    let takes_point = matches!(op, PlanOperation::Failover | PlanOperation::TestFailover);
    if req.recovery_point.is_some() && !takes_point {
        return Err(VaultError::BadRequest(format!(
            "recovery_point does not apply to a plan's {op}: only to failover and test-failover"
        )));
    }
    if req.shutdown_source && op != PlanOperation::Failover {
        return Err(VaultError::BadRequest(format!(
            "shutdown_source does not apply to a plan's {op}: only to failover"
        )));
    }
    if req.notes.is_some() && op != PlanOperation::CleanupTestFailover {
        return Err(VaultError::BadRequest(format!(
            "notes do not apply to a plan's {op}: only to cleanup-test-failover"
        )));
    }
    plan_point_choice(req.recovery_point.as_deref()).map_err(VaultError::BadRequest)
}

/// How a member VM of a group step went.
pub struct Member {
    /// The VM.
    pub vm: String,
    /// Its item job, when one was started.
    pub job: Option<i64>,
    /// Why it was not started (already there: skipped; or the refusal).
    pub note: Option<String>,
    /// Whether not starting it is a failure.
    pub failed: bool,
}

/// Starts `op` on the VMs of one plan group, all at once, through the item path
/// ([`Vault::start`]): a VM already where `op` leads is skipped (noted). The one place that
/// decides how a group's members are operated on: the VMs of a **replication group** fail over
/// (or test-fail over) together, through the group's operation, to one shared point (the
/// plan's `latest-processed` and `latest` become `latest-multi-vm-processed`,
/// `latest-app-consistent` becomes `latest-multi-vm-app-consistent`); the whole replication
/// group must then be in this plan group.
pub async fn start_member_jobs(
    vault: &Vault,
    vms: &[String],
    op: Operation,
    req: &OperationRequest,
) -> Vec<Member> {
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for vm in vms {
        if done.contains(vm) {
            continue;
        }
        let item = vault.item(vm).ok();
        let state = item.as_ref().and_then(|i| i.state.parse().ok());
        if state == Some(op.target()) {
            out.push(Member {
                vm: vm.clone(),
                job: None,
                note: Some(format!("already {}, skipped", op.target().label())),
                failed: false,
            });
            continue;
        }
        let shared = matches!(op, Operation::Failover | Operation::TestFailover);
        if let (true, Some(g)) = (shared, item.and_then(|i| i.replication_group)) {
            out.extend(start_replication_group(vault, vms, &g, op, req).await);
            if let Ok(group) = vault.group(&g) {
                done.extend(group.vms);
            }
            continue;
        }
        out.push(match vault.start(vm, op, req) {
            Ok(job) => Member {
                vm: vm.clone(),
                job: Some(job.id),
                note: None,
                failed: false,
            },
            Err(e) => Member {
                vm: vm.clone(),
                job: None,
                note: Some(e.to_string()),
                failed: true,
            },
        });
    }
    out
}

/// The members of replication group `g` (all of them in `vms`), failed over together.
async fn start_replication_group(
    vault: &Vault,
    vms: &[String],
    g: &str,
    op: Operation,
    req: &OperationRequest,
) -> Vec<Member> {
    let fail = |vm: &str, why: String| Member {
        vm: vm.to_string(),
        job: None,
        note: Some(why),
        failed: true,
    };
    let group = match vault.group(g) {
        Ok(group) => group,
        Err(e) => return vec![fail(g, e.to_string())],
    };
    let missing: Vec<&String> = group.vms.iter().filter(|v| !vms.contains(v)).collect();
    if !missing.is_empty() {
        return vec![fail(
            g,
            format!(
                "replication group {g} fails over as a whole, but its VMs {} are not in this \
                 plan group: put every VM of the replication group in one plan group",
                missing
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )];
    }
    let mut r = req.clone();
    r.recovery_point = Some(
        match req.recovery_point.as_deref() {
            Some("latest-app-consistent") => "latest-multi-vm-app-consistent",
            _ => "latest-multi-vm-processed",
        }
        .to_string(),
    );
    match vault.group_operation(g, op, &r).await {
        Ok(jobs) => jobs
            .into_iter()
            .map(|j| Member {
                vm: j.vm.clone().unwrap_or_default(),
                job: Some(j.id),
                note: Some(format!("with replication group {g}")),
                failed: false,
            })
            .collect(),
        Err(e) => vec![fail(g, e.to_string())],
    }
}

/// How a step ended.
enum StepEnd {
    Succeeded(String, Vec<i64>),
    Failed(String, String, Vec<i64>),
    Waiting(String),
}

impl Vault {
    // ---- plans ----

    /// Creates a plan (validated: groups, VMs, actions).
    pub fn create_plan(&self, def: &PlanDefinition) -> Result<PlanInfo, VaultError> {
        let now = now_ms();
        self.db.tx("creating a plan", |tx| {
            let body = check_definition(tx, def)?;
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO plans (name, definition, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?3)",
                    params![def.name, body, now],
                )
                .map_err(sql("creating a plan"))?;
            if n == 0 {
                return Err(VaultError::Exists {
                    kind: "recovery plan",
                    name: def.name.clone(),
                });
            }
            event(
                tx,
                "info",
                None,
                None,
                &format!("recovery plan {} created", def.name),
            )?;
            read_plan(tx, &def.name)
        })
    }

    /// Replaces plan `name`'s definition (not while a run is active).
    pub fn replace_plan(&self, name: &str, def: &PlanDefinition) -> Result<PlanInfo, VaultError> {
        if def.name != name {
            return Err(VaultError::BadRequest(format!(
                "the body names plan {:?}, the path {name:?}: a plan cannot be renamed",
                def.name
            )));
        }
        self.db.tx("replacing a plan", |tx| {
            read_plan(tx, name)?;
            no_active_run(tx, name, &format!("change plan {name}"))?;
            let body = check_definition(tx, def)?;
            tx.execute(
                "UPDATE plans SET definition = ?1, updated_at = ?2 WHERE name = ?3",
                params![body, now_ms(), name],
            )
            .map_err(sql("replacing a plan"))?;
            read_plan(tx, name)
        })
    }

    /// Deletes plan `name` and its runs (not while a run is active).
    pub fn delete_plan(&self, name: &str) -> Result<(), VaultError> {
        self.db.tx("deleting a plan", |tx| {
            read_plan(tx, name)?;
            no_active_run(tx, name, &format!("delete plan {name}"))?;
            tx.execute("DELETE FROM plans WHERE name = ?1", params![name])
                .map_err(sql("deleting a plan"))?;
            event(
                tx,
                "info",
                None,
                None,
                &format!("recovery plan {name} deleted"),
            )
        })
    }

    /// Every plan, by name.
    pub fn plans(&self) -> Result<Vec<PlanInfo>, VaultError> {
        self.db.tx("listing plans", |tx| {
            let names: Vec<String> = query_rows(
                tx,
                "listing plans",
                "SELECT name FROM plans ORDER BY name",
                [],
                |r| r.get(0),
            )?;
            names.iter().map(|n| read_plan(tx, n)).collect()
        })
    }

    /// One plan with its latest run.
    pub fn plan(&self, name: &str) -> Result<PlanInfo, VaultError> {
        self.db.tx("reading a plan", |tx| read_plan(tx, name))
    }

    /// Plan `name`'s runs, newest first (at most `limit`).
    pub fn plan_runs(&self, name: &str, limit: i64) -> Result<Vec<PlanRun>, VaultError> {
        self.db.tx("listing plan runs", |tx| {
            read_plan(tx, name)?;
            let rows = query_rows(
                tx,
                "listing plan runs",
                &format!(
                    "SELECT {RUN_COLS} FROM plan_runs WHERE plan = ?1 ORDER BY id DESC LIMIT ?2"
                ),
                params![name, limit],
                run_of,
            )?;
            rows.into_iter()
                .map(|r| complete_run(r).map(|(run, _)| run))
                .collect()
        })
    }

    /// Run `id` of plan `name`.
    pub fn plan_run(&self, name: &str, id: i64) -> Result<PlanRun, VaultError> {
        self.db.tx("reading a plan run", |tx| {
            let (run, _) = read_run(tx, id)?;
            if run.plan != name {
                return Err(VaultError::NotFound {
                    kind: "plan run",
                    name: format!("{name}/{id}"),
                });
            }
            Ok(run)
        })
    }

    // ---- runs ----

    /// Starts `op` on plan `name` (see the module doc for what is checked up front).
    pub fn start_plan(
        &self,
        name: &str,
        op: PlanOperation,
        req: &PlanRequest,
    ) -> Result<PlanRun, VaultError> {
        check_plan_request(op, req)?;
        let params_json = serde_json::to_string(req).map_err(json_err)?;
        let now = now_ms();
        let run = self.db.tx("starting a plan run", |tx| {
            let plan = read_plan(tx, name)?;
            no_active_run(tx, name, &format!("start {op} of plan {name}"))?;
            let item_op = op.item_operation();
            for (i, g) in plan.definition.groups.iter().enumerate() {
                for vm in &g.vms {
                    let item = read_item(tx, vm).map_err(|e| match e {
                        VaultError::NotFound { .. } => VaultError::Conflict(format!(
                            "plan {name} group {}: VM {vm} is not protected: protect it \
                             (`lifeboat protect {vm}`) or remove it from the plan",
                            i + 1
                        )),
                        e => e,
                    })?;
                    let state: ItemState = item
                        .state
                        .parse()
                        .map_err(|_| corrupt("item state", item.state.clone()))?;
                    if state != item_op.target() {
                        begin(state, item_op).map_err(|refused| {
                            VaultError::Conflict(format!(
                                "{op} of plan {name} refused: group {} VM {vm}: {refused}",
                                i + 1
                            ))
                        })?;
                    }
                }
            }
            let steps = steps_for(&plan.definition, op);
            let steps_json = serde_json::to_string(&steps).map_err(json_err)?;
            let def_json = serde_json::to_string(&plan.definition).map_err(json_err)?;
            tx.execute(
                "INSERT INTO plan_runs (plan, operation, params, definition, status, steps,
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?6)",
                params![name, op.as_str(), params_json, def_json, steps_json, now],
            )
            .map_err(sql("recording a plan run"))?;
            let id = tx.last_insert_rowid();
            event(
                tx,
                "info",
                None,
                None,
                &format!("{op} of recovery plan {name} started (run {id})"),
            )?;
            Ok(read_run(tx, id)?.0)
        })?;
        tokio::spawn(drive(self.clone(), run.id));
        Ok(run)
    }

    /// Changes the latest run of plan `name` (which must be run `id`) with `f` in one
    /// transaction; when `f` sets it running again, a task drives it on.
    fn resume_run(
        &self,
        name: &str,
        id: i64,
        what: &str,
        f: impl FnOnce(&mut PlanRun) -> Result<String, VaultError>,
    ) -> Result<PlanRun, VaultError> {
        let run = self.db.tx("changing a plan run", |tx| {
            read_plan(tx, name)?;
            let (mut run, _) = read_run(tx, id)?;
            if run.plan != name {
                return Err(VaultError::NotFound {
                    kind: "plan run",
                    name: format!("{name}/{id}"),
                });
            }
            if latest_run_id(tx, name)? != Some(id) {
                return Err(VaultError::Conflict(format!(
                    "cannot {what} run {id} of plan {name}: a newer run exists"
                )));
            }
            let message = f(&mut run)?;
            run.status = "running".to_string();
            run.error = None;
            run.finished_at = None;
            write_run(tx, &run)?;
            event(
                tx,
                "info",
                None,
                None,
                &format!("plan {name} run {id}: {message}"),
            )?;
            Ok(run)
        })?;
        tokio::spawn(drive(self.clone(), id));
        Ok(run)
    }

    /// Confirms the manual action run `id` of plan `name` waits on; the run goes on.
    pub fn confirm_plan_run(&self, name: &str, id: i64) -> Result<PlanRun, VaultError> {
        self.resume_run(name, id, "confirm", |run| {
            let step = waiting_step(run, "confirm")?;
            step.status = "succeeded".to_string();
            step.detail = Some(format!(
                "confirmed{}",
                step.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ));
            Ok(format!("{} confirmed", step.name))
        })
    }

    /// Runs the failed step of run `id` of plan `name` again, and the rest after it.
    pub fn retry_plan_run(&self, name: &str, id: i64) -> Result<PlanRun, VaultError> {
        self.resume_run(name, id, "retry", |run| {
            if run.status != "failed" {
                return Err(VaultError::Conflict(format!(
                    "run {} of plan {} is {}: only a failed run can be retried",
                    run.id, run.plan, run.status
                )));
            }
            let step = stopped_step(run)?;
            step.status = "pending".to_string();
            step.detail = None;
            step.jobs.clear();
            Ok(format!("{} retried", step.name))
        })
    }

    /// Skips the step run `id` of plan `name` stopped at (failed, or a manual action
    /// waiting), and goes on.
    pub fn skip_plan_run_step(&self, name: &str, id: i64) -> Result<PlanRun, VaultError> {
        self.resume_run(name, id, "skip a step of", |run| {
            if run.status != "failed" && run.status != "waiting" {
                return Err(VaultError::Conflict(format!(
                    "run {} of plan {} is {}: only a step of a failed or waiting run can be \
                     skipped",
                    run.id, run.plan, run.status
                )));
            }
            let step = stopped_step(run)?;
            step.status = "skipped".to_string();
            step.detail = Some(match step.detail.take() {
                Some(d) => format!("skipped by the operator (was: {d})"),
                None => "skipped by the operator".to_string(),
            });
            Ok(format!("{} skipped", step.name))
        })
    }

    /// On start: a run left `running` fails at its step, saying to retry.
    pub(crate) fn recover_plan_runs(&self) -> Result<(), VaultError> {
        self.db.tx("recovering plan runs", |tx| {
            let ids: Vec<i64> = query_rows(
                tx,
                "listing interrupted plan runs",
                "SELECT id FROM plan_runs WHERE status = 'running'",
                [],
                |r| r.get(0),
            )?;
            for id in ids {
                let (mut run, _) = read_run(tx, id)?;
                let why = "the vault restarted while this step ran; retry";
                let i = run
                    .steps
                    .iter()
                    .position(|s| s.status == "running" || s.status == "pending")
                    .unwrap_or(run.current_step);
                if let Some(s) = run.steps.get_mut(i) {
                    s.status = "failed".to_string();
                    s.detail = Some(why.to_string());
                }
                run.current_step = i;
                run.status = "failed".to_string();
                run.error = Some(format!(
                    "the vault restarted while the run was at step {}; retry (`lifeboat plan \
                     retry {}`)",
                    i + 1,
                    run.plan
                ));
                run.finished_at = Some(now_ms());
                write_run(tx, &run)?;
                event(
                    tx,
                    "warning",
                    None,
                    None,
                    &format!(
                        "plan {} run {id} interrupted by a vault restart; retry it",
                        run.plan
                    ),
                )?;
            }
            Ok(())
        })
    }

    fn change_run(
        &self,
        id: i64,
        f: impl FnOnce(&mut PlanRun) -> Option<String>,
    ) -> Result<PlanRun, VaultError> {
        self.db.tx("updating a plan run", |tx| {
            let (mut run, _) = read_run(tx, id)?;
            let ev = f(&mut run);
            write_run(tx, &run)?;
            if let Some(msg) = ev {
                let level = if run.status == "failed" {
                    "error"
                } else {
                    "info"
                };
                event(tx, level, None, None, &msg)?;
            }
            Ok(run)
        })
    }
}

fn waiting_step<'a>(run: &'a mut PlanRun, what: &str) -> Result<&'a mut PlanStep, VaultError> {
    let (id, plan, status) = (run.id, run.plan.clone(), run.status.clone());
    run.steps
        .iter_mut()
        .find(|s| s.status == "waiting")
        .filter(|_| status == "waiting")
        .ok_or_else(|| {
            VaultError::Conflict(format!(
                "cannot {what}: run {id} of plan {plan} is {status}, not waiting on a manual \
                 action"
            ))
        })
}

fn stopped_step(run: &mut PlanRun) -> Result<&mut PlanStep, VaultError> {
    let (id, plan) = (run.id, run.plan.clone());
    run.steps
        .iter_mut()
        .find(|s| s.status == "failed" || s.status == "waiting")
        .ok_or_else(|| VaultError::Corrupt {
            what: "plan run (stopped without a failed step)",
            value: format!("{plan}/{id}"),
        })
}

/// Drives run `id` from its first pending step until it ends, waits, or fails.
async fn drive(vault: Vault, id: i64) {
    if let Err(e) = drive_steps(&vault, id).await {
        tracing::error!(run = id, error = %e, "a plan run stopped on a vault error");
        let msg = format!("the vault could not go on: {e}; retry");
        let _ = vault.change_run(id, |run| {
            if let Some(s) = run.steps.get_mut(run.current_step) {
                s.status = "failed".to_string();
                s.detail = Some(msg.clone());
            }
            run.status = "failed".to_string();
            run.error = Some(msg);
            run.finished_at = Some(now_ms());
            None
        });
    }
}

async fn drive_steps(vault: &Vault, id: i64) -> Result<(), VaultError> {
    loop {
        let (run, def) = vault.db.tx("reading a plan run", |tx| read_run(tx, id))?;
        if run.status != "running" {
            return Ok(());
        }
        let Some(i) = run
            .steps
            .iter()
            .position(|s| s.status == "pending" || s.status == "running")
        else {
            vault.change_run(id, |r| {
                r.status = "succeeded".to_string();
                r.finished_at = Some(now_ms());
                Some(format!(
                    "{} of recovery plan {} succeeded (run {id})",
                    r.operation, r.plan
                ))
            })?;
            return Ok(());
        };
        vault.change_run(id, |r| {
            r.current_step = i;
            if let Some(s) = r.steps.get_mut(i) {
                s.status = "running".to_string();
            }
            None
        })?;
        let step = run.steps[i].clone();
        let end = run_step(vault, &run, &def, &step).await?;
        let stop = !matches!(end, StepEnd::Succeeded(..));
        vault.change_run(id, |r| {
            let plan = r.plan.clone();
            if r.status != "running" || r.steps.get(i).is_none_or(|s| s.status != "running") {
                // Changed meanwhile (a vault restart marked it failed): its result is stale.
                return None;
            }
            let s = &mut r.steps[i];
            match end {
                StepEnd::Succeeded(detail, jobs) => {
                    s.status = "succeeded".to_string();
                    s.detail = (!detail.is_empty()).then_some(detail);
                    s.jobs = jobs;
                    None
                }
                StepEnd::Failed(message, detail, jobs) => {
                    s.status = "failed".to_string();
                    s.detail = Some(detail);
                    s.jobs = jobs;
                    r.status = "failed".to_string();
                    r.error = Some(format!(
                        "{message}; fix it and retry the step (`lifeboat plan retry {plan}`), \
                         or skip it (`lifeboat plan skip {plan}`)"
                    ));
                    r.finished_at = Some(now_ms());
                    Some(format!("plan {plan} run {id} failed: {message}"))
                }
                StepEnd::Waiting(instructions) => {
                    s.status = "waiting".to_string();
                    s.detail = Some(instructions.clone());
                    r.status = "waiting".to_string();
                    r.error = Some(format!(
                        "waiting for {}: {instructions}; confirm when done (`lifeboat plan \
                         confirm {plan}`)",
                        s.name
                    ));
                    Some(format!(
                        "plan {plan} run {id} waits for {}: confirm it when done",
                        s.name
                    ))
                }
            }
        })?;
        if stop {
            return Ok(());
        }
    }
}

async fn run_step(
    vault: &Vault,
    run: &PlanRun,
    def: &PlanDefinition,
    step: &PlanStep,
) -> Result<StepEnd, VaultError> {
    let op: PlanOperation = run
        .operation
        .parse()
        .map_err(|_| corrupt("plan run operation", run.operation.clone()))?;
    let group = step
        .group
        .checked_sub(1)
        .and_then(|g| def.groups.get(g))
        .ok_or_else(|| corrupt("plan run step", step.name.clone()))?;
    let when = if step.phase == Phase::Pre {
        "pre"
    } else {
        "post"
    };
    match (step.phase, step.action_in(def)) {
        (Phase::Vms, _) => {
            let choice = plan_point_choice(run.params.recovery_point.as_deref())
                .map_err(VaultError::BadRequest)?;
            let req = member_request(op, &run.params, choice);
            let members = start_member_jobs(vault, &group.vms, op.item_operation(), &req).await;
            Ok(wait_members(vault, step.group, op, members).await)
        }
        (_, Some(PlanAction::Manual(m))) => Ok(StepEnd::Waiting(if m.instructions.is_empty() {
            format!("manual action \"{}\"", m.name)
        } else {
            m.instructions.clone()
        })),
        (_, Some(PlanAction::Script(s))) => {
            let env = ScriptEnv {
                plan: &run.plan,
                operation: op.as_str(),
                group: step.group,
                vms: group.vms.join(","),
            };
            Ok(match run_script(s, &env).await {
                Ok(detail) => StepEnd::Succeeded(detail, Vec::new()),
                Err((why, detail)) => StepEnd::Failed(
                    format!("group {} {when}-action \"{}\" {why}", step.group, s.name),
                    detail,
                    Vec::new(),
                ),
            })
        }
        (_, None) => Err(corrupt("plan run step", step.name.clone())),
    }
}

/// Waits until every started job of a group ends; the step's outcome names each VM.
async fn wait_members(
    vault: &Vault,
    group: usize,
    op: PlanOperation,
    members: Vec<Member>,
) -> StepEnd {
    let jobs: Vec<i64> = members.iter().filter_map(|m| m.job).collect();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for m in &members {
        let Some(job) = m.job else {
            let note = m.note.clone().unwrap_or_default();
            if m.failed {
                failures.push(format!("VM {}: {note}", m.vm));
            }
            lines.push(format!("{}: {note}", m.vm));
            continue;
        };
        let ended = loop {
            match vault.job(job) {
                Ok(j) if j.status != "running" => break Ok(j),
                Ok(_) => tokio::time::sleep(JOB_POLL).await,
                Err(e) => break Err(e),
            }
        };
        match ended {
            Ok(j) if j.status == "succeeded" => {
                lines.push(format!("{}: job {job} succeeded", m.vm))
            }
            Ok(j) => {
                let why = j.error.unwrap_or_else(|| "no reason given".to_string());
                failures.push(format!("{op} of VM {} failed (job {job}): {why}", m.vm));
                lines.push(format!("{}: job {job} failed", m.vm));
            }
            Err(e) => {
                failures.push(format!("VM {}: job {job}: {e}", m.vm));
                lines.push(format!("{}: job {job} unknown", m.vm));
            }
        }
    }
    let detail = lines.join("; ");
    if failures.is_empty() {
        StepEnd::Succeeded(detail, jobs)
    } else {
        StepEnd::Failed(
            format!("group {group}: {}", failures.join("; ")),
            detail,
            jobs,
        )
    }
}
