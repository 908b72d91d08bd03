//! The primary-to-secondary rig the processor tests share: a local store with small chunks, disk
//! images seeded as the first point (position 0), a real journal and a real shipper.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_process::Processor;
use lifeboat_ship::Shipper;
use lifeboat_store::{Store, StoreConfig};
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

/// Chunk size of the rig's store: small, so that a 1 MiB disk has 16 chunks.
pub const CHUNK: u32 = 64 << 10;

pub struct Rig {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub processor: Processor,
    pub journal: Arc<Journal>,
    pub shipper: Shipper,
}

/// A store whose disks have `CHUNK`-sized chunks and 4 entries per index page.
pub fn small_store(dir: &std::path::Path) -> Store {
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

/// The config of a store whose garbage is collected at once: `CHUNK`-sized chunks, 4 entries
/// per index page, no fsync, no GC grace (retention tests see their garbage go).
pub fn collecting_config() -> StoreConfig {
    StoreConfig {
        chunk_size: CHUNK,
        page_entries: 4,
        fsync: false,
        gc_grace: std::time::Duration::ZERO,
        ..StoreConfig::default()
    }
}

/// A store at `path` with [`collecting_config`].
pub fn collecting_store(path: &std::path::Path) -> Store {
    Store::open_with(path.to_str().unwrap(), collecting_config()).unwrap()
}

/// Seeds `disks` (their whole content) as `vm`'s first point and opens a journal sealing at
/// `segment_bytes`, with a shipper into the same store.
pub async fn rig(vm: &VmId, disks: &[Vec<u8>], segment_bytes: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = small_store(dir.path());
    let imgs: Vec<PathBuf> = disks
        .iter()
        .enumerate()
        .map(|(d, content)| {
            let p = dir.path().join(format!("disk{d}.img"));
            std::fs::write(&p, content).unwrap();
            p
        })
        .collect();
    let seed: Vec<_> = imgs
        .iter()
        .enumerate()
        .map(|(d, p)| (DiskId(d as u32), p.as_path()))
        .collect();
    let processor = Processor::new(store.clone(), vm.clone());
    processor
        .seed(&seed, Seq(0), Epoch(1), SystemTime::now())
        .await
        .unwrap();
    let mut jc = JournalConfig::new(vm.clone(), Epoch(1));
    jc.segment_max_bytes = segment_bytes;
    let journal = Arc::new(Journal::open(&dir.path().join("journal"), jc).unwrap());
    let shipper = Shipper::new(vm.clone(), journal.clone(), store.clone());
    Rig {
        dir,
        store,
        processor,
        journal,
        shipper,
    }
}
