//! The store rule on a real store: the processor measures the chain from its newest stored
//! point (touched chunks, journal bytes as stored) exactly, stores the newest point only when
//! the rule says so, and what it stores reads back as the model (by hash).

mod common;

use std::time::Duration;

use common::{rig, CHUNK};
use lifeboat_process::{open_point, Cut, StoreReason, StoreRule};
use lifeboat_types::{CheckpointKind, DiskId, VmId};

const DISK: usize = 1 << 20;

fn random(seed: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

async fn image(r: &common::Rig, vm: &VmId, p: &lifeboat_store::PointRecord) -> [u8; 32] {
    let pit = open_point(&r.store, vm, p).await.unwrap();
    let mut h = blake3::Hasher::new();
    for c in 0..(DISK / CHUNK as usize) as u64 {
        h.update(&pit.read_disk_chunk(&r.store, DiskId(0), c).await.unwrap());
    }
    *h.finalize().as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_stores_the_newest_point_only_when_the_rule_says_so() {
    let vm = VmId::new("rule-1").unwrap();
    let r = rig(&vm, &[vec![0u8; DISK]], 48 << 10).await;
    let seed_point = r.store.list_points(&vm).await.unwrap().remove(0);
    let mut model = vec![0u8; DISK];
    let mut s = 7u64;
    let c = CHUNK as usize;
    // Chunks 0 (twice), 3, and 5..=6 (one write across both): 4 chunks, 320 KiB of journal.
    for (off, len) in [(0, c), (3 * c, c), (5 * c + c / 2, c), (0, c), (c / 2, 1)] {
        let data = random(&mut s, len);
        r.journal
            .append_write(DiskId(0), off as u64, &data)
            .unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    let t1 = seed_point.time() + Duration::from_secs(3600);
    r.journal
        .append_checkpoint(CheckpointKind::CrashConsistent, t1)
        .unwrap();
    r.journal.seal().unwrap();
    r.shipper.ship_once(r.journal.last_seq()).await.unwrap();
    let cut = r.processor.process(Cut::AtMarkers).await.unwrap();
    let point = cut.points[0].clone();

    let chain = r.processor.newest_chain().await.unwrap().expect("a chain");
    assert_eq!(chain.point, point.id);
    assert_eq!(chain.base, seed_point.id);
    // Chunks 0, 3, 5 and 6 (the 1-byte write at c/2 is in chunk 0 too).
    assert_eq!(chain.touched_chunks, 4);
    let segs = r.store.list_segments(&vm).await.unwrap();
    assert_eq!(
        chain.journal_bytes,
        segs.iter().map(|s| s.size).sum::<u64>()
    );
    assert!(chain.journal_bytes > 5 * CHUNK as u64 / 2, "{chain:?}");
    // A seed of zeroes stored no chunk: a chunk is taken at its full size.
    assert_eq!(chain.chunk_bytes, CHUNK as u64);
    assert_eq!(chain.age(), Duration::from_secs(3600));
    assert!(chain.index_bytes > 0);

    // The agent's call: one hour of journal weighs 1/24 of it against 24 h: not stored, and
    // marker points are no longer stored as such.
    assert!(r
        .processor
        .store_due(Duration::from_secs(300))
        .await
        .unwrap()
        .is_empty());
    let now = r.store.get_point(&vm, &point.id).await.unwrap();
    assert!(now.is_journal_backed());
    assert_eq!(image(&r, &vm, &now).await, *blake3::hash(&model).as_bytes());

    // Replaying more than the 4 chunks storing writes, at a replay factor of 1: stored.
    let rule = StoreRule {
        max_replay_factor: 1,
        ..StoreRule::default()
    };
    assert!(matches!(
        lifeboat_process::chain_due(&chain, &rule),
        Some(StoreReason::Replay { .. })
    ));
    let stored = r.processor.store_due_with(&rule).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].is_journal_backed());
    assert_eq!(stored[0].id, point.id);
    assert_eq!(
        image(&r, &vm, &stored[0]).await,
        *blake3::hash(&model).as_bytes()
    );
    assert!(r.processor.newest_chain().await.unwrap().is_none());

    // The next chain starts at the stored point: only what was written since counts.
    let data = random(&mut s, 100);
    r.journal
        .append_write(DiskId(0), 9 * c as u64, &data)
        .unwrap();
    model[9 * c..9 * c + 100].copy_from_slice(&data);
    r.journal
        .append_checkpoint(
            CheckpointKind::CrashConsistent,
            t1 + Duration::from_secs(60),
        )
        .unwrap();
    r.journal.seal().unwrap();
    r.shipper.ship_once(r.journal.last_seq()).await.unwrap();
    r.processor.process(Cut::AtMarkers).await.unwrap();
    let chain = r.processor.newest_chain().await.unwrap().expect("a chain");
    assert_eq!(
        (chain.base.as_str(), chain.touched_chunks),
        (point.id.as_str(), 1)
    );
    assert!(r
        .processor
        .store_due(Duration::from_secs(300))
        .await
        .unwrap()
        .is_empty());
    r.journal
        .append_checkpoint(CheckpointKind::AppConsistent, t1 + Duration::from_secs(90))
        .unwrap();
    r.journal.seal().unwrap();
    r.shipper.ship_once(r.journal.last_seq()).await.unwrap();
    r.processor.process(Cut::AtMarkers).await.unwrap();
    // By default an app-consistent point stays journal-backed too; a rule that stores them
    // stores it at once, however young and cheap.
    assert!(r
        .processor
        .store_due(Duration::from_secs(300))
        .await
        .unwrap()
        .is_empty());
    let app_rule = StoreRule {
        store_app_consistent: true,
        ..StoreRule::default()
    };
    let stored = r.processor.store_due_with(&app_rule).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kind, "app-consistent");
    assert_eq!(
        image(&r, &vm, &stored[0]).await,
        *blake3::hash(&model).as_bytes()
    );
}
