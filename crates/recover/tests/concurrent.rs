//! Guest I/O racing hydration: two writer threads hammer disjoint 4 KiB blocks that share
//! chunks (writes, zeroes, trims, read-your-writes checks) while a throttled hydration copies
//! the same chunks. Hydration must never overwrite a guest write, every read must see the
//! thread's own last write, and the end result must be exactly the point plus the journal,
//! which must itself equal the model the threads kept.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lifeboat_nbd::{BlockDevice, ZeroFlags};
use lifeboat_recover::HydrateConfig;

const SIZE: usize = 4 << 20;
const BLOCK: usize = 4096;

fn worker(disk: &dyn BlockDevice, t: usize, mut model: Vec<u8>, ops: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64 ^ (t as u64) << 32;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    let blocks = SIZE / BLOCK;
    for k in 0..ops {
        // One of this thread's blocks (index ≡ t mod 2), a sub-range of it.
        let b = (next() % (blocks / 2)) * 2 + t;
        let start = next() % BLOCK;
        let len = 1 + next() % (BLOCK - start);
        let off = b * BLOCK + start;
        match next() % 6 {
            0 => {
                disk.write_zeroes(
                    off as u64,
                    len as u64,
                    ZeroFlags {
                        may_trim: k % 2 == 0,
                        ..Default::default()
                    },
                )
                .unwrap();
                model[off..off + len].fill(0);
            }
            1 => {
                disk.trim(off as u64, len as u64, false).unwrap();
                model[off..off + len].fill(0);
            }
            _ => {
                let data: Vec<u8> = (0..len).map(|i| (k + i + t) as u8 | 1).collect();
                disk.write_at(off as u64, &data, k % 7 == 0).unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
        }
        let mut back = vec![0u8; BLOCK];
        disk.read_at((b * BLOCK) as u64, &mut back).unwrap();
        assert!(
            back == model[b * BLOCK..(b + 1) * BLOCK],
            "thread {t} op {k}: block {b} does not read back its own writes"
        );
    }
    model
}

#[test]
fn guest_writes_race_hydration_and_win() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 99);
    let point = rt.block_on(seed(&store, dir.path(), &content));
    let journal = recovery_journal(dir.path());
    let disk = Arc::new(open_ready(&rt, &store, &point, dir.path(), journal));
    let mut watch = disk.subscribe();
    let hyd = disk
        .spawn_hydration(HydrateConfig {
            in_flight: 3,
            checkpoint_every: Duration::from_millis(20),
            max_bytes_per_sec: Some(6 << 20),
        })
        .unwrap();
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (d, m) = (disk.clone(), content.clone());
            std::thread::spawn(move || worker(d.as_ref(), t, m, 400))
        })
        .collect();
    let models: Vec<Vec<u8>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let p = hyd.join().unwrap();
    assert!(p.is_hydrated(), "{p:?}");
    assert!(disk.is_hydrated());
    assert!(
        p.chunks_copied + p.chunks_zero < p.chunks_total,
        "the guest should have made some chunks local itself: {p:?}"
    );
    assert!(watch.has_changed().unwrap_or(false) || watch.borrow().is_hydrated());
    assert!(watch.borrow_and_update().is_hydrated());

    // Merge the threads' models: each owns alternate blocks.
    let mut model = content.clone();
    for (t, m) in models.iter().enumerate() {
        for b in (t..SIZE / BLOCK).step_by(2) {
            model[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&m[b * BLOCK..(b + 1) * BLOCK]);
        }
    }
    disk.checkpoint().unwrap();
    let image = std::fs::read(target(dir.path())).unwrap();
    assert_eq!(
        hash(&image),
        hash(&model),
        "target image vs the threads' model"
    );
    assert_eq!(
        hash(&replay_model(&content, &dir.path().join("journal"))),
        hash(&model),
        "point + journal vs the threads' model"
    );
    assert_eq!(hash(&read_all(disk.as_ref())), hash(&model));
}
