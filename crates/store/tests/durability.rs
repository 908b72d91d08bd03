//! Durability of points whose chunks are put without waiting ([`Backend::put_unsynced`]) and
//! synced in batches: a power cut at any step of a seed never leaves a point record whose
//! chunks, pages or roots are lost. The backend here models a machine's disk: puts are durable,
//! unsynced puts are visible at once but only durable after a sync naming them, and a power cut
//! stops every operation and then drops what was not durable.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use common::{small_config, Rng, CHUNK};
use lifeboat_store::format::{chunk_key, encode_chunk_parts};
use lifeboat_store::{
    Backend, ObjectId, ObjectInfo, PointMeta, PreparedChunk, PutMode, PutOutcome, Store, StoreError,
};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

type Objects = HashMap<String, (Bytes, SystemTime)>;

/// A disk that can lose power.
#[derive(Debug)]
struct PowerCut {
    durable: Mutex<Objects>,
    /// Written without a sync since: lost at a power cut (readers see it until then).
    volatile: Mutex<Objects>,
    /// Writing operations left before the power goes (negative: never).
    left: AtomicI64,
}

impl PowerCut {
    fn new(ops: Option<i64>) -> Arc<Self> {
        Arc::new(PowerCut {
            durable: Mutex::default(),
            volatile: Mutex::default(),
            left: AtomicI64::new(ops.unwrap_or(-1)),
        })
    }

    /// One writing operation: refused once the power is gone.
    fn op(&self) -> Result<(), StoreError> {
        let before = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then_some(n - 1).or((n < 0).then_some(n))
            });
        match before {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::InvalidArgument("the power is off".into())),
        }
    }

    /// The power goes: nothing more is written, and what was not synced is lost.
    fn cut(&self) {
        self.left.store(0, Ordering::SeqCst);
        self.volatile.lock().unwrap().clear();
    }

    fn lookup(&self, key: &str) -> Option<(Bytes, SystemTime)> {
        let v = self.volatile.lock().unwrap().get(key).cloned();
        v.or_else(|| self.durable.lock().unwrap().get(key).cloned())
    }

    fn write(&self, key: &str, data: Bytes, mode: PutMode, durable: bool) -> PutOutcome {
        let (mut d, mut v) = (self.durable.lock().unwrap(), self.volatile.lock().unwrap());
        if mode == PutMode::Create && (d.contains_key(key) || v.contains_key(key)) {
            return PutOutcome::AlreadyExists;
        }
        let obj = (data, SystemTime::now());
        if durable {
            v.remove(key);
            d.insert(key.to_string(), obj);
        } else {
            v.insert(key.to_string(), obj);
        }
        PutOutcome::Written
    }
}

#[async_trait]
impl Backend for PowerCut {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<PutOutcome, StoreError> {
        self.op()?;
        Ok(self.write(key, data, mode, true))
    }
    async fn put_unsynced(
        &self,
        key: &str,
        parts: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<PutOutcome, StoreError> {
        self.op()?;
        Ok(self.write(key, Bytes::from(parts.concat()), mode, false))
    }
    async fn sync(&self, keys: &[String]) -> Result<(), StoreError> {
        // A disk takes its time: a writer that does not wait for its syncs writes its record
        // before they are done.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        self.op()?;
        let (mut d, mut v) = (self.durable.lock().unwrap(), self.volatile.lock().unwrap());
        for k in keys {
            match v.remove(k) {
                Some(obj) => {
                    d.insert(k.clone(), obj);
                }
                None if d.contains_key(k) => {}
                None => return Err(StoreError::NotFound { key: k.clone() }),
            }
        }
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.lookup(key)
            .map(|(b, _)| b)
            .ok_or(StoreError::NotFound {
                key: key.to_string(),
            })
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        let b = self.get(key).await?;
        Ok(b.slice(range.start as usize..range.end as usize))
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.lookup(key).map(|(b, t)| ObjectInfo {
            key: key.to_string(),
            size: b.len() as u64,
            last_modified: t,
        }))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut all: Objects = self.durable.lock().unwrap().clone();
        all.extend(self.volatile.lock().unwrap().clone());
        let p = format!("{}/", prefix.trim_end_matches('/'));
        Ok(all
            .into_iter()
            .filter(|(k, _)| prefix.is_empty() || k.starts_with(&p))
            .map(|(key, (b, t))| ObjectInfo {
                key,
                size: b.len() as u64,
                last_modified: t,
            })
            .collect())
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.op()?;
        self.durable.lock().unwrap().remove(key);
        self.volatile.lock().unwrap().remove(key);
        Ok(())
    }
    fn describe(&self) -> String {
        "power-cut test disk".into()
    }
}

/// A disk image of `chunks` chunks: random, zero and repeated chunks.
fn image(chunks: usize, seed: u64) -> Vec<u8> {
    let c = CHUNK as usize;
    let mut rng = Rng(seed | 1);
    let mut img = vec![0u8; chunks * c];
    for i in 0..chunks {
        match rng.below(4) {
            0 => {}
            1 if i > 0 => {
                let (a, b) = img.split_at_mut(i * c);
                b[..c].copy_from_slice(&a[(i - 1) * c..i * c]);
            }
            _ => rng.fill(&mut img[i * c..(i + 1) * c]),
        }
    }
    img
}

/// Stores `img` as `vm`'s point at 0 as a seed does: prepared chunks, in batches.
async fn seed(store: &Store, vm: &VmId, img: &[u8], batch: usize) -> Result<(), StoreError> {
    let mut w = store.point_writer(vm, None).await?;
    w.add_disk(DiskId(0), img.len() as u64)?;
    let level = store.config().zstd_level;
    let chunks: Vec<(u64, PreparedChunk)> = img
        .chunks(CHUNK as usize)
        .enumerate()
        .map(|(i, c)| {
            (
                i as u64,
                PreparedChunk::new(Bytes::copy_from_slice(c), level),
            )
        })
        .collect();
    for b in chunks.chunks(batch) {
        w.set_prepared(DiskId(0), b.to_vec()).await?;
    }
    w.commit(PointMeta::marker(
        Seq(0),
        Epoch(1),
        CheckpointKind::CrashConsistent,
        SystemTime::now(),
    ))
    .await?;
    Ok(())
}

/// After a power cut: every point that survived is whole (verify) and is the image.
async fn check_after_cut(store: &Store, vm: &VmId, img: &[u8]) -> bool {
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "after a power cut: {:?}", report.bad);
    let points = store.list_points(vm).await.unwrap();
    for p in &points {
        let r = store.disk_reader(p, DiskId(0)).await.unwrap();
        let mut got = vec![0u8; img.len()];
        assert_eq!(r.read_at(0, &mut got).await.unwrap(), img.len());
        assert!(got == img, "point {} is not the image", p.id);
    }
    !points.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_any_step_of_a_seed_leaves_no_point_with_lost_objects() {
    let vm = VmId::new("cut-1").unwrap();
    let img = image(40, 7);
    // How many writing operations a whole seed takes.
    let full = PowerCut::new(None);
    let store = Store::new(full.clone(), small_config()).unwrap();
    seed(&store, &vm, &img, 4).await.unwrap();
    full.cut();
    assert!(check_after_cut(&store, &vm, &img).await, "a finished seed");
    let total = {
        let counter = PowerCut::new(Some(i64::MAX));
        let store = Store::new(counter.clone(), small_config()).unwrap();
        seed(&store, &vm, &img, 4).await.unwrap();
        i64::MAX - counter.left.load(Ordering::SeqCst)
    };
    let mut survived = 0;
    for ops in 0..=total {
        let disk = PowerCut::new(Some(ops));
        let store = Store::new(disk.clone(), small_config()).unwrap();
        let done = seed(&store, &vm, &img, 4).await;
        // Background syncs may still be running: let them hit the cut too.
        disk.cut();
        tokio::task::yield_now().await;
        if check_after_cut(&store, &vm, &img).await {
            survived += 1;
        } else {
            assert!(done.is_err(), "a finished seed without its point");
        }
    }
    assert!(
        survived >= 1,
        "the seed with every operation done keeps its point"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_found_stored_but_not_synced_is_synced_before_the_record() {
    let img = image(12, 9);
    let level = small_config().zstd_level;
    for prepared in [true, false] {
        let disk = PowerCut::new(None);
        let store = Store::new(disk.clone(), small_config()).unwrap();
        // Another writer (killed since) put every chunk of the image without syncing it.
        for c in img.chunks(CHUNK as usize) {
            let id = ObjectId::of(c);
            let parts = encode_chunk_parts(Bytes::copy_from_slice(c), &id, level);
            disk.put_unsynced(&chunk_key(&id), parts.to_vec(), PutMode::Create)
                .await
                .unwrap();
        }
        let vm = VmId::new("found-1").unwrap();
        if prepared {
            seed(&store, &vm, &img, 3).await.unwrap();
        } else {
            let mut w = store.point_writer(&vm, None).await.unwrap();
            w.add_disk(DiskId(0), img.len() as u64).unwrap();
            for (i, c) in img.chunks(CHUNK as usize).enumerate() {
                w.set_chunk(DiskId(0), i as u64, c).await.unwrap();
            }
            w.commit(PointMeta::marker(
                Seq(0),
                Epoch(1),
                CheckpointKind::CrashConsistent,
                SystemTime::now(),
            ))
            .await
            .unwrap();
        }
        disk.cut();
        assert!(
            check_after_cut(&store, &vm, &img).await,
            "prepared: {prepared}"
        );
    }
}
