//! [`PointWriter`]: builds a recovery point from a previous one by changing chunks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

use crate::backend::{PutMode, PutOutcome};
use crate::bulk::ChunkBuf;
use crate::error::{FormatError, Result, StoreError};
use crate::format::{
    chunk_header, chunk_key, compress_chunk, encode_chunk, encode_chunk_parts, encode_page,
    encode_root, is_zero, page_key, root_key, Entry, LeaseRecord, ObjectId, PointDisk, PointRecord,
    Root, LEASE_FORMAT, POINT_FORMAT,
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

/// A chunk made ready to store, away from the writer: zero-checked, hashed and (when worth it)
/// compressed; see [`PointWriter::set_prepared`]. Preparing is the CPU work of storing a chunk
/// (BLAKE3, zstd): do it on blocking threads, several chunks in parallel.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    len: usize,
    entry: Entry,
    /// What the writer has to store for it.
    payload: Payload,
}

/// What storing a [`PreparedChunk`] takes.
#[derive(Debug, Clone)]
enum Payload {
    /// Nothing (a zero chunk).
    None,
    /// Putting its object, as parts to concatenate.
    Object(Vec<Bytes>),
    /// Nothing: a [`crate::ChunkStager`] already wrote it, under this key, with this outcome.
    Staged(String, Stored),
}

impl PreparedChunk {
    /// Prepares the chunk `data` for a store whose chunks are compressed at `zstd_level`
    /// ([`crate::StoreConfig::zstd_level`]). An uncompressed chunk's object shares `data`'s
    /// buffer (no copy).
    pub fn new(data: Bytes, zstd_level: i32) -> Self {
        let len = data.len();
        if is_zero(&data) {
            return PreparedChunk::zero(len);
        }
        let id = ObjectId::of(&data);
        PreparedChunk {
            len,
            entry: Entry::Chunk(id),
            payload: Payload::Object(encode_chunk_parts(data, &id, zstd_level).to_vec()),
        }
    }

    /// [`PreparedChunk::new`] from a [`ChunkBuf`]: an uncompressed chunk's object is the
    /// buffer itself, header written in place.
    pub fn from_buf(buf: ChunkBuf, zstd_level: i32) -> Self {
        let len = buf.len();
        if is_zero(buf.plain()) {
            return PreparedChunk::zero(len);
        }
        let id = ObjectId::of(buf.plain());
        let object = match compress_chunk(buf.plain(), zstd_level) {
            Some(c) => vec![
                Bytes::copy_from_slice(&chunk_header(len, true, c.len(), &id)),
                Bytes::from(c),
            ],
            None => vec![buf.into_object(&chunk_header(len, false, len, &id))],
        };
        PreparedChunk {
            len,
            entry: Entry::Chunk(id),
            payload: Payload::Object(object),
        }
    }

    /// A chunk a [`crate::ChunkStager`] already wrote into the store as `key`.
    pub(crate) fn staged(len: usize, id: ObjectId, key: String, stored: Stored) -> Self {
        PreparedChunk {
            len,
            entry: Entry::Chunk(id),
            payload: Payload::Staged(key, stored),
        }
    }

    /// A chunk of `len` bytes known to be all zeroes (say, a hole of a sparse image): nothing
    /// to read, hash or store.
    pub fn zero(len: usize) -> Self {
        PreparedChunk {
            len,
            entry: Entry::Zero,
            payload: Payload::None,
        }
    }

    /// Its plain length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, for a chunk of a disk).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it is all zeroes (stored as a "zero" entry, no object).
    pub fn is_zero(&self) -> bool {
        self.entry == Entry::Zero
    }
}

/// What a put of a content-addressed object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Created, this many bytes.
    New(u64),
    /// It was there, older than the writer: written again (for its age; see the crate doc).
    Rewritten,
    /// It was there already, fresh (or another writer created it meanwhile).
    Found,
}

/// Waits for a background sync.
async fn join_sync(task: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    task.await
        .map_err(|e| StoreError::InvalidArgument(format!("chunk sync task: {e}")))?
}

/// Batches of chunk objects whose sync ([`crate::Backend::sync`]) may run at once behind
/// [`PointWriter::set_prepared`]; beyond that it waits for the oldest. This bounds what is
/// written but not yet durable (a local directory's dirty page cache) to a few batches.
const SYNCS_IN_FLIGHT: usize = 2;

/// Chunk objects synced together: [`PointWriter::set_prepared`] starts a sync once this many
/// are put (128 MiB at 4 MiB chunks; a local directory's sync is one `syncfs`, so fewer,
/// larger syncs flush the disk's cache less often: bench/RESULTS.md, "Initial replication,
/// fifth measurement"). At most [`SYNCS_IN_FLIGHT`] + 1 such groups are not durable yet.
const SYNC_KEYS: usize = 32;

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
    /// Background syncs of chunk objects put by [`PointWriter::set_prepared`], oldest first;
    /// all done before the first page is written.
    syncing: VecDeque<tokio::task::JoinHandle<Result<()>>>,
    /// Chunk objects this point uses that were found already stored by another writer, which
    /// may not have synced them: synced before the first page is written.
    found: Vec<String>,
    /// Keys put by [`PointWriter::set_prepared`] whose sync has not started yet.
    unsynced: Vec<String>,
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
            syncing: VecDeque::new(),
            found: Vec::new(),
            unsynced: Vec::new(),
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

    /// A [`crate::ChunkStager`] for this writer when the store is a local directory: chunks
    /// of an image streamed straight into the store, then given to
    /// [`PointWriter::set_prepared`] like any prepared chunk.
    pub fn stager(&self) -> Option<crate::ChunkStager> {
        let root = self.store.backend.local_dir()?;
        Some(crate::ChunkStager::new(
            root.to_path_buf(),
            self.store.config().zstd_level,
            self.fresh_since(),
        ))
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
        self.check_chunk_len(disk, index, data.len())?;
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

    /// [`PointWriter::set_chunk`] for several chunks of one disk at once: they are prepared
    /// (hashed, compressed) in parallel on the blocking pool, then stored as
    /// [`PointWriter::set_prepared`] does. Returns how many chunks changed.
    pub async fn set_chunks(&mut self, disk: DiskId, chunks: &[(u64, &[u8])]) -> Result<usize> {
        for (index, data) in chunks {
            self.check_chunk_len(disk, *index, data.len())?;
        }
        let level = self.store.config.zstd_level;
        let prepared = futures::future::try_join_all(chunks.iter().map(|(index, data)| {
            let (index, data) = (*index, Bytes::copy_from_slice(data));
            async move {
                tokio::task::spawn_blocking(move || (index, PreparedChunk::new(data, level)))
                    .await
                    .map_err(|e| StoreError::InvalidArgument(format!("chunk hashing task: {e}")))
            }
        }))
        .await?;
        self.set_prepared(disk, prepared).await
    }

    /// Sets chunks of `disk` to prepared chunks (`(index, chunk)`; each exactly its chunk's
    /// length). Zero chunks become zero entries; the objects of the others are put
    /// concurrently unless the store has them, **without waiting for them to be durable**: a
    /// background task syncs them, [`SYNC_KEYS`] at a time ([`crate::Backend::sync`]; a local
    /// directory syncs them while the caller prepares the next batches), at most a few such
    /// syncs at once (this waits for the oldest beyond that), and commit syncs the rest and
    /// waits for every sync before it writes the first index page. So the point record, written last, still only ever names
    /// durable objects. Returns how many chunks changed.
    pub async fn set_prepared(
        &mut self,
        disk: DiskId,
        chunks: Vec<(u64, PreparedChunk)>,
    ) -> Result<usize> {
        self.refresh_lease_if_due().await?;
        for (index, c) in &chunks {
            self.check_chunk_len(disk, *index, c.len)?;
        }
        // Entries and the chunks that change.
        let mut changes = Vec::new();
        for (index, c) in chunks {
            let (page, slot, current) = self.current_entry(disk, index).await?;
            if current != Some(c.entry) {
                changes.push((page, slot, c));
            }
        }
        let this = &*self;
        let stored = futures::future::try_join_all(changes.iter().filter_map(|(_, _, c)| {
            let (Entry::Chunk(id), payload) = (c.entry, &c.payload) else {
                return None;
            };
            let object = match payload {
                Payload::None => return None,
                Payload::Object(object) => object,
                Payload::Staged(key, stored) => {
                    let done = Ok::<_, StoreError>((key.clone(), *stored));
                    return Some(futures::future::Either::Left(std::future::ready(done)));
                }
            };
            Some(futures::future::Either::Right(async move {
                let key = chunk_key(&id);
                let n = this.put_addressed_unsynced(&key, object).await?;
                Ok((key, n))
            }))
        }))
        .await?;
        let mut keys = Vec::with_capacity(stored.len());
        for (key, stored) in stored {
            if let Stored::New(n) = stored {
                self.new_chunks += 1;
                self.new_bytes += n;
            }
            // Synced whoever wrote it.
            keys.push(key);
        }
        self.sync_later(keys).await?;
        let changed = changes.len();
        if let Some(d) = self.disks.get_mut(&disk.0) {
            for (page, slot, c) in changes {
                if let Some(e) = d.loaded.get_mut(&page).and_then(|p| p.get_mut(slot)) {
                    *e = c.entry;
                }
                d.dirty.insert(page);
            }
        }
        Ok(changed)
    }

    /// Adds `keys` to the next sync, which starts in the background once [`SYNC_KEYS`] are
    /// waiting; waits for the oldest syncs beyond [`SYNCS_IN_FLIGHT`].
    async fn sync_later(&mut self, keys: Vec<String>) -> Result<()> {
        self.unsynced.extend(keys);
        if self.unsynced.len() < SYNC_KEYS {
            return Ok(());
        }
        let keys = std::mem::take(&mut self.unsynced);
        if !keys.is_empty() {
            let backend = self.store.backend.clone();
            self.syncing
                .push_back(tokio::spawn(async move { backend.sync(&keys).await }));
        }
        while self.syncing.len() > SYNCS_IN_FLIGHT {
            if let Some(oldest) = self.syncing.pop_front() {
                join_sync(oldest).await?;
            }
        }
        Ok(())
    }

    /// Waits until every chunk object this point uses is durable: the keys not synced yet, the
    /// background syncs, and the objects found already stored.
    async fn synced(&mut self) -> Result<()> {
        let rest = std::mem::take(&mut self.unsynced);
        if !rest.is_empty() {
            let backend = self.store.backend.clone();
            self.syncing
                .push_back(tokio::spawn(async move { backend.sync(&rest).await }));
        }
        while let Some(oldest) = self.syncing.pop_front() {
            join_sync(oldest).await?;
        }
        let found = std::mem::take(&mut self.found);
        self.store.backend.sync(&found).await
    }

    /// Refuses a chunk of the wrong length for its place.
    fn check_chunk_len(&self, disk: DiskId, index: u64, len: usize) -> Result<()> {
        let want = self.chunk_len_of(disk, index)?;
        if len != want {
            return Err(StoreError::InvalidArgument(format!(
                "chunk {index} of {disk} of VM {} is {want} bytes, not {len}",
                self.vm
            )));
        }
        Ok(())
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

    /// [`PointWriter::put_addressed`] without waiting for durability
    /// ([`crate::Backend::put_unsynced`]): the caller syncs `key` afterwards, whether this
    /// wrote it or found it.
    async fn put_addressed_unsynced(&self, key: &str, object: &[Bytes]) -> Result<Stored> {
        let backend = &self.store.backend;
        match backend.head(key).await? {
            Some(info) if info.last_modified >= self.fresh_since() => Ok(Stored::Found),
            Some(_) => {
                backend
                    .put_unsynced(key, object.to_vec(), PutMode::Overwrite)
                    .await?;
                Ok(Stored::Rewritten)
            }
            None => {
                let len = object.iter().map(|p| p.len() as u64).sum();
                match backend
                    .put_unsynced(key, object.to_vec(), PutMode::Create)
                    .await?
                {
                    PutOutcome::Written => Ok(Stored::New(len)),
                    PutOutcome::AlreadyExists => Ok(Stored::Found),
                }
            }
        }
    }

    /// Stores a content-addressed object unless present; an existing object older than this
    /// writer is rewritten (same bytes) so that its age protects it from GC (crate doc).
    async fn put_addressed(&self, key: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Stored> {
        match self.store.backend.head(key).await? {
            Some(info) if info.last_modified >= self.fresh_since() => Ok(Stored::Found),
            Some(_) => {
                let body = make();
                self.store
                    .backend
                    .put(key, Bytes::from(body), PutMode::Overwrite)
                    .await?;
                Ok(Stored::Rewritten)
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
                    PutOutcome::Written => Ok(Stored::New(len)),
                    PutOutcome::AlreadyExists => Ok(Stored::Found),
                }
            }
        }
    }

    async fn store_chunk(&mut self, id: &ObjectId, data: &[u8]) -> Result<()> {
        let level = self.store.config.zstd_level;
        let key = chunk_key(id);
        match self
            .put_addressed(&key, || encode_chunk(data, id, level))
            .await?
        {
            Stored::New(n) => {
                self.new_chunks += 1;
                self.new_bytes += n;
            }
            Stored::Rewritten => {}
            // Maybe another writer's chunk, put without syncing yet.
            Stored::Found => self.found.push(key),
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
        // 0. Every chunk object the point uses is durable (set_prepared's are synced in the
        // background; chunks found stored may be another writer's, not synced yet).
        self.synced().await?;
        // 1. Index pages (chunks were stored by set_chunk and set_prepared).
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
