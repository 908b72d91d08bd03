//! [`RecoverError`]: every error names the object it is about (image, state file, journal,
//! recovery point).

use std::io;
use std::path::PathBuf;

use lifeboat_journal::JournalError;
use lifeboat_process::ProcessError;
use lifeboat_store::StoreError;
use lifeboat_types::{DiskId, Seq, VmId};

/// Errors opening, replaying, hydrating or checkpointing a recovery disk.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The target image could not be created, opened, read or written.
    #[error("target image {path}")]
    Image {
        /// The target image.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The recovery state file could not be read or written.
    #[error("recovery state {path}")]
    StateIo {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The recovery state file is damaged or not a recovery state file.
    #[error("recovery state {path} is damaged: {reason}; the target image cannot be trusted without it: delete both and start the recovery again")]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state file belongs to another recovery (another point, disk or geometry).
    #[error("recovery state {path} was written for {found}, not {expected}: use the target image of this recovery, or a fresh one")]
    StateMismatch {
        /// The state file.
        path: PathBuf,
        /// What the caller opened.
        expected: String,
        /// What the state file says.
        found: String,
    },
    /// The write journal could not be read, appended to or synced.
    #[error("write journal {dir} of {disk}")]
    Journal {
        /// The journal directory.
        dir: PathBuf,
        /// The disk.
        disk: DiskId,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// The journal lacks records the target image needs, or is not this recovery's journal.
    #[error("write journal {dir}: {reason} (recovery state {state} has every record up to {applied}); use the journal this recovery wrote")]
    JournalMismatch {
        /// The journal directory.
        dir: PathBuf,
        /// The state file.
        state: PathBuf,
        /// The applied position in the state.
        applied: Seq,
        /// What is wrong.
        reason: String,
    },
    /// A journal record does not fit the disk.
    #[error("journal record {seq} of {disk} ({offset}+{length}) lies outside target image {path} of {size} bytes")]
    OutOfRange {
        /// The record.
        seq: Seq,
        /// Its disk.
        disk: DiskId,
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u64,
        /// The target image.
        path: PathBuf,
        /// The disk size.
        size: u64,
    },
    /// The recovery point could not be opened or read from the region store.
    #[error("recovery point of VM {vm} at journal record {seq}, {disk}")]
    Point {
        /// The VM.
        vm: VmId,
        /// The point's journal position.
        seq: Seq,
        /// The disk.
        disk: DiskId,
        /// Why.
        #[source]
        source: Box<ProcessError>,
    },
    /// A chunk of the recovery point could not be read from the region store.
    #[error("chunk {index} of {disk} of the recovery point of VM {vm} at journal record {seq}")]
    Chunk {
        /// The VM.
        vm: VmId,
        /// The point's journal position.
        seq: Seq,
        /// The disk.
        disk: DiskId,
        /// The chunk index.
        index: u64,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// A chunk the journal changed since the point's base could not be built (its base chunk
    /// or a journal segment holding its records could not be read).
    #[error("chunk {index} of {disk} of the recovery point of VM {vm} at journal record {seq}, built from its base and the stored journal")]
    BuiltChunk {
        /// The VM.
        vm: VmId,
        /// The point's journal position.
        seq: Seq,
        /// The disk.
        disk: DiskId,
        /// The chunk index.
        index: u64,
        /// Why.
        #[source]
        source: Box<ProcessError>,
    },
    /// The recovery point has no such disk, or one this crate cannot serve.
    #[error("recovery point of VM {vm} at journal record {seq}: {reason}")]
    BadPoint {
        /// The VM.
        vm: String,
        /// The point's journal position.
        seq: Seq,
        /// What is wrong.
        reason: String,
    },
    /// The recovery point is needed (a chunk is not local yet) but the device was opened
    /// without a way to reach it, or its runtime is gone.
    #[error("target image {path}: {reason}")]
    Unavailable {
        /// The target image.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
}

impl RecoverError {
    /// This error as an `io::Error` for an NBD reply (EIO unless the cause says otherwise),
    /// with the whole chain as its message.
    pub fn into_io(self) -> io::Error {
        let mut msg = self.to_string();
        let mut src = std::error::Error::source(&self);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        let kind = match &self {
            RecoverError::Image { source, .. } | RecoverError::StateIo { source, .. } => {
                source.kind()
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, msg)
    }
}
