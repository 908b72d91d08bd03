//! Re-protect's resync primitive, `RecoveryDisk::rewrite`: the ranges that diverged are
//! re-journaled as they are now, so that *another* copy of the disk — the recovery point plus
//! different writes made elsewhere (the old source after the point) — becomes this disk exactly
//! once the records after the resync's start are replayed over it (checked by hash of the whole
//! disk). A range whose chunks are not local is refused.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use lifeboat_journal::read_records;
use lifeboat_nbd::{BlockDevice, ZeroFlags};
use lifeboat_recover::HydrateConfig;
use lifeboat_types::{Extents, RecordKind, Seq};

const SIZE: usize = 3 << 20;

#[test]
fn rewritten_ranges_turn_the_other_copy_into_this_disk() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 11);
    let point = rt.block_on(seed(&store, dir.path(), &content));
    let rdir = dir.path().join("rec");
    std::fs::create_dir_all(&rdir).unwrap();
    let journal = recovery_journal(&rdir);
    let disk = open_ready(&rt, &store, &point, &rdir, journal.clone());

    // Not hydrated yet: a rewrite of a chunk that is not local is refused.
    let e = disk.rewrite(0, 4096).unwrap_err().to_string();
    assert!(e.contains("not local"), "{e}");
    disk.hydrate(&HydrateConfig::default(), &AtomicBool::new(false))
        .unwrap();

    // The VM writes here (some of it zeroes) ...
    let mut ours = Extents::new();
    for k in 0..40u64 {
        let off = (k * 77_777) % (SIZE as u64 - 9000);
        let len = 1 + (k * 3331) % 9000;
        if k % 5 == 0 {
            disk.write_zeroes(off, len, ZeroFlags::default()).unwrap();
        } else {
            disk.write_at(off, &lifeboat_testkit::random_bytes(len as usize, k), false)
                .unwrap();
        }
        ours.insert(off, len);
    }
    // ... while the other copy got other writes after the point.
    let mut other = content.clone();
    let mut theirs = Extents::new();
    for k in 0..25u64 {
        let off = ((k * 123_457) % (SIZE as u64 - 5000)) as usize;
        let len = 1 + (k as usize * 777) % 5000;
        other[off..off + len].copy_from_slice(&lifeboat_testkit::random_bytes(len, 1000 + k));
        theirs.insert(off as u64, len as u64);
    }
    let p0 = journal.last_seq();
    let diverged = ours.union(&theirs);
    for (off, len) in diverged.pieces(1 << 20) {
        disk.rewrite(off, len).unwrap();
    }
    // The guest goes on writing after the resync: those records follow in order.
    disk.write_at(100, &[9u8; 300], false).unwrap();
    journal.sync().unwrap();

    let now = read_all(&disk);
    let rebuilt = replay_model_after(&other, &rdir.join("journal"), p0);
    assert_eq!(
        hash(&rebuilt),
        hash(&now),
        "the other copy + records after p0"
    );
    // Without the rewrites it would not be (the test can fail).
    let plain = replay_model_after(&other, &rdir.join("journal"), journal.last_seq());
    assert_ne!(hash(&plain), hash(&now));
    // All-zero ranges are journaled as zeroes, not as data.
    let zero_len = 4096u64;
    disk.write_zeroes(2 << 20, zero_len, ZeroFlags::default())
        .unwrap();
    let before = journal.last_seq();
    let seq = disk.rewrite(2 << 20, zero_len).unwrap();
    assert_eq!(seq, before.next());
    let last = read_records(&rdir.join("journal"), Seq(0))
        .unwrap()
        .map(|r| r.unwrap())
        .last()
        .unwrap();
    assert_eq!((last.kind, last.data.len()), (RecordKind::Zero, 0));
    // Outside the disk: refused.
    assert!(disk.rewrite(SIZE as u64 - 10, 20).is_err());
}
