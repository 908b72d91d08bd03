//! # lifeboat-types: the vocabulary shared by every Lifeboat component
//!
//! This crate holds the plain types that the disk server, the journal, the vault, the agents and
//! the CLI all speak. It does **no I/O** and has no async runtime: everything here is a value that
//! can be built, compared and tested in isolation.
//!
//! ## Identities and positions
//!
//! * [`VmId`]: a protected VM's identity, a short ASCII name (`[A-Za-z0-9._-]{1,64}`). It is
//!   written into every journal segment header, so a segment can never be applied to the wrong VM.
//! * [`DiskId`]: the index of a disk within its VM (0, 1, ...). One journal per VM covers all its
//!   disks in one order, which is what makes every journal prefix a crash-consistent state of the
//!   whole VM.
//! * [`Seq`]: the position of a record in a VM's journal. Sequence numbers start at 1, grow by
//!   exactly one per record and are never reused. `Seq(0)` means "before the first record".
//! * [`Epoch`]: the replication direction's generation. Failover bumps it; a store that has seen
//!   epoch N refuses segments of an older epoch (fencing).
//!
//! ## Journal records
//!
//! * [`RecordKind`]: what a journal record does to a disk (write data, zero a range, trim a range)
//!   or marks (a checkpoint).
//! * [`CheckpointKind`]: crash-consistent or app-consistent.
//!
//! Each enum has a stable one-byte wire code (`code()` / `from_code()`), frozen once released,
//! because it is written into on-disk formats.
//!
//! ## Diverged ranges
//!
//! [`Extents`]: a sorted, merged set of byte ranges of a disk (what re-protect sends).
//!
//! ## Replicated items
//!
//! [`item`]: the item state machine as pure functions — [`ItemState`], [`Operation`],
//! [`allowed_operations`], [`item::begin`] and [`item::finish`] — tested exhaustively.

use std::fmt;
use std::str::FromStr;

pub mod extents;
pub mod item;
pub use extents::Extents;
pub use item::{allowed_operations, ItemState, Operation, Outcome, Refused};

/// Errors from parsing the shared types out of untrusted text or bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TypeError {
    /// A VM id that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid VM id {0:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    InvalidVmId(String),
    /// An unknown one-byte code for a record kind.
    #[error("unknown journal record kind code {0}")]
    UnknownRecordKind(u8),
    /// An unknown one-byte code for a checkpoint kind.
    #[error("unknown checkpoint kind code {0}")]
    UnknownCheckpointKind(u8),
    /// An unknown name of a state, operation or other enumerated value.
    #[error("unknown {what} {name:?}")]
    UnknownName {
        /// What kind of value.
        what: &'static str,
        /// The name given.
        name: String,
    },
}

/// The identity of a VM (see the crate doc for the allowed characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(String);

impl VmId {
    /// Longest VM id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Checks and wraps a VM id.
    pub fn new(s: impl Into<String>) -> Result<Self, TypeError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok {
            Ok(VmId(s))
        } else {
            Err(TypeError::InvalidVmId(s))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VmId {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmId::new(s)
    }
}

/// The index of a disk within its VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DiskId(pub u32);

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disk {}", self.0)
    }
}

/// A position in a VM's journal (1-based; 0 = before the first record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A replication direction's generation (fencing token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}", self.0)
    }
}

/// What a journal record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Data written to a range of a disk.
    Write,
    /// A range of a disk set to zeroes (NBD WRITE_ZEROES).
    Zero,
    /// A range of a disk discarded (NBD TRIM). Lifeboat treats trimmed ranges as zeroes so that
    /// every recovery point is deterministic.
    Trim,
    /// A checkpoint marker: no data, marks a consistent point of the whole VM.
    Checkpoint,
}

impl RecordKind {
    /// The frozen one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            RecordKind::Write => 1,
            RecordKind::Zero => 2,
            RecordKind::Trim => 3,
            RecordKind::Checkpoint => 4,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u8) -> Result<Self, TypeError> {
        Ok(match code {
            1 => RecordKind::Write,
            2 => RecordKind::Zero,
            3 => RecordKind::Trim,
            4 => RecordKind::Checkpoint,
            other => return Err(TypeError::UnknownRecordKind(other)),
        })
    }
}

/// The consistency a checkpoint (and so a recovery point) promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointKind {
    /// A state the VM could have had after a power loss: every journal prefix is one.
    CrashConsistent,
    /// Taken with the guest's filesystems frozen (QEMU guest agent): applications see a clean state.
    AppConsistent,
}

impl CheckpointKind {
    /// The frozen one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            CheckpointKind::CrashConsistent => 1,
            CheckpointKind::AppConsistent => 2,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u8) -> Result<Self, TypeError> {
        Ok(match code {
            1 => CheckpointKind::CrashConsistent,
            2 => CheckpointKind::AppConsistent,
            other => return Err(TypeError::UnknownCheckpointKind(other)),
        })
    }
}

impl std::str::FromStr for CheckpointKind {
    type Err = String;

    /// `crash-consistent` or `app-consistent` (the [`fmt::Display`] names).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "crash-consistent" => Ok(CheckpointKind::CrashConsistent),
            "app-consistent" => Ok(CheckpointKind::AppConsistent),
            other => Err(format!(
                "unknown checkpoint kind {other:?}: use crash-consistent or app-consistent"
            )),
        }
    }
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointKind::CrashConsistent => "crash-consistent",
            CheckpointKind::AppConsistent => "app-consistent",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_are_checked() {
        assert!(VmId::new("web-01.prod_a").is_ok());
        assert!(VmId::new("").is_err());
        assert!(VmId::new("a/b").is_err());
        assert!(VmId::new("x".repeat(65)).is_err());
        assert!(VmId::new("x".repeat(64)).is_ok());
        assert_eq!(
            VmId::new("a b").unwrap_err().to_string(),
            "invalid VM id \"a b\": use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        );
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_refused() {
        for code in 0..=255u8 {
            match RecordKind::from_code(code) {
                Ok(k) => assert_eq!(k.code(), code),
                Err(e) => assert_eq!(e, TypeError::UnknownRecordKind(code)),
            }
            match CheckpointKind::from_code(code) {
                Ok(k) => assert_eq!(k.code(), code),
                Err(e) => assert_eq!(e, TypeError::UnknownCheckpointKind(code)),
            }
        }
        assert_eq!(RecordKind::from_code(1), Ok(RecordKind::Write));
        assert_eq!(RecordKind::from_code(4), Ok(RecordKind::Checkpoint));
        assert_eq!(
            CheckpointKind::from_code(2),
            Ok(CheckpointKind::AppConsistent)
        );
        for k in [
            CheckpointKind::CrashConsistent,
            CheckpointKind::AppConsistent,
        ] {
            assert_eq!(k.to_string().parse::<CheckpointKind>(), Ok(k));
        }
        assert!("app".parse::<CheckpointKind>().is_err());
    }
}
