//! Continuous data protection: the state at any time inside the stored journal's window equals a
//! model disk replayed to exactly the last record appended at or before that time.
//!
//! Real appends (the journal takes each record's time from the clock), a few milliseconds apart
//! so that every record has its own millisecond; real shipping to a local-directory store; only
//! part of the journal processed into points, so that some targets are far (in records) from
//! their base.

mod common;

use std::time::{Duration, SystemTime};

use lifeboat_journal::{parse_segment, Record};
use lifeboat_process::{open_point, state_at, Cut, PointInTime, ProcessError, Processor, Target};
use lifeboat_store::Store;
use lifeboat_types::{CheckpointKind, DiskId, Seq, VmId};

const DISK: usize = 512 << 10;
use common::CHUNK;
const DISKS: u32 = 2;

fn vm() -> VmId {
    VmId::new("cdp-1").unwrap()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31) ^ seed.wrapping_mul(0x9e37_79b9)) as u8 | 1)
        .collect()
}

/// Reads every chunk of every disk through `pit` and compares it with `model` byte for byte.
async fn check(store: &Store, pit: &PointInTime, model: &[Vec<u8>], what: &str) {
    for d in 0..DISKS {
        let mut disk = Vec::with_capacity(DISK);
        for i in 0..(DISK as u64).div_ceil(u64::from(CHUNK)) {
            disk.extend_from_slice(&pit.read_disk_chunk(store, DiskId(d), i).await.unwrap());
        }
        assert!(
            disk == model[d as usize],
            "{what}: disk {d} differs from the model (state at record {}, base {})",
            pit.seq,
            pit.base.id
        );
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    processor: Processor,
    /// The model after each record, by sequence number (index 0: the seeded disks).
    models: Vec<Vec<Vec<u8>>>,
    /// The clock right after each append (index = sequence number).
    after: Vec<SystemTime>,
}

async fn setup() -> Setup {
    let mut model: Vec<Vec<u8>> = (0..DISKS).map(|d| vec![0x40 + d as u8; DISK]).collect();
    let common::Rig {
        dir,
        store,
        processor,
        journal,
        shipper,
    } = common::rig(&vm(), &model, 100 << 10).await;

    let mut models = vec![model.clone()];
    let mut after = vec![SystemTime::UNIX_EPOCH];
    for i in 0..36u64 {
        std::thread::sleep(Duration::from_millis(5));
        let disk = (i % 2) as u32;
        let m = &mut model[disk as usize];
        // Ranges that straddle chunk boundaries.
        let offset = ((i * 37_123) % (DISK as u64 - 100_000)) as usize;
        let len = 1 + ((i * 7_919) % 90_000) as usize;
        let seq = match i % 6 {
            2 => {
                m[offset..offset + len].fill(0);
                journal
                    .append_zero(DiskId(disk), offset as u64, len as u64)
                    .unwrap()
            }
            4 => {
                m[offset..offset + len].fill(0);
                journal
                    .append_trim(DiskId(disk), offset as u64, len as u64)
                    .unwrap()
            }
            5 => journal
                .append_checkpoint(
                    if i % 12 == 11 {
                        CheckpointKind::AppConsistent
                    } else {
                        CheckpointKind::CrashConsistent
                    },
                    SystemTime::now(),
                )
                .unwrap(),
            _ => {
                let d = data(len, i);
                m[offset..offset + len].copy_from_slice(&d);
                journal
                    .append_write(DiskId(disk), offset as u64, &d)
                    .unwrap()
            }
        };
        after.push(SystemTime::now());
        assert_eq!(seq, Seq(i + 1));
        models.push(model.clone());
        if i == 17 {
            // Ship and process the first half only: later checkpoints stay unprocessed.
            journal.seal().unwrap();
            shipper.ship_once(journal.last_seq()).await.unwrap();
            processor.process(Cut::AtMarkers).await.unwrap();
            // The marker points become stored points (bases for what follows).
            assert_eq!(processor.store_due(Duration::ZERO).await.unwrap().len(), 3);
        }
    }
    journal.seal().unwrap();
    shipper.ship_once(journal.last_seq()).await.unwrap();
    Setup {
        _dir: dir,
        store,
        processor,
        models,
        after,
    }
}

/// The records as stored (the shipper removed them from the journal).
async fn records(s: &Setup) -> Vec<Record> {
    let mut out = Vec::new();
    for seg in s.store.list_segments(&vm()).await.unwrap() {
        let bytes = s.store.get_segment(&vm(), &seg).await.unwrap();
        out.extend(parse_segment(&bytes).unwrap().1);
    }
    out
}

#[tokio::test]
async fn every_time_in_the_window_reads_back_the_model_at_that_time() {
    let s = setup().await;
    let recs = records(&s).await;
    let last = recs.len() as u64;
    assert_eq!(last, 36);
    let points = s.store.list_points(&vm()).await.unwrap();
    // Seed + the checkpoints of the first half (records 6, 12, 18): the rest are unprocessed.
    assert_eq!(
        points.iter().map(|p| p.seq().0).collect::<Vec<_>>(),
        vec![0, 6, 12, 18]
    );
    for r in &recs {
        let n = r.seq.0 as usize;
        // Distinct, ordered millisecond times (5 ms apart), and each record's time lies within
        // its append call.
        assert!(
            r.time <= s.after[n] && r.time > s.after[n - 1],
            "record {n} at {:?}, appended between {:?} and {:?}",
            r.time,
            s.after[n - 1],
            s.after[n]
        );
        if n > 1 {
            assert!(r.time > recs[n - 2].time);
        }
        // Exactly at the record's time.
        let pit = state_at(&s.store, &vm(), Target::Time(r.time))
            .await
            .unwrap();
        assert_eq!(pit.seq, r.seq);
        assert_eq!(pit.time, r.time);
        assert_eq!(pit.after_last, n as u64 == last);
        assert!(pit.base.seq() <= r.seq);
        check(
            &s.store,
            &pit,
            &s.models[n],
            &format!("at time of record {n}"),
        )
        .await;
        // Between this record and the next: the clock read right after the append.
        let pit = state_at(&s.store, &vm(), Target::Time(s.after[n]))
            .await
            .unwrap();
        assert_eq!(pit.seq, r.seq, "just after record {n}");
        check(&s.store, &pit, &s.models[n], &format!("after record {n}")).await;
        // One nanosecond before the record: the previous one (none before record 1).
        let just_before = state_at(
            &s.store,
            &vm(),
            Target::Time(r.time - Duration::from_nanos(1)),
        )
        .await;
        if n == 1 {
            let e = just_before.unwrap_err();
            assert!(matches!(e, ProcessError::BeforeWindow { .. }), "{e:?}");
            assert!(
                e.to_string()
                    .contains("before the continuous-data-protection window of VM cdp-1"),
                "{e}"
            );
        } else {
            let pit = just_before.unwrap();
            assert_eq!(pit.seq, Seq(r.seq.0 - 1));
            check(
                &s.store,
                &pit,
                &s.models[n - 1],
                &format!("before record {n}"),
            )
            .await;
        }
        // By journal position.
        let pit = state_at(&s.store, &vm(), Target::Seq(r.seq)).await.unwrap();
        assert_eq!((pit.seq, pit.time), (r.seq, r.time));
        check(&s.store, &pit, &s.models[n], &format!("record {n}")).await;
    }
    // After the last record: the last record's state, and it says so.
    let pit = state_at(
        &s.store,
        &vm(),
        Target::Time(SystemTime::now() + Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert_eq!(pit.seq, Seq(last));
    assert!(pit.after_last);
    assert_eq!(pit.base.seq(), Seq(18));
    check(
        &s.store,
        &pit,
        &s.models[last as usize],
        "after the last record",
    )
    .await;
    let pit = state_at(&s.store, &vm(), Target::Seq(Seq(1000)))
        .await
        .unwrap();
    assert!(pit.after_last && pit.seq == Seq(last));
    // Long before anything.
    let e = state_at(&s.store, &vm(), Target::Time(SystemTime::UNIX_EPOCH))
        .await
        .unwrap_err();
    assert!(matches!(e, ProcessError::BeforeWindow { .. }), "{e:?}");
    // Processing everything changes nothing: the same times give the same bytes from newer bases.
    let cut = s.processor.process(Cut::Latest).await.unwrap();
    // Markers at 24, 30 and 36 (the last record is a marker, so no "latest" point on top).
    let seqs: Vec<u64> = cut.points.iter().map(|p| p.seq().0).collect();
    assert_eq!(seqs, vec![24, 30, 36]);
    for p in &cut.points {
        assert!(p.is_journal_backed());
        let pit = open_point(&s.store, &vm(), p).await.unwrap();
        check(
            &s.store,
            &pit,
            &s.models[p.seq().0 as usize],
            "journal-backed",
        )
        .await;
    }
    let stored = s.processor.store_due(Duration::ZERO).await.unwrap();
    assert_eq!(stored.len(), 3);
    for p in &stored {
        assert!(!p.is_journal_backed());
        assert!(s.store.disk_reader(p, DiskId(0)).await.is_ok());
        let pit = open_point(&s.store, &vm(), p).await.unwrap();
        assert_eq!(pit.touched_count(), 0);
        assert_eq!(pit.touched().count(), 0);
        check(&s.store, &pit, &s.models[p.seq().0 as usize], "stored").await;
    }
    for n in [5usize, 19, 29, 36] {
        let pit = state_at(&s.store, &vm(), Target::Time(s.after[n]))
            .await
            .unwrap();
        assert_eq!(pit.seq, Seq(n as u64));
        check(
            &s.store,
            &pit,
            &s.models[n],
            &format!("after processing, record {n}"),
        )
        .await;
    }
}

#[tokio::test]
async fn the_window_starts_where_the_stored_journal_does() {
    let s = setup().await;
    let recs = records(&s).await;
    // Retention dropped the segments covered by the point at record 12.
    let deleted = s
        .store
        .delete_segments_through(&vm(), Seq(12))
        .await
        .unwrap();
    assert!(deleted > 0);
    let first_left = s.store.list_segments(&vm()).await.unwrap()[0].first_seq;
    assert!(first_left <= Seq(13));
    // The window starts at the first record a stored point reaches with stored records only.
    let p0 = [6u64, 12, 18]
        .into_iter()
        .find(|p| p + 1 >= first_left.0)
        .unwrap();
    let start = p0.max(first_left.0);
    let start_time = recs[start as usize - 1].time;
    let e = state_at(
        &s.store,
        &vm(),
        Target::Time(start_time - Duration::from_nanos(1)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProcessError::BeforeWindow { .. }), "{e:?}");
    if start - 1 != p0 {
        let e = state_at(&s.store, &vm(), Target::Seq(Seq(start - 1)))
            .await
            .unwrap_err();
        assert!(matches!(e, ProcessError::BeforeWindow { .. }), "{e:?}");
    }
    for n in start as usize..=recs.len() {
        let pit = state_at(&s.store, &vm(), Target::Time(s.after[n]))
            .await
            .unwrap();
        assert_eq!(pit.seq, Seq(n as u64));
        check(&s.store, &pit, &s.models[n], &format!("record {n}")).await;
    }
    // A point itself is always reachable by its position.
    let pit = state_at(&s.store, &vm(), Target::Seq(Seq(0)))
        .await
        .unwrap();
    assert_eq!(pit.touched_count(), 0);
    assert!(!pit.is_touched(DiskId(0), 0));
    check(&s.store, &pit, &s.models[0], "seed point").await;
}

#[tokio::test]
async fn a_flipped_bit_in_a_stored_segment_is_named_and_never_restored() {
    let s = setup().await;
    // Journal-backed points over the second half (markers at 24, 30, 36).
    let cut = s.processor.process(Cut::Latest).await.unwrap();
    let last = cut.points.last().unwrap().clone();
    assert!(last.is_journal_backed());
    // Flip one bit in the middle of the last stored segment.
    let seg = s.store.list_segments(&vm()).await.unwrap().pop().unwrap();
    let path = s._dir.path().join("store").join(&seg.key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    // verify names the segment.
    let v = s.store.verify().await.unwrap();
    assert!(v.bad.iter().any(|b| b.key == seg.key), "{:?}", v.bad);
    // A point or a time that needs it is refused, naming it; nothing is returned.
    let chain = |e: &ProcessError| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s = format!("{s}: {c}");
            src = c.source();
        }
        s
    };
    let e = open_point(&s.store, &vm(), &last).await.unwrap_err();
    assert!(chain(&e).contains(&seg.key), "{}", chain(&e));
    assert!(chain(&e).contains("checksum"), "{}", chain(&e));
    let e = state_at(&s.store, &vm(), Target::Time(s.after[36]))
        .await
        .unwrap_err();
    assert!(chain(&e).contains(&seg.key), "{}", chain(&e));
    // Storing the point refuses too, and leaves it journal-backed.
    assert!(s.processor.store_point(&last).await.is_err());
    let again = s.store.get_point(&vm(), &last.id).await.unwrap();
    assert!(again.is_journal_backed());
}

#[tokio::test]
async fn a_position_too_far_from_its_base_is_refused_not_a_memory_exhaustion() {
    let s = setup().await;
    // Records 19..=36 are journal only (no stored point after 18): 15 data records touching a
    // few 64 KiB chunks. Their index takes a few KiB: 1 KiB cannot hold it; the default can.
    let e = lifeboat_process::state_at_within(&s.store, &vm(), Target::Seq(Seq(36)), 1 << 10)
        .await
        .unwrap_err();
    assert!(matches!(e, ProcessError::TooFarFromBase { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("store a nearer point first"), "{msg}");
    assert!(msg.contains("00000000000000000018"), "{msg}");
    let pit = state_at(&s.store, &vm(), Target::Seq(Seq(36)))
        .await
        .unwrap();
    check(&s.store, &pit, &s.models[36], "within the default budget").await;
    assert!(pit.index_bytes() > 1 << 10 && pit.index_bytes() < 64 << 10);
    assert!(pit.touched_count() > 0);
    // A stored point itself needs no journal at all.
    let pit = lifeboat_process::state_at_within(&s.store, &vm(), Target::Seq(Seq(18)), 0)
        .await
        .unwrap();
    check(&s.store, &pit, &s.models[18], "a stored point").await;
}
