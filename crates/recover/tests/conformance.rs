//! The `BlockDevice` conformance suite against `RecoveryDisk` — served from a point (nothing
//! local), and once hydrated (everything local) — then the invariants after it: the device
//! reads as the point plus its journal, the target image ends as exactly that, and a reopen
//! (state file + journal replay) gives the same bytes, without the store once hydrated.

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use lifeboat_nbd::conformance::check_writable_device;
use lifeboat_nbd::BlockDevice;
use lifeboat_recover::{HydrateConfig, RecoverError, RecoveryDisk, RecoveryOptions, Source};
use lifeboat_types::DiskId;

const SIZE: usize = 2 << 20;

/// A point whose first 128 KiB are zero (the suite expects a fresh device to read zero where
/// it looks before writing) and the rest mixed data.
fn content() -> Vec<u8> {
    let mut c = mixed_image(SIZE, 42);
    c[..128 << 10].fill(0);
    c
}

#[test]
fn recovery_disk_conforms_served_from_the_point() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = content();
    let point = rt.block_on(seed(&store, dir.path(), &content));
    let journal = recovery_journal(dir.path());
    let disk = open_ready(&rt, &store, &point, dir.path(), journal.clone());
    assert_eq!(disk.size(), SIZE as u64);
    assert!(!disk.is_hydrated());
    check_writable_device(&disk);

    // The device is the point plus its journal; block_status never calls data a hole.
    let model = replay_model(&content, &dir.path().join("journal"));
    assert!(
        read_all(&disk) == model,
        "device differs from point + journal"
    );
    common::assert_zero_extents_hold_zeros(&disk, &model);
    assert!(!disk.is_hydrated(), "the suite alone must not hydrate");

    // Hydrate: the target image is exactly the model.
    let p = disk
        .hydrate(&HydrateConfig::default(), &AtomicBool::new(false))
        .unwrap();
    assert!(p.is_hydrated() && disk.is_hydrated(), "{p:?}");
    assert!(p.chunks_zero > 0 && p.chunks_copied > 0, "{p:?}");
    let image = std::fs::read(target(dir.path())).unwrap();
    assert_eq!(hash(&image), hash(&model), "target image after hydration");
    drop(disk);

    // Reopen with no store at all: a hydrated disk does not need it.
    let d2 = RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir.path()),
            disk: DiskId(0),
            journal: journal.clone(),
        },
        Source::Unavailable,
    )
    .unwrap();
    assert!(d2.is_hydrated());
    assert_eq!(hash(&read_all(&d2)), hash(&model));
}

#[test]
fn recovery_disk_conforms_once_hydrated_and_reopens_from_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = content();
    let point = rt.block_on(seed(&store, dir.path(), &content));
    let journal = recovery_journal(dir.path());
    {
        let disk = open_ready(&rt, &store, &point, dir.path(), journal.clone());
        disk.hydrate(&HydrateConfig::default(), &AtomicBool::new(false))
            .unwrap();
        check_writable_device(&disk);
        // No checkpoint after the suite: the reopen must replay it from the journal.
    }
    let model = replay_model(&content, &dir.path().join("journal"));
    let disk = reopen(&store, &point, dir.path(), journal.clone());
    assert!(disk.is_hydrated());
    assert!(read_all(&disk) == model, "reopened device");
    assert_eq!(
        hash(&std::fs::read(target(dir.path())).unwrap()),
        hash(&model)
    );
}

#[test]
fn a_reopen_replays_writes_on_chunks_that_were_not_local() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 7);
    let point = rt.block_on(seed(&store, dir.path(), &content));
    let journal = recovery_journal(dir.path());
    {
        let disk = open_ready(&rt, &store, &point, dir.path(), journal.clone());
        // Partial writes on chunks that are not local: each hydrates its chunk first.
        disk.write_at(70_000, &[9u8; 1000], false).unwrap();
        disk.write_zeroes(300_000, 200_000, Default::default())
            .unwrap();
        disk.trim(1_000_000, 100, false).unwrap();
        assert_eq!(disk.progress().chunks_local, 1 + 4 + 1);
        // The state file still says nothing is local; the image holds the writes.
    }
    // Damage what the stale state says is not local: replay must rebuild it from the point.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(target(dir.path()))
            .unwrap();
        f.write_all_at(&[0xee; 4096], 65536).unwrap();
    }
    let model = replay_model(&content, &dir.path().join("journal"));
    let disk = reopen(&store, &point, dir.path(), journal.clone());
    assert!(read_all(&disk) == model, "reopened device after replay");
    disk.hydrate(&HydrateConfig::default(), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(
        hash(&std::fs::read(target(dir.path())).unwrap()),
        hash(&model)
    );
}

#[test]
fn state_of_another_point_or_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let point = rt.block_on(seed(&store, dir.path(), &mixed_image(SIZE, 1)));
    let journal = recovery_journal(dir.path());
    drop(open_ready(&rt, &store, &point, dir.path(), journal.clone()));
    let err = RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir.path()),
            disk: DiskId(1),
            journal: journal.clone(),
        },
        Source::Unavailable,
    )
    .err()
    .expect("another disk");
    assert!(matches!(err, RecoverError::StateMismatch { .. }), "{err}");
    let err = RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir.path()),
            disk: DiskId(0),
            journal: journal.clone(),
        },
        Source::Store {
            store: store.clone(),
            vm: vm(),
            seq: lifeboat_types::Seq(99),
        },
    )
    .err()
    .expect("another point");
    assert!(err.to_string().contains("journal record #99"), "{err}");
    // A damaged state file is an error naming it, never a silently trusted image.
    let sp = lifeboat_recover::state_path(&target(dir.path()));
    let mut bytes = std::fs::read(&sp).unwrap();
    bytes[150] ^= 1;
    std::fs::write(&sp, bytes).unwrap();
    let err = RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir.path()),
            disk: DiskId(0),
            journal,
        },
        Source::Unavailable,
    )
    .err()
    .expect("a damaged state");
    assert!(
        matches!(err, RecoverError::StateCorrupt { .. })
            && err.to_string().contains("target.img.recovery"),
        "{err}"
    );
}

#[test]
fn without_the_store_only_local_chunks_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 3);
    let point = rt.block_on(seed(&store, dir.path(), &content));
    let journal = recovery_journal(dir.path());
    let c = CHUNK as u64;
    {
        let disk = open_ready(&rt, &store, &point, dir.path(), journal.clone());
        disk.write_at(2 * c + 10, &[7u8; 100], false).unwrap(); // chunk 2 local
        disk.checkpoint().unwrap();
    }
    let disk = RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir.path()),
            disk: DiskId(0),
            journal: journal.clone(),
        },
        Source::Unavailable,
    )
    .unwrap();
    let mut model = content.clone();
    model[2 * c as usize + 10..2 * c as usize + 110].fill(7);
    let mut buf = vec![0u8; c as usize];
    disk.read_at(2 * c, &mut buf).unwrap();
    assert!(buf == model[2 * c as usize..3 * c as usize], "local chunk");
    let err = disk.read_at(0, &mut buf).unwrap_err();
    assert!(err.to_string().contains("no region store"), "{err}");
    // block_status says "data" where it cannot ask the point: always safe.
    let ext = disk.block_status(c, c).unwrap();
    assert!(!ext[0].hole && !ext[0].zero, "{ext:?}");
    // A write that needs the point fails with nothing journaled; a whole-chunk one does not.
    let before = journal.last_seq();
    assert!(disk.write_at(5 * c + 1, &[1u8; 10], false).is_err());
    assert_eq!(journal.last_seq(), before, "a failed write was journaled");
    let fast = lifeboat_nbd::ZeroFlags {
        may_trim: true,
        fast_only: true,
        fua: false,
    };
    let e = disk.write_zeroes(6 * c + 1, 10, fast).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    disk.write_zeroes(6 * c, c, fast).unwrap();
    disk.write_at(7 * c, &vec![3u8; c as usize], true).unwrap();
    model[6 * c as usize..7 * c as usize].fill(0);
    model[7 * c as usize..8 * c as usize].fill(3);
    assert_eq!(disk.progress().chunks_local, 3);
    drop(disk);
    // With the store back, everything else comes from the point.
    let disk = reopen(&store, &point, dir.path(), journal);
    assert!(read_all(&disk) == model);
}
