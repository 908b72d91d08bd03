//! The journal since a [`PointInTime`]'s base, indexed by chunk and read lazily.
//!
//! Opening a position reads the stored records from the base to it once ([`index_journal`]),
//! checking them as the processor does (no gap, every record inside a disk of the base), and
//! keeps, per (disk, chunk) they touch, only *references* to the records: the segment (its
//! place in the point's list of segments) and the record's place among the segment's decoded
//! records, 8 bytes each. A record that covers a chunk whole drops the chunk's earlier
//! references (a write becomes the only one; a zero or a trim leaves none, and the chunk is
//! known to be zero without reading anything). Memory is proportional to the number of
//! (record, chunk) pairs, not to the bytes written; a budget bounds it
//! ([`ProcessError::TooFarFromBase`]).
//!
//! A touched chunk is built when it is read ([`PointInTime::read_disk_chunk`],
//! [`PointInTime::read_disk_chunks`]): the base's chunk (or zeroes, after a record that covered
//! it whole), then its records applied in journal order, exactly as the processor cuts a point
//! (zeroes and trims give zeroes). Segments are read again through [`Store::read_segment`]
//! (checked, zstd-unwrapped, parsed) into a small LRU of decoded segments shared by the
//! point's clones ([`SEGMENT_CACHE_BYTES`] by default), so building neighbouring chunks does
//! not read a segment each time. The segments must therefore stay in the store while the
//! point is read, as its base's chunks must.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use lifeboat_journal::Record;
use lifeboat_store::{DiskReader, PointRecord, SegmentRef, Store, StoreError};
use lifeboat_types::{DiskId, RecordKind, Seq, VmId};

use crate::processor::{apply_record_to_chunk, in_order, InOrder};
use crate::ProcessError;

/// Decoded journal segments a [`PointInTime`] keeps for building chunks (all its clones
/// together): 256 MiB by default (four segments of the journal's default size).
pub const SEGMENT_CACHE_BYTES: u64 = 256 << 20;

/// Memory the index of one chunk takes (its map entry and vector), as the budget counts it.
pub(crate) const CHUNK_COST: u64 = 96;
/// Memory one record reference takes (8 bytes, and the spare capacity of its vector).
pub(crate) const REF_COST: u64 = 16;
/// Memory one segment named by the index takes (its key and range).
pub(crate) const SEGMENT_COST: u64 = 160;

/// A VM's state at one journal position: a base point plus the chunks the journal changed
/// since, built on demand (see the module doc). Clones share the base's readers, the index and
/// the segment cache.
#[derive(Debug, Clone)]
pub struct PointInTime {
    /// The newest stored point at or before `seq`.
    pub base: PointRecord,
    /// The journal position: the state after every record up to this one.
    pub seq: Seq,
    /// The append time of record `seq` (the base point's time if the record is not stored).
    pub time: SystemTime,
    /// The target was after the last stored record: this is the state at the last record.
    pub after_last: bool,
    /// Records applied on top of the base.
    pub records: u64,
    pub(crate) vm: VmId,
    /// The base's disk readers, opened on first use (they cache pages and chunks).
    pub(crate) readers: Readers,
    /// The chunks the journal touched since the base, and where their records are.
    pub(crate) overlay: Arc<Overlay>,
}

/// What the journal since the base did to a chunk ([`PointInTime::chunk_change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkChange {
    /// No record touched it: the base's chunk.
    Unchanged,
    /// The last record that covered it whole zeroed or trimmed it, and no write touched it
    /// since: all zeroes, known without reading anything.
    Zeroed,
    /// Written, or partly zeroed: built when read from the base's chunk and its records.
    Changed,
}

/// What a [`PointInTime`]'s cache of decoded segments holds and did
/// ([`PointInTime::segment_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentCacheStats {
    /// Its bound, in decoded bytes.
    pub limit: u64,
    /// Decoded bytes it holds now (never more than `limit`).
    pub held: u64,
    /// Segments it holds now.
    pub segments: usize,
    /// Segments read from the store since the point was opened (indexing included).
    pub reads: u64,
    /// Segments found in the cache when a chunk was built.
    pub hits: u64,
}

/// Disk readers shared by the clones of a [`PointInTime`].
#[derive(Clone, Default)]
pub(crate) struct Readers(Arc<tokio::sync::Mutex<HashMap<DiskId, Arc<DiskReader>>>>);

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readers")
    }
}

/// A record by where it is: `seg` indexes [`Overlay::segments`], `rec` the segment's decoded
/// records. Ordered as the journal is (segments in order, records in order in each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RecRef {
    seg: u32,
    rec: u32,
}

/// One chunk the journal touched since the base.
#[derive(Debug)]
struct Touched {
    /// Built from the base's chunk; `false`: from zeroes (a record covered the chunk whole).
    from_base: bool,
    /// The records to apply, in journal order.
    refs: Vec<RecRef>,
}

/// The index of the journal since the base, and the segments it names.
#[derive(Default)]
pub(crate) struct Overlay {
    /// The segments holding the records, in journal order.
    segments: Vec<SegmentRef>,
    /// By (disk, chunk index): the chunks touched.
    chunks: BTreeMap<(DiskId, u64), Touched>,
    /// References held in `chunks`.
    refs: u64,
    cache: Mutex<SegmentCache>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("segments", &self.segments.len())
            .field("chunks", &self.chunks.len())
            .field("refs", &self.refs)
            .finish()
    }
}

impl Overlay {
    /// Memory the index takes, as the budget counts it.
    fn bytes(&self) -> u64 {
        (self.chunks.len() as u64) * CHUNK_COST
            + self.refs * REF_COST
            + (self.segments.len() as u64) * SEGMENT_COST
    }
}

/// An LRU of decoded segments, bounded by their decoded size.
struct SegmentCache {
    limit: u64,
    held: u64,
    tick: u64,
    /// By segment: its records, their decoded size, its last use.
    entries: HashMap<u32, (Arc<Vec<Record>>, u64, u64)>,
    reads: u64,
    hits: u64,
}

impl Default for SegmentCache {
    fn default() -> Self {
        SegmentCache {
            limit: SEGMENT_CACHE_BYTES,
            held: 0,
            tick: 0,
            entries: HashMap::new(),
            reads: 0,
            hits: 0,
        }
    }
}

impl SegmentCache {
    fn get(&mut self, seg: u32) -> Option<Arc<Vec<Record>>> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(&seg)?;
        e.2 = tick;
        self.hits += 1;
        Some(e.0.clone())
    }

    /// Keeps `records` unless they alone exceed the limit, evicting the least recently used.
    fn put(&mut self, seg: u32, records: Arc<Vec<Record>>) {
        let bytes = decoded_size(&records);
        if bytes > self.limit || self.entries.contains_key(&seg) {
            return;
        }
        self.shrink_to(self.limit - bytes);
        self.tick += 1;
        self.held += bytes;
        self.entries.insert(seg, (records, bytes, self.tick));
    }

    /// Evicts the least recently used segments until at most `bytes` are held.
    fn shrink_to(&mut self, bytes: u64) {
        while self.held > bytes {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.2)
                .map(|(k, e)| (*k, e.1));
            match oldest {
                Some((k, b)) => {
                    self.entries.remove(&k);
                    self.held -= b;
                }
                None => break,
            }
        }
    }
}

/// Memory a decoded segment takes.
fn decoded_size(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| (r.data.len() + std::mem::size_of::<Record>()) as u64)
        .sum()
}

pub(crate) fn store_err(vm: &VmId, source: StoreError) -> ProcessError {
    ProcessError::Store {
        vm: vm.clone(),
        source: Box::new(source),
    }
}

/// A segment's records, read and checked by the store.
pub(crate) async fn load(
    store: &Store,
    vm: &VmId,
    seg: &SegmentRef,
) -> Result<Vec<Record>, ProcessError> {
    let (_, records) = store
        .read_segment(vm, seg)
        .await
        .map_err(|e| store_err(vm, e))?;
    Ok(records)
}

impl PointInTime {
    /// The state at `seq` of stored point `base` with nothing indexed yet (a stored point
    /// itself, or before [`index_journal`]).
    pub(crate) fn on_base(
        vm: &VmId,
        base: PointRecord,
        seq: Seq,
        time: SystemTime,
        after_last: bool,
    ) -> Self {
        PointInTime {
            base,
            seq,
            time,
            after_last,
            records: 0,
            vm: vm.clone(),
            readers: Readers::default(),
            overlay: Arc::new(Overlay::default()),
        }
    }

    /// The base's reader of `disk`, opened on first use.
    async fn reader(&self, store: &Store, disk: DiskId) -> Result<Arc<DiskReader>, ProcessError> {
        let mut m = self.readers.0.lock().await;
        if let Some(r) = m.get(&disk) {
            return Ok(r.clone());
        }
        let r = Arc::new(
            store
                .disk_reader(&self.base, disk)
                .await
                .map_err(|e| store_err(&self.vm, e))?,
        );
        m.insert(disk, r.clone());
        Ok(r)
    }

    /// Chunk `index` of `disk` at this position (the last chunk of a disk may be short): the
    /// base's chunk if the journal did not touch it, else built from it and its records.
    pub async fn read_disk_chunk(
        &self,
        store: &Store,
        disk: DiskId,
        index: u64,
    ) -> Result<Vec<u8>, ProcessError> {
        let mut one = [(index, self.start_chunk(store, disk, index).await?)];
        self.apply_journal(store, disk, &mut one).await?;
        let [(_, data)] = one;
        Ok(data)
    }

    /// Chunks `indices` of `disk`, in that order, built in one pass over the segments they
    /// need (cheaper than one [`PointInTime::read_disk_chunk`] each when the journal is long
    /// and the segments do not fit the cache; all of them are held in memory at once).
    pub async fn read_disk_chunks(
        &self,
        store: &Store,
        disk: DiskId,
        indices: &[u64],
    ) -> Result<Vec<Vec<u8>>, ProcessError> {
        let mut chunks = Vec::with_capacity(indices.len());
        for &i in indices {
            chunks.push((i, self.start_chunk(store, disk, i).await?));
        }
        self.apply_journal(store, disk, &mut chunks).await?;
        Ok(chunks.into_iter().map(|(_, d)| d).collect())
    }

    /// What the journal since the base did to chunk `index` of `disk`.
    pub fn chunk_change(&self, disk: DiskId, index: u64) -> ChunkChange {
        match self.overlay.chunks.get(&(disk, index)) {
            None => ChunkChange::Unchanged,
            Some(t) if !t.from_base && t.refs.is_empty() => ChunkChange::Zeroed,
            Some(_) => ChunkChange::Changed,
        }
    }

    /// Whether a record since the base touched chunk `index` of `disk`.
    pub fn is_touched(&self, disk: DiskId, index: u64) -> bool {
        self.overlay.chunks.contains_key(&(disk, index))
    }

    /// The chunks touched since the base, by (disk, chunk index), in order.
    pub fn touched(&self) -> impl Iterator<Item = (DiskId, u64)> + '_ {
        self.overlay.chunks.keys().copied()
    }

    /// The chunks of `disk` touched since the base, in order.
    pub fn touched_on(&self, disk: DiskId) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.overlay
            .chunks
            .range((disk, 0)..=(disk, u64::MAX))
            .map(|((_, i), _)| *i)
    }

    /// How many chunks (of all disks) were touched since the base.
    pub fn touched_count(&self) -> usize {
        self.overlay.chunks.len()
    }

    /// Memory the index of the journal since the base takes, as the budget of
    /// [`crate::state_at_within`] counts it (the segment cache is bounded apart).
    pub fn index_bytes(&self) -> u64 {
        self.overlay.bytes()
    }

    /// The segment cache's bound, contents and counts.
    pub fn segment_cache(&self) -> SegmentCacheStats {
        let c = self.cache();
        SegmentCacheStats {
            limit: c.limit,
            held: c.held,
            segments: c.entries.len(),
            reads: c.reads,
            hits: c.hits,
        }
    }

    /// Bounds the segment cache (shared by every clone) to `bytes` of decoded segments,
    /// evicting at once what exceeds it. A segment larger than the bound is read for each
    /// build and never kept.
    pub fn set_segment_cache_limit(&self, bytes: u64) {
        let mut c = self.cache();
        c.limit = bytes;
        c.shrink_to(bytes);
    }

    fn cache(&self) -> MutexGuard<'_, SegmentCache> {
        // The cache holds no invariant a panicking holder could break half-way.
        self.overlay.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where chunk `index` of `disk` starts from: the base's chunk, or zeroes.
    async fn start_chunk(
        &self,
        store: &Store,
        disk: DiskId,
        index: u64,
    ) -> Result<Vec<u8>, ProcessError> {
        let reader = self.reader(store, disk).await?;
        match self.overlay.chunks.get(&(disk, index)) {
            Some(t) if !t.from_base => {
                let cs = u64::from(reader.chunk_size());
                let len = reader
                    .size()
                    .saturating_sub(index.saturating_mul(cs))
                    .min(cs);
                Ok(vec![0; len as usize])
            }
            _ => {
                let chunk = reader
                    .read_chunk(index)
                    .await
                    .map_err(|e| store_err(&self.vm, e))?;
                Ok(chunk.as_ref().clone())
            }
        }
    }

    /// Applies to each `(index, bytes)` of `disk` its records, in journal order, reading each
    /// segment needed once (through the cache).
    async fn apply_journal(
        &self,
        store: &Store,
        disk: DiskId,
        chunks: &mut [(u64, Vec<u8>)],
    ) -> Result<(), ProcessError> {
        let mut work: Vec<(RecRef, usize)> = Vec::new();
        for (k, (i, _)) in chunks.iter().enumerate() {
            if let Some(t) = self.overlay.chunks.get(&(disk, *i)) {
                work.extend(t.refs.iter().map(|r| (*r, k)));
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        // Journal order across the chunks, so that each segment is visited once.
        work.sort_unstable();
        let cs = u64::from(self.reader(store, disk).await?.chunk_size());
        let mut current: Option<(u32, Arc<Vec<Record>>)> = None;
        for (r, k) in work {
            let records = match &current {
                Some((s, recs)) if *s == r.seg => recs.clone(),
                _ => {
                    let recs = self.segment(store, r.seg).await?;
                    current = Some((r.seg, recs.clone()));
                    recs
                }
            };
            let (index, data) = &mut chunks[k];
            let start = *index * cs;
            let end = start + data.len() as u64;
            let rec = records
                .get(r.rec as usize)
                .filter(|rec| {
                    rec.disk == disk
                        && rec.kind != RecordKind::Checkpoint
                        && rec.offset < end
                        && rec.offset.saturating_add(rec.length) > start
                })
                .ok_or_else(|| self.changed(r, "a record it held is no longer there"))?;
            apply_record_to_chunk(data, start, rec)
                .map_err(|_| self.changed(r, "a write holds fewer bytes than its range"))?;
        }
        Ok(())
    }

    /// Segment `seg` of the index, decoded: from the cache, else read (and kept).
    async fn segment(&self, store: &Store, seg: u32) -> Result<Arc<Vec<Record>>, ProcessError> {
        if let Some(r) = self.cache().get(seg) {
            return Ok(r);
        }
        let sref = self.overlay.segments.get(seg as usize).ok_or_else(|| {
            self.changed(
                RecRef { seg, rec: 0 },
                "the index names a segment it does not list",
            )
        })?;
        let records = Arc::new(load(store, &self.vm, sref).await?);
        let mut c = self.cache();
        c.reads += 1;
        c.put(seg, records.clone());
        Ok(records)
    }

    /// A segment that no longer holds what was indexed from it.
    fn changed(&self, r: RecRef, what: &str) -> ProcessError {
        let key = self
            .overlay
            .segments
            .get(r.seg as usize)
            .map_or_else(|| format!("#{}", r.seg), |s| s.key.clone());
        store_err(
            &self.vm,
            StoreError::SegmentMismatch {
                vm: self.vm.clone(),
                key,
                reason: format!(
                    "{what} (record {} of the segment, indexed for journal record {} from point {})",
                    r.rec, self.seq, self.base.id
                ),
            },
        )
    }
}

/// Reads the stored records after `pit`'s base up to `pit.seq` (checking them as the processor
/// does) and indexes the chunks they touch; past `budget` bytes of index, refuses.
pub(crate) async fn index_journal(
    store: &Store,
    vm: &VmId,
    segments: &[SegmentRef],
    pit: &mut PointInTime,
    budget: u64,
) -> Result<(), ProcessError> {
    let base = pit.base.clone();
    // (size, chunk size) of every disk of the base.
    let mut disks = BTreeMap::new();
    for d in &base.disks {
        let disk = DiskId(d.disk);
        let r = pit.reader(store, disk).await?;
        disks.insert(disk, (r.size(), u64::from(r.chunk_size())));
    }
    let outside = |r: &Record| ProcessError::OutsideDisk {
        vm: vm.clone(),
        seq: r.seq,
        disk: r.disk,
        offset: r.offset,
        length: r.length,
        point: base.id.clone(),
    };
    let end = pit.seq;
    let too_far = |held: u64| ProcessError::TooFarFromBase {
        vm: vm.clone(),
        seq: end,
        base: base.id.clone(),
        needed_mib: held >> 20,
        budget_mib: budget >> 20,
    };
    let mut ov = Overlay::default();
    let mut expected = base.seq().next();
    let from = expected;
    'segments: for seg in segments
        .iter()
        .filter(|s| s.last_seq >= from && s.first_seq <= end)
    {
        let records = Arc::new(load(store, vm, seg).await?);
        let seg_no = u32::try_from(ov.segments.len()).map_err(|_| too_far(ov.bytes()))?;
        ov.segments.push(seg.clone());
        {
            let c = ov.cache.get_mut().unwrap_or_else(|p| p.into_inner());
            c.reads += 1;
            c.put(seg_no, records.clone());
        }
        for (at, rec) in records.iter().enumerate() {
            match in_order(vm, rec.seq, &mut expected, end)? {
                InOrder::Skip => continue,
                InOrder::Stop => break 'segments,
                InOrder::Take => {}
            }
            if rec.seq == end && pit.time == UNIX_EPOCH {
                pit.time = rec.time;
            }
            if rec.kind == RecordKind::Checkpoint {
                continue;
            }
            pit.records += 1;
            let (size, cs) = *disks.get(&rec.disk).ok_or_else(|| outside(rec))?;
            let stop = rec
                .offset
                .checked_add(rec.length)
                .ok_or_else(|| outside(rec))?;
            if stop > size
                || (rec.kind == RecordKind::Write && (rec.data.len() as u64) < rec.length)
            {
                return Err(outside(rec));
            }
            if rec.length == 0 {
                continue;
            }
            let r = RecRef {
                seg: seg_no,
                rec: u32::try_from(at).map_err(|_| too_far(ov.bytes()))?,
            };
            for i in rec.offset / cs..=(stop - 1) / cs {
                let (c0, c1) = (i * cs, (i * cs + cs).min(size));
                let t = ov.chunks.entry((rec.disk, i)).or_insert(Touched {
                    from_base: true,
                    refs: Vec::new(),
                });
                if rec.offset <= c0 && stop >= c1 {
                    // Covered whole: what came before no longer matters.
                    ov.refs -= t.refs.len() as u64;
                    t.from_base = false;
                    t.refs = if rec.kind == RecordKind::Write {
                        vec![r]
                    } else {
                        Vec::new()
                    };
                    ov.refs += t.refs.len() as u64;
                } else {
                    t.refs.push(r);
                    ov.refs += 1;
                }
            }
            if ov.bytes() > budget {
                return Err(too_far(ov.bytes()));
            }
        }
    }
    if expected <= end {
        return Err(ProcessError::Gap {
            vm: vm.clone(),
            expected,
            found: end,
        });
    }
    pit.overlay = Arc::new(ov);
    Ok(())
}
