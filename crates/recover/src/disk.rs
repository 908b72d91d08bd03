//! [`RecoveryDisk`]: a recovery point served from the region store, a local target image, a
//! chunk bitmap and a write journal (see the crate doc).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use lifeboat_disk::RawImage;
use lifeboat_journal::{read_records, Journal, Record};
use lifeboat_nbd::{BlockDevice, Extent, ZeroFlags};
use lifeboat_store::Store;
use lifeboat_types::{DiskId, RecordKind, Seq, VmId};
use tokio::sync::watch;

use crate::error::RecoverError;
use crate::hydrate::{HydStats, Progress};
use crate::source::{IoRuntime, PointSource};
use crate::state::{self, Bitmap, Header};

/// Where the recovery point comes from when a chunk is not local.
pub enum Source {
    /// Already opened (at failover: the chosen point was just read with
    /// [`PointSource::open`]).
    Opened(Box<PointSource>),
    /// Opened on first need with [`PointSource::reopen`] (a restart of a recovery): nothing
    /// is read from the store while every chunk asked for is local.
    Store {
        /// The region store.
        store: Store,
        /// The VM whose point it is.
        vm: VmId,
        /// The point's journal position.
        seq: Seq,
    },
    /// No store: only local chunks can be read (a hydrated disk needs nothing else); a
    /// non-local chunk is an I/O error.
    Unavailable,
}

/// How a [`RecoveryDisk`] is opened.
pub struct RecoveryOptions {
    /// The local target image (created sparse when there is no state file yet). Its state
    /// file is [`crate::state_path`] of it.
    pub image: PathBuf,
    /// The disk's index in its VM (journal records carry it).
    pub disk: DiskId,
    /// The failed-over VM's write journal (one per VM, shared by its disks).
    pub journal: Arc<Journal>,
}

/// What the last checkpoint wrote (also serializes checkpoints).
struct Persisted {
    applied: Seq,
    local: u64,
}

/// A guest operation on a range.
#[derive(Clone, Copy)]
enum Op<'a> {
    Write(&'a [u8]),
    Zero { may_trim: bool },
}

/// A disk served straight from a recovery point while it is hydrated into a local image (see
/// the crate doc). Implements [`BlockDevice`].
pub struct RecoveryDisk {
    pub(crate) disk: DiskId,
    pub(crate) image: RawImage,
    state_path: PathBuf,
    pub(crate) header: Header,
    journal: Arc<Journal>,
    pub(crate) bits: Bitmap,
    locks: Vec<Mutex<()>>,
    /// Writers hold it shared from journal append to the end of their image writes; a
    /// checkpoint takes it exclusively only to read the journal position and the bitmap.
    gate: RwLock<()>,
    local_chunks: AtomicU64,
    local_bytes: AtomicU64,
    spec: Option<(Store, VmId, Seq)>,
    source: Mutex<Option<Arc<PointSource>>>,
    pub(crate) io: IoRuntime,
    persisted: Mutex<Persisted>,
    pub(crate) progress_tx: watch::Sender<Progress>,
    pub(crate) stats: Mutex<HydStats>,
    pub(crate) hydrating: AtomicBool,
    fast_zero: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is finished before anything can panic, or is redone by
    // replay: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RecoveryDisk {
    /// Opens (or creates) the recovery of one disk: loads the state file, creates the sparse
    /// target image on first open, replays the journal records after the state's applied
    /// position (hydrating the chunks they touch that are not local: this needs the store),
    /// and checkpoints. Blocks the calling thread (from async code: `spawn_blocking`).
    pub fn open(opts: RecoveryOptions, source: Source) -> Result<RecoveryDisk, RecoverError> {
        let state_path = state::state_path(&opts.image);
        let io = IoRuntime::new().map_err(|e| RecoverError::Unavailable {
            path: opts.image.clone(),
            reason: format!("cannot start the store I/O runtime: {e}"),
        })?;
        let (mut opened, spec) = match source {
            Source::Opened(s) => (Some(Arc::<PointSource>::from(s)), None),
            Source::Store { store, vm, seq } => (None, Some((store, vm, seq))),
            Source::Unavailable => (None, None),
        };
        let (header, words) = match state::load(&state_path)? {
            Some(found) => found,
            None => {
                // First open: the point gives the geometry.
                let src = match (&opened, &spec) {
                    (Some(s), _) => s.clone(),
                    (None, Some((store, vm, seq))) => {
                        let (store, vm, seq, disk) = (store.clone(), vm.clone(), *seq, opts.disk);
                        let s = io
                            .run(async move { PointSource::reopen(&store, &vm, seq, disk).await })
                            .ok_or_else(|| RecoverError::Unavailable {
                                path: opts.image.clone(),
                                reason: "the store I/O runtime stopped".into(),
                            })??;
                        let s = Arc::new(s);
                        opened = Some(s.clone());
                        s
                    }
                    (None, None) => {
                        return Err(RecoverError::Unavailable {
                            path: opts.image.clone(),
                            reason: format!(
                                "no recovery state {} yet and no region store to start from",
                                state_path.display()
                            ),
                        })
                    }
                };
                create(&opts, &state_path, &src)?
            }
        };
        let want = |what: String| RecoverError::StateMismatch {
            path: state_path.clone(),
            expected: what,
            found: header.describe(),
        };
        if header.disk != opts.disk {
            return Err(want(format!("{}", opts.disk)));
        }
        if let Some(s) = &opened {
            check_source(&header, s).map_err(want)?;
        }
        if let Some((_, vm, seq)) = &spec {
            if *vm != header.vm || *seq != header.point_seq {
                return Err(want(format!(
                    "VM {vm}, recovery point at journal record {seq}"
                )));
            }
        }
        let image = RawImage::open(&opts.image, false).map_err(|source| RecoverError::Image {
            path: opts.image.clone(),
            source,
        })?;
        if image.size() != header.disk_size {
            return Err(RecoverError::StateMismatch {
                path: state_path.clone(),
                expected: format!("an image of {} bytes", image.size()),
                found: header.describe(),
            });
        }
        let last = opts.journal.last_seq();
        if last < header.applied {
            return Err(RecoverError::JournalMismatch {
                dir: opts.journal.dir().to_path_buf(),
                state: state_path.clone(),
                applied: header.applied,
                reason: format!("the journal ends at record {last}"),
            });
        }
        let count = header.chunk_count();
        let bits = Bitmap::new(count, &words);
        let chunk = u64::from(header.chunk_size);
        let local_bytes = (0..count)
            .filter(|&i| bits.get(i))
            .map(|i| header.disk_size.saturating_sub(i * chunk).min(chunk))
            .sum();
        let persisted = Persisted {
            applied: header.applied,
            local: bits.count(),
        };
        let (progress_tx, _) = watch::channel(Progress::default());
        let d = RecoveryDisk {
            disk: opts.disk,
            image,
            state_path,
            journal: opts.journal,
            locks: (0..count).map(|_| Mutex::new(())).collect(),
            gate: RwLock::new(()),
            local_chunks: AtomicU64::new(bits.count()),
            local_bytes: AtomicU64::new(local_bytes),
            spec,
            source: Mutex::new(opened),
            io,
            persisted: Mutex::new(persisted),
            progress_tx,
            stats: Mutex::new(HydStats::default()),
            hydrating: AtomicBool::new(false),
            fast_zero: AtomicBool::new(true),
            bits,
            header,
        };
        d.replay()?;
        d.checkpoint()?;
        if d.is_hydrated() {
            d.release_source();
        }
        d.publish();
        Ok(d)
    }

    /// The target image's path.
    pub fn image_path(&self) -> &Path {
        self.image.path()
    }

    /// The state file's path.
    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// This disk's index in its VM.
    pub fn disk_id(&self) -> DiskId {
        self.disk
    }

    /// The VM of the recovery point.
    pub fn vm(&self) -> &VmId {
        &self.header.vm
    }

    /// The recovery point's journal position.
    pub fn point_seq(&self) -> Seq {
        self.header.point_seq
    }

    /// Chunk size in bytes (the point's).
    pub fn chunk_size(&self) -> u32 {
        self.header.chunk_size
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.header.chunk_count()
    }

    /// Whether chunk `i` is local (in the target image).
    pub fn is_local(&self, i: u64) -> bool {
        self.bits.get(i)
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.header.disk_size
    }

    /// The journal position up to which every record is in the target image (writes in flight
    /// finish first: the gate is taken exclusively for the read).
    pub fn position(&self) -> Seq {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.journal.last_seq()
    }

    /// Re-journals `[offset, offset + len)` as it is now (re-protect's resync): under the
    /// range's chunk locks the image's bytes are read and appended as one WRITE record (a ZERO
    /// record when they are all zero), so the record takes its place in the journal's order
    /// and a replay of the journal through it yields the image's bytes there. The range's
    /// chunks must be local (the disk is hydrated); nothing is written to the image.
    pub fn rewrite(&self, offset: u64, len: u64) -> Result<Seq, RecoverError> {
        let size = self.header.disk_size;
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(self.unavailable(format!(
                "re-journaling {offset}+{len}: outside the disk of {size} bytes"
            )));
        }
        let (first, last) = self.chunk_range(offset, len);
        if let Some(c) = (first..=last).find(|&c| !self.is_local(c)) {
            return Err(self.unavailable(format!(
                "re-journaling {offset}+{len}: chunk {c} is not local yet (hydrate first)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let _locks: Vec<_> = (first..=last).filter_map(|c| self.lock_chunk(c)).collect();
        self.image
            .read_at(offset, &mut buf)
            .map_err(|source| RecoverError::Image {
                path: self.image.path().to_path_buf(),
                source,
            })?;
        let appended = if buf.iter().all(|&b| b == 0) {
            self.journal.append_zero(self.disk, offset, len)
        } else {
            self.journal.append_write(self.disk, offset, &buf)
        };
        appended.map_err(|source| RecoverError::Journal {
            dir: self.journal.dir().to_path_buf(),
            disk: self.disk,
            source,
        })
    }

    /// Whether every chunk is local: the disk no longer needs the store.
    pub fn is_hydrated(&self) -> bool {
        self.local_chunks() == self.chunk_count()
    }

    /// The journal position up to which the last checkpoint made this disk's records durable
    /// in the target image (records up to it may leave the journal's spool).
    pub fn applied_seq(&self) -> Seq {
        lock(&self.persisted).applied
    }

    pub(crate) fn chunk_len(&self, i: u64) -> u64 {
        let cs = u64::from(self.header.chunk_size);
        self.header.disk_size.saturating_sub(i * cs).min(cs)
    }

    pub(crate) fn local_chunks(&self) -> u64 {
        self.local_chunks.load(Ordering::Acquire)
    }

    pub(crate) fn local_bytes(&self) -> u64 {
        self.local_bytes.load(Ordering::Acquire)
    }

    pub(crate) fn lock_chunk(&self, i: u64) -> Option<MutexGuard<'_, ()>> {
        self.locks.get(i as usize).map(lock)
    }

    /// Marks chunk `i` local, after its bytes are in the image; true if it was not.
    pub(crate) fn mark(&self, i: u64) -> bool {
        let new = self.bits.set(i);
        if new {
            self.local_chunks.fetch_add(1, Ordering::AcqRel);
            self.local_bytes
                .fetch_add(self.chunk_len(i), Ordering::AcqRel);
        }
        new
    }

    fn unavailable(&self, reason: String) -> RecoverError {
        RecoverError::Unavailable {
            path: self.image.path().to_path_buf(),
            reason,
        }
    }

    /// The point, opened on first need.
    pub(crate) fn source(&self) -> Result<Arc<PointSource>, RecoverError> {
        let mut slot = lock(&self.source);
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        let (store, vm, seq) = self.spec.clone().ok_or_else(|| {
            self.unavailable(
                "a chunk that is not local yet was needed, and no region store was given".into(),
            )
        })?;
        let disk = self.disk;
        let s = self
            .io
            .run(async move { PointSource::reopen(&store, &vm, seq, disk).await })
            .ok_or_else(|| self.unavailable("the store I/O runtime stopped".into()))??;
        check_source(&self.header, &s).map_err(|expected| RecoverError::StateMismatch {
            path: self.state_path.clone(),
            expected,
            found: self.header.describe(),
        })?;
        let s = Arc::new(s);
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Drops the point (and its caches) once every chunk is local.
    pub(crate) fn release_source(&self) {
        *lock(&self.source) = None;
    }

    /// Chunk `i` of the point (guest path, LRU-cached).
    fn point_chunk(&self, i: u64) -> Result<Arc<Vec<u8>>, RecoverError> {
        let src = self.source()?;
        self.io
            .run(async move { src.chunk(i).await })
            .ok_or_else(|| self.unavailable("the store I/O runtime stopped".into()))?
    }

    /// Makes the journal and the image durable, then writes the state (bitmap and applied
    /// position) by write-temp-then-rename. Returns the applied position. Cheap when nothing
    /// changed since the last one.
    pub fn checkpoint(&self) -> Result<Seq, RecoverError> {
        let mut p = lock(&self.persisted);
        let (seq, words) = {
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            (self.journal.last_seq(), self.bits.snapshot())
        };
        let local: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
        if seq == p.applied && local == p.local {
            return Ok(seq);
        }
        self.journal
            .sync()
            .map_err(|source| RecoverError::Journal {
                dir: self.journal.dir().to_path_buf(),
                disk: self.disk,
                source,
            })?;
        self.image.sync().map_err(|source| RecoverError::Image {
            path: self.image.path().to_path_buf(),
            source,
        })?;
        let h = Header {
            applied: seq,
            ..self.header.clone()
        };
        state::store(&self.state_path, &state::encode(&h, &words))?;
        p.applied = seq;
        p.local = local;
        Ok(seq)
    }

    /// Replays this disk's journal records after the state's applied position: the image may
    /// lack them (they reached the journal but the state was older), and the chunks they
    /// touch that are not local are hydrated first, as a live write does.
    fn replay(&self) -> Result<(), RecoverError> {
        let from = self.header.applied;
        let dir = self.journal.dir().to_path_buf();
        let jerr = |source| RecoverError::Journal {
            dir: dir.clone(),
            disk: self.disk,
            source,
        };
        let mut first = true;
        let (mut records, mut bytes) = (0u64, 0u64);
        for rec in read_records(&dir, from.next()).map_err(jerr)? {
            let rec = rec.map_err(jerr)?;
            if first && rec.seq > from.next() {
                return Err(RecoverError::JournalMismatch {
                    dir: dir.clone(),
                    state: self.state_path.clone(),
                    applied: from,
                    reason: format!("the journal's records start at {}", rec.seq),
                });
            }
            first = false;
            if rec.seq <= from || rec.disk != self.disk || rec.kind == RecordKind::Checkpoint {
                continue;
            }
            self.replay_record(&rec)?;
            records += 1;
            bytes += rec.data.len() as u64;
        }
        if records > 0 {
            tracing::info!(
                image = %self.image.path().display(),
                records,
                bytes,
                from = from.0,
                "replayed journal records the target image was missing"
            );
        }
        Ok(())
    }

    fn replay_record(&self, rec: &Record) -> Result<(), RecoverError> {
        let size = self.header.disk_size;
        let end = rec.offset.checked_add(rec.length);
        if end.is_none_or(|e| e > size)
            || (rec.kind == RecordKind::Write && rec.data.len() as u64 != rec.length)
        {
            return Err(RecoverError::OutOfRange {
                seq: rec.seq,
                disk: rec.disk,
                offset: rec.offset,
                length: rec.length,
                path: self.image.path().to_path_buf(),
                size,
            });
        }
        if rec.length == 0 {
            return Ok(());
        }
        let op = match rec.kind {
            RecordKind::Write => Op::Write(&rec.data),
            _ => Op::Zero { may_trim: true },
        };
        let bases = self.fetch_bases(rec.offset, rec.length)?;
        self.apply(op, rec.offset, rec.length, &bases)
            .map_err(|source| RecoverError::Image {
                path: self.image.path().to_path_buf(),
                source,
            })
    }

    fn chunk_range(&self, offset: u64, len: u64) -> (u64, u64) {
        let cs = u64::from(self.header.chunk_size);
        (offset / cs, (offset + len - 1) / cs)
    }

    /// Whether `[offset, offset+len)` covers chunk `c` whole.
    fn covers(&self, c: u64, offset: u64, len: u64) -> bool {
        let start = c * u64::from(self.header.chunk_size);
        offset <= start && offset + len >= start + self.chunk_len(c)
    }

    /// The chunks of a range that are not local and only partly covered (at most the first and
    /// the last): their point bytes are needed for a read-modify-write.
    fn partial_nonlocal(&self, offset: u64, len: u64) -> Vec<u64> {
        let (first, last) = self.chunk_range(offset, len);
        let mut v = vec![first];
        if last != first {
            v.push(last);
        }
        v.retain(|&c| !self.bits.get(c) && !self.covers(c, offset, len));
        v
    }

    /// Reads from the point the chunks a range's read-modify-write needs (no lock held).
    fn fetch_bases(
        &self,
        offset: u64,
        len: u64,
    ) -> Result<HashMap<u64, Arc<Vec<u8>>>, RecoverError> {
        let mut bases = HashMap::new();
        for c in self.partial_nonlocal(offset, len) {
            bases.insert(c, self.point_chunk(c)?);
        }
        Ok(bases)
    }

    /// Applies an operation to the image, chunk by chunk: a local or wholly covered chunk gets
    /// the range directly (contiguous ones in one call); a partly covered chunk that is not
    /// local is rebuilt whole from its point bytes (`bases`) with the range applied, and
    /// written whole. Chunks become local after their bytes are written. The caller holds
    /// the chunks' locks (or is alone, during replay).
    fn apply(
        &self,
        op: Op<'_>,
        offset: u64,
        len: u64,
        bases: &HashMap<u64, Arc<Vec<u8>>>,
    ) -> io::Result<()> {
        let (first, last) = self.chunk_range(offset, len);
        let cs = u64::from(self.header.chunk_size);
        let end = offset + len;
        let mut run: Option<(u64, u64)> = None;
        let mut to_mark: Vec<u64> = Vec::new();
        for c in first..=last {
            let cstart = c * cs;
            let cend = cstart + self.chunk_len(c);
            let (a, b) = (offset.max(cstart), end.min(cend));
            let local = self.bits.get(c);
            if local || self.covers(c, offset, len) {
                run = Some(match run {
                    Some((ra, _)) => (ra, b),
                    None => (a, b),
                });
                if !local {
                    to_mark.push(c);
                }
                continue;
            }
            if let Some((ra, rb)) = run.take() {
                self.apply_direct(op, offset, ra, rb)?;
                for m in to_mark.drain(..) {
                    self.mark(m);
                }
            }
            let base = bases.get(&c).ok_or_else(|| {
                io::Error::other(format!(
                    "chunk {c} of the point was not read before its write"
                ))
            })?;
            let mut buf = base.as_ref().clone();
            let (ia, ib) = ((a - cstart) as usize, (b - cstart) as usize);
            match op {
                Op::Write(d) => {
                    buf[ia..ib].copy_from_slice(&d[(a - offset) as usize..(b - offset) as usize])
                }
                Op::Zero { .. } => buf[ia..ib].fill(0),
            }
            self.image.write_at(cstart, &buf)?;
            self.mark(c);
        }
        if let Some((ra, rb)) = run {
            self.apply_direct(op, offset, ra, rb)?;
            for m in to_mark {
                self.mark(m);
            }
        }
        Ok(())
    }

    fn apply_direct(&self, op: Op<'_>, offset: u64, a: u64, b: u64) -> io::Result<()> {
        match op {
            Op::Write(d) => self
                .image
                .write_at(a, &d[(a - offset) as usize..(b - offset) as usize]),
            Op::Zero { may_trim } => self.zero_range(a, b - a, may_trim),
        }
    }

    /// Zeroes a range of the image (punched when allowed), the slow way if the filesystem
    /// cannot do it fast.
    pub(crate) fn zero_range(&self, offset: u64, len: u64, may_punch: bool) -> io::Result<()> {
        match self.image.zero_fast(offset, len, may_punch) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                self.fast_zero.store(false, Ordering::Relaxed);
                self.image.zero(offset, len, may_punch)
            }
            other => other,
        }
    }

    /// The live write path of WRITE, WRITE_ZEROES and TRIM (see the crate doc, "Writes").
    fn write_op(
        &self,
        op: Op<'_>,
        kind: RecordKind,
        offset: u64,
        len: u64,
        fast_only: bool,
    ) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if fast_only
            && (!self.fast_zero.load(Ordering::Relaxed)
                || !self.partial_nonlocal(offset, len).is_empty())
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "fast zeroing is not possible here: part of the range must first be copied from the recovery point",
            ));
        }
        // Store reads happen before any lock: the point's bytes never change.
        let bases = self
            .fetch_bases(offset, len)
            .map_err(RecoverError::into_io)?;
        let marked_before = self.local_chunks();
        {
            let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
            let (first, last) = self.chunk_range(offset, len);
            let _locks: Vec<_> = (first..=last).filter_map(|c| self.lock_chunk(c)).collect();
            let appended = match op {
                Op::Write(d) => self.journal.append_write(self.disk, offset, d),
                Op::Zero { .. } if kind == RecordKind::Trim => {
                    self.journal.append_trim(self.disk, offset, len)
                }
                Op::Zero { .. } => self.journal.append_zero(self.disk, offset, len),
            };
            appended.map_err(io::Error::other)?;
            self.apply(op, offset, len, &bases)?;
        }
        if self.local_chunks() != marked_before {
            self.publish();
        }
        Ok(())
    }

    fn sync_journal(&self) -> io::Result<()> {
        self.journal.sync().map_err(io::Error::other)
    }

    /// Whether each of `chunks` (not local) is zero in the point; `false` (data) when the
    /// point cannot be asked, which is always a safe answer.
    fn zero_map(&self, chunks: Vec<u64>) -> Vec<bool> {
        let n = chunks.len();
        let Ok(src) = self.source() else {
            return vec![false; n];
        };
        self.io
            .run(async move {
                let mut out = Vec::with_capacity(chunks.len());
                for c in chunks {
                    out.push(src.is_zero(c).await.unwrap_or(false));
                }
                out
            })
            .unwrap_or_else(|| vec![false; n])
    }
}

/// Creates the sparse target image and the first state file (nothing local yet; the journal's
/// records so far are not this disk's recovery).
fn create(
    opts: &RecoveryOptions,
    state_path: &Path,
    src: &PointSource,
) -> Result<(Header, Vec<u64>), RecoverError> {
    if src.disk() != opts.disk {
        return Err(RecoverError::BadPoint {
            vm: src.vm().to_string(),
            seq: src.seq(),
            reason: format!("opened for {}, asked for {}", src.disk(), opts.disk),
        });
    }
    let ierr = |source| RecoverError::Image {
        path: opts.image.clone(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&opts.image)
        .map_err(ierr)?;
    f.set_len(src.size()).map_err(ierr)?;
    f.sync_all().map_err(ierr)?;
    let h = Header {
        disk_size: src.size(),
        chunk_size: src.chunk_size(),
        disk: opts.disk,
        point_seq: src.seq(),
        applied: opts.journal.last_seq(),
        vm: src.vm().clone(),
    };
    let words = vec![0u64; h.chunk_count().div_ceil(64) as usize];
    state::store(state_path, &state::encode(&h, &words))?;
    Ok((h, words))
}

/// `Err(what the source is)` when the state file was written for another point or geometry.
fn check_source(h: &Header, s: &PointSource) -> Result<(), String> {
    if s.vm() != &h.vm
        || s.seq() != h.point_seq
        || s.disk() != h.disk
        || s.size() != h.disk_size
        || s.chunk_size() != h.chunk_size
    {
        return Err(state::describe(
            s.vm(),
            s.disk(),
            s.seq(),
            s.size(),
            s.chunk_size(),
        ));
    }
    Ok(())
}

impl BlockDevice for RecoveryDisk {
    fn write_may_wait(&self) -> bool {
        self.journal.writes_may_wait()
    }

    fn size(&self) -> u64 {
        self.header.disk_size
    }

    fn read_only(&self) -> bool {
        false
    }

    /// A FLUSH syncs the one journal every connection appends to before it replies.
    fn can_multi_conn(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let cs = u64::from(self.header.chunk_size);
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let c = pos / cs;
            let cend = (c * cs + self.chunk_len(c)).min(end);
            let at = (pos - offset) as usize;
            if self.bits.get(c) {
                // A run of local chunks: one pread.
                let mut run_end = cend;
                let mut n = c + 1;
                while run_end < end && self.bits.get(n) {
                    run_end = (n * cs + self.chunk_len(n)).min(end);
                    n += 1;
                }
                self.image
                    .read_at(pos, &mut buf[at..(run_end - offset) as usize])?;
                pos = run_end;
            } else {
                let data = self.point_chunk(c).map_err(RecoverError::into_io)?;
                let (ia, ib) = ((pos - c * cs) as usize, (cend - c * cs) as usize);
                buf[at..at + (ib - ia)].copy_from_slice(&data[ia..ib]);
                pos = cend;
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.write_op(
            Op::Write(data),
            RecordKind::Write,
            offset,
            data.len() as u64,
            false,
        )?;
        if fua {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.write_op(
            Op::Zero {
                may_trim: flags.may_trim,
            },
            RecordKind::Zero,
            offset,
            len,
            flags.fast_only,
        )?;
        if flags.fua {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.write_op(
            Op::Zero { may_trim: true },
            RecordKind::Trim,
            offset,
            len,
            false,
        )?;
        if fua {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.sync_journal()
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let cs = u64::from(self.header.chunk_size);
        let end = offset.saturating_add(len).min(self.header.disk_size);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < 1024 {
            let c = pos / cs;
            if self.bits.get(c) {
                let mut run_end = (c * cs + self.chunk_len(c)).min(end);
                let mut n = c + 1;
                while run_end < end && self.bits.get(n) {
                    run_end = (n * cs + self.chunk_len(n)).min(end);
                    n += 1;
                }
                let ext = self.image.extents(pos, run_end - pos)?;
                let covered: u64 = ext.iter().map(|e| e.length).sum();
                out.extend(ext);
                if covered < run_end - pos {
                    break;
                }
                pos = run_end;
            } else {
                // A run of chunks that are not local: the point's index says zero or data.
                let mut chunks = vec![c];
                let mut n = c + 1;
                while n * cs < end && chunks.len() < 1024 && !self.bits.get(n) {
                    chunks.push(n);
                    n += 1;
                }
                let zero = self.zero_map(chunks.clone());
                for (c, z) in chunks.into_iter().zip(zero) {
                    let cend = (c * cs + self.chunk_len(c)).min(end);
                    out.push(Extent {
                        length: cend - pos,
                        hole: z,
                        zero: z,
                    });
                    pos = cend;
                }
            }
        }
        if out.is_empty() {
            out.push(Extent {
                length: len.max(1),
                hole: false,
                zero: false,
            });
        }
        Ok(out)
    }
}
