//! Retention over three days of points: exactly the policy's thinning is kept, every kept point
//! still reads back exactly, unreferenced chunks are collected, old segments go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_policy::{points_to_keep, PointMeta, ReplicationPolicy};
use lifeboat_process::{apply_retention, Cut, Processor};
use lifeboat_ship::Shipper;
use lifeboat_store::{Store, StoreConfig};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

const DISK: usize = 1 << 20;
const CHUNK: u32 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinning_deletes_exactly_the_dropped_points_and_their_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path().join("store").to_str().unwrap(),
        StoreConfig {
            chunk_size: CHUNK,
            page_entries: 4,
            fsync: false,
            gc_grace: Duration::ZERO,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let vm = VmId::new("ret-1").unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let half_hour = Duration::from_secs(1800);

    let img = dir.path().join("d.img");
    let mut model = vec![0u8; DISK];
    std::fs::write(&img, &model).unwrap();
    let p = Processor::new(store.clone(), vm.clone());
    p.seed(&[(DiskId(0), &img)], Seq(0), Epoch(1), t0)
        .await
        .unwrap();

    let mut jc = JournalConfig::new(vm.clone(), Epoch(1));
    jc.segment_max_bytes = 128 << 10;
    let journal = Arc::new(Journal::open(&dir.path().join("j"), jc).unwrap());
    let mut snapshots: BTreeMap<Seq, Vec<u8>> = BTreeMap::new();
    let mut metas = vec![PointMeta {
        id: lifeboat_store::point_id(Seq(0), CheckpointKind::CrashConsistent),
        time: t0,
        kind: CheckpointKind::CrashConsistent,
    }];
    snapshots.insert(Seq(0), model.clone());
    for i in 1..=144u64 {
        // Rewrite one chunk-sized region with data unique to this half hour.
        let off = ((i * 7) % 16) as usize * CHUNK as usize;
        let data: Vec<u8> = (0..CHUNK as usize)
            .map(|b| (b as u64 ^ (i * 31)) as u8)
            .collect();
        journal.append_write(DiskId(0), off as u64, &data).unwrap();
        model[off..off + CHUNK as usize].copy_from_slice(&data);
        let kind = if i % 12 == 0 {
            CheckpointKind::AppConsistent
        } else {
            CheckpointKind::CrashConsistent
        };
        let t = t0 + half_hour * i as u32;
        let seq = journal.append_checkpoint(kind, t).unwrap();
        snapshots.insert(seq, model.clone());
        metas.push(PointMeta {
            id: lifeboat_store::point_id(seq, kind),
            time: t,
            kind,
        });
    }
    journal.seal().unwrap();
    Shipper::new(vm.clone(), journal.clone(), store.clone())
        .ship_once(journal.last_seq())
        .await
        .unwrap();
    p.process(Cut::AtMarkers).await.unwrap();
    // Marker points are always stored (here long before retention runs).
    assert_eq!(p.store_due(Duration::ZERO).await.unwrap().len(), 144);
    assert_eq!(store.list_points(&vm).await.unwrap().len(), 145);
    let segments_before = store.list_segments(&vm).await.unwrap().len();

    let policy = ReplicationPolicy::default();
    let now = t0 + half_hour * 144;
    let report = apply_retention(&store, &vm, &policy, now).await.unwrap();

    let plan = points_to_keep(&metas, &policy, now);
    let mut remaining: Vec<String> = store
        .list_points(&vm)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let mut expected = plan.keep.clone();
    remaining.sort();
    expected.sort();
    assert_eq!(
        remaining, expected,
        "the store keeps exactly the planned points"
    );
    assert_eq!(report.dropped.len(), 145 - expected.len());
    assert!(
        !report.gc.deleted.is_empty(),
        "dropped points left garbage behind"
    );
    assert!(report.segments_deleted > 0 && report.segments_deleted < segments_before);

    // Every kept point still reads back exactly; the store verifies clean.
    for point in store.list_points(&vm).await.unwrap() {
        let r = store.disk_reader(&point, DiskId(0)).await.unwrap();
        let mut buf = vec![0u8; DISK];
        r.read_at(0, &mut buf).await.unwrap();
        assert!(buf == snapshots[&point.seq()], "point {} changed", point.id);
    }
    let v = store.verify().await.unwrap();
    assert!(v.bad.is_empty(), "{:?}", v.bad);
    // Processing still works after segments went: nothing new to cut.
    let again = p.process(Cut::Latest).await.unwrap();
    assert!(again.points.is_empty(), "{again:?}");
}
