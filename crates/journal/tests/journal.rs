//! Appending, reading back, sealing, removing, fencing and concurrency.

mod common;

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use lifeboat_journal::{
    parse_segment, read_records, CheckpointKind, DiskId, Epoch, Journal, JournalConfig,
    JournalError, RecordKind, Seq, VmId,
};

#[test]
fn round_trip_across_size_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 8192);
    let t0 = UNIX_EPOCH + Duration::from_nanos(1_234_567_890_123);
    for i in 0..300u64 {
        let seq = match i % 7 {
            0 => j.append_zero(DiskId(1), i * 4096, 8192).unwrap(),
            1 => j.append_trim(DiskId(2), i * 512, 512).unwrap(),
            2 if i % 3 == 0 => j
                .append_checkpoint(CheckpointKind::AppConsistent, t0)
                .unwrap(),
            _ => j
                .append_write(
                    DiskId((i % 3) as u32),
                    i * 100,
                    &data(i, (i as usize * 37) % 3000),
                )
                .unwrap(),
        };
        assert_eq!(seq, Seq(i + 1));
        if i % 50 == 0 {
            j.seal_if_due().unwrap();
        }
    }
    j.seal_if_due().unwrap();
    assert_eq!(j.last_seq(), Seq(300));
    let sealed = j.sealed_segments().unwrap();
    assert!(sealed.len() > 10, "{} segments", sealed.len());
    assert_eq!(sealed[0].first_seq, Seq(1));
    for w in sealed.windows(2) {
        assert_eq!(w[1].first_seq, w[0].last_seq.next(), "continuous");
    }
    for s in &sealed {
        assert!(s.path.to_str().unwrap().ends_with(".lbj"));
        let bytes = fs::read(&s.path).unwrap();
        assert_eq!(bytes.len() as u64, s.bytes);
        let (h, recs) = parse_segment(&bytes).unwrap();
        assert_eq!(
            (h.first_seq, h.epoch, h.vm.clone()),
            (s.first_seq, Epoch(1), vm())
        );
        assert_eq!(recs.last().unwrap().seq, s.last_seq);
    }

    let check = |records: &[lifeboat_journal::Record], from: u64| {
        assert_eq!(records.len() as u64, 300 - from + 1);
        for (r, i) in records.iter().zip(from - 1..) {
            assert_eq!(r.seq, Seq(i + 1));
            match i % 7 {
                0 => assert_eq!(
                    (r.kind, r.disk, r.offset, r.length),
                    (RecordKind::Zero, DiskId(1), i * 4096, 8192)
                ),
                1 => assert_eq!(
                    (r.kind, r.disk, r.offset, r.length),
                    (RecordKind::Trim, DiskId(2), i * 512, 512)
                ),
                2 if i % 3 == 0 => {
                    assert_eq!(r.kind, RecordKind::Checkpoint);
                    let c = r.checkpoint.unwrap();
                    assert_eq!((c.kind, c.time), (CheckpointKind::AppConsistent, t0));
                }
                _ => {
                    let d = data(i, (i as usize * 37) % 3000);
                    assert_eq!(
                        (r.kind, r.disk, r.offset, r.length),
                        (
                            RecordKind::Write,
                            DiskId((i % 3) as u32),
                            i * 100,
                            d.len() as u64
                        )
                    );
                    assert_eq!(r.data, d);
                }
            }
        }
    };
    check(&read_all(tmp.path()), 1);
    for from in [1, 2, 77, 150, 299, 300] {
        let recs: Vec<_> = read_records(tmp.path(), Seq(from))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        check(&recs, from);
    }
    assert_eq!(read_records(tmp.path(), Seq(301)).unwrap().count(), 0);

    // Reopen: continues after the last record, in a new segment or the open one.
    drop(j);
    let j = open(tmp.path(), 8192);
    assert_eq!((j.last_seq(), j.durable_seq()), (Seq(300), Seq(300)));
    assert_eq!(j.append_write(DiskId(0), 0, b"after").unwrap(), Seq(301));
    j.sync().unwrap();
    let all = read_all(tmp.path());
    assert_eq!(all.len(), 301);
    assert_eq!(all[300].data, b"after");
}

#[test]
fn age_based_sealing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_max_age: Duration::from_millis(100),
        ..config(1 << 30)
    };
    let j = Journal::open(tmp.path(), cfg).unwrap();
    assert!(!j.seal_if_due().unwrap(), "no segment yet");
    j.append_write(DiskId(0), 0, b"a").unwrap();
    j.append_write(DiskId(0), 1, b"b").unwrap();
    assert!(!j.seal_if_due().unwrap(), "too young");
    std::thread::sleep(Duration::from_millis(120));
    assert!(j.seal_if_due().unwrap());
    assert!(!j.seal_if_due().unwrap(), "nothing left to seal");
    let names: Vec<_> = seg_files(tmp.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["seg-00000000000000000001.lbj"]);
    j.append_write(DiskId(0), 2, b"c").unwrap();
    let names: Vec<_> = seg_files(tmp.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "seg-00000000000000000001.lbj",
            "seg-00000000000000000003.open"
        ]
    );
    let sealed = j.sealed_segments().unwrap();
    assert_eq!((sealed[0].first_seq, sealed[0].last_seq), (Seq(1), Seq(2)));
    // seal() is immediate and makes everything durable.
    j.seal().unwrap();
    assert_eq!(j.durable_seq(), Seq(3));
    assert_eq!(j.sealed_segments().unwrap().len(), 2);
    assert_eq!(read_all(tmp.path()).len(), 3);
}

#[test]
fn wrong_vm_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    open(tmp.path(), 1 << 20)
        .append_write(DiskId(0), 0, b"x")
        .unwrap();
    let other = JournalConfig::new(VmId::new("other-vm").unwrap(), Epoch(1));
    let e = Journal::open(tmp.path(), other).err().unwrap();
    assert!(matches!(e, JournalError::WrongVm { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("seg-00000000000000000001.open")
            && msg.contains("vm-test")
            && msg.contains("other-vm"),
        "{msg}"
    );
}

#[test]
fn epochs_fence_old_writers_and_new_segments_carry_the_new_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let at = |e| JournalConfig::new(vm(), Epoch(e));
    let j = Journal::open(tmp.path(), at(5)).unwrap();
    j.append_write(DiskId(0), 0, b"five").unwrap();
    drop(j);
    let e = Journal::open(tmp.path(), at(4)).err().unwrap();
    assert!(
        matches!(
            e,
            JournalError::Fenced {
                found: Epoch(5),
                ours: Epoch(4),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("fenced"));

    let j = Journal::open(tmp.path(), at(6)).unwrap();
    // The epoch-5 segment was sealed on open; the next record starts an epoch-6 segment.
    let sealed = j.sealed_segments().unwrap();
    assert_eq!((sealed.len(), sealed[0].epoch), (1, Epoch(5)));
    assert_eq!(j.append_write(DiskId(0), 0, b"six").unwrap(), Seq(2));
    j.seal().unwrap();
    let sealed = j.sealed_segments().unwrap();
    let (h, recs) = parse_segment(&fs::read(&sealed[1].path).unwrap()).unwrap();
    assert_eq!(
        (h.epoch, h.first_seq, recs[0].data.as_slice()),
        (Epoch(6), Seq(2), &b"six"[..])
    );
    drop(j);
    assert!(matches!(
        Journal::open(tmp.path(), at(5)),
        Err(JournalError::Fenced { .. })
    ));
}

#[test]
fn eight_threads_appending_and_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Arc::new(open(tmp.path(), 64 * 1024));
    let stop = Arc::new(AtomicBool::new(false));
    let sealer = {
        let (j, stop) = (j.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                j.seal_if_due().unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..400u64 {
                    let d = data(u64::from(t) << 32 | i, 4096);
                    let seq = j.append_write(DiskId(t), i * 4096, &d).unwrap();
                    mine.push((seq, t, i));
                    if i % 10 == 9 {
                        j.sync().unwrap();
                        assert!(j.durable_seq() >= seq);
                    }
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(Seq, u32, u64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    sealer.join().unwrap();
    j.sync().unwrap();
    assert_eq!(j.durable_seq(), Seq(3200));
    all.sort();
    let seqs: HashSet<Seq> = all.iter().map(|a| a.0).collect();
    assert_eq!(seqs.len(), 3200, "unique");
    assert_eq!((all[0].0, all[3199].0), (Seq(1), Seq(3200)), "continuous");
    let records = read_all(tmp.path());
    assert_eq!(records.len(), 3200);
    for (r, (seq, t, i)) in records.iter().zip(&all) {
        assert_eq!((r.seq, r.disk, r.offset), (*seq, DiskId(*t), i * 4096));
        assert_eq!(r.data, data(u64::from(*t) << 32 | i, 4096));
    }
    assert!(j.sealed_segments().unwrap().len() > 100);
    assert!(
        j.fdatasync_count() < 8 * 40 + 300,
        "{} fdatasyncs",
        j.fdatasync_count()
    );
}

#[test]
fn reading_while_appending_sees_a_growing_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Arc::new(open(tmp.path(), 16 * 1024));
    let writer = {
        let j = j.clone();
        std::thread::spawn(move || {
            for i in 0..2000u64 {
                j.append_write(DiskId(0), i, &data(i, 700)).unwrap();
                if i % 100 == 0 {
                    j.seal_if_due().unwrap();
                }
            }
        })
    };
    let mut last = 0;
    while !writer.is_finished() || last < 2000 {
        let records = read_all(tmp.path());
        for (k, r) in records.iter().enumerate() {
            assert_eq!(r.seq, Seq(k as u64 + 1));
            assert_eq!(r.data, data(k as u64, 700));
        }
        assert!(records.len() >= last);
        last = records.len();
        if writer.is_finished() && last < 2000 {
            // Everything appended is visible once the writer is done.
            assert_eq!(read_all(tmp.path()).len(), 2000);
            break;
        }
    }
    writer.join().unwrap();
}

#[test]
fn remove_sealed_through_keeps_the_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    for s in 0..5u64 {
        for i in 0..10 {
            j.append_write(DiskId(0), i, &data(s * 10 + i, 100))
                .unwrap();
        }
        j.seal().unwrap();
    }
    let sealed = j.sealed_segments().unwrap();
    assert_eq!(sealed.len(), 5);
    assert_eq!(
        j.remove_sealed_through(Seq(9)).unwrap(),
        0,
        "segment 1 ends at 10"
    );
    assert_eq!(j.remove_sealed_through(Seq(25)).unwrap(), 2);
    assert!(!sealed[0].path.exists() && !sealed[1].path.exists() && sealed[2].path.exists());
    assert_eq!(j.sealed_segments().unwrap(), sealed[2..]);
    assert_eq!(read_all(tmp.path())[0].seq, Seq(21));
    let e = read_records(tmp.path(), Seq(5)).err().unwrap();
    assert!(
        matches!(
            e,
            JournalError::Removed {
                wanted: Seq(5),
                first: Seq(21),
                ..
            }
        ),
        "{e:?}"
    );

    // Remove everything: an empty segment keeps the next sequence number across a restart.
    assert_eq!(j.remove_sealed_through(Seq(50)).unwrap(), 3);
    assert!(j.sealed_segments().unwrap().is_empty());
    drop(j);
    let j = open(tmp.path(), 1 << 30);
    assert_eq!(j.last_seq(), Seq(50));
    assert_eq!(j.append_write(DiskId(0), 0, b"next").unwrap(), Seq(51));
    assert_eq!(
        read_all(tmp.path())
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [Seq(51)]
    );
    assert!(read_records(tmp.path(), Seq(51)).is_ok());
}

#[test]
fn other_files_are_ignored_but_unknown_seg_files_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("applied-0"), b"watermark").unwrap();
    fs::create_dir(tmp.path().join("sub")).unwrap();
    let j = open(tmp.path(), 1 << 20);
    j.append_write(DiskId(0), 0, b"x").unwrap();
    drop(j);
    let j = open(tmp.path(), 1 << 20);
    assert_eq!(j.last_seq(), Seq(1));
    drop(j);
    fs::write(tmp.path().join("seg-something"), b"").unwrap();
    let e = Journal::open(tmp.path(), config(1 << 20)).err().unwrap();
    assert!(matches!(e, JournalError::UnknownFile(_)), "{e:?}");
    assert!(e.to_string().contains("seg-something"));
}

#[test]
fn a_directory_has_one_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 20);
    let e = Journal::open(tmp.path(), config(1 << 20)).err().unwrap();
    assert!(matches!(e, JournalError::Locked(_)), "{e:?}");
    drop(j);
    open(tmp.path(), 1 << 20);
}

#[test]
fn bad_requests_are_refused_without_consuming_a_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 20);
    assert!(matches!(
        j.append_zero(DiskId(0), u64::MAX, 2),
        Err(JournalError::RangeOverflow { .. })
    ));
    let before_1970 = UNIX_EPOCH - Duration::from_secs(5);
    assert!(matches!(
        j.append_checkpoint(CheckpointKind::CrashConsistent, before_1970),
        Err(JournalError::BadTime)
    ));
    let big = vec![0u8; lifeboat_journal::MAX_RECORD_DATA as usize + 1];
    assert!(matches!(
        j.append_write(DiskId(0), 0, &big),
        Err(JournalError::TooLarge { .. })
    ));
    assert_eq!(
        j.append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())
            .unwrap(),
        Seq(1)
    );
}

/// Every record carries its append time (ms resolution, counted from its segment's creation
/// time): non-decreasing along the journal, across segments and a reopen, and within the
/// clock reads taken just before and after each append.
#[test]
fn record_times_are_append_times_and_non_decreasing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bounds = Vec::new();
    for round in 0..2u64 {
        // Small segments so that the records span several of them.
        let j = open(tmp.path(), 600);
        for i in 0..40u64 {
            let before = SystemTime::now();
            let seq = match i % 4 {
                0 => j.append_zero(DiskId(1), i * 512, 512).unwrap(),
                1 => j
                    .append_checkpoint(CheckpointKind::CrashConsistent, before)
                    .unwrap(),
                _ => j
                    .append_write(DiskId(0), i * 100, &data(round * 100 + i, 100))
                    .unwrap(),
            };
            let after = SystemTime::now();
            bounds.push((seq, before, after));
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        j.seal().unwrap();
    }
    let recs: Vec<_> = read_records(tmp.path(), Seq(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recs.len(), bounds.len());
    let mut prev = UNIX_EPOCH;
    for (r, (seq, before, after)) in recs.iter().zip(&bounds) {
        assert_eq!(r.seq, *seq);
        assert!(r.time >= prev, "record {} goes back in time", r.seq.0);
        prev = r.time;
        // Stored in whole ms after the segment's creation: at most 1 ms before the clock read
        // before the append, never after the one after it.
        assert!(
            r.time + Duration::from_millis(1) >= *before && r.time <= *after,
            "record {} at {:?} outside {:?}..{:?}",
            r.seq.0,
            r.time,
            before,
            after
        );
    }
    // The sealed segments hold the same times as the reader gives.
    let mut from_segments = Vec::new();
    for f in seg_files(tmp.path()) {
        if let Ok((_, recs)) = parse_segment(&fs::read(&f).unwrap()) {
            from_segments.extend(recs.into_iter().map(|r| (r.seq, r.time)));
        }
    }
    let from_reader: Vec<_> = recs.iter().map(|r| (r.seq, r.time)).collect();
    assert_eq!(from_segments, from_reader);
}

/// A cut's hold: writes wait while held; the marker goes in before them, then they go on; an
/// expired hold refuses the marker.
#[test]
fn held_writes_wait_for_the_cut_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(tmp.path(), config(1 << 30)).unwrap());
    j.append_write(DiskId(0), 0, &[1u8; 512]).unwrap();
    j.hold_writes(std::time::Instant::now() + Duration::from_secs(5))
        .unwrap();
    assert!(j
        .hold_writes(std::time::Instant::now() + Duration::from_secs(5))
        .is_err());
    let w = {
        let j = j.clone();
        std::thread::spawn(move || j.append_write(DiskId(0), 0, &[2u8; 512]).unwrap())
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(j.last_seq(), Seq(1), "a held write went in");
    let marker = j
        .checkpoint_and_release(CheckpointKind::CrashConsistent, SystemTime::now())
        .unwrap();
    assert_eq!(marker, Seq(2));
    assert_eq!(
        w.join().unwrap(),
        Seq(3),
        "the write goes in after the marker"
    );

    j.hold_writes(std::time::Instant::now() + Duration::from_millis(30))
        .unwrap();
    std::thread::sleep(Duration::from_millis(60));
    let e = j
        .checkpoint_and_release(CheckpointKind::CrashConsistent, SystemTime::now())
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    j.release_writes();
    j.append_write(DiskId(0), 0, &[3u8; 512]).unwrap();
}
