//! Storage efficiency of the region store over many recovery points (issue 3): how many bytes the
//! store keeps for POINTS stored points, against what an ideal block-level dedup + compression
//! store would need to keep every one of them.
//!
//! Runs in-process against a real local-directory store, with the real journal, shipper and
//! processor (as `crates/process/tests/common/mod.rs`):
//!
//! 1. A disk of DISK_MIB is seeded as the first point (`Processor::seed`): per 1 MiB region,
//!    half zeroes, a quarter text-like (compressible), a quarter random, regions shuffled.
//! 2. POINTS rounds. Each round the "guest" writes about ROUND_MIB: 70% as sequential extents of
//!    256 KiB..1 MiB at random 4 KiB-aligned offsets of the whole disk, 30% as 4..64 KiB writes
//!    at random 4 KiB-aligned offsets of a hot region (10% of the disk); each write is
//!    text-like or random with equal probability; plus, in some rounds, a write-zeroes of
//!    64 KiB..1 MiB. The records are appended to the journal with a crash-consistent marker,
//!    the segment is sealed and shipped, the processor cuts the point and stores it
//!    (`store_due(0)`), so every point is a stored (materialized) point.
//! 3. Reference ("unique compressed data"): a model of the disk is kept in memory; after every
//!    round the 4 KiB blocks the round touched are hashed (BLAKE3, first 16 bytes), and each
//!    distinct non-zero block, the first time it is seen in any point image (the seed included),
//!    adds its zstd level-1 size (capped at 4096: stored raw when zstd does not shrink it, as the
//!    store does). That is what an ideal 4 KiB-block dedup + compression store keeps.
//! 4. Store bytes: the sizes of every object under `chunks/`, `pages/`, `roots/` and
//!    `vms/*/points/`; journal segments (`vms/*/segments/`, the CDP window, never pruned here)
//!    are reported but not counted.
//!
//! MODE=journal follows the product's path instead (issue 3): the markers are stamped ROUND_SECS
//! apart (virtual time: the seed ROUND_SECS × POINTS before now, so that with the default 60 s
//! every point stays inside the policy's 2 h keep-all window and the reference, over all the
//! points, is what the store must keep); after each round the processor cuts the point
//! journal-backed, stores what `Processor::store_due_with(StoreRule::for_policy(policy))` says is
//! due, and `Processor::retain` (retention, rolling the base forward first) runs at the round's
//! time under the default policy (24 h retention, 1 h CDP window) with ROUND_SECS as its
//! crash-consistent interval. Store bytes then count the
//! journal segments retention keeps as well: they are what the journal-backed points are made
//! of. When retention dropped points (points further apart than the 2 h keep-all window
//! allows), the reference is also computed over the kept points alone, read back through
//! `open_point`: what an ideal store keeping the same points would keep.
//!
//! At the end, three points chosen in advance are restored (`open_point` +
//! `PointInTime::read_disk_chunks`, 256 MiB at a time) and compared with snapshots of the model, and `Store::verify`
//! must be clean; the example panics otherwise. MODE=journal also restores the newest point (the
//! furthest from its base) and two more late points, and reports for each its form and how
//! much journal it is read through.
//!
//! ```sh
//! cargo build --release -p lifeboat-process --examples
//! CHUNK_KIB=1024 target/release/examples/storage
//! ```
//!
//! Environment: MODE (stored: every point stored, as before issue 3; journal: the product's
//! path), CHUNK_KIB (4096), DISK_MIB (1024), POINTS (120), ROUND_MIB (8), ROUND_SECS (60, journal
//! mode), SEED (1), FSYNC (1: the store fsyncs every object, as by default), WORKDIR (the system
//! temp dir), HEADER (1: print the table header before the row), APP_EVERY (0: every round's
//! marker is crash-consistent; N: every Nth is app-consistent), STORE_APP (unset: the store
//! rule's default; 1 or 0: store app-consistent points or not).
//! Stdout: one markdown table row; stderr: progress and a breakdown.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_policy::ReplicationPolicy;
use lifeboat_process::{open_point, Cut, Processor, StoreRule};
use lifeboat_ship::Shipper;
use lifeboat_store::{PointRecord, Store, StoreConfig};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

const BLOCK: usize = 4096;
const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const DISK: DiskId = DiskId(0);

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: expected an integer")),
        Err(_) => default,
    }
}

/// xorshift64*: small, deterministic, good enough for workloads.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// A 4 KiB-aligned length in `lo..=hi` (both multiples of 4 KiB).
    fn blocks(&mut self, lo: usize, hi: usize) -> usize {
        self.range((lo / BLOCK) as u64, (hi / BLOCK) as u64) as usize * BLOCK
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    fn fill_random(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    /// Text-like bytes: words, numbers, punctuation and line breaks (zstd -1: about 3:1).
    fn fill_text(&mut self, buf: &mut [u8]) {
        const WORDS: &[&str] = &[
            "the",
            "of",
            "and",
            "to",
            "in",
            "a",
            "is",
            "that",
            "for",
            "it",
            "as",
            "was",
            "with",
            "be",
            "by",
            "on",
            "not",
            "he",
            "this",
            "are",
            "or",
            "his",
            "from",
            "at",
            "which",
            "but",
            "have",
            "an",
            "had",
            "they",
            "you",
            "were",
            "their",
            "one",
            "all",
            "we",
            "can",
            "her",
            "has",
            "there",
            "been",
            "if",
            "more",
            "when",
            "will",
            "would",
            "who",
            "so",
            "no",
            "error",
            "request",
            "server",
            "status",
            "user",
            "disk",
            "volume",
            "INFO",
            "WARN",
            "DEBUG",
            "connection",
            "timeout",
            "payload",
            "config",
            "value",
        ];
        let mut i = 0;
        let mut num = [0u8; 20];
        while i < buf.len() {
            let r = self.next();
            let piece: &[u8] = match r % 16 {
                0 => {
                    // A number of 1..=6 digits, then a space.
                    let digits = 1 + (r >> 4) as usize % 6;
                    let mut v = r >> 40;
                    for d in num[..digits].iter_mut().rev() {
                        *d = b'0' + (v % 10) as u8;
                        v /= 10;
                    }
                    num[digits] = b' ';
                    &num[..=digits]
                }
                1 => b".\n",
                2 => b", ",
                _ => WORDS[(r >> 8) as usize % WORDS.len()].as_bytes(),
            };
            let n = piece.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&piece[..n]);
            i += n;
            if r % 16 > 2 && i < buf.len() {
                buf[i] = b' ';
                i += 1;
            }
        }
    }
    fn fill(&mut self, buf: &mut [u8], text: bool) {
        if text {
            self.fill_text(buf)
        } else {
            self.fill_random(buf)
        }
    }
}

/// The ideal store: distinct non-zero 4 KiB blocks ever seen in a point image, and the sum of
/// their zstd level-1 sizes.
struct Reference {
    seen: HashSet<[u8; 16]>,
    bytes: u64,
    zstd: zstd::bulk::Compressor<'static>,
}

impl Reference {
    fn new() -> Self {
        Reference {
            seen: HashSet::new(),
            bytes: 0,
            zstd: zstd::bulk::Compressor::new(1).expect("zstd"),
        }
    }
    fn note_block(&mut self, block: &[u8]) {
        if block.iter().all(|b| *b == 0) {
            return;
        }
        let h = blake3::hash(block);
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.as_bytes()[..16]);
        if self.seen.insert(key) {
            let z = self.zstd.compress(block).expect("zstd").len();
            self.bytes += z.min(block.len()) as u64;
        }
    }
}

/// Object bytes by kind: (chunks, pages, roots, point records, segments, other) and counts.
#[derive(Default, Debug)]
struct StoreBytes {
    chunks: (u64, usize),
    pages: (u64, usize),
    roots: (u64, usize),
    records: (u64, usize),
    segments: (u64, usize),
    other: (u64, usize),
}

impl StoreBytes {
    async fn of(store: &Store) -> Self {
        let mut s = StoreBytes::default();
        for o in store.backend().list("").await.expect("list store") {
            let k = o.key.as_str();
            let slot = if k.starts_with("chunks/") {
                &mut s.chunks
            } else if k.starts_with("pages/") {
                &mut s.pages
            } else if k.starts_with("roots/") {
                &mut s.roots
            } else if k.starts_with("vms/") && k.contains("/points/") {
                &mut s.records
            } else if k.starts_with("vms/") && k.contains("/segments/") {
                &mut s.segments
            } else {
                &mut s.other
            };
            slot.0 += o.size;
            slot.1 += 1;
        }
        s
    }
    /// What counts against the reference: chunks, pages, roots and point records.
    fn counted(&self) -> u64 {
        self.chunks.0 + self.pages.0 + self.roots.0 + self.records.0
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / MIB as f64)
}

/// One guest operation of a round.
enum Op {
    Write {
        offset: usize,
        len: usize,
        text: bool,
    },
    Zero {
        offset: usize,
        len: usize,
    },
}

/// The operations of one round: ~`round` bytes, 70% sequential extents anywhere, 30% small
/// writes in the hot region, interleaved at random; sometimes one write-zeroes.
fn round_ops(rng: &mut Rng, disk: usize, hot: (usize, usize), round: usize) -> Vec<Op> {
    let (mut seq_bytes, mut small_bytes) = (0usize, 0usize);
    let (seq_goal, small_goal) = (round * 7 / 10, round * 3 / 10);
    let mut ops = Vec::new();
    while seq_bytes < seq_goal || small_bytes < small_goal {
        let small = if seq_bytes >= seq_goal {
            true
        } else if small_bytes >= small_goal {
            false
        } else {
            // Pick so that both kinds finish about together (by count: ~9 extents vs ~70 writes).
            rng.range(0, 9) < 8
        };
        let text = rng.coin();
        if small {
            let len = rng.blocks(4 * KIB, 64 * KIB);
            let offset =
                hot.0 + rng.range(0, ((hot.1 - hot.0 - len) / BLOCK) as u64) as usize * BLOCK;
            small_bytes += len;
            ops.push(Op::Write { offset, len, text });
        } else {
            let len = rng.blocks(256 * KIB, MIB);
            let offset = rng.range(0, ((disk - len) / BLOCK) as u64) as usize * BLOCK;
            seq_bytes += len;
            ops.push(Op::Write { offset, len, text });
        }
    }
    if rng.range(0, 3) == 0 {
        let len = rng.blocks(64 * KIB, MIB);
        let offset = rng.range(0, ((disk - len) / BLOCK) as u64) as usize * BLOCK;
        let at = rng.range(0, ops.len() as u64) as usize;
        ops.insert(at, Op::Zero { offset, len });
    }
    ops
}

/// The initial disk: per 1 MiB region, half zero, a quarter text, a quarter random, shuffled.
fn initial_disk(rng: &mut Rng, size: usize) -> Vec<u8> {
    let regions = size / MIB;
    let mut kinds: Vec<u8> = (0..regions)
        .map(|i| match i % 4 {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        })
        .collect();
    for i in (1..kinds.len()).rev() {
        let j = rng.range(0, i as u64) as usize;
        kinds.swap(i, j);
    }
    let mut disk = vec![0u8; size];
    for (r, kind) in kinds.iter().enumerate() {
        let buf = &mut disk[r * MIB..(r + 1) * MIB];
        match kind {
            1 => rng.fill_text(buf),
            2 => rng.fill_random(buf),
            _ => {}
        }
    }
    disk
}

/// The reference over the points the store kept: every distinct non-zero 4 KiB block of their
/// images, read back through `open_point` (what an ideal store keeping the same points keeps).
async fn kept_reference(store: &Store, vm: &VmId, kept: &[PointRecord], cs: usize) -> u64 {
    let mut r = Reference::new();
    for p in kept.iter().filter(|p| p.is_restorable()) {
        let pit = open_point(store, vm, p).await.expect("open a kept point");
        let size = p.disk(DISK).expect("the bench disk").size as usize;
        let all: Vec<u64> = (0..size.div_ceil(cs) as u64).collect();
        for batch in all.chunks(((256 * MIB) / cs).max(1)) {
            for chunk in pit
                .read_disk_chunks(store, DISK, batch)
                .await
                .expect("read a kept point")
            {
                for b in chunk.chunks(BLOCK) {
                    r.note_block(b);
                }
            }
        }
    }
    r.bytes
}

/// Restores `point` through `open_point` and compares every chunk with `expect`, by BLAKE3
/// hash of the whole image too; describes how it was read.
async fn check_restore(
    store: &Store,
    vm: &VmId,
    point: &PointRecord,
    expect: &[u8],
    cs: usize,
) -> String {
    let t = Instant::now();
    let pit = open_point(store, vm, point).await.expect("open point");
    let mut hasher = blake3::Hasher::new();
    let chunks = expect.len().div_ceil(cs);
    // Built in batches, each one pass over the journal segments it needs (as `lifeboat
    // restore` does): one chunk at a time would read the whole journal per chunk once it
    // outgrows the segment cache.
    let per_batch = ((256 * MIB) / cs).max(1);
    let all: Vec<u64> = (0..chunks as u64).collect();
    for batch in all.chunks(per_batch) {
        let built = pit
            .read_disk_chunks(store, DISK, batch)
            .await
            .expect("read chunks");
        for (&i, got) in batch.iter().zip(built) {
            let i = i as usize;
            let want = &expect[i * cs..((i + 1) * cs).min(expect.len())];
            hasher.update(&got);
            if got != want {
                let at = got.iter().zip(want).position(|(a, b)| a != b);
                panic!(
                    "point {}: chunk {i} differs from the model (first differing byte {at:?}, lengths {} vs {})",
                    point.id,
                    got.len(),
                    want.len()
                );
            }
        }
    }
    assert_eq!(
        hasher.finalize(),
        blake3::hash(expect),
        "point {}: image hash differs from the model",
        point.id
    );
    format!(
        "{} ({}, base {}, {} records and {} chunks since it, {:.1} s)",
        point.id,
        if point.is_journal_backed() {
            "journal-backed"
        } else {
            "stored"
        },
        pit.base.id,
        pit.records,
        pit.touched_count(),
        t.elapsed().as_secs_f64()
    )
}

#[tokio::main]
async fn main() {
    let chunk_kib = env_or("CHUNK_KIB", 4096) as usize;
    let disk_size = env_or("DISK_MIB", 1024) as usize * MIB;
    let points = env_or("POINTS", 120) as usize;
    let round = env_or("ROUND_MIB", 8) as usize * MIB;
    let seed = env_or("SEED", 1);
    let fsync = env_or("FSYNC", 1) != 0;
    let header = env_or("HEADER", 1) != 0;
    let journal_mode = match std::env::var("MODE").as_deref() {
        Ok("journal") => true,
        Ok("stored") | Err(_) => false,
        Ok(m) => panic!("MODE={m:?}: expected stored or journal"),
    };
    let round_secs = env_or("ROUND_SECS", 60);
    let app_every = env_or("APP_EVERY", 0) as usize;
    let cs = chunk_kib * KIB;
    assert!(points >= 3, "POINTS must be at least 3");
    assert!(disk_size >= 16 * MIB, "DISK_MIB must be at least 16");

    let work = match std::env::var("WORKDIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("work dir"),
        Err(_) => tempfile::tempdir().expect("work dir"),
    };
    let store = Store::open_with(
        work.path().join("store").to_str().expect("utf-8 path"),
        StoreConfig {
            chunk_size: cs as u32,
            fsync,
            // Journal mode: what retention drops is collected at once (one process, no other
            // writer), so the bytes counted are what the store keeps, not garbage in its grace
            // period.
            gc_grace: if journal_mode {
                Duration::ZERO
            } else {
                StoreConfig::default().gc_grace
            },
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let vm = VmId::new("bench").expect("vm id");
    let mut rng = Rng::new(seed);

    // Three rounds whose points are restored at the end, chosen before the run.
    let mut check_rounds = BTreeSet::new();
    while check_rounds.len() < 3 {
        check_rounds.insert(rng.range(1, points as u64) as usize);
    }
    let hot_len = (disk_size / 10) / BLOCK * BLOCK;
    let hot_start = rng.range(0, ((disk_size - hot_len) / BLOCK) as u64) as usize * BLOCK;
    let hot = (hot_start, hot_start + hot_len);
    if journal_mode {
        // The newest point (the furthest from its base) and two more late ones.
        check_rounds.extend([points, points - 1, points - points / 4]);
    }
    // Journal mode: virtual time, the seed `points` rounds before now.
    let round_dur = Duration::from_secs(round_secs);
    let t0 = SystemTime::now() - round_dur * points as u32;
    let policy = ReplicationPolicy {
        crash_consistent_interval: round_dur,
        ..ReplicationPolicy::default()
    };
    let mut rule = StoreRule::for_policy(&policy);
    if let Ok(v) = std::env::var("STORE_APP") {
        rule.store_app_consistent = v != "0";
    }
    if journal_mode {
        policy
            .validate()
            .expect("ROUND_SECS: a valid crash-consistent interval");
    }

    // 1. Seed.
    let mut model = initial_disk(&mut rng, disk_size);
    let mut reference = Reference::new();
    for b in model.chunks(BLOCK) {
        reference.note_block(b);
    }
    let seed_ref = reference.bytes;
    let img = work.path().join("disk0.img");
    std::fs::write(&img, &model).expect("write seed image");
    let started = Instant::now();
    let processor = Processor::new(store.clone(), vm.clone());
    processor
        .seed(
            &[(DISK, img.as_path())],
            Seq(0),
            Epoch(1),
            if journal_mode { t0 } else { SystemTime::now() },
        )
        .await
        .expect("seed");
    std::fs::remove_file(&img).expect("remove seed image");
    let seed_secs = started.elapsed().as_secs_f64();
    let after_seed = StoreBytes::of(&store).await;
    eprintln!(
        "seeded {} MiB in {seed_secs:.1} s: store {} MiB, reference {} MiB",
        disk_size / MIB,
        mib(after_seed.counted()),
        mib(seed_ref)
    );

    let journal = Arc::new(
        Journal::open(
            &work.path().join("journal"),
            JournalConfig::new(vm.clone(), Epoch(1)),
        )
        .expect("open journal"),
    );
    let shipper = Shipper::new(vm.clone(), journal.clone(), store.clone());

    // 2. Rounds.
    let mut written = 0u64;
    let mut zeroed = 0u64;
    let mut snapshots: Vec<(PointRecord, Vec<u8>)> = Vec::new();
    let mut last_point: Option<PointRecord> = None;
    let mut buf = vec![0u8; MIB];
    let mut touched: Vec<bool> = vec![false; disk_size / BLOCK];
    let (mut stored_points, mut dropped_points, mut deleted_segments) = (0usize, 0usize, 0usize);
    let mut rolled = 0usize;
    for r in 1..=points {
        let ops = round_ops(&mut rng, disk_size, hot, round);
        let mut blocks: Vec<usize> = Vec::new();
        for op in &ops {
            let (offset, len) = match *op {
                Op::Write { offset, len, text } => {
                    let data = &mut buf[..len];
                    rng.fill(data, text);
                    journal
                        .append_write(DISK, offset as u64, data)
                        .expect("append write");
                    model[offset..offset + len].copy_from_slice(data);
                    written += len as u64;
                    (offset, len)
                }
                Op::Zero { offset, len } => {
                    journal
                        .append_zero(DISK, offset as u64, len as u64)
                        .expect("append zero");
                    model[offset..offset + len].fill(0);
                    zeroed += len as u64;
                    (offset, len)
                }
            };
            let (first, end) = (offset / BLOCK, (offset + len).div_ceil(BLOCK));
            for (b, t) in touched[first..end].iter_mut().enumerate() {
                if !*t {
                    *t = true;
                    blocks.push(first + b);
                }
            }
        }
        let round_time = if journal_mode {
            t0 + round_dur * r as u32
        } else {
            SystemTime::now()
        };
        let kind = if app_every > 0 && r % app_every == 0 {
            CheckpointKind::AppConsistent
        } else {
            CheckpointKind::CrashConsistent
        };
        journal
            .append_checkpoint(kind, round_time)
            .expect("append marker");
        journal.seal().expect("seal");
        shipper
            .ship_once(journal.last_seq())
            .await
            .expect("ship segment");
        let cut = processor.process(Cut::AtMarkers).await.expect("process");
        assert_eq!(cut.points.len(), 1, "round {r}: one point cut");
        let point = if journal_mode {
            let stored = processor.store_due_with(&rule).await.expect("store");
            for p in &stored {
                eprintln!(
                    "round {r}: point {} stored: {} new chunks ({} MiB)",
                    p.id,
                    p.new_chunks,
                    mib(p.new_bytes)
                );
            }
            stored_points += stored.len();
            let ret = processor
                .retain(&policy, round_time)
                .await
                .expect("retention");
            for roll in &ret.rolled {
                eprintln!(
                    "round {r}: base rolled from {} to {} ({} points re-based)",
                    roll.from,
                    roll.to,
                    roll.rebase.len()
                );
            }
            rolled += ret.rolled.len();
            dropped_points += ret.dropped.len();
            deleted_segments += ret.segments_deleted;
            cut.points.into_iter().next().expect("cut point")
        } else {
            let stored = processor.store_due(Duration::ZERO).await.expect("store");
            assert_eq!(stored.len(), 1, "round {r}: one point stored");
            let point = stored.into_iter().next().expect("stored point");
            assert!(!point.is_journal_backed(), "round {r}: point stored");
            point
        };

        for b in blocks {
            touched[b] = false;
            reference.note_block(&model[b * BLOCK..(b + 1) * BLOCK]);
        }
        if check_rounds.contains(&r) && r != points {
            snapshots.push((point.clone(), model.clone()));
        }
        if r == points {
            last_point = Some(point.clone());
        }
        if journal_mode && (r % 10 == 0 || r == points) {
            eprintln!(
                "round {r}/{points}: {:.0} s, point {} ({}), {} stored so far",
                started.elapsed().as_secs_f64(),
                point.id,
                if point.is_journal_backed() {
                    "journal-backed"
                } else {
                    "stored"
                },
                stored_points
            );
        } else if r % 10 == 0 || r == points {
            eprintln!(
                "round {r}/{points}: {:.0} s, point {} added {} chunks ({} MiB)",
                started.elapsed().as_secs_f64(),
                point.id,
                point.new_chunks,
                mib(point.new_bytes)
            );
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let sb = StoreBytes::of(&store).await;

    let chain = processor.newest_chain().await.expect("chain");
    let kept = store.list_points(&vm).await.expect("list points");

    // Correctness: the points as the store has them now (a point may have been stored since).
    let t = Instant::now();
    let mut restored = Vec::new();
    let last = last_point.expect("last point");
    for (point, image) in snapshots
        .iter()
        .map(|(p, i)| (p, i.as_slice()))
        .chain([(&last, model.as_slice())])
    {
        let now = match store.get_point(&vm, &point.id).await {
            Ok(p) => p,
            // Thinned (points further apart than the 2 h keep-all window allows).
            Err(lifeboat_store::StoreError::PointNotFound { .. }) if journal_mode => {
                eprintln!("point {} was dropped by retention: not restored", point.id);
                continue;
            }
            Err(e) => panic!("point {}: {e}", point.id),
        };
        restored.push(check_restore(&store, &vm, &now, image, cs).await);
    }
    assert!(restored.len() >= 2, "the newest points are always kept");
    for r in &restored {
        eprintln!("restored byte for byte: {r}");
    }
    let report = store.verify().await.expect("verify");
    assert!(
        report.bad.is_empty(),
        "store verify found bad objects: {:?}",
        report.bad
    );
    eprintln!(
        "restored points {:?} (rounds {:?}) byte for byte; verify: {} objects, {} chunks, {} points, {} segments, none bad ({:.0} s)",
        snapshots
            .iter()
            .map(|(p, _)| p.seq)
            .chain([last.seq])
            .collect::<Vec<_>>(),
        check_rounds,
        report.objects,
        report.chunks,
        report.points,
        report.segments,
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "store: chunks {} MiB ({} objects), pages {} MiB ({}), roots {} MiB ({}), records {} MiB ({}); segments {} MiB ({}); other {} B ({})",
        mib(sb.chunks.0),
        sb.chunks.1,
        mib(sb.pages.0),
        sb.pages.1,
        mib(sb.roots.0),
        sb.roots.1,
        mib(sb.records.0),
        sb.records.1,
        mib(sb.segments.0),
        sb.segments.1,
        sb.other.0,
        sb.other.1
    );
    eprintln!(
        "guest: {} MiB written, {} MiB zeroed over {points} rounds; distinct non-zero 4 KiB blocks: {}",
        mib(written),
        mib(zeroed),
        reference.seen.len()
    );

    let added_ref = reference.bytes - seed_ref;
    if journal_mode {
        let jb = kept.iter().filter(|p| p.is_journal_backed()).count();
        eprintln!(
            "points kept {} ({} journal-backed, {} stored), stored during the run {stored_points} (besides {rolled} rolls of the base), dropped {dropped_points}; segments deleted {deleted_segments}; newest chain: {:?}",
            kept.len(),
            jb,
            kept.len() - jb,
            chain
        );
        let total = sb.counted() + sb.segments.0;
        let added = total - after_seed.counted();
        // With every point kept the reference is already theirs; else read the kept ones.
        let kept_ref = if dropped_points == 0 {
            reference.bytes
        } else {
            let t = Instant::now();
            let b = kept_reference(&store, &vm, &kept, cs).await;
            eprintln!(
                "reference over the {} kept points: {} MiB ({:.0} s)",
                kept.len(),
                mib(b),
                t.elapsed().as_secs_f64()
            );
            b
        };
        if header {
            println!("| chunk | points kept (journal-backed) | stored during the run | guest written (MiB) | unique compressed, reference (MiB) | chunks+pages+roots+records (MiB) | journal segments kept (MiB) | store total (MiB) | ratio | ratio, rounds only | reference, kept points (MiB) | ratio to it | wall (s) |");
            println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        }
        println!(
            "| {} KiB | {} ({}) | {} | {} | {} | {} | {} | {} | **{:.2}** | {:.2} | {} | **{:.2}** | {:.0} |",
            chunk_kib,
            kept.len(),
            jb,
            stored_points,
            mib(written),
            mib(reference.bytes),
            mib(sb.counted()),
            mib(sb.segments.0),
            mib(total),
            total as f64 / reference.bytes as f64,
            added as f64 / added_ref as f64,
            mib(kept_ref),
            total as f64 / kept_ref as f64,
            wall
        );
        return;
    }
    let added_store = sb.counted() - after_seed.counted();
    if header {
        println!("| chunk | points | guest written (MiB) | unique compressed, reference (MiB) | store: chunks+pages+roots+records (MiB) | ratio | ratio, rounds only | journal segments (MiB) | wall (s) |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    println!(
        "| {} KiB | {} + seed | {} | {} | {} | **{:.2}** | {:.2} | {} | {:.0} |",
        chunk_kib,
        points,
        mib(written),
        mib(reference.bytes),
        mib(sb.counted()),
        sb.counted() as f64 / reference.bytes as f64,
        added_store as f64 / added_ref as f64,
        mib(sb.segments.0),
        wall
    );
}
