//! [`Replication`]: the source side of replication for one VM's journal and disks, whether the
//! VM runs from its original disks ([`crate::source::SourceVm`], `JournaledDisk`s) or from
//! recovered ones after a failover that was re-protected ([`crate::recovered::RecoveredVm`],
//! `RecoveryDisk`s).
//!
//! The ticker (every [`TICK`]) appends the interval's crash-consistent checkpoint marker when
//! due, seals the active segment when it has records, makes the images durable every
//! [`PERSIST_EVERY`], and ships. The instant taken *before* the seal, once the ship pass after
//! it succeeded, is the VM's `replicated_as_of`: every write acknowledged before it is in the
//! target store (the vault's RPO).
//!
//! How the target gets its first full copy ([`Start`]): the disks are copied into the store
//! while the guest writes (protect), or the target seeds it itself from the original disks and
//! only the journal after a position is shipped (re-protect).
//!
//! A store that refuses a segment's epoch **fences** the VM here: shipping stops for good and
//! [`Replication::fenced`] fires, so that the owner stops the VM (two live copies must never
//! both replicate).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use lifeboat_disk::JournaledDisk;
use lifeboat_journal::Journal;
use lifeboat_process::{CopyOptions, Processor};
use lifeboat_recover::RecoveryDisk;
use lifeboat_ship::{ShipError, Shipper};
use lifeboat_store::Store;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};
use lifeboat_vault::agent_wire::{CopyState, Protection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::vm::now_ms;

/// How often the ticker runs: a floor of the RPO.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the images are made durable (the spool keeps every record after that).
pub const PERSIST_EVERY: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A disk whose writes are journaled: what replication needs of it.
pub trait ReplDisk: Send + Sync {
    /// Every journal record up to it is in the image.
    fn position(&self) -> Seq;
    /// Makes the image durable and returns the position up to which it holds every record of
    /// this disk (the spool may drop records up to the lowest of the disks').
    fn persist(&self) -> Result<Seq>;
    /// The raw image file.
    fn image_path(&self) -> PathBuf;
}

impl ReplDisk for JournaledDisk {
    fn position(&self) -> Seq {
        self.applied_position()
    }
    fn persist(&self) -> Result<Seq> {
        self.persist_applied()
            .context("advancing the applied watermark")
    }
    fn image_path(&self) -> PathBuf {
        self.image().path().to_path_buf()
    }
}

impl ReplDisk for RecoveryDisk {
    fn position(&self) -> Seq {
        RecoveryDisk::position(self)
    }
    fn persist(&self) -> Result<Seq> {
        self.checkpoint().context("checkpointing a recovered disk")
    }
    fn image_path(&self) -> PathBuf {
        RecoveryDisk::image_path(self).to_path_buf()
    }
}

/// How the target gets its first full copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Copy the disks into the store while the guest writes (unless it has points already).
    Copy,
    /// The target seeds the store itself; ship only the records after this position.
    After(Seq),
    /// Copy the disks (as [`Start::Copy`]), shipping only the records after this position
    /// (re-protect when the original disks are gone).
    CopyAfter(Seq),
}

#[derive(Default)]
struct Shared {
    protect: Mutex<Option<(Protection, Start)>>,
    shipper: Mutex<Option<Arc<Shipper>>>,
    copy: Mutex<CopyState>,
    copier: Mutex<Option<JoinHandle<()>>>,
    replicated_as_of: Mutex<Option<i64>>,
    fenced: Mutex<Option<String>>,
    /// The multi-VM cut holding the journal's writes, if one does.
    held_cut: Mutex<Option<String>>,
    /// Replication was turned on: cut a point as soon as the initial copy is done, so the
    /// first recovery point does not wait for the interval.
    first_point: std::sync::atomic::AtomicBool,
    /// The lowest applied position of the disks (shipping keeps the records after it).
    applied: AtomicU64,
    /// Drop sealed segments the images hold while replication is off (see
    /// [`Replication::trim_when_off`]).
    trim_when_off: std::sync::atomic::AtomicBool,
}

/// The source side of one VM's replication (see the module doc).
pub struct Replication {
    vm: VmId,
    /// The VM's guest agent (app-consistent points).
    pub guest: Arc<crate::guest::GuestAgent>,
    journal: Arc<Journal>,
    disks: Vec<Arc<dyn ReplDisk>>,
    sh: Arc<Shared>,
    /// One replication pass at a time (the ticker, a shutdown, the close).
    tick_lock: tokio::sync::Mutex<()>,
    stop_tx: watch::Sender<bool>,
    fenced_tx: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Replication {
    /// Replication of `journal` and `disks` (off until [`Replication::set`]); starts the
    /// ticker, which also seals and persists when replication is off.
    pub fn new(vm: VmId, journal: Arc<Journal>, disks: Vec<Arc<dyn ReplDisk>>) -> Arc<Self> {
        let sh = Arc::new(Shared::default());
        sh.applied.store(journal.last_seq().0, Ordering::Release);
        let me = Arc::new(Replication {
            guest: crate::guest::GuestAgent::new(vm.clone()),
            vm,
            journal,
            disks,
            sh,
            tick_lock: tokio::sync::Mutex::new(()),
            stop_tx: watch::channel(false).0,
            fenced_tx: watch::channel(false).0,
            task: Mutex::new(None),
        });
        let t = tokio::spawn(ticker(me.clone(), me.stop_tx.subscribe()));
        *lock(&me.task) = Some(t);
        me
    }

    /// While replication is off (never on, or disabled) and the VM is not fenced, sealed
    /// segments whose records every image holds durably are deleted at each persist, so the
    /// spool of an unprotected VM stays bounded. Only for a VM on its original disks: nobody
    /// needs its journal then (a later protect copies the images). A recovered VM keeps what
    /// it wrote for re-protect instead (`reverse.rs` folds it).
    pub fn trim_when_off(&self) {
        self.sh.trim_when_off.store(true, Ordering::Release);
    }

    /// The journal's epoch.
    pub fn epoch(&self) -> Epoch {
        self.journal.config().epoch
    }

    /// Fires (turns true) when the store fenced this VM.
    pub fn fenced(&self) -> watch::Receiver<bool> {
        self.fenced_tx.subscribe()
    }

    /// Why the store fenced this VM, if it did.
    pub fn fenced_reason(&self) -> Option<String> {
        lock(&self.sh.fenced).clone()
    }

    /// Marks the VM fenced without a refused segment (the store's epoch is newer than the
    /// journal's: the VM failed over while this host was away).
    pub fn set_fenced(&self, why: String) {
        *lock(&self.sh.fenced) = Some(why);
        let _ = self.fenced_tx.send(true);
    }

    /// Turns replication on (or changes nothing if it is on with the same settings), or off.
    pub async fn set(self: &Arc<Self>, p: Option<Protection>, start: Start) -> Result<()> {
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
        let want = p.clone().map(|p| (p, start));
        {
            let mut cur = lock(&self.sh.protect);
            if *cur == want {
                return Ok(());
            }
            // Only the point settings (intervals, group) change: shipping goes on as it is.
            if let (Some((c, cs)), Some((w, ws))) = (cur.as_ref(), want.as_ref()) {
                if cs == ws && c.store_url == w.store_url && c.epoch == w.epoch {
                    tracing::info!(vm = %self.vm, group = ?w.group, "point settings changed");
                    *cur = want;
                    return Ok(());
                }
            }
        }
        if let Some(c) = lock(&self.sh.copier).take() {
            c.abort();
        }
        *lock(&self.sh.shipper) = None;
        *lock(&self.sh.replicated_as_of) = None;
        *lock(&self.sh.protect) = want;
        let Some(p) = p else {
            tracing::info!(vm = %self.vm, "replication off");
            return Ok(());
        };
        if let Some(why) = self.fenced_reason() {
            bail!("VM {} is fenced on this host: {why}", self.vm);
        }
        let store = Store::open(&p.store_url)
            .with_context(|| format!("opening region store {}", p.store_url))?;
        let shipper = Shipper::new(self.vm.clone(), self.journal.clone(), store.clone());
        match start {
            Start::Copy | Start::CopyAfter(_) => {
                if let Start::CopyAfter(seq) = start {
                    shipper.start_after(seq);
                }
                *lock(&self.sh.copy) = CopyState::default();
                let me = self.clone();
                *lock(&self.sh.copier) =
                    Some(tokio::spawn(async move { me.copy_loop(store).await }));
            }
            Start::After(seq) => {
                shipper.start_after(seq);
                *lock(&self.sh.copy) = CopyState {
                    percent: 100,
                    done: true,
                    error: None,
                };
            }
        }
        *lock(&self.sh.shipper) = Some(Arc::new(shipper));
        self.sh.first_point.store(true, Ordering::Release);
        tracing::info!(vm = %self.vm, store = %p.store_url, ?start, "replication on");
        Ok(())
    }

    /// Whether replication is on.
    pub fn is_on(&self) -> bool {
        lock(&self.sh.protect).is_some()
    }

    /// The settings, when on.
    pub fn protection(&self) -> Option<Protection> {
        lock(&self.sh.protect).as_ref().map(|p| p.0.clone())
    }

    /// Initial replication.
    pub fn copy_state(&self) -> CopyState {
        lock(&self.sh.copy).clone()
    }

    /// Every write acknowledged before this instant (ms since 1970) is in the target store.
    pub fn replicated_as_of(&self) -> Option<i64> {
        *lock(&self.sh.replicated_as_of)
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
        // Every record up to `start` is in every image (each position read after the writes
        // in flight on that disk, all before the copy starts).
        let start = self
            .disks
            .iter()
            .map(|d| d.position())
            .min()
            .unwrap_or(Seq(0));
        let images: Vec<(DiskId, PathBuf)> = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| (DiskId(i as u32), d.image_path()))
            .collect();
        let refs: Vec<(DiskId, &Path)> = images.iter().map(|(d, p)| (*d, p.as_path())).collect();
        tracing::info!(vm = %vm, start = start.0, "initial replication started");
        let sh = self.sh.clone();
        let progress = move |done: u64, total: u64| {
            let pct = (done.saturating_mul(100) / total.max(1)).min(100) as u8;
            lock(&sh.copy).percent = pct;
        };
        let disks = self.disks.clone();
        let end = move || -> Seq { disks.iter().map(|d| d.position()).max().unwrap_or(Seq(0)) };
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
    pub async fn tick(&self, point_due: bool, persist_due: bool) -> Result<Option<Seq>> {
        let _one = self.tick_lock.lock().await;
        let shipper = lock(&self.sh.shipper).clone();
        let shipping = shipper.is_some() && lock(&self.sh.fenced).is_none();
        let t0 = now_ms();
        let trim = !self.is_on()
            && lock(&self.sh.fenced).is_none()
            && self.sh.trim_when_off.load(Ordering::Acquire);
        let (j, disks) = (self.journal.clone(), self.disks.clone());
        let (sealed_through, applied) = tokio::task::spawn_blocking(move || -> Result<_> {
            if point_due && shipping {
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
                    let s = d.persist()?;
                    low = Some(low.map_or(s, |l| l.min(s)));
                }
                applied = low;
                if let (true, Some(upto)) = (trim, low) {
                    j.remove_sealed_through(upto)
                        .context("dropping the spool of an unprotected VM")?;
                }
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
                self.set_fenced(msg);
                Ok(None)
            }
            Err(e) => Err(anyhow::Error::new(e).context("shipping")),
        }
    }

    /// Cuts a point now: app-consistent (the guest frozen; crash-consistent if it cannot be)
    /// or crash-consistent; then seals and ships. Answers the marker's position, its kind and
    /// why the freeze failed.
    pub async fn checkpoint_now(
        &self,
        kind: CheckpointKind,
    ) -> Result<(Seq, CheckpointKind, Option<String>)> {
        if !self.is_on() {
            bail!(
                "VM {} does not replicate: no recovery point to cut",
                self.vm
            );
        }
        let out = match kind {
            CheckpointKind::AppConsistent => self.guest.app_marker(self.journal.clone()).await?,
            CheckpointKind::CrashConsistent => {
                let j = self.journal.clone();
                let seq = tokio::task::spawn_blocking(move || {
                    j.append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())
                })
                .await
                .context("marker task")??;
                (seq, kind, None)
            }
        };
        self.tick(false, false).await?;
        Ok(out)
    }

    /// Holds the journal's writes for the multi-VM cut `cut`, at most until `until` (the first
    /// phase of a cut; see `lifeboat_journal::Journal::hold_writes`).
    pub fn hold(&self, cut: &str, until: Instant) -> Result<()> {
        if !self.is_on() {
            bail!("VM {} does not replicate: no cut", self.vm);
        }
        if let Some(why) = self.fenced_reason() {
            bail!("VM {} is fenced on this host: {why}", self.vm);
        }
        let mut held = lock(&self.sh.held_cut);
        self.journal
            .hold_writes(until)
            .with_context(|| format!("VM {}: holding writes for cut {cut}", self.vm))?;
        *held = Some(cut.to_string());
        Ok(())
    }

    /// Appends the cut's marker while the writes are held and releases them (the second phase).
    pub fn commit_cut(&self, cut: &str, kind: CheckpointKind, time: SystemTime) -> Result<Seq> {
        let mut held = lock(&self.sh.held_cut);
        if held.as_deref() != Some(cut) {
            bail!(
                "VM {}: cut {cut} does not hold its writes ({}): the cut is abandoned",
                self.vm,
                held.as_deref()
                    .map_or("none is held".to_string(), |c| format!("cut {c} does"))
            );
        }
        *held = None;
        self.journal
            .checkpoint_and_release(kind, time)
            .with_context(|| format!("VM {}: the marker of cut {cut}", self.vm))
    }

    /// Releases the writes held for `cut` (an abandoned cut); nothing if it holds none.
    pub fn release_cut(&self, cut: &str) {
        let mut held = lock(&self.sh.held_cut);
        if held.as_deref() == Some(cut) {
            *held = None;
            self.journal.release_writes();
        }
    }

    /// Shuts the VM's QEMU down (ACPI, then quit, then kill) and ships every write it made
    /// (failover with "shut down the source").
    pub async fn shutdown_and_ship(
        &self,
        qemu: &crate::vm::QemuSlot,
        timeout: Duration,
    ) -> Result<lifeboat_vault::agent_wire::ShutdownAnswer> {
        let report = match qemu.lock().await.take() {
            Some(mut q) => q
                .shutdown(timeout)
                .await
                .with_context(|| format!("shutting down VM {}", self.vm))?
                .to_string(),
            None => "was not running".to_string(),
        };
        let shipped = if self.is_on() {
            self.tick(false, true).await?
        } else {
            None
        };
        Ok(lifeboat_vault::agent_wire::ShutdownAnswer {
            report,
            shipped_through: shipped.map(|s| s.0),
        })
    }

    /// Stops the ticker and the copier, then makes everything durable and ships what is sealed.
    pub async fn close(&self) {
        if let Some(c) = lock(&self.sh.copier).take() {
            c.abort();
        }
        let _ = self.stop_tx.send(true);
        let t = lock(&self.task).take();
        if let Some(t) = t {
            let _ = t.await;
        }
        if let Err(e) = self.tick(false, true).await {
            tracing::warn!(vm = %self.vm, error = format!("{e:#}"), "final replication pass failed");
        }
    }
}

async fn ticker(me: Arc<Replication>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_point = Instant::now();
    let mut last_app: Option<Instant> = None;
    let mut last_persist = Instant::now();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        // A group member's points are the group's cuts (the vault's), never its own.
        let point_every = lock(&me.sh.protect)
            .as_ref()
            .filter(|p| p.0.group.is_none())
            .map(|p| p.0.point_secs)
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        // App-consistent points of a VM on its own (a group's are the vault's cuts).
        let app_every = lock(&me.sh.protect)
            .as_ref()
            .filter(|p| p.0.group.is_none() && p.0.app_secs > 0)
            .map(|p| Duration::from_secs(p.0.app_secs));
        let app_due = lock(&me.sh.copy).done
            && app_every.is_some_and(|e| last_app.is_none_or(|t| t.elapsed() >= e));
        if app_due {
            last_app = Some(Instant::now());
            last_point = Instant::now();
            if let Err(e) = me.checkpoint_now(CheckpointKind::AppConsistent).await {
                tracing::warn!(vm = %me.vm, error = format!("{e:#}"), "app-consistent point failed");
            }
        }
        let first = point_every.is_some()
            && lock(&me.sh.copy).done
            && me.sh.first_point.swap(false, Ordering::AcqRel);
        let point_due = first || point_every.is_some_and(|e| last_point.elapsed() >= e);
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
