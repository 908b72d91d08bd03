//! The store's error type.

use lifeboat_types::{Epoch, VmId};

/// What is wrong with an object's bytes (the `source` of [`StoreError::Corrupt`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The object is shorter than its header or than the lengths its header announces.
    #[error("truncated: {0}")]
    Truncated(&'static str),
    /// The object does not start with the expected magic bytes.
    #[error("bad magic: not a {0}")]
    BadMagic(&'static str),
    /// A format version this build does not know.
    #[error("unknown format version {0}")]
    UnknownVersion(u32),
    /// A field holds a value outside its allowed range.
    #[error("invalid {field}: {value}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value, as text.
        value: String,
    },
    /// The content does not hash to the id it is stored under (or announces).
    #[error("checksum mismatch: content hashes to {actual}, expected {expected}")]
    HashMismatch {
        /// The id the object should have.
        expected: String,
        /// The BLAKE3 of what was read.
        actual: String,
    },
    /// zstd refused the payload (damaged, or larger than the allowed chunk size).
    #[error("compressed payload does not decode within {limit} bytes")]
    Decompress {
        /// The decompressed-size limit that applied.
        limit: usize,
    },
    /// A JSON record that does not parse or is not of the expected kind.
    #[error("bad record: {0}")]
    Json(String),
    /// Bytes after the end of the encoded content.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Errors of the region store. Every message names the object key, VM or point concerned; the
/// underlying cause (if any) is the error's `source`, not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A store URL that cannot be used.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A URL scheme whose backend was not compiled in.
    #[error(
        "store URL {url:?}: built without the {feature} feature: rebuild with --features {feature}"
    )]
    FeatureMissing {
        /// The URL as given.
        url: String,
        /// The cargo feature of `lifeboat-store` that enables it.
        feature: &'static str,
    },
    /// Creating the local store directory failed.
    #[error("cannot create store directory {path}")]
    CreateDir {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Removing a local directory's leftover staging files failed.
    #[error("cleaning staging files under store directory {path}")]
    Staging {
        /// The directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A local directory's own I/O failed (an unsynced put, a sync).
    #[error("store {op} of {path} failed")]
    Io {
        /// The operation (`put`, `fsync`).
        op: &'static str,
        /// The object key, or the file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The object does not exist.
    #[error("store object {key} not found")]
    NotFound {
        /// The object key.
        key: String,
    },
    /// A backend operation failed (network, permissions, disk...).
    #[error("store {op} of {key} failed")]
    Backend {
        /// The operation (`put`, `get`, `list`, ...).
        op: &'static str,
        /// The object key (or prefix, for a listing).
        key: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },
    /// An object whose bytes are damaged or do not match its key: never used as data.
    #[error("store object {key} is corrupt")]
    Corrupt {
        /// The object key.
        key: String,
        /// What is wrong.
        #[source]
        problem: FormatError,
    },
    /// A segment of an epoch older than the store's: the VM failed over (fencing).
    #[error(
        "VM {vm} has failed over: the store is at {store_epoch} and refuses a segment of \
         {segment_epoch}; this host must stop replicating {vm}"
    )]
    Fenced {
        /// The VM.
        vm: VmId,
        /// The segment's epoch.
        segment_epoch: Epoch,
        /// The highest epoch the store has seen for the VM.
        store_epoch: Epoch,
    },
    /// A journal segment that does not parse as a sealed segment.
    #[error("segment {key} of VM {vm} is not a valid sealed journal segment")]
    InvalidSegment {
        /// The VM.
        vm: VmId,
        /// The key it was (to be) stored under.
        key: String,
        /// The journal's parse error.
        #[source]
        source: lifeboat_journal::JournalError,
    },
    /// A segment whose header or range does not match what it is stored (or offered) as.
    #[error("segment {key} of VM {vm} does not match: {reason}")]
    SegmentMismatch {
        /// The VM.
        vm: VmId,
        /// The segment key.
        key: String,
        /// What differs.
        reason: String,
    },
    /// A different segment is already stored under the same key.
    #[error("segment {key} is already stored with different content")]
    SegmentConflict {
        /// The segment key.
        key: String,
    },
    /// An attempt to lower a VM's epoch.
    #[error("VM {vm} is at {current}: cannot set it back to {requested}")]
    EpochRegression {
        /// The VM.
        vm: VmId,
        /// The store's epoch for the VM.
        current: Epoch,
        /// The epoch asked for.
        requested: Epoch,
    },
    /// A point with this id already exists.
    #[error("recovery point {id} of VM {vm} already exists")]
    PointExists {
        /// The VM.
        vm: VmId,
        /// The point id.
        id: String,
    },
    /// A journal-backed point read through its roots, which are its base's.
    #[error("recovery point {id} of VM {vm} is journal-backed (point {base} plus journal records): read it through the journal, not its roots")]
    JournalBacked {
        /// The VM.
        vm: VmId,
        /// The point id.
        id: String,
        /// Its base point.
        base: String,
    },
    /// Another garbage collection holds the store's GC lock.
    #[error("another garbage collection of this store is running (lock {key}, {age_secs} s old): wait for it to finish")]
    GcRunning {
        /// The lock's key.
        key: String,
        /// Its age.
        age_secs: u64,
    },
    /// No such point.
    #[error("recovery point {id} of VM {vm} not found")]
    PointNotFound {
        /// The VM.
        vm: VmId,
        /// The point id.
        id: String,
    },
    /// A point that does not hold the disk asked for.
    #[error("recovery point {id} of VM {vm} has no {disk}")]
    NoSuchDisk {
        /// The VM.
        vm: String,
        /// The point id.
        id: String,
        /// The disk.
        disk: lifeboat_types::DiskId,
    },
    /// An argument outside what the store accepts (a chunk index past the disk's end, a chunk
    /// of the wrong length, a bad point id...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl StoreError {
    pub(crate) fn corrupt(key: impl Into<String>, problem: FormatError) -> Self {
        StoreError::Corrupt {
            key: key.into(),
            problem,
        }
    }

    pub(crate) fn backend(
        op: &'static str,
        key: impl Into<String>,
        e: object_store::Error,
    ) -> Self {
        let key = key.into();
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { key },
            source => StoreError::Backend { op, key, source },
        }
    }

    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
