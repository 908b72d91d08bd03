//! # lifeboat-recover: instant recovery
//!
//! At failover the VM boots at the secondary region **without waiting for a copy**: each disk
//! is a [`RecoveryDisk`], an NBD [`lifeboat_nbd::BlockDevice`] served straight from the chosen
//! recovery point in the region store, whose writes go to a local *target image* and to the
//! failed-over VM's write journal, and which is *hydrated* (copied into the target image) in
//! the background. Once every chunk is local ([`RecoveryDisk::is_hydrated`]) the disk no
//! longer needs the store, and the target image is an ordinary raw image of the VM's disk.
//!
//! ## Pieces
//!
//! * **The point** ([`PointSource`]): one disk of a [`lifeboat_process::PointInTime`] — a
//!   stored point, a journal-backed one, or any instant of the CDP window — read through the
//!   store's [`lifeboat_store::DiskReader`] (index pages cached, an LRU of decoded chunks for
//!   guest reads; every chunk verified by BLAKE3), plus the chunks the journal changed since
//!   the base, built when first needed from the base's chunk and the stored journal records
//!   that `state_at` indexed by chunk (references, not data: the point's memory grows with the
//!   number of records, not with the bytes they wrote), through a small LRU of decoded
//!   segments and one of built chunks for guest reads. The journal segments must therefore
//!   stay in the store until the disk is hydrated, as the base must. Read-only and immutable,
//!   so its bytes can be read without any lock. The store's async reads run on the device's own small tokio
//!   runtime; the synchronous NBD calls wait for them on a plain channel (never entering a
//!   runtime from inside another one, whatever runtime the NBD server runs on).
//! * **The target image**: a raw sparse file of the disk's size, created on first open. It
//!   holds the bytes of every *local* chunk; what it holds elsewhere is never read.
//! * **The bitmap**: one bit per chunk (the point's chunk size, 4 MiB by default), set =
//!   *local*: the target image holds the chunk's current bytes, hydrated from the point or
//!   written by the guest. Bits are only ever set, after the chunk's bytes are written.
//! * **The write journal** ([`lifeboat_journal::Journal`], the failed-over VM's, one per VM,
//!   shared by its disks): every guest write, zero and trim is appended before it is
//!   acknowledged, as on the primary, so the VM's writes since its first boot at the
//!   secondary are replicable later (re-protect). Hydration writes are not journaled: they
//!   are the point's bytes, which the other side already has.
//!
//! ## Reads
//!
//! Chunk by chunk, with no global lock: a local chunk (consecutive ones in one `pread`) comes
//! from the target image; a chunk that is not local comes from the point (the NBD request
//! waits for one store read, milliseconds from a local directory; the LRU then serves the
//! chunk's neighbours). Reads never hydrate: only writes and the hydration write the image.
//! A read racing a
//! write of the same chunk sees either version, as NBD allows for overlapping requests in
//! flight; a read sent after a write's reply sees the write (the bit is set before the reply).
//!
//! ## Writes (WRITE, WRITE_ZEROES, TRIM)
//!
//! 1. Without any lock, read from the point the chunks the range covers only partly and that
//!    are not local (at most the first and the last): their bytes are needed for a
//!    read-modify-write. (Bits only go from clear to set, so a chunk local now stays local.)
//! 2. Take the *gate* shared (see checkpoints), then the locks of every chunk of the range in
//!    ascending order (no deadlock; writes of different chunks proceed in parallel).
//! 3. Append the record to the journal (WRITE data, or a zero/trim record). An error here
//!    fails the request with nothing applied. (An image write that fails *after* the append
//!    fails the request too, `EIO`, and leaves a record the image lacks: the next open replays
//!    it, as `JournaledDisk` does.)
//! 4. Apply it to the target image: a local chunk, or one the range covers whole, gets the
//!    range directly (contiguous ones in one `pwrite`/`fallocate`); a partly covered chunk
//!    that is not local is rebuilt whole — the point's bytes with the range applied — and
//!    written whole. Then the chunks become local.
//! 5. Release the locks and the gate; with FUA, sync the journal (group commit) before the
//!    reply. FLUSH syncs the journal: one journal for every connection, so the export
//!    advertises `CAN_MULTI_CONN`. Trims and zeroes read back as zeroes (they are journaled
//!    as such, like [`lifeboat_disk::JournaledDisk`], so points are deterministic).
//!
//! The price of chunk granularity: the first write to a chunk that is not local costs a store
//! read and a whole-chunk write (4 MiB by default), once per chunk.
//!
//! Per chunk, image writes happen under the chunk's lock in journal order, so the target image
//! is always the point plus this disk's journal records, replayed: what
//! [`lifeboat_disk::JournaledDisk`] guarantees with one per-disk order lock, here with one lock
//! per chunk. `FAST_ZERO` is refused (`ENOTSUP`) when a partly covered chunk would first have to
//! be copied from the point, or the filesystem cannot zero fast.
//!
//! **Why not wrap a `JournaledDisk`** over the target image: its order lock serializes every
//! write of the disk (here writes of different chunks run in parallel, and a write that must
//! first read a chunk from the store must not stall the others); its replay on open would
//! apply a record to a chunk that is not local yet and leave the chunk read from the point,
//! losing the write; and its applied watermark is a separate file from the bitmap, while the
//! two must be persisted together (below). Its approach is reused: journal before image,
//! FLUSH/FUA = journal sync, image made durable lazily behind a watermark written by
//! write-temp-then-rename, replay of the journal on open; and its [`lifeboat_disk::RawImage`].
//!
//! ## Hydration
//!
//! [`RecoveryDisk::hydrate`] (or [`RecoveryDisk::spawn_hydration`], a thread) walks the chunks
//! front to back, skipping local ones, with a few worker threads taking the next index from a
//! shared counter ([`HydrateConfig::in_flight`], 4: store reads, BLAKE3 checks and image writes
//! of different chunks overlap; a quick trial on 2 cores, 1 GiB half-zero point, medians of
//! 3: 0.62 s with 4, 1.17 s with 1): a zero
//! chunk of the point (`Entry::Zero`, or zeroed whole by the journal) is not read at all —
//! its range of the target image is punched (`FALLOC_FL_PUNCH_HOLE`), so the image stays
//! sparse there and the chunk is zero whatever an earlier crashed run left (so is a chunk
//! built from the journal as all zeroes); a data chunk is read, or built from its base chunk
//! and the journal (bypassing the guest LRUs), and written whole. Under the chunk's lock it checks the bit
//! again and writes only if the chunk is still not local, then sets the bit: a chunk the guest
//! wrote meanwhile is never overwritten. It checkpoints every [`HydrateConfig::checkpoint_every`]
//! and at the end; once every chunk is local it drops the point (and its caches). Progress
//! ([`Progress`]: chunks done / total, bytes, copied and zero chunks, rate, error) is returned
//! by [`RecoveryDisk::progress`] and published on a `tokio::sync::watch`
//! ([`RecoveryDisk::subscribe`]) after every chunk.
//!
//! ## Recovery state file (format version 1; all integers little-endian)
//!
//! `<image>.recovery` ([`state_path`]), next to the target image, rewritten whole by
//! write-temp-then-rename (`<image>.recovery.tmp`, fsync, rename, fsync of the directory):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `LBRECOV1` |
//! | 8 | 4 | version `1` |
//! | 12 | 4 | header length, `144` |
//! | 16 | 8 | disk size in bytes |
//! | 24 | 4 | chunk size in bytes |
//! | 28 | 4 | disk id |
//! | 32 | 8 | the recovery point's journal position (in the protected VM's journal) |
//! | 40 | 8 | *applied*: every record of this disk up to here in this recovery's journal is durably in the target image |
//! | 48 | 8 | chunk count (= ⌈size / chunk⌉) |
//! | 56 | 8 | local chunks (= bits set; checked) |
//! | 64 | 1 | VM id length *n* (1..=64) |
//! | 65 | 64 | VM id (ASCII, *n* bytes, then zeroes) |
//! | 129 | 15 | reserved, zero |
//! | 144 | ⌈count/8⌉ | bitmap: bit *i % 8* of byte *i / 8* set = chunk *i* local |
//! | end−4 | 4 | CRC-32C of everything before |
//!
//! Any mismatch (magic, version, lengths, checksum, count, padding, bits past the end) is
//! [`RecoverError::StateCorrupt`]: the target image is never trusted without its state. A
//! state written for another VM, point, disk or geometry is [`RecoverError::StateMismatch`].
//!
//! ## Checkpoints and crash safety
//!
//! [`RecoveryDisk::checkpoint`] (at the end of open, by hydration on its interval and at its
//! end, and by the caller's ticker for guest writes): take the gate exclusively just to read
//! the journal's last position `S` and snapshot the bitmap `B` — every write holds the gate
//! shared from its append until its chunks are written and marked, so every record up to `S`
//! is in the image and its chunks are in `B` — then sync the journal, `fdatasync` the image,
//! and write the state `(B, S)`. So **a chunk marked local in the state file is durable in the
//! image before the mark is** (its bytes were written before its bit was set, and the image
//! was synced after the snapshot), and so are this disk's records up to `S`.
//!
//! On open, the records of this disk after `S` are replayed in journal order, each exactly as
//! a live write (chunks not in `B` that a record covers only partly are first hydrated from
//! the point; a chunk becomes local after), then a checkpoint is taken. Why this is exact
//! after a kill -9 or a power loss at any instant:
//!
//! * A chunk in `B` holds, durably, its state after every record up to `S`; replaying the
//!   records after `S` in order rewrites each of their ranges whole, so it ends as the point
//!   plus every record (replay is idempotent on a suffix).
//! * A chunk not in `B` had no record of this disk up to `S` (its bit would have been set
//!   before the record's append, hence be in `B`). Whatever a crashed run left in its range of
//!   the image, replay rewrites it whole from the point before applying the records after `S`;
//!   if no record touches it, it is still not local and hydration rewrites it whole (data) or
//!   punches it (zero). A stale bit lost in the crash only costs a second copy.
//! * A kill -9 loses nothing that was acknowledged (journal and image are in the page cache).
//!   A power loss loses what the guest never flushed, as on a real disk (the journal's durable
//!   prefix is what is replayed); as with `JournaledDisk`, the image may then also hold some of
//!   those unflushed writes in chunks that were local at the last checkpoint — reconciling that
//!   with the other side is re-protect's job.
//!
//! On a fresh open (no state file) the target image is created (truncated to the disk size,
//! sparse), synced, and the first state written with nothing local and `S` = the journal's
//! last record: earlier records are not this recovery's. A crash before the state exists just
//! starts over. The journal must keep this disk's records after the applied position
//! ([`RecoveryDisk::applied_seq`]); a journal that ends before it, or starts after it, is
//! refused ([`RecoverError::JournalMismatch`]).
//!
//! **The store is needed only for chunks that are not local**: a reopened device
//! ([`Source::Store`]) opens the point on first need, so a hydrated disk (or one whose reads hit
//! local chunks) never touches the store, and an unreachable store fails only the requests
//! that need it (`EIO`, retried on the next one). Opening needs it only if a record to replay
//! covers part of a chunk that is not local. Until the disk is hydrated, the point (or, for a
//! journal-backed point or a CDP instant, its base and stored journal) must be kept in the
//! store: retention and commit must wait for [`RecoveryDisk::is_hydrated`].
//!
//! ## Locking summary
//!
//! | lock | held by | for |
//! |---|---|---|
//! | chunk lock (one per chunk) | writes (all their chunks, ascending), hydration (one chunk) | check-and-mark, read-modify-write, journal order per chunk |
//! | gate (`RwLock`) | writes shared (append to marked); checkpoints exclusive, briefly | a consistent `(S, B)` |
//! | checkpoint mutex | checkpoints | one at a time; last `(S, B)` written |
//! | point slot | whoever first needs the point | opening it once |
//!
//! Reads take no lock (bits are atomics; the point is immutable). Locks are always taken gate
//! then chunk locks; hydration takes only a chunk lock; nothing is held across a store read.
//!
//! ## Rate
//!
//! `bench/hydrate.sh` compares hydration of a point (half zero, half random) from a local
//! directory store with `qemu-img convert -O raw` of the same image, in the same run.

mod disk;
mod error;
mod hydrate;
mod source;
mod state;

pub use disk::{RecoveryDisk, RecoveryOptions, Source};
pub use error::RecoverError;
pub use hydrate::{HydrateConfig, Hydration, Progress};
pub use source::PointSource;
pub use state::{state_path, STATE_HEADER_LEN, STATE_MAGIC, STATE_VERSION};
