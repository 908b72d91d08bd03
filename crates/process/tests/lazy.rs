//! A point in time far from its base is read lazily: the journal since the base is indexed by
//! chunk (references, not data), and each touched chunk is built when read. Here the journal
//! touches every chunk of a disk, many times, through many small segments; the point is read
//! with a memory budget far below what materializing the changed chunks took, and every byte
//! is checked against a model disk (BLAKE3 of each whole disk).

mod common;

use std::time::SystemTime;

use lifeboat_process::{state_at_within, ChunkChange, PointInTime, ProcessError, Target};
use lifeboat_store::Store;
use lifeboat_types::{CheckpointKind, DiskId, Seq, VmId};

use common::CHUNK;

/// Disk 0: 64 chunks, all touched. Disk 1: 16 chunks, writes only in its first 12.
const SIZES: [usize; 2] = [4 << 20, 1 << 20];
/// Disk 1's last chunks are never written.
const DISK1_WRITTEN: usize = 12 * CHUNK as usize;
/// The index budget the point is read with. Materializing the changed chunks took 64 KiB per
/// touched chunk (and the records' data on top): 64 chunks alone are 4 MiB.
const BUDGET: u64 = 64 << 10;

fn vm() -> VmId {
    VmId::new("lazy-1").unwrap()
}

/// xorshift64*: reproducible pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8).collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    /// (position, model disks there), the last one at the last record.
    snapshots: Vec<(Seq, Vec<Vec<u8>>)>,
    segments: usize,
}

async fn setup() -> Setup {
    let mut model: Vec<Vec<u8>> = SIZES
        .iter()
        .enumerate()
        .map(|(d, &n)| bytes(n, 0xb0 + d as u64))
        .collect();
    // Small segments: the journal spans dozens of them.
    let common::Rig {
        dir,
        store,
        processor: _,
        journal,
        shipper,
    } = common::rig(&vm(), &model, 48 << 10).await;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut snapshots = Vec::new();
    let cs = CHUNK as usize;
    for n in 0..600u64 {
        let disk = if rng.below(4) == 0 { 1 } else { 0 };
        let limit = if disk == 1 { DISK1_WRITTEN } else { SIZES[0] };
        let m = &mut model[disk];
        let d = DiskId(disk as u32);
        let pick = rng.below(20);
        let seq = match pick {
            0..=12 => {
                // Small writes, many straddling a chunk boundary.
                let len = 1 + rng.below(20_000) as usize;
                let off = rng.below((limit - len) as u64) as usize;
                let data = bytes(len, n);
                m[off..off + len].copy_from_slice(&data);
                journal.append_write(d, off as u64, &data).unwrap()
            }
            13 => {
                // A whole chunk written: what came before it no longer matters.
                let c = rng.below((limit / cs) as u64) as usize;
                let data = bytes(cs, n ^ 0x55);
                m[c * cs..(c + 1) * cs].copy_from_slice(&data);
                journal.append_write(d, (c * cs) as u64, &data).unwrap()
            }
            14 | 15 => {
                let len = 1 + rng.below(150_000) as usize;
                let off = rng.below((limit - len) as u64) as usize;
                m[off..off + len].fill(0);
                journal.append_zero(d, off as u64, len as u64).unwrap()
            }
            16 | 17 => {
                let len = 1 + rng.below(150_000) as usize;
                let off = rng.below((limit - len) as u64) as usize;
                m[off..off + len].fill(0);
                journal.append_trim(d, off as u64, len as u64).unwrap()
            }
            _ => journal
                .append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())
                .unwrap(),
        };
        if n % 150 == 149 {
            snapshots.push((seq, model.clone()));
        }
    }
    // Every chunk of disk 0 touched, a little.
    for c in 0..SIZES[0] / cs {
        let off = c * cs + 17 + c * 100;
        let data = bytes(300, 0xc0 + c as u64);
        model[0][off..off + 300].copy_from_slice(&data);
        journal.append_write(DiskId(0), off as u64, &data).unwrap();
    }
    // Chunks 3 and 4 zeroed whole, chunk 10 trimmed whole, chunk 20 zeroed whole then written.
    model[0][3 * cs..5 * cs].fill(0);
    journal
        .append_zero(DiskId(0), (3 * cs) as u64, (2 * cs) as u64)
        .unwrap();
    model[0][10 * cs..11 * cs].fill(0);
    journal
        .append_trim(DiskId(0), (10 * cs) as u64, cs as u64)
        .unwrap();
    model[0][20 * cs..21 * cs].fill(0);
    journal
        .append_zero(DiskId(0), (20 * cs) as u64, cs as u64)
        .unwrap();
    let data = bytes(10, 0xee);
    model[0][20 * cs + 5..20 * cs + 15].copy_from_slice(&data);
    let seq = journal
        .append_write(DiskId(0), (20 * cs + 5) as u64, &data)
        .unwrap();
    snapshots.push((seq, model.clone()));
    journal.seal().unwrap();
    shipper.ship_once(journal.last_seq()).await.unwrap();
    let segments = store.list_segments(&vm()).await.unwrap().len();
    Setup {
        _dir: dir,
        store,
        snapshots,
        segments,
    }
}

fn chunks(disk: usize) -> u64 {
    (SIZES[disk] as u64).div_ceil(u64::from(CHUNK))
}

/// Compares a disk read back with the model: BLAKE3 of the whole disk, and on a mismatch the
/// first chunk that differs.
fn same(got: &[u8], want: &[u8], what: &str) {
    if blake3::hash(got) == blake3::hash(want) {
        return;
    }
    let cs = CHUNK as usize;
    let first = (0..want.len().div_ceil(cs)).find(|&i| {
        let r = i * cs..((i + 1) * cs).min(want.len());
        got.get(r.clone()) != Some(&want[r])
    });
    panic!(
        "{what}: {} bytes read, {} expected; first differing chunk {first:?}",
        got.len(),
        want.len()
    );
}

/// Every disk of `pit` read chunk by chunk, checked against `model`; `each` runs after every
/// chunk.
async fn check(store: &Store, pit: &PointInTime, model: &[Vec<u8>], what: &str, each: impl Fn()) {
    for (d, want) in model.iter().enumerate() {
        let mut got = Vec::with_capacity(want.len());
        for i in 0..chunks(d) {
            got.extend(
                pit.read_disk_chunk(store, DiskId(d as u32), i)
                    .await
                    .unwrap(),
            );
            each();
        }
        same(&got, want, &format!("{what}, disk {d}"));
    }
}

#[tokio::test]
async fn a_point_touching_every_chunk_is_read_within_a_budget_materializing_never_fit() {
    let s = setup().await;
    assert!(s.segments >= 20, "{} segments", s.segments);
    let (last, model) = s.snapshots.last().unwrap();
    let pit = state_at_within(&s.store, &vm(), Target::Seq(*last), BUDGET)
        .await
        .unwrap();
    assert_eq!(pit.seq, *last);
    assert_eq!(pit.base.seq(), Seq(0), "the seed is the only stored point");
    assert!(pit.records > 600);
    // Every chunk of disk 0 touched; the old design needed a whole chunk of memory for each.
    assert_eq!(pit.touched_on(DiskId(0)).count() as u64, chunks(0));
    assert!(pit.touched_count() as u64 * u64::from(CHUNK) > 16 * BUDGET);
    assert!(pit.index_bytes() <= BUDGET, "{}", pit.index_bytes());
    // Disk 1's last chunks are the base's.
    let on1: Vec<u64> = pit.touched_on(DiskId(1)).collect();
    assert!(!on1.is_empty() && on1.iter().all(|&i| i < 12), "{on1:?}");
    assert_eq!(pit.chunk_change(DiskId(1), 15), ChunkChange::Unchanged);
    assert!(!pit.is_touched(DiskId(1), 15));
    assert!(pit.is_touched(DiskId(0), 0));
    // Zeroed whole: known without reading; zeroed then written: built.
    for c in [3, 4, 10] {
        assert_eq!(pit.chunk_change(DiskId(0), c), ChunkChange::Zeroed, "{c}");
    }
    assert_eq!(pit.chunk_change(DiskId(0), 20), ChunkChange::Changed);
    assert_eq!(pit.chunk_change(DiskId(0), 0), ChunkChange::Changed);
    assert_eq!(
        pit.touched().count(),
        pit.touched_count(),
        "touched() and touched_count() agree"
    );

    // Indexing read each segment once and kept them all (they fit the default cache): building
    // every chunk reads none again.
    let indexed = pit.segment_cache();
    assert_eq!(indexed.reads as usize, s.segments);
    check(&s.store, &pit, model, "the last record", || {}).await;
    let after = pit.segment_cache();
    assert_eq!(after.reads, indexed.reads, "{after:?}");
    assert!(after.hits > 0 && after.held <= after.limit, "{after:?}");

    // In one pass: the same bytes.
    for (d, want) in model.iter().enumerate() {
        let all: Vec<u64> = (0..chunks(d)).collect();
        let got = pit
            .read_disk_chunks(&s.store, DiskId(d as u32), &all)
            .await
            .unwrap()
            .concat();
        same(&got, want, &format!("read_disk_chunks, disk {d}"));
    }

    // Earlier positions.
    for (seq, model) in &s.snapshots {
        let pit = state_at_within(&s.store, &vm(), Target::Seq(*seq), BUDGET)
            .await
            .unwrap();
        check(&s.store, &pit, model, &format!("record {seq}"), || {}).await;
    }

    // Below the index's own size: refused, naming the base.
    let e = state_at_within(&s.store, &vm(), Target::Seq(*last), 4 << 10)
        .await
        .unwrap_err();
    assert!(matches!(e, ProcessError::TooFarFromBase { .. }), "{e:?}");
    assert!(e.to_string().contains("to index the journal"), "{e}");
}

#[tokio::test]
async fn the_segment_cache_stays_within_its_bound() {
    let s = setup().await;
    let (last, model) = s.snapshots.last().unwrap();
    let pit = state_at_within(&s.store, &vm(), Target::Seq(*last), BUDGET)
        .await
        .unwrap();
    // Room for two or three decoded segments (48 KiB, plus one record past it).
    let limit = 200 << 10;
    pit.set_segment_cache_limit(limit);
    let st = pit.segment_cache();
    assert!(st.held <= limit && st.limit == limit, "{st:?}");
    assert!(st.segments < s.segments, "{st:?}");
    let peak = std::sync::atomic::AtomicU64::new(0);
    // A clone shares the cache.
    let twin = pit.clone();
    check(&s.store, &twin, model, "a 200 KiB segment cache", || {
        let st = pit.segment_cache();
        assert!(st.held <= limit, "{st:?}");
        peak.fetch_max(st.held, std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    let st = pit.segment_cache();
    assert!(
        st.reads as usize > s.segments,
        "a small cache reads segments again: {st:?}"
    );
    assert!(peak.into_inner() > 0);
    assert!(
        st.hits > 0,
        "neighbouring chunks reuse the cached segments: {st:?}"
    );

    // No cache at all: nothing held, the same bytes.
    pit.set_segment_cache_limit(0);
    assert_eq!(pit.segment_cache().held, 0);
    check(&s.store, &pit, model, "no segment cache", || {
        assert_eq!(pit.segment_cache().held, 0);
        assert_eq!(pit.segment_cache().segments, 0);
    })
    .await;
}
