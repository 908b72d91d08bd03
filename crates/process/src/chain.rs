//! The chain from a VM's newest stored point to its newest journal-backed point, measured for
//! the store rule ([`crate::chain_due`]): the bytes of journal the store keeps for it, and the
//! chunks its records touched (what storing the point would write).
//!
//! The processor keeps, for each chunk touched since its newest stored point, the last record
//! that touched it, and extends that with the records stored since its last look, so each
//! record is read once here however often the rule is asked (every few seconds by the agent).
//! When the base moves forward to a point the tracker has already read past (the base rolling
//! forward, or the newest point being stored), the tracker moves with it: a chunk whose last
//! touch is at or before the new base is no longer touched since it, and the references counted
//! up to the new base are taken off (by segment, so a little over: the index estimate errs
//! high). Only a base it has not read past (or another VM's disks) starts it afresh. Rolling
//! happens about hourly, and re-reading the retention's journal each time would not keep up
//! with a VM whose journal is many times its disk.
//!
//! Memory: one entry per chunk touched (at most the disks' chunk count: 256 Ki entries for
//! 1 TiB of disk at 4 MiB chunks) and one per segment read.

use std::collections::{BTreeMap, HashMap};

use lifeboat_store::PointRecord;
use lifeboat_types::{DiskId, RecordKind, Seq};

use crate::overlay::{CHUNK_COST, REF_COST, SEGMENT_COST};
use crate::plan::Chain;
use crate::processor::{in_order, stored_base, InOrder, Processor};
use crate::ProcessError;

/// The chunks touched since a base, through a journal position.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// The base's id.
    base: String,
    /// Records up to this one are counted.
    through: Seq,
    /// Chunk size of every disk of the base.
    chunk_sizes: BTreeMap<DiskId, u64>,
    /// Chunks touched, with the last record that touched each.
    touched: HashMap<(DiskId, u64), Seq>,
    /// (record, chunk) pairs: what a reader's index holds at most.
    refs: u64,
    /// `refs` as it stood after each segment read, by the segment's last record.
    refs_through: BTreeMap<Seq, u64>,
}

impl Tracker {
    /// Moves the tracker to `base`, a newer stored point it has read past with the same disks:
    /// see the module doc. False if it cannot (then it starts afresh).
    fn roll_to(&mut self, base: &PointRecord, chunk_sizes: &BTreeMap<DiskId, u64>) -> bool {
        let at = base.seq();
        if self.base.is_empty() || at < self.base_seq() || at > self.through {
            return false;
        }
        if &self.chunk_sizes != chunk_sizes {
            return false;
        }
        self.touched.retain(|_, last| *last > at);
        // Refs counted through the last segment ending at or before the base.
        let before = self
            .refs_through
            .range(..=at)
            .next_back()
            .map_or(0, |(_, r)| *r);
        self.refs = self.refs.saturating_sub(before);
        self.refs_through = self
            .refs_through
            .split_off(&at.next())
            .into_iter()
            .map(|(s, r)| (s, r.saturating_sub(before)))
            .collect();
        self.base = base.id.clone();
        true
    }

    fn base_seq(&self) -> Seq {
        lifeboat_store::parse_point_id(&self.base).map_or(Seq(0), |(s, _)| s)
    }
}

impl Processor {
    /// The chain of the VM's newest point if it is journal-backed (and restorable), else
    /// `None`: from the newest stored point before it.
    pub async fn newest_chain(&self) -> Result<Option<Chain>, ProcessError> {
        let points = self.points().await?;
        let Some(point) = points.last() else {
            return Ok(None);
        };
        if !point.is_journal_backed() || !point.is_restorable() {
            return Ok(None);
        }
        let Some(base) = stored_base(&points, point.seq()) else {
            return Ok(None);
        };
        self.measure_chain(base, point, &points).await.map(Some)
    }

    async fn measure_chain(
        &self,
        base: &PointRecord,
        point: &PointRecord,
        points: &[PointRecord],
    ) -> Result<Chain, ProcessError> {
        let se = |e| self.store_err(e);
        let (from, end) = (base.seq().next(), point.seq());
        let segments: Vec<_> = self
            .store
            .list_segments(&self.vm)
            .await
            .map_err(se)?
            .into_iter()
            .filter(|s| s.last_seq >= from && s.first_seq <= end)
            .collect();
        let journal_bytes: u64 = segments.iter().map(|s| s.size).sum();
        let mut guard = self.tracker.lock().await;
        if guard.base != base.id || guard.through > end || guard.through < base.seq() {
            let mut chunk_sizes = BTreeMap::new();
            for d in &base.disks {
                let disk = DiskId(d.disk);
                let r = self.store.disk_reader(base, disk).await.map_err(se)?;
                chunk_sizes.insert(disk, u64::from(r.chunk_size()).max(1));
            }
            if guard.through > end || !guard.roll_to(base, &chunk_sizes) {
                *guard = Tracker {
                    base: base.id.clone(),
                    through: base.seq(),
                    chunk_sizes,
                    ..Tracker::default()
                };
            }
        }
        let t = &mut *guard;
        let start = t.through.next();
        let mut expected = start;
        'segments: for seg in segments.iter().filter(|s| s.last_seq >= start) {
            let (_, records) = self.store.read_segment(&self.vm, seg).await.map_err(se)?;
            for rec in records {
                match in_order(&self.vm, rec.seq, &mut expected, end)? {
                    InOrder::Skip => continue,
                    InOrder::Stop => break 'segments,
                    InOrder::Take => {}
                }
                t.through = rec.seq;
                if rec.kind == RecordKind::Checkpoint || rec.length == 0 {
                    continue;
                }
                // A record outside the base's disks was refused when the point was cut.
                let Some(&cs) = t.chunk_sizes.get(&rec.disk) else {
                    continue;
                };
                let last = rec.offset.saturating_add(rec.length - 1) / cs;
                for i in rec.offset / cs..=last {
                    t.touched.insert((rec.disk, i), rec.seq);
                    t.refs += 1;
                }
            }
            t.refs_through.insert(t.through, t.refs);
        }
        if expected <= end {
            return Err(ProcessError::Gap {
                vm: self.vm.clone(),
                expected,
                found: end,
            });
        }
        // The store's mean stored size of a new chunk so far; before any, a chunk's full size.
        let (bytes, chunks) =
            points
                .iter()
                .filter(|p| !p.is_journal_backed())
                .fold((0u64, 0u64), |(b, c), p| {
                    (
                        b.saturating_add(p.new_bytes),
                        c.saturating_add(p.new_chunks),
                    )
                });
        let chunk_bytes = match bytes.checked_div(chunks) {
            Some(b) if b > 0 => b,
            _ => t.chunk_sizes.values().copied().max().unwrap_or(1),
        };
        let touched = t.touched.len() as u64;
        Ok(Chain {
            point: point.id.clone(),
            point_time: point.time(),
            base: base.id.clone(),
            base_time: base.time(),
            journal_bytes,
            touched_chunks: touched,
            chunk_bytes,
            index_bytes: touched * CHUNK_COST
                + t.refs * REF_COST
                + segments.len() as u64 * SEGMENT_COST,
        })
    }
}
