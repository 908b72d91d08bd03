//! A recovered VM (failover, change recovery point): every disk a
//! [`lifeboat_recover::RecoveryDisk`] — the chosen point served over NBD straight from the
//! store, guest writes journaled into the VM's new journal and kept in a local target image,
//! the rest hydrated in the background — and QEMU attached to them, so the VM boots without
//! waiting for a copy.
//!
//! Its state file (`<agent data>/state/recovered/<vm>.json`) records the point's journal
//! position: an agent restarted after kill -9 reopens the disks from their state files and
//! the store ([`lifeboat_recover::Source::Store`]) and goes on hydrating. **Commit** waits for
//! every disk to be local, then marks the recovery final: from then on the store is never
//! read again ([`lifeboat_recover::Source::Unavailable`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result};
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_qemu::{Accel, VmDefinition};
use lifeboat_recover::{
    HydrateConfig, Hydration, PointSource, RecoveryDisk, RecoveryOptions, Source,
};
use lifeboat_store::{PinRecord, Store};
use lifeboat_types::{DiskId, Epoch, Seq, VmId};
use lifeboat_vault::agent_wire::{RecoverSpec, RecoveredStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::replication::{ReplDisk, Replication};
use crate::state::write_json;
use crate::vm::{self, QemuSlot};

#[path = "reverse.rs"]
mod reverse;
pub use reverse::ReverseState;

/// How long after a failed hydration run it starts again.
pub const HYDRATION_RETRY: Duration = Duration::from_secs(5);
/// The name of a drill's pin in the store.
pub const DRILL_PIN: &str = "drill";
/// How often the journal of a recovered VM that does not replicate is checked for folding.
pub const FOLD_EVERY: Duration = Duration::from_secs(60);
/// How long after the disks are served hydration starts (the boot goes first).
pub const HYDRATION_DELAY: Duration = Duration::from_secs(3);

/// What is persisted of a recovered VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveredState {
    /// What was asked.
    pub spec: RecoverSpec,
    /// The point (id, or the time asked for).
    pub point: String,
    /// Its journal position.
    pub point_seq: u64,
    /// Its time (ms since 1970).
    pub point_time: i64,
    /// QEMU should run.
    pub running: bool,
    /// Commit was asked for.
    pub commit_requested: bool,
    /// Every disk is local and the recovery is final.
    pub committed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A recovered VM on this host (see the module doc).
pub struct RecoveredVm {
    vm: VmId,
    dir: PathBuf,
    state_file: PathBuf,
    state: Mutex<RecoveredState>,
    def: VmDefinition,
    disks: Vec<Arc<RecoveryDisk>>,
    /// Per disk: its hydration run (none before the first and once hydrated) and when the
    /// next may start.
    hydrations: Mutex<Vec<(Option<Hydration>, Instant)>>,
    /// Starts hydration runs (after [`HYDRATION_DELAY`], again after a failed run).
    keeper: Mutex<Option<JoinHandle<()>>>,
    stop_tx: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
    /// QEMU, when it runs.
    pub qemu: Arc<QemuSlot>,
    /// The journal (the source of a reverse replication after re-protect).
    journal: Arc<Journal>,
    /// Replication of the journal back to the original region (off until re-protect).
    pub repl: Arc<Replication>,
    /// Re-protect's state (`<dir>/reverse.json`) and its resync run.
    reverse: Mutex<Option<ReverseState>>,
    resync: Mutex<Option<JoinHandle<()>>>,
    resync_status: Arc<Mutex<lifeboat_vault::agent_wire::ReverseStatus>>,
}

impl RecoveredVm {
    /// A new recovery of `vm` into `dir` (emptied first) from the point `spec` chooses.
    pub async fn create(
        vm: VmId,
        dir: &Path,
        state_file: &Path,
        spec: RecoverSpec,
    ) -> Result<Arc<RecoveredVm>> {
        let def = vm::parse_definition(vm.as_str(), &spec.definition)?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the previous recovery {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = Store::open(&spec.store_url)
            .with_context(|| format!("opening region store {}", spec.store_url))?;
        let (pit, label) = crate::pick::resolve(&store, &vm, &spec.recovery_point).await?;
        if spec.drill {
            // Retention keeps what the drill reads (its base and journal) until cleanup.
            let pin = PinRecord::new(pit.base.seq().0, pit.seq.0, "DR drill (test failover)");
            store
                .put_pin(&vm, DRILL_PIN, &pin)
                .await
                .with_context(|| format!("pinning the drill's recovery point of VM {vm}"))?;
        }
        let journal = open_journal(&vm, dir, Epoch(spec.epoch))?;
        let mut disks = Vec::new();
        for i in 0..def.disks.len() {
            let disk = DiskId(i as u32);
            let src = PointSource::open(&store, &pit, disk)
                .await
                .with_context(|| format!("disk {i} of recovery point {label} of VM {vm}"))?;
            let opts = RecoveryOptions {
                image: dir.join(format!("disk{i}.img")),
                disk,
                journal: journal.clone(),
            };
            disks.push(open_disk(opts, Source::Opened(Box::new(src))).await?);
        }
        let state = RecoveredState {
            spec,
            point: label,
            point_seq: pit.seq.0,
            point_time: pit
                .time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            running: false,
            commit_requested: false,
            committed: false,
        };
        write_json(state_file, &state)?;
        Self::serve(vm, dir, state_file, state, def, journal, disks).await
    }

    /// Reopens a recovery after a restart of the agent.
    pub async fn reopen(
        vm: VmId,
        dir: &Path,
        state_file: &Path,
        state: RecoveredState,
    ) -> Result<Arc<RecoveredVm>> {
        let def = vm::parse_definition(vm.as_str(), &state.spec.definition)?;
        let journal = open_journal(&vm, dir, Epoch(state.spec.epoch))?;
        let mut disks = Vec::new();
        for i in 0..def.disks.len() {
            let source = if state.committed {
                Source::Unavailable
            } else {
                Source::Store {
                    store: Store::open(&state.spec.store_url).with_context(|| {
                        format!("opening region store {}", state.spec.store_url)
                    })?,
                    vm: vm.clone(),
                    seq: Seq(state.point_seq),
                }
            };
            let opts = RecoveryOptions {
                image: dir.join(format!("disk{i}.img")),
                disk: DiskId(i as u32),
                journal: journal.clone(),
            };
            disks.push(open_disk(opts, source).await?);
        }
        Self::serve(vm, dir, state_file, state, def, journal, disks).await
    }

    async fn serve(
        vm: VmId,
        dir: &Path,
        state_file: &Path,
        state: RecoveredState,
        def: VmDefinition,
        journal: Arc<Journal>,
        disks: Vec<Arc<RecoveryDisk>>,
    ) -> Result<Arc<RecoveredVm>> {
        let devices = disks
            .iter()
            .map(|d| d.clone() as Arc<dyn lifeboat_nbd::BlockDevice>)
            .collect();
        let (stop_tx, task) = vm::serve_disks(&format!("recovered VM {vm}"), dir, devices)?;
        // Hydration starts HYDRATION_DELAY after the disks are served: the VM's boot reads
        // come first (on a small host, a full-speed copy beside a booting guest doubles the
        // RTO), then the keeper starts and restarts runs until every disk is local.
        let first = Instant::now() + HYDRATION_DELAY;
        let hydrations = disks.iter().map(|_| (None, first)).collect();
        tracing::info!(vm = %vm, point = %state.point, "recovered VM's disks served");
        let repl = Replication::new(
            vm.clone(),
            journal.clone(),
            disks
                .iter()
                .map(|d| d.clone() as Arc<dyn ReplDisk>)
                .collect(),
        );
        let qemu = Arc::new(QemuSlot::default());
        if def.guest_agent_socket.is_some() {
            repl.guest
                .attach(qemu.clone(), crate::guest::socket_in(dir));
        }
        let reverse = ReverseState::load(dir)?;
        let me = Arc::new(RecoveredVm {
            vm,
            dir: dir.to_path_buf(),
            state_file: state_file.to_path_buf(),
            state: Mutex::new(state),
            def,
            disks,
            hydrations: Mutex::new(hydrations),
            stop_tx,
            server: Mutex::new(Some(task)),
            qemu,
            keeper: Mutex::new(None),
            journal,
            repl,
            reverse: Mutex::new(None),
            resync: Mutex::new(None),
            resync_status: Arc::default(),
        });
        if let Some(r) = reverse {
            me.resume_reverse(r).await?;
        }
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLD_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                match tokio::task::spawn_blocking(move || me.fold_journal()).await {
                    Ok(Err(e)) => tracing::warn!(
                        error = format!("{e:#}"),
                        "folding a recovered VM's journal failed"
                    ),
                    Err(e) => tracing::warn!(error = %e, "journal folding task"),
                    Ok(Ok(_)) => {}
                }
            }
        });
        let weak = Arc::downgrade(&me);
        let drill = lock(&me.state).spec.drill;
        *lock(&me.keeper) = (!drill).then(|| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let Some(me) = weak.upgrade() else { return };
                    me.retry_hydration();
                    if me.disks.iter().all(|d| d.is_hydrated()) {
                        return;
                    }
                }
            })
        });
        Ok(me)
    }

    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// Whether QEMU should run (persisted).
    pub fn wants_running(&self) -> bool {
        lock(&self.state).running
    }

    fn update(&self, f: impl FnOnce(&mut RecoveredState)) -> Result<()> {
        let mut s = lock(&self.state);
        let mut next = s.clone();
        f(&mut next);
        write_json(&self.state_file, &next)?;
        *s = next;
        Ok(())
    }

    /// Starts QEMU on the recovered disks.
    pub async fn start(&self, accel: Accel) -> Result<()> {
        if let Some(why) = self.repl.fenced_reason() {
            anyhow::bail!(
                "VM {} is not started at this host: it failed over elsewhere ({why})",
                self.vm
            );
        }
        self.update(|s| s.running = true)?;
        let mut def = vm::qemu_definition(
            self.vm.as_str(),
            &self.def,
            &self.dir.join("nbd.sock"),
            &self.serial_log(),
        );
        if lock(&self.state).spec.drill {
            isolate(&mut def);
        }
        vm::start(&self.qemu, &def, &self.dir, accel).await
    }

    /// Stops QEMU.
    pub async fn stop(&self) -> Result<String> {
        self.update(|s| s.running = false)?;
        vm::stop(&self.qemu, Duration::from_secs(30)).await
    }

    /// Asks for commit: the recovery becomes final once every disk is local.
    pub fn request_commit(&self) -> Result<()> {
        self.update(|s| s.commit_requested = true)
    }

    /// Starts hydration of a disk that is not local and has no run (first start, or a run
    /// that ended early because a store read failed), once its time has come: a failed run
    /// is started again after [`HYDRATION_RETRY`].
    fn retry_hydration(&self) {
        let mut hs = lock(&self.hydrations);
        for (d, (h, next)) in self.disks.iter().zip(hs.iter_mut()) {
            let ended = h.as_ref().is_none_or(|h| h.is_finished());
            if d.is_hydrated() || !ended || Instant::now() < *next {
                continue;
            }
            drop(h.take());
            match d.spawn_hydration(HydrateConfig::default()) {
                Ok(n) => {
                    tracing::info!(vm = %self.vm, disk = %d.disk_id(), "hydration started again");
                    *h = Some(n);
                }
                Err(e) => tracing::warn!(vm = %self.vm, error = %e, "cannot restart hydration"),
            }
            *next = Instant::now() + HYDRATION_RETRY;
        }
    }

    /// Status (and commit, once asked for and every disk is local).
    pub async fn status(&self) -> RecoveredStatus {
        let (mut local, mut total) = (0u64, 0u64);
        let mut error = None;
        let mut secs = 0f64;
        for d in &self.disks {
            let p = d.progress();
            secs = secs.max(p.elapsed.as_secs_f64());
            local += p.bytes_local;
            total += p.bytes_total;
            if p.error.is_some() {
                error = p.error;
            }
        }
        let hydrated = self.disks.iter().all(|d| d.is_hydrated());
        let s = lock(&self.state).clone();
        if s.commit_requested && hydrated && !s.committed {
            match self.update(|s| s.committed = true) {
                Ok(()) => tracing::info!(vm = %self.vm, "failover committed: the disks are final"),
                Err(e) => error = Some(format!("{e:#}")),
            }
        }
        let s = lock(&self.state).clone();
        RecoveredStatus {
            vm: self.vm.to_string(),
            point: s.point,
            point_seq: s.point_seq,
            point_time: s.point_time,
            point_time_utc: lifeboat_process::format_utc_ms(
                UNIX_EPOCH + Duration::from_millis(s.point_time.max(0) as u64),
            ),
            running: vm::running(&self.qemu).await,
            serial_log: self.serial_log().display().to_string(),
            hydrated_percent: if total == 0 {
                100.0
            } else {
                local as f64 * 100.0 / total as f64
            },
            hydrated,
            hydration_secs: secs,
            committed: s.committed,
            error,
            reverse: self.reverse_status(),
        }
    }

    /// Stops everything (QEMU first); `discard` also deletes the disks and the state file.
    pub async fn close(&self, discard: bool) -> Result<()> {
        if discard {
            vm::kill(&self.qemu).await;
        } else {
            let _ = vm::stop(&self.qemu, Duration::from_secs(10)).await;
        }
        if let Some(k) = lock(&self.keeper).take() {
            k.abort();
        }
        let hs: Vec<Hydration> = lock(&self.hydrations)
            .drain(..)
            .filter_map(|(h, _)| h)
            .collect();
        tokio::task::spawn_blocking(move || drop(hs))
            .await
            .context("stopping hydration")?;
        if let Some(t) = lock(&self.resync).take() {
            t.abort();
        }
        self.repl.close().await;
        let _ = self.stop_tx.send(true);
        let task = lock(&self.server).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        for d in &self.disks {
            let d = d.clone();
            let _ = tokio::task::spawn_blocking(move || d.checkpoint()).await;
        }
        if discard {
            let _ = std::fs::remove_file(&self.state_file);
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }
}

/// A drill copy's network: every NIC on QEMU user networking with `restrict=on` (the guest
/// reaches nothing outside, and nothing reaches it), one such NIC if it had none, so that the
/// copy's services start as they would and still cannot touch production.
pub fn isolate(def: &mut VmDefinition) {
    use lifeboat_qemu::{Network, Nic, NicModel};
    if def.nics.is_empty() {
        def.nics.push(Nic {
            network: Network::User { restrict: true },
            model: NicModel::default(),
            mac: None,
        });
    }
    for n in &mut def.nics {
        n.network = Network::User { restrict: true };
    }
}

fn open_journal(vm: &VmId, dir: &Path, epoch: Epoch) -> Result<Arc<Journal>> {
    let jd = dir.join("journal");
    Ok(Arc::new(
        Journal::open(&jd, JournalConfig::new(vm.clone(), epoch))
            .with_context(|| format!("opening the journal of recovered VM {vm}"))?,
    ))
}

async fn open_disk(opts: RecoveryOptions, source: Source) -> Result<Arc<RecoveryDisk>> {
    let image = opts.image.clone();
    let d = tokio::task::spawn_blocking(move || RecoveryDisk::open(opts, source))
        .await
        .context("opening a recovery disk")?
        .with_context(|| format!("opening recovery disk {}", image.display()))?;
    Ok(Arc::new(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drill_copy_gets_only_isolated_networks() {
        let mut d: VmDefinition = serde_json::from_value(serde_json::json!({
            "name": "v", "vcpus": 1, "memory_mib": 32,
            "disks": [{"source": {"file": {"path": "/x.img", "format": "raw"}}}],
            "nics": [{"network": {"user": {"restrict": false}}}, {"network": {"user": {}}}],
            "serial_log": "/s"
        }))
        .unwrap();
        isolate(&mut d);
        assert_eq!(d.nics.len(), 2);
        assert!(d
            .nics
            .iter()
            .all(|n| n.network == lifeboat_qemu::Network::User { restrict: true }));
        d.nics.clear();
        isolate(&mut d);
        assert_eq!(d.nics.len(), 1);
    }
}
