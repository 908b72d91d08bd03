//! Retention at the secondary: which recovery points and journal segments a VM keeps.
//!
//! [`apply_retention`] first rolls the VM's bases forward ([`Processor::roll_bases`], planned
//! by [`crate::plan_rolls`]: a base thinning dropped is replaced by the oldest point kept after
//! it, so that it and the journal before the new base can go), then runs the pure planner
//! ([`crate::plan_retention`]: ASR's thinning, the policy's retention, journal-backed "latest"
//! points only inside the CDP window, the base of every kept journal-backed point pinned) over
//! the VM's points and deletes the dropped ones; deletes every stored journal segment none of
//! whose records the plan keeps (each kept journal-backed point keeps the journal from its base
//! to its position, the CDP window the journal from its stored base on: the stored journal may
//! then have holes, which readers skip); then garbage-collects chunks, pages and roots no kept point references (the store's GC, with its grace period and
//! writer leases, never deletes what a point being written right now will reference).

use std::time::SystemTime;

use lifeboat_policy::ReplicationPolicy;
use lifeboat_store::{GcReport, Store};
use lifeboat_types::{Seq, VmId};

use crate::plan::{plan_retention_pinned, PointView};
use crate::roll::{plan_rolls, Roll};
use crate::{ProcessError, Processor};

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
    /// Bases rolled forward before the points were judged (see [`Processor::roll_bases`]).
    pub rolled: Vec<Roll>,
}

/// Applies `policy` to `vm`'s points and segments in `store` at time `now` (see the module
/// doc): [`Processor::retain`] with a processor of its own.
pub async fn apply_retention(
    store: &Store,
    vm: &VmId,
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> Result<RetentionReport, ProcessError> {
    Processor::new(store.clone(), vm.clone())
        .retain(policy, now)
        .await
}

impl Processor {
    /// Applies `policy` at `now`: rolls the bases forward ([`Processor::roll_bases`]), then
    /// deletes the points and segments the plan drops and collects garbage.
    pub async fn retain(
        &self,
        policy: &ReplicationPolicy,
        now: SystemTime,
    ) -> Result<RetentionReport, ProcessError> {
        let rolled = self.roll_bases(policy, now).await?;
        let mut report = release(&self.store, &self.vm, policy, now).await?;
        report.rolled = rolled;
        Ok(report)
    }

    /// Rolls the VM's bases forward as [`crate::plan_rolls`] plans: stores each roll's new base
    /// (if it is journal-backed), then re-bases the points after it that were read through the
    /// old one ([`lifeboat_store::Store::rebase_journal_point`]). Returns the rolls done.
    pub async fn roll_bases(
        &self,
        policy: &ReplicationPolicy,
        now: SystemTime,
    ) -> Result<Vec<Roll>, ProcessError> {
        let se = |e| self.store_err(e);
        let points = self.store.list_points(&self.vm).await.map_err(se)?;
        let views: Vec<PointView> = points.iter().filter_map(PointView::of).collect();
        let pins = pins(&self.store, &self.vm).await?;
        let rolls = plan_rolls(&views, policy, now, &pins);
        for roll in &rolls {
            let Some(to) = points.iter().find(|p| p.id == roll.to) else {
                continue;
            };
            tracing::info!(vm = %self.vm, from = %roll.from, to = %roll.to, rebase = roll.rebase.len(), "rolling the base forward");
            let base = self.store_point(to).await?;
            for id in &roll.rebase {
                self.store
                    .rebase_journal_point(&self.vm, id, &base)
                    .await
                    .map_err(se)?;
            }
        }
        Ok(rolls)
    }
}

/// Readers' pins on `vm`'s points that hold now (a lapsed lease is removed), as
/// `(base, seq)`. Leases age by the real clock, whatever time retention judges at.
async fn pins(store: &Store, vm: &VmId) -> Result<Vec<(Seq, Seq)>, ProcessError> {
    Ok(store
        .live_pins(vm, SystemTime::now())
        .await
        .map_err(|source| ProcessError::Store {
            vm: vm.clone(),
            source: Box::new(source),
        })?
        .into_iter()
        .map(|(_, p)| (Seq(p.base_seq), Seq(p.seq)))
        .collect())
}

/// Deletes what the retention plan drops, then collects garbage.
async fn release(
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
    let pins = pins(store, vm).await?;
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
