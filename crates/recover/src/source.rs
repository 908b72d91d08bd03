//! Where the bytes of non-local chunks come from: [`PointSource`], one disk of a
//! [`lifeboat_process::PointInTime`] in the region store; and the small runtime that runs the
//! store's async reads for the device's synchronous NBD calls.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use lifeboat_process::{open_point, state_at, PointInTime, Target};
use lifeboat_store::{DiskReader, Entry, Store, StoreError};
use lifeboat_types::{DiskId, Seq, VmId};

use crate::error::RecoverError;

/// One disk of a recovery point (stored or journal-backed) or of any point in time of the CDP
/// window: the base point's chunks through a [`DiskReader`] (index pages cached, a small LRU of
/// decoded chunks for guest reads), and the chunks the journal changed since the base, already
/// materialized by [`lifeboat_process::state_at`]. Every byte is verified (BLAKE3) by the
/// store before it is returned.
#[derive(Debug)]
pub struct PointSource {
    store: Store,
    vm: VmId,
    disk: DiskId,
    seq: Seq,
    reader: DiskReader,
    /// This disk's chunks changed by the journal since the base.
    overlay: HashMap<u64, Arc<Vec<u8>>>,
}

impl PointSource {
    /// Disk `disk` of `pit` (from [`lifeboat_process::open_point`] or
    /// [`lifeboat_process::state_at`]).
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
        let overlay = pit
            .overlay
            .iter()
            .filter(|((d, _), _)| *d == disk)
            .map(|((_, i), data)| (*i, Arc::new(data.clone())))
            .collect::<HashMap<_, _>>();
        let src = PointSource {
            store: store.clone(),
            vm,
            disk,
            seq: pit.seq,
            reader,
            overlay,
        };
        for (i, data) in &src.overlay {
            if *i >= src.chunk_count() || data.len() != src.chunk_len(*i) {
                return Err(src.bad(format!(
                    "materialized chunk {i} ({} bytes) does not fit the disk",
                    data.len()
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

    /// Whether chunk `i` is all zeroes (from its index entry; no chunk is read).
    pub async fn is_zero(&self, i: u64) -> Result<bool, RecoverError> {
        if let Some(c) = self.overlay.get(&i) {
            return Ok(c.iter().all(|&b| b == 0));
        }
        let e = self
            .reader
            .entry(i)
            .await
            .map_err(|e| self.chunk_err(i, e))?;
        Ok(e == Entry::Zero)
    }

    /// Chunk `i` for a guest read or write: through the reader's LRU of decoded chunks.
    pub async fn chunk(&self, i: u64) -> Result<Arc<Vec<u8>>, RecoverError> {
        if let Some(c) = self.overlay.get(&i) {
            return Ok(c.clone());
        }
        let data = self
            .reader
            .read_chunk(i)
            .await
            .map_err(|e| self.chunk_err(i, e))?;
        self.check_len(i, data.len())?;
        Ok(data)
    }

    /// Chunk `i` for hydration: `None` for a zero chunk (nothing is read), else its bytes,
    /// bypassing the LRU (one pass over the disk would only evict what guest reads use).
    pub async fn chunk_for_copy(&self, i: u64) -> Result<Option<Arc<Vec<u8>>>, RecoverError> {
        if let Some(c) = self.overlay.get(&i) {
            return Ok(if c.iter().all(|&b| b == 0) {
                None
            } else {
                Some(c.clone())
            });
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
