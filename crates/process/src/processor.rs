//! [`Processor`]: see the crate doc.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use lifeboat_journal::{parse_segment, Record};
use lifeboat_store::{PointMeta, PointRecord, Store, StoreError};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, RecordKind, Seq, VmId};

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
    /// A stored segment does not parse.
    #[error("stored segment {key} of VM {vm} is damaged")]
    Segment {
        /// The VM.
        vm: VmId,
        /// The segment's object key.
        key: String,
        /// Why.
        #[source]
        source: lifeboat_journal::JournalError,
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
    /// The points cut, oldest first.
    pub points: Vec<PointRecord>,
    /// Records applied.
    pub records: u64,
    /// The last record read.
    pub last_seq: Option<Seq>,
}

/// Makes recovery points for one VM in one store.
pub struct Processor {
    store: Store,
    vm: VmId,
}

/// The chunks touched since the base, each with its records in journal order.
type Pending = BTreeMap<(DiskId, u64), Vec<Arc<Record>>>;

impl Processor {
    /// A processor for `vm` in `store`.
    pub fn new(store: Store, vm: VmId) -> Self {
        Processor { store, vm }
    }

    fn store_err(&self, source: StoreError) -> ProcessError {
        ProcessError::Store {
            vm: self.vm.clone(),
            source: Box::new(source),
        }
    }

    /// Initial replication: stores the raw images `disks` (disk id, path) whole as a
    /// crash-consistent point at journal position `seq` (zero chunks are not stored).
    pub async fn seed(
        &self,
        disks: &[(DiskId, &Path)],
        seq: Seq,
        epoch: Epoch,
        time: SystemTime,
    ) -> Result<PointRecord, ProcessError> {
        let mut w = self
            .store
            .point_writer(&self.vm, None)
            .await
            .map_err(|e| self.store_err(e))?;
        for (disk, path) in disks {
            let img_err = |source| ProcessError::Image {
                path: path.to_path_buf(),
                source,
            };
            let size = std::fs::metadata(path).map_err(img_err)?.len();
            w.add_disk(*disk, size).map_err(|e| self.store_err(e))?;
            let cs = w.chunk_size(*disk).ok_or_else(|| {
                self.store_err(StoreError::InvalidArgument("no chunk size".into()))
            })? as u64;
            let file = std::fs::File::open(path).map_err(img_err)?;
            // Batches of chunks whose objects are stored concurrently.
            const BATCH: u64 = 8;
            let chunks = size.div_ceil(cs);
            let mut buf = vec![0u8; (cs * BATCH) as usize];
            let mut first = 0u64;
            while first < chunks {
                let n = (chunks - first).min(BATCH);
                let start = first * cs;
                let len = (size - start).min(cs * n) as usize;
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf[..len], start)
                    .map_err(img_err)?;
                let batch: Vec<(u64, &[u8])> = buf[..len]
                    .chunks(cs as usize)
                    .enumerate()
                    .map(|(i, c)| (first + i as u64, c))
                    .collect();
                w.set_chunks(*disk, &batch)
                    .await
                    .map_err(|e| self.store_err(e))?;
                first += n;
            }
        }
        w.commit(PointMeta {
            seq,
            epoch,
            kind: CheckpointKind::CrashConsistent,
            time,
            disks_total: None,
        })
        .await
        .map_err(|e| self.store_err(e))
    }

    /// Turns the stored segments after the newest point into points (see the crate doc).
    pub async fn process(&self, cut: Cut) -> Result<ProcessReport, ProcessError> {
        let mut base = self
            .store
            .latest_point(&self.vm)
            .await
            .map_err(|e| self.store_err(e))?
            .ok_or_else(|| ProcessError::NoBase {
                vm: self.vm.clone(),
            })?;
        let segments = self
            .store
            .list_segments(&self.vm)
            .await
            .map_err(|e| self.store_err(e))?;
        let mut report = ProcessReport::default();
        let mut pending = Pending::new();
        let mut expected = base.seq().next();
        let mut epoch = base.epoch();
        // Chunk size per disk (from the base's roots; it never changes for a disk).
        let mut chunk_sizes = BTreeMap::new();
        for d in &base.disks {
            let disk = DiskId(d.disk);
            let r = self
                .store
                .disk_reader(&base, disk)
                .await
                .map_err(|e| self.store_err(e))?;
            chunk_sizes.insert(disk, u64::from(r.chunk_size()));
        }
        let first_needed = expected;
        for seg in segments.iter().filter(|s| s.last_seq >= first_needed) {
            let bytes = self
                .store
                .get_segment(&self.vm, seg)
                .await
                .map_err(|e| self.store_err(e))?;
            let (header, records) =
                parse_segment(&bytes).map_err(|source| ProcessError::Segment {
                    vm: self.vm.clone(),
                    key: seg.key.clone(),
                    source,
                })?;
            epoch = epoch.max(header.epoch);
            for rec in records {
                if rec.seq < expected {
                    continue;
                }
                if rec.seq != expected {
                    return Err(ProcessError::Gap {
                        vm: self.vm.clone(),
                        expected,
                        found: rec.seq,
                    });
                }
                expected = rec.seq.next();
                report.last_seq = Some(rec.seq);
                if rec.kind == RecordKind::Checkpoint {
                    let (kind, time) = rec
                        .checkpoint
                        .map(|c| (c.kind, c.time))
                        .unwrap_or((CheckpointKind::CrashConsistent, header.created));
                    base = self
                        .cut(&base, &mut pending, rec.seq, epoch, kind, time)
                        .await?;
                    report.points.push(base.clone());
                } else {
                    self.note(&base, &chunk_sizes, &mut pending, rec)?;
                    report.records += 1;
                }
            }
        }
        if cut == Cut::Latest {
            if let Some(last) = report.last_seq.filter(|s| *s > base.seq()) {
                base = self
                    .cut(
                        &base,
                        &mut pending,
                        last,
                        epoch,
                        CheckpointKind::CrashConsistent,
                        SystemTime::now(),
                    )
                    .await?;
                report.points.push(base);
            }
        }
        Ok(report)
    }

    /// Notes a data record against the chunks it touches.
    fn note(
        &self,
        base: &PointRecord,
        chunk_sizes: &BTreeMap<DiskId, u64>,
        pending: &mut Pending,
        rec: Record,
    ) -> Result<(), ProcessError> {
        let outside = || ProcessError::OutsideDisk {
            vm: self.vm.clone(),
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
        if rec.length == 0 {
            return Ok(());
        }
        let cs = chunk_sizes.get(&rec.disk).copied().ok_or_else(outside)?;
        let (first, last) = (rec.offset / cs, (end - 1) / cs);
        let rec = Arc::new(rec);
        for i in first..=last {
            pending.entry((rec.disk, i)).or_default().push(rec.clone());
        }
        Ok(())
    }

    /// Cuts a point at `seq`: applies the pending records to their chunks of `base`.
    async fn cut(
        &self,
        base: &PointRecord,
        pending: &mut Pending,
        seq: Seq,
        epoch: Epoch,
        kind: CheckpointKind,
        time: SystemTime,
    ) -> Result<PointRecord, ProcessError> {
        let se = |e| self.store_err(e);
        let mut w = self
            .store
            .point_writer(&self.vm, Some(base))
            .await
            .map_err(se)?;
        let mut readers = BTreeMap::new();
        for ((disk, index), records) in std::mem::take(pending) {
            let reader = match readers.entry(disk) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(self.store.disk_reader(base, disk).await.map_err(se)?)
                }
            };
            let cs = u64::from(reader.chunk_size());
            let mut data = reader.read_chunk(index).await.map_err(se)?.as_ref().clone();
            apply_records_to_chunk(&mut data, index * cs, &records).map_err(|r| {
                ProcessError::OutsideDisk {
                    vm: self.vm.clone(),
                    seq: r.seq,
                    disk: r.disk,
                    offset: r.offset,
                    length: r.length,
                    point: base.id.clone(),
                }
            })?;
            w.set_chunk(disk, index, &data).await.map_err(se)?;
        }
        let point = w
            .commit(PointMeta {
                seq,
                epoch,
                kind,
                time,
                disks_total: None,
            })
            .await
            .map_err(se)?;
        tracing::debug!(vm = %self.vm, point = %point.id, "recovery point cut");
        Ok(point)
    }
}

/// Applies `records` (in journal order) to the chunk `data` that starts at disk byte
/// `chunk_start`: writes copy their bytes, zeroes and trims zero (trims are zeroes, so that
/// points are deterministic), checkpoints do nothing. A write whose data does not cover its range
/// is returned as the error.
pub(crate) fn apply_records_to_chunk<'a>(
    data: &mut [u8],
    chunk_start: u64,
    records: &'a [Arc<Record>],
) -> Result<(), &'a Record> {
    let chunk_end = chunk_start + data.len() as u64;
    for r in records {
        let start = r.offset.max(chunk_start);
        let end = r.offset.saturating_add(r.length).min(chunk_end);
        if start >= end {
            continue;
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
    }
    Ok(())
}
