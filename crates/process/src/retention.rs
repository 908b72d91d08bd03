//! Retention at the secondary: which recovery points and journal segments a VM keeps.
//!
//! [`apply_retention`] runs the pure planner ([`crate::plan_retention`]: ASR's thinning, the
//! policy's retention, journal-backed "latest" points only inside the CDP window, the base of
//! every kept journal-backed point pinned) over the VM's points and deletes the dropped ones;
//! deletes every stored journal segment none of whose records the plan keeps (each kept
//! journal-backed point keeps the journal from its base to its position, the CDP window the
//! journal from its stored base on: the stored journal may then have holes, which readers
//! skip); then garbage-collects
//! chunks, pages and roots no kept point references (the store's GC, with its grace period and
//! writer leases, never deletes what a point being written right now will reference).

use std::time::SystemTime;

use lifeboat_policy::ReplicationPolicy;
use lifeboat_store::{GcReport, Store};
use lifeboat_types::{Seq, VmId};

use crate::plan::{plan_retention_pinned, PointView};
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
    /// Their bytes, as stored.
    pub segment_bytes_deleted: u64,
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
    let pins: Vec<(Seq, Seq)> = store
        .list_pins(vm)
        .await
        .map_err(se)?
        .into_iter()
        .map(|(_, p)| (Seq(p.base_seq), Seq(p.seq)))
        .collect();
    let plan = plan_retention_pinned(&views, policy, now, &pins);
    let mut report = RetentionReport {
        kept: plan.keep.len(),
        future: plan.future.clone(),
        ..Default::default()
    };
    for (id, reason) in &plan.drop {
        store.delete_point(vm, id).await.map_err(se)?;
        report.dropped.push((id.clone(), reason.clone()));
    }
    for seg in store.list_segments(vm).await.map_err(se)? {
        if !plan.keeps_records(seg.first_seq, seg.last_seq) {
            store.delete_segment(vm, &seg).await.map_err(se)?;
            report.segments_deleted += 1;
            report.segment_bytes_deleted += seg.size;
        }
    }
    report.gc = store.gc().await.map_err(se)?;
    Ok(report)
}
