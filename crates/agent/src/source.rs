//! A source VM: its disks served with journaling (one journal per VM, one [`JournaledDisk`]
//! per disk, one NBD export per disk on the VM's unix socket), QEMU attached to them, and —
//! when protected — shipping of the journal to the target region's store with initial
//! replication first.
//!
//! The ticker (every [`TICK`]) appends the interval's crash-consistent checkpoint marker when
//! due, seals the active segment when it has records, advances the applied watermark every
//! [`PERSIST_EVERY`], and ships. The instant taken *before* the seal, once the ship pass after
//! it succeeded, is the VM's `replicated_as_of`: every write acknowledged before it is in the
//! target store (the vault's RPO).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use lifeboat_disk::{DiskOptions, JournaledDisk};
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_process::{CopyOptions, Processor};
use lifeboat_qemu::{DiskSource, ImageFormat, VmDefinition};
use lifeboat_ship::{ShipError, Shipper};
use lifeboat_store::Store;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};
use lifeboat_vault::agent_wire::{CopyState, Protection, ShutdownAnswer, SourceStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::vm::{self, now_ms, QemuSlot};

/// How often the ticker runs: a floor of the RPO.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the images' applied watermark advances.
pub const PERSIST_EVERY: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared with the ticker and the copier.
#[derive(Default)]
struct Shared {
    protect: Mutex<Option<Protection>>,
    shipper: Mutex<Option<Arc<Shipper>>>,
    copy: Mutex<CopyState>,
    copier: Mutex<Option<JoinHandle<()>>>,
    replicated_as_of: Mutex<Option<i64>>,
    fenced: Mutex<Option<String>>,
    /// The lowest applied watermark of the disks (shipping keeps the records after it).
    applied: AtomicU64,
}

/// A source VM on this host (see the module doc).
pub struct SourceVm {
    vm: VmId,
    dir: PathBuf,
    journal: Arc<Journal>,
    disks: Vec<Arc<JournaledDisk>>,
    stop_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    sh: Arc<Shared>,
    /// One replication pass at a time (the ticker, a shutdown, the close).
    tick_lock: tokio::sync::Mutex<()>,
    /// QEMU, when it runs.
    pub qemu: QemuSlot,
}

/// The raw image files the agent serves for a definition's disks: a raw image is served in
/// place; a qcow2 image is imported once into `<dir>/disk<i>.raw` (`qemu-img convert`, to a
/// temporary file renamed when complete) and the raw copy is served from then on — the qcow2
/// file is left as it was and no longer follows the VM.
pub fn raw_images(def: &VmDefinition, dir: &Path) -> Result<Vec<PathBuf>> {
    def.disks
        .iter()
        .enumerate()
        .map(|(i, d)| match &d.source {
            DiskSource::File {
                path,
                format: ImageFormat::Raw,
            } => Ok(path.clone()),
            DiskSource::File {
                path,
                format: ImageFormat::Qcow2,
            } => import_qcow2(&def.name, i, path, dir),
            DiskSource::Nbd { .. } => bail!(
                "VM {} disk {i}: the agent serves the VM's disks itself: give a raw or qcow2 \
                 image file, not an NBD export",
                def.name
            ),
        })
        .collect()
}

fn import_qcow2(vm: &str, i: usize, src: &Path, dir: &Path) -> Result<PathBuf> {
    let raw = dir.join(format!("disk{i}.raw"));
    if raw.exists() {
        return Ok(raw);
    }
    let tmp = dir.join(format!("disk{i}.raw.importing"));
    tracing::info!(vm, disk = i, qcow2 = %src.display(), raw = %raw.display(), "importing a qcow2 disk as raw");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(src)
        .arg(&tmp)
        .output()
        .with_context(|| {
            format!("VM {vm} disk {i}: running qemu-img (apt-get install qemu-utils)")
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "VM {vm} disk {i}: importing qcow2 image {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, &raw).with_context(|| format!("creating {}", raw.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    Ok(raw)
}

impl SourceVm {
    /// Opens the VM's journal and disks under `dir` and serves them on `dir/nbd.sock`.
    pub async fn open(
        vm: VmId,
        dir: &Path,
        def: &VmDefinition,
        epoch: Epoch,
    ) -> Result<Arc<SourceVm>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (d, dd) = (def.clone(), dir.to_path_buf());
        let images = tokio::task::spawn_blocking(move || raw_images(&d, &dd))
            .await
            .context("importing the disks")??;
        let jdir = dir.join("journal");
        let (v, jd) = (vm.clone(), jdir.clone());
        let (journal, disks) = tokio::task::spawn_blocking(move || -> Result<_> {
            let journal = Arc::new(
                Journal::open(&jd, JournalConfig::new(v.clone(), epoch))
                    .with_context(|| format!("opening the journal of VM {v}"))?,
            );
            let mut disks = Vec::new();
            for (i, img) in images.iter().enumerate() {
                let d = JournaledDisk::open(
                    img,
                    DiskId(i as u32),
                    journal.clone(),
                    &jd,
                    DiskOptions::default(),
                )
                .with_context(|| format!("opening disk {i} of VM {v} ({})", img.display()))?;
                disks.push(Arc::new(d));
            }
            Ok((journal, disks))
        })
        .await
        .context("opening the disks")??;
        let devices = disks
            .iter()
            .map(|d| d.clone() as Arc<dyn lifeboat_nbd::BlockDevice>)
            .collect();
        let (stop_tx, serve) = vm::serve_disks(&format!("VM {vm}"), dir, devices)?;
        let sh = Arc::new(Shared::default());
        sh.applied.store(journal.last_seq().0, Ordering::Release);
        let me = Arc::new(SourceVm {
            vm,
            dir: dir.to_path_buf(),
            journal,
            disks,
            stop_tx,
            tasks: Mutex::new(vec![serve]),
            sh,
            tick_lock: tokio::sync::Mutex::new(()),
            qemu: QemuSlot::default(),
        });
        let ticker = tokio::spawn(ticker(me.clone(), me.stop_tx.subscribe()));
        lock(&me.tasks).push(ticker);
        Ok(me)
    }

    /// The NBD socket QEMU attaches to.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    /// The journal's epoch.
    pub fn epoch(&self) -> Epoch {
        self.journal.config().epoch
    }

    /// Turns replication on (or changes nothing if it is on with the same settings), or off.
    pub async fn set_protection(self: &Arc<Self>, p: Option<Protection>) -> Result<()> {
        if let Some(p) = &p {
            if Epoch(p.epoch) != self.epoch() {
                bail!(
                    "VM {}: its journal has epoch {}, protection asks for epoch {}: re-protect \
                     the VM (the source must be opened again)",
                    self.vm,
                    self.epoch().0,
                    p.epoch
                );
            }
        }
        if *lock(&self.sh.protect) == p {
            return Ok(());
        }
        if let Some(c) = lock(&self.sh.copier).take() {
            c.abort();
        }
        *lock(&self.sh.shipper) = None;
        *lock(&self.sh.fenced) = None;
        *lock(&self.sh.replicated_as_of) = None;
        *lock(&self.sh.protect) = p.clone();
        let Some(p) = p else {
            tracing::info!(vm = %self.vm, "replication off");
            return Ok(());
        };
        let store = Store::open(&p.store_url)
            .with_context(|| format!("opening region store {}", p.store_url))?;
        *lock(&self.sh.copy) = CopyState::default();
        *lock(&self.sh.shipper) = Some(Arc::new(Shipper::new(
            self.vm.clone(),
            self.journal.clone(),
            store.clone(),
        )));
        let me = self.clone();
        *lock(&self.sh.copier) = Some(tokio::spawn(async move { me.copy_loop(store).await }));
        tracing::info!(vm = %self.vm, store = %p.store_url, "replication on");
        Ok(())
    }

    /// Initial replication, retried every 5 s until it succeeds.
    async fn copy_loop(self: Arc<Self>, store: Store) {
        loop {
            match self.initial_copy(&store).await {
                Ok(()) => return,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(vm = %self.vm, error = %msg, "initial replication failed; retrying");
                    lock(&self.sh.copy).error = Some(msg);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    async fn initial_copy(&self, store: &Store) -> Result<()> {
        let vm = &self.vm;
        if let Some(p) = store
            .latest_point(vm)
            .await
            .with_context(|| format!("looking for recovery points of VM {vm}"))?
        {
            tracing::info!(vm = %vm, point = %p.id, "the store has recovery points: no initial copy");
            *lock(&self.sh.copy) = CopyState {
                percent: 100,
                done: true,
                error: None,
            };
            return Ok(());
        }
        // Every record up to `start` is in every image (each position read under its disk's
        // order lock, all before the copy starts).
        let start = self
            .disks
            .iter()
            .map(|d| d.applied_position())
            .min()
            .unwrap_or(Seq(0));
        let images: Vec<(DiskId, PathBuf)> = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| (DiskId(i as u32), d.image().path().to_path_buf()))
            .collect();
        let refs: Vec<(DiskId, &Path)> = images.iter().map(|(d, p)| (*d, p.as_path())).collect();
        tracing::info!(vm = %vm, start = start.0, "initial replication started");
        let sh = self.sh.clone();
        let progress = move |done: u64, total: u64| {
            let pct = (done.saturating_mul(100) / total.max(1)).min(100) as u8;
            lock(&sh.copy).percent = pct;
        };
        let disks = self.disks.clone();
        let end = move || -> Seq {
            disks
                .iter()
                .map(|d| d.applied_position())
                .max()
                .unwrap_or(Seq(0))
        };
        let point = Processor::new(store.clone(), vm.clone())
            .seed_copy(
                &refs,
                start,
                self.epoch(),
                SystemTime::now(),
                CopyOptions {
                    copy_end: Some(&end),
                    progress: &progress,
                    max_bytes_per_sec: None,
                },
            )
            .await
            .with_context(|| format!("initial replication of VM {vm}"))?;
        tracing::info!(vm = %vm, point = %point.id, "initial copy stored");
        *lock(&self.sh.copy) = CopyState {
            percent: 100,
            done: true,
            error: None,
        };
        Ok(())
    }

    /// Appends a crash-consistent marker, seals, and ships what is sealed. Returns the last
    /// record the store has if shipping is on and succeeded.
    async fn tick(&self, point_due: bool, persist_due: bool) -> Result<Option<Seq>> {
        let _one = self.tick_lock.lock().await;
        let shipper = lock(&self.sh.shipper).clone();
        let shipping = shipper.is_some() && lock(&self.sh.fenced).is_none();
        let t0 = now_ms();
        let (j, disks) = (self.journal.clone(), self.disks.clone());
        let (sealed_through, applied) = tokio::task::spawn_blocking(move || -> Result<_> {
            if point_due {
                j.append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())
                    .context("appending the interval checkpoint marker")?;
            }
            let through = j.last_seq();
            if shipping {
                j.seal().context("sealing the journal segment")?;
            } else {
                j.seal_if_due().context("sealing the journal segment")?;
            }
            let mut applied = None;
            if persist_due {
                let mut low = None::<Seq>;
                for d in &disks {
                    let s = d
                        .persist_applied()
                        .context("advancing the applied watermark")?;
                    low = Some(low.map_or(s, |l| l.min(s)));
                }
                applied = low;
            }
            Ok((through, applied))
        })
        .await
        .context("ticker task")??;
        if let Some(a) = applied {
            self.sh.applied.store(a.0, Ordering::Release);
        }
        let (Some(s), true) = (shipper, shipping) else {
            return Ok(None);
        };
        match s
            .ship_once(Seq(self.sh.applied.load(Ordering::Acquire)))
            .await
        {
            Ok(_) => {
                *lock(&self.sh.replicated_as_of) = Some(t0);
                Ok(Some(sealed_through))
            }
            Err(e @ ShipError::Fenced { .. }) => {
                let msg = e.to_string();
                tracing::error!(vm = %self.vm, error = %msg, "replication fenced: this host no longer replicates the VM");
                *lock(&self.sh.fenced) = Some(msg);
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e).context("shipping")),
        }
    }

    /// Shuts QEMU down (ACPI, then quit, then kill) and ships every write the guest made.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownAnswer> {
        let report = match self.qemu.lock().await.take() {
            Some(mut q) => q
                .shutdown(timeout)
                .await
                .with_context(|| format!("shutting down VM {}", self.vm))?
                .to_string(),
            None => "was not running".to_string(),
        };
        let shipped = if lock(&self.sh.shipper).is_some() {
            self.tick(false, true).await?
        } else {
            None
        };
        Ok(ShutdownAnswer {
            report,
            shipped_through: shipped.map(|s| s.0),
        })
    }

    /// Status for the vault.
    pub async fn status(&self, running: bool, serial_log: &Path) -> SourceStatus {
        SourceStatus {
            vm: self.vm.to_string(),
            running,
            serial_log: serial_log.display().to_string(),
            protected: lock(&self.sh.protect).is_some(),
            epoch: self.epoch().0,
            copy: lock(&self.sh.copy).clone(),
            replicated_as_of: *lock(&self.sh.replicated_as_of),
            fenced: lock(&self.sh.fenced).clone(),
            last_seq: self.journal.last_seq().0,
        }
    }

    /// Stops serving: QEMU is stopped first (its disks go away), then the journal and the
    /// images are made durable and what is sealed is shipped.
    pub async fn close(&self) {
        if let Some(mut q) = self.qemu.lock().await.take() {
            let _ = q.shutdown(Duration::from_secs(10)).await;
        }
        if let Some(c) = lock(&self.sh.copier).take() {
            c.abort();
        }
        let _ = self.stop_tx.send(true);
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.tick(false, true).await {
            tracing::warn!(vm = %self.vm, error = format!("{e:#}"), "final shipping pass failed");
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

async fn ticker(me: Arc<SourceVm>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_point = Instant::now();
    let mut last_persist = Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let point_every = lock(&me.sh.protect)
            .as_ref()
            .map(|p| p.point_secs)
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let point_due = point_every.is_some_and(|e| last_point.elapsed() >= e);
        if point_due {
            last_point = Instant::now();
        }
        let persist_due = last_persist.elapsed() >= PERSIST_EVERY;
        if persist_due {
            last_persist = Instant::now();
        }
        if let Err(e) = me.tick(point_due, persist_due).await {
            tracing::warn!(vm = %me.vm, error = format!("{e:#}"), "replication pass failed; will retry");
        }
    }
}
