//! Rough append rate of 4 KiB writes (no fsync, as on the NBD write path), with 1 and 8 threads,
//! plus 8 threads that also sync every 32 writes.
//!
//! `cargo run --release -p lifeboat-journal --example append_rate [DIR]` (default: a temp dir).

use std::sync::Arc;
use std::time::Instant;

use lifeboat_journal::{DiskId, Epoch, Journal, JournalConfig, VmId};

fn run(dir: &std::path::Path, threads: u64, per_thread: u64, sync_every: u64) {
    let _ = std::fs::remove_dir_all(dir);
    let j = Arc::new(
        Journal::open(
            dir,
            JournalConfig::new(VmId::new("bench").unwrap(), Epoch(1)),
        )
        .unwrap(),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                let buf = vec![t as u8; 4096];
                for i in 0..per_thread {
                    j.append_write(DiskId(0), (i * 7919 % 262_144) * 4096, &buf)
                        .unwrap();
                    if sync_every > 0 && i % sync_every == sync_every - 1 {
                        j.sync().unwrap();
                    }
                    if i % 4096 == 0 {
                        j.seal_if_due().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = threads * per_thread;
    println!(
        "threads={threads} sync_every={sync_every}: {n} writes in {secs:.2}s = {:.0} writes/s, {} fdatasyncs",
        n as f64 / secs,
        j.fdatasync_count()
    );
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let base = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let dir = base.join("journal");
    run(&dir, 1, 200_000, 0);
    run(&dir, 8, 25_000, 0);
    run(&dir, 8, 5_000, 32);
}
