//! [`GuestAgent`]: app-consistent recovery points of one VM through its QEMU guest agent.
//!
//! A VM whose definition has a `guest_agent_socket` runs with a guest agent channel whose
//! socket the agent owns (`<vm dir>/qga.sock`, created by the VM's QEMU). An app-consistent
//! point freezes the guest's filesystems (`guest-fsfreeze-freeze`: the guest flushes and blocks
//! its writers), appends the app-consistent marker to the journal while frozen, and thaws —
//! always, also when the marker fails (`lifeboat_qemu::Qga::frozen`).
//!
//! **Only a guest is frozen:** the client refuses a socket not served by this VM's own QEMU
//! process (its pid, by `SO_PEERCRED`), before it sends anything.
//!
//! **A freeze that fails** (no channel, the VM is not running, qemu-ga does not answer, the
//! freeze times out or is refused) yields a crash-consistent marker instead, and counts as a
//! miss: the agent reports the consecutive misses and the last reason, the vault writes an
//! event and the item's health turns Warning after [`lifeboat_policy::APP_MISSES_WARNING`].
//!
//! For a replication group's app-consistent cut the vault freezes every member first
//! ([`GuestAgent::freeze_for_cut`]), holds and marks every journal, then thaws
//! ([`GuestAgent::thaw_cut`]). A frozen guest is thawed by a watchdog after [`CUT_FREEZE_MAX`]
//! if the vault never asks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lifeboat_journal::Journal;
use lifeboat_qemu::{Qga, THAW_TIMEOUT};
use lifeboat_types::{CheckpointKind, Seq, VmId};

use crate::vm::QemuSlot;

/// How long the guest agent may take to freeze the filesystems.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the guest agent's channel to connect and sync.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A guest frozen for a group cut is thawed after this, whatever the vault does.
pub const CUT_FREEZE_MAX: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The socket the agent gives a VM's guest agent channel.
pub fn socket_in(vm_dir: &std::path::Path) -> PathBuf {
    vm_dir.join("qga.sock")
}

/// One VM's guest agent (see the module doc).
pub struct GuestAgent {
    vm: VmId,
    /// The VM's QEMU and its guest agent socket, when it has a channel.
    link: Mutex<Option<(Arc<QemuSlot>, PathBuf)>>,
    misses: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// The connection of a group cut's freeze, until its thaw.
    cut: tokio::sync::Mutex<Option<(String, Qga)>>,
}

impl GuestAgent {
    /// The guest agent of `vm` (no channel until [`GuestAgent::attach`]).
    pub fn new(vm: VmId) -> Arc<Self> {
        Arc::new(GuestAgent {
            vm,
            link: Mutex::new(None),
            misses: AtomicU32::new(0),
            last_error: Mutex::new(None),
            cut: tokio::sync::Mutex::new(None),
        })
    }

    /// The VM's QEMU slot and its guest agent socket.
    pub fn attach(&self, qemu: Arc<QemuSlot>, socket: PathBuf) {
        *lock(&self.link) = Some((qemu, socket));
    }

    /// Consecutive failed freezes and the last reason.
    pub fn misses(&self) -> (u32, Option<String>) {
        (
            self.misses.load(Ordering::Acquire),
            lock(&self.last_error).clone(),
        )
    }

    fn record(&self, failure: Option<String>) {
        match failure {
            None => self.misses.store(0, Ordering::Release),
            Some(why) => {
                let n = self.misses.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::warn!(vm = %self.vm, misses = n, error = %why, "app-consistent point failed: crash-consistent instead");
                *lock(&self.last_error) = Some(why);
            }
        }
    }

    async fn connect(&self) -> Result<Qga, String> {
        let Some((qemu, socket)) = lock(&self.link).clone() else {
            return Err(format!(
                "VM {} has no guest agent channel: set guest_agent_socket in its definition \
                 and run qemu-ga in the guest",
                self.vm
            ));
        };
        let pid = qemu.lock().await.as_ref().map(|q| q.pid());
        let Some(pid) = pid else {
            return Err(format!("VM {} is not running", self.vm));
        };
        Qga::connect(&socket, pid, CONNECT_TIMEOUT)
            .await
            .map_err(|e| format!("VM {}: {e}", self.vm))
    }

    /// Appends an app-consistent marker while the guest is frozen, or a crash-consistent one if
    /// it cannot be frozen (a miss). Answers the marker's position, its kind, and why the
    /// freeze failed.
    pub async fn app_marker(
        &self,
        journal: Arc<Journal>,
    ) -> anyhow::Result<(Seq, CheckpointKind, Option<String>)> {
        let append = |kind| {
            let j = journal.clone();
            async move {
                tokio::task::spawn_blocking(move || j.append_checkpoint(kind, SystemTime::now()))
                    .await
                    .map_err(|e| anyhow::anyhow!("marker task: {e}"))?
                    .map_err(anyhow::Error::new)
            }
        };
        let failure = match self.connect().await {
            Err(e) => e,
            Ok(mut qga) => {
                let run = qga
                    .frozen(FREEZE_TIMEOUT, |_| append(CheckpointKind::AppConsistent))
                    .await;
                if let Some(e) = &run.thaw_error {
                    tracing::error!(vm = %self.vm, error = %e, "the guest may still be frozen");
                }
                match (run.output, run.freeze_error) {
                    (Some(Ok(seq)), _) => {
                        self.record(None);
                        return Ok((seq, CheckpointKind::AppConsistent, None));
                    }
                    (Some(Err(e)), _) => {
                        return Err(e.context("appending the app-consistent marker"))
                    }
                    (None, Some(e)) => format!("VM {}: {e}", self.vm),
                    (None, None) => format!("VM {}: the guest was not frozen", self.vm),
                }
            }
        };
        self.record(Some(failure.clone()));
        let seq = append(CheckpointKind::CrashConsistent).await?;
        Ok((seq, CheckpointKind::CrashConsistent, Some(failure)))
    }

    /// Freezes the guest for group cut `cut` and keeps it frozen until
    /// [`GuestAgent::thaw_cut`] (or [`CUT_FREEZE_MAX`]); answers how many filesystems.
    pub async fn freeze_for_cut(
        self: &Arc<Self>,
        cut: &str,
        timeout: Duration,
    ) -> Result<u32, String> {
        let mut slot = self.cut.lock().await;
        if let Some((old, mut q)) = slot.take() {
            tracing::warn!(vm = %self.vm, cut = %old, "an earlier cut's freeze was never thawed: thawing");
            let _ = q.ensure_thawed(THAW_TIMEOUT).await;
        }
        let mut qga = self.connect().await?;
        match qga.fsfreeze_freeze(timeout).await {
            Ok(n) => {
                *slot = Some((cut.to_string(), qga));
                let (me, cut) = (self.clone(), cut.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(CUT_FREEZE_MAX).await;
                    if let Err(e) = me.thaw_cut(&cut).await {
                        tracing::error!(vm = %me.vm, cut, error = %e, "watchdog thaw failed");
                    }
                });
                Ok(n)
            }
            Err(e) => {
                // It may still freeze after the timeout: thaw to be sure.
                let _ = qga.ensure_thawed(THAW_TIMEOUT).await;
                let why = format!("VM {}: {e}", self.vm);
                self.record(Some(why.clone()));
                Err(why)
            }
        }
    }

    /// Thaws the guest frozen for `cut`; nothing (0) if it is not frozen for it.
    pub async fn thaw_cut(&self, cut: &str) -> Result<u32, String> {
        let mut slot = self.cut.lock().await;
        if slot.as_ref().is_none_or(|(c, _)| c != cut) {
            return Ok(0);
        }
        let Some((_, mut qga)) = slot.take() else {
            return Ok(0);
        };
        match qga.ensure_thawed(THAW_TIMEOUT).await {
            Ok(n) => {
                self.record(None);
                Ok(n)
            }
            Err(e) => Err(format!("VM {}: {e}", self.vm)),
        }
    }
}
