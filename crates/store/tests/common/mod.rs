//! Shared test helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lifeboat_store::{Backend, ObjectBackend, PointMeta, Store, StoreConfig};
use lifeboat_types::{CheckpointKind, Epoch, Seq, VmId};

/// A small deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

pub const CHUNK: u32 = 64 * 1024;
pub const PAGE: u32 = 16;

pub fn small_config() -> StoreConfig {
    StoreConfig {
        chunk_size: CHUNK,
        page_entries: PAGE,
        fsync: false,
        ..StoreConfig::default()
    }
}

pub fn memory_store() -> Store {
    Store::open_with("memory://", small_config()).unwrap()
}

pub fn local_store(dir: &std::path::Path) -> Store {
    Store::open_with(dir.to_str().unwrap(), small_config()).unwrap()
}

pub fn memory_backend() -> Arc<dyn Backend> {
    Arc::new(ObjectBackend::new(
        Arc::new(object_store::memory::InMemory::new()),
        "",
    ))
}

pub fn vm(name: &str) -> VmId {
    VmId::new(name).unwrap()
}

pub fn meta(seq: u64, kind: CheckpointKind) -> PointMeta {
    PointMeta::marker(Seq(seq), Epoch(1), kind, SystemTime::now())
}

/// Every key under a prefix, sorted.
pub async fn keys(store: &Store, prefix: &str) -> BTreeSet<String> {
    store
        .backend()
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Lets the clock move past the objects just written (for GC with a zero grace).
pub async fn tick() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// The full error text with its sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
