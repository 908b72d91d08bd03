//! Opening an existing journal: checking every segment, dropping a torn tail, finishing
//! interrupted seals. See "Recovery" in the crate doc for the rules and why they are safe.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use lifeboat_types::{Epoch, Seq};
use tracing::{error, warn};

use crate::error::{FormatError, JournalError, Problem};
use crate::files::{self, NameState, SegFile};
use crate::format::{Item, ScanError, Scanner, SegmentHeader, Trailer};
use crate::journal::{Active, JournalConfig, Recovered, SegmentInfo};

/// What scanning one segment file found.
struct Scanned {
    seg: SegFile,
    /// `None`: the header is damaged (allowed only for the last, unsealed file).
    epoch: Option<Epoch>,
    /// Ends with a valid trailer (checked strictly if named sealed).
    sealed: bool,
    records: u64,
    /// Bytes up to the end of the last valid record (or the trailer).
    valid_len: u64,
    file_len: u64,
    /// The header's creation time (now if the header is damaged).
    created: SystemTime,
    /// Stored time of the last valid record (0 if none).
    last_ms: u32,
}

fn corrupt(path: &Path, offset: u64, problem: Problem) -> JournalError {
    JournalError::corrupt(path, FormatError { offset, problem })
}

fn scan_file(seg: SegFile, is_last: bool, cfg: &JournalConfig) -> Result<Scanned, JournalError> {
    let path = seg.path.clone();
    let file = File::open(&path).map_err(|e| JournalError::io(&path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| JournalError::io(&path, e))?
        .len();
    // Only the name makes a file strict: a `.open` file is sealed if the scan reaches its
    // trailer (guest data at the end of a record can never be mistaken for one).
    let strict = seg.state == NameState::Sealed;
    let reader = BufReader::with_capacity(256 * 1024, &file).take(file_len);
    let mut scanner = match Scanner::new(reader, file_len) {
        Ok(s) => s,
        Err(ScanError::Io(e)) => return Err(JournalError::io(&path, e)),
        Err(ScanError::Format(e)) if is_last && !strict => {
            warn!(path = %path.display(), problem = %e.problem,
                "journal segment header is torn; it holds nothing durable and is rewritten");
            return Ok(Scanned {
                seg,
                epoch: None,
                sealed: false,
                records: 0,
                valid_len: 0,
                file_len,
                created: SystemTime::now(),
                last_ms: 0,
            });
        }
        Err(ScanError::Format(e)) => return Err(JournalError::corrupt(&path, e)),
    };
    let h = &scanner.header;
    if h.first_seq != seg.first {
        return Err(corrupt(&path, 0, Problem::NameMismatch(h.first_seq)));
    }
    if h.vm != cfg.vm {
        return Err(JournalError::WrongVm {
            path,
            found: h.vm.to_string(),
            expected: cfg.vm.clone(),
        });
    }
    if h.epoch > cfg.epoch {
        return Err(JournalError::Fenced {
            path,
            found: h.epoch,
            ours: cfg.epoch,
        });
    }
    let epoch = Some(h.epoch);
    let created = h.created;
    let mut last_ms = 0;
    let (valid_len, sealed) = loop {
        match scanner.next_item(false) {
            Ok(Item::Record(_)) => last_ms = scanner.last_ms,
            Ok(Item::Trailer) => break (file_len, true),
            Ok(Item::End) if strict => {
                return Err(corrupt(&path, scanner.pos, Problem::NotSealed));
            }
            Ok(Item::End) => break (scanner.pos, false),
            Err(ScanError::Io(e)) => return Err(JournalError::io(&path, e)),
            Err(ScanError::Format(e)) if strict => return Err(JournalError::corrupt(&path, e)),
            Err(ScanError::Format(e)) => {
                warn!(path = %path.display(), offset = e.offset, problem = %e.problem,
                    dropped_bytes = file_len - e.offset, "dropping torn tail of journal segment");
                break (e.offset, false);
            }
        }
    };
    Ok(Scanned {
        records: scanner.records,
        seg,
        epoch,
        sealed,
        valid_len,
        file_len,
        created,
        last_ms,
    })
}

fn info_of(s: &Scanned, epoch: Epoch) -> SegmentInfo {
    SegmentInfo {
        path: files::seg_path(
            s.seg.path.parent().unwrap_or(Path::new(".")),
            s.seg.first,
            NameState::Sealed,
        ),
        first_seq: s.seg.first,
        last_seq: Seq(s.seg.first.0 + s.records - 1),
        epoch,
        bytes: s.valid_len,
    }
}

/// Makes an `.open` file that ends with a trailer sealed: fdatasync, rename, fsync the directory.
fn finish_rename(
    dir: &Path,
    dir_file: &File,
    s: &Scanned,
    epoch: Epoch,
) -> Result<SegmentInfo, JournalError> {
    let info = info_of(s, epoch);
    let path = &s.seg.path;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io(path, e))?;
    f.sync_data().map_err(|e| JournalError::io(path, e))?;
    fs::rename(path, &info.path).map_err(|e| JournalError::io(path, e))?;
    files::sync_dir(dir_file, dir)?;
    Ok(info)
}

/// Seals an unsealed segment at its valid end (its trailer was lost, or its epoch is old).
fn seal_now(
    dir: &Path,
    dir_file: &File,
    s: &mut Scanned,
    epoch: Epoch,
) -> Result<SegmentInfo, JournalError> {
    let path = &s.seg.path;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io(path, e))?;
    let trailer = Trailer {
        last_seq: Seq(s.seg.first.0 + s.records - 1),
        records: s.records,
        offset: s.valid_len,
    };
    let bytes = trailer.encode();
    f.set_len(s.valid_len)
        .and_then(|()| f.write_all_at(&bytes, s.valid_len))
        .map_err(|e| JournalError::io(path, e))?;
    s.valid_len += bytes.len() as u64;
    finish_rename(dir, dir_file, s, epoch)
}

fn remove(path: &Path) -> Result<(), JournalError> {
    fs::remove_file(path).map_err(|e| JournalError::io(path, e))
}

fn new_active(
    dir: &Path,
    dir_file: &File,
    cfg: &JournalConfig,
    first: Seq,
) -> Result<Active, JournalError> {
    let created = SystemTime::now();
    let header = SegmentHeader {
        vm: cfg.vm.clone(),
        epoch: cfg.epoch,
        first_seq: first,
        created,
    };
    let (file, path) = files::create_durable(dir, dir_file, &header)?;
    Ok(Active {
        file: Arc::new(file),
        path,
        first_seq: first,
        epoch: cfg.epoch,
        len: crate::format::SEGMENT_HEADER_LEN as u64,
        records: 0,
        first_record_at: None,
        created,
        last_ms: 0,
    })
}

/// Turns the last unsealed segment into the active one (or seals it if its epoch is old).
fn take_active(
    dir: &Path,
    dir_file: &File,
    cfg: &JournalConfig,
    mut s: Scanned,
    sealed: &mut Vec<SegmentInfo>,
) -> Result<Option<Active>, JournalError> {
    let path = s.seg.path.clone();
    let Some(epoch) = s.epoch else {
        return new_active(dir, dir_file, cfg, s.seg.first).map(Some);
    };
    if epoch < cfg.epoch {
        if s.records == 0 {
            return new_active(dir, dir_file, cfg, s.seg.first).map(Some);
        }
        sealed.push(seal_now(dir, dir_file, &mut s, epoch)?);
        return Ok(None);
    }
    let mut file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    if s.valid_len < s.file_len {
        file.set_len(s.valid_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| JournalError::io(&path, e))?;
    }
    file.seek(SeekFrom::Start(s.valid_len))
        .map_err(|e| JournalError::io(&path, e))?;
    Ok(Some(Active {
        file: Arc::new(file),
        path,
        first_seq: s.seg.first,
        epoch,
        len: s.valid_len,
        records: s.records,
        first_record_at: (s.records > 0).then(Instant::now),
        created: s.created,
        last_ms: s.last_ms,
    }))
}

/// Checks and repairs the journal in `dir` (see the crate doc, "Recovery").
pub(crate) fn recover(
    dir: &Path,
    dir_file: &File,
    cfg: &JournalConfig,
) -> Result<Recovered, JournalError> {
    let mut segs = Vec::new();
    for f in files::list_segments(dir)? {
        if f.state == NameState::Tmp {
            warn!(path = %f.path.display(), "removing interrupted journal header write");
            remove(&f.path)?;
        } else {
            segs.push(f);
        }
    }
    for w in segs.windows(2) {
        if w[0].first == w[1].first {
            return Err(JournalError::DuplicateSegment {
                dir: dir.to_path_buf(),
                seq: w[0].first,
            });
        }
    }
    let n = segs.len();
    let mut scanned = Vec::with_capacity(n);
    let mut prev_epoch = Epoch(0);
    for (i, seg) in segs.into_iter().enumerate() {
        let s = scan_file(seg, i + 1 == n, cfg)?;
        if let Some(e) = s.epoch {
            if e < prev_epoch {
                return Err(corrupt(&s.seg.path, 0, Problem::EpochBackwards));
            }
            prev_epoch = e;
        }
        scanned.push(s);
    }

    let mut sealed = Vec::new();
    let mut expected: Option<Seq> = None;
    // An unsealed segment seen but not yet known to be the last one.
    let mut unsealed: Option<Scanned> = None;
    let mut iter = scanned.into_iter();
    while let Some(mut s) = iter.next() {
        if let Some(e) = expected.filter(|&e| e != s.seg.first) {
            let Some(last) = unsealed.take() else {
                return Err(corrupt(
                    &s.seg.path,
                    0,
                    Problem::SeqGap {
                        expected: e,
                        found: s.seg.first,
                    },
                ));
            };
            // `last` lost records (and its trailer) in a power loss while later segments were
            // being written; none of their records was ever reported durable (a sync reports a
            // record durable only once every older record is fdatasync'ed). The journal ends
            // in `last`.
            let rest: Vec<Scanned> = std::iter::once(s).chain(iter).collect();
            if let Some(r) = rest.iter().find(|r| r.sealed) {
                return Err(corrupt(
                    &r.seg.path,
                    0,
                    Problem::SeqGap {
                        expected: e,
                        found: r.seg.first,
                    },
                ));
            }
            for r in &rest {
                error!(path = %r.seg.path.display(), records = r.records,
                    "dropping journal segment written after a torn one (never synced)");
                remove(&r.seg.path)?;
            }
            let last_seq = Seq(e.0 - 1);
            let active = take_active(dir, dir_file, cfg, last, &mut sealed)?;
            return Ok(Recovered {
                last_seq,
                active,
                sealed,
            });
        }
        if let Some(mut prev) = unsealed.take() {
            // It continues into `s`: complete, only its trailer was lost. Seal it now.
            match prev.epoch {
                Some(epoch) if prev.records > 0 => {
                    sealed.push(seal_now(dir, dir_file, &mut prev, epoch)?)
                }
                _ => remove(&prev.seg.path)?,
            }
        }
        expected = Some(Seq(s.seg.first.0 + s.records));
        match s.epoch {
            Some(epoch) if s.sealed => {
                if s.seg.state == NameState::Open {
                    sealed.push(finish_rename(dir, dir_file, &s, epoch)?);
                } else {
                    s.valid_len = s.file_len;
                    sealed.push(info_of(&s, epoch));
                }
            }
            _ => unsealed = Some(s),
        }
    }
    let last_seq = Seq(expected.map_or(0, |e| e.0 - 1));
    let active = match unsealed {
        Some(s) => take_active(dir, dir_file, cfg, s, &mut sealed)?,
        None => None,
    };
    Ok(Recovered {
        last_seq,
        active,
        sealed,
    })
}
