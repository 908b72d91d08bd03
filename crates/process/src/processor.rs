//! [`Processor`]: see the crate doc.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use lifeboat_journal::Record;
use lifeboat_store::{PointMeta, PointOrigin, PointRecord, PreparedChunk, Store, StoreError};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, RecordKind, Seq, VmId};

use crate::overlay::{index_journal, PointInTime};
use crate::plan::{app_points_to_store, chain_due, points_to_store, PointView, StoreRule};
use crate::INDEX_BUDGET;

/// Errors while making recovery points.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The store failed or holds a bad object.
    #[error("region store, VM {vm}")]
    Store {
        /// The VM.
        vm: VmId,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// There is no point to start from.
    #[error("VM {vm} has no recovery point yet: initial replication must finish first")]
    NoBase {
        /// The VM.
        vm: VmId,
    },
    /// The stored journal has a hole.
    #[error("journal of VM {vm} jumps from record {expected} to {found}: segments are missing in the store; no point is cut past the hole")]
    Gap {
        /// The VM.
        vm: VmId,
        /// The record expected next.
        expected: Seq,
        /// The record found.
        found: Seq,
    },
    /// A record names a disk the base point does not have, or lies outside its disk.
    #[error("journal record {seq} of VM {vm} touches {disk} at {offset}+{length}, outside the disks of point {point}")]
    OutsideDisk {
        /// The VM.
        vm: VmId,
        /// The record.
        seq: Seq,
        /// Its disk.
        disk: DiskId,
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u64,
        /// The base point.
        point: String,
    },
    /// A time (or journal position) older than the oldest one the stored journal can restore.
    #[error("{target} is before the continuous-data-protection window of VM {vm}, which starts at {start}: choose a later time or a recovery point")]
    BeforeWindow {
        /// The VM.
        vm: VmId,
        /// What was asked for (`time 2026-01-02T03:04:05.678Z` or `journal record 12`).
        target: String,
        /// Where the window starts (time and record).
        start: String,
    },
    /// No journal is stored for the VM, so no point in time can be restored.
    #[error("no journal of VM {vm} is stored in the region store: the continuous-data-protection window is empty; choose a recovery point")]
    NoJournal {
        /// The VM.
        vm: VmId,
    },
    /// A time or position inside an initial copy that is still being taken or caught up.
    #[error("initial replication of VM {vm} (point {point}) is consistent only from journal record {copy_end} on, which the region store has not received yet: wait for the first recovery point")]
    CopyInProgress {
        /// The VM.
        vm: VmId,
        /// The initial-copy point.
        point: String,
        /// Where its copy ended.
        copy_end: Seq,
    },
    /// The initial copy itself was asked for.
    #[error("point {point} of VM {vm} is the initial copy, taken while the VM kept writing: it is not a consistent state and is never restored; choose a point at or after journal record {copy_end}")]
    NotRestorable {
        /// The VM.
        vm: VmId,
        /// The point.
        point: String,
        /// Where its copy ended.
        copy_end: Seq,
    },
    /// Reading a position needs more memory than allowed for the index of the journal since
    /// its base.
    #[error("reading journal record {seq} of VM {vm} needs more than {budget_mib} MiB of memory ({needed_mib} MiB so far) to index the journal since stored point {base}: store a nearer point first (`lifeboat process --store-secs 0`), or choose a stored point")]
    TooFarFromBase {
        /// The VM.
        vm: VmId,
        /// The position asked for.
        seq: Seq,
        /// The stored base.
        base: String,
        /// Memory counted when it stopped.
        needed_mib: u64,
        /// The budget.
        budget_mib: u64,
    },
    /// A journal-backed point whose journal is not all stored any more.
    #[error("journal-backed point {point} of VM {vm} is read as stored point {base} plus the journal up to it, but journal record {missing} is no longer in the region store (released by retention, or its segment is missing): choose another point")]
    JournalGone {
        /// The VM.
        vm: VmId,
        /// The point.
        point: String,
        /// The stored point it is read from.
        base: String,
        /// The first record not found.
        missing: Seq,
    },
    /// A seed image could not be read.
    #[error("reading disk image {path} for initial replication")]
    Image {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether [`Processor::process`] cuts a point at the end of what was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Only at the journal's checkpoint markers.
    AtMarkers,
    /// Also a crash-consistent point at the last record received ("latest").
    Latest,
}

/// What one [`Processor::process`] run made.
#[derive(Debug, Default)]
pub struct ProcessReport {
    /// The points cut (journal-backed), oldest first.
    pub points: Vec<PointRecord>,
    /// Records read past the newest point.
    pub records: u64,
    /// The last record read.
    pub last_seq: Option<Seq>,
}

/// Progress of initial replication: bytes copied so far and in all.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// How [`Processor::seed_copy`] copies.
pub struct CopyOptions<'a> {
    /// The VM keeps writing: called once the copy is done, it gives the journal position
    /// reached meanwhile (the point becomes an initial copy, consistent from there on).
    pub copy_end: Option<&'a (dyn Fn() -> Seq + Send + Sync)>,
    /// Called after every batch with (bytes copied, bytes in all).
    pub progress: Progress<'a>,
    /// Bandwidth limit of the copy (bytes per second), as operators set for a WAN link.
    pub max_bytes_per_sec: Option<u64>,
}

/// Makes recovery points for one VM in one store. Share one processor (`Arc`) between the
/// processing and storing loops: points it stores become the bases of the points it cuts next.
pub struct Processor {
    pub(crate) store: Store,
    pub(crate) vm: VmId,
    /// Point records already read, by id: a record changes only when this processor (the VM's
    /// only one) stores it, so each is read from the store once.
    records: std::sync::Mutex<BTreeMap<String, PointRecord>>,
    /// The chunks touched since the newest stored point (see the `chain` module).
    pub(crate) tracker: tokio::sync::Mutex<crate::chain::Tracker>,
}

/// Chunks of an image stored together by [`Processor::seed_copy`] (one background sync each).
const SEED_BATCH: usize = 8;
/// Chunks [`Processor::seed_copy`] reads and prepares ahead of the one it stores.
const SEED_AHEAD: usize = 8;

/// Chunks built at once while a point is stored (bytes): each batch is one pass over the
/// journal segments its chunks need.
const BUILD_BATCH_BYTES: u64 = 128 << 20;

impl Processor {
    /// A processor for `vm` in `store`.
    pub fn new(store: Store, vm: VmId) -> Self {
        Processor {
            store,
            vm,
            records: std::sync::Mutex::new(BTreeMap::new()),
            tracker: tokio::sync::Mutex::new(crate::chain::Tracker::default()),
        }
    }

    fn remember(&self, p: &PointRecord) {
        if let Ok(mut m) = self.records.lock() {
            m.insert(p.id.clone(), p.clone());
        }
    }

    /// The VM's points, oldest first: one listing, and only records not read before.
    pub(crate) async fn points(&self) -> Result<Vec<PointRecord>, ProcessError> {
        let se = |e| self.store_err(e);
        let ids = self.store.list_point_ids(&self.vm).await.map_err(se)?;
        let missing: Vec<String> = {
            let mut m = self.records.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|id, _| ids.binary_search(id).is_ok());
            ids.iter()
                .filter(|id| !m.contains_key(*id))
                .cloned()
                .collect()
        };
        for id in missing {
            match self.store.get_point(&self.vm, &id).await {
                Ok(p) => self.remember(&p),
                // Deleted since the listing (retention).
                Err(StoreError::PointNotFound { .. }) => {}
                Err(e) => return Err(se(e)),
            }
        }
        let m = self.records.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ids.iter().filter_map(|id| m.get(id).cloned()).collect())
    }

    /// The newest stored point this processor has read or stored, at or before `upto`.
    fn known_stored(&self, upto: Seq) -> Option<PointRecord> {
        let m = self.records.lock().unwrap_or_else(|p| p.into_inner());
        // Ids sort by journal position.
        m.values()
            .rev()
            .find(|p| !p.is_journal_backed() && p.seq() <= upto)
            .cloned()
    }

    /// The newest point and the stored point new journal-backed points build on: the newest
    /// point itself if stored, else the newest stored point this processor knows of that is
    /// still there, else the newest point's recorded base. Reads two records, not all of them.
    async fn newest_and_base(&self) -> Result<(PointRecord, PointRecord), ProcessError> {
        let se = |e| self.store_err(e);
        let ids = self.store.list_point_ids(&self.vm).await.map_err(se)?;
        let no_base = || ProcessError::NoBase {
            vm: self.vm.clone(),
        };
        let newest = self
            .store
            .get_point(&self.vm, ids.last().ok_or_else(no_base)?)
            .await
            .map_err(se)?;
        let Some(recorded) = newest.base.clone() else {
            self.remember(&newest);
            return Ok((newest.clone(), newest));
        };
        if let Some(k) = self.known_stored(newest.seq()) {
            if ids.binary_search(&k.id).is_ok() {
                let recorded_seq = lifeboat_store::parse_point_id(&recorded).map(|(s, _)| s);
                if recorded_seq.is_none_or(|r| k.seq() > r) || k.id == recorded {
                    return Ok((newest, k));
                }
            }
        }
        let base = self
            .store
            .get_point(&self.vm, &recorded)
            .await
            .map_err(se)?;
        if base.is_journal_backed() {
            return Err(no_base());
        }
        self.remember(&base);
        Ok((newest, base))
    }

    pub(crate) fn store_err(&self, source: StoreError) -> ProcessError {
        ProcessError::Store {
            vm: self.vm.clone(),
            source: Box::new(source),
        }
    }

    /// Initial replication of a VM that is not running (or whose disks do not change): stores
    /// the raw images `disks` (disk id, path) whole as a crash-consistent point at journal
    /// position `seq` (zero chunks are not stored).
    pub async fn seed(
        &self,
        disks: &[(DiskId, &Path)],
        seq: Seq,
        epoch: Epoch,
        time: SystemTime,
    ) -> Result<PointRecord, ProcessError> {
        let opts = CopyOptions {
            copy_end: None,
            progress: &|_, _| {},
            max_bytes_per_sec: None,
        };
        self.seed_copy(disks, seq, epoch, time, opts).await
    }

    /// Initial replication while the VM keeps writing: copies the images `disks` as they are
    /// being written, as an [`PointOrigin::InitialCopy`] point at `seq` — a position whose
    /// records (and every earlier one) were all in the images before the copy began. After
    /// the copy, [`CopyOptions::copy_end`] gives the journal position reached meanwhile: the
    /// first point that may be restored is at or after it (see the crate doc). Without it the
    /// images are taken as consistent at `seq` (a crash-consistent point).
    pub async fn seed_copy(
        &self,
        disks: &[(DiskId, &Path)],
        seq: Seq,
        epoch: Epoch,
        time: SystemTime,
        opts: CopyOptions<'_>,
    ) -> Result<PointRecord, ProcessError> {
        let CopyOptions {
            copy_end,
            progress,
            max_bytes_per_sec,
        } = opts;
        let started = std::time::Instant::now();
        let mut w = self
            .store
            .point_writer(&self.vm, None)
            .await
            .map_err(|e| self.store_err(e))?;
        let img_err = |path: &Path, source| ProcessError::Image {
            path: path.to_path_buf(),
            source,
        };
        let mut total = 0u64;
        for (_, path) in disks {
            total += std::fs::metadata(path).map_err(|e| img_err(path, e))?.len();
        }
        let mut done = 0u64;
        progress(0, total);
        let level = self.store.config().zstd_level;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
        // Every chunk buffer in flight, reused.
        let pool = lifeboat_store::ChunkPool::new(SEED_AHEAD + SEED_BATCH + threads);
        for (disk, path) in disks {
            let size = std::fs::metadata(path).map_err(|e| img_err(path, e))?.len();
            w.add_disk(*disk, size).map_err(|e| self.store_err(e))?;
            let cs = w.chunk_size(*disk).ok_or_else(|| {
                self.store_err(StoreError::InvalidArgument("no chunk size".into()))
            })? as u64;
            let file = std::fs::File::open(path).map_err(|e| img_err(path, e))?;
            // Reading threads read and prepare (hash, compress) chunks ahead while the writer
            // stores the last batch and the store syncs the ones before: a few batches in
            // flight, never more.
            let mut chunks = crate::seed::read_ahead(
                std::sync::Arc::new(file),
                size,
                cs,
                crate::seed::Prepare {
                    zstd_level: level,
                    stager: w.stager(),
                },
                threads,
                SEED_AHEAD,
                &pool,
            );
            let mut batch = Vec::with_capacity(SEED_BATCH);
            loop {
                let next = chunks.recv().await;
                let last = next.is_none();
                if let Some(item) = next {
                    let (index, chunk) = item.map_err(|e| img_err(path, e))?;
                    done += chunk.len() as u64;
                    batch.push((index, chunk));
                }
                if batch.len() >= SEED_BATCH || (last && !batch.is_empty()) {
                    w.set_prepared(*disk, std::mem::take(&mut batch))
                        .await
                        .map_err(|e| self.store_err(e))?;
                    progress(done, total);
                    if let Some(rate) = max_bytes_per_sec.filter(|r| *r > 0) {
                        let due = Duration::from_secs_f64(done as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                if last {
                    break;
                }
            }
        }
        let end = copy_end.map(|f| f());
        w.commit(PointMeta {
            origin: if end.is_some() {
                PointOrigin::InitialCopy
            } else {
                PointOrigin::Marker
            },
            copy_end: end.map(|e| e.max(seq)),
            ..PointMeta::marker(seq, epoch, CheckpointKind::CrashConsistent, time)
        })
        .await
        .map_err(|e| self.store_err(e))
    }

    /// Turns the stored segments after the newest point into journal-backed points, at every
    /// checkpoint marker and, with [`Cut::Latest`], at the last record (see the crate doc). Only
    /// point records are written: this is what keeps the lag to a processed point low.
    pub async fn process(&self, cut: Cut) -> Result<ProcessReport, ProcessError> {
        let se = |e| self.store_err(e);
        let (newest, base) = self.newest_and_base().await?;
        let (newest, base) = (&newest, &base);
        // No point before an initial copy taken while the VM wrote is consistent.
        let consistent_from = base.copy_end.map_or(Seq(0), Seq);
        let segments = self.store.list_segments(&self.vm).await.map_err(se)?;
        let mut report = ProcessReport::default();
        let mut expected = newest.seq().next();
        let mut epoch = newest.epoch();
        let mut last_time = newest.time();
        let first_needed = expected;
        for seg in segments.iter().filter(|s| s.last_seq >= first_needed) {
            let (header, records) = self.store.read_segment(&self.vm, seg).await.map_err(se)?;
            epoch = epoch.max(header.epoch);
            for rec in records {
                if in_order(&self.vm, rec.seq, &mut expected, Seq(u64::MAX))? != InOrder::Take {
                    continue;
                }
                report.last_seq = Some(rec.seq);
                last_time = rec.time;
                if rec.kind == RecordKind::Checkpoint {
                    if rec.seq < consistent_from {
                        continue;
                    }
                    let (kind, time) = rec
                        .checkpoint
                        .map(|c| (c.kind, c.time))
                        .unwrap_or((CheckpointKind::CrashConsistent, rec.time));
                    let meta = PointMeta::marker(rec.seq, epoch, kind, time);
                    report.points.push(self.journal_point(base, meta).await?);
                } else {
                    check_record(&self.vm, base, &rec)?;
                    report.records += 1;
                }
            }
        }
        if cut == Cut::Latest {
            let newest_cut = report.points.last().map_or(newest.seq(), |p| p.seq());
            if let Some(last) = report
                .last_seq
                .filter(|s| *s > newest_cut && *s >= consistent_from)
            {
                let meta = PointMeta {
                    origin: PointOrigin::Latest,
                    ..PointMeta::marker(last, epoch, CheckpointKind::CrashConsistent, last_time)
                };
                report.points.push(self.journal_point(base, meta).await?);
            }
        }
        Ok(report)
    }

    async fn journal_point(
        &self,
        base: &PointRecord,
        meta: PointMeta,
    ) -> Result<PointRecord, ProcessError> {
        let p = self
            .store
            .put_journal_point(&self.vm, base, meta)
            .await
            .map_err(|e| self.store_err(e))?;
        self.remember(&p);
        tracing::debug!(vm = %self.vm, point = %p.id, base = %base.id, "recovery point cut");
        Ok(p)
    }

    /// Stores the journal-backed point `point`: from the newest stored point before it, indexes
    /// the stored journal records up to it by the chunks they touch (as a reader does, within
    /// [`INDEX_BUDGET`]), builds those chunks in batches of 128 MiB (one pass over the
    /// segments each, through the reader's segment cache), writes each once, and commits the
    /// result as the point's stored form ([`lifeboat_store::PointWriter::commit_stored`]).
    /// Memory stays bounded however far apart the points are, and no intermediate version of a
    /// chunk is written. A point already stored is returned as it is.
    pub async fn store_point(&self, point: &PointRecord) -> Result<PointRecord, ProcessError> {
        let se = |e| self.store_err(e);
        if !point.is_journal_backed() {
            return Ok(point.clone());
        }
        // Read it again: another tool may have stored it since this processor read it.
        let point = &self
            .store
            .get_point(&self.vm, &point.id)
            .await
            .map_err(se)?;
        self.remember(point);
        if !point.is_journal_backed() {
            return Ok(point.clone());
        }
        let points = self.points().await?;
        let base = stored_base(&points, point.seq())
            .ok_or_else(|| ProcessError::NoBase {
                vm: self.vm.clone(),
            })?
            .clone();
        // The journal since the base, indexed (references, not data); then the chunks it
        // touched, built in batches (one pass over their segments each) and written once.
        let segments = self.store.list_segments(&self.vm).await.map_err(se)?;
        let mut pit =
            PointInTime::on_base(&self.vm, base.clone(), point.seq(), point.time(), false);
        index_journal(&self.store, &self.vm, &segments, &mut pit, INDEX_BUDGET).await?;
        let mut w = self
            .store
            .point_writer(&self.vm, Some(&base))
            .await
            .map_err(se)?;
        for (disk, _) in w.disks() {
            let cs = w.chunk_size(disk).map_or(1, u64::from).max(1);
            let per_batch = usize::try_from(BUILD_BATCH_BYTES / cs).unwrap_or(1).max(1);
            let touched: Vec<u64> = pit.touched_on(disk).collect();
            let level = self.store.config().zstd_level;
            for batch in touched.chunks(per_batch) {
                let built = pit.read_disk_chunks(&self.store, disk, batch).await?;
                // Zero check, BLAKE3 and zstd on the blocking pool, every chunk of the batch at
                // once; the writer puts them unsynced and syncs them together (as the seed
                // does), before the point's first index page.
                let prepared =
                    futures::future::try_join_all(batch.iter().zip(built).map(|(i, data)| {
                        let i = *i;
                        tokio::task::spawn_blocking(move || {
                            (i, PreparedChunk::new(bytes::Bytes::from(data), level))
                        })
                    }))
                    .await
                    .map_err(|e| {
                        self.store_err(StoreError::InvalidArgument(format!(
                            "preparing chunks: {e}"
                        )))
                    })?;
                w.set_prepared(disk, prepared).await.map_err(se)?;
            }
        }
        let stored = w.commit_stored(point).await.map_err(se)?;
        self.remember(&stored);
        tracing::debug!(vm = %self.vm, point = %stored.id, base = %base.id, "recovery point stored");
        Ok(stored)
    }

    /// Stores the journal-backed points that are due, oldest first; returns them in their
    /// stored form.
    ///
    /// * `interval` zero: **every** point is stored as it is cut (the eager rule,
    ///   [`crate::points_to_store`]: every marker point and the newest "latest" point), as
    ///   tools and tests that want stored points ask (`lifeboat process --store-secs 0`).
    /// * otherwise: the product's rule, [`Processor::store_due_with`] with
    ///   [`StoreRule::default`] and `interval` as [`StoreRule::min_interval`] (no point is stored
    ///   by age or replay less than `interval` after its base): the
    ///   newest journal-backed point once its base is 25 h old, reading it would index a
    ///   quarter of [`crate::INDEX_BUDGET`], or replaying its journal would read 4 times what
    ///   storing it writes. Callers that know the VM's policy use
    ///   [`Processor::store_due_with`] and [`StoreRule::for_policy`].
    ///
    /// Until issue 3 a non-zero `interval` meant "store every marker point, and the newest
    /// "latest" point once per `interval`": every point was stored, at many times the bytes
    /// written. Calling this every few seconds is cheap: the records since the last call are
    /// read once (see the `chain` module).
    pub async fn store_due(&self, interval: Duration) -> Result<Vec<PointRecord>, ProcessError> {
        if interval.is_zero() {
            let points = self.points().await?;
            let views: Vec<PointView> = points.iter().filter_map(PointView::of).collect();
            let mut out = Vec::new();
            for id in points_to_store(&views, interval) {
                if let Some(p) = points.iter().find(|p| p.id == id) {
                    out.push(self.store_point(p).await?);
                }
            }
            return Ok(out);
        }
        self.store_due_with(&StoreRule {
            min_interval: interval,
            ..StoreRule::default()
        })
        .await
    }

    /// Stores what `rule` says is due (see [`crate::chain_due`]): every journal-backed
    /// app-consistent point (if the rule says so), then the newest journal-backed point if its
    /// chain is due. Returns the points stored, in their stored form, oldest first.
    pub async fn store_due_with(&self, rule: &StoreRule) -> Result<Vec<PointRecord>, ProcessError> {
        let points = self.points().await?;
        let views: Vec<PointView> = points.iter().filter_map(PointView::of).collect();
        let mut out = Vec::new();
        for id in app_points_to_store(&views, rule) {
            if let Some(p) = points.iter().find(|p| p.id == id) {
                tracing::info!(vm = %self.vm, point = %p.id, "storing an app-consistent point");
                out.push(self.store_point(p).await?);
            }
        }
        let Some(chain) = self.newest_chain().await? else {
            return Ok(out);
        };
        if let Some(reason) = chain_due(&chain, rule) {
            if let Some(p) = self
                .points()
                .await?
                .into_iter()
                .find(|p| p.id == chain.point)
            {
                tracing::info!(vm = %self.vm, point = %p.id, base = %chain.base, %reason, "storing a recovery point");
                out.push(self.store_point(&p).await?);
            }
        }
        Ok(out)
    }
}

/// The newest stored (not journal-backed) point at or before `seq`.
pub(crate) fn stored_base(points: &[PointRecord], seq: Seq) -> Option<&PointRecord> {
    points
        .iter()
        .rev()
        .find(|p| !p.is_journal_backed() && p.seq() <= seq)
}

/// Checks that a data record lies inside a disk of `base`.
fn check_record(vm: &VmId, base: &PointRecord, rec: &Record) -> Result<(), ProcessError> {
    let outside = || ProcessError::OutsideDisk {
        vm: vm.clone(),
        seq: rec.seq,
        disk: rec.disk,
        offset: rec.offset,
        length: rec.length,
        point: base.id.clone(),
    };
    let d = base.disk(rec.disk).ok_or_else(outside)?;
    let end = rec.offset.checked_add(rec.length).ok_or_else(outside)?;
    if end > d.size {
        return Err(outside());
    }
    Ok(())
}

/// Applies the part of record `r` that falls inside the chunk starting at `chunk_start` (a
/// write's bytes; zeroes for a zero or a trim). `Err(r)` if a write carries fewer bytes than its
/// range.
pub(crate) fn apply_record_to_chunk<'a>(
    data: &mut [u8],
    chunk_start: u64,
    r: &'a Record,
) -> Result<(), &'a Record> {
    let chunk_end = chunk_start + data.len() as u64;
    let start = r.offset.max(chunk_start);
    let end = r.offset.saturating_add(r.length).min(chunk_end);
    if start >= end {
        return Ok(());
    }
    let dst = &mut data[(start - chunk_start) as usize..(end - chunk_start) as usize];
    match r.kind {
        RecordKind::Write => {
            let src = (start - r.offset) as usize..(end - r.offset) as usize;
            match r.data.get(src) {
                Some(s) => dst.copy_from_slice(s),
                None => return Err(r),
            }
        }
        RecordKind::Zero | RecordKind::Trim => dst.fill(0),
        RecordKind::Checkpoint => {}
    }
    Ok(())
}

/// Where a record stands in a walk over the stored journal that takes every record from
/// `expected` on, in order, up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InOrder {
    /// Before `expected` (an earlier segment already gave it): skip it.
    Skip,
    /// After `end`: the walk is over.
    Stop,
    /// The next record: take it (`expected` moved past it).
    Take,
}

/// Places record `seq` in a walk expecting `expected` next and ending at `end`; a record
/// after a missing one is [`ProcessError::Gap`].
pub(crate) fn in_order(
    vm: &VmId,
    seq: Seq,
    expected: &mut Seq,
    end: Seq,
) -> Result<InOrder, ProcessError> {
    if seq < *expected {
        return Ok(InOrder::Skip);
    }
    if seq > end {
        return Ok(InOrder::Stop);
    }
    if seq != *expected {
        return Err(ProcessError::Gap {
            vm: vm.clone(),
            expected: *expected,
            found: seq,
        });
    }
    *expected = seq.next();
    Ok(InOrder::Take)
}

#[cfg(test)]
mod in_order_tests {
    use super::*;

    #[test]
    fn records_are_taken_in_order_skipped_stopped_or_a_gap() {
        let vm = VmId::new("v").unwrap();
        let mut e = Seq(5);
        assert_eq!(
            in_order(&vm, Seq(4), &mut e, Seq(9)).unwrap(),
            InOrder::Skip
        );
        assert_eq!(e, Seq(5));
        assert_eq!(
            in_order(&vm, Seq(5), &mut e, Seq(9)).unwrap(),
            InOrder::Take
        );
        assert_eq!(e, Seq(6));
        assert_eq!(
            in_order(&vm, Seq(10), &mut e, Seq(9)).unwrap(),
            InOrder::Stop
        );
        match in_order(&vm, Seq(8), &mut e, Seq(9)) {
            Err(ProcessError::Gap {
                expected, found, ..
            }) => {
                assert_eq!((expected, found), (Seq(6), Seq(8)))
            }
            other => panic!("{other:?}"),
        }
    }
}
