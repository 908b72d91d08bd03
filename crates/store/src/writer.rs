//! [`PointWriter`]: builds a recovery point from a previous one by changing chunks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

use crate::backend::{PutMode, PutOutcome};
use crate::error::{FormatError, Result, StoreError};
use crate::format::{
    chunk_key, encode_chunk, encode_page, encode_root, is_zero, page_key, root_key, Entry,
    LeaseRecord, ObjectId, PointDisk, PointRecord, Root, LEASE_FORMAT, POINT_FORMAT,
};
use crate::format::{PointOrigin, GC_LOCK_KEY};
use crate::store::{lease_key, point_id, point_key, to_ns, Store};

/// What a committed point is (the rest of its record comes from the writer).
#[derive(Debug, Clone, Copy)]
pub struct PointMeta {
    /// Journal position: the point is the state after every record up to this one.
    pub seq: Seq,
    /// The replication epoch.
    pub epoch: Epoch,
    /// Crash- or app-consistent.
    pub kind: CheckpointKind,
    /// When the point was cut.
    pub time: SystemTime,
    /// How many disks the VM had at that time (`None`: the number of disks in the point).
    pub disks_total: Option<u32>,
    /// Why it was cut.
    pub origin: PointOrigin,
    /// An initial copy taken while the VM kept writing: where the copy ended (see
    /// [`PointRecord::copy_end`]).
    pub copy_end: Option<Seq>,
}

impl PointMeta {
    /// A crash- or app-consistent point cut at a checkpoint marker, with every disk.
    pub fn marker(seq: Seq, epoch: Epoch, kind: CheckpointKind, time: SystemTime) -> Self {
        PointMeta {
            seq,
            epoch,
            kind,
            time,
            disks_total: None,
            origin: PointOrigin::Marker,
            copy_end: None,
        }
    }
}

struct DiskState {
    root: Root,
    /// Pages read (and maybe changed) by this writer, by page index.
    loaded: HashMap<usize, Vec<Entry>>,
    dirty: HashSet<usize>,
}

/// Builds one point: start from a base point's disks (or none), change chunks, commit.
///
/// Chunks are stored as they are set; index pages, roots and the point record at
/// [`PointWriter::commit`], in that order. Only the pages that hold a changed chunk are
/// rewritten. A writer that is dropped without committing leaves only unreferenced objects,
/// which GC removes once they are older than its grace period.
pub struct PointWriter {
    store: Store,
    vm: VmId,
    started: SystemTime,
    lease_refreshed: Instant,
    base_roots: Vec<ObjectId>,
    disks: BTreeMap<u32, DiskState>,
    /// Encoded pages to store at commit (new disks' zero pages), by id.
    pending_pages: HashMap<ObjectId, Vec<u8>>,
    new_chunks: u64,
    new_bytes: u64,
}

impl PointWriter {
    pub(crate) async fn start(store: Store, vm: VmId, base: Option<&PointRecord>) -> Result<Self> {
        let mut disks = BTreeMap::new();
        let mut base_roots = Vec::new();
        if let Some(b) = base {
            if b.vm != vm.as_str() {
                return Err(StoreError::InvalidArgument(format!(
                    "base point {} belongs to VM {}, not {vm}",
                    b.id, b.vm
                )));
            }
            for d in &b.disks {
                let root = store.get_root(&d.root).await?;
                base_roots.push(d.root);
                disks.insert(
                    d.disk,
                    DiskState {
                        root,
                        loaded: HashMap::new(),
                        dirty: HashSet::new(),
                    },
                );
            }
        }
        let mut w = PointWriter {
            store,
            vm,
            started: SystemTime::now(),
            lease_refreshed: Instant::now(),
            base_roots,
            disks,
            pending_pages: HashMap::new(),
            new_chunks: 0,
            new_bytes: 0,
        };
        w.put_lease().await?;
        w.wait_for_gc().await?;
        Ok(w)
    }

    /// After the lease is put: waits while a garbage collection holds the store's GC lock
    /// (until it is released, or stale). A collector that took its lock before this lease
    /// existed may be sweeping; one that takes it later sees the lease and sweeps nothing (the
    /// crate doc's GC argument).
    async fn wait_for_gc(&mut self) -> Result<()> {
        let mut pause = Duration::from_millis(20);
        loop {
            let Some(h) = self.store.backend.head(GC_LOCK_KEY).await? else {
                return Ok(());
            };
            let age = SystemTime::now()
                .duration_since(h.last_modified)
                .unwrap_or(Duration::ZERO);
            if age >= self.store.config.gc_lock_ttl {
                return Ok(());
            }
            tracing::debug!(vm = %self.vm, "waiting for garbage collection to finish");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            self.refresh_lease_if_due().await?;
        }
    }

    async fn put_lease(&mut self) -> Result<()> {
        let rec = LeaseRecord {
            format: LEASE_FORMAT.to_string(),
            version: 1,
            started_ns: to_ns(self.started),
            base_roots: self.base_roots.clone(),
        };
        let body =
            serde_json::to_vec(&rec).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        self.store
            .backend
            .put(&lease_key(&self.vm), Bytes::from(body), PutMode::Overwrite)
            .await?;
        self.lease_refreshed = Instant::now();
        Ok(())
    }

    async fn refresh_lease_if_due(&mut self) -> Result<()> {
        if self.lease_refreshed.elapsed() >= self.store.config.lease_ttl / 4 {
            self.put_lease().await?;
        }
        Ok(())
    }

    /// Objects modified since this time are protected by this writer's lease (see the GC
    /// argument in the crate doc).
    fn fresh_since(&self) -> SystemTime {
        self.started
            .checked_sub(crate::gc::CLOCK_MARGIN)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// The VM.
    pub fn vm(&self) -> &VmId {
        &self.vm
    }

    /// The disks of the point being built, with their sizes.
    pub fn disks(&self) -> Vec<(DiskId, u64)> {
        self.disks
            .iter()
            .map(|(d, s)| (DiskId(*d), s.root.disk_size))
            .collect()
    }

    /// Chunk size of a disk.
    pub fn chunk_size(&self, disk: DiskId) -> Option<u32> {
        self.disks.get(&disk.0).map(|d| d.root.chunk_size)
    }

    /// Adds a disk of `size` bytes, all zeroes, with the store's chunk size.
    pub fn add_disk(&mut self, disk: DiskId, size: u64) -> Result<()> {
        if self.disks.contains_key(&disk.0) {
            return Err(StoreError::InvalidArgument(format!(
                "{disk} is already in the point being written for VM {}",
                self.vm
            )));
        }
        if size == 0 {
            return Err(StoreError::InvalidArgument(format!("{disk} has size 0")));
        }
        let chunk_size = self.store.config.chunk_size;
        let page_entries = self.store.config.page_entries;
        let mut root = Root {
            disk_size: size,
            chunk_size,
            page_entries,
            pages: Vec::new(),
        };
        let pages = crate::format::page_count(size, chunk_size, page_entries).unwrap_or(0) as usize;
        let mut ids: HashMap<usize, ObjectId> = HashMap::new();
        for p in 0..pages {
            let n = root.entries_in_page(p);
            let id = match ids.get(&n) {
                Some(id) => *id,
                None => {
                    let bytes = encode_page(&vec![Entry::Zero; n]);
                    let id = ObjectId::of(&bytes);
                    self.pending_pages.insert(id, bytes);
                    ids.insert(n, id);
                    id
                }
            };
            root.pages.push(id);
        }
        self.disks.insert(
            disk.0,
            DiskState {
                root,
                loaded: HashMap::new(),
                dirty: HashSet::new(),
            },
        );
        Ok(())
    }

    /// The plain data of chunk `index` of `disk` as this writer has it now (its base's chunk,
    /// or what was set since).
    pub async fn read_chunk(&mut self, disk: DiskId, index: u64) -> Result<Vec<u8>> {
        let len = self.chunk_len_of(disk, index)?;
        let (_, _, entry) = self.current_entry(disk, index).await?;
        match entry {
            Some(Entry::Chunk(id)) => {
                let data = self.store.get_chunk(&id, len).await?;
                if data.len() != len {
                    return Err(StoreError::corrupt(
                        chunk_key(&id),
                        FormatError::Invalid {
                            field: "chunk length (for its disk position)",
                            value: data.len().to_string(),
                        },
                    ));
                }
                Ok(data)
            }
            _ => Ok(vec![0u8; len]),
        }
    }

    /// Sets chunk `index` of `disk` to `data` (exactly the chunk's length: the chunk size, or
    /// less for the disk's last chunk). Zero data becomes a zero entry; other data is stored
    /// unless the store has it. Returns whether the chunk changed.
    pub async fn set_chunk(&mut self, disk: DiskId, index: u64, data: &[u8]) -> Result<bool> {
        self.refresh_lease_if_due().await?;
        let want = self.chunk_len_of(disk, index)?;
        if data.len() != want {
            return Err(StoreError::InvalidArgument(format!(
                "chunk {index} of {disk} of VM {} is {want} bytes, not {}",
                self.vm,
                data.len()
            )));
        }
        let entry = if is_zero(data) {
            Entry::Zero
        } else {
            Entry::Chunk(ObjectId::of(data))
        };
        let (page, slot, current) = self.current_entry(disk, index).await?;
        if current == Some(entry) {
            return Ok(false);
        }
        if let Entry::Chunk(id) = entry {
            self.store_chunk(&id, data).await?;
        }
        if let Some(d) = self.disks.get_mut(&disk.0) {
            if let Some(p) = d.loaded.get_mut(&page) {
                if let Some(e) = p.get_mut(slot) {
                    *e = entry;
                }
            }
            d.dirty.insert(page);
        }
        Ok(true)
    }

    /// [`PointWriter::set_chunk`] for several chunks of one disk at once: the chunk objects are
    /// stored concurrently (their puts, and a local directory's fsyncs, overlap), which is what
    /// makes initial replication fast. Returns how many chunks changed.
    pub async fn set_chunks(&mut self, disk: DiskId, chunks: &[(u64, &[u8])]) -> Result<usize> {
        self.refresh_lease_if_due().await?;
        for (index, data) in chunks {
            let want = self.chunk_len_of(disk, *index)?;
            if data.len() != want {
                return Err(StoreError::InvalidArgument(format!(
                    "chunk {index} of {disk} of VM {} is {want} bytes, not {}",
                    self.vm,
                    data.len()
                )));
            }
        }
        // Hash (and encode) the chunks on the blocking pool, in parallel: with BLAKE3 and zstd
        // this is most of the CPU work of initial replication.
        let level = self.store.config.zstd_level;
        let prepared = futures::future::try_join_all(chunks.iter().map(|(index, data)| {
            let (index, data) = (*index, Bytes::copy_from_slice(data));
            async move {
                tokio::task::spawn_blocking(move || {
                    if is_zero(&data) {
                        (index, Entry::Zero, None)
                    } else {
                        let id = ObjectId::of(&data);
                        (
                            index,
                            Entry::Chunk(id),
                            Some(encode_chunk(&data, &id, level)),
                        )
                    }
                })
                .await
                .map_err(|e| StoreError::InvalidArgument(format!("chunk hashing task: {e}")))
            }
        }))
        .await?;
        // Entries and the chunks that change.
        let mut changes = Vec::new();
        for (index, entry, encoded) in prepared {
            let (page, slot, current) = self.current_entry(disk, index).await?;
            if current != Some(entry) {
                changes.push((page, slot, entry, encoded));
            }
        }
        let this = &*self;
        let stored = futures::future::try_join_all(changes.iter().filter_map(|(_, _, e, enc)| {
            let (Entry::Chunk(id), Some(enc)) = (*e, enc) else {
                return None;
            };
            Some(async move { this.put_addressed(&chunk_key(&id), || enc.clone()).await })
        }))
        .await?;
        for n in stored.into_iter().flatten() {
            self.new_chunks += 1;
            self.new_bytes += n;
        }
        let changed = changes.len();
        if let Some(d) = self.disks.get_mut(&disk.0) {
            for (page, slot, entry, _) in changes {
                if let Some(e) = d.loaded.get_mut(&page).and_then(|p| p.get_mut(slot)) {
                    *e = entry;
                }
                d.dirty.insert(page);
            }
        }
        Ok(changed)
    }

    /// The length of chunk `index` of `disk`, or an error naming what is wrong.
    fn chunk_len_of(&self, disk: DiskId, index: u64) -> Result<usize> {
        let d = self.disks.get(&disk.0).ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "{disk} is not in the point being written for VM {}",
                self.vm
            ))
        })?;
        if index >= d.root.chunk_count() {
            return Err(StoreError::InvalidArgument(format!(
                "chunk {index} is past the end of {disk} of VM {} ({} chunks)",
                self.vm,
                d.root.chunk_count()
            )));
        }
        Ok(d.root.chunk_len(index))
    }

    /// The page and slot of chunk `index` of `disk` (a disk of this writer), and its entry as
    /// this writer has it now (the page is loaded if needed).
    async fn current_entry(
        &mut self,
        disk: DiskId,
        index: u64,
    ) -> Result<(usize, usize, Option<Entry>)> {
        let per = self
            .disks
            .get(&disk.0)
            .map_or(1, |d| u64::from(d.root.page_entries));
        let (page, slot) = ((index / per) as usize, (index % per) as usize);
        self.load_page(disk.0, page).await?;
        let entry = self
            .disks
            .get(&disk.0)
            .and_then(|d| d.loaded.get(&page))
            .and_then(|p| p.get(slot).copied());
        Ok((page, slot, entry))
    }

    async fn load_page(&mut self, disk: u32, page: usize) -> Result<()> {
        let Some(d) = self.disks.get(&disk) else {
            return Ok(());
        };
        if d.loaded.contains_key(&page) {
            return Ok(());
        }
        let id = d.root.pages[page];
        let want = d.root.entries_in_page(page);
        let entries = match self.pending_pages.get(&id) {
            Some(bytes) => crate::format::decode_page(bytes)
                .map_err(|p| StoreError::corrupt(page_key(&id), p))?,
            None => self.store.get_page(&id).await?,
        };
        if entries.len() != want {
            return Err(StoreError::corrupt(
                page_key(&id),
                FormatError::Invalid {
                    field: "page entry count (for its disk)",
                    value: entries.len().to_string(),
                },
            ));
        }
        if let Some(d) = self.disks.get_mut(&disk) {
            d.loaded.insert(page, entries);
        }
        Ok(())
    }

    /// Stores a content-addressed object unless present; an existing object older than this
    /// writer is rewritten (same bytes) so that its age protects it from GC (crate doc).
    async fn put_addressed(
        &self,
        key: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<u64>> {
        match self.store.backend.head(key).await? {
            Some(info) if info.last_modified >= self.fresh_since() => Ok(None),
            Some(_) => {
                let body = make();
                self.store
                    .backend
                    .put(key, Bytes::from(body), PutMode::Overwrite)
                    .await?;
                Ok(None)
            }
            None => {
                let body = make();
                let len = body.len() as u64;
                match self
                    .store
                    .backend
                    .put(key, Bytes::from(body), PutMode::Create)
                    .await?
                {
                    PutOutcome::Written => Ok(Some(len)),
                    PutOutcome::AlreadyExists => Ok(None),
                }
            }
        }
    }

    async fn store_chunk(&mut self, id: &ObjectId, data: &[u8]) -> Result<()> {
        let level = self.store.config.zstd_level;
        let key = chunk_key(id);
        if let Some(n) = self
            .put_addressed(&key, || encode_chunk(data, id, level))
            .await?
        {
            self.new_chunks += 1;
            self.new_bytes += n;
        }
        Ok(())
    }

    /// Stores the changed index pages, the roots, and last the point record (create-only).
    pub async fn commit(self, meta: PointMeta) -> Result<PointRecord> {
        self.finish(meta, None).await
    }

    /// Commits this writer as the stored form of the journal-backed point `replaces` (same
    /// journal position, kind and origin): its record is overwritten by one that names the
    /// roots just written. Readers of either record read the same bytes. Refused if `replaces`
    /// is not journal-backed any more (a stored point is never replaced).
    pub async fn commit_stored(self, replaces: &PointRecord) -> Result<PointRecord> {
        let meta = PointMeta {
            seq: replaces.seq(),
            epoch: replaces.epoch(),
            kind: replaces.checkpoint_kind().ok_or_else(|| {
                StoreError::InvalidArgument(format!("point {} has no known kind", replaces.id))
            })?,
            time: replaces.time(),
            disks_total: Some(replaces.disks_total),
            origin: replaces.origin,
            copy_end: replaces.copy_end.map(Seq),
        };
        self.finish(meta, Some(replaces)).await
    }

    async fn finish(
        mut self,
        meta: PointMeta,
        replaces: Option<&PointRecord>,
    ) -> Result<PointRecord> {
        self.refresh_lease_if_due().await?;
        let id = point_id(meta.seq, meta.kind);
        // 1. Index pages (chunks were stored by set_chunk).
        let mut pages: HashMap<ObjectId, Vec<u8>> = std::mem::take(&mut self.pending_pages);
        for d in self.disks.values_mut() {
            for p in d.dirty.drain() {
                if let Some(entries) = d.loaded.get(&p) {
                    let bytes = encode_page(entries);
                    let pid = ObjectId::of(&bytes);
                    d.root.pages[p] = pid;
                    pages.insert(pid, bytes);
                }
            }
        }
        let used: HashSet<ObjectId> = self
            .disks
            .values()
            .flat_map(|d| d.root.pages.iter().copied())
            .collect();
        for (pid, bytes) in pages {
            if used.contains(&pid) {
                self.put_addressed(&page_key(&pid), || bytes).await?;
            }
        }
        // 2. Roots.
        let mut disks = Vec::new();
        for (n, d) in &self.disks {
            let bytes = encode_root(&d.root);
            let rid = ObjectId::of(&bytes);
            self.put_addressed(&root_key(&rid), || bytes).await?;
            disks.push(PointDisk {
                disk: *n,
                root: rid,
                size: d.root.disk_size,
            });
        }
        // 3. The record, last: create-only, so a point is never replaced.
        let rec = PointRecord {
            format: POINT_FORMAT.to_string(),
            version: 1,
            id: id.clone(),
            vm: self.vm.to_string(),
            time_ns: to_ns(meta.time),
            kind: meta.kind.to_string(),
            seq: meta.seq.0,
            epoch: meta.epoch.0,
            disks_total: meta.disks_total.unwrap_or(disks.len() as u32),
            disks,
            new_chunks: self.new_chunks,
            new_bytes: self.new_bytes,
            base: None,
            origin: meta.origin,
            cut_ns: replaces.map_or_else(|| to_ns(SystemTime::now()), |r| r.cut_ns),
            copy_end: meta.copy_end.map(|s| s.0),
        };
        let body = serde_json::to_vec_pretty(&rec)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let key = point_key(&self.vm, &id);
        let mode = match replaces {
            None => PutMode::Create,
            Some(r) => {
                // Only a journal-backed record, still there, is replaced.
                let now = self.store.get_point(&self.vm, &r.id).await?;
                if now.base.is_none() || now.id != id {
                    return Err(StoreError::PointExists {
                        vm: self.vm.clone(),
                        id,
                    });
                }
                PutMode::Overwrite
            }
        };
        match self
            .store
            .backend
            .put(&key, Bytes::from(body), mode)
            .await?
        {
            PutOutcome::Written => {}
            PutOutcome::AlreadyExists => {
                return Err(StoreError::PointExists {
                    vm: self.vm.clone(),
                    id,
                })
            }
        }
        self.store.backend.delete(&lease_key(&self.vm)).await?;
        Ok(rec)
    }

    /// Gives up the point: releases the lease (objects already stored are left to GC).
    pub async fn abort(self) -> Result<()> {
        self.store.backend.delete(&lease_key(&self.vm)).await
    }
}
