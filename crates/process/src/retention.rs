//! Retention at the secondary: which recovery points and journal segments a VM keeps.
//!
//! [`apply_retention`] runs the pure planner ([`lifeboat_policy::points_to_keep`]: ASR's
//! thinning, the policy's retention) over the VM's points and deletes the dropped ones; deletes
//! the stored journal segments that lie wholly before both the newest kept point older than the
//! CDP window (so any time inside the window can still be rebuilt from a point plus the journal
//! after it) and the newest point (never a record a future point needs); then garbage-collects
//! chunks, pages and roots no kept point references (the store's GC, with its grace period and
//! writer leases, never deletes what a point being written right now will reference).

use std::time::SystemTime;

use lifeboat_policy::{points_to_keep, PointMeta, ReplicationPolicy};
use lifeboat_store::{GcReport, Store};
use lifeboat_types::VmId;

use crate::ProcessError;

/// What [`apply_retention`] did.
#[derive(Debug, Default)]
pub struct RetentionReport {
    /// Points kept.
    pub kept: usize,
    /// Points deleted, with the reason.
    pub dropped: Vec<(String, String)>,
    /// Points whose time is in the future (clock skew): kept, worth a warning.
    pub future: Vec<String>,
    /// Journal segments deleted.
    pub segments_deleted: usize,
    /// What garbage collection deleted.
    pub gc: GcReport,
}

/// Applies `policy` to `vm`'s points and segments in `store` at time `now` (see the module doc).
pub async fn apply_retention(
    store: &Store,
    vm: &VmId,
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> Result<RetentionReport, ProcessError> {
    let se = |source| ProcessError::Store {
        vm: vm.clone(),
        source: Box::new(source),
    };
    let points = store.list_points(vm).await.map_err(se)?;
    let metas: Vec<PointMeta> = points
        .iter()
        .filter_map(|p| {
            Some(PointMeta {
                id: p.id.clone(),
                time: p.time(),
                kind: p.checkpoint_kind()?,
            })
        })
        .collect();
    let plan = points_to_keep(&metas, policy, now);
    let mut report = RetentionReport {
        kept: plan.keep.len(),
        future: plan.future.clone(),
        ..Default::default()
    };
    for (id, reason) in &plan.drop {
        store.delete_point(vm, id).await.map_err(se)?;
        report.dropped.push((id.clone(), reason.to_string()));
    }
    // Segments: keep every record after the newest kept point older than the CDP window, and
    // every record after the newest point.
    let window_start = now
        .checked_sub(policy.cdp_window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let kept: Vec<_> = points
        .iter()
        .filter(|p| plan.keep.contains(&p.id))
        .collect();
    let newest = kept.iter().map(|p| p.seq()).max();
    let before_window = kept
        .iter()
        .filter(|p| p.time() <= window_start)
        .map(|p| p.seq())
        .max();
    if let (Some(through), Some(newest)) = (before_window, newest) {
        report.segments_deleted = store
            .delete_segments_through(vm, through.min(newest))
            .await
            .map_err(se)?;
    }
    report.gc = store.gc().await.map_err(se)?;
    Ok(report)
}
