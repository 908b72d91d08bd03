//! Where the bytes of non-local chunks come from: [`PointSource`], one disk of a
//! [`lifeboat_process::PointInTime`] in the region store; and the small runtime that runs the
//! store's async reads for the device's synchronous NBD calls.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use lifeboat_process::{open_point, state_at, ChunkChange, PointInTime, Target};
use lifeboat_store::{DiskReader, Entry, Store, StoreError};
use lifeboat_types::{DiskId, Seq, VmId};

use crate::error::RecoverError;

/// One disk of a recovery point (stored or journal-backed) or of any point in time of the CDP
/// window: the base point's chunks through a [`DiskReader`] (index pages cached, a small LRU of
/// decoded chunks for guest reads), and the chunks the journal changed since the base, built
/// on demand by the [`PointInTime`] from the base's chunk and the stored journal segments (a
/// small LRU of them too, for guest reads). Every byte is verified (BLAKE3) by the store
/// before it is returned.
#[derive(Debug)]
pub struct PointSource {
    store: Store,
    vm: VmId,
    disk: DiskId,
    seq: Seq,
    reader: DiskReader,
    /// The point: its index of the journal since the base builds the changed chunks.
    pit: PointInTime,
    /// Changed chunks built for guest reads, the most recently used last.
    built: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    /// How many `built` keeps (the store's reader cache size).
    built_cap: usize,
}

impl PointSource {
    /// Disk `disk` of `pit` (from [`lifeboat_process::open_point`] or
    /// [`lifeboat_process::state_at`]). The source keeps (a clone of) `pit`: the journal
    /// segments it indexes must stay in the store while the disk is read, as its base must.
    pub async fn open(
        store: &Store,
        pit: &PointInTime,
        disk: DiskId,
    ) -> Result<PointSource, RecoverError> {
        let vm = VmId::new(pit.base.vm.clone()).map_err(|e| RecoverError::BadPoint {
            vm: pit.base.vm.clone(),
            seq: pit.seq,
            reason: e.to_string(),
        })?;
        let reader =
            store
                .disk_reader(&pit.base, disk)
                .await
                .map_err(|source| RecoverError::Point {
                    vm: vm.clone(),
                    seq: pit.seq,
                    disk,
                    source: Box::new(lifeboat_process::ProcessError::Store {
                        vm: vm.clone(),
                        source: Box::new(source),
                    }),
                })?;
        let src = PointSource {
            store: store.clone(),
            vm,
            disk,
            seq: pit.seq,
            reader,
            pit: pit.clone(),
            built: Mutex::new(VecDeque::new()),
            built_cap: store.config().reader_cache_chunks.max(1),
        };
        if let Some(i) = src.pit.touched_on(disk).next_back() {
            if i >= src.chunk_count() {
                return Err(src.bad(format!(
                    "the journal since the base touches chunk {i}, past the disk's {} chunks",
                    src.chunk_count()
                )));
            }
        }
        Ok(src)
    }

    /// Opens the recovery point of `vm` at journal position `seq` again (a restart): the point
    /// with that position if the store still lists one (stored or journal-backed), else the
    /// state of the CDP window at that record.
    pub async fn reopen(
        store: &Store,
        vm: &VmId,
        seq: Seq,
        disk: DiskId,
    ) -> Result<PointSource, RecoverError> {
        let perr = |source| RecoverError::Point {
            vm: vm.clone(),
            seq,
            disk,
            source: Box::new(source),
        };
        let points = store
            .list_points(vm)
            .await
            .map_err(|e| store_err(vm, e))
            .map_err(perr)?;
        let pit = match points.iter().find(|p| p.seq() == seq) {
            Some(p) => open_point(store, vm, p).await.map_err(perr)?,
            None => {
                let pit = state_at(store, vm, Target::Seq(seq)).await.map_err(perr)?;
                if pit.seq != seq || pit.after_last {
                    return Err(RecoverError::BadPoint {
                        vm: vm.to_string(),
                        seq,
                        reason: format!(
                            "the region store no longer holds this position (its journal ends at record {}): keep the point until the disk is hydrated",
                            pit.seq
                        ),
                    });
                }
                pit
            }
        };
        PointSource::open(store, &pit, disk).await
    }

    /// The VM.
    pub fn vm(&self) -> &VmId {
        &self.vm
    }

    /// The disk.
    pub fn disk(&self) -> DiskId {
        self.disk
    }

    /// The point's journal position.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.reader.size()
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.reader.chunk_size()
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.reader.chunk_count()
    }

    /// Length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: u64) -> usize {
        let cs = u64::from(self.chunk_size());
        self.size().saturating_sub(i * cs).min(cs) as usize
    }

    fn bad(&self, reason: String) -> RecoverError {
        RecoverError::BadPoint {
            vm: self.vm.to_string(),
            seq: self.seq,
            reason,
        }
    }

    fn chunk_err(&self, index: u64, source: StoreError) -> RecoverError {
        RecoverError::Chunk {
            vm: self.vm.clone(),
            seq: self.seq,
            disk: self.disk,
            index,
            source: Box::new(source),
        }
    }

    /// A changed chunk `i` already built for a guest read.
    fn built(&self, i: u64) -> Option<Arc<Vec<u8>>> {
        let mut lru = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let at = lru.iter().position(|(k, _)| *k == i)?;
        let e = lru.remove(at)?;
        let data = e.1.clone();
        lru.push_back(e);
        Some(data)
    }

    /// Chunk `i`, which the journal changed since the base: built from the base's chunk and its
    /// records (kept for later guest reads if `keep`).
    async fn build(&self, i: u64, keep: bool) -> Result<Arc<Vec<u8>>, RecoverError> {
        if let Some(c) = self.built(i) {
            return Ok(c);
        }
        let data = self
            .pit
            .read_disk_chunk(&self.store, self.disk, i)
            .await
            .map_err(|e| RecoverError::BuiltChunk {
                vm: self.vm.clone(),
                seq: self.seq,
                disk: self.disk,
                index: i,
                source: Box::new(e),
            })?;
        self.check_len(i, data.len())?;
        let data = Arc::new(data);
        if keep {
            let mut lru = self.built.lock().unwrap_or_else(|p| p.into_inner());
            if !lru.iter().any(|(k, _)| *k == i) {
                if lru.len() >= self.built_cap {
                    lru.pop_front();
                }
                lru.push_back((i, data.clone()));
            }
        }
        Ok(data)
    }

    /// Whether chunk `i` is all zeroes, without reading it: from its index entry, or for a
    /// chunk the journal changed, from the journal (zeroed whole) or an already built copy.
    /// A changed chunk not known that way is called data (`false`), always a safe answer.
    pub async fn is_zero(&self, i: u64) -> Result<bool, RecoverError> {
        match self.pit.chunk_change(self.disk, i) {
            ChunkChange::Zeroed => return Ok(true),
            ChunkChange::Changed => {
                return Ok(self.built(i).is_some_and(|c| c.iter().all(|&b| b == 0)))
            }
            ChunkChange::Unchanged => {}
        }
        let e = self
            .reader
            .entry(i)
            .await
            .map_err(|e| self.chunk_err(i, e))?;
        Ok(e == Entry::Zero)
    }

    /// Chunk `i` for a guest read or write: through an LRU of decoded chunks (the reader's, or
    /// this source's for a chunk the journal changed).
    pub async fn chunk(&self, i: u64) -> Result<Arc<Vec<u8>>, RecoverError> {
        if self.pit.is_touched(self.disk, i) {
            return self.build(i, true).await;
        }
        let data = self
            .reader
            .read_chunk(i)
            .await
            .map_err(|e| self.chunk_err(i, e))?;
        self.check_len(i, data.len())?;
        Ok(data)
    }

    /// Chunk `i` for hydration: `None` for a zero chunk (nothing is read when the base's index
    /// or the journal says so), else its bytes, bypassing the LRUs (one pass over the disk
    /// would only evict what guest reads use).
    pub async fn chunk_for_copy(&self, i: u64) -> Result<Option<Arc<Vec<u8>>>, RecoverError> {
        match self.pit.chunk_change(self.disk, i) {
            ChunkChange::Zeroed => return Ok(None),
            ChunkChange::Changed => {
                let c = self.build(i, false).await?;
                return Ok(if c.iter().all(|&b| b == 0) {
                    None
                } else {
                    Some(c)
                });
            }
            ChunkChange::Unchanged => {}
        }
        match self
            .reader
            .entry(i)
            .await
            .map_err(|e| self.chunk_err(i, e))?
        {
            Entry::Zero => Ok(None),
            Entry::Chunk(id) => {
                let len = self.chunk_len(i);
                let data = self
                    .store
                    .get_chunk(&id, len)
                    .await
                    .map_err(|e| self.chunk_err(i, e))?;
                self.check_len(i, data.len())?;
                Ok(Some(Arc::new(data)))
            }
        }
    }

    fn check_len(&self, i: u64, len: usize) -> Result<(), RecoverError> {
        if len == self.chunk_len(i) {
            Ok(())
        } else {
            Err(self.bad(format!(
                "chunk {i} has {len} bytes, its place on the disk needs {}",
                self.chunk_len(i)
            )))
        }
    }
}

fn store_err(vm: &VmId, source: StoreError) -> lifeboat_process::ProcessError {
    lifeboat_process::ProcessError::Store {
        vm: vm.clone(),
        source: Box::new(source),
    }
}

/// The device's own tokio runtime (2 workers) for the store's async reads. NBD calls are
/// synchronous and run on the server's runtime threads (or the blocking pool), where no other
/// runtime may be entered: a read is spawned here and its result waited for on a plain
/// channel, which blocks only the calling thread and never this runtime's workers, so it
/// cannot deadlock whatever runtime the caller is on (current-thread included).
pub(crate) struct IoRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl IoRuntime {
    pub fn new() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lifeboat-recover-io")
            .enable_all()
            .build()?;
        Ok(IoRuntime { rt: Some(rt) })
    }

    /// Runs `fut` on this runtime and waits for its output; `None` if the runtime is shutting
    /// down or the task panicked.
    pub fn run<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.rt.as_ref()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let out = fut.await;
            let _ = tx.send(out);
        });
        rx.recv().ok()
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // Dropping a runtime inside another runtime's context panics; this never blocks.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
