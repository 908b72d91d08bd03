//! Writing and reading points, sharing, zero chunks, GC.

mod common;

use std::collections::BTreeSet;

use common::*;
use lifeboat_store::{PointRecord, Store};
use lifeboat_types::{CheckpointKind, DiskId};

const DISK: u64 = 64 << 20;

/// Applies random writes and zero ranges to the model; returns the touched chunk indices.
fn mutate(model: &mut [u8], rng: &mut Rng, ops: usize) -> BTreeSet<u64> {
    let mut touched = BTreeSet::new();
    for _ in 0..ops {
        let len = 1 + rng.below(300 * 1024) as usize;
        let off = rng.below(model.len() as u64 - len as u64) as usize;
        if rng.below(4) == 0 {
            model[off..off + len].fill(0);
        } else {
            rng.fill(&mut model[off..off + len]);
        }
        let first = off as u64 / CHUNK as u64;
        let last = (off + len - 1) as u64 / CHUNK as u64;
        touched.extend(first..=last);
    }
    touched
}

async fn write_point(
    store: &Store,
    base: Option<&PointRecord>,
    model: &[u8],
    chunks: impl IntoIterator<Item = u64>,
    seq: u64,
) -> PointRecord {
    let vm = vm("vm1");
    let mut w = store.point_writer(&vm, base).await.unwrap();
    if base.is_none() {
        w.add_disk(DiskId(0), model.len() as u64).unwrap();
    }
    for i in chunks {
        let s = (i * CHUNK as u64) as usize;
        let e = (s + CHUNK as usize).min(model.len());
        w.set_chunk(DiskId(0), i, &model[s..e]).await.unwrap();
    }
    w.commit(meta(seq, CheckpointKind::CrashConsistent))
        .await
        .unwrap()
}

async fn assert_point_equals(store: &Store, p: &PointRecord, model: &[u8]) {
    let r = store.disk_reader(p, DiskId(0)).await.unwrap();
    assert_eq!(r.size(), model.len() as u64);
    // Odd-sized reads crossing chunk boundaries.
    let mut buf = vec![0u8; 1_000_003];
    let mut off = 0u64;
    while off < r.size() {
        let n = r.read_at(off, &mut buf).await.unwrap();
        assert!(n > 0);
        assert!(
            buf[..n] == model[off as usize..off as usize + n],
            "point {} differs from the model in [{off}, +{n})",
            p.id
        );
        off += n as u64;
    }
    assert_eq!(r.read_at(r.size(), &mut buf).await.unwrap(), 0);
    let last = r.chunk_count() - 1;
    let c = r.read_chunk(last).await.unwrap();
    assert_eq!(&c[..], &model[(last * CHUNK as u64) as usize..]);
}

#[tokio::test]
async fn three_points_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for store in [memory_store(), local_store(dir.path())] {
        let mut rng = Rng(0x5eed);
        let mut model = vec![0u8; DISK as usize];
        let mut models = Vec::new();
        let mut points: Vec<PointRecord> = Vec::new();
        for seq in [10u64, 20, 30] {
            let touched = mutate(&mut model, &mut rng, 40);
            let p = write_point(&store, points.last(), &model, touched, seq).await;
            models.push(model.clone());
            points.push(p);
        }
        let listed = store.list_points(&vm("vm1")).await.unwrap();
        assert_eq!(listed, points);
        for (p, m) in points.iter().zip(&models) {
            assert_point_equals(&store, p, m).await;
        }
        assert_eq!(
            store.latest_point(&vm("vm1")).await.unwrap().as_ref(),
            points.last()
        );
        assert!(store.verify().await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn a_second_point_shares_everything_unchanged() {
    let store = memory_store();
    let mut rng = Rng(7);
    let mut model = vec![0u8; DISK as usize];
    rng.fill(&mut model[..(DISK / 2) as usize]);
    let all = 0..DISK / CHUNK as u64;
    let p1 = write_point(&store, None, &model, all, 1).await;
    let before = [
        keys(&store, "chunks").await,
        keys(&store, "pages").await,
        keys(&store, "roots").await,
        keys(&store, "vms/vm1/points").await,
    ];
    assert_eq!(
        before[0].len(),
        512,
        "half the disk is zero: only 512 chunks"
    );
    assert_eq!(p1.new_chunks, 512);
    // Change one 4 KiB block in chunk 700 (in the zero half) and rewrite every chunk.
    model[700 * CHUNK as usize + 4096] = 1;
    let p2 = write_point(&store, Some(&p1), &model, 0..DISK / CHUNK as u64, 2).await;
    let after = [
        keys(&store, "chunks").await,
        keys(&store, "pages").await,
        keys(&store, "roots").await,
        keys(&store, "vms/vm1/points").await,
    ];
    for (b, a) in before.iter().zip(&after) {
        assert!(b.is_subset(a));
        assert_eq!(
            a.len(),
            b.len() + 1,
            "exactly one new object: {:?}",
            a.difference(b)
        );
    }
    assert_eq!(p2.new_chunks, 1);
    assert_point_equals(&store, &p1, &{
        let mut m = model.clone();
        m[700 * CHUNK as usize + 4096] = 0;
        m
    })
    .await;
    assert_point_equals(&store, &p2, &model).await;
}

#[tokio::test]
async fn zero_chunks_are_never_stored() {
    let store = memory_store();
    let model = vec![0u8; DISK as usize];
    let p = write_point(&store, None, &model, 0..DISK / CHUNK as u64, 1).await;
    assert!(keys(&store, "chunks").await.is_empty());
    assert_eq!(p.new_chunks, 0);
    // A 64 MiB zero disk is 64 identical pages: one page object, one root.
    assert_eq!(keys(&store, "pages").await.len(), 1);
    assert_point_equals(&store, &p, &model).await;
    // Zeroing a stored chunk turns it back into a zero entry.
    let mut m2 = model.clone();
    m2[5] = 9;
    let p2 = write_point(&store, Some(&p), &m2, [0], 2).await;
    assert_eq!(keys(&store, "chunks").await.len(), 1);
    let p3 = write_point(&store, Some(&p2), &model, [0], 3).await;
    let r = store.disk_reader(&p3, DiskId(0)).await.unwrap();
    assert_eq!(r.entry(0).await.unwrap(), lifeboat_store::Entry::Zero);
}

#[tokio::test]
async fn odd_disk_sizes_and_disks_joining_later() {
    let store = memory_store();
    let v = vm("vm1");
    let size = 3 * CHUNK as u64 + 12345;
    let mut model = vec![0u8; size as usize];
    Rng(3).fill(&mut model);
    let mut w = store.point_writer(&v, None).await.unwrap();
    w.add_disk(DiskId(0), size).unwrap();
    // Wrong lengths and indices are refused.
    assert!(w
        .set_chunk(DiskId(0), 3, &model[..CHUNK as usize])
        .await
        .is_err());
    assert!(w.set_chunk(DiskId(0), 4, &model[..12345]).await.is_err());
    assert!(w
        .set_chunk(DiskId(1), 0, &model[..CHUNK as usize])
        .await
        .is_err());
    for i in 0..4u64 {
        let s = (i * CHUNK as u64) as usize;
        let e = (s + CHUNK as usize).min(model.len());
        w.set_chunk(DiskId(0), i, &model[s..e]).await.unwrap();
    }
    let p1 = w
        .commit(meta(5, CheckpointKind::AppConsistent))
        .await
        .unwrap();
    assert_eq!(p1.id, "00000000000000000005-app");
    assert_eq!(p1.disks_summary(), "1 of 1 disks");
    assert_point_equals(&store, &p1, &model).await;

    let mut w = store.point_writer(&v, Some(&p1)).await.unwrap();
    w.add_disk(DiskId(1), 1 << 20).unwrap();
    let mut m = meta(9, CheckpointKind::CrashConsistent);
    m.disks_total = Some(2);
    let p2 = w.commit(m).await.unwrap();
    assert_eq!(p2.disks_summary(), "2 of 2 disks");
    assert_eq!(
        p2.disk(DiskId(0)).unwrap().root,
        p1.disk(DiskId(0)).unwrap().root
    );
    assert!(store.disk_reader(&p1, DiskId(1)).await.is_err());
    let r = store.disk_reader(&p2, DiskId(1)).await.unwrap();
    let mut b = vec![1u8; 4096];
    r.read_at(1000, &mut b).await.unwrap();
    assert!(b.iter().all(|&x| x == 0));

    let kinds = store
        .latest_point_of_kind(&v, CheckpointKind::AppConsistent)
        .await
        .unwrap();
    assert_eq!(kinds.unwrap().id, p1.id);
    assert_eq!(store.get_point(&v, &p2.id).await.unwrap(), p2);
    // The same id again is refused: points are never replaced.
    let w = store.point_writer(&v, Some(&p2)).await.unwrap();
    let e = w
        .commit(meta(9, CheckpointKind::CrashConsistent))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

/// Every chunk/page/root key a point references.
async fn reachable(store: &Store, p: &PointRecord) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in &p.disks {
        out.insert(lifeboat_store::format::root_key(&d.root));
        let root = store.get_root(&d.root).await.unwrap();
        for pid in &root.pages {
            out.insert(lifeboat_store::format::page_key(pid));
            for e in store.get_page(pid).await.unwrap() {
                if let lifeboat_store::Entry::Chunk(c) = e {
                    out.insert(lifeboat_store::format::chunk_key(&c));
                }
            }
        }
    }
    out
}

async fn all_data_keys(store: &Store) -> BTreeSet<String> {
    let mut k = keys(store, "chunks").await;
    k.extend(keys(store, "pages").await);
    k.extend(keys(store, "roots").await);
    k
}

#[tokio::test]
async fn gc_deletes_exactly_the_unreferenced_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let v = vm("vm1");
    let mut rng = Rng(99);
    let mut model = vec![0u8; DISK as usize];
    let mut points = Vec::new();
    let mut models = Vec::new();
    for seq in 1..=3u64 {
        let t = mutate(&mut model, &mut rng, 30);
        let p = write_point(&store, points.last(), &model, t, seq).await;
        points.push(p);
        models.push(model.clone());
    }
    let keep: BTreeSet<String> = {
        let mut k = reachable(&store, &points[0]).await;
        k.extend(reachable(&store, &points[2]).await);
        k
    };
    let everything = all_data_keys(&store).await;
    let garbage: BTreeSet<String> = everything.difference(&keep).cloned().collect();
    assert!(!garbage.is_empty());
    store.delete_point(&v, &points[1].id).await.unwrap();
    tick().await;

    // Young objects are protected by the grace period.
    let rep = store.gc().await.unwrap();
    assert!(rep.deleted.is_empty());
    assert_eq!(rep.kept_young, garbage.len());
    assert_eq!(all_data_keys(&store).await, everything);

    let rep = store
        .gc_with_grace(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rep.points, 2);
    assert_eq!(
        rep.deleted.iter().cloned().collect::<BTreeSet<_>>(),
        garbage
    );
    assert_eq!(all_data_keys(&store).await, keep);
    assert_point_equals(&store, &points[0], &models[0]).await;
    assert_point_equals(&store, &points[2], &models[2]).await;
    assert!(store.verify().await.unwrap().is_ok());
    // Nothing more to do.
    let rep = store
        .gc_with_grace(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(rep.deleted.is_empty());
}

#[tokio::test]
async fn gc_spares_an_in_flight_writer_even_if_its_base_is_deleted() {
    let store = memory_store();
    let v = vm("vm1");
    let mut rng = Rng(1234);
    let mut model = vec![0u8; DISK as usize];
    let t = mutate(&mut model, &mut rng, 20);
    let p1 = write_point(&store, None, &model, t, 1).await;

    let mut w = store.point_writer(&v, Some(&p1)).await.unwrap();
    let t = mutate(&mut model, &mut rng, 5);
    for i in t {
        let s = (i * CHUNK as u64) as usize;
        w.set_chunk(DiskId(0), i, &model[s..s + CHUNK as usize])
            .await
            .unwrap();
    }
    // Retention deletes the writer's base while it writes; GC runs with no grace at all.
    store.delete_point(&v, &p1.id).await.unwrap();
    tick().await;
    let rep = store
        .gc_with_grace(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rep.leases, 1);
    assert!(rep.deleted.is_empty(), "{:?}", rep.deleted);
    let p2 = w
        .commit(meta(2, CheckpointKind::CrashConsistent))
        .await
        .unwrap();
    assert_point_equals(&store, &p2, &model).await;
    // The lease is gone with the commit: now p1's private objects are collectable.
    tick().await;
    let rep = store
        .gc_with_grace(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(rep.leases, 0);
    assert!(!rep.deleted.is_empty());
    assert_point_equals(&store, &p2, &model).await;
    assert!(store.verify().await.unwrap().is_ok());
}
