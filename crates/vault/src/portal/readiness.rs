//! Failover readiness: the prerequisites of a failover of one item, each passed or failed with
//! its reason. [`checklist`] is pure (the data in, the checks out); [`gather`] reads the data.

use maud::{html, Markup};

use super::{utc, Portal};
use crate::model::{Item, PointInfo};

/// One prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    /// What is checked (stable: the page's `data-check`).
    pub(crate) key: &'static str,
    /// What is checked, for people.
    pub(crate) label: String,
    /// Passed.
    pub(crate) ok: bool,
    /// Why it passed or failed (and what to do).
    pub(crate) reason: String,
}

/// What the checks are made of.
pub(crate) struct Inputs<'a> {
    /// The item.
    pub(crate) item: &'a Item,
    /// The target region's agent: its host and how long ago it was seen (ms), or why none
    /// answers.
    pub(crate) agent: Result<(String, i64), String>,
    /// The item's recovery points in the target region (oldest first), or why they cannot be
    /// listed.
    pub(crate) points: Result<&'a [PointInfo], String>,
}

/// The failover prerequisites of `i.item`, in order: the target region's agent answers, a
/// restorable recovery point exists there, the state allows failover, the item is not in a
/// replication group.
pub(crate) fn checklist(i: &Inputs<'_>) -> Vec<Check> {
    let item = i.item;
    let target = &item.target_region;
    let agent = match &i.agent {
        Ok((host, ago_ms)) => Check {
            key: "agent",
            label: format!("Agent in region {target} answering"),
            ok: true,
            reason: format!(
                "host {host} last reported {} s ago",
                ((*ago_ms).max(0) + 500) / 1000
            ),
        },
        Err(e) => Check {
            key: "agent",
            label: format!("Agent in region {target} answering"),
            ok: false,
            reason: e.clone(),
        },
    };
    let point = match &i.points {
        Ok(pts) => match pts.iter().rev().find(|p| p.form != "initial-copy") {
            Some(p) => Check {
                key: "point",
                label: format!("Restorable recovery point in region {target}"),
                ok: true,
                reason: format!("newest: {} ({}, {})", utc(p.time), p.id, p.kind),
            },
            None => Check {
                key: "point",
                label: format!("Restorable recovery point in region {target}"),
                ok: false,
                reason: if pts.is_empty() {
                    "no recovery point yet: wait for the initial replication to finish".into()
                } else {
                    "only the initial copy so far (not restorable): wait for the first \
                     processed point"
                        .into()
                },
            },
        },
        Err(e) => Check {
            key: "point",
            label: format!("Restorable recovery point in region {target}"),
            ok: false,
            reason: format!("the recovery points cannot be listed: {e}"),
        },
    };
    let allowed = item.allowed_operations.iter().any(|o| o == "failover");
    let state = Check {
        key: "state",
        label: "State allows failover".into(),
        ok: allowed,
        reason: if allowed {
            format!("the item is {}", item.state_label)
        } else if let Some(j) = item.job {
            format!(
                "the item is {} (job {j} running): wait for it to end",
                item.state_label
            )
        } else {
            let now = if item.allowed_operations.is_empty() {
                "none".to_string()
            } else {
                item.allowed_operations.join(", ")
            };
            format!(
                "the item is {}: failover is not possible now (allowed: {now})",
                item.state_label
            )
        },
    };
    let group = match &item.replication_group {
        None => Check {
            key: "group",
            label: "Not in a replication group".into(),
            ok: true,
            reason: "the VM fails over on its own".into(),
        },
        Some(g) => Check {
            key: "group",
            label: "Not in a replication group".into(),
            ok: false,
            reason: format!(
                "VM {} is in replication group {g}: fail over the group {g} (its members \
                 share their points)",
                item.vm
            ),
        },
    };
    vec![agent, point, state, group]
}

/// The data of the checks of `item`, read from the vault and the target store.
pub(crate) async fn gather(p: &Portal, item: &Item) -> Vec<Check> {
    let agent = p
        .vault
        .live_host(&item.target_region)
        .map(|h| (h.name, crate::db::now_ms() - h.last_seen))
        .map_err(|e| e.to_string());
    let points = p.vault.points(&item.vm).await.map_err(|e| e.to_string());
    checklist(&Inputs {
        item,
        agent,
        points: points.as_deref().map_err(Clone::clone),
    })
}

/// The checklist as the overview shows it (`#readiness`).
pub(crate) fn markup(item: &Item, checks: &[Check]) -> Markup {
    let failing = checks.iter().filter(|c| !c.ok).count();
    html! {
        p #readiness-summary {
            @if failing == 0 { "Ready for failover to " (item.target_region) }
            @else { "Not ready: " (failing) " of " (checks.len()) " checks fail" }
        }
        ul #readiness-checks {
            @for c in checks {
                li class=(if c.ok { "pass" } else { "fail" }) data-check=(c.key) {
                    (if c.ok { "✔ " } else { "✘ " }) strong { (c.label) } ": " (c.reason)
                    @if c.key == "group" && !c.ok {
                        @if let Some(g) = &item.replication_group {
                            " " a href={ "/portal/groups/" (g) } { "group " (g) }
                        }
                    }
                }
            }
        }
    }
}

/// An item in `state` allowing `allowed`, in replication group `group` (for unit tests).
#[cfg(test)]
pub(crate) fn test_item(state: &str, allowed: &[&str], group: Option<&str>) -> Item {
    Item {
        vm: "web".into(),
        state: state.into(),
        state_label: state.into(),
        allowed_operations: allowed.iter().map(|s| s.to_string()).collect(),
        policy: "default".into(),
        source_region: "primary".into(),
        target_region: "secondary".into(),
        active_region: "primary".into(),
        percent_synced: 100,
        epoch: 1,
        job: None,
        rpo_ms: None,
        hydrated_percent: None,
        target_vcpus: None,
        target_memory_mib: None,
        drill: None,
        last_drill_at: None,
        last_drill_notes: None,
        replication_group: group.map(str::to_string),
        app_misses: 0,
        app_error: None,
        updated_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::test_item as item;
    use super::*;

    fn point(id: &str, form: &str) -> PointInfo {
        PointInfo {
            id: id.into(),
            time: 1_700_000_000_000,
            kind: "crash-consistent".into(),
            form: form.into(),
            disks: "1 of 1 disks".into(),
        }
    }

    fn failing(checks: &[Check]) -> Vec<&'static str> {
        checks.iter().filter(|c| !c.ok).map(|c| c.key).collect()
    }

    #[test]
    fn all_pass_for_a_protected_item_with_a_live_agent_and_a_point() {
        let it = item("protected", &["failover", "test-failover"], None);
        let pts = [point("1-crash", "initial-copy"), point("9-crash", "stored")];
        let c = checklist(&Inputs {
            item: &it,
            agent: Ok(("host-b".into(), 2_400)),
            points: Ok(&pts),
        });
        assert_eq!(failing(&c), Vec::<&str>::new(), "{c:?}");
        assert_eq!(c.len(), 4);
        assert!(c[0].reason.contains("host-b") && c[0].reason.contains("2 s"));
        assert!(c[1].reason.contains("9-crash"), "{}", c[1].reason);
    }

    #[test]
    fn each_check_fails_with_its_reason() {
        let it = item(
            "failed-over",
            &["commit", "change-recovery-point"],
            Some("shop"),
        );
        let pts = [point("1-crash", "initial-copy")];
        let c = checklist(&Inputs {
            item: &it,
            agent: Err("no agent has registered in region secondary".into()),
            points: Ok(&pts),
        });
        assert_eq!(failing(&c), ["agent", "point", "state", "group"]);
        assert!(c[0].reason.contains("no agent"), "{}", c[0].reason);
        assert!(c[1].reason.contains("initial copy"), "{}", c[1].reason);
        assert!(
            c[2].reason.contains("failed-over") && c[2].reason.contains("commit"),
            "{}",
            c[2].reason
        );
        assert!(
            c[3].reason.contains("fail over the group shop"),
            "{}",
            c[3].reason
        );
    }

    #[test]
    fn no_points_and_unreadable_stores_and_running_jobs_are_explained() {
        let mut it = item("failover-in-progress", &[], None);
        it.job = Some(7);
        let c = checklist(&Inputs {
            item: &it,
            agent: Ok(("h".into(), 0)),
            points: Ok(&[]),
        });
        assert_eq!(failing(&c), ["point", "state"]);
        assert!(c[1].reason.contains("no recovery point yet"));
        assert!(c[2].reason.contains("job 7 running"), "{}", c[2].reason);
        let c = checklist(&Inputs {
            item: &it,
            agent: Ok(("h".into(), 0)),
            points: Err("region store unreachable".into()),
        });
        assert!(c[1]
            .reason
            .contains("cannot be listed: region store unreachable"));
    }

    #[test]
    fn the_markup_says_ready_only_when_every_check_passes() {
        let it = item("protected", &["failover"], None);
        let pts = [point("9-crash", "stored")];
        let ok = checklist(&Inputs {
            item: &it,
            agent: Ok(("h".into(), 0)),
            points: Ok(&pts),
        });
        let html = markup(&it, &ok).into_string();
        assert!(html.contains("Ready for failover to secondary"), "{html}");
        let g = item("protected", &["failover"], Some("g<1>"));
        let bad = checklist(&Inputs {
            item: &g,
            agent: Ok(("h".into(), 0)),
            points: Ok(&pts),
        });
        let html = markup(&g, &bad).into_string();
        assert!(html.contains("Not ready: 1 of 4 checks fail"), "{html}");
        assert!(
            html.contains("g&lt;1&gt;") && !html.contains("g<1>"),
            "{html}"
        );
    }
}
