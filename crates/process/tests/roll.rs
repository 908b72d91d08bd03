//! Rolling the base forward on a real store: retention stores the oldest kept point, re-bases
//! the points after it, and then releases the old base, its journal and its chunks; every kept
//! point reads back exactly (hash of the whole disk), and the store verifies clean. Cut off at
//! every one of its writes (a process killed there), the next retention finishes the roll with
//! the same result.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_policy::ReplicationPolicy;
use lifeboat_process::{apply_retention, open_point, plan_retention, Cut, PointView, Processor};
use lifeboat_ship::Shipper;
use lifeboat_store::{Backend, ObjectInfo, PutMode, PutOutcome, Store, StoreError};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

mod common;

use common::{collecting_config as config, collecting_store as open, CHUNK};

const DISK: usize = 1 << 20;
const HALF_HOUR: Duration = Duration::from_secs(1800);

/// Hour-aligned start, so that thinning's buckets are easy to reason about.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(497_000 * 3600)
}

fn policy() -> ReplicationPolicy {
    ReplicationPolicy {
        retention: Duration::from_secs(6 * 3600),
        ..ReplicationPolicy::default() // CDP window 1 h
    }
}

/// A random seed image, then 16 half-hourly marker points of small random writes, cut
/// journal-backed on the seed. Returns the hash of the whole disk at every point.
async fn history(store: &Store, vm: &VmId, dir: &std::path::Path) -> BTreeMap<String, [u8; 32]> {
    let mut model = lifeboat_testkit::random_bytes(DISK, 11);
    let img = dir.join("seed.img");
    std::fs::write(&img, &model).unwrap();
    let p = Processor::new(store.clone(), vm.clone());
    p.seed(&[(DiskId(0), img.as_path())], Seq(0), Epoch(1), t0())
        .await
        .unwrap();
    let mut jc = JournalConfig::new(vm.clone(), Epoch(1));
    jc.segment_max_bytes = 64 << 10;
    let journal = Arc::new(Journal::open(&dir.join("journal"), jc).unwrap());
    let shipper = Shipper::new(vm.clone(), journal.clone(), store.clone());
    let mut hashes = BTreeMap::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 1..=16u32 {
        for k in 0..4u64 {
            let off = (((u64::from(i) * 5 + k * 3) % 64) as usize) * (16 << 10);
            let data = lifeboat_testkit::random_bytes(16 << 10, {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            });
            journal.append_write(DiskId(0), off as u64, &data).unwrap();
            model[off..off + data.len()].copy_from_slice(&data);
        }
        journal
            .append_checkpoint(CheckpointKind::CrashConsistent, t0() + HALF_HOUR * i)
            .unwrap();
        journal.seal().unwrap();
        shipper.ship_once(journal.last_seq()).await.unwrap();
        let cut = p.process(Cut::AtMarkers).await.unwrap();
        assert_eq!(cut.points.len(), 1);
        hashes.insert(cut.points[0].id.clone(), *blake3::hash(&model).as_bytes());
    }
    hashes
}

/// The hash of the whole disk of every point, read as a restore does.
async fn images(store: &Store, vm: &VmId) -> BTreeMap<String, [u8; 32]> {
    let mut out = BTreeMap::new();
    for point in store.list_points(vm).await.unwrap() {
        let pit = open_point(store, vm, &point).await.unwrap();
        out.insert(point.id, image(store, &pit).await);
    }
    out
}

/// The hash of the whole disk of `pit`.
async fn image(store: &Store, pit: &lifeboat_process::PointInTime) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for c in 0..(DISK / CHUNK as usize) as u64 {
        h.update(&pit.read_disk_chunk(store, DiskId(0), c).await.unwrap());
    }
    *h.finalize().as_bytes()
}

/// The judging time: 8 h after the seed, so the 6 h retention dropped the seed and the points
/// of its first two hours.
fn now() -> SystemTime {
    t0() + HALF_HOUR * 16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_releases_the_old_base_and_every_kept_point_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"));
    let vm = VmId::new("roll-1").unwrap();
    let hashes = history(&store, &vm, dir.path()).await;
    let before = store.list_points(&vm).await.unwrap();
    let seed_id = before[0].id.clone();
    let views: Vec<PointView> = before.iter().filter_map(PointView::of).collect();
    let plan = plan_retention(&views, &policy(), now());
    assert!(plan.bases_only.contains(&seed_id), "{plan:?}");
    let chunks_before = store.backend().list("chunks").await.unwrap().len();

    let report = apply_retention(&store, &vm, &policy(), now())
        .await
        .unwrap();
    assert_eq!(report.rolled.len(), 1, "{report:?}");
    let roll = &report.rolled[0];
    assert_eq!(roll.from, seed_id);
    assert!(!roll.rebase.is_empty());

    // Kept: what thinning keeps, without the seed; one stored point, the new base, and every
    // other point re-based on it, with its roots.
    let points = store.list_points(&vm).await.unwrap();
    let ids: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
    let expect: Vec<String> = plan
        .keep
        .iter()
        .filter(|k| **k != seed_id)
        .cloned()
        .collect();
    assert_eq!(ids, expect);
    let base = points.iter().find(|p| p.id == roll.to).unwrap();
    assert!(!base.is_journal_backed());
    assert_eq!(points.iter().filter(|p| !p.is_journal_backed()).count(), 1);
    for p in points.iter().filter(|p| p.is_journal_backed()) {
        assert_eq!(p.base.as_deref(), Some(base.id.as_str()), "{}", p.id);
        assert_eq!(p.disks, base.disks, "{}", p.id);
    }
    // The journal up to the new base went, and the seed's own chunks with it.
    let segments = store.list_segments(&vm).await.unwrap();
    assert!(
        segments.iter().all(|s| s.last_seq > base.seq()),
        "{segments:?}"
    );
    assert!(report.segments_deleted > 0);
    assert!(!report.gc.deleted.is_empty());
    // One base's worth of chunks is left (there were the seed's and the new base's).
    let chunks_after = store.backend().list("chunks").await.unwrap().len();
    assert!(chunks_before + base.new_chunks as usize > DISK / CHUNK as usize);
    assert!(
        chunks_after <= DISK / CHUNK as usize,
        "{chunks_after} chunks"
    );

    // Every kept point reads exactly what it read before.
    let got = images(&store, &vm).await;
    for (id, h) in &got {
        assert_eq!(h, &hashes[id], "point {id} changed");
    }
    let v = store.verify().await.unwrap();
    assert!(v.bad.is_empty(), "{:?}", v.bad);

    // Again: nothing more to roll or release.
    let again = apply_retention(&store, &vm, &policy(), now())
        .await
        .unwrap();
    assert!(
        again.rolled.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
}

/// A backend that fails every write from the `left`-th on, as a process killed there would
/// stop writing (reads still answer: the run that was "killed" just returns its error).
#[derive(Debug)]
struct CutOff {
    inner: Arc<dyn Backend>,
    left: AtomicUsize,
    /// Journal segments read.
    segment_gets: AtomicUsize,
}

impl CutOff {
    fn write(&self, key: &str) -> Result<(), StoreError> {
        let ok = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if ok {
            Ok(())
        } else {
            Err(StoreError::InvalidArgument(format!(
                "cut off before writing {key}"
            )))
        }
    }
}

#[async_trait]
impl Backend for CutOff {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<PutOutcome, StoreError> {
        self.write(key)?;
        self.inner.put(key, data, mode).await
    }
    async fn put_unsynced(
        &self,
        key: &str,
        parts: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        self.write(key)?;
        self.inner.put_unsynced(key, parts, mode).await
    }
    async fn sync(&self, keys: &[String]) -> Result<(), StoreError> {
        self.write("a sync")?;
        self.inner.sync(keys).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        if key.contains("/segments/") {
            self.segment_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.write(key)?;
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("{} (cut off)", self.inner.describe())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_cut_off_at_any_write_is_finished_by_the_next_retention() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let vm = VmId::new("roll-2").unwrap();
    let hashes = history(&open(&pristine), &vm, dir.path()).await;

    // The uncut run: what every cut-off run must end up as.
    let copy = |to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(&pristine)
            .arg(to)
            .status()
            .unwrap()
            .success();
        assert!(ok, "copying the store");
    };
    let reference = dir.path().join("reference");
    copy(&reference);
    let store = open(&reference);
    apply_retention(&store, &vm, &policy(), now())
        .await
        .unwrap();
    let want: Vec<String> = store
        .list_points(&vm)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();

    let work = dir.path().join("work");
    let mut cuts = 0;
    for n in 0.. {
        assert!(n < 2000, "the roll never finished");
        copy(&work);
        let plain = open(&work);
        let cut = Store::new(
            Arc::new(CutOff {
                inner: plain.backend().clone(),
                left: AtomicUsize::new(n),
                segment_gets: AtomicUsize::new(0),
            }),
            config(),
        )
        .unwrap();
        let first = Processor::new(cut, vm.clone())
            .retain(&policy(), now())
            .await;
        // "Restarted": the next retention, uncut. A GC lock the cut-off run left is taken over
        // once its TTL is past; here at once.
        if plain.backend().head("gc/lock").await.unwrap().is_some() {
            plain.backend().delete("gc/lock").await.unwrap();
        }
        apply_retention(&plain, &vm, &policy(), now())
            .await
            .unwrap_or_else(|e| panic!("cut after {n} writes: the next retention failed: {e:?}"));
        let points = plain.list_points(&vm).await.unwrap();
        let ids: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
        assert_eq!(ids, want, "cut after {n} writes");
        for (id, h) in images(&plain, &vm).await {
            assert_eq!(h, hashes[&id], "cut after {n} writes: point {id} changed");
        }
        let v = plain.verify().await.unwrap();
        assert!(v.bad.is_empty(), "cut after {n} writes: {:?}", v.bad);
        if first.is_ok() {
            break;
        }
        cuts += 1;
    }
    // Storing the new base, re-basing, deleting and collecting: many places to be cut at.
    eprintln!("cut off at each of {cuts} writes");
    assert!(cuts > 20, "only {cuts} writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_lease_holds_the_base_until_it_lapses() {
    use lifeboat_store::PinRecord;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"));
    let vm = VmId::new("roll-3").unwrap();
    let hashes = history(&store, &vm, dir.path()).await;
    let points = store.list_points(&vm).await.unwrap();
    let (seed, reading) = (&points[0], &points[3]);

    // A restore reads an old point through the seed, under a lease it keeps renewing.
    let lease = PinRecord::leased(
        seed.seq().0,
        reading.seq().0,
        "a restore",
        Duration::from_secs(600),
    );
    store.put_pin(&vm, "restore-1", &lease).await.unwrap();
    let r = apply_retention(&store, &vm, &policy(), now())
        .await
        .unwrap();
    assert!(r.rolled.is_empty(), "{r:?}");
    assert!(store.get_point(&vm, &seed.id).await.is_ok());
    // The pinned point itself was thinned away, but what it reads is all there.
    let pit = lifeboat_process::state_at(&store, &vm, lifeboat_process::Target::Seq(reading.seq()))
        .await
        .unwrap();
    assert_eq!(image(&store, &pit).await, hashes[&reading.id]);

    // Its process was killed: the lease lapses (here at once), is removed, and the base rolls.
    let lapsed = PinRecord::leased(seed.seq().0, reading.seq().0, "a restore", Duration::ZERO);
    store.put_pin(&vm, "restore-1", &lapsed).await.unwrap();
    let r = apply_retention(&store, &vm, &policy(), now())
        .await
        .unwrap();
    assert_eq!(r.rolled.len(), 1, "{r:?}");
    assert!(store.list_pins(&vm).await.unwrap().is_empty());
    assert!(store.get_point(&vm, &seed.id).await.is_err());
    // A pin without a lease (a drill) never lapses.
    let drill = PinRecord::new(seed.seq().0, reading.seq().0, "a drill");
    assert!(drill.holds_at(Duration::from_secs(365 * 86_400)));
    assert!(!lapsed.holds_at(Duration::ZERO));
    assert!(lease.holds_at(Duration::from_secs(599)) && !lease.holds_at(Duration::from_secs(600)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_rule_measures_the_chain_across_a_roll_without_reading_the_journal_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let vm = VmId::new("roll-4").unwrap();
    history(&open(&path), &vm, dir.path()).await;
    let counting = Arc::new(CutOff {
        inner: open(&path).backend().clone(),
        left: AtomicUsize::new(usize::MAX),
        segment_gets: AtomicUsize::new(0),
    });
    let store = Store::new(counting.clone(), config()).unwrap();
    let p = Processor::new(store.clone(), vm.clone());
    let before = p.newest_chain().await.unwrap().expect("a chain");
    assert_eq!(before.base, store.list_points(&vm).await.unwrap()[0].id);

    let report = p.retain(&policy(), now()).await.unwrap();
    assert_eq!(report.rolled.len(), 1);
    let reads = counting.segment_gets.load(Ordering::SeqCst);
    let after = p.newest_chain().await.unwrap().expect("a chain");
    assert_eq!(after.base, report.rolled[0].to);
    // Nothing was stored since: the chain after the roll is measured from what was read.
    assert_eq!(
        counting.segment_gets.load(Ordering::SeqCst),
        reads,
        "segments read again"
    );
    // ... and it is what a processor starting afresh measures (the index estimate may err
    // high: references are taken off by segment).
    let fresh = Processor::new(open(&path), vm.clone())
        .newest_chain()
        .await
        .unwrap()
        .expect("a chain");
    assert_eq!(after.touched_chunks, fresh.touched_chunks);
    assert_eq!(after.journal_bytes, fresh.journal_bytes);
    assert!(
        after.index_bytes >= fresh.index_bytes,
        "{after:?} {fresh:?}"
    );
    assert!(
        after.index_bytes < before.index_bytes,
        "{after:?} {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_is_never_re_based_on_a_point_that_is_not_between_its_base_and_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"));
    let vm = VmId::new("roll-5").unwrap();
    let hashes = history(&store, &vm, dir.path()).await;
    let p = Processor::new(store.clone(), vm.clone());
    let points = store.list_points(&vm).await.unwrap();
    let (early, late) = (points[4].clone(), points[12].clone());
    let late = p.store_point(&late).await.unwrap();
    // A stored point after the point, a journal-backed one, and another VM's: refused, the
    // record untouched.
    let other = VmId::new("roll-5b").unwrap();
    for (base, what) in [
        (late.clone(), "after it"),
        (points[2].clone(), "journal-backed"),
        (
            lifeboat_store::PointRecord {
                vm: other.to_string(),
                ..points[0].clone()
            },
            "another VM's",
        ),
    ] {
        let e = store
            .rebase_journal_point(&vm, &early.id, &base)
            .await
            .expect_err(what);
        assert!(
            e.to_string().contains("cannot be the new base"),
            "{what}: {e}"
        );
        assert_eq!(
            store.get_point(&vm, &early.id).await.unwrap(),
            early,
            "{what}"
        );
    }
    // Between: accepted, and the point reads the same.
    let mid = p.store_point(&points[3]).await.unwrap();
    let rebased = store
        .rebase_journal_point(&vm, &early.id, &mid)
        .await
        .unwrap();
    assert_eq!(rebased.base.as_deref(), Some(mid.id.as_str()));
    assert_eq!(rebased.disks, mid.disks);
    let pit = open_point(&store, &vm, &rebased).await.unwrap();
    assert_eq!(image(&store, &pit).await, hashes[&early.id]);
    // Back to the older base: refused (a base never moves back).
    let e = store
        .rebase_journal_point(&vm, &early.id, &points[0])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot be the new base"), "{e}");
}
