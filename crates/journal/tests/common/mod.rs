#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat_journal::{read_records, Epoch, Journal, JournalConfig, Record, Seq, VmId};

pub fn vm() -> VmId {
    VmId::new("vm-test").unwrap()
}

pub fn config(max_bytes: u64) -> JournalConfig {
    JournalConfig {
        segment_max_bytes: max_bytes,
        ..JournalConfig::new(vm(), Epoch(1))
    }
}

pub fn open(dir: &Path, max_bytes: u64) -> Journal {
    Journal::open(dir, config(max_bytes)).unwrap()
}

pub fn read_all(dir: &Path) -> Vec<Record> {
    read_records(dir, Seq(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Segment files in the directory, sorted by name.
pub fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

pub fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Deterministic data for a write.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
