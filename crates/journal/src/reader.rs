//! Reading a journal directory in order: [`read_records`] and [`replay`].

use std::fs::File;
use std::io::{self, BufReader, Read, Take};
use std::path::{Path, PathBuf};

use lifeboat_types::{Epoch, Seq, VmId};
use tracing::debug;

use crate::error::{FormatError, JournalError, Problem};
use crate::files::{self, NameState, SegFile};
use crate::format::{Item, ScanError, Scanner};
use crate::Record;

type FileScanner = Scanner<Take<BufReader<File>>>;

/// The segment being read.
struct Current {
    scanner: FileScanner,
    path: PathBuf,
    /// Named sealed: damage is an error, not a torn tail.
    sealed: bool,
}

/// Iterator over a journal directory's records, in sequence order (see [`read_records`]).
pub struct Records {
    dir: PathBuf,
    files: std::vec::IntoIter<SegFile>,
    current: Option<Current>,
    from: Seq,
    /// The sequence number the next segment must start at (after the first one).
    expected: Option<Seq>,
    vm: Option<VmId>,
    epoch: Epoch,
    done: bool,
}

/// Reads the records of the journal in `dir` in order, starting at `from` (inclusive; `Seq(0)`
/// means from the oldest record still there). Whole segments before `from` are skipped by their
/// first sequence number. Sealed segments are checked strictly; an unsealed segment ends at its
/// first incomplete or damaged record (a torn tail, or a record being appended right now), so the
/// reader is usable while a [`crate::Journal`] appends in the same directory: it reads what is
/// there when each file is opened. Asking for records that were already removed is an error.
pub fn read_records(dir: &Path, from: Seq) -> Result<Records, JournalError> {
    let mut segs: Vec<SegFile> = Vec::new();
    for f in files::list_segments(dir)? {
        match f.state {
            NameState::Tmp => continue,
            // A listing racing a seal's rename may show both names; the sealed one wins.
            _ if segs.last().is_some_and(|l| l.first == f.first) => {
                segs.pop();
            }
            _ => {}
        }
        segs.push(f);
    }
    // Skip segments entirely before `from`: those followed by a segment starting at or before it.
    let skip = segs.windows(2).take_while(|w| w[1].first <= from).count();
    segs.drain(..skip);
    if let Some(first) = segs.first() {
        if from.0 > 0 && first.first > from {
            return Err(JournalError::Removed {
                dir: dir.to_path_buf(),
                wanted: from,
                first: first.first,
            });
        }
    }
    Ok(Records {
        dir: dir.to_path_buf(),
        files: segs.into_iter(),
        current: None,
        from,
        expected: None,
        vm: None,
        epoch: Epoch(0),
        done: false,
    })
}

impl Records {
    fn open_next(&mut self) -> Result<bool, JournalError> {
        let Some(seg) = self.files.next() else {
            return Ok(false);
        };
        let (file, path, state) = match File::open(&seg.path) {
            Ok(f) => (f, seg.path, seg.state),
            // Sealed (renamed) since the directory was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound && seg.state == NameState::Open => {
                let sealed = files::seg_path(&self.dir, seg.first, NameState::Sealed);
                match File::open(&sealed) {
                    Ok(f) => (f, sealed, NameState::Sealed),
                    Err(_) => return Err(JournalError::io(&seg.path, e)),
                }
            }
            Err(e) => return Err(JournalError::io(&seg.path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| JournalError::io(&path, e))?
            .len();
        // Only sealed names are strict; a `.open` file ends at its trailer or first bad record.
        let sealed = state == NameState::Sealed;
        let reader = BufReader::with_capacity(256 * 1024, file).take(len);
        let scanner = match Scanner::new(reader, len) {
            Ok(s) => s,
            Err(ScanError::Io(e)) => return Err(JournalError::io(&path, e)),
            // The last, unsealed segment's header is being written right now (or is torn and
            // `Journal::open` will rewrite it): it holds no records.
            Err(ScanError::Format(e)) if !sealed && self.files.len() == 0 => {
                debug!(path = %path.display(), problem = %e.problem, "journal segment without header");
                return Ok(false);
            }
            Err(ScanError::Format(e)) => return Err(JournalError::corrupt(&path, e)),
        };
        let h = &scanner.header;
        let bad = |problem| JournalError::corrupt(&path, FormatError { offset: 0, problem });
        if h.first_seq != seg.first {
            return Err(bad(Problem::NameMismatch(h.first_seq)));
        }
        if let Some(expected) = self.expected.filter(|&e| e != h.first_seq) {
            return Err(bad(Problem::SeqGap {
                expected,
                found: h.first_seq,
            }));
        }
        if self.vm.as_ref().is_some_and(|vm| *vm != h.vm) {
            return Err(bad(Problem::MixedVms));
        }
        if h.epoch < self.epoch {
            return Err(bad(Problem::EpochBackwards));
        }
        self.vm = Some(h.vm.clone());
        self.epoch = h.epoch;
        self.expected = Some(h.first_seq);
        self.current = Some(Current {
            scanner,
            path,
            sealed,
        });
        Ok(true)
    }

    fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        loop {
            let Some(cur) = self.current.as_mut() else {
                if !self.open_next()? {
                    return Ok(None);
                }
                continue;
            };
            let keep = cur.scanner.next_seq >= self.from;
            match cur.scanner.next_item(keep) {
                Ok(Item::Record(r)) => {
                    self.expected = Some(r.seq.next());
                    if keep {
                        return Ok(Some(r));
                    }
                }
                Ok(Item::Trailer) => self.current = None,
                Ok(Item::End) if cur.sealed => {
                    let e = FormatError {
                        offset: cur.scanner.pos,
                        problem: Problem::NotSealed,
                    };
                    return Err(JournalError::corrupt(&cur.path, e));
                }
                Ok(Item::End) => self.current = None,
                Err(ScanError::Io(e)) => return Err(JournalError::io(&cur.path, e)),
                Err(ScanError::Format(e)) if cur.sealed => {
                    return Err(JournalError::corrupt(&cur.path, e));
                }
                Err(ScanError::Format(e)) => {
                    // Torn tail (or a record being written): the segment ends here. A later
                    // segment must continue exactly, which `open_next` checks.
                    debug!(path = %cur.path.display(), offset = e.offset, "end of unsealed segment");
                    self.current = None;
                }
            }
        }
    }
}

impl Iterator for Records {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Calls `apply` on every record of the journal in `dir` from `from` on, in order; stops at the
/// first error. Returns the last sequence number applied (`None` if there was none).
pub fn replay<E, F>(dir: &Path, from: Seq, mut apply: F) -> Result<Option<Seq>, E>
where
    E: From<JournalError>,
    F: FnMut(&Record) -> Result<(), E>,
{
    let mut last = None;
    for r in read_records(dir, from)? {
        let r = r?;
        apply(&r)?;
        last = Some(r.seq);
    }
    Ok(last)
}
