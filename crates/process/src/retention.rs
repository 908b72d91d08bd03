//! Retention at the secondary: which recovery points and journal segments a VM keeps.
//!
//! [`apply_retention`] runs the pure planner ([`crate::plan_retention`]: ASR's thinning, the
//! policy's retention, journal-backed points only inside the CDP window, their bases pinned)
//! over the VM's points and deletes the dropped ones; deletes the stored journal segments the
//! plan releases (so any time inside the window, and every kept journal-backed point, can
//! still be rebuilt from a stored point plus the journal after it); then garbage-collects
//! chunks, pages and roots no kept point references (the store's GC, with its grace period and
//! writer leases, never deletes what a point being written right now will reference).

use std::time::SystemTime;

use lifeboat_policy::ReplicationPolicy;
use lifeboat_store::{GcReport, Store};
use lifeboat_types::VmId;

use crate::plan::{plan_retention, PointView};
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
    let views: Vec<PointView> = points.iter().filter_map(PointView::of).collect();
    let plan = plan_retention(&views, policy, now);
    let mut report = RetentionReport {
        kept: plan.keep.len(),
        future: plan.future.clone(),
        ..Default::default()
    };
    for (id, reason) in &plan.drop {
        store.delete_point(vm, id).await.map_err(se)?;
        report.dropped.push((id.clone(), reason.clone()));
    }
    if let Some(through) = plan.segments_through {
        report.segments_deleted = store
            .delete_segments_through(vm, through)
            .await
            .map_err(se)?;
    }
    report.gc = store.gc().await.map_err(se)?;
    Ok(report)
}
