//! A source VM: its disks served with journaling (one journal per VM, one [`JournaledDisk`]
//! per disk, one NBD export per disk on the VM's unix socket), QEMU attached to them, and —
//! when protected — replication to the target region's store ([`Replication`]: initial copy,
//! then the journal shipped every half second).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_disk::{DiskOptions, JournaledDisk};
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_qemu::{DiskSource, ImageFormat, VmDefinition};
use lifeboat_types::{DiskId, Epoch, VmId};
use lifeboat_vault::agent_wire::{Protection, ShutdownAnswer, SourceStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::replication::{ReplDisk, Replication, Start};
use crate::vm::{self, QemuSlot};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A source VM on this host (see the module doc).
pub struct SourceVm {
    vm: VmId,
    dir: PathBuf,
    journal: Arc<Journal>,
    disks: Vec<Arc<JournaledDisk>>,
    stop_tx: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Replication of its journal.
    pub repl: Arc<Replication>,
    /// QEMU, when it runs.
    pub qemu: Arc<QemuSlot>,
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
        let repl_disks = disks
            .iter()
            .map(|d| d.clone() as Arc<dyn ReplDisk>)
            .collect();
        let repl = Replication::new(vm.clone(), journal.clone(), repl_disks);
        repl.trim_when_off();
        let qemu = Arc::new(QemuSlot::default());
        if def.guest_agent_socket.is_some() {
            repl.guest
                .attach(qemu.clone(), crate::guest::socket_in(dir));
        }
        Ok(Arc::new(SourceVm {
            vm,
            dir: dir.to_path_buf(),
            journal,
            disks,
            stop_tx,
            tasks: Mutex::new(vec![serve]),
            repl,
            qemu,
        }))
    }

    /// The NBD socket QEMU attaches to.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    /// The journal's directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.journal.dir().to_path_buf()
    }

    /// The images it serves.
    pub fn images(&self) -> Vec<PathBuf> {
        self.disks
            .iter()
            .map(|d| d.image().path().to_path_buf())
            .collect()
    }

    /// The journal's epoch.
    pub fn epoch(&self) -> Epoch {
        self.journal.config().epoch
    }

    /// Stops serving the disks (fenced: no QEMU may write them any more); the journal and
    /// images stay as they are for re-protect.
    pub fn stop_serving(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// Turns replication on (or changes nothing if it is on with the same settings), or off.
    pub async fn set_protection(self: &Arc<Self>, p: Option<Protection>) -> Result<()> {
        self.repl.set(p, Start::Copy).await
    }

    /// Shuts QEMU down (ACPI, then quit, then kill) and ships every write the guest made.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownAnswer> {
        self.repl.shutdown_and_ship(&self.qemu, timeout).await
    }

    /// Status for the vault.
    pub async fn status(&self, running: bool, serial_log: &Path) -> SourceStatus {
        source_status(&self.vm, &self.repl, &self.journal, running, serial_log)
    }

    /// Stops serving: QEMU is stopped first (its disks go away), then the journal and the
    /// images are made durable and what is sealed is shipped.
    pub async fn close(&self) {
        if let Some(mut q) = self.qemu.lock().await.take() {
            let _ = q.shutdown(Duration::from_secs(10)).await;
        }
        let _ = self.stop_tx.send(true);
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        self.repl.close().await;
        let _ = std::fs::remove_file(self.socket());
    }
}

/// A VM's source status from its replication.
pub fn source_status(
    vm: &VmId,
    repl: &Replication,
    journal: &Journal,
    running: bool,
    serial_log: &Path,
) -> SourceStatus {
    SourceStatus {
        vm: vm.to_string(),
        running,
        serial_log: serial_log.display().to_string(),
        protected: repl.is_on(),
        epoch: repl.epoch().0,
        copy: repl.copy_state(),
        replicated_as_of: repl.replicated_as_of(),
        fenced: repl.fenced_reason(),
        last_seq: journal.last_seq().0,
        app_misses: repl.guest.misses().0,
        app_error: repl.guest.misses().1,
    }
}
