//! The whole path, for real: random writes, zeroes, trims and checkpoints go through the real
//! journal, the shipper and a real local-directory store; the processor cuts points; every point
//! read back equals a model disk replayed to exactly that point's journal position.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_process::{open_point, Cut, ProcessError, Processor};
use lifeboat_store::Store;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};
use proptest::prelude::*;

const DISK: usize = 1 << 20;

#[derive(Debug, Clone)]
enum Op {
    Write {
        disk: u32,
        offset: usize,
        len: usize,
        seed: u8,
    },
    Zero {
        disk: u32,
        offset: usize,
        len: usize,
    },
    Trim {
        disk: u32,
        offset: usize,
        len: usize,
    },
    Checkpoint {
        app: bool,
    },
    Seal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..2, 0..DISK, 1usize..200_000, any::<u8>()).prop_map(|(disk, offset, len, seed)| Op::Write {
            disk,
            offset,
            len: len.min(DISK - offset).max(1),
            seed
        }),
        1 => (0u32..2, 0..DISK, 1usize..300_000).prop_map(|(disk, offset, len)| Op::Zero {
            disk,
            offset,
            len: len.min(DISK - offset).max(1)
        }),
        1 => (0u32..2, 0..DISK, 1usize..300_000).prop_map(|(disk, offset, len)| Op::Trim {
            disk,
            offset,
            len: len.min(DISK - offset).max(1)
        }),
        2 => any::<bool>().prop_map(|app| Op::Checkpoint { app }),
        1 => Just(Op::Seal),
    ]
}

fn vm() -> VmId {
    VmId::new("db-1").unwrap()
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// A disk of a point, read through `open_point` (journal-backed or stored), and for a stored
/// point also straight through its roots: both must agree.
async fn read_disk(store: &Store, point: &lifeboat_store::PointRecord, disk: u32) -> Vec<u8> {
    let pit = open_point(store, &vm(), point).await.unwrap();
    let mut buf = Vec::with_capacity(DISK);
    for i in 0..(DISK as u64).div_ceil(u64::from(common::CHUNK)) {
        buf.extend(pit.read_disk_chunk(store, DiskId(disk), i).await.unwrap());
    }
    if !point.is_journal_backed() {
        let r = store.disk_reader(point, DiskId(disk)).await.unwrap();
        let mut direct = vec![0u8; r.size() as usize];
        let n = r.read_at(0, &mut direct).await.unwrap();
        assert_eq!(n, direct.len());
        assert!(
            direct == buf,
            "point {}: roots and open_point disagree",
            point.id
        );
    } else {
        assert!(store.disk_reader(point, DiskId(disk)).await.is_err());
    }
    buf
}

async fn run(ops: Vec<Op>, base_content: [u8; 2]) {
    // The primary's disks before protection, seeded as the first point at position 0.
    let mut model: Vec<Vec<u8>> = base_content.iter().map(|b| vec![*b; DISK]).collect();
    let common::Rig {
        dir: _dir,
        store,
        processor,
        journal,
        shipper,
    } = common::rig(&vm(), &model, 256 << 10).await;
    // The model at every checkpoint, by its sequence number.
    let mut expected = Vec::new();
    let mut seals = 0u32;
    for op in ops {
        match op {
            Op::Write {
                disk,
                offset,
                len,
                seed,
            } => {
                let d = data(len, seed);
                journal
                    .append_write(DiskId(disk), offset as u64, &d)
                    .unwrap();
                model[disk as usize][offset..offset + len].copy_from_slice(&d);
            }
            Op::Zero { disk, offset, len } => {
                journal
                    .append_zero(DiskId(disk), offset as u64, len as u64)
                    .unwrap();
                model[disk as usize][offset..offset + len].fill(0);
            }
            Op::Trim { disk, offset, len } => {
                journal
                    .append_trim(DiskId(disk), offset as u64, len as u64)
                    .unwrap();
                model[disk as usize][offset..offset + len].fill(0);
            }
            Op::Checkpoint { app } => {
                let kind = if app {
                    CheckpointKind::AppConsistent
                } else {
                    CheckpointKind::CrashConsistent
                };
                let t = SystemTime::UNIX_EPOCH
                    + Duration::from_secs(1_800_000_000 + expected.len() as u64);
                let seq = journal.append_checkpoint(kind, t).unwrap();
                expected.push((seq, kind, t, model.clone()));
            }
            Op::Seal => {
                journal.seal().unwrap();
                // Ship and process part-way: processing resumes from the newest point; every
                // other time the points cut so far are stored (so bases vary).
                shipper.ship_once(journal.last_seq()).await.unwrap();
                processor.process(Cut::AtMarkers).await.unwrap();
                seals += 1;
                if seals.is_multiple_of(2) {
                    processor.store_due(Duration::ZERO).await.unwrap();
                }
            }
        }
    }
    journal.seal().unwrap();
    shipper.ship_once(journal.last_seq()).await.unwrap();
    let report = processor.process(Cut::Latest).await.unwrap();
    let last = journal.last_seq();

    // Every point twice: as cut (journal-backed or stored), then all stored.
    for round in 0..2 {
        if round == 1 {
            processor.store_due(Duration::ZERO).await.unwrap();
        }
        check_points(&store, &expected).await;
    }
    check_latest(&store, last, &expected, &model, &report).await;
}

type Expected = Vec<(Seq, CheckpointKind, SystemTime, Vec<Vec<u8>>)>;

async fn check_points(store: &Store, expected: &Expected) {
    let points = store.list_points(&vm()).await.unwrap();
    for (seq, kind, time, disks) in expected {
        let p = points
            .iter()
            .find(|p| p.seq() == *seq)
            .unwrap_or_else(|| panic!("no point at checkpoint {seq}"));
        assert_eq!(p.checkpoint_kind(), Some(*kind), "kind of point {}", p.id);
        assert_eq!(p.time(), *time, "time of point {}", p.id);
        for d in 0..2u32 {
            assert!(
                read_disk(store, p, d).await == disks[d as usize],
                "point {} disk {d} differs from the model",
                p.id
            );
        }
    }
}

async fn check_latest(
    store: &Store,
    last: Seq,
    expected: &Expected,
    model: &[Vec<u8>],
    report: &lifeboat_process::ProcessReport,
) {
    // "Latest": a point at the last record, equal to the final model.
    let latest = store.latest_point(&vm()).await.unwrap().unwrap();
    assert!(
        latest.seq() >= last,
        "the latest point is before the last record"
    );
    if last > expected.last().map(|e| e.0).unwrap_or(Seq(0)) {
        assert_eq!(
            latest.seq(),
            last,
            "latest point not at the last record: {report:?}"
        );
    }
    for d in 0..2u32 {
        assert!(
            read_disk(store, &latest, d).await == model[d as usize],
            "latest point disk {d} differs"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    #[test]
    fn every_point_equals_the_model_at_its_position(ops in prop::collection::vec(op(), 1..60), a in any::<u8>(), b in any::<u8>()) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run(ops, [a, b]));
    }
}

#[tokio::test]
async fn a_hole_in_the_stored_journal_stops_processing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; DISK]).unwrap();
    let p = Processor::new(store.clone(), vm());
    p.seed(&[(DiskId(0), &img)], Seq(0), Epoch(1), SystemTime::now())
        .await
        .unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j"), JournalConfig::new(vm(), Epoch(1))).unwrap());
    for i in 0..3u64 {
        journal
            .append_write(DiskId(0), i * 4096, &[1u8; 4096])
            .unwrap();
        journal.seal().unwrap();
    }
    // Ship only the first and the last segment.
    let segs = journal.sealed_segments().unwrap();
    for s in [&segs[0], &segs[2]] {
        let bytes = std::fs::read(&s.path).unwrap();
        store
            .put_segment(&vm(), s.epoch, s.first_seq, s.last_seq, bytes.into())
            .await
            .unwrap();
    }
    let err = p.process(Cut::Latest).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProcessError::Gap {
                expected: Seq(2),
                found: Seq(3),
                ..
            }
        ),
        "{err}"
    );
    // Nothing was cut past the hole.
    assert_eq!(
        store.latest_point(&vm()).await.unwrap().unwrap().seq(),
        Seq(0)
    );
}

#[tokio::test]
async fn processing_without_initial_replication_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let err = Processor::new(store, vm())
        .process(Cut::Latest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("initial replication"), "{err}");
}

/// A processor that read a point before another one stored it does not store it again (it
/// reads the record afresh), and its cached view follows retention's deletions.
#[tokio::test]
async fn a_point_stored_by_another_processor_is_not_stored_twice() {
    let model = vec![vec![7u8; DISK], vec![8u8; DISK]];
    let common::Rig {
        dir: _dir,
        store,
        processor: a,
        journal,
        shipper,
    } = common::rig(&vm(), &model, 256 << 10).await;
    journal.append_write(DiskId(0), 0, &[1u8; 4096]).unwrap();
    journal
        .append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())
        .unwrap();
    journal.seal().unwrap();
    shipper.ship_once(journal.last_seq()).await.unwrap();
    let cut = a.process(Cut::AtMarkers).await.unwrap();
    assert_eq!(cut.points.len(), 1);
    // A cut it (and holds the journal-backed record); B stores it.
    assert!(cut.points[0].is_journal_backed());
    let b = Processor::new(store.clone(), vm());
    let id = cut.points[0].id.clone();
    let stored_by_b = b.store_due(Duration::ZERO).await.unwrap();
    assert_eq!(stored_by_b.len(), 1);
    // A does not store it again: it finds the stored record, unchanged.
    let again = a.store_due(Duration::ZERO).await.unwrap();
    assert_eq!(again, stored_by_b);
    assert_eq!(store.get_point(&vm(), &id).await.unwrap(), stored_by_b[0]);
    // Deleted behind A's back: A's next pass does not see it.
    store.delete_point(&vm(), &id).await.unwrap();
    assert!(a.store_due(Duration::ZERO).await.unwrap().is_empty());
}
