//! A recovery served from a journal-backed point whose journal touches most chunks: the
//! chunks it changed are built on demand from the base and the stored journal (never held all
//! at once), for guest reads, zero queries and hydration alike; every byte is checked against
//! a model (BLAKE3 of the whole disk).

mod common;

use std::sync::atomic::AtomicBool;

use common::*;
use lifeboat_recover::{HydrateConfig, PointSource};
use lifeboat_types::DiskId;

const SIZE: usize = 2 << 20;

/// Writes all over the disk (every fourth op a zero, as the rig journals them), ending with
/// chunk 7 zeroed whole.
fn ops() -> Vec<(u64, Vec<u8>)> {
    let c = CHUNK as usize;
    let mut out = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for k in 0..119u64 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let len = 1 + (x >> 40) as usize % 40_000;
        let off = (x >> 8) as usize % (SIZE - len);
        out.push((off as u64, lifeboat_testkit::random_bytes(len, k + 7)));
    }
    // Op 119 (a zero): chunk 7, whole.
    out.push(((7 * c) as u64, vec![1; c]));
    out
}

#[test]
fn a_journal_backed_point_is_built_chunk_by_chunk_for_reads_and_hydration() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 7);
    let (point, model) = rt.block_on(journal_backed(&store, dir.path(), &content, &ops()));
    let c = CHUNK as usize;
    assert!(model[7 * c..8 * c].iter().all(|&b| b == 0));
    let chunks = SIZE.div_ceil(c) as u64;

    // The point source: every chunk, through each way of reading it.
    let (pit, touched) = rt.block_on(async {
        let pit = pit(&store, &point).await;
        let n = pit.touched_on(DiskId(0)).count();
        (pit, n)
    });
    assert!(
        touched as u64 > chunks / 2,
        "{touched} of {chunks} chunks touched"
    );
    let src = rt
        .block_on(PointSource::open(&store, &pit, DiskId(0)))
        .unwrap();
    let mut guest = Vec::with_capacity(SIZE);
    let mut copy = Vec::with_capacity(SIZE);
    for i in 0..chunks {
        let want = &model[i as usize * c..((i as usize + 1) * c).min(SIZE)];
        let data = rt.block_on(src.chunk(i)).unwrap();
        guest.extend_from_slice(&data);
        match rt.block_on(src.chunk_for_copy(i)).unwrap() {
            Some(d) => copy.extend_from_slice(&d),
            None => {
                assert!(want.iter().all(|&b| b == 0), "chunk {i} called zero");
                copy.extend(std::iter::repeat_n(0, want.len()));
            }
        }
        if rt.block_on(src.is_zero(i)).unwrap() {
            assert!(want.iter().all(|&b| b == 0), "chunk {i} called zero");
        }
    }
    assert_eq!(hash(&guest), hash(&model), "guest reads");
    assert_eq!(hash(&copy), hash(&model), "hydration reads");
    // Zeroed whole by the journal: known without building it.
    assert!(rt.block_on(src.is_zero(7)).unwrap());
    assert!(rt.block_on(src.chunk_for_copy(7)).unwrap().is_none());
    // Reopened by position (a restart): the same bytes.
    let again = rt
        .block_on(PointSource::reopen(&store, &vm(), point.seq(), DiskId(0)))
        .unwrap();
    let mut reread = Vec::with_capacity(SIZE);
    for i in 0..chunks {
        reread.extend_from_slice(&rt.block_on(again.chunk(i)).unwrap());
    }
    assert_eq!(hash(&reread), hash(&model), "reopened source");

    // The recovery disk: served, then hydrated into exactly the model.
    let journal = recovery_journal(dir.path());
    let disk = open_ready(&rt, &store, &point, dir.path(), journal);
    assert_eq!(
        hash(&read_all(&disk)),
        hash(&model),
        "device before hydration"
    );
    common::assert_zero_extents_hold_zeros(&disk, &model);
    let p = disk
        .hydrate(&HydrateConfig::default(), &AtomicBool::new(false))
        .unwrap();
    assert!(
        p.is_hydrated() && p.chunks_zero > 0 && p.chunks_copied > 0,
        "{p:?}"
    );
    let image = std::fs::read(target(dir.path())).unwrap();
    assert_eq!(hash(&image), hash(&model), "target image after hydration");
}
