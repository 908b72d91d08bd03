//! # lifeboat-store: the region store
//!
//! The recovery-point store of one region: content-addressed chunks, a small tree of manifests
//! per disk and point, the VM's journal segments for the recent window, and the epoch that
//! fences a failed-over primary. It sits on the `object_store` crate behind a narrow
//! [`Backend`] trait: a local directory by default (`file:///abs/path` or a plain path, created
//! if missing), `memory://` for tests, `s3://bucket/prefix` (cargo feature `s3`) and
//! `az://container/prefix` (feature `azure`); see [`open_url`]. [`conformance::run`] is the
//! suite every backend must pass (run on the local directory and the in-memory store).
//!
//! ## Key layout
//!
//! | key                                              | what                                   |
//! |--------------------------------------------------|----------------------------------------|
//! | `chunks/<2 hex>/<64 hex>`                        | a chunk; id = BLAKE3 of its plain data |
//! | `pages/<2 hex>/<64 hex>`                         | an index page; id = BLAKE3 of its bytes |
//! | `roots/<2 hex>/<64 hex>`                         | a disk's root manifest; id = BLAKE3 of its bytes |
//! | `vms/<vm>/points/<seq:020>-<crash\|app>.json`    | a recovery point record (JSON)         |
//! | `vms/<vm>/segments/<first:020>-<last:020>.lbj`   | a sealed journal segment (maybe zstd-wrapped) |
//! | `vms/<vm>/epochs/<epoch:020>`                    | an epoch the VM reached (JSON; the highest counts) |
//! | `vms/<vm>/writer-lease`                          | the VM's in-flight point writer (JSON) |
//! | `gc/lock`                                        | a garbage collection is running (JSON) |
//!
//! The 2-hex shard keeps directories small on a local filesystem. Point ids sort by journal
//! position, so the newest point is the last key.
//!
//! ## Formats (all integers little-endian; see [`mod@format`])
//!
//! * **Chunk**: 52-byte header — magic `LBCHUNK1`, version `1` (u16), compression (u8: 0 none,
//!   1 zstd level 1), reserved (u8), plain length (u32), payload length (u32), BLAKE3 of the
//!   plain data (32) — then the payload. zstd is skipped when it does not shrink the data,
//!   or when none of eight 8 KiB samples spread over the chunk shrinks by 3% (random data: no
//!   full compression pass is spent on it). Reading checks magic, version, lengths, decompresses into at most the
//!   chunk's length *as the disk's root says* (never trusting the header for the allocation),
//!   and checks the BLAKE3 against the header and the key: any mismatch is
//!   [`StoreError::Corrupt`] naming the key; bad data is never returned. **All-zero chunks are
//!   never stored**: the page entry says "zero".
//! * **Index page**: magic `LBIPAGE1`, version `1` (u32), entry count (u32, ≤ 65536; 1024 by
//!   default), then per entry a tag (0 zero, 1 chunk) and for a chunk its 32-byte id.
//! * **Root**: magic `LBROOT_1`, version `1` (u32), disk size (u64), chunk size (u32, a multiple
//!   of 4 KiB, ≤ 64 MiB), entries per page (u32), page count (u32, must equal
//!   ⌈⌈size/chunk⌉/entries⌉), reserved (u32), then the 32-byte page ids.
//! * **Point record** ([`PointRecord`], JSON): `"format": "lifeboat-point"`, `"version": 1`,
//!   id, VM, time (ns since 1970), kind (`crash-consistent`/`app-consistent`), journal position
//!   `seq`, `epoch`, `disks: [{disk, root, size}]`, `disks_total` (how many disks the VM had
//!   when the point was cut: a disk that joined later is absent from older points, shown as
//!   "1 of 2 disks"), `new_chunks`/`new_bytes` (what this point added), `cut_ns` (when the
//!   record was first committed), `origin` (`marker`, `latest` or `initial-copy`), and, for an
//!   initial copy taken while the VM wrote, `copy_end` (the journal position from which it
//!   plus the journal is consistent). A **journal-backed** point has `base`: the id of an
//!   older stored point; its data is that point plus the stored journal records up to `seq`
//!   (its `disks` repeat the base's roots, and [`Store::disk_reader`] refuses it). It is
//!   committed with [`Store::put_journal_point`] (one object) and later replaced by its stored
//!   form ([`PointWriter::commit_stored`]): the one record the store ever overwrites, and only
//!   while it is journal-backed.
//! * **Segments** are the journal's own format (`lifeboat_journal::parse_segment`), stored as
//!   they are or, when zstd saves at least 3%, wrapped: magic `LBSEGZ01`, version `1` (u32),
//!   reserved (u32), plain length (u64, at most 1 GiB), then the zstd payload
//!   ([`format::encode_stored_segment`]). Reading unwraps it within the announced length and
//!   then checks the segment itself (header, every record's CRC).
//!
//! Pages and roots are content-addressed too, so points share unchanged pages, and identical
//! pages (a zero disk's) are stored once. A point that changes one chunk of a disk adds exactly
//! one chunk, one page, one root and one record.
//!
//! ## Write order, and why readers never see a partial point
//!
//! A [`PointWriter`] starts from a base point's roots (or adds zero disks), stores each changed
//! chunk as it is set, and on [`PointWriter::commit`] stores the changed index pages, then the
//! roots, then the point record, with a create-only put (a stored point is never replaced; a
//! journal-backed record may be, by its stored form ([`PointWriter::commit_stored`]) or by a
//! re-based one ([`Store::rebase_journal_point`]), each reading the same bytes). Every put
//! is atomic (whole object or nothing: `LocalFileSystem` stages `<key>#<n>` and renames or
//! links it, `InMemory` swaps under a lock, S3/Azure PUTs are atomic). Readers find points only
//! through their records, and a record is written only after everything it references exists,
//! so a crash at any step leaves either a complete point or unreferenced objects (collected by
//! GC). Local directories fsync every object and its directory by default.
//!
//! Bulk copies ([`PointWriter::set_prepared`], initial replication) put chunk objects
//! *unsynced* ([`Backend::put_unsynced`]: visible at once, durable only once a
//! [`Backend::sync`] names them; a local directory starts writing them back at once, makes a
//! batch durable with one `syncfs` of its filesystem once the batch's data is written, and drops
//! them from its page cache then) and sync each batch in the background while the next
//! is read. Before it writes
//! the first page, the writer waits for every one of those syncs and syncs every chunk it found
//! already stored (another writer may have put it unsynced and died), so the record still only
//! names durable objects: a power cut at any step loses no object of a committed point
//! (`tests/durability.rs` cuts the power at every step of a seed). Into a local directory, an
//! initial copy streams each incompressible data chunk straight from the image into its
//! object in 256 KiB pieces that stay in the CPU's cache ([`ChunkStager`], `stage.rs`: the
//! same object bytes, published create-only like any put, synced with its batch); chunks that
//! would compress go through memory as before.
//!
//! ## Segments and fencing
//!
//! [`Store::put_segment`] parses the segment (a sealed segment, CRCs checked), checks its
//! header's VM, epoch and first sequence number and its last sequence number against the key,
//! then compares its epoch with the VM's epoch (the highest of its `epochs/` objects): older →
//! [`StoreError::Fenced`] (the VM failed over; that host must stop replicating); newer → that
//! epoch's object is created. The segment is put create-only: the same segment again is
//! [`SegmentPut::AlreadyStored`] (no duplicate effect, so shipping can retry after any crash);
//! different bytes under the same key are a [`StoreError::SegmentConflict`]. After writing,
//! the epoch is read again: a put that raced with a failover's epoch raise (it checked the
//! epoch before the raise, its object appeared after) is reported [`StoreError::Fenced`], so
//! the source keeps it in its spool, but the object is **not** taken back: the failover's
//! processing may already have read it into a point, which would then read a hole. A segment
//! that starts at or before the last record already stored under other keys is refused before
//! it is written ([`StoreError::SegmentMismatch`]): two versions of the same records never
//! coexist, and no segment is ever written and deleted again (a processor could read it in
//! between).
//!
//! Epochs are create-only objects (`epochs/<n>`), never rewritten: [`Store::bump_epoch`] needs
//! no compare-and-swap, and of two failovers racing to the same epoch exactly one learns it
//! raised it.
//!
//! ## Garbage collection (and why it never deletes what a point needs)
//!
//! [`Store::gc`] takes the store's **GC lock** (`gc/lock`, create-only; refreshed while it
//! runs; a lock older than `gc_lock_ttl` is a killed collector's and is taken over), then lists
//! the live writer leases: if there is one, it sweeps nothing (the report says `deferred`).
//! Otherwise it lists the point records; marks every root, page and chunk they reach; and
//! deletes unmarked chunks, pages and roots older than `now − grace` (default 1 h), re-checking
//! each object's age right before deleting it. It stops with an error, before deleting
//! anything, if a point or an object it references cannot be read (a broken point is for the
//! operator to delete).
//!
//! * A point writer puts its lease (`vms/<vm>/writer-lease`) **before** it looks at any
//!   object, then waits while the GC lock is held; GC puts its lock **before** it lists the
//!   leases. With linearizable puts, heads and lists (local directories, S3, Azure), one of
//!   the two sees the other: either the writer waits until the sweep is over, or GC sweeps
//!   nothing while the writer lives. So a sweep never runs beside a writer that might reuse an
//!   old unreferenced object (content addressing makes such reuse normal), and the old
//!   check-then-delete race is closed. The writer refreshes its lease every `lease_ttl / 4`
//!   and deletes it after its record is written; a killed writer's lease expires after
//!   `lease_ttl` (default 1 h), until when GC defers.
//! * Objects of committed points are marked; a point committed before the lock was taken is
//!   in the listing, and none is committed during a sweep (no writer runs). A journal-backed
//!   point ([`Store::put_journal_point`]) writes only a record naming its base's roots, which
//!   the base (kept by retention while it is a base) marks.
//! * The grace period covers lease-less tools and clock skew: GC compares its clock with the
//!   backend's modification times, so their clocks must agree to well within it. A writer
//!   still rewrites an object it reuses that is older than its start, so that its age protects
//!   it from a collector that does not take the lock (an older version).
//!
//! [`Store::verify`] re-reads and re-hashes every object (chunks decoded, pages and roots hashed
//! and decoded, segments parsed, records parsed) and checks that every point's references exist
//! and are good (for a journal-backed point also its base and stored segments covering every
//! record up to it); it returns every bad object with its key and the reason.
//!
//! ## Concurrency assumptions
//!
//! One point writer per VM at a time (the processor of that VM); segments of a VM come from one
//! shipper. Readers, verify and GC may run concurrently with writers. Different VMs are
//! independent. The overlap check on segments keeps the last stored record per VM in memory
//! (one listing per VM and `Store` value), so it assumes one shipper per VM.
//!
//! ## Chunk size (measured)
//!
//! `cargo run --release -p lifeboat-store --example chunk_size -- 1024 /var/tmp`: a 1 GiB image,
//! half zeroes and half random, into a local-directory store (fsync on), then 1% of its 4 KiB
//! blocks changed uniformly at random. Three runs on the shared 2-core machine, median:
//!
//! | chunk | full point | store size | objects | 1% blocks changed: chunks rewritten, bytes added |
//! |------:|-----------:|-----------:|--------:|------------------------------------------|
//! | 1 MiB | 284 MB/s   | 512.0 MiB  | 515     | 941 of 1024, 464 MiB                     |
//! | 4 MiB | 554 MB/s   | 512.0 MiB  | 131     | 256 of 256, 507 MiB                      |
//!
//! 4 MiB chunks store about twice as fast (a quarter of the objects and fsyncs; on S3, a quarter
//! of the PUTs), and zero detection and dedup are as good (the zero half costs nothing either
//! way). Uniformly scattered 1% changes touch nearly every chunk at either size, so 1 MiB saves
//! only 8% there; clustered guest writes favour neither much. **Default: 4 MiB**
//! ([`DEFAULT_CHUNK_SIZE`], as Proxmox Backup Server), configurable per store
//! ([`StoreConfig::chunk_size`]); a disk keeps the chunk size it was created with.

mod backend;
mod bulk;
mod divergence;
mod error;
pub mod format;
mod gc;
mod pins;
mod reader;
mod stage;
mod store;
mod writer;

pub use backend::{
    conformance, open_url, Backend, ObjectBackend, ObjectInfo, OpenOptions, PutMode, PutOutcome,
};
pub use bulk::{ChunkBuf, ChunkPool};
pub use divergence::{divergence_key, DivergenceRecord, DIVERGENCE_FORMAT};
pub use error::{FormatError, Result, StoreError};
pub use format::{Entry, ObjectId, PointDisk, PointOrigin, PointRecord, Root};
pub use gc::{BadObject, GcReport, VerifyReport, CLOCK_MARGIN};
pub use pins::{PinRecord, PIN_FORMAT};
pub use reader::DiskReader;
pub use stage::ChunkStager;
pub use store::{
    choose_point, epoch_key, is_time_choice, lease_key, parse_point_id, point_id, point_key,
    segment_key, SegmentPut, SegmentRef, Store, StoreConfig, DEFAULT_CHUNK_SIZE,
    DEFAULT_PAGE_ENTRIES,
};
pub use writer::{PointMeta, PointWriter, PreparedChunk};
