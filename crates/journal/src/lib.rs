//! # lifeboat-journal: the per-VM write journal
//!
//! Every write a protected VM makes to any of its disks is appended to the VM's journal before
//! the disk server acknowledges it. One journal per VM, covering all its disks in one order, makes
//! every prefix of the journal a crash-consistent state of the whole VM. Sealed segments of the
//! journal are what the shipper sends to the secondary region.
//!
//! ## Files
//!
//! A journal is a directory of *segments*, each holding the records of a contiguous range of
//! sequence numbers. The journal owns exactly the files named `seg-*` in it and ignores every
//! other file (the disk layer keeps its `applied` watermarks next to them).
//!
//! | name                          | meaning                                                    |
//! |-------------------------------|------------------------------------------------------------|
//! | `seg-<first seq:020>.open`    | the active segment (appended to), or one whose seal a crash interrupted |
//! | `seg-<first seq:020>.lbj`     | a sealed segment: complete, trailer written, fdatasync'ed   |
//! | `seg-<first seq:020>.tmp`     | a header being written durably; removed on open             |
//!
//! `<first seq>` is the first record's sequence number, zero-padded to 20 digits so that names
//! sort in journal order. Any other `seg-*` name is an error on open.
//!
//! ## On-disk format (version 1)
//!
//! All integers are little-endian. Checksums are CRC-32C (Castagnoli; the `crc32c` crate, which
//! uses the SSE4.2/ARMv8 instructions). A segment is a header, zero or more records, and, once
//! sealed, a trailer; nothing else, no padding.
//!
//! **Segment header** (128 bytes, at offset 0):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! | 0      | 8    | magic `LBJOURNL`                                            |
//! | 8      | 4    | format version, `1`                                         |
//! | 12     | 4    | header length, `128`                                        |
//! | 16     | 8    | epoch                                                       |
//! | 24     | 8    | first sequence number (`1 <= first < 2^63`; equals the file name's) |
//! | 32     | 8    | creation time, nanoseconds since 1970-01-01 UTC (records' times count from it) |
//! | 40     | 1    | VM id length *n* (1..=64)                                   |
//! | 41     | 64   | VM id (ASCII, *n* bytes, then zeroes)                       |
//! | 105    | 19   | reserved, zero                                              |
//! | 124    | 4    | CRC-32C of bytes 0..124                                     |
//!
//! **Record** (48-byte header, then `data length` bytes of data):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! | 0      | 4    | magic `LBJR`                                                |
//! | 4      | 4    | CRC-32C of the data followed by header bytes 8..48          |
//! | 8      | 8    | sequence number                                             |
//! | 16     | 4    | disk id (0 for a checkpoint)                                |
//! | 20     | 1    | kind: 1 write, 2 zero, 3 trim, 4 checkpoint ([`RecordKind::code`]) |
//! | 21     | 1    | checkpoint kind: 1 crash-, 2 app-consistent; 0 for other kinds |
//! | 22     | 2    | reserved, zero                                              |
//! | 24     | 8    | disk offset in bytes; for a checkpoint, its time in ns since 1970 |
//! | 32     | 8    | length of the disk range in bytes (0 for a checkpoint)      |
//! | 40     | 4    | data length: equals the range length for a write, 0 otherwise (at most [`MAX_RECORD_DATA`], 64 MiB) |
//! | 44     | 4    | append time: milliseconds after the segment header's creation time (u32) |
//!
//! A record's time is the appender's clock when it appended the record (one `SystemTime::now()`
//! per append, taken under the append lock), in whole milliseconds after the segment's creation
//! time: `time = created + ms`. The appender keeps times non-decreasing within a segment (a
//! clock set back repeats the previous record's time) and starts a new segment before the
//! offset would overflow 2^32 ms (about 49.7 days; segments are sealed after seconds anyway).
//! For a checkpoint the time of the consistent point itself is at offset 24, in nanoseconds;
//! offset 44 holds its append time like any record's.
//!
//! The checksum covers the data *first* so that the appender computes the data's part before
//! taking the append lock and folds in the 40 header bytes (which hold the sequence number) under
//! it. `offset + length` must not overflow.
//!
//! **Trailer** (32 bytes; seals the segment and must end the file):
//!
//! | offset | size | field                                                       |
//! |-------:|-----:|-------------------------------------------------------------|
//! | 0      | 4    | magic `LBJE`                                                |
//! | 4      | 4    | CRC-32C of bytes 8..32                                      |
//! | 8      | 8    | last sequence number in the segment                         |
//! | 16     | 8    | number of records in the segment                            |
//! | 24     | 8    | offset of this trailer (= file length - 32)                 |
//!
//! A sealed segment is self-describing: [`parse_segment`] accepts only complete ones, so the
//! shipper and the store can check a segment's bytes on their own. The format tests in
//! `format.rs` pin these bytes; changing them needs a new version number.
//!
//! ## Invariants
//!
//! * Sequence numbers start at 1 and grow by one per record, across segments and restarts; a
//!   segment starts at the sequence number after the previous one's last. A gap is an error on
//!   open and on read.
//! * Every segment of a directory has the same VM id (checked against [`JournalConfig::vm`] on
//!   open), and epochs never decrease from one segment to the next.
//! * At most one segment is being appended to. Sealed segments are never written again; they are
//!   only deleted, oldest first, by [`Journal::remove_sealed_through`], which always leaves the
//!   newest segment file in place (creating an empty one durably if needed) so the next sequence
//!   number survives a restart.
//!
//! ## Writing, locking and group commit
//!
//! [`Journal`] is `Send + Sync` and meant to be shared behind an `Arc` by concurrent NBD
//! connections.
//!
//! * **Append** ([`Journal::append_write`] etc.): the data's CRC is computed without any lock;
//!   under the append lock the record header is encoded and written together with the data by
//!   one `writev(2)` (the data is not copied), the sequence number is published, and that is all.
//!   When `append_*` returns the record is in the kernel's page cache, so it survives a kill -9
//!   of the process; it is *not* yet durable against power loss. A segment that reaches
//!   [`JournalConfig::segment_max_bytes`] gets its trailer right there; its fdatasync and rename
//!   are left to the next [`Journal::seal_if_due`]/[`Journal::seal`] so that an append never
//!   waits for the disk (unless several closed segments are waiting).
//! * **Sync** ([`Journal::sync`], for NBD FLUSH and FUA): makes every record appended before the
//!   call durable. The caller notes the last sequence number; if a sync already covered it, it
//!   returns at once; if a sync is running, it waits for that one and checks again; otherwise it
//!   runs one: under the append lock it only snapshots which files hold unsynced records, then
//!   fdatasyncs them (oldest first) and, if a segment was created since, the directory, with the
//!   append lock released. So concurrent flushes share one fdatasync and appends continue while
//!   it runs. [`Journal::fdatasync_count`] counts the calls.
//! * **Seal**: write the trailer, fdatasync, rename `.open` to `.lbj`, fsync the directory,
//!   strictly in segment order (a separate lifecycle lock serializes seals and removals).
//! * **Failure**: if a write cannot be undone or an fdatasync fails, the kernel may have dropped
//!   dirty pages, so no later fsync could be trusted: the journal refuses all further work
//!   ([`JournalError::Failed`]) until it is reopened, which re-reads what is really on disk.
//! * A journal directory is `flock`ed exclusively while a [`Journal`] has it open.
//! * **Holding writes for a multi-VM cut**: [`Journal::hold_writes`] makes every write, zero
//!   and trim wait in its append (markers pass) until [`Journal::checkpoint_and_release`]
//!   appends the cut's marker and releases them, or the hold's deadline passes (then the marker
//!   is refused: [`JournalError::HoldExpired`]). A coordinator that holds every member's journal
//!   before it appends any marker gets a cut with no write that causally follows a write it
//!   lacks (the argument is in the `gate` module).
//!
//! ## Recovery and the crash-safety argument
//!
//! [`Journal::open`] reads every segment in order and applies these rules:
//!
//! 1. A segment named sealed (`.lbj`) must be perfect, trailer included: any damage is
//!    [`JournalError::Corrupt`] with the file and byte offset, never dropped. A `.open` segment
//!    whose scan ends at a valid trailer was sealed when a crash interrupted its rename: the
//!    rename is finished.
//! 2. The last `.open` segment ends at its first incomplete or damaged record: the *torn tail*.
//!    The file is truncated there and fdatasync'ed, and the drop is logged. A torn tail can only
//!    hold records that no sync reported durable: a sync fdatasyncs the whole file. (Kill -9
//!    cannot tear anything: every record reached the page cache whole, by one `writev`.)
//! 3. A damaged header in the last `.open` segment means it was created but never synced (a
//!    sync would have made the header durable with its first record): it is rewritten empty.
//! 4. An unsealed segment that is not the last lost its trailer in a power loss during a seal.
//!    If the next segment continues its sequence numbers it is sealed now. If not, it lost
//!    records too, and then no record of the later (unsealed) segments was ever reported
//!    durable: a sync reports a record durable only once every older record is fdatasync'ed.
//!    They are deleted (logged as errors) and the journal ends in this segment, which stays the
//!    active one. Any other gap is an error.
//! 5. VM id mismatch, an epoch newer than the configuration's (fenced), or an epoch going
//!    backwards are errors. An active segment of an older epoch is sealed, so that new records
//!    are written in segments of the new epoch.
//! 6. The active segment and the directory are fsync'ed, so [`Journal::durable_seq`] starts at
//!    [`Journal::last_seq`].
//!
//! File creations and renames are made durable by fsyncing the directory: a seal fsyncs it after
//! the rename; a new segment's directory entry is fsync'ed by the first sync that covers one of
//! its records; a header that must survive on its own (the empty segment that carries the next
//! sequence number) is written to `.tmp`, fdatasync'ed, renamed and the directory fsync'ed.
//!
//! ## Reading
//!
//! [`read_records`] iterates over a directory's records from a sequence number on, also while a
//! [`Journal`] appends to it; [`replay`] applies them with a closure; [`parse_segment`] checks
//! and decodes one sealed segment held in memory (as shipped). Parsers validate every length
//! before allocating and never panic on arbitrary bytes (fuzzed by `fuzz/journal_parse`).

mod error;
mod files;
mod format;
mod gate;
mod journal;
mod reader;
mod recover;

use std::time::SystemTime;

pub use error::{FormatError, JournalError, Problem};
pub use format::{
    encode_record, encode_segment, parse_segment, SegmentHeader, Trailer, FORMAT_VERSION,
    MAX_RECORD_DATA, RECORD_HEADER_LEN, RECORD_MAGIC, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
    TRAILER_LEN, TRAILER_MAGIC,
};
pub use journal::{Journal, JournalConfig, SegmentInfo};
pub use lifeboat_types::{CheckpointKind, DiskId, Epoch, RecordKind, Seq, VmId};
pub use reader::{read_records, replay, Records};

/// One journal record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its position in the journal.
    pub seq: Seq,
    /// The disk it applies to (`DiskId(0)` for a checkpoint).
    pub disk: DiskId,
    /// What it does.
    pub kind: RecordKind,
    /// Byte offset on the disk (0 for a checkpoint).
    pub offset: u64,
    /// Length of the disk range in bytes (0 for a checkpoint).
    pub length: u64,
    /// The written data (`Write` only; empty otherwise).
    pub data: Vec<u8>,
    /// When it was appended (the appender's `SystemTime::now()`), in whole milliseconds: stored
    /// as milliseconds after its segment's creation time. Non-decreasing along a journal written
    /// by [`Journal`] (unless the clock was set back between two segments).
    pub time: SystemTime,
    /// The marker (`Checkpoint` only).
    pub checkpoint: Option<Checkpoint>,
}

/// A checkpoint marker: the state after every earlier record is a consistent point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Crash- or app-consistent.
    pub kind: CheckpointKind,
    /// When it was taken (nanosecond resolution).
    pub time: SystemTime,
}

/// Sends and Syncs: the journal is shared between NBD connections.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Journal>();
};
