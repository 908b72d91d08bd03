//! Initial replication from the disk server, while the guest keeps writing.
//!
//! When `disk serve --ship-to STORE` finds no recovery point of its VM in the store, it copies
//! the image into the store in the background ([`lifeboat_process::Processor::seed_copy`]):
//!
//! 1. the start position `S` is the last record appended, read under the disk's order lock,
//!    so every record up to `S` is already in the image;
//! 2. the image is copied as it is being written (zero chunks skipped), with progress logged
//!    every 5% and an optional bandwidth limit (`--copy-rate-mib`);
//! 3. the end position `E` is read the same way after the copy; the point is stored as an
//!    *initial copy* at `S` with `copy_end = E`.
//!
//! Meanwhile the journal keeps shipping. The processor cuts no point before `E`: from `E` on,
//! the copy plus the records after `S` is the exact state (see `lifeboat-process`). A server
//! killed during the copy starts it again on its next start (the store still has no point);
//! what the first attempt stored is reused by content address or collected by GC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use lifeboat_disk::JournaledDisk;
use lifeboat_process::{CopyOptions, Processor};
use lifeboat_store::Store;
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

/// Runs initial replication of `disk` into `store` if the store has no point of `vm`.
pub async fn run(
    store: Store,
    vm: VmId,
    disk: Arc<JournaledDisk>,
    epoch: Epoch,
    max_bytes_per_sec: Option<u64>,
) -> Result<()> {
    let existing = store
        .latest_point(&vm)
        .await
        .with_context(|| format!("looking for recovery points of VM {vm}"))?;
    if let Some(p) = existing {
        tracing::info!(vm = %vm, point = %p.id, "the region store has recovery points: no initial copy");
        return Ok(());
    }
    let image = disk.image().path().to_path_buf();
    let start = disk.applied_position();
    tracing::info!(vm = %vm, image = %image.display(), start = start.0, "initial replication started");
    let last_step = AtomicU64::new(u64::MAX);
    let progress = |done: u64, total: u64| {
        let pct = done.saturating_mul(100) / total.max(1);
        if last_step.swap(pct / 5, Ordering::Relaxed) != pct / 5 {
            tracing::info!(vm = %vm, percent = pct, copied = done, total, "initial replication");
        }
    };
    let d = disk.clone();
    let end = move || -> Seq { d.applied_position() };
    let point = Processor::new(store, vm.clone())
        .seed_copy(
            &[(DiskId(0), image.as_path())],
            start,
            epoch,
            SystemTime::now(),
            CopyOptions {
                copy_end: Some(&end),
                progress: &progress,
                max_bytes_per_sec,
            },
        )
        .await
        .with_context(|| format!("initial replication of VM {vm} from {}", image.display()))?;
    tracing::info!(
        vm = %vm,
        point = %point.id,
        copy_end = point.copy_end.unwrap_or(point.seq),
        new_chunks = point.new_chunks,
        "initial copy stored: recovery points follow from the copy's end position"
    );
    Ok(())
}
