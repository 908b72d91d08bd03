//! The replicated item's state machine: which operations an item allows in each state, and
//! where each operation takes it. Pure functions of (state, operation[, outcome]); the vault
//! persists the state and runs the operations as jobs.
//!
//! ```text
//!  NotProtected ──enable-protection──▶ EnablingProtection ──ok──▶ Protected ◀───────────┐
//!                                                                 │  │  │                 │
//!        ┌────────────────────────test-failover───────────────────┘  │  └─failover─┐     │
//!        ▼                                                            │             ▼     │
//!  TestFailoverInProgress ─▶ TestFailedOver ─cleanup-test-failover─▶  │   FailoverInProgress
//!                            (drill running)   CleanupInProgress ─ok──┘             │ ok  │
//!                                                                                   ▼     │
//!             change-recovery-point ◀──▶ ChangingRecoveryPoint        FailedOver (not committed)
//!                                                                      │ commit           │
//!                                                                      ▼                  │
//!                                    FailoverCommitted ◀──ok── CommitInProgress           │
//!                                      │ reprotect                                        │
//!                                      └─▶ ReprotectInProgress ──ok (direction reversed)──┘
//! ```
//!
//! Rules:
//! * [`begin`] starts an operation: allowed only if the operation is in
//!   [`allowed_operations`] of the state; it returns the in-progress state. In-progress states
//!   allow nothing (one operation at a time per item).
//! * [`finish`] ends it: success gives the operation's target state; failure returns the item
//!   to the state it started from — except a failed test failover, which still needs its
//!   cleanup (whatever it created must go), as in Azure Site Recovery.
//! * Disabling protection is allowed whenever the item is not in the middle of something and
//!   not failed over uncommitted (commit or change the point first).

use std::fmt;
use std::str::FromStr;

/// Where a replicated item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemState {
    /// A VM that is not replicated.
    NotProtected,
    /// Initial replication is running (the item carries the % synchronized).
    EnablingProtection,
    /// Replicating; recovery points are being made.
    Protected,
    /// A failover job is running.
    FailoverInProgress,
    /// The VM runs at the other region from a recovery point; not committed yet.
    FailedOver,
    /// The VM is being restarted from another recovery point.
    ChangingRecoveryPoint,
    /// Commit is running.
    CommitInProgress,
    /// The failover is final; the VM runs unprotected at the other region.
    FailoverCommitted,
    /// Replication is being turned around (re-protect).
    ReprotectInProgress,
    /// A DR drill is starting.
    TestFailoverInProgress,
    /// A DR drill copy runs in an isolated network; replication goes on.
    TestFailedOver,
    /// The drill copy is being removed.
    CleanupTestFailoverInProgress,
    /// Protection is being removed.
    DisablingProtection,
}

/// An operation on a replicated item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// Start replicating a VM (initial replication, then continuous).
    EnableProtection,
    /// Stop replicating and delete the item's recovery points.
    DisableProtection,
    /// Fail over to the other region from a chosen recovery point.
    Failover,
    /// Restart the failed-over VM from another recovery point (before commit).
    ChangeRecoveryPoint,
    /// Make the failover final.
    Commit,
    /// Replicate back from the region the VM now runs in.
    Reprotect,
    /// Start a DR drill.
    TestFailover,
    /// End a DR drill, removing its copy.
    CleanupTestFailover,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it set out to do.
    Succeeded,
    /// It stopped; the job says why.
    Failed,
}

/// An operation refused in the item's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", refusal_text(*.state, *.operation))]
pub struct Refused {
    /// The item's state.
    pub state: ItemState,
    /// The operation asked for.
    pub operation: Operation,
}

fn refusal_text(state: ItemState, op: Operation) -> String {
    let allowed = allowed_operations(state);
    let what = if allowed.is_empty() {
        if state.is_in_progress() {
            "no operation is allowed until it finishes (see the item's job)".to_string()
        } else {
            "no operation is allowed in this state".to_string()
        }
    } else {
        let names: Vec<&str> = allowed.iter().map(|o| o.as_str()).collect();
        format!("allowed in this state: {}", names.join(", "))
    };
    format!(
        "{} is not allowed: the item is {}; {what}",
        op.as_str(),
        state.label()
    )
}

impl ItemState {
    /// Every state, for exhaustive tests and documentation.
    pub const ALL: [ItemState; 13] = [
        ItemState::NotProtected,
        ItemState::EnablingProtection,
        ItemState::Protected,
        ItemState::FailoverInProgress,
        ItemState::FailedOver,
        ItemState::ChangingRecoveryPoint,
        ItemState::CommitInProgress,
        ItemState::FailoverCommitted,
        ItemState::ReprotectInProgress,
        ItemState::TestFailoverInProgress,
        ItemState::TestFailedOver,
        ItemState::CleanupTestFailoverInProgress,
        ItemState::DisablingProtection,
    ];

    /// The stable name used in the API and the database (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::NotProtected => "not-protected",
            ItemState::EnablingProtection => "enabling-protection",
            ItemState::Protected => "protected",
            ItemState::FailoverInProgress => "failover-in-progress",
            ItemState::FailedOver => "failed-over",
            ItemState::ChangingRecoveryPoint => "changing-recovery-point",
            ItemState::CommitInProgress => "commit-in-progress",
            ItemState::FailoverCommitted => "failover-committed",
            ItemState::ReprotectInProgress => "reprotect-in-progress",
            ItemState::TestFailoverInProgress => "test-failover-in-progress",
            ItemState::TestFailedOver => "test-failed-over",
            ItemState::CleanupTestFailoverInProgress => "cleanup-test-failover-in-progress",
            ItemState::DisablingProtection => "disabling-protection",
        }
    }

    /// What an operator reads (ASR's wording where it has one).
    pub fn label(self) -> &'static str {
        match self {
            ItemState::NotProtected => "Not protected",
            ItemState::EnablingProtection => "Enabling protection",
            ItemState::Protected => "Protected",
            ItemState::FailoverInProgress => "Failover in progress",
            ItemState::FailedOver => "Failed over (not committed)",
            ItemState::ChangingRecoveryPoint => "Changing recovery point",
            ItemState::CommitInProgress => "Commit in progress",
            ItemState::FailoverCommitted => "Failover committed",
            ItemState::ReprotectInProgress => "Re-protect in progress",
            ItemState::TestFailoverInProgress => "Test failover in progress",
            ItemState::TestFailedOver => "Test failover done (cleanup pending)",
            ItemState::CleanupTestFailoverInProgress => "Cleanup test failover in progress",
            ItemState::DisablingProtection => "Disabling protection",
        }
    }

    /// Whether an operation is running on the item.
    pub fn is_in_progress(self) -> bool {
        matches!(
            self,
            ItemState::EnablingProtection
                | ItemState::FailoverInProgress
                | ItemState::ChangingRecoveryPoint
                | ItemState::CommitInProgress
                | ItemState::ReprotectInProgress
                | ItemState::TestFailoverInProgress
                | ItemState::CleanupTestFailoverInProgress
                | ItemState::DisablingProtection
        )
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for ItemState {
    type Err = crate::TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| crate::TypeError::UnknownName {
                what: "item state",
                name: s.to_string(),
            })
    }
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 8] = [
        Operation::EnableProtection,
        Operation::DisableProtection,
        Operation::Failover,
        Operation::ChangeRecoveryPoint,
        Operation::Commit,
        Operation::Reprotect,
        Operation::TestFailover,
        Operation::CleanupTestFailover,
    ];

    /// The stable name used in the API and the CLI (kebab-case).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::EnableProtection => "enable-protection",
            Operation::DisableProtection => "disable-protection",
            Operation::Failover => "failover",
            Operation::ChangeRecoveryPoint => "change-recovery-point",
            Operation::Commit => "commit",
            Operation::Reprotect => "reprotect",
            Operation::TestFailover => "test-failover",
            Operation::CleanupTestFailover => "cleanup-test-failover",
        }
    }

    /// The state the item is in while the operation runs.
    pub fn in_progress(self) -> ItemState {
        match self {
            Operation::EnableProtection => ItemState::EnablingProtection,
            Operation::DisableProtection => ItemState::DisablingProtection,
            Operation::Failover => ItemState::FailoverInProgress,
            Operation::ChangeRecoveryPoint => ItemState::ChangingRecoveryPoint,
            Operation::Commit => ItemState::CommitInProgress,
            Operation::Reprotect => ItemState::ReprotectInProgress,
            Operation::TestFailover => ItemState::TestFailoverInProgress,
            Operation::CleanupTestFailover => ItemState::CleanupTestFailoverInProgress,
        }
    }

    /// The state the item reaches when the operation succeeds.
    pub fn target(self) -> ItemState {
        match self {
            Operation::EnableProtection => ItemState::Protected,
            Operation::DisableProtection => ItemState::NotProtected,
            Operation::Failover => ItemState::FailedOver,
            Operation::ChangeRecoveryPoint => ItemState::FailedOver,
            Operation::Commit => ItemState::FailoverCommitted,
            Operation::Reprotect => ItemState::Protected,
            Operation::TestFailover => ItemState::TestFailedOver,
            Operation::CleanupTestFailover => ItemState::Protected,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = crate::TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| crate::TypeError::UnknownName {
                what: "operation",
                name: s.to_string(),
            })
    }
}

/// The operations an item allows in `state` (ASR's `allowedOperations`).
pub fn allowed_operations(state: ItemState) -> &'static [Operation] {
    use Operation::*;
    match state {
        ItemState::NotProtected => &[EnableProtection],
        ItemState::Protected => &[Failover, TestFailover, DisableProtection],
        ItemState::FailedOver => &[ChangeRecoveryPoint, Commit],
        ItemState::FailoverCommitted => &[Reprotect, DisableProtection],
        ItemState::TestFailedOver => &[CleanupTestFailover],
        ItemState::EnablingProtection
        | ItemState::FailoverInProgress
        | ItemState::ChangingRecoveryPoint
        | ItemState::CommitInProgress
        | ItemState::ReprotectInProgress
        | ItemState::TestFailoverInProgress
        | ItemState::CleanupTestFailoverInProgress
        | ItemState::DisablingProtection => &[],
    }
}

/// Starts `op` on an item in `state`: the in-progress state, or why not.
pub fn begin(state: ItemState, op: Operation) -> Result<ItemState, Refused> {
    if allowed_operations(state).contains(&op) {
        Ok(op.in_progress())
    } else {
        Err(Refused {
            state,
            operation: op,
        })
    }
}

/// Ends `op`, begun from state `from`, with `outcome`: the item's new state.
pub fn finish(from: ItemState, op: Operation, outcome: Outcome) -> ItemState {
    match outcome {
        Outcome::Succeeded => op.target(),
        Outcome::Failed if op == Operation::TestFailover => ItemState::TestFailedOver,
        Outcome::Failed => from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};

    #[test]
    fn every_state_and_operation_pair_is_decided_as_documented() {
        for s in ItemState::ALL {
            for op in Operation::ALL {
                let allowed = allowed_operations(s).contains(&op);
                match begin(s, op) {
                    Ok(p) => {
                        assert!(allowed, "{s:?} {op:?}");
                        assert_eq!(p, op.in_progress());
                        assert!(p.is_in_progress());
                        // In progress: nothing else may start.
                        assert!(allowed_operations(p).is_empty(), "{p:?}");
                        assert_eq!(finish(s, op, Outcome::Succeeded), op.target());
                        let failed = finish(s, op, Outcome::Failed);
                        if op == Operation::TestFailover {
                            assert_eq!(failed, ItemState::TestFailedOver);
                        } else {
                            assert_eq!(failed, s, "a failed {op:?} returns to {s:?}");
                        }
                        assert!(!op.target().is_in_progress());
                    }
                    Err(r) => {
                        assert!(!allowed, "{s:?} {op:?}");
                        let msg = r.to_string();
                        assert!(msg.contains(op.as_str()), "{msg}");
                        assert!(msg.contains(s.label()), "{msg}");
                        for a in allowed_operations(s) {
                            assert!(msg.contains(a.as_str()), "{msg}");
                        }
                    }
                }
            }
            if s.is_in_progress() {
                assert!(allowed_operations(s).is_empty(), "{s:?}");
            }
        }
    }

    #[test]
    fn every_state_is_reachable_and_every_settled_state_has_a_way_on() {
        let mut seen = BTreeSet::from([ItemState::NotProtected]);
        let mut queue = VecDeque::from([ItemState::NotProtected]);
        while let Some(s) = queue.pop_front() {
            for op in allowed_operations(s) {
                let p = begin(s, *op).unwrap();
                for n in [
                    p,
                    finish(s, *op, Outcome::Succeeded),
                    finish(s, *op, Outcome::Failed),
                ] {
                    if seen.insert(n) {
                        queue.push_back(n);
                    }
                }
            }
        }
        assert_eq!(seen, ItemState::ALL.into_iter().collect());
        for s in ItemState::ALL.into_iter().filter(|s| !s.is_in_progress()) {
            assert!(!allowed_operations(s).is_empty(), "{s:?} is a dead end");
        }
    }

    #[test]
    fn the_tutorial_round_trip() {
        use Operation::*;
        let mut s = ItemState::NotProtected;
        for op in [
            EnableProtection,
            TestFailover,
            CleanupTestFailover,
            Failover,
            ChangeRecoveryPoint,
            Commit,
            Reprotect,
            Failover,
            Commit,
            Reprotect,
        ] {
            let from = s;
            begin(s, op).unwrap();
            s = finish(from, op, Outcome::Succeeded);
        }
        assert_eq!(s, ItemState::Protected);
        // Wrong-state operations of the issue: commit before failover, failover twice, change
        // the point after commit.
        let e = begin(ItemState::Protected, Commit).unwrap_err();
        assert_eq!(
            e.to_string(),
            "commit is not allowed: the item is Protected; allowed in this state: failover, \
             test-failover, disable-protection"
        );
        let e = begin(ItemState::FailedOver, Failover).unwrap_err();
        assert!(
            e.to_string().contains("change-recovery-point, commit"),
            "{e}"
        );
        let e = begin(ItemState::FailoverInProgress, Failover).unwrap_err();
        assert!(e.to_string().contains("until it finishes"), "{e}");
        assert!(begin(ItemState::FailoverCommitted, ChangeRecoveryPoint).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in ItemState::ALL {
            assert_eq!(s.as_str().parse::<ItemState>().unwrap(), s);
        }
        for o in Operation::ALL {
            assert_eq!(o.as_str().parse::<Operation>().unwrap(), o);
        }
        let e = "failed_over".parse::<ItemState>().unwrap_err();
        assert!(e.to_string().contains("failed_over"), "{e}");
    }
}
