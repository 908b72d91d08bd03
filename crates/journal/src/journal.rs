//! The appender: [`Journal`] and its locking, group commit and sealing.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use lifeboat_types::{CheckpointKind, DiskId, Epoch, RecordKind, Seq, VmId};
use tracing::{debug, info};

use crate::error::JournalError;
use crate::files::{self, NameState};
use crate::format::{time_to_ns, RecordHead, SegmentHeader, Trailer, MAX_RECORD_DATA};

/// The stored time of a record appended at `now` to a segment created at `created` whose last
/// record has `last_ms`: never smaller than `last_ms` (a clock set back repeats it); `None` if it
/// does not fit in the 32-bit field (the segment must be closed first).
fn record_ms(created: SystemTime, last_ms: u32, now: SystemTime) -> Option<u32> {
    match now.duration_since(created) {
        Ok(d) => u32::try_from(d.as_millis()).ok().map(|ms| ms.max(last_ms)),
        Err(_) => Some(last_ms),
    }
}

/// How a [`Journal`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The VM whose journal this is; every segment header carries it.
    pub vm: VmId,
    /// The replication epoch new segments are written in (fencing token).
    pub epoch: Epoch,
    /// A segment is sealed once it holds this many bytes (checked after each append).
    pub segment_max_bytes: u64,
    /// A segment is due for sealing this long after its first record ([`Journal::seal_if_due`]).
    pub segment_max_age: Duration,
}

impl JournalConfig {
    /// Default size limit of a segment: 64 MiB.
    pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 << 20;
    /// Default age limit of a segment: 10 s.
    pub const DEFAULT_SEGMENT_MAX_AGE: Duration = Duration::from_secs(10);

    /// A configuration with the default limits.
    pub fn new(vm: VmId, epoch: Epoch) -> Self {
        JournalConfig {
            vm,
            epoch,
            segment_max_bytes: Self::DEFAULT_SEGMENT_MAX_BYTES,
            segment_max_age: Self::DEFAULT_SEGMENT_MAX_AGE,
        }
    }
}

/// A sealed segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The sealed file (`seg-<first seq>.lbj`).
    pub path: PathBuf,
    /// Sequence number of its first record.
    pub first_seq: Seq,
    /// Sequence number of its last record.
    pub last_seq: Seq,
    /// The epoch in its header.
    pub epoch: Epoch,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The segment records are appended to.
pub(crate) struct Active {
    pub file: Arc<File>,
    pub path: PathBuf,
    pub first_seq: Seq,
    pub epoch: Epoch,
    /// Bytes in the file (= offset of the next record).
    pub len: u64,
    pub records: u64,
    pub first_record_at: Option<Instant>,
    /// The creation time in the segment's header (records' times count from it).
    pub created: SystemTime,
    /// Stored time of the last record (ms after `created`); the next is never smaller.
    pub last_ms: u32,
}

impl Active {
    /// A segment just created with only its header.
    fn empty(file: File, path: PathBuf, first_seq: Seq, epoch: Epoch, created: SystemTime) -> Self {
        Active {
            file: Arc::new(file),
            path,
            first_seq,
            epoch,
            len: crate::format::SEGMENT_HEADER_LEN as u64,
            records: 0,
            first_record_at: None,
            created,
            last_ms: 0,
        }
    }
}

/// A segment whose trailer is written but which is not yet durable and renamed.
#[derive(Clone)]
struct Closing {
    file: Arc<File>,
    path: PathBuf,
    info: SegmentInfo,
}

/// Everything the append lock protects.
struct State {
    last_seq: Seq,
    active: Option<Active>,
    closing: VecDeque<Closing>,
    sealed: Vec<SegmentInfo>,
    /// A segment file was created since the directory was last fsync'ed.
    dir_dirty: bool,
}

/// What recovery hands to [`Journal::open`].
pub(crate) struct Recovered {
    pub last_seq: Seq,
    pub active: Option<Active>,
    pub sealed: Vec<SegmentInfo>,
}

/// Segments closed by `append` at the size limit are finished (fdatasync + rename) by the next
/// `seal_if_due`/`seal`; past this many waiting, `append` finishes them itself.
const MAX_CLOSING: usize = 4;

/// A VM's write journal (see the crate doc). `Send + Sync`: share it behind an `Arc`.
pub struct Journal {
    dir: PathBuf,
    /// The directory, held open for fsync and for the exclusive `flock` on it.
    dir_file: File,
    config: JournalConfig,
    state: Mutex<State>,
    last_seq: AtomicU64,
    durable_seq: AtomicU64,
    /// Whether a group-commit sync is running.
    sync_running: Mutex<bool>,
    sync_done: Condvar,
    /// Serializes the file lifecycle: finishing seals and removing segments.
    seal_lock: Mutex<()>,
    failed: AtomicBool,
    fdatasyncs: AtomicU64,
    /// Holds writes for a multi-VM consistency cut (see [`crate::gate`]).
    gate: crate::gate::Gate,
    #[cfg(test)]
    pub(crate) test_sync_delay: Mutex<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes all of `bufs` at the file's position, retrying short writes.
fn write_all_vectored(mut file: &File, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut bufs = bufs;
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lock_dir(dir_file: &File, dir: &Path) -> Result<(), JournalError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(dir_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Err(JournalError::Locked(dir.to_path_buf()));
    }
    Err(JournalError::io(dir, e))
}

impl Journal {
    /// Opens or creates the journal in `dir` (created if missing): checks every segment (VM id,
    /// epoch, continuity, checksums), drops a torn tail of the unsealed segment, finishes
    /// interrupted seals, and continues after the last valid record. Takes an exclusive lock on
    /// the directory for the journal's lifetime.
    pub fn open(dir: &Path, config: JournalConfig) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(|e| JournalError::io(dir, e))?;
        let dir_file = File::open(dir).map_err(|e| JournalError::io(dir, e))?;
        lock_dir(&dir_file, dir)?;
        let rec = crate::recover::recover(dir, &dir_file, &config)?;
        let fdatasyncs = AtomicU64::new(0);
        // Whatever survived (possibly only in the page cache, after a kill -9) is made durable
        // now, so durable_seq starts at last_seq.
        if let Some(a) = &rec.active {
            a.file
                .sync_data()
                .map_err(|e| JournalError::io(&a.path, e))?;
            fdatasyncs.fetch_add(1, Ordering::Relaxed);
        }
        files::sync_dir(&dir_file, dir)?;
        info!(
            dir = %dir.display(),
            vm = %config.vm,
            last_seq = rec.last_seq.0,
            sealed = rec.sealed.len(),
            "journal opened"
        );
        Ok(Journal {
            dir: dir.to_path_buf(),
            dir_file,
            last_seq: AtomicU64::new(rec.last_seq.0),
            durable_seq: AtomicU64::new(rec.last_seq.0),
            state: Mutex::new(State {
                last_seq: rec.last_seq,
                active: rec.active,
                closing: VecDeque::new(),
                sealed: rec.sealed,
                dir_dirty: false,
            }),
            config,
            sync_running: Mutex::new(false),
            sync_done: Condvar::new(),
            seal_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
            fdatasyncs,
            gate: Default::default(),
            #[cfg(test)]
            test_sync_delay: Mutex::new(Duration::ZERO),
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// The last appended record (`Seq(0)` if none ever was).
    pub fn last_seq(&self) -> Seq {
        Seq(self.last_seq.load(Ordering::Acquire))
    }

    /// The last record known to be durable (fdatasync'ed).
    pub fn durable_seq(&self) -> Seq {
        Seq(self.durable_seq.load(Ordering::Acquire))
    }

    /// How many fdatasync calls on segment files this journal has made (for group-commit tests
    /// and metrics).
    pub fn fdatasync_count(&self) -> u64 {
        self.fdatasyncs.load(Ordering::Relaxed)
    }

    /// Appends a write of `data` at `offset` of `disk`. When this returns, the record is in the
    /// segment file (written with one `writev`, no fsync): it survives the process being killed.
    pub fn append_write(
        &self,
        disk: DiskId,
        offset: u64,
        data: &[u8],
    ) -> Result<Seq, JournalError> {
        let len = data.len() as u64;
        if len > MAX_RECORD_DATA {
            return Err(JournalError::TooLarge {
                len,
                max: MAX_RECORD_DATA,
            });
        }
        self.gate.pass();
        self.append(range_head(disk, RecordKind::Write, offset, len)?, data)
    }

    /// Appends a zeroing of `len` bytes at `offset` of `disk`.
    pub fn append_zero(&self, disk: DiskId, offset: u64, len: u64) -> Result<Seq, JournalError> {
        self.gate.pass();
        self.append(range_head(disk, RecordKind::Zero, offset, len)?, &[])
    }

    /// Appends a trim (discard) of `len` bytes at `offset` of `disk`.
    pub fn append_trim(&self, disk: DiskId, offset: u64, len: u64) -> Result<Seq, JournalError> {
        self.gate.pass();
        self.append(range_head(disk, RecordKind::Trim, offset, len)?, &[])
    }

    /// Appends a checkpoint marker: the state after every record before it is a consistent point
    /// of the whole VM, of the given kind, taken at `time`.
    pub fn append_checkpoint(
        &self,
        kind: CheckpointKind,
        time: SystemTime,
    ) -> Result<Seq, JournalError> {
        let head = RecordHead {
            seq: Seq(0),
            disk: DiskId(0),
            kind: RecordKind::Checkpoint,
            checkpoint: Some(kind),
            offset: time_to_ns(time).ok_or(JournalError::BadTime)?,
            length: 0,
            data_len: 0,
            time_ms: 0,
        };
        self.append(head, &[])
    }

    /// Holds every write, zero and trim (they wait in their append) until
    /// [`Journal::checkpoint_and_release`], [`Journal::release_writes`] or `until`, whichever
    /// comes first: the first phase of a multi-VM consistency cut (see the crate doc).
    pub fn hold_writes(&self, until: std::time::Instant) -> Result<(), JournalError> {
        if self.gate.hold(until) {
            Ok(())
        } else {
            Err(JournalError::HoldBusy(self.dir.clone()))
        }
    }

    /// Appends a checkpoint marker while writes are still held, then releases them: the second
    /// phase of a cut. Fails with [`JournalError::HoldExpired`] (nothing appended) if the hold
    /// expired or was released: the cut is then not consistent and must be abandoned.
    pub fn checkpoint_and_release(
        &self,
        kind: CheckpointKind,
        time: SystemTime,
    ) -> Result<Seq, JournalError> {
        self.gate
            .release_with(|| self.append_checkpoint(kind, time))
            .unwrap_or_else(|| Err(JournalError::HoldExpired(self.dir.clone())))
    }

    /// Whether writes may be held now (an append of a write may then wait): callers on async
    /// threads run their appends elsewhere while it says so.
    pub fn writes_may_wait(&self) -> bool {
        self.gate.may_wait()
    }

    /// Releases held writes (an abandoned cut); nothing if none are held.
    pub fn release_writes(&self) {
        self.gate.release();
    }

    fn check_ok(&self) -> Result<(), JournalError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(JournalError::Failed(self.dir.clone()));
        }
        Ok(())
    }

    /// Marks the journal failed and returns `e`.
    fn fail(&self, e: JournalError) -> JournalError {
        tracing::error!(dir = %self.dir.display(), error = %e, "journal failed");
        self.failed.store(true, Ordering::Release);
        e
    }

    fn append(&self, mut head: RecordHead, data: &[u8]) -> Result<Seq, JournalError> {
        self.check_ok()?;
        // The data's checksum is computed before taking the lock; the header part (which holds
        // the sequence number) is folded in under it.
        let data_crc = crc32c::crc32c(data);
        let mut st = lock(&self.state);
        self.check_ok()?;
        let seq = st.last_seq.next();
        head.seq = seq;
        // One clock read per append, under the lock so that times follow sequence numbers.
        let now = SystemTime::now();
        let fits = st
            .active
            .as_ref()
            .and_then(|a| record_ms(a.created, a.last_ms, now));
        if st.active.is_some() && fits.is_none() {
            // The segment is too old for the 32-bit millisecond offset (~49.7 days): seal it.
            self.close_active(&mut st)?;
        }
        if st.active.is_none() {
            st.active = Some(self.new_segment(seq, now)?);
            st.dir_dirty = true;
        }
        let Some(active) = st.active.as_mut() else {
            return Err(JournalError::Failed(self.dir.clone()));
        };
        head.time_ms = fits.unwrap_or(0);
        let hdr = head.encode(data_crc);
        let total = (hdr.len() + data.len()) as u64;
        if let Err(e) =
            write_all_vectored(&active.file, &mut [IoSlice::new(&hdr), IoSlice::new(data)])
        {
            let err = JournalError::io(&active.path, e);
            // Take a partial record back out so the next append starts at a record boundary.
            let undo = active
                .file
                .set_len(active.len)
                .and_then(|()| (&*active.file).seek(SeekFrom::Start(active.len)).map(drop));
            return Err(match undo {
                Ok(()) => err,
                Err(_) => self.fail(err),
            });
        }
        active.len += total;
        active.last_ms = head.time_ms;
        if active.records == 0 {
            active.first_record_at = Some(Instant::now());
        }
        active.records += 1;
        let full = active.len >= self.config.segment_max_bytes;
        st.last_seq = seq;
        self.last_seq.store(seq.0, Ordering::Release);
        if full {
            self.close_active(&mut st)?;
        }
        let backlog = st.closing.len();
        drop(st);
        if backlog >= MAX_CLOSING {
            self.finish_closing()?;
        }
        Ok(seq)
    }

    /// Creates the segment whose first record will be `first` (one write, no fsync: `sync`
    /// fdatasyncs it and the directory before any of its records counts as durable).
    fn new_segment(&self, first: Seq, created: SystemTime) -> Result<Active, JournalError> {
        let header = self.header(first, created);
        let (file, path) = files::create_fast(&self.dir, &header)?;
        debug!(path = %path.display(), "journal segment created");
        Ok(Active::empty(file, path, first, self.config.epoch, created))
    }

    fn header(&self, first: Seq, created: SystemTime) -> SegmentHeader {
        SegmentHeader {
            vm: self.config.vm.clone(),
            epoch: self.config.epoch,
            first_seq: first,
            created,
        }
    }

    /// Writes the trailer of the active segment and queues it for finishing (fdatasync, rename).
    /// A failure here leaves the file state unknown: the journal is marked failed.
    fn close_active(&self, st: &mut State) -> Result<(), JournalError> {
        let Some(a) = st.active.take() else {
            return Ok(());
        };
        let last = Seq(a.first_seq.0 + a.records - 1);
        let trailer = Trailer {
            last_seq: last,
            records: a.records,
            offset: a.len,
        };
        let bytes = trailer.encode();
        if let Err(e) = write_all_vectored(&a.file, &mut [IoSlice::new(&bytes)]) {
            return Err(self.fail(JournalError::io(&a.path, e)));
        }
        st.closing.push_back(Closing {
            info: SegmentInfo {
                path: files::seg_path(&self.dir, a.first_seq, NameState::Sealed),
                first_seq: a.first_seq,
                last_seq: last,
                epoch: a.epoch,
                bytes: a.len + bytes.len() as u64,
            },
            file: a.file,
            path: a.path,
        });
        Ok(())
    }

    fn fdatasync(&self, file: &File, path: &Path) -> Result<(), JournalError> {
        self.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        file.sync_data()
            .map_err(|e| self.fail(JournalError::io(path, e)))
    }

    fn sync_dir(&self) -> Result<(), JournalError> {
        files::sync_dir(&self.dir_file, &self.dir).map_err(|e| self.fail(e))
    }

    /// Finishes closed segments in order: fdatasync, rename `.open` -> `.lbj`, fsync the
    /// directory. Returns how many it finished.
    fn finish_closing(&self) -> Result<usize, JournalError> {
        let _lifecycle = lock(&self.seal_lock);
        let mut n = 0;
        loop {
            let Some(c) = lock(&self.state).closing.front().cloned() else {
                return Ok(n);
            };
            self.fdatasync(&c.file, &c.path)?;
            fs::rename(&c.path, &c.info.path)
                .map_err(|e| self.fail(JournalError::io(&c.path, e)))?;
            self.sync_dir()?;
            {
                let mut st = lock(&self.state);
                st.closing.pop_front();
                st.sealed.push(c.info.clone());
            }
            // Every earlier segment was sealed (durably) before this one.
            self.durable_seq
                .fetch_max(c.info.last_seq.0, Ordering::AcqRel);
            debug!(path = %c.info.path.display(), first = c.info.first_seq.0,
                last = c.info.last_seq.0, "journal segment sealed");
            n += 1;
        }
    }

    /// Makes every record appended before this call durable (fdatasync of the segment files that
    /// hold unsynced records, and of the directory if a segment was created). Group commit: a
    /// caller whose records are covered by a sync that finishes meanwhile issues none; the append
    /// lock is not held while syncing.
    pub fn sync(&self) -> Result<(), JournalError> {
        self.check_ok()?;
        let target = self.last_seq.load(Ordering::Acquire);
        let mut running = lock(&self.sync_running);
        loop {
            if self.durable_seq.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            self.check_ok()?;
            if *running {
                running = self
                    .sync_done
                    .wait(running)
                    .unwrap_or_else(|e| e.into_inner());
                continue;
            }
            *running = true;
            drop(running);
            let result = self.sync_now();
            running = lock(&self.sync_running);
            *running = false;
            self.sync_done.notify_all();
            result?;
        }
    }

    /// One sync pass: snapshot what is unsynced under the lock, fdatasync it without the lock.
    fn sync_now(&self) -> Result<(), JournalError> {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let (covered, targets, dir_dirty) = {
            let mut st = lock(&self.state);
            let mut targets = Vec::new();
            for c in &st.closing {
                if c.info.last_seq.0 > durable {
                    targets.push((c.file.clone(), c.path.clone()));
                }
            }
            if let Some(a) = &st.active {
                if a.records > 0 && st.last_seq.0 > durable {
                    targets.push((a.file.clone(), a.path.clone()));
                }
            }
            let dir_dirty = std::mem::take(&mut st.dir_dirty);
            (st.last_seq, targets, dir_dirty)
        };
        #[cfg(test)]
        std::thread::sleep(*lock(&self.test_sync_delay));
        for (file, path) in &targets {
            self.fdatasync(file, path)?;
        }
        if dir_dirty {
            self.sync_dir()?;
        }
        self.durable_seq.fetch_max(covered.0, Ordering::AcqRel);
        Ok(())
    }

    /// Seals the active segment if it is over its size or age limit, and finishes segments that
    /// `append` closed at the size limit. Returns whether any segment was sealed. Call it
    /// periodically (e.g. every second).
    pub fn seal_if_due(&self) -> Result<bool, JournalError> {
        self.check_ok()?;
        let closed = {
            let mut st = lock(&self.state);
            let due = match &st.active {
                Some(a) if a.records > 0 => {
                    a.len >= self.config.segment_max_bytes
                        || a.first_record_at
                            .is_some_and(|t| t.elapsed() >= self.config.segment_max_age)
                }
                _ => false,
            };
            if due {
                self.close_active(&mut st)?;
            }
            due
        };
        let finished = self.finish_closing()?;
        Ok(closed || finished > 0)
    }

    /// Seals the active segment now if it has records (trailer, fdatasync, rename to `.lbj`,
    /// fsync of the directory); the next append starts a new segment.
    pub fn seal(&self) -> Result<(), JournalError> {
        self.check_ok()?;
        {
            let mut st = lock(&self.state);
            if st.active.as_ref().is_some_and(|a| a.records > 0) {
                self.close_active(&mut st)?;
            }
        }
        self.finish_closing()?;
        Ok(())
    }

    /// The sealed segments, oldest first.
    pub fn sealed_segments(&self) -> Result<Vec<SegmentInfo>, JournalError> {
        Ok(lock(&self.state).sealed.clone())
    }

    /// Deletes the sealed segments whose records are all `<= upto` (once shipping has them
    /// acknowledged), oldest first. Returns how many it deleted. The newest segment file always
    /// stays (an empty one is created durably if needed) so that the next sequence number
    /// survives a restart.
    pub fn remove_sealed_through(&self, upto: Seq) -> Result<usize, JournalError> {
        self.check_ok()?;
        let _lifecycle = lock(&self.seal_lock);
        let victims: Vec<SegmentInfo> = {
            let mut st = lock(&self.state);
            let n = st.sealed.iter().take_while(|s| s.last_seq <= upto).count();
            if n == 0 {
                return Ok(0);
            }
            if n == st.sealed.len() && st.closing.is_empty() && st.active.is_none() {
                let first = st.last_seq.next();
                let created = SystemTime::now();
                let (file, path) =
                    files::create_durable(&self.dir, &self.dir_file, &self.header(first, created))?;
                st.active = Some(Active::empty(file, path, first, self.config.epoch, created));
            }
            st.sealed[..n].to_vec()
        };
        // Newer segments must be durable (file and directory entry) before older ones go.
        self.sync()?;
        let mut removed = 0;
        let mut result = Ok(());
        for v in &victims {
            match fs::remove_file(&v.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    result = Err(JournalError::io(&v.path, e));
                    break;
                }
            }
        }
        lock(&self.state).sealed.drain(..removed);
        if removed > 0 {
            self.sync_dir()?;
            info!(dir = %self.dir.display(), removed, upto = upto.0, "journal segments removed");
        }
        result.map(|()| removed)
    }
}

fn range_head(
    disk: DiskId,
    kind: RecordKind,
    offset: u64,
    len: u64,
) -> Result<RecordHead, JournalError> {
    if offset.checked_add(len).is_none() {
        return Err(JournalError::RangeOverflow { offset, len });
    }
    Ok(RecordHead {
        seq: Seq(0),
        disk,
        kind,
        checkpoint: None,
        offset,
        length: len,
        data_len: if kind == RecordKind::Write {
            len as u32
        } else {
            0
        },
        time_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn record_times_never_go_back_and_a_too_old_segment_is_refused() {
        let c = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = |n: u64| Duration::from_millis(n);
        assert_eq!(record_ms(c, 0, c + ms(1234)), Some(1234));
        // Rounded down to whole milliseconds.
        assert_eq!(record_ms(c, 0, c + Duration::from_micros(1999)), Some(1));
        // A clock set back repeats the last time, also before the segment's creation.
        assert_eq!(record_ms(c, 50, c + ms(20)), Some(50));
        assert_eq!(record_ms(c, 50, c - ms(20)), Some(50));
        // The last millisecond that fits, then a new segment is needed (append closes this one).
        let max = u64::from(u32::MAX);
        assert_eq!(record_ms(c, 0, c + ms(max)), Some(u32::MAX));
        assert_eq!(record_ms(c, 0, c + ms(max + 1)), None);
    }

    fn journal(dir: &Path) -> Journal {
        Journal::open(dir, JournalConfig::new(VmId::new("vm").unwrap(), Epoch(1))).unwrap()
    }

    #[test]
    fn sync_without_new_records_issues_no_fdatasync() {
        let tmp = tempfile::tempdir().unwrap();
        let j = journal(tmp.path());
        let base = j.fdatasync_count();
        j.sync().unwrap();
        assert_eq!(j.fdatasync_count(), base);
        j.append_write(DiskId(0), 0, b"abc").unwrap();
        assert_eq!(j.durable_seq(), Seq(0));
        j.sync().unwrap();
        assert_eq!(j.fdatasync_count(), base + 1);
        assert_eq!(j.durable_seq(), Seq(1));
        j.sync().unwrap();
        assert_eq!(j.fdatasync_count(), base + 1);
    }

    /// Eight flushers arrive while one sync is in progress: together they cost one more
    /// fdatasync, not eight.
    #[test]
    fn concurrent_syncs_share_one_fdatasync() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Arc::new(journal(tmp.path()));
        j.append_write(DiskId(0), 0, b"first").unwrap();
        *lock(&j.test_sync_delay) = Duration::from_millis(300);
        let base = j.fdatasync_count();
        let slow = {
            let j = j.clone();
            std::thread::spawn(move || j.sync().unwrap())
        };
        // Wait until the first sync is running (it has snapshotted only record 1).
        while !*lock(&j.sync_running) {
            std::thread::yield_now();
        }
        let barrier = Arc::new(Barrier::new(8));
        let flushers: Vec<_> = (0..8u64)
            .map(|i| {
                let (j, barrier) = (j.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let seq = j.append_write(DiskId(0), i * 512, b"data").unwrap();
                    barrier.wait();
                    j.sync().unwrap();
                    assert!(j.durable_seq() >= seq);
                })
            })
            .collect();
        for t in flushers {
            t.join().unwrap();
        }
        slow.join().unwrap();
        assert_eq!(j.durable_seq(), Seq(9));
        assert_eq!(
            j.fdatasync_count() - base,
            2,
            "one for the slow sync, one for all 8"
        );
    }

    #[test]
    fn appends_continue_while_a_sync_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Arc::new(journal(tmp.path()));
        j.append_write(DiskId(0), 0, b"first").unwrap();
        *lock(&j.test_sync_delay) = Duration::from_millis(500);
        let syncer = {
            let j = j.clone();
            std::thread::spawn(move || j.sync().unwrap())
        };
        while !*lock(&j.sync_running) {
            std::thread::yield_now();
        }
        let t = Instant::now();
        for i in 0..100 {
            j.append_write(DiskId(0), i * 512, &[1; 512]).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "appends waited for the sync"
        );
        assert!(*lock(&j.sync_running));
        syncer.join().unwrap();
    }
}
