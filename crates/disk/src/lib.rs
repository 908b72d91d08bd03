//! # lifeboat-disk: a VM disk whose every write is journaled before it is acknowledged
//!
//! [`JournaledDisk`] is what the agent's disk server exports to QEMU over NBD (it implements
//! [`lifeboat_nbd::BlockDevice`]). It joins two things:
//!
//! * the VM's **write journal** ([`lifeboat_journal::Journal`], one per VM, shared by all its
//!   disks, one order), and
//! * the disk's **raw image file** ([`RawImage`]), which the guest reads from.
//!
//! ## The write path
//!
//! For WRITE, WRITE_ZEROES and TRIM, under the disk's *order lock*:
//!
//! 1. append the record to the journal (one `writev`; in the page cache, so it survives a kill -9
//!    of the process), then
//! 2. apply it to the image (`pwrite`, or `fallocate` for zeroes and trims).
//!
//! The lock makes the image see a disk's records in exactly the journal's order, so the image is
//! always the replay of the journal (overlapping writes from several connections can not be applied
//! in a different order than they were journaled). The reply is sent after both steps. With FUA,
//! and for FLUSH, the journal is made durable (`fdatasync`, group commit) before the reply: the
//! journal, not the image, is what makes an acknowledged-and-flushed write durable, so the image is
//! written back lazily. FLUSH on any connection covers every connection's acknowledged writes (one
//! journal), so the export advertises `CAN_MULTI_CONN`.
//!
//! Trims are journaled and applied as zeroes (a hole): every recovery point is deterministic.
//!
//! ## The applied watermark and replay on start
//!
//! `applied-disk<N>` in the journal directory (see [`applied`]) records a sequence number `S` such
//! that every record of disk N up to `S` is durably in the image. It is advanced by
//! [`JournaledDisk::persist_applied`] (on a timer and at a clean stop): read the last appended
//! sequence number under the order lock, make the journal durable, `fdatasync` the image, then write
//! the watermark by write-temp-then-rename. On open, every record of the disk after `S` is replayed
//! onto the image in order (replay is idempotent: replaying a suffix of records onto an image that
//! already holds some of them ends in the same bytes), then the watermark is advanced.
//!
//! After a kill -9 the page cache still holds both journal and image, so nothing is lost. After a
//! host crash (power loss) the journal's durable prefix is what counts: writes never flushed by the
//! guest may be lost, as on a real disk; the image may also hold some of them (written back by the
//! kernel) — reconciling that with the secondary region is re-protect's job (a later issue).
//!
//! ## Errors
//!
//! [`DiskError`] names the image or journal directory; NBD requests get errno-style
//! [`std::io::Error`]s via the [`lifeboat_nbd::BlockDevice`] mapping.

pub mod applied;
mod disk;
mod image;

pub use disk::{replay_onto, DiskError, DiskOptions, JournaledDisk, ReplayStats};
pub use image::RawImage;
