//! # lifeboat-process: stored journal segments become recovery points
//!
//! Runs at the secondary region, next to its store. The store holds, per VM, the recovery
//! points already made and the journal segments shipped since ([`lifeboat_store::Store`]).
//!
//! ## Two forms of a point
//!
//! A recovery point is a journal position whose state can be read back exactly. It exists in
//! one of two forms (the same id, kind, time and position either way):
//!
//! * **journal-backed**: only its record, naming a *base* (a stored point at or before it); its
//!   data is the base plus the stored journal records after the base up to the point. Cutting
//!   one writes one small object, so points appear within one processing pass of their
//!   records reaching the store: this is what keeps the lag to a processed point under a
//!   second (bench/rpo.sh).
//! * **stored**: its own roots, index pages and chunks (shared with other points where
//!   unchanged). Reading it needs no journal.
//!
//! Most points stay journal-backed for their whole life: the journal (zstd-wrapped as stored)
//! is close to the unique data written, while storing a point rewrites every chunk its records
//! touched, whole. A point is stored only when the store rule says so (below).
//!
//! [`Processor::process`] reads the stored segments after the newest point, checks that the
//! sequence numbers run without a gap (a point is never cut from an incomplete journal) and
//! that every record lies inside a disk, and cuts a journal-backed point at every
//! **checkpoint marker** (crash-consistent at the policy's interval, app-consistent when the
//! guest was frozen) and, with [`Cut::Latest`] ("latest": process everything received and cut
//! a point now), at the last record received.
//!
//! [`Processor::store_point`] turns a journal-backed point into a stored one: from the newest
//! stored point before it, the records are indexed by the chunks they touch (as a reader does,
//! see Reading), each touched chunk is built — the base's chunk with its records applied in
//! journal order (trims are zeroes: points are deterministic) — in batches of 128 MiB, one
//! pass over the segments each, and stored once; memory is bounded however far apart the
//! points are. The record is then *replaced* by the stored form (readers of either form read
//! the same bytes). A journal-backed record is the only one the store ever overwrites: by its
//! stored form, or re-based on a newer stored point when the base rolls forward (below).
//!
//! [`Processor::store_due_with`] stores what the **store rule** ([`StoreRule`], see the `plan`
//! module) says is due: every app-consistent point if the rule says so (off by default); and
//! the newest journal-backed point when
//! indexing its journal would take a quarter of a reader's budget ([`INDEX_BUDGET`]), when
//! replaying its journal would read [`StoreRule::max_replay_factor`] (4) times what storing it
//! writes — `J ≥ 4 × S`, with `J` the stored journal bytes since its base and `S` the chunks
//! touched since the base times the store's mean stored chunk size ([`chain_due`]) — or when
//! its base is [`StoreRule::max_chain_age`] old (the retention plus an hour). The processor
//! keeps the touched chunks since its newest stored point, so asking is cheap.
//! [`Processor::store_due`]`(interval)` is that rule with `interval` as the minimum spacing; a
//! zero interval stores every point as it is cut ([`points_to_store`]).
//!
//! Otherwise the base **rolls forward** with retention ([`Processor::roll_bases`],
//! [`plan_rolls`]): when thinning drops a base, the oldest point kept after it is stored and the
//! points after it are re-based on it, so the old base and its journal go. The store holds one
//! base at the start of the kept history plus the journal since.
//!
//! Every journal prefix is a crash-consistent state of the VM (one journal, one order, for all
//! its disks), so a point at any record position is a valid crash-consistent point.
//!
//! ## Reading
//!
//! [`open_point`] reads any restorable point in either form; [`state_at`] reads any time (or
//! journal position) inside the continuous-data-protection window, to the write (see `cdp`).
//! Both give a [`PointInTime`]: a stored base plus an index, by chunk, of the journal records
//! since it (references, not data: memory grows with the number of records, bounded by
//! [`INDEX_BUDGET`]). A chunk the records touched is built when it is read — the base's chunk
//! with its records applied in journal order — from the stored segments, through a small LRU
//! of decoded segments ([`SEGMENT_CACHE_BYTES`]); so the segments must stay stored while the
//! point is read.
//!
//! ## Initial replication
//!
//! The first point of a VM comes from initial replication: [`Processor::seed`] stores whole
//! disk images as a stored point at journal position `seq`. One thread per core reads chunks
//! (not the holes of a sparse image: `SEEK_DATA`) into reused buffers and hashes them, a few
//! chunks ahead of the writer, which stores them in batches of 8 whose fsyncs run in the
//! background ([`lifeboat_store::PointWriter::set_prepared`]). If the images are copied while the
//! VM keeps writing ([`Processor::seed_copy`]), the copy is fuzzy: it is stored at the position
//! where the copy *began* (every record up to it already in the images) as an
//! **initial-copy** point with the position where the copy *ended* (`copy_end`). Processing
//! the journal from the start position makes it exact, because every byte written during the
//! copy is rewritten, in order, by its journal records, and every other byte was copied
//! unchanged — but only from `copy_end` on: no point before it is cut, the initial copy itself
//! is never restored ([`ProcessError::NotRestorable`]), and the CDP window starts at
//! `copy_end`.
//!
//! ## Retention
//!
//! [`apply_retention`] ([`Processor::retain`]) rolls the bases forward, then acts on
//! [`plan_retention`] (pure): journal-backed "latest" points only
//! inside the CDP window; ASR's thinning and the policy's retention over the other points; the
//! base of every kept journal-backed point pinned, and the journal from its base to its
//! position kept, however old (beyond the CDP window too); the journal kept from the stored
//! point the window starts from; every segment none of whose records is kept deleted (so the
//! stored journal may have holes, between the last kept point of a base and the next base:
//! readers take the run of segments they need); then the chunks nothing references are
//! collected.
//!
//! Crash safety: a journal-backed point is one create-only put; a stored point is committed
//! record-last by the store, so a processor killed mid-way leaves at most unreferenced chunks
//! (garbage-collected later) and redoes the same work on the next run, with the same result.
//! One processor per VM at a time (the store's writer lease).

mod cdp;
mod chain;
mod lag;
mod overlay;
mod plan;
mod processor;
mod retention;
mod roll;
mod seed;
#[cfg(test)]
mod synthetic;

pub use cdp::{
    format_utc_ms, open_point, parse_utc, state_at, state_at_within, Target, INDEX_BUDGET,
};
pub use lag::{percentile, record_lags, Lags};
pub use overlay::{ChunkChange, PointInTime, SegmentCacheStats, SEGMENT_CACHE_BYTES};
pub use plan::{
    app_points_to_store, chain_due, plan_retention, plan_retention_pinned, points_to_store, Chain,
    PointView, RetentionPlan, StoreReason, StoreRule, CHAIN_AGE_SLACK, DEFAULT_MAX_CHAIN_AGE,
    JOURNAL_END,
};
pub use processor::{CopyOptions, Cut, ProcessError, ProcessReport, Processor, Progress};
pub use retention::{apply_retention, RetentionReport};
pub use roll::{plan_rolls, Roll};

/// The budget of [`state_at_within`] under its old name: it bounded the materialized chunks,
/// it now bounds the index of the journal ([`INDEX_BUDGET`]).
#[deprecated(note = "use INDEX_BUDGET: the budget now bounds the index of the journal")]
pub const OVERLAY_BUDGET: u64 = INDEX_BUDGET;
