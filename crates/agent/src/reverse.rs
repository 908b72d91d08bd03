//! Re-protect at the host running a failed-over VM: its journal becomes the source of a
//! reverse replication back to the original region, and what diverged from the original disks
//! is re-journaled so that it ships too.
//!
//! 1. [`RecoveredVm::reverse`] seals the journal and fixes `p0`, its last record: the
//!    original region's store is seeded from the original disks as the initial copy at `p0`,
//!    and only the records after `p0` are shipped. The ranges the VM wrote since its recovery
//!    (records `1..=p0`) are read from the journal and persisted with `p0` in
//!    `<dir>/reverse.json` (write-temp-then-rename) *before* shipping starts (the spool then
//!    drops the records up to `p0`). The resync plan (`lifeboat_policy::plan_resync`) adds
//!    what the old source wrote after the point, as the vault reports it.
//! 2. [`RecoveredVm::resync`] re-journals every planned range as it is now
//!    (`RecoveryDisk::rewrite`: the image's bytes under the chunk locks, as one record), or
//!    copies the disks whole when the original disks are gone. Its end (the journal position
//!    after the last re-journaled range) is where the seeded copy becomes consistent: the
//!    original disks, plus records `p0 + 1 ..= end`, are the VM's disks at `end`, because every
//!    block not in the plan is the recovery point's at both sides.
//!
//! After kill -9 the agent reopens `reverse.json`: replication resumes after `p0`, and a
//! resync that did not reach its end runs again from the start (re-journaling a range twice
//! is harmless: the second record carries the same or newer bytes, in journal order).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lifeboat_journal::read_records;
use lifeboat_policy::{plan_resync, ResyncInputs, ResyncPlan};
use lifeboat_types::{Extents, RecordKind, Seq};
use lifeboat_vault::agent_wire::{
    Protection, ResyncRequest, ReverseAnswer, ReverseRequest, ReverseStatus, ShutdownAnswer,
};
use serde::{Deserialize, Serialize};

use super::{lock, RecoveredVm};
use crate::replication::Start;
use crate::state::write_json;

/// The largest range re-journaled as one record.
const PIECE: u64 = 1 << 20;

/// Re-protect's persisted state (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReverseState {
    /// Where the reverse replication ships.
    pub protect: Protection,
    /// It ships the records after this position.
    pub p0: u64,
    /// The ranges the VM wrote since its recovery (records `1..=p0`), per disk.
    pub since_recovery: Option<Vec<Extents>>,
    /// Why they are not known.
    pub since_unknown: Option<String>,
    /// The planned ranges, when the plan is a delta.
    pub planned: Option<Vec<Extents>>,
    /// The resync asked for.
    pub resync: Option<ResyncRequest>,
    /// The journal position after the resync, once done.
    pub end: Option<u64>,
}

impl ReverseState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("reverse.json")
    }

    /// The state of a recovery directory, if re-protect began there.
    pub fn load(dir: &Path) -> Result<Option<ReverseState>> {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is damaged", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn save(&self, dir: &Path) -> Result<()> {
        write_json(&Self::path(dir), self)
    }
}

/// `<dir>/diverged.json`: the ranges of the records `1..=through`, folded out of the journal
/// of a VM that does not replicate (see [`RecoveredVm::fold_journal`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Folded {
    through: u64,
    disks: Vec<Extents>,
}

impl Folded {
    fn path(dir: &Path) -> PathBuf {
        dir.join("diverged.json")
    }

    fn load(dir: &Path) -> Result<Folded> {
        let p = Self::path(dir);
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("{} is damaged", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Folded::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
}

/// The journal of a VM that does not replicate is folded once its sealed segments pass this.
pub const FOLD_AFTER_BYTES: u64 = 256 << 20;
/// A folded summary with more ranges than this is widened to [`FOLD_GRANULE`] blocks.
const FOLD_MAX_RANGES: usize = 1 << 20;
const FOLD_GRANULE: u64 = 64 << 10;

/// The ranges of records `1..=p0` (the folded summary of the oldest, then the journal in
/// `dir`), per disk; an error if records between the two are gone.
fn since_recovery(dir: &Path, p0: Seq, disks: usize) -> Result<Vec<Extents>> {
    let folded = Folded::load(dir.parent().unwrap_or(dir))?;
    let mut out = folded.disks.clone();
    out.resize(out.len().max(disks), Extents::new());
    if p0.0 <= folded.through {
        return Ok(out);
    }
    let mut first = true;
    let mut seen = Seq(folded.through);
    for r in read_records(dir, Seq(folded.through + 1)).context("reading the journal")? {
        let r = r.context("reading the journal")?;
        if r.seq.0 <= folded.through {
            continue; // folded already (a fold whose segment removal did not finish)
        }
        if first && r.seq.0 != folded.through + 1 {
            bail!(
                "the journal starts at record {}: earlier writes are no longer in it",
                r.seq
            );
        }
        first = false;
        if r.seq > p0 {
            break;
        }
        seen = r.seq;
        if r.kind == RecordKind::Checkpoint {
            continue;
        }
        let d = r.disk.0 as usize;
        if d >= out.len() {
            out.resize(d + 1, Extents::new());
        }
        out[d].insert(r.offset, r.length);
    }
    if first {
        bail!("the journal has no records up to {p0}");
    }
    if seen < p0 {
        bail!("the journal could be read only up to record {seen}, not {p0}");
    }
    Ok(out)
}

/// Folds the records `(folded.through, upto]` of `dir` into `folded`.
fn fold(dir: &Path, folded: &mut Folded, upto: Seq) -> Result<()> {
    for r in read_records(dir, Seq(folded.through + 1)).context("reading the journal")? {
        let r = r.context("reading the journal")?;
        if r.seq.0 <= folded.through {
            continue;
        }
        if r.seq.0 != folded.through + 1 {
            bail!(
                "the journal jumps from record {} to {}",
                folded.through,
                r.seq
            );
        }
        if r.seq > upto {
            break;
        }
        folded.through = r.seq.0;
        if r.kind == RecordKind::Checkpoint {
            continue;
        }
        let d = r.disk.0 as usize;
        if d >= folded.disks.len() {
            folded.disks.resize(d + 1, Extents::new());
        }
        folded.disks[d].insert(r.offset, r.length);
    }
    for e in folded.disks.iter_mut() {
        if e.ranges().len() > FOLD_MAX_RANGES {
            *e = e.coarsen(FOLD_GRANULE);
        }
    }
    Ok(())
}

impl RecoveredVm {
    /// The store it was recovered from.
    pub fn store_url(&self) -> String {
        lock(&self.state).spec.store_url.clone()
    }

    /// The VM.
    pub fn vm(&self) -> &lifeboat_types::VmId {
        &self.vm
    }

    /// Its replication as a source (re-protected), for the vault.
    pub async fn source_status(&self) -> lifeboat_vault::agent_wire::SourceStatus {
        let running = crate::vm::running(&self.qemu).await;
        crate::source::source_status(
            &self.vm,
            &self.repl,
            &self.journal,
            running,
            &self.serial_log(),
        )
    }

    /// Fenced: the VM failed over elsewhere; QEMU is killed and not started again.
    pub async fn halt(&self) {
        if let Err(e) = self.update(|s| s.running = false) {
            tracing::error!(vm = %self.vm, error = format!("{e:#}"), "persisting a fenced VM's state");
        }
        crate::vm::kill(&self.qemu).await;
    }

    /// Keeps the journal of a VM that does not replicate bounded: once its sealed segments
    /// pass [`FOLD_AFTER_BYTES`], the ranges of those the target images hold durably are
    /// folded into `<dir>/diverged.json` (write-temp-then-rename) and the segments deleted.
    /// Re-protect still knows every range written since the recovery; it may send a little
    /// more (a summary past a million ranges is widened to 64 KiB blocks), never less.
    pub fn fold_journal(&self) -> Result<usize> {
        if self.repl.is_on() || lock(&self.reverse).is_some() {
            return Ok(0); // shipping owns the spool
        }
        let segs = self
            .journal
            .sealed_segments()
            .context("listing the journal")?;
        if segs.iter().map(|s| s.bytes).sum::<u64>() < FOLD_AFTER_BYTES {
            return Ok(0);
        }
        let applied = self
            .disks
            .iter()
            .map(|d| d.applied_seq())
            .min()
            .unwrap_or(Seq(0));
        let Some(upto) = segs
            .iter()
            .map(|s| s.last_seq)
            .filter(|l| *l <= applied)
            .max()
        else {
            return Ok(0);
        };
        let mut folded = Folded::load(&self.dir)?;
        fold(self.journal.dir(), &mut folded, upto)?;
        write_json(&Folded::path(&self.dir), &folded)?;
        let n = self
            .journal
            .remove_sealed_through(upto)
            .context("removing folded journal segments")?;
        tracing::info!(vm = %self.vm, through = upto.0, segments = n, "journal folded into the divergence summary");
        Ok(n)
    }

    /// The target images.
    pub fn images(&self) -> Vec<PathBuf> {
        self.disks
            .iter()
            .map(|d| d.image_path().to_path_buf())
            .collect()
    }

    /// The journal's directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.journal.dir().to_path_buf()
    }

    /// The failover was committed: the disks are local and final.
    pub fn is_committed(&self) -> bool {
        lock(&self.state).committed
    }

    /// The journal position of the point it was recovered from.
    pub fn point_seq(&self) -> u64 {
        lock(&self.state).point_seq
    }

    /// The journal's last record.
    pub fn last_seq(&self) -> Seq {
        self.journal.last_seq()
    }

    /// Re-protect, step 1 (see the module doc): replication back to `req.protect`, after
    /// `p0`; returns `p0` and the resync plan.
    pub async fn reverse(self: &Arc<Self>, req: ReverseRequest) -> Result<ReverseAnswer> {
        if !self.is_committed() {
            bail!(
                "VM {}: the failover is not committed: commit it before re-protect",
                self.vm
            );
        }
        let existing = lock(&self.reverse).clone();
        let mut st = match existing {
            Some(r) if r.protect == req.protect => r,
            _ => {
                let j = self.journal.clone();
                let n = self.disks.len();
                let (p0, since) = tokio::task::spawn_blocking(move || -> Result<_> {
                    j.seal().context("sealing the journal")?;
                    let p0 = j.last_seq();
                    Ok((p0, since_recovery(j.dir(), p0, n)))
                })
                .await
                .context("journal task")??;
                let (since_recovery, since_unknown) = match since {
                    Ok(e) => (Some(e), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                };
                ReverseState {
                    protect: req.protect.clone(),
                    p0: p0.0,
                    since_recovery,
                    since_unknown,
                    planned: None,
                    resync: None,
                    end: None,
                }
            }
        };
        let sizes: Vec<u64> = self.disks.iter().map(|d| d.size()).collect();
        let plan = plan_resync(&ResyncInputs {
            sizes,
            original: req.original_sizes.clone().ok_or_else(|| {
                req.unusable
                    .clone()
                    .unwrap_or_else(|| "the original disks were not reported".into())
            }),
            since_recovery: st
                .since_recovery
                .clone()
                .ok_or_else(|| st.since_unknown.clone().unwrap_or_default()),
            point_seq: self.point_seq(),
            after_point_store: req.after_point_store.clone(),
            old_spool: req.old_spool.clone(),
        });
        let answer = match &plan {
            ResyncPlan::Delta { disks } => {
                st.planned = Some(disks.clone());
                ReverseAnswer {
                    p0: st.p0,
                    plan: "delta".into(),
                    why: None,
                    bytes: disks.iter().map(|e| e.bytes()).sum(),
                    ranges: disks.iter().map(|e| e.ranges().len() as u64).sum(),
                }
            }
            ResyncPlan::Digests { why } | ResyncPlan::Full { why } => {
                st.planned = None;
                ReverseAnswer {
                    p0: st.p0,
                    plan: if matches!(plan, ResyncPlan::Full { .. }) {
                        "full".into()
                    } else {
                        "digests".into()
                    },
                    why: Some(why.clone()),
                    bytes: 0,
                    ranges: 0,
                }
            }
        };
        // Persisted before shipping starts: the spool drops the records up to p0 after it.
        st.save(&self.dir)?;
        *lock(&self.reverse) = Some(st.clone());
        lock(&self.resync_status).p0 = st.p0;
        self.repl
            .set(Some(st.protect.clone()), Start::After(Seq(st.p0)))
            .await?;
        tracing::info!(vm = %self.vm, p0 = st.p0, plan = %answer.plan, why = ?answer.why, "re-protect: replicating back");
        Ok(answer)
    }

    /// Re-protect, step 2: re-journals what diverged (or copies everything), in the background;
    /// [`RecoveredVm::reverse_status`] says when it is done. Asking again for the same resync
    /// changes nothing.
    pub fn resync(self: &Arc<Self>, req: ResyncRequest) -> Result<()> {
        let mut st = lock(&self.reverse)
            .clone()
            .ok_or_else(|| anyhow!("VM {}: re-protect has not begun here", self.vm))?;
        if req == ResyncRequest::Planned && st.planned.is_none() {
            bail!(
                "VM {}: the resync plan is not a delta: send the ranges that differ, or full",
                self.vm
            );
        }
        let running = lock(&self.resync)
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        if st.resync.as_ref() == Some(&req) && (st.end.is_some() || running) {
            return Ok(());
        }
        st.resync = Some(req);
        st.end = None;
        st.save(&self.dir)?;
        *lock(&self.reverse) = Some(st);
        self.spawn_resync();
        Ok(())
    }

    /// Resumes re-protect after a restart (see the module doc).
    pub(super) async fn resume_reverse(self: &Arc<Self>, st: ReverseState) -> Result<()> {
        let start = if st.resync == Some(ResyncRequest::Full) {
            Start::CopyAfter(Seq(st.p0))
        } else {
            Start::After(Seq(st.p0))
        };
        let pending = st.resync.is_some() && st.end.is_none();
        {
            let mut s = lock(&self.resync_status);
            s.p0 = st.p0;
            s.end = st.end;
            s.done = st.end.is_some();
            s.percent = if s.done { 100 } else { 0 };
        }
        self.repl.set(Some(st.protect.clone()), start).await?;
        *lock(&self.reverse) = Some(st);
        if pending {
            self.spawn_resync();
        }
        Ok(())
    }

    fn spawn_resync(self: &Arc<Self>) {
        if let Some(t) = lock(&self.resync).take() {
            t.abort();
        }
        {
            let mut s = lock(&self.resync_status);
            s.done = false;
            s.end = None;
            s.percent = 0;
            s.bytes = 0;
            s.error = None;
        }
        let me = self.clone();
        *lock(&self.resync) = Some(tokio::spawn(async move {
            loop {
                match me.run_resync().await {
                    Ok(end) => {
                        let saved = {
                            let mut r = lock(&me.reverse);
                            r.as_mut().map(|st| {
                                st.end = Some(end.0);
                                st.clone()
                            })
                        };
                        if let Some(st) = saved {
                            if let Err(e) = st.save(&me.dir) {
                                lock(&me.resync_status).error = Some(format!("{e:#}"));
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                continue;
                            }
                        }
                        let mut s = lock(&me.resync_status);
                        s.done = true;
                        s.end = Some(end.0);
                        s.percent = 100;
                        tracing::info!(vm = %me.vm, end = end.0, bytes = s.bytes, "re-protect: resync done");
                        return;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::warn!(vm = %me.vm, error = %msg, "re-protect: resync failed; retrying");
                        lock(&me.resync_status).error = Some(msg);
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }

    async fn run_resync(self: &Arc<Self>) -> Result<Seq> {
        let st = lock(&self.reverse)
            .clone()
            .ok_or_else(|| anyhow!("re-protect state vanished"))?;
        let ranges = match st.resync {
            Some(ResyncRequest::Planned) => st
                .planned
                .clone()
                .ok_or_else(|| anyhow!("the resync plan is not a delta"))?,
            Some(ResyncRequest::Ranges { disks }) => disks,
            Some(ResyncRequest::Full) => return self.full_copy(&st).await,
            None => bail!("no resync was asked for"),
        };
        let total: u64 = ranges.iter().map(|e| e.bytes()).sum();
        let disks = self.disks.clone();
        let status = self.resync_status.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut done = 0u64;
            for (d, e) in ranges.iter().enumerate() {
                let Some(disk) = disks.get(d) else {
                    if e.is_empty() {
                        continue;
                    }
                    bail!("the resync names disk {d}, the VM has {}", disks.len());
                };
                for (off, len) in e.clamp(disk.size()).pieces(PIECE) {
                    disk.rewrite(off, len)
                        .with_context(|| format!("re-journaling disk {d} at {off}+{len}"))?;
                    done += len;
                    let mut s = lock(&status);
                    s.bytes = done;
                    s.percent = (done.saturating_mul(100) / total.max(1)).min(99) as u8;
                }
            }
            Ok(())
        })
        .await
        .context("resync task")??;
        // Every re-journaled record is at or before this position.
        Ok(self.journal.last_seq())
    }

    /// The original disks are gone: the disks are copied whole into the store.
    async fn full_copy(&self, st: &ReverseState) -> Result<Seq> {
        self.repl
            .set(Some(st.protect.clone()), Start::CopyAfter(Seq(st.p0)))
            .await?;
        loop {
            let c = self.repl.copy_state();
            {
                let mut s = lock(&self.resync_status);
                s.percent = c.percent.min(99);
                s.error = c.error.clone();
            }
            if c.done {
                return Ok(self.journal.last_seq());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Re-protect's progress, when it began here.
    pub fn reverse_status(&self) -> Option<ReverseStatus> {
        let st = lock(&self.reverse).clone()?;
        let mut s = lock(&self.resync_status).clone();
        s.p0 = st.p0;
        s.resync = st.resync.as_ref().map(|r| {
            match r {
                ResyncRequest::Planned => "planned",
                ResyncRequest::Ranges { .. } => "ranges",
                ResyncRequest::Full => "full",
            }
            .to_string()
        });
        Some(s)
    }

    /// Block digests of the disks now (re-protect without journal knowledge).
    pub async fn digests(&self, block: u64) -> Result<(Vec<u64>, Vec<String>)> {
        let images: Vec<(PathBuf, u64)> = self
            .disks
            .iter()
            .map(|d| (d.image_path().to_path_buf(), d.size()))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut sizes = Vec::new();
            let mut out = Vec::new();
            for (p, size) in images {
                out.push(crate::digest::to_hex(&crate::digest::digests(
                    &p, size, block,
                )?));
                sizes.push(size);
            }
            Ok((sizes, out))
        })
        .await
        .context("digest task")?
    }

    /// Shuts QEMU down and ships every write (failover of a re-protected VM).
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownAnswer> {
        self.update(|s| s.running = false)?;
        self.repl.shutdown_and_ship(&self.qemu, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_journal::{Journal, JournalConfig};
    use lifeboat_types::{DiskId, Epoch, VmId};

    #[test]
    fn folding_keeps_every_range_written_since_the_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let jdir = dir.path().join("journal");
        let j =
            Journal::open(&jdir, JournalConfig::new(VmId::new("v").unwrap(), Epoch(2))).unwrap();
        let mut want = vec![Extents::new(), Extents::new()];
        let mut write = |i: u64| {
            let d = (i % 2) as usize;
            j.append_write(DiskId(d as u32), i * 8192, &[7u8; 100])
                .unwrap();
            want[d].insert(i * 8192, 100);
        };
        for i in 0..10 {
            write(i);
        }
        j.seal().unwrap();
        for i in 10..20 {
            write(i);
        }
        j.seal().unwrap();
        let all = since_recovery(&jdir, Seq(20), 2).unwrap();
        assert_eq!(all, want);
        // Fold the first segment, as a crash would leave it (summary written, segment kept).
        let mut folded = Folded::default();
        fold(&jdir, &mut folded, Seq(10)).unwrap();
        assert_eq!(folded.through, 10);
        write_json(&Folded::path(dir.path()), &folded).unwrap();
        assert_eq!(since_recovery(&jdir, Seq(20), 2).unwrap(), want);
        // Then removed: the summary and the journal still say everything.
        j.remove_sealed_through(Seq(10)).unwrap();
        assert_eq!(since_recovery(&jdir, Seq(20), 2).unwrap(), want);
        // A gap between the summary and the journal is an error, not a silent loss.
        j.remove_sealed_through(Seq(20)).unwrap();
        assert!(since_recovery(&jdir, Seq(20), 2).is_err());
    }
}
