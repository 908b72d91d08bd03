//! Re-protect at the host with a VM's **original disks** (the region the VM failed over from):
//! the old source (or an earlier recovered VM) is *released* — closed for good, its journal
//! made durable, its images kept — and its disks become the seed of the reverse replica: they
//! are hashed when the journals do not tell what diverged, and copied into this region's store
//! as the reverse direction's initial copy (only the diverged ranges come from the other
//! region, as journal records).
//!
//! A released VM is persisted at `<data>/state/released/<vm>.json` (its images and journal
//! directory), so a restarted agent still knows them and never starts the old VM again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use lifeboat_journal::read_records;
use lifeboat_policy::Covered;
use lifeboat_process::{CopyOptions, Processor};
use lifeboat_store::Store;
use lifeboat_types::{DiskId, Epoch, Extents, RecordKind, Seq, VmId};
use lifeboat_vault::agent_wire::{CopyState, DigestAnswer, LocalDisks, SeedRequest};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What is persisted of released disks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedState {
    /// `source` or `recovered`: what they were.
    pub kind: String,
    /// The images.
    pub images: Vec<PathBuf>,
    /// The journal directory.
    pub journal_dir: PathBuf,
}

/// The sizes of `images`, or why they cannot be reused.
pub fn usable(images: &[PathBuf]) -> Result<Vec<u64>, String> {
    if images.is_empty() {
        return Err("this host has no disks of the VM".into());
    }
    images
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).map_err(|e| format!("image {}: {e}", p.display()))?;
            if !m.is_file() {
                return Err(format!("image {} is not a file", p.display()));
            }
            std::fs::File::open(p).map_err(|e| format!("image {}: {e}", p.display()))?;
            Ok(m.len())
        })
        .collect()
}

/// The journal's writes after `after_seq`, covering `(max(first - 1, after_seq), last]`.
pub fn spool_after(dir: &Path, after_seq: u64) -> Result<Covered> {
    let mut disks: Vec<Extents> = Vec::new();
    let (mut first, mut last) = (None::<u64>, None::<u64>);
    for r in read_records(dir, Seq(0))
        .with_context(|| format!("reading the journal {}", dir.display()))?
    {
        let r = r.with_context(|| format!("reading the journal {}", dir.display()))?;
        first.get_or_insert(r.seq.0);
        last = Some(r.seq.0);
        if r.seq.0 <= after_seq || r.kind == RecordKind::Checkpoint {
            continue;
        }
        let d = r.disk.0 as usize;
        if disks.len() <= d {
            disks.resize(d + 1, Extents::new());
        }
        disks[d].insert(r.offset, r.length);
    }
    let (first, last) = match (first, last) {
        (Some(f), Some(l)) => (f, l),
        // No record left: the newest segment's name gives the next position.
        _ => {
            let next = newest_segment_start(dir)?;
            (next, next.saturating_sub(1))
        }
    };
    Ok(Covered {
        after: first.saturating_sub(1).max(after_seq),
        through: last,
        disks,
    })
}

fn newest_segment_start(dir: &Path) -> Result<u64> {
    let mut best = None::<u64>;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e
            .with_context(|| format!("listing {}", dir.display()))?
            .file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            best = Some(best.map_or(n, |b: u64| b.max(n)));
        }
    }
    best.with_context(|| format!("the journal {} has no segment", dir.display()))
}

/// Released disks of one VM (see the module doc).
pub struct Released {
    vm: VmId,
    /// What was released.
    pub state: ReleasedState,
    seed: Arc<Mutex<Option<CopyState>>>,
    seed_req: Mutex<Option<SeedRequest>>,
    seed_task: Mutex<Option<JoinHandle<()>>>,
}

impl Released {
    /// Released disks.
    pub fn new(vm: VmId, state: ReleasedState) -> Arc<Self> {
        Arc::new(Released {
            vm,
            state,
            seed: Arc::default(),
            seed_req: Mutex::new(None),
            seed_task: Mutex::new(None),
        })
    }

    /// What they are; with `after_seq`, also the journal's writes after it.
    pub fn status(&self, after_seq: Option<u64>) -> LocalDisks {
        let u = usable(&self.state.images);
        let old_spool = after_seq.and_then(|a| match spool_after(&self.state.journal_dir, a) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(vm = %self.vm, error = format!("{e:#}"), "the released journal cannot be read");
                None
            }
        });
        LocalDisks {
            vm: self.vm.to_string(),
            kind: "released".into(),
            images: self
                .state
                .images
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            sizes: u.as_ref().ok().cloned(),
            unusable: u.err(),
            old_spool,
            seed: lock(&self.seed).clone(),
        }
    }

    /// Block digests of the images.
    pub async fn digests(&self, block: u64) -> Result<DigestAnswer> {
        let images = self.state.images.clone();
        tokio::task::spawn_blocking(move || -> Result<DigestAnswer> {
            let sizes = usable(&images).map_err(anyhow::Error::msg)?;
            let mut disks = Vec::new();
            for (p, size) in images.iter().zip(&sizes) {
                disks.push(crate::digest::to_hex(&crate::digest::digests(
                    p, *size, block,
                )?));
            }
            Ok(DigestAnswer {
                block,
                sizes,
                disks,
            })
        })
        .await
        .context("digest task")?
    }

    /// Seeds `req.store_url` from the images as the initial copy at `req.start`, consistent
    /// from `req.end`, in the background (retried every 5 s); the same request again changes
    /// nothing.
    pub fn seed(self: &Arc<Self>, req: SeedRequest) {
        if lock(&self.seed_req).as_ref() == Some(&req) {
            return;
        }
        if let Some(t) = lock(&self.seed_task).take() {
            t.abort();
        }
        *lock(&self.seed_req) = Some(req.clone());
        *lock(&self.seed) = Some(CopyState::default());
        let me = self.clone();
        *lock(&self.seed_task) = Some(tokio::spawn(async move {
            loop {
                match me.run_seed(&req).await {
                    Ok(()) => {
                        *lock(&me.seed) = Some(CopyState {
                            percent: 100,
                            done: true,
                            error: None,
                        });
                        return;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::warn!(vm = %me.vm, error = %msg, "seeding the store from the original disks failed; retrying");
                        if let Some(s) = lock(&me.seed).as_mut() {
                            s.error = Some(msg);
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        }));
    }

    async fn run_seed(&self, req: &SeedRequest) -> Result<()> {
        let store = Store::open(&req.store_url)
            .with_context(|| format!("opening region store {}", req.store_url))?;
        if let Some(p) = store
            .latest_point(&self.vm)
            .await
            .with_context(|| format!("looking for recovery points of VM {}", self.vm))?
        {
            tracing::info!(vm = %self.vm, point = %p.id, "the store has a copy already");
            return Ok(());
        }
        usable(&self.state.images).map_err(anyhow::Error::msg)?;
        let images: Vec<(DiskId, &Path)> = self
            .state
            .images
            .iter()
            .enumerate()
            .map(|(i, p)| (DiskId(i as u32), p.as_path()))
            .collect();
        let seed = self.seed.clone();
        let progress = move |done: u64, total: u64| {
            if let Some(s) = lock(&seed).as_mut() {
                s.percent = (done.saturating_mul(100) / total.max(1)).min(99) as u8;
            }
        };
        let end = Seq(req.end);
        let end_fn = move || end;
        let point = Processor::new(store, self.vm.clone())
            .seed_copy(
                &images,
                Seq(req.start),
                Epoch(req.epoch),
                SystemTime::now(),
                CopyOptions {
                    copy_end: Some(&end_fn),
                    progress: &progress,
                    max_bytes_per_sec: None,
                },
            )
            .await
            .with_context(|| {
                format!(
                    "seeding the store from the original disks of VM {}",
                    self.vm
                )
            })?;
        tracing::info!(vm = %self.vm, point = %point.id, "store seeded from the original disks");
        Ok(())
    }

    /// Stops seeding.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.seed_task).take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_journal::{Journal, JournalConfig};

    #[test]
    fn the_spool_summary_names_the_writes_after_the_point() {
        let dir = tempfile::tempdir().unwrap();
        let vm = VmId::new("v").unwrap();
        let j = Journal::open(dir.path(), JournalConfig::new(vm, Epoch(1))).unwrap();
        for i in 0..10u64 {
            j.append_write(DiskId((i % 2) as u32), i * 4096, &[1u8; 512])
                .unwrap();
        }
        j.seal().unwrap();
        let c = spool_after(dir.path(), 6).unwrap();
        assert_eq!((c.after, c.through), (6, 10));
        // Records 7..=10 are i = 6..=9: disk 0 gets 6 and 8, disk 1 gets 7 and 9.
        assert_eq!(c.disks[0].ranges(), &[(6 * 4096, 512), (8 * 4096, 512)]);
        assert_eq!(c.disks[1].ranges(), &[(7 * 4096, 512), (9 * 4096, 512)]);
        j.remove_sealed_through(Seq(10)).unwrap();
        let c = spool_after(dir.path(), 6).unwrap();
        assert_eq!((c.after, c.through), (10, 10));
        assert!(c.disks.is_empty());
        assert!(usable(&[dir.path().join("missing.img")]).is_err());
        assert!(usable(&[]).is_err());
    }
}
