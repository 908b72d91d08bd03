//! Garbage collection and point writers exclude each other through the store: GC puts its lock
//! then looks for writer leases; a writer puts its lease then looks for the lock. Whichever
//! comes second yields, so no sweep ever runs beside a writer that may reuse an old object.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{local_store, meta, small_config, tick, vm, CHUNK};
use lifeboat_store::{PutMode, Store, StoreConfig, StoreError};
use lifeboat_types::{CheckpointKind, DiskId};

const LOCK: &str = "gc/lock";

async fn put_lock(store: &Store) {
    let body = br#"{"format":"lifeboat-gc-lock","version":1,"started_ns":1}"#;
    store
        .backend()
        .put(LOCK, Bytes::from_static(body), PutMode::Overwrite)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_writer_waits_for_a_running_gc_and_gc_defers_to_a_live_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let v = vm("gc-1");
    // An unreferenced chunk: garbage, old enough for a zero grace.
    let mut w = store.point_writer(&v, None).await.unwrap();
    w.add_disk(DiskId(0), u64::from(CHUNK) * 4).unwrap();
    w.set_chunk(DiskId(0), 0, &vec![7u8; CHUNK as usize])
        .await
        .unwrap();
    w.abort().await.unwrap();
    tick().await;

    // A collector holds the lock: a writer starting now waits for it.
    put_lock(&store).await;
    let (s2, v2) = (store.clone(), v.clone());
    let writer = tokio::spawn(async move { s2.point_writer(&v2, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "a writer started beside a running GC"
    );
    // A second collector is refused, naming the lock.
    let e = store.gc_with_grace(Duration::ZERO).await.unwrap_err();
    assert!(matches!(e, StoreError::GcRunning { .. }), "{e:?}");
    assert!(e.to_string().contains("gc/lock"), "{e}");
    store.backend().delete(LOCK).await.unwrap();
    let mut w = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer goes on once the lock is released")
        .unwrap()
        .unwrap();

    // The writer's lease is live: GC sweeps nothing, even the garbage, and says so.
    tick().await;
    let rep = store.gc_with_grace(Duration::ZERO).await.unwrap();
    assert!(rep.deferred && rep.leases == 1, "{rep:?}");
    assert!(rep.deleted.is_empty(), "{:?}", rep.deleted);
    assert!(store.backend().head(LOCK).await.unwrap().is_none());

    // The writer reuses the old chunk and commits; now GC runs and keeps what the point needs.
    w.add_disk(DiskId(0), u64::from(CHUNK) * 4).unwrap();
    w.set_chunk(DiskId(0), 0, &vec![7u8; CHUNK as usize])
        .await
        .unwrap();
    let p = w
        .commit(meta(1, CheckpointKind::CrashConsistent))
        .await
        .unwrap();
    tick().await;
    let rep = store.gc_with_grace(Duration::ZERO).await.unwrap();
    assert!(!rep.deferred && rep.leases == 0, "{rep:?}");
    let r = store.disk_reader(&p, DiskId(0)).await.unwrap();
    assert_eq!(*r.read_chunk(0).await.unwrap(), vec![7u8; CHUNK as usize]);
    assert!(store.verify().await.unwrap().is_ok());
}

#[tokio::test]
async fn a_killed_collectors_lock_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path().to_str().unwrap(),
        StoreConfig {
            gc_lock_ttl: Duration::from_millis(300),
            ..small_config()
        },
    )
    .unwrap();
    put_lock(&store).await;
    // Fresh: refused. Stale: taken over, and released after the run.
    assert!(store.gc_with_grace(Duration::ZERO).await.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let writer = store.point_writer(&vm("gc-2"), None).await.unwrap();
    writer.abort().await.unwrap();
    store.gc_with_grace(Duration::ZERO).await.unwrap();
    assert!(store.backend().head(LOCK).await.unwrap().is_none());
}

#[tokio::test]
async fn gc_removes_staging_files_left_by_interrupted_puts() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let v = vm("gc-3");
    let mut w = store.point_writer(&v, None).await.unwrap();
    w.add_disk(DiskId(0), u64::from(CHUNK)).unwrap();
    w.set_chunk(DiskId(0), 0, &vec![3u8; CHUNK as usize])
        .await
        .unwrap();
    let p = w
        .commit(meta(1, CheckpointKind::CrashConsistent))
        .await
        .unwrap();
    // A put killed between writing its staging file and publishing it: an old one, and one
    // that may still be in flight.
    let chunk_dir = std::fs::read_dir(dir.path().join("chunks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let old = chunk_dir.join("00aa#7");
    let fresh = chunk_dir.join("00bb#8");
    std::fs::write(&old, b"partial").unwrap();
    std::fs::write(&fresh, b"partial").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    // Listings never show them.
    assert!(store
        .backend()
        .list("chunks")
        .await
        .unwrap()
        .iter()
        .all(|o| !o.key.contains('#')));
    let rep = store.gc_with_grace(Duration::ZERO).await.unwrap();
    assert_eq!(rep.staging_removed, vec![old.display().to_string()]);
    assert!(!old.exists() && fresh.exists());
    let r = store.disk_reader(&p, DiskId(0)).await.unwrap();
    assert_eq!(*r.read_chunk(0).await.unwrap(), vec![3u8; CHUNK as usize]);
}
