//! Recovery plans, the pure part: a plan's definition and its validation, the operations a
//! plan runs, the recovery-point choices a plan allows, and the step list of a plan operation
//! (a pure function of the definition and the operation). The runner is
//! [`crate::plan_run`].
//!
//! A plan (ASR's recovery plan) is 1 to [`MAX_GROUPS`] ordered groups of VMs. The VMs of a
//! group fail over (or test-fail over, commit, ...) in parallel; the groups go in order. Each
//! group may have *pre* actions (run before its VMs) and *post* actions (after them):
//!
//! * a **script**: `sh -c COMMAND` on the vault's host, with `LIFEBOAT_PLAN`,
//!   `LIFEBOAT_OPERATION`, `LIFEBOAT_GROUP` (1-based) and `LIFEBOAT_VMS` (comma-separated) in
//!   its environment, killed (its whole process group) after `timeout_secs`; a non-zero exit
//!   status fails the step;
//! * a **manual** action: the run pauses (`waiting`) with the instructions until an operator
//!   confirms it.
//!
//! Each action runs for the operations in its `on` list (default: `failover` and
//! `test-failover`, as ASR adds actions to failover); the others pass it by.
//!
//! The step list of an operation is, for each group in order: its pre actions that apply, one
//! step running the operation on the group's VMs, its post actions that apply.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use lifeboat_types::Operation;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// At most this many groups in a plan (as in ASR).
pub const MAX_GROUPS: usize = 7;
/// At most this many VMs in a plan.
pub const MAX_VMS: usize = 100;
/// At most this many actions before or after a group.
pub const MAX_ACTIONS: usize = 20;
/// A script's timeout is 1 s to this many seconds (2 h).
pub const MAX_TIMEOUT_SECS: u64 = 7200;
/// The longest script command accepted.
pub const MAX_COMMAND_LEN: usize = 8192;

/// A recovery plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanDefinition {
    /// `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// 1 to 7 groups, in the order they run.
    pub groups: Vec<PlanGroup>,
}

/// A group of a plan: VMs that fail over in parallel, with actions before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanGroup {
    /// The VMs (each protected, each in one group of the plan only).
    pub vms: Vec<String>,
    /// Actions before the group's VMs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre: Vec<PlanAction>,
    /// Actions after the group's VMs, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post: Vec<PlanAction>,
}

/// An action before or after a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PlanAction {
    /// A command on the vault's host.
    Script(ScriptAction),
    /// A pause until an operator confirms.
    Manual(ManualAction),
}

/// A script action: `sh -c command`, its exit status checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptAction {
    /// What the step is called (e.g. `warm cache`).
    pub name: String,
    /// The shell command.
    pub command: String,
    /// Killed after this many seconds (1 to 7200; default 300).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The plan operations it runs for (default: failover, test-failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
}

/// A manual action: the run waits until confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualAction {
    /// What the step is called.
    pub name: String,
    /// What the operator must do before confirming.
    #[serde(default)]
    pub instructions: String,
    /// The plan operations it runs for (default: failover, test-failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<String>>,
}

fn default_timeout() -> u64 {
    300
}

impl PlanAction {
    /// The action's name.
    pub fn name(&self) -> &str {
        match self {
            PlanAction::Script(s) => &s.name,
            PlanAction::Manual(m) => &m.name,
        }
    }

    fn on(&self) -> Option<&Vec<String>> {
        match self {
            PlanAction::Script(s) => s.on.as_ref(),
            PlanAction::Manual(m) => m.on.as_ref(),
        }
    }

    /// Whether the action runs for `op`.
    pub fn applies_to(&self, op: PlanOperation) -> bool {
        match self.on() {
            None => matches!(op, PlanOperation::Failover | PlanOperation::TestFailover),
            Some(list) => list.iter().any(|o| o.parse() == Ok(op)),
        }
    }
}

/// An operation on a whole plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanOperation {
    /// Fail every VM over, group by group.
    Failover,
    /// DR drill of every VM.
    TestFailover,
    /// End the drill of every VM.
    CleanupTestFailover,
    /// Commit every VM's failover.
    Commit,
    /// Re-protect every VM.
    Reprotect,
}

impl PlanOperation {
    /// Every plan operation.
    pub const ALL: [PlanOperation; 5] = [
        PlanOperation::Failover,
        PlanOperation::TestFailover,
        PlanOperation::CleanupTestFailover,
        PlanOperation::Commit,
        PlanOperation::Reprotect,
    ];

    /// The item operation it runs on each VM.
    pub fn item_operation(self) -> Operation {
        match self {
            PlanOperation::Failover => Operation::Failover,
            PlanOperation::TestFailover => Operation::TestFailover,
            PlanOperation::CleanupTestFailover => Operation::CleanupTestFailover,
            PlanOperation::Commit => Operation::Commit,
            PlanOperation::Reprotect => Operation::Reprotect,
        }
    }

    /// Its name (the item operation's; `cleanup` is accepted for cleanup-test-failover).
    pub fn as_str(self) -> &'static str {
        self.item_operation().as_str()
    }
}

impl fmt::Display for PlanOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanOperation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "cleanup" {
            return Ok(PlanOperation::CleanupTestFailover);
        }
        PlanOperation::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown plan operation {s:?}: use failover, test-failover, \
                     cleanup-test-failover, commit or reprotect"
                )
            })
    }
}

/// The recovery-point choices a plan allows (ASR: no custom point in a recovery plan).
pub const PLAN_POINT_CHOICES: [&str; 3] = ["latest-processed", "latest", "latest-app-consistent"];

/// Checks a plan's recovery-point choice: `latest-processed` when absent; a point id or a
/// time is refused.
pub fn plan_point_choice(choice: Option<&str>) -> Result<&'static str, String> {
    match choice {
        None => Ok("latest-processed"),
        Some(c) => PLAN_POINT_CHOICES
            .into_iter()
            .find(|x| *x == c)
            .ok_or_else(|| {
                format!(
                    "Custom recovery points are not allowed for recovery plans ({c:?}): use \
                     latest-processed (the default), latest or latest-app-consistent, or fail \
                     the VMs over one by one to choose a point"
                )
            }),
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_action(a: &PlanAction, at: &str) -> Result<(), String> {
    let name = a.name();
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(format!(
            "{at}: action name {name:?}: give 1 to 128 printable characters"
        ));
    }
    if let Some(on) = a.on() {
        if on.is_empty() {
            return Err(format!(
                "{at} action {name:?}: `on` is empty: list the plan operations it runs for \
                 (failover, test-failover, cleanup-test-failover, commit, reprotect), or leave \
                 it out for failover and test-failover"
            ));
        }
        for o in on {
            o.parse::<PlanOperation>()
                .map_err(|e| format!("{at} action {name:?}: {e}"))?;
        }
    }
    if let PlanAction::Script(s) = a {
        if s.command.trim().is_empty() || s.command.len() > MAX_COMMAND_LEN {
            return Err(format!(
                "{at} script {name:?}: the command is empty or longer than {MAX_COMMAND_LEN} \
                 bytes"
            ));
        }
        if s.command.contains('\0') {
            return Err(format!(
                "{at} script {name:?}: the command holds a NUL byte"
            ));
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&s.timeout_secs) {
            return Err(format!(
                "{at} script {name:?}: timeout_secs {} is out of range: give 1 to \
                 {MAX_TIMEOUT_SECS} seconds",
                s.timeout_secs
            ));
        }
    }
    Ok(())
}

/// Checks a plan: its name, 1 to 7 groups, each with 1 or more VMs that `vm_exists`, no VM
/// twice, sane actions. The message names the group (1-based), VM or action and what to do.
pub fn validate(def: &PlanDefinition, vm_exists: impl Fn(&str) -> bool) -> Result<(), String> {
    if !name_ok(&def.name) {
        return Err(format!(
            "invalid plan name {:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -",
            def.name
        ));
    }
    if def.groups.is_empty() || def.groups.len() > MAX_GROUPS {
        return Err(format!(
            "plan {} has {} groups: a recovery plan has 1 to {MAX_GROUPS} groups",
            def.name,
            def.groups.len()
        ));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in def.groups.iter().enumerate() {
        let n = i + 1;
        if g.vms.is_empty() {
            return Err(format!(
                "plan {} group {n} has no VM: put at least one VM in each group, or remove \
                 the group",
                def.name
            ));
        }
        for vm in &g.vms {
            if let Some(first) = seen.insert(vm, n) {
                return Err(format!(
                    "plan {}: VM {vm} is in group {first} and group {n}: a VM can be in one \
                     group of a plan only",
                    def.name
                ));
            }
            if !vm_exists(vm) {
                return Err(format!(
                    "plan {} group {n}: VM {vm:?} does not exist: create it (`lifeboat vm \
                     create`) and protect it, or remove it from the plan",
                    def.name
                ));
            }
        }
        if g.pre.len() > MAX_ACTIONS || g.post.len() > MAX_ACTIONS {
            return Err(format!(
                "plan {} group {n}: at most {MAX_ACTIONS} actions before and after a group",
                def.name
            ));
        }
        for a in &g.pre {
            check_action(a, &format!("plan {} group {n} pre", def.name))?;
        }
        for a in &g.post {
            check_action(a, &format!("plan {} group {n} post", def.name))?;
        }
    }
    if seen.len() > MAX_VMS {
        return Err(format!(
            "plan {} has {} VMs: at most {MAX_VMS}",
            def.name,
            seen.len()
        ));
    }
    Ok(())
}

/// Where a step's action sits in the definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A pre action.
    Pre,
    /// The group's VMs.
    Vms,
    /// A post action.
    Post,
}

/// One step of a plan run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanStep {
    /// What it does, e.g. `Group 2: pre-action "warm cache"` or `Group 1: failover of a, b`.
    pub name: String,
    /// `script`, `manual` or `vms`.
    pub kind: String,
    /// The group, 1-based.
    pub group: usize,
    /// Pre action, the VMs, or post action.
    pub phase: Phase,
    /// The action's index in the group's `pre` or `post` list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<usize>,
    /// `pending`, `running`, `succeeded`, `failed`, `waiting` (manual), `skipped`.
    pub status: String,
    /// What happened: the jobs of the VMs, a script's exit and output tail, the instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The item jobs this step started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<i64>,
}

impl PlanStep {
    /// The action of this step in `def` (none for a VMs step).
    pub fn action_in<'a>(&self, def: &'a PlanDefinition) -> Option<&'a PlanAction> {
        let g = def.groups.get(self.group.checked_sub(1)?)?;
        let list = match self.phase {
            Phase::Pre => &g.pre,
            Phase::Post => &g.post,
            Phase::Vms => return None,
        };
        list.get(self.action?)
    }
}

/// The steps of `op` on plan `def`, in order.
pub fn steps_for(def: &PlanDefinition, op: PlanOperation) -> Vec<PlanStep> {
    let mut out = Vec::new();
    for (i, g) in def.groups.iter().enumerate() {
        let n = i + 1;
        let action_steps = |phase: Phase, list: &[PlanAction], out: &mut Vec<PlanStep>| {
            for (k, a) in list.iter().enumerate().filter(|(_, a)| a.applies_to(op)) {
                let (kind, manual) = match a {
                    PlanAction::Script(_) => ("script", ""),
                    PlanAction::Manual(_) => ("manual", " (manual)"),
                };
                let when = if phase == Phase::Pre { "pre" } else { "post" };
                out.push(PlanStep {
                    name: format!("Group {n}: {when}-action \"{}\"{manual}", a.name()),
                    kind: kind.to_string(),
                    group: n,
                    phase,
                    action: Some(k),
                    status: "pending".to_string(),
                    detail: None,
                    jobs: Vec::new(),
                });
            }
        };
        action_steps(Phase::Pre, &g.pre, &mut out);
        out.push(PlanStep {
            name: format!("Group {n}: {op} of {}", g.vms.join(", ")),
            kind: "vms".to_string(),
            group: n,
            phase: Phase::Vms,
            action: None,
            status: "pending".to_string(),
            detail: None,
            jobs: Vec::new(),
        });
        action_steps(Phase::Post, &g.post, &mut out);
    }
    out
}

/// Parameters of a plan operation (those that do not apply are refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Failover, test failover: `latest-processed` (default), `latest` or
    /// `latest-app-consistent`; no custom point (a point id or a time) in a plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_point: Option<String>,
    /// Failover: shut every source VM down first (best effort).
    #[serde(default)]
    pub shutdown_source: bool,
    /// Cleanup test failover: the operator's notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// A run of a plan operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanRun {
    /// Id.
    pub id: i64,
    /// The plan.
    pub plan: String,
    /// The operation (`failover`, `test-failover`, `cleanup-test-failover`, `commit`,
    /// `reprotect`).
    pub operation: String,
    /// Its parameters.
    pub params: PlanRequest,
    /// `running`, `waiting` (a manual action: confirm it), `failed` (retry or skip the failed
    /// step), `succeeded`.
    pub status: String,
    /// The step it is at (index into `steps`).
    pub current_step: usize,
    /// Its steps, in order.
    pub steps: Vec<PlanStep>,
    /// Why it stopped (a failed step) and what to do; a manual action's instructions.
    pub error: Option<String>,
    /// Created (ms since 1970).
    pub created_at: i64,
    /// Last change (ms since 1970).
    pub updated_at: i64,
    /// Ended (ms since 1970).
    pub finished_at: Option<i64>,
}

/// A plan as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlanInfo {
    /// The plan's name.
    pub name: String,
    /// Its groups and actions.
    pub definition: PlanDefinition,
    /// Created (ms since 1970).
    pub created_at: i64,
    /// Last changed (ms since 1970).
    pub updated_at: i64,
    /// Its latest run.
    pub latest_run: Option<PlanRun>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(name: &str, on: Option<&[&str]>) -> PlanAction {
        PlanAction::Script(ScriptAction {
            name: name.into(),
            command: "true".into(),
            timeout_secs: 5,
            on: on.map(|l| l.iter().map(|s| s.to_string()).collect()),
        })
    }

    fn plan(groups: &[&[&str]]) -> PlanDefinition {
        PlanDefinition {
            name: "p".into(),
            groups: groups
                .iter()
                .map(|vms| PlanGroup {
                    vms: vms.iter().map(|s| s.to_string()).collect(),
                    pre: vec![],
                    post: vec![],
                })
                .collect(),
        }
    }

    fn exists(vm: &str) -> bool {
        vm != "ghost"
    }

    #[test]
    fn validation_limits_and_messages() {
        assert!(validate(&plan(&[&["a"], &["b", "c"]]), exists).is_ok());
        let e = validate(&plan(&[]), exists).unwrap_err();
        assert!(e.contains("has 0 groups") && e.contains("1 to 7"), "{e}");
        let eight: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
        let groups: Vec<Vec<&str>> = eight.iter().map(|v| vec![v.as_str()]).collect();
        let refs: Vec<&[&str]> = groups.iter().map(Vec::as_slice).collect();
        let e = validate(&plan(&refs), exists).unwrap_err();
        assert!(e.contains("has 8 groups"), "{e}");
        assert!(validate(&plan(&refs[..7]), exists).is_ok());
        let e = validate(&plan(&[&["a"], &[]]), exists).unwrap_err();
        assert!(e.contains("group 2 has no VM"), "{e}");
        let e = validate(&plan(&[&["a", "b"], &["c", "a"]]), exists).unwrap_err();
        assert!(
            e.contains("VM a is in group 1 and group 2") && e.contains("one group"),
            "{e}"
        );
        let e = validate(&plan(&[&["a"], &["ghost"]]), exists).unwrap_err();
        assert!(
            e.contains("group 2") && e.contains("\"ghost\" does not exist"),
            "{e}"
        );
        let mut p = plan(&[&["a"]]);
        p.name = "bad name".into();
        assert!(validate(&p, exists)
            .unwrap_err()
            .contains("invalid plan name"));
    }

    #[test]
    fn action_validation() {
        let mut p = plan(&[&["a"]]);
        p.groups[0].pre = vec![PlanAction::Script(ScriptAction {
            name: "slow".into(),
            command: "sleep 1".into(),
            timeout_secs: 0,
            on: None,
        })];
        let e = validate(&p, exists).unwrap_err();
        assert!(
            e.contains("group 1 pre script \"slow\": timeout_secs 0"),
            "{e}"
        );
        if let PlanAction::Script(s) = &mut p.groups[0].pre[0] {
            s.timeout_secs = MAX_TIMEOUT_SECS + 1;
        }
        assert!(validate(&p, exists).is_err());
        p.groups[0].pre = vec![script("x", Some(&["failback"]))];
        let e = validate(&p, exists).unwrap_err();
        assert!(e.contains("unknown plan operation \"failback\""), "{e}");
        p.groups[0].pre = vec![script("x", Some(&[]))];
        assert!(validate(&p, exists).unwrap_err().contains("`on` is empty"));
        p.groups[0].post = vec![script("  ", None)];
        p.groups[0].pre = vec![];
        assert!(validate(&p, exists).unwrap_err().contains("group 1 post"));
        // JSON shape: externally tagged actions, unknown fields refused.
        let j = r#"{"name":"p","groups":[{"vms":["a"],"pre":[{"script":{"name":"s",
            "command":"true"}}],"post":[{"manual":{"name":"m","instructions":"check"}}]}]}"#;
        let d: PlanDefinition = serde_json::from_str(j).unwrap();
        assert!(validate(&d, exists).is_ok());
        assert!(matches!(&d.groups[0].pre[0], PlanAction::Script(s) if s.timeout_secs == 300));
        let bad = r#"{"name":"p","groups":[{"vms":["a"],"pre":[{"shell":{}}]}]}"#;
        assert!(serde_json::from_str::<PlanDefinition>(bad).is_err());
    }

    #[test]
    fn steps_per_operation() {
        let mut p = plan(&[&["a"], &["b", "c"]]);
        p.groups[0].post = vec![script("flush", None)];
        p.groups[1].pre = vec![
            script("warm", None),
            PlanAction::Manual(ManualAction {
                name: "check DNS".into(),
                instructions: "look".into(),
                on: None,
            }),
            script("commit-only", Some(&["commit"])),
        ];
        let names = |op| -> Vec<String> { steps_for(&p, op).into_iter().map(|s| s.name).collect() };
        assert_eq!(
            names(PlanOperation::Failover),
            [
                "Group 1: failover of a",
                "Group 1: post-action \"flush\"",
                "Group 2: pre-action \"warm\"",
                "Group 2: pre-action \"check DNS\" (manual)",
                "Group 2: failover of b, c",
            ]
        );
        assert_eq!(
            names(PlanOperation::TestFailover).len(),
            5,
            "default actions run for drills too"
        );
        assert_eq!(
            names(PlanOperation::Commit),
            [
                "Group 1: commit of a",
                "Group 2: pre-action \"commit-only\"",
                "Group 2: commit of b, c",
            ]
        );
        assert_eq!(
            names(PlanOperation::CleanupTestFailover),
            [
                "Group 1: cleanup-test-failover of a",
                "Group 2: cleanup-test-failover of b, c"
            ]
        );
        let steps = steps_for(&p, PlanOperation::Failover);
        assert_eq!(steps[3].kind, "manual");
        assert_eq!(steps[3].action_in(&p).map(|a| a.name()), Some("check DNS"));
        assert_eq!(steps[4].action_in(&p), None);
        assert!(steps.iter().all(|s| s.status == "pending"));
    }

    #[test]
    fn point_choices_and_operation_names() {
        assert_eq!(plan_point_choice(None), Ok("latest-processed"));
        for c in PLAN_POINT_CHOICES {
            assert_eq!(plan_point_choice(Some(c)), Ok(c));
        }
        for c in ["120-crash", "2026-01-01T00:00:00Z", "@1700000000"] {
            let e = plan_point_choice(Some(c)).unwrap_err();
            assert!(
                e.starts_with("Custom recovery points are not allowed for recovery plans"),
                "{e}"
            );
        }
        for o in PlanOperation::ALL {
            assert_eq!(o.as_str().parse::<PlanOperation>(), Ok(o));
        }
        assert_eq!(
            "cleanup".parse::<PlanOperation>(),
            Ok(PlanOperation::CleanupTestFailover)
        );
        assert!("change-recovery-point".parse::<PlanOperation>().is_err());
    }
}
