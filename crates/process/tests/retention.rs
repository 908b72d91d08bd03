//! Retention over three days of points: exactly the policy's thinning is kept, every kept point
//! still reads back exactly, unreferenced chunks are collected, old segments go.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_policy::{points_to_keep, PointMeta, ReplicationPolicy};
use lifeboat_process::{apply_retention, Cut, Processor};
use lifeboat_ship::Shipper;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

use common::{collecting_store, CHUNK};

const DISK: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinning_deletes_exactly_the_dropped_points_and_their_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let store = collecting_store(&dir.path().join("store"));
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

/// The product's path over a day of half-hourly points: cut journal-backed, stored by the store
/// rule (here every 6 h of chain), retention after every round. Kept journal-backed points far
/// beyond the CDP window still read back exactly (hash of the whole disk), through bases hours
/// old; the journal between the last kept point of a base and the next base is released (the
/// stored journal has holes, and reads skip them); a point whose journal went is refused
/// clearly; the store verifies clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_backed_points_keep_their_journal_beyond_the_window() {
    use lifeboat_process::{open_point, plan_retention, state_at, PointView, StoreRule, Target};

    let dir = tempfile::tempdir().unwrap();
    let store = collecting_store(&dir.path().join("store"));
    let vm = VmId::new("ret-jb").unwrap();
    // Hour-aligned, so that thinning's buckets are easy to reason about.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(497_000 * 3600);
    let half_hour = Duration::from_secs(1800);
    let img = dir.path().join("d.img");
    let mut model = vec![0u8; DISK];
    std::fs::write(&img, &model).unwrap();
    let p = Processor::new(store.clone(), vm.clone());
    p.seed(&[(DiskId(0), &img)], Seq(0), Epoch(1), t0)
        .await
        .unwrap();
    let mut jc = JournalConfig::new(vm.clone(), Epoch(1));
    jc.segment_max_bytes = 64 << 10;
    let journal = Arc::new(Journal::open(&dir.path().join("j"), jc).unwrap());
    let shipper = Shipper::new(vm.clone(), journal.clone(), store.clone());
    // 24 h, CDP 1 h. Stored by age only: the replay rule never fires on this little journal.
    let policy = ReplicationPolicy::default();
    let rule = StoreRule {
        min_interval: Duration::from_secs(60),
        max_chain_age: Duration::from_secs(6 * 3600),
        max_replay_factor: u64::MAX,
        ..StoreRule::default()
    };
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let hash = |b: &[u8]| *blake3::hash(b).as_bytes();
    let mut images: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    let (mut stored, mut deleted) = (0usize, 0usize);
    let mut rolled = Vec::new();
    for i in 1..=48u64 {
        // Small writes spread over the disk, unique to the round.
        for k in 0..4u64 {
            let off = (((i * 5 + k * 3) % 64) as usize) * (16 << 10);
            let data: Vec<u8> = (0..16 << 10)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            journal.append_write(DiskId(0), off as u64, &data).unwrap();
            model[off..off + data.len()].copy_from_slice(&data);
        }
        let t = t0 + half_hour * i as u32;
        journal
            .append_checkpoint(CheckpointKind::CrashConsistent, t)
            .unwrap();
        journal.seal().unwrap();
        shipper.ship_once(journal.last_seq()).await.unwrap();
        let cut = p.process(Cut::AtMarkers).await.unwrap();
        assert_eq!(cut.points.len(), 1);
        images.insert(cut.points[0].id.clone(), hash(&model));
        stored += p.store_due_with(&rule).await.unwrap().len();
        let r = apply_retention(&store, &vm, &policy, t).await.unwrap();
        deleted += r.segments_deleted;
        rolled.extend(r.rolled);
    }
    // The seed lost its hour to round 1's point once that was 2 h old: the base rolled to it,
    // and the points after it were re-based.
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert_eq!(
        rolled[0].from,
        lifeboat_store::point_id(Seq(0), CheckpointKind::CrashConsistent)
    );
    assert!(!rolled[0].rebase.is_empty());
    // Then stored by age every 6 h of chain (12 half hours): rounds 13, 25, 37.
    assert_eq!(stored, 3, "stored points");
    assert!(deleted > 0, "no segment was released");
    let now = t0 + half_hour * 48;

    // The store holds exactly what the plan keeps.
    let points = store.list_points(&vm).await.unwrap();
    let views: Vec<PointView> = points.iter().filter_map(PointView::of).collect();
    let plan = plan_retention(&views, &policy, now);
    let ids: Vec<&String> = points.iter().map(|p| &p.id).collect();
    assert_eq!(ids, plan.keep.iter().collect::<Vec<_>>());
    let segments = store.list_segments(&vm).await.unwrap();
    for s in &segments {
        assert!(
            plan.keeps_records(s.first_seq, s.last_seq),
            "{s:?} kept for nothing"
        );
    }
    let holes = segments
        .windows(2)
        .filter(|w| w[1].first_seq.0 > w[0].last_seq.0 + 1)
        .count();
    assert!(holes > 0, "the journal before a newer base was released");

    // Every kept point reads back exactly; journal-backed ones older than the window too.
    let mut far = 0;
    for point in &points {
        let pit = open_point(&store, &vm, point).await.unwrap();
        let mut img = vec![0u8; DISK];
        for c in 0..(DISK / CHUNK as usize) {
            let data = pit
                .read_disk_chunk(&store, DiskId(0), c as u64)
                .await
                .unwrap();
            img[c * CHUNK as usize..(c + 1) * CHUNK as usize].copy_from_slice(&data);
        }
        if point.seq() == Seq(0) {
            assert!(img.iter().all(|b| *b == 0));
            continue;
        }
        assert_eq!(hash(&img), images[&point.id], "point {} differs", point.id);
        let age = now.duration_since(point.time()).unwrap();
        let chain = point.time().duration_since(pit.base.time()).unwrap();
        if point.is_journal_backed() && age > Duration::from_secs(3600) {
            assert!(pit.records > 0);
            if chain >= Duration::from_secs(2 * 3600) {
                far += 1;
            }
        }
    }
    assert!(
        far > 0,
        "no journal-backed point hours from its base beyond the window"
    );
    // A position inside the CDP window reads, though the journal before it has holes: the
    // last write before the newest point's marker gives the newest point's image.
    let newest = points.last().unwrap();
    let pit = state_at(&store, &vm, Target::Seq(Seq(newest.seq().0 - 1)))
        .await
        .unwrap();
    let mut img = vec![0u8; DISK];
    for c in 0..(DISK / CHUNK as usize) {
        let data = pit
            .read_disk_chunk(&store, DiskId(0), c as u64)
            .await
            .unwrap();
        img[c * CHUNK as usize..(c + 1) * CHUNK as usize].copy_from_slice(&data);
    }
    assert_eq!(hash(&img), images[&newest.id]);
    let v = store.verify().await.unwrap();
    assert!(v.bad.is_empty(), "{:?}", v.bad);

    // A kept journal-backed point whose journal lost a segment is refused, naming what is
    // missing (and verify reports it).
    let p11 = points
        .iter()
        .rev()
        .find(|p| p.is_journal_backed() && p.base.as_deref() == Some(points[0].id.as_str()))
        .unwrap();
    let mid = segments
        .iter()
        .find(|s| s.first_seq > Seq(1) && s.last_seq < p11.seq())
        .unwrap();
    store.delete_segment(&vm, mid).await.unwrap();
    let e = open_point(&store, &vm, p11).await.unwrap_err();
    assert!(
        matches!(&e, lifeboat_process::ProcessError::JournalGone { missing, .. } if *missing == mid.first_seq),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("no longer in the region store"),
        "{e}"
    );
    let v = store.verify().await.unwrap();
    assert!(!v.bad.is_empty());
}
