//! # lifeboat-process: stored journal segments become recovery points
//!
//! Runs at the secondary region, next to its store. The store holds, per VM, the recovery
//! points already made and the journal segments shipped since ([`lifeboat_store::Store`]).
//! [`Processor::process`] turns the segments after the newest point into new points:
//!
//! 1. Start from the newest point (the *base*). Records are read in sequence order from the
//!    stored segments; records at or before the base's journal position are skipped (a segment
//!    can straddle a point), and a gap in the sequence numbers is an error: a point is never cut
//!    from an incomplete journal.
//! 2. Every write, zero or trim record is noted against the chunks it touches (trims are zeroes:
//!    points are deterministic).
//! 3. At every **checkpoint marker** in the journal a point of the marker's kind (crash- or
//!    app-consistent) is cut at the marker's position and time: each touched chunk is read from the
//!    base point, the records touching it are applied in journal order, and the chunk is stored
//!    ([`lifeboat_store::PointWriter`]: unchanged chunks and index pages are shared with the base).
//!    The new point becomes the base for what follows. The disk server appends crash-consistent
//!    markers at the policy's interval and app-consistent ones when the guest is frozen.
//! 4. With [`Cut::Latest`] ("latest": process everything received and cut a point now), a
//!    crash-consistent point is also cut at the last record received, if it is past the base.
//!
//! Every journal prefix is a crash-consistent state of the VM (one journal, one order, for all
//! its disks), so a point at any record position is a valid crash-consistent point.
//!
//! The first point of a VM comes from **initial replication**: [`Processor::seed`] stores whole
//! disk images as a point at journal position `seq`. If the images were copied while the VM kept
//! writing, the copy is fuzzy; seeding it at the position where the copy *began* and processing
//! the journal from there makes it exact, because every byte written during the copy is
//! rewritten, in order, by its journal records, and every other byte was copied unchanged.
//!
//! **Retention** ([`apply_retention`]) deletes the points the policy's thinning drops, the
//! journal segments older than the CDP window that points already cover, and then the chunks
//! nothing references any more.
//!
//! Crash safety: a point is committed record-last by the store, so a processor killed mid-way
//! leaves at most unreferenced chunks (garbage-collected later) and redoes the same work on the
//! next run, from the same base, with the same result. One processor per VM at a time (the
//! store's writer lease).

mod cdp;
mod lag;
mod processor;
mod retention;

pub use cdp::{format_utc_ms, parse_utc, state_at, PointInTime, Target};
pub use lag::{percentile, record_lags, Lags};
pub use processor::{Cut, ProcessError, ProcessReport, Processor};
pub use retention::{apply_retention, RetentionReport};
