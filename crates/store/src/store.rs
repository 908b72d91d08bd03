//! [`Store`]: objects, points, segments and epochs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

use crate::backend::{open_url, Backend, OpenOptions, PutMode, PutOutcome};
use crate::error::{FormatError, Result, StoreError};
use crate::format::{
    self, chunk_key, decode_chunk, decode_json, decode_page, decode_root, page_key, root_key,
    Entry, EpochRecord, ObjectId, PointRecord, Root, EPOCH_FORMAT, POINT_FORMAT,
};
use crate::reader::DiskReader;
use crate::writer::{PointMeta, PointWriter};

/// Default chunk size: 4 MiB (see the measurement in the crate doc).
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// Default entries per index page.
pub const DEFAULT_PAGE_ENTRIES: u32 = 1024;

/// Tunables of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Chunk size of disks created by writers (existing disks keep theirs). Default 4 MiB.
    pub chunk_size: u32,
    /// Entries per index page for new disks. Default 1024.
    pub page_entries: u32,
    /// zstd level for chunks (1..=3 recommended). Default 1.
    pub zstd_level: i32,
    /// GC never deletes an object younger than this. Default 1 h.
    pub gc_grace: Duration,
    /// A writer lease not refreshed for this long is dead. Default 1 h.
    pub lease_ttl: Duration,
    /// The GC lock not refreshed for this long is dead (a killed collector). Default 30 s.
    pub gc_lock_ttl: Duration,
    /// Decoded chunks a [`DiskReader`] keeps. Default 16.
    pub reader_cache_chunks: usize,
    /// Local directories: fsync each object before a put returns. Default on.
    pub fsync: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            page_entries: DEFAULT_PAGE_ENTRIES,
            zstd_level: 1,
            gc_grace: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(3600),
            gc_lock_ttl: Duration::from_secs(30),
            reader_cache_chunks: 16,
            fsync: true,
        }
    }
}

/// Whether [`Store::put_segment`] stored the segment or already had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentPut {
    /// Newly stored.
    Stored,
    /// The identical segment was already stored; nothing changed.
    AlreadyStored,
}

/// A stored journal segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef {
    /// Its first record's sequence number.
    pub first_seq: Seq,
    /// Its last record's sequence number.
    pub last_seq: Seq,
    /// Its object key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A region's recovery-point store (cheap to clone).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Arc<StoreConfig>,
    /// Per VM, the last record of the stored segments (learnt by one listing, then kept up to
    /// date by `put_segment`): a new segment must start after it.
    segment_ends: Arc<std::sync::Mutex<std::collections::HashMap<VmId, Seq>>>,
}

/// `vms/<vm>/points/<id>.json`
pub fn point_key(vm: &VmId, id: &str) -> String {
    format!("vms/{vm}/points/{id}.json")
}
/// `vms/<vm>/segments/<first:020>-<last:020>.lbj`
pub fn segment_key(vm: &VmId, first: Seq, last: Seq) -> String {
    format!("vms/{vm}/segments/{:020}-{:020}.lbj", first.0, last.0)
}
/// `vms/<vm>/epochs/<epoch:020>`: one create-only object per epoch the VM reached.
pub fn epoch_key(vm: &VmId, epoch: Epoch) -> String {
    format!("vms/{vm}/epochs/{:020}", epoch.0)
}
/// `vms/<vm>/writer-lease`
pub fn lease_key(vm: &VmId) -> String {
    format!("vms/{vm}/writer-lease")
}

/// A point id: `<seq:020>-crash` or `<seq:020>-app` (sorts by journal position).
pub fn point_id(seq: Seq, kind: CheckpointKind) -> String {
    format!("{:020}-{}", seq.0, kind_suffix(kind))
}

/// The journal position and kind in a point id (`None`: not a point id).
///
/// ```
/// use lifeboat_store::{parse_point_id, point_id};
/// use lifeboat_types::{CheckpointKind, Seq};
/// let id = point_id(Seq(42), CheckpointKind::AppConsistent);
/// assert_eq!(parse_point_id(&id), Some((Seq(42), CheckpointKind::AppConsistent)));
/// assert_eq!(parse_point_id("42-app"), None);
/// assert_eq!(parse_point_id("00000000000000000042-fuzzy"), None);
/// ```
pub fn parse_point_id(id: &str) -> Option<(Seq, CheckpointKind)> {
    let (seq, kind) = id.split_once('-')?;
    let kind = match kind {
        "crash" => CheckpointKind::CrashConsistent,
        "app" => CheckpointKind::AppConsistent,
        _ => return None,
    };
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Seq(seq.parse().ok()?), kind))
}

/// Whether a recovery-point choice names a time (`@UNIXSECONDS` or `...T...Z`) rather than a
/// point (`latest`, `latest-processed`, `latest-app-consistent`, an id).
pub fn is_time_choice(choice: &str) -> bool {
    choice.starts_with('@') || (choice.ends_with('Z') && choice.contains('T'))
}

/// The point a recovery-point choice names among `points` (oldest first): `latest` and
/// `latest-processed` the newest restorable point, `latest-app-consistent` the newest
/// restorable app-consistent one, anything else the point with that id, restorable or not
/// (the caller says why an initial copy cannot be used). `None`: no such point (a time is
/// never a point: see [`is_time_choice`]).
///
/// ```
/// use lifeboat_store::{choose_point, is_time_choice};
/// assert!(choose_point(&[], "latest").is_none());
/// assert!(is_time_choice("@1700000000"));
/// assert!(is_time_choice("2026-11-27T10:00:00Z"));
/// assert!(is_time_choice("2026-11-27T10:00:00.250Z"));
/// assert!(!is_time_choice("latest"));
/// assert!(!is_time_choice("latest-app-consistent"));
/// assert!(!is_time_choice("00000000000000001234-crash"));
/// ```
pub fn choose_point<'a>(points: &'a [PointRecord], choice: &str) -> Option<&'a PointRecord> {
    let mut restorable = points.iter().rev().filter(|p| p.is_restorable());
    match choice {
        "latest" | "latest-processed" => restorable.next(),
        "latest-app-consistent" => {
            restorable.find(|p| p.checkpoint_kind() == Some(CheckpointKind::AppConsistent))
        }
        id => points.iter().find(|p| p.id == id),
    }
}

fn kind_suffix(kind: CheckpointKind) -> &'static str {
    match kind {
        CheckpointKind::CrashConsistent => "crash",
        CheckpointKind::AppConsistent => "app",
    }
}

/// Parses `vms/<vm>/segments/<first>-<last>.lbj` file names.
pub(crate) fn parse_segment_name(name: &str) -> Option<(Seq, Seq)> {
    let stem = name.strip_suffix(".lbj")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((Seq(a.parse().ok()?), Seq(b.parse().ok()?)))
}

/// Nanoseconds since 1970 (0 before it).
pub(crate) fn to_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl PointRecord {
    /// The point's consistency.
    pub fn checkpoint_kind(&self) -> Option<CheckpointKind> {
        match self.kind.as_str() {
            "crash-consistent" => Some(CheckpointKind::CrashConsistent),
            "app-consistent" => Some(CheckpointKind::AppConsistent),
            _ => None,
        }
    }
    /// When it was cut.
    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.time_ns)
    }
    /// When its record was first committed (its time, in records without `cut_ns`).
    pub fn cut_time(&self) -> SystemTime {
        match self.cut_ns {
            0 => self.time(),
            ns => UNIX_EPOCH + Duration::from_nanos(ns),
        }
    }
    /// Whether it is journal-backed (read through the journal from its base).
    pub fn is_journal_backed(&self) -> bool {
        self.base.is_some()
    }
    /// Whether it may be restored: every point but the fuzzy initial copy.
    pub fn is_restorable(&self) -> bool {
        self.origin != format::PointOrigin::InitialCopy
    }
    /// Its journal position.
    pub fn seq(&self) -> Seq {
        Seq(self.seq)
    }
    /// Its epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }
    /// One of its disks.
    pub fn disk(&self, disk: DiskId) -> Option<&format::PointDisk> {
        self.disks.iter().find(|d| d.disk == disk.0)
    }
    /// "N of M disks".
    pub fn disks_summary(&self) -> String {
        format!("{} of {} disks", self.disks.len(), self.disks_total)
    }
}

impl Store {
    /// A store over a backend.
    pub fn new(backend: Arc<dyn Backend>, config: StoreConfig) -> Result<Self> {
        format::check_geometry(config.chunk_size, config.page_entries)
            .map_err(|e| StoreError::InvalidArgument(format!("store configuration: {e}")))?;
        Ok(Store {
            backend,
            config: Arc::new(config),
            segment_ends: Arc::default(),
        })
    }

    /// Opens a store URL (see [`open_url`]) with the default configuration.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, StoreConfig::default())
    }

    /// Opens a store URL with a configuration.
    pub fn open_with(url: &str, config: StoreConfig) -> Result<Self> {
        let b = open_url(
            url,
            OpenOptions {
                fsync: config.fsync,
            },
        )?;
        Self::new(b, config)
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Reads, decodes and verifies a chunk (at most `limit` bytes of plain data).
    pub async fn get_chunk(&self, id: &ObjectId, limit: usize) -> Result<Vec<u8>> {
        let key = chunk_key(id);
        let obj = self.backend.get(&key).await?;
        let id = *id;
        // Decompression and hashing are CPU work: keep them off the async workers.
        tokio::task::spawn_blocking(move || decode_chunk(&obj, &id, limit))
            .await
            .map_err(|e| StoreError::corrupt(&key, FormatError::Json(e.to_string())))?
            .map_err(|p| StoreError::corrupt(key, p))
    }

    /// Reads and verifies an index page.
    pub async fn get_page(&self, id: &ObjectId) -> Result<Vec<Entry>> {
        let key = page_key(id);
        let obj = self.backend.get(&key).await?;
        check_id(&key, id, &obj)?;
        decode_page(&obj).map_err(|p| StoreError::corrupt(key, p))
    }

    /// Reads and verifies a root manifest.
    pub async fn get_root(&self, id: &ObjectId) -> Result<Root> {
        let key = root_key(id);
        let obj = self.backend.get(&key).await?;
        check_id(&key, id, &obj)?;
        decode_root(&obj).map_err(|p| StoreError::corrupt(key, p))
    }

    /// Ids of a VM's points, oldest first.
    pub async fn list_point_ids(&self, vm: &VmId) -> Result<Vec<String>> {
        let prefix = format!("vms/{vm}/points");
        let mut ids: Vec<String> = self
            .backend
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(&prefix)?.strip_prefix('/')?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// A VM's points, oldest first.
    pub async fn list_points(&self, vm: &VmId) -> Result<Vec<PointRecord>> {
        let mut out = Vec::new();
        for id in self.list_point_ids(vm).await? {
            out.push(self.get_point(vm, &id).await?);
        }
        Ok(out)
    }

    /// One point.
    pub async fn get_point(&self, vm: &VmId, id: &str) -> Result<PointRecord> {
        let key = point_key(vm, id);
        let obj = match self.backend.get(&key).await {
            Err(StoreError::NotFound { .. }) => {
                return Err(StoreError::PointNotFound {
                    vm: vm.clone(),
                    id: id.to_string(),
                })
            }
            r => r?,
        };
        decode_point(&key, vm, id, &obj)
    }

    /// The newest point ("latest processed"), if any.
    pub async fn latest_point(&self, vm: &VmId) -> Result<Option<PointRecord>> {
        match self.list_point_ids(vm).await?.last() {
            Some(id) => Ok(Some(self.get_point(vm, id).await?)),
            None => Ok(None),
        }
    }

    /// The newest point of a kind, if any.
    pub async fn latest_point_of_kind(
        &self,
        vm: &VmId,
        kind: CheckpointKind,
    ) -> Result<Option<PointRecord>> {
        let suffix = format!("-{}", kind_suffix(kind));
        let ids = self.list_point_ids(vm).await?;
        match ids.iter().rev().find(|id| id.ends_with(&suffix)) {
            Some(id) => Ok(Some(self.get_point(vm, id).await?)),
            None => Ok(None),
        }
    }

    /// Deletes a point's record; its data goes at the next [`Store::gc`].
    pub async fn delete_point(&self, vm: &VmId, id: &str) -> Result<()> {
        let key = point_key(vm, id);
        if self.backend.head(&key).await?.is_none() {
            return Err(StoreError::PointNotFound {
                vm: vm.clone(),
                id: id.to_string(),
            });
        }
        self.backend.delete(&key).await
    }

    /// Every VM with objects in the store.
    pub async fn list_vms(&self) -> Result<Vec<VmId>> {
        let mut vms: Vec<VmId> = self
            .backend
            .list("vms")
            .await?
            .into_iter()
            .filter_map(|o| VmId::new(o.key.split('/').nth(1)?).ok())
            .collect();
        vms.sort();
        vms.dedup();
        Ok(vms)
    }

    /// Starts a point of `vm`, from `base` (its disks as they are in that point) or from no disk.
    /// One writer per VM at a time.
    pub async fn point_writer(&self, vm: &VmId, base: Option<&PointRecord>) -> Result<PointWriter> {
        PointWriter::start(self.clone(), vm.clone(), base).await
    }

    /// Commits a **journal-backed** point: the state at `meta.seq` as `base` (a stored point)
    /// plus the stored journal records after it. Nothing but the record is written, so this is
    /// cheap; the caller has checked that the stored journal runs without a gap from the base
    /// to `meta.seq`. The record is put create-only.
    pub async fn put_journal_point(
        &self,
        vm: &VmId,
        base: &PointRecord,
        meta: PointMeta,
    ) -> Result<PointRecord> {
        if base.base.is_some() || base.vm != vm.as_str() || base.seq() > meta.seq {
            return Err(StoreError::InvalidArgument(format!(
                "point {} of VM {} cannot be the base of a journal-backed point of VM {vm} at \
                 record {}: a base is an older stored point of the same VM",
                base.id, base.vm, meta.seq
            )));
        }
        let id = point_id(meta.seq, meta.kind);
        let rec = PointRecord {
            format: POINT_FORMAT.to_string(),
            version: 1,
            id: id.clone(),
            vm: vm.to_string(),
            time_ns: to_ns(meta.time),
            kind: meta.kind.to_string(),
            seq: meta.seq.0,
            epoch: meta.epoch.0,
            disks: base.disks.clone(),
            disks_total: meta.disks_total.unwrap_or(base.disks_total),
            new_chunks: 0,
            new_bytes: 0,
            base: Some(base.id.clone()),
            origin: meta.origin,
            cut_ns: to_ns(SystemTime::now()),
            copy_end: meta.copy_end.map(|s| s.0),
        };
        let body = serde_json::to_vec_pretty(&rec)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        match self
            .backend
            .put(&point_key(vm, &id), Bytes::from(body), PutMode::Create)
            .await?
        {
            PutOutcome::Written => Ok(rec),
            PutOutcome::AlreadyExists => Err(StoreError::PointExists { vm: vm.clone(), id }),
        }
    }

    /// Re-bases the journal-backed point `id` on `base`, a newer stored point at or before it
    /// (rolling the base forward, `lifeboat_process::plan_rolls`): its record is overwritten by
    /// one naming `base` and `base`'s roots. The point reads the same bytes either way, since
    /// `base` is the old base plus the same journal records. A point that is stored by now is
    /// returned as it is; a `base` older than the recorded one, not stored, of another VM or
    /// after the point is refused. The caller keeps the journal from `base` to the point.
    pub async fn rebase_journal_point(
        &self,
        vm: &VmId,
        id: &str,
        base: &PointRecord,
    ) -> Result<PointRecord> {
        let now = self.get_point(vm, id).await?;
        let Some(recorded) = now.base.as_deref() else {
            return Ok(now);
        };
        let recorded_seq = parse_point_id(recorded).map_or(Seq(0), |(s, _)| s);
        if base.base.is_some()
            || base.vm != vm.as_str()
            || base.seq() > now.seq()
            || base.seq() < recorded_seq
            || base.copy_end.is_some_and(|e| e > now.seq)
        {
            return Err(StoreError::InvalidArgument(format!(
                "point {} of VM {} cannot be the new base of point {id} of VM {vm} (based on \
                 {recorded}): a new base is a stored point of the same VM between the old \
                 base and the point",
                base.id, base.vm
            )));
        }
        if recorded == base.id {
            return Ok(now);
        }
        let rec = PointRecord {
            base: Some(base.id.clone()),
            disks: base.disks.clone(),
            ..now
        };
        let body = serde_json::to_vec_pretty(&rec)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        self.backend
            .put(&point_key(vm, id), Bytes::from(body), PutMode::Overwrite)
            .await?;
        Ok(rec)
    }

    /// A random-access reader of one disk of a stored point (a journal-backed point is refused:
    /// its roots are its base's).
    pub async fn disk_reader(&self, point: &PointRecord, disk: DiskId) -> Result<DiskReader> {
        if let Some(base) = &point.base {
            return Err(StoreError::JournalBacked {
                vm: VmId::new(&point.vm).map_err(|e| StoreError::InvalidArgument(e.to_string()))?,
                id: point.id.clone(),
                base: base.clone(),
            });
        }
        let d = point.disk(disk).ok_or_else(|| StoreError::NoSuchDisk {
            vm: point.vm.clone(),
            id: point.id.clone(),
            disk,
        })?;
        let root = self.get_root(&d.root).await?;
        if root.disk_size != d.size {
            return Err(StoreError::corrupt(
                root_key(&d.root),
                FormatError::Invalid {
                    field: "disk size (point record disagrees)",
                    value: root.disk_size.to_string(),
                },
            ));
        }
        Ok(DiskReader::new(self.clone(), d.root, root))
    }

    // ---- segments and epochs ----

    /// The highest epoch the store has seen for a VM (`Epoch(0)` if none).
    pub async fn epoch(&self, vm: &VmId) -> Result<Epoch> {
        let prefix = format!("vms/{vm}/epochs");
        let mut max = Epoch(0);
        for o in self.backend.list(&prefix).await? {
            let name = o.key.rsplit('/').next().unwrap_or("");
            match name.parse::<u64>() {
                Ok(n) if name.len() == 20 => max = max.max(Epoch(n)),
                _ => {
                    return Err(StoreError::corrupt(
                        &o.key,
                        FormatError::Invalid {
                            field: "epoch key",
                            value: name.to_string(),
                        },
                    ))
                }
            }
        }
        Ok(max)
    }

    /// Records that a VM reached `epoch`: a create-only put, so two hosts raising the same
    /// epoch at once learn which one did it (`true`: this call).
    async fn write_epoch(&self, vm: &VmId, epoch: Epoch) -> Result<bool> {
        let rec = EpochRecord {
            format: EPOCH_FORMAT.to_string(),
            version: 1,
            epoch: epoch.0,
        };
        let body = serde_json::to_vec_pretty(&rec)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let put = self
            .backend
            .put(&epoch_key(vm, epoch), Bytes::from(body), PutMode::Create)
            .await?;
        Ok(put == PutOutcome::Written)
    }

    /// Raises a VM's epoch (failover). Lowering it is refused; the same epoch is a no-op.
    /// Returns whether this call raised it: of two failovers racing to the same epoch, exactly
    /// one gets `true` (epochs are create-only objects, no read-modify-write).
    pub async fn bump_epoch(&self, vm: &VmId, new: Epoch) -> Result<bool> {
        let current = self.epoch(vm).await?;
        if new < current {
            return Err(StoreError::EpochRegression {
                vm: vm.clone(),
                current,
                requested: new,
            });
        }
        if new == current {
            return Ok(false);
        }
        self.write_epoch(vm, new).await
    }

    /// Stores a sealed journal segment, after checking it (see the crate doc: idempotent,
    /// fenced by epoch).
    pub async fn put_segment(
        &self,
        vm: &VmId,
        epoch: Epoch,
        first_seq: Seq,
        last_seq: Seq,
        bytes: Bytes,
    ) -> Result<SegmentPut> {
        let key = segment_key(vm, first_seq, last_seq);
        let mismatch = |reason: String| StoreError::SegmentMismatch {
            vm: vm.clone(),
            key: key.clone(),
            reason,
        };
        let (header, records) = check_segment_bytes(vm, &key, &bytes)?;
        if header.vm != *vm {
            return Err(mismatch(format!("its header names VM {}", header.vm)));
        }
        if header.epoch != epoch {
            return Err(mismatch(format!(
                "its header has {}, not {epoch}",
                header.epoch
            )));
        }
        if header.first_seq != first_seq {
            return Err(mismatch(format!(
                "it starts at {}, not {first_seq}",
                header.first_seq
            )));
        }
        let last = records
            .last()
            .map(|r| r.seq)
            .unwrap_or(Seq(first_seq.0.saturating_sub(1)));
        if last != last_seq {
            return Err(mismatch(format!("it ends at {last}, not {last_seq}")));
        }
        let store_epoch = self.epoch(vm).await?;
        if epoch < store_epoch {
            return Err(StoreError::Fenced {
                vm: vm.clone(),
                segment_epoch: epoch,
                store_epoch,
            });
        }
        if epoch > store_epoch {
            self.write_epoch(vm, epoch).await?;
        }
        // A segment that overlaps stored records (under another key) would give two versions
        // of the same records: refused before anything is written (a segment written, then
        // deleted again, could be read by processing in between). The same segment again is
        // the idempotent retry below.
        if let Some(end) = self
            .stored_segment_end(vm)
            .await?
            .filter(|e| first_seq <= *e)
        {
            if self.backend.head(&key).await?.is_none() {
                return Err(mismatch(format!(
                    "it overlaps records already stored (through {end}) under other keys"
                )));
            }
        }
        let stored = Bytes::from(format::encode_stored_segment(
            &bytes,
            self.config.zstd_level,
        ));
        match self.backend.put(&key, stored, PutMode::Create).await? {
            PutOutcome::Written => {
                if let Ok(mut m) = self.segment_ends.lock() {
                    let e = m.entry(vm.clone()).or_insert(last_seq);
                    *e = (*e).max(last_seq);
                }
                // A failover may have raised the epoch while we wrote. The segment is NOT taken
                // back: the failover's processing may already have read it and cut a point from
                // its records, and deleting it would leave that point reading a hole. It stays,
                // and the put is reported fenced all the same, so that the source keeps it in
                // its spool: re-protect's divergence (the store's summary and the old source's
                // spool) then covers its records whether or not processing or commit saw them.
                let now = self.epoch(vm).await?;
                if now > epoch {
                    return Err(StoreError::Fenced {
                        vm: vm.clone(),
                        segment_epoch: epoch,
                        store_epoch: now,
                    });
                }
                Ok(SegmentPut::Stored)
            }
            PutOutcome::AlreadyExists => {
                let existing = stored_segment_bytes(&key, self.backend.get(&key).await?)?;
                if existing == bytes {
                    Ok(SegmentPut::AlreadyStored)
                } else {
                    Err(StoreError::SegmentConflict { key })
                }
            }
        }
    }

    /// The last record of a VM's stored segments (`None`: none stored), listed once per VM.
    async fn stored_segment_end(&self, vm: &VmId) -> Result<Option<Seq>> {
        if let Some(e) = self
            .segment_ends
            .lock()
            .ok()
            .and_then(|m| m.get(vm).copied())
        {
            return Ok(Some(e));
        }
        let end = self
            .list_segments(vm)
            .await?
            .iter()
            .map(|s| s.last_seq)
            .max();
        if let (Some(e), Ok(mut m)) = (end, self.segment_ends.lock()) {
            let v = m.entry(vm.clone()).or_insert(e);
            *v = (*v).max(e);
        }
        Ok(end)
    }

    /// A VM's stored segments, in sequence order.
    pub async fn list_segments(&self, vm: &VmId) -> Result<Vec<SegmentRef>> {
        let prefix = format!("vms/{vm}/segments");
        let mut out: Vec<SegmentRef> = Vec::new();
        for o in self.backend.list(&prefix).await? {
            let name = o.key.rsplit('/').next().unwrap_or("");
            match parse_segment_name(name) {
                Some((first_seq, last_seq)) => out.push(SegmentRef {
                    first_seq,
                    last_seq,
                    key: o.key,
                    size: o.size,
                }),
                None => tracing::warn!(key = %o.key, "ignoring an object that is not a segment"),
            }
        }
        out.sort_by_key(|s| (s.first_seq, s.last_seq));
        Ok(out)
    }

    /// Reads a segment and checks it (parses, and its header matches its key).
    pub async fn get_segment(&self, vm: &VmId, seg: &SegmentRef) -> Result<Bytes> {
        let obj = self.backend.get(&seg.key).await?;
        let bytes = stored_segment_bytes(&seg.key, obj)?;
        self.checked_segment(vm, seg, &bytes)?;
        Ok(bytes)
    }

    /// A stored segment's header and records, checked as [`Store::get_segment`] checks them
    /// (parsed once: what processing and restores read).
    pub async fn read_segment(
        &self,
        vm: &VmId,
        seg: &SegmentRef,
    ) -> Result<(
        lifeboat_journal::SegmentHeader,
        Vec<lifeboat_journal::Record>,
    )> {
        let obj = self.backend.get(&seg.key).await?;
        let bytes = stored_segment_bytes(&seg.key, obj)?;
        self.checked_segment(vm, seg, &bytes)
    }

    /// Parses a segment's bytes and checks them against its key.
    fn checked_segment(
        &self,
        vm: &VmId,
        seg: &SegmentRef,
        bytes: &[u8],
    ) -> Result<(
        lifeboat_journal::SegmentHeader,
        Vec<lifeboat_journal::Record>,
    )> {
        let (h, records) = check_segment_bytes(vm, &seg.key, bytes)?;
        let last = records
            .last()
            .map(|r| r.seq)
            .unwrap_or(Seq(h.first_seq.0.saturating_sub(1)));
        if h.vm != *vm || h.first_seq != seg.first_seq || last != seg.last_seq {
            return Err(StoreError::SegmentMismatch {
                vm: vm.clone(),
                key: seg.key.clone(),
                reason: format!("its content is VM {} {}..={}", h.vm, h.first_seq, last),
            });
        }
        Ok((h, records))
    }

    /// Deletes one stored segment (retention: none of its records is needed any more).
    pub async fn delete_segment(&self, vm: &VmId, seg: &SegmentRef) -> Result<()> {
        if !seg.key.starts_with(&format!("vms/{vm}/segments/")) {
            return Err(StoreError::InvalidArgument(format!(
                "{} is not a journal segment of VM {vm}",
                seg.key
            )));
        }
        self.backend.delete(&seg.key).await
    }

    /// Deletes every segment whose last record is at or before `seq`; returns how many.
    pub async fn delete_segments_through(&self, vm: &VmId, seq: Seq) -> Result<usize> {
        let mut n = 0;
        for s in self.list_segments(vm).await? {
            if s.last_seq <= seq {
                self.backend.delete(&s.key).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The journal bytes of a stored segment object (see [`format::decode_stored_segment`]).
pub(crate) fn stored_segment_bytes(key: &str, obj: Bytes) -> Result<Bytes> {
    match format::decode_stored_segment(&obj).map_err(|p| StoreError::corrupt(key, p))? {
        std::borrow::Cow::Borrowed(_) => Ok(obj),
        std::borrow::Cow::Owned(v) => Ok(Bytes::from(v)),
    }
}

pub(crate) fn check_segment_bytes(
    vm: &VmId,
    key: &str,
    bytes: &[u8],
) -> Result<(
    lifeboat_journal::SegmentHeader,
    Vec<lifeboat_journal::Record>,
)> {
    lifeboat_journal::parse_segment(bytes).map_err(|source| StoreError::InvalidSegment {
        vm: vm.clone(),
        key: key.to_string(),
        source,
    })
}

pub(crate) fn check_id(key: &str, id: &ObjectId, obj: &[u8]) -> Result<()> {
    let actual = ObjectId::of(obj);
    if actual != *id {
        return Err(StoreError::corrupt(
            key,
            FormatError::HashMismatch {
                expected: id.to_hex(),
                actual: actual.to_hex(),
            },
        ));
    }
    Ok(())
}

pub(crate) fn decode_point(key: &str, vm: &VmId, id: &str, obj: &[u8]) -> Result<PointRecord> {
    let p: PointRecord = decode_json(obj, POINT_FORMAT, |r: &PointRecord| (&r.format, r.version))
        .map_err(|e| StoreError::corrupt(key, e))?;
    let bad = |field: &'static str, value: &str| {
        StoreError::corrupt(
            key,
            FormatError::Invalid {
                field,
                value: value.to_string(),
            },
        )
    };
    if p.vm != vm.as_str() {
        return Err(bad("point VM", &p.vm));
    }
    if p.id != id {
        return Err(bad("point id", &p.id));
    }
    let Some(kind) = p.checkpoint_kind() else {
        return Err(bad("point kind", &p.kind));
    };
    if point_id(Seq(p.seq), kind) != p.id {
        return Err(bad("point id (does not match seq and kind)", &p.id));
    }
    if let Some(b) = &p.base {
        // A base is an older point.
        if parse_point_id(b).is_none_or(|(n, _)| n > p.seq()) || *b == p.id {
            return Err(bad("base point (must be an older point)", b));
        }
    }
    Ok(p)
}
