//! Measures chunk sizes for the region store: stores a 1 GiB image (first half zeroes, second
//! half random) into a local-directory store with 1 MiB and 4 MiB chunks, then changes 1% of
//! its 4 KiB blocks (uniformly at random) and stores the second point.
//!
//! `cargo run --release -p lifeboat-store --example chunk_size [-- SIZE_MIB [DIR]]`
//! Prints, per chunk size: throughput of the full point, store size, objects, and the bytes
//! (and chunks) the 1%-changed point added.

use std::time::{Instant, SystemTime};

use lifeboat_store::{PointMeta, Store, StoreConfig};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

async fn store_bytes(store: &Store) -> (u64, usize) {
    let objs = store.backend().list("").await.expect("list");
    (objs.iter().map(|o| o.size).sum(), objs.len())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let base_dir = args.get(2).cloned();
    let size = mib << 20;
    let mut image = vec![0u8; size];
    blake3::Hasher::new_derive_key("lifeboat chunk_size example")
        .finalize_xof()
        .fill(&mut image[size / 2..]);
    // 1% of the 4 KiB blocks, uniformly at random (deterministic).
    let blocks = size / 4096;
    let mut changed = image.clone();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut picked = 0;
    while picked < blocks / 100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x % blocks as u64) as usize;
        let blk = &mut changed[b * 4096..(b + 1) * 4096];
        if blk[0] != 0xAB {
            blk.fill(0xAB);
            blk[1..9].copy_from_slice(&x.to_le_bytes());
            picked += 1;
        }
    }
    println!(
        "image {mib} MiB (half zero, half random), {} of {blocks} 4 KiB blocks changed",
        blocks / 100
    );
    println!("chunk | full point: MB/s | store MiB | objects | 1% change: chunks, MiB added, MB/s");
    let vm = VmId::new("bench").expect("vm id");
    for chunk in [1u32 << 20, 4 << 20] {
        let dir = match &base_dir {
            Some(d) => tempfile::tempdir_in(d).expect("tempdir"),
            None => tempfile::tempdir().expect("tempdir"),
        };
        let cfg = StoreConfig {
            chunk_size: chunk,
            ..StoreConfig::default()
        };
        let store = Store::open_with(dir.path().to_str().expect("utf8"), cfg).expect("open");
        let meta = |seq| {
            PointMeta::marker(
                Seq(seq),
                Epoch(1),
                CheckpointKind::CrashConsistent,
                SystemTime::now(),
            )
        };
        let t = Instant::now();
        let mut w = store.point_writer(&vm, None).await.expect("writer");
        w.add_disk(DiskId(0), size as u64).expect("disk");
        for (i, c) in image.chunks(chunk as usize).enumerate() {
            w.set_chunk(DiskId(0), i as u64, c).await.expect("chunk");
        }
        let p1 = w.commit(meta(1)).await.expect("commit");
        let secs = t.elapsed().as_secs_f64();
        let (bytes1, n1) = store_bytes(&store).await;

        let t = Instant::now();
        let mut w = store.point_writer(&vm, Some(&p1)).await.expect("writer");
        let mut set = 0;
        for (i, c) in changed.chunks(chunk as usize).enumerate() {
            if c != &image[i * chunk as usize..i * chunk as usize + c.len()] {
                w.set_chunk(DiskId(0), i as u64, c).await.expect("chunk");
                set += 1;
            }
        }
        let p2 = w.commit(meta(2)).await.expect("commit");
        let secs2 = t.elapsed().as_secs_f64();
        let (bytes2, _) = store_bytes(&store).await;
        println!(
            "{:>2} MiB | {:>8.0} | {:>9.1} | {:>7} | {} of {} chunks, {:.1} MiB, {:.0} MB/s",
            chunk >> 20,
            size as f64 / secs / 1e6,
            bytes1 as f64 / (1 << 20) as f64,
            n1,
            p2.new_chunks,
            set,
            (bytes2 - bytes1) as f64 / (1 << 20) as f64,
            (set as f64 * chunk as f64) / secs2 / 1e6,
        );
    }
}
