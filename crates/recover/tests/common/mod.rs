//! Shared rig: a local-directory store with small chunks, seeded points (stored, and
//! journal-backed through the real journal, shipper and processor), the recovery's journal,
//! and a model of what a disk must hold.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use lifeboat_journal::{read_records, Journal, JournalConfig};
use lifeboat_process::{open_point, Cut, PointInTime, Processor};
use lifeboat_recover::{PointSource, RecoveryDisk, RecoveryOptions, Source};
use lifeboat_ship::Shipper;
use lifeboat_store::{PointRecord, Store, StoreConfig};
use lifeboat_types::{DiskId, Epoch, RecordKind, Seq, VmId};

/// Chunk size of the rig's store: small, so that a few MiB have many chunks.
pub const CHUNK: u32 = 64 << 10;

pub fn vm() -> VmId {
    VmId::new("web-1").unwrap()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store whose disks have `CHUNK`-sized chunks and 4 entries per index page.
pub fn small_store(dir: &Path) -> Store {
    Store::open_with(
        dir.join("store").to_str().unwrap(),
        StoreConfig {
            chunk_size: CHUNK,
            page_entries: 4,
            fsync: false,
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

/// An image: pseudo-random data with zero runs (whole zero chunks and partial ones), so that
/// the point has `Entry::Zero` chunks, data chunks and data chunks with zeroes inside.
pub fn mixed_image(len: usize, seed: u64) -> Vec<u8> {
    let mut v = lifeboat_testkit::random_bytes(len, seed);
    let c = CHUNK as usize;
    for (k, chunk) in v.chunks_mut(c).enumerate() {
        match k % 5 {
            1 | 3 => chunk.fill(0),
            4 => chunk[..c / 3].fill(0),
            _ => {}
        }
    }
    v
}

/// Seeds `content` as disk 0 of `vm()`'s first (stored) point, at position 0.
pub async fn seed(store: &Store, dir: &Path, content: &[u8]) -> PointRecord {
    let img = dir.join("seed.img");
    std::fs::write(&img, content).unwrap();
    Processor::new(store.clone(), vm())
        .seed(
            &[(DiskId(0), img.as_path())],
            Seq(0),
            Epoch(1),
            SystemTime::now(),
        )
        .await
        .unwrap()
}

/// Seeds `content`, then writes `ops` through the primary's real journal, ships the segments
/// and processes them into a journal-backed "latest" point. Returns the point and the model
/// (the seeded content with the writes applied).
pub async fn journal_backed(
    store: &Store,
    dir: &Path,
    content: &[u8],
    ops: &[(u64, Vec<u8>)],
) -> (PointRecord, Vec<u8>) {
    seed(store, dir, content).await;
    let journal = Arc::new(
        Journal::open(
            &dir.join("primary-journal"),
            JournalConfig::new(vm(), Epoch(1)),
        )
        .unwrap(),
    );
    let mut model = content.to_vec();
    for (k, (offset, data)) in ops.iter().enumerate() {
        let o = *offset as usize;
        if k % 4 == 3 {
            journal
                .append_zero(DiskId(0), *offset, data.len() as u64)
                .unwrap();
            model[o..o + data.len()].fill(0);
        } else {
            journal.append_write(DiskId(0), *offset, data).unwrap();
            model[o..o + data.len()].copy_from_slice(data);
        }
    }
    journal.seal().unwrap();
    let shipper = Shipper::new(vm(), journal.clone(), store.clone());
    shipper.ship_once(journal.last_seq()).await.unwrap();
    let report = Processor::new(store.clone(), vm())
        .process(Cut::Latest)
        .await
        .unwrap();
    let point = report.points.last().cloned().expect("a latest point");
    assert!(point.is_journal_backed());
    (point, model)
}

pub async fn pit(store: &Store, point: &PointRecord) -> PointInTime {
    open_point(store, &vm(), point).await.unwrap()
}

/// The recovery's own journal (the failed-over VM's), in `dir/journal`.
pub fn recovery_journal(dir: &Path) -> Arc<Journal> {
    Arc::new(Journal::open(&dir.join("journal"), JournalConfig::new(vm(), Epoch(2))).unwrap())
}

pub fn target(dir: &Path) -> PathBuf {
    dir.join("target.img")
}

/// Opens a recovery of disk 0 of `point` into `dir/target.img` (source opened up front).
pub fn open_ready(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    point: &PointRecord,
    dir: &Path,
    journal: Arc<Journal>,
) -> RecoveryDisk {
    let src = rt.block_on(async {
        let pit = pit(store, point).await;
        PointSource::open(store, &pit, DiskId(0)).await.unwrap()
    });
    RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir),
            disk: DiskId(0),
            journal,
        },
        Source::Opened(Box::new(src)),
    )
    .unwrap()
}

/// Opens a recovery again, the point opened only when needed.
pub fn reopen(
    store: &Store,
    point: &PointRecord,
    dir: &Path,
    journal: Arc<Journal>,
) -> RecoveryDisk {
    RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir),
            disk: DiskId(0),
            journal,
        },
        Source::Store {
            store: store.clone(),
            vm: vm(),
            seq: point.seq(),
        },
    )
    .unwrap()
}

/// The point's content with every record of disk 0 in the journal at `journal_dir` applied in
/// order (zeroes and trims as zeroes): what the target image must end as.
pub fn replay_model(point: &[u8], journal_dir: &Path) -> Vec<u8> {
    replay_model_after(point, journal_dir, Seq(0))
}

/// [`replay_model`] with only the records after `after` applied.
pub fn replay_model_after(point: &[u8], journal_dir: &Path, after: Seq) -> Vec<u8> {
    let mut m = point.to_vec();
    for r in read_records(journal_dir, Seq(0)).unwrap() {
        let r = r.unwrap();
        if r.seq <= after || r.disk != DiskId(0) {
            continue;
        }
        let (o, l) = (r.offset as usize, r.length as usize);
        match r.kind {
            RecordKind::Write => m[o..o + l].copy_from_slice(&r.data),
            RecordKind::Zero | RecordKind::Trim => m[o..o + l].fill(0),
            RecordKind::Checkpoint => {}
        }
    }
    m
}

/// Reads a whole device through its `BlockDevice` interface, in uneven pieces.
pub fn read_all(dev: &dyn lifeboat_nbd::BlockDevice) -> Vec<u8> {
    let size = dev.size() as usize;
    let mut out = vec![0u8; size];
    let mut pos = 0usize;
    let mut step = 100_000usize;
    while pos < size {
        let n = step.min(size - pos);
        dev.read_at(pos as u64, &mut out[pos..pos + n]).unwrap();
        pos += n;
        step = step * 7 % 300_001 + 1;
    }
    out
}

pub fn hash(b: &[u8]) -> blake3::Hash {
    blake3::hash(b)
}

/// Checks that every extent `device` reports as zero over `0..model.len()` is zeroes in
/// `model` (a zero extent over data would make clients skip real bytes).
pub fn assert_zero_extents_hold_zeros(device: &dyn lifeboat_nbd::BlockDevice, model: &[u8]) {
    let ext = device.block_status(0, model.len() as u64).unwrap();
    let mut pos = 0usize;
    for e in &ext {
        if e.zero {
            assert!(
                model[pos..pos + e.length as usize].iter().all(|&b| b == 0),
                "extent at {pos} reported zero over data: {ext:?}"
            );
        }
        pos += e.length as usize;
    }
}
