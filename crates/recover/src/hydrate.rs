//! Background hydration: every chunk that is not local is copied from the point into the
//! target image, beside guest I/O, with progress (see the crate doc, "Hydration").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::disk::RecoveryDisk;
use crate::error::RecoverError;

/// How far a disk is hydrated (from [`RecoveryDisk::progress`] or
/// [`RecoveryDisk::subscribe`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Chunks of the disk.
    pub chunks_total: u64,
    /// Chunks in the target image (hydrated or written by the guest): "chunks done".
    pub chunks_local: u64,
    /// Disk size in bytes.
    pub bytes_total: u64,
    /// Bytes of the disk in local chunks.
    pub bytes_local: u64,
    /// Chunks the current (or last) hydration run copied from the point.
    pub chunks_copied: u64,
    /// Bytes it copied (data chunks only).
    pub bytes_copied: u64,
    /// Zero chunks it made local without reading or writing data (the image stays sparse).
    pub chunks_zero: u64,
    /// Bytes of the disk it made local (copied and zero chunks): over `elapsed`, the
    /// hydration rate to compare with a plain copy of the image.
    pub bytes_hydrated: u64,
    /// A hydration run is going on.
    pub running: bool,
    /// How long the current (or last) run has taken.
    pub elapsed: Duration,
    /// Why the last run stopped, if it failed.
    pub error: Option<String>,
}

impl Progress {
    /// Every chunk is local: the disk no longer needs the store.
    pub fn is_hydrated(&self) -> bool {
        self.chunks_local == self.chunks_total
    }

    /// Local bytes in percent of the disk.
    pub fn percent(&self) -> f64 {
        if self.bytes_total == 0 {
            return 100.0;
        }
        self.bytes_local as f64 * 100.0 / self.bytes_total as f64
    }

    /// Disk bytes made local per second by the current (or last) run.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.bytes_hydrated as f64 / s
        } else {
            0.0
        }
    }
}

/// Counters of the current (or last) hydration run.
#[derive(Debug, Default)]
pub(crate) struct HydStats {
    started: Option<Instant>,
    elapsed: Duration,
    running: bool,
    chunks_copied: u64,
    bytes_copied: u64,
    chunks_zero: u64,
    bytes_hydrated: u64,
    error: Option<String>,
}

/// Tunables of a hydration run.
#[derive(Debug, Clone)]
pub struct HydrateConfig {
    /// Chunks in flight at once, each on its own worker thread (read from the store,
    /// verified, written): store reads, hashing and image writes overlap. Default 4.
    pub in_flight: usize,
    /// A checkpoint (journal and image synced, state written) at least this often, so a
    /// restart redoes at most this much copying. Default 2 s.
    pub checkpoint_every: Duration,
    /// Bytes of data copied per second at most (leave I/O to the guest). Default: no limit.
    pub max_bytes_per_sec: Option<u64>,
}

impl Default for HydrateConfig {
    fn default() -> Self {
        HydrateConfig {
            in_flight: 4,
            checkpoint_every: Duration::from_secs(2),
            max_bytes_per_sec: None,
        }
    }
}

/// A hydration running on its own thread ([`RecoveryDisk::spawn_hydration`]).
pub struct Hydration {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Progress, RecoverError>>>,
    image: std::path::PathBuf,
}

impl Hydration {
    /// Asks the run to stop after the chunks in flight (it checkpoints first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the run to end.
    pub fn join(mut self) -> Result<Progress, RecoverError> {
        self.wait()
    }

    fn wait(&mut self) -> Result<Progress, RecoverError> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| RecoverError::Unavailable {
                path: self.image.clone(),
                reason: "the hydration thread panicked".into(),
            })?,
            None => Err(RecoverError::Unavailable {
                path: self.image.clone(),
                reason: "the hydration was already joined".into(),
            }),
        }
    }
}

impl Drop for Hydration {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            let _ = self.wait();
        }
    }
}

impl RecoveryDisk {
    /// The hydration progress now.
    pub fn progress(&self) -> Progress {
        let s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        Progress {
            chunks_total: self.chunk_count(),
            chunks_local: self.local_chunks(),
            bytes_total: self.header.disk_size,
            bytes_local: self.local_bytes(),
            chunks_copied: s.chunks_copied,
            bytes_copied: s.bytes_copied,
            chunks_zero: s.chunks_zero,
            bytes_hydrated: s.bytes_hydrated,
            running: s.running,
            elapsed: match (s.running, s.started) {
                (true, Some(t)) => t.elapsed(),
                _ => s.elapsed,
            },
            error: s.error.clone(),
        }
    }

    /// A watch of the progress: updated after every chunk made local (by hydration or by a
    /// guest write) and when a run starts or ends.
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress_tx.subscribe()
    }

    pub(crate) fn publish(&self) {
        self.progress_tx.send_replace(self.progress());
    }

    fn stats(&self, f: impl FnOnce(&mut HydStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Hydrates on the calling thread until every chunk is local or `stop` is set, then
    /// checkpoints; once hydrated, the point is released (the store is no longer used).
    /// Returns the final progress. One run at a time per disk.
    pub fn hydrate(
        &self,
        cfg: &HydrateConfig,
        stop: &AtomicBool,
    ) -> Result<Progress, RecoverError> {
        if self.hydrating.swap(true, Ordering::AcqRel) {
            return Err(RecoverError::Unavailable {
                path: self.image_path().to_path_buf(),
                reason: "a hydration of this disk is already running".into(),
            });
        }
        self.stats(|s| {
            *s = HydStats {
                started: Some(Instant::now()),
                running: true,
                ..HydStats::default()
            }
        });
        self.publish();
        let r = self.hydrate_inner(cfg, stop);
        let cp = self.checkpoint();
        if self.is_hydrated() {
            self.release_source();
        }
        let r = r.and(cp);
        self.stats(|s| {
            s.running = false;
            s.elapsed = s.started.map(|t| t.elapsed()).unwrap_or_default();
            if let Err(e) = &r {
                s.error = Some(error_chain(e));
            }
        });
        self.hydrating.store(false, Ordering::Release);
        self.publish();
        r.map(|_| self.progress())
    }

    /// Starts [`RecoveryDisk::hydrate`] on a new thread.
    pub fn spawn_hydration(
        self: &Arc<Self>,
        cfg: HydrateConfig,
    ) -> Result<Hydration, RecoverError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("hydrate-{}", self.disk_id()))
            .spawn(move || d.hydrate(&cfg, &s))
            .map_err(|e| RecoverError::Unavailable {
                path: self.image_path().to_path_buf(),
                reason: format!("cannot start the hydration thread: {e}"),
            })?;
        Ok(Hydration {
            stop,
            thread: Some(thread),
            image: self.image_path().to_path_buf(),
        })
    }

    fn hydrate_inner(&self, cfg: &HydrateConfig, stop: &AtomicBool) -> Result<(), RecoverError> {
        let n = self.chunk_count();
        if self.is_hydrated() {
            return Ok(());
        }
        let src = self.source()?;
        let start = Instant::now();
        let next = AtomicU64::new(0);
        let copied = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let last_checkpoint = Mutex::new(Instant::now());
        // One chunk at a time per worker: read (store), verify, write, mark. Workers take
        // chunk indices in order from a shared counter, so the disk is walked front to back.
        let worker = || -> Result<(), RecoverError> {
            loop {
                if stop.load(Ordering::Acquire) || failed.load(Ordering::Acquire) {
                    return Ok(());
                }
                let i = next.fetch_add(1, Ordering::AcqRel);
                if i >= n {
                    return Ok(());
                }
                if self.bits.get(i) {
                    continue;
                }
                let s = src.clone();
                let step = self
                    .io
                    .run(async move { s.chunk_for_copy(i).await })
                    .ok_or_else(|| self.gone())
                    .and_then(|r| r)
                    .and_then(|data| {
                        self.install(i, data.as_deref().map(|d| d.as_slice()))?;
                        Ok(data.map_or(0, |d| d.len() as u64))
                    });
                let bytes = match step {
                    Ok(b) => b,
                    Err(e) => {
                        failed.store(true, Ordering::Release);
                        return Err(e);
                    }
                };
                self.publish();
                if let Ok(mut t) = last_checkpoint.try_lock() {
                    if t.elapsed() >= cfg.checkpoint_every {
                        self.checkpoint()?;
                        *t = Instant::now();
                    }
                }
                let total = copied.fetch_add(bytes, Ordering::AcqRel) + bytes;
                if let Some(rate) = cfg.max_bytes_per_sec.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(total as f64 / rate as f64);
                    let ahead = due.saturating_sub(start.elapsed());
                    if !ahead.is_zero() && !stop.load(Ordering::Acquire) {
                        std::thread::sleep(ahead.min(Duration::from_millis(200)));
                    }
                }
            }
        };
        std::thread::scope(|sc| {
            let mut handles = Vec::new();
            let mut first_err = None;
            for k in 0..cfg.in_flight.max(1) {
                match std::thread::Builder::new()
                    .name(format!("hydrate-{}-{k}", self.disk_id()))
                    .spawn_scoped(sc, worker)
                {
                    Ok(h) => handles.push(h),
                    Err(e) if handles.is_empty() => {
                        first_err = Some(RecoverError::Unavailable {
                            path: self.image_path().to_path_buf(),
                            reason: format!("cannot start a hydration thread: {e}"),
                        });
                    }
                    // Fewer workers than asked for is only slower.
                    Err(_) => break,
                }
            }
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(RecoverError::Unavailable {
                        path: self.image_path().to_path_buf(),
                        reason: "a hydration thread panicked".into(),
                    })
                });
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }

    fn gone(&self) -> RecoverError {
        RecoverError::Unavailable {
            path: self.image_path().to_path_buf(),
            reason: "the store I/O runtime stopped".into(),
        }
    }

    /// Makes chunk `i` local from the point's bytes (`None`: a zero chunk, punched), unless
    /// it became local meanwhile (a guest write): check and mark under the chunk's lock, so a
    /// guest write is never overwritten.
    fn install(&self, i: u64, data: Option<&[u8]>) -> Result<(), RecoverError> {
        let Some(_g) = self.lock_chunk(i) else {
            return Ok(());
        };
        if self.bits.get(i) {
            return Ok(());
        }
        let off = i * u64::from(self.header.chunk_size);
        let len = self.chunk_len(i);
        let res = match data {
            Some(d) => self.image.write_at(off, d),
            // Zero in the point: punch, so the chunk is zero whatever the image held.
            None => self.zero_range(off, len, true),
        };
        res.map_err(|source| RecoverError::Image {
            path: self.image_path().to_path_buf(),
            source,
        })?;
        self.mark(i);
        self.stats(|s| {
            match data {
                Some(d) => {
                    s.chunks_copied += 1;
                    s.bytes_copied += d.len() as u64;
                }
                None => s.chunks_zero += 1,
            }
            s.bytes_hydrated += len;
        });
        Ok(())
    }
}

/// An error with its sources, for the progress.
fn error_chain(e: &RecoverError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
