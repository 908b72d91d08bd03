//! Errors of the journal. Each names the object it is about (directory, file, byte offset, sequence
//! number); the underlying cause, if any, is the error's `source()` and is not repeated in its
//! message.

use std::io;
use std::path::PathBuf;

use lifeboat_types::{Epoch, Seq, VmId};

/// What is wrong with a segment's bytes (the offset is carried by the error that wraps this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The bytes end inside a header, record or trailer.
    #[error("the data ends inside a {0}")]
    Truncated(&'static str),
    /// The segment does not start with the segment magic.
    #[error("not a Lifeboat journal segment (bad magic)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("unsupported journal format version {0}")]
    UnsupportedVersion(u32),
    /// The segment header's checksum does not match.
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    /// The segment header's VM id is not a valid VM id.
    #[error("segment header has an invalid VM id")]
    BadVmId,
    /// A segment header whose first sequence number is 0 or absurdly large (>= 2^63).
    #[error("segment header has an invalid first sequence number")]
    BadFirstSeq,
    /// Neither a record nor a trailer starts here.
    #[error("no record starts here (bad record magic)")]
    BadRecordMagic,
    /// A record whose checksum does not match its header and data.
    #[error("record checksum mismatch")]
    RecordChecksum,
    /// A trailer whose checksum does not match.
    #[error("segment trailer checksum mismatch")]
    TrailerChecksum,
    /// An unknown record kind code.
    #[error("unknown record kind code {0}")]
    UnknownKind(u8),
    /// An unknown checkpoint kind code.
    #[error("unknown checkpoint kind code {0}")]
    UnknownCheckpointKind(u8),
    /// A record announcing more data than the format allows.
    #[error("record data length {0} is over the limit")]
    DataTooLong(u64),
    /// A record whose lengths are inconsistent with its kind.
    #[error("record lengths do not fit its kind")]
    LengthMismatch,
    /// A record whose range `offset + length` overflows.
    #[error("record range overflows")]
    RangeOverflow,
    /// Reserved bytes that are not zero.
    #[error("reserved bytes are not zero")]
    Reserved,
    /// A record (or segment) whose sequence number does not continue the previous one.
    #[error("sequence gap: expected {expected}, found {found}")]
    SeqGap {
        /// The sequence number that should come next.
        expected: Seq,
        /// The one found.
        found: Seq,
    },
    /// A trailer that does not agree with the records before it.
    #[error("segment trailer does not match its records")]
    TrailerMismatch,
    /// Bytes after the trailer.
    #[error("bytes after the segment trailer")]
    TrailingBytes,
    /// A segment that has no trailer where a sealed one was required.
    #[error("segment is not sealed (no trailer)")]
    NotSealed,
    /// A segment whose header's first sequence number differs from its file name.
    #[error("header's first sequence number {0} does not match the file name")]
    NameMismatch(Seq),
    /// A segment whose epoch is older than the segment before it.
    #[error("segment epoch goes backwards")]
    EpochBackwards,
    /// A segment written for another VM than the segments before it.
    #[error("segment belongs to another VM than the rest of the journal")]
    MixedVms,
}

/// A format problem at a byte offset of a segment (returned by the byte-level parsers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed journal segment at byte {offset}")]
pub struct FormatError {
    /// Offset of the header, record or trailer that is wrong.
    pub offset: u64,
    /// What is wrong.
    #[source]
    pub problem: Problem,
}

/// Errors of [`crate::Journal`] and the readers.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on a journal file or directory.
    #[error("journal I/O failed on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Damage in a segment that must be complete: a sealed segment, a segment header, or records
    /// that cannot be a torn tail. Never dropped silently.
    #[error("corrupt journal segment {path} at byte {offset}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the damaged header, record or trailer.
        offset: u64,
        /// What is wrong.
        #[source]
        problem: Problem,
    },
    /// A segment given as bytes (not a file) that is malformed.
    #[error(transparent)]
    Malformed(#[from] FormatError),
    /// The journal directory holds segments of another VM.
    #[error("journal segment {path} belongs to VM {found:?}, not to {expected}")]
    WrongVm {
        /// The segment file.
        path: PathBuf,
        /// The VM id in its header.
        found: String,
        /// The VM this journal was opened for.
        expected: VmId,
    },
    /// The journal was written at a newer epoch than ours: this side has been failed over and
    /// must not write (fencing).
    #[error("journal segment {path} has {found}, newer than this writer's {ours}: fenced")]
    Fenced {
        /// The segment file.
        path: PathBuf,
        /// The epoch in its header.
        found: Epoch,
        /// The epoch of the configuration.
        ours: Epoch,
    },
    /// Another `Journal` (in this or another process) has the directory open.
    /// [`crate::Journal::hold_writes`] while another cut holds them.
    #[error("journal in {0}: writes are already held for another consistency cut")]
    HoldBusy(PathBuf),
    /// [`crate::Journal::checkpoint_and_release`] after the hold expired or was released.
    #[error("journal in {0}: the hold of writes expired before the cut's marker (cut abandoned)")]
    HoldExpired(PathBuf),
    #[error("journal in {0} is already open by another writer")]
    Locked(PathBuf),
    /// A file named `seg-*` that is not a journal file name.
    #[error("unexpected file {0} in the journal directory (the journal owns every seg-* file)")]
    UnknownFile(PathBuf),
    /// Two segment files with the same first sequence number.
    #[error("two journal segments start at {seq} in {dir}")]
    DuplicateSegment {
        /// The journal directory.
        dir: PathBuf,
        /// The first sequence number they share.
        seq: Seq,
    },
    /// Records were asked for that are no longer in the journal (removed after shipping).
    #[error("journal in {dir} no longer holds {wanted}: it starts at {first}")]
    Removed {
        /// The journal directory.
        dir: PathBuf,
        /// The first sequence number asked for.
        wanted: Seq,
        /// The first one it holds.
        first: Seq,
    },
    /// A write longer than the per-record limit.
    #[error("journal record of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The length asked for.
        len: u64,
        /// [`crate::MAX_RECORD_DATA`].
        max: u64,
    },
    /// A range whose end overflows 2^64.
    #[error("range at offset {offset} with length {len} overflows")]
    RangeOverflow {
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u64,
    },
    /// A record's time before its segment's creation time or more than `u32::MAX` milliseconds
    /// (about 49.7 days) after it (not representable in the format).
    #[error("record time is outside its segment's time range (creation time + 0..2^32 ms)")]
    RecordTime,
    /// A checkpoint time before 1970 or after 2554 (not representable in the format).
    #[error("checkpoint time is outside 1970..2554")]
    BadTime,
    /// An earlier write or fdatasync failed; the journal refuses all further work because the
    /// kernel may have dropped the unsynced data (reopen it to recover what is on disk).
    #[error("journal in {0} failed earlier and must be reopened")]
    Failed(PathBuf),
}

impl JournalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        JournalError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, e: FormatError) -> Self {
        JournalError::Corrupt {
            path: path.into(),
            offset: e.offset,
            problem: e.problem,
        }
    }
}
