//! QEMU for the agent's VMs: the definition QEMU gets (every disk an NBD export of the agent's
//! socket, the serial console in the VM's directory), start, status, and cleanup of a QEMU left
//! by a previous run of the agent.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_nbd::{BlockDevice, Export, Server, ServerConfig};
use lifeboat_qemu::{Accel, DiskSource, QmpClient, RunningVm, StartOptions, VmDefinition};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A VM's QEMU, when it runs.
pub type QemuSlot = tokio::sync::Mutex<Option<RunningVm>>;

/// Milliseconds since 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses the vault's definition of VM `vm`.
pub fn parse_definition(vm: &str, def: &serde_json::Value) -> Result<VmDefinition> {
    let d: VmDefinition = serde_json::from_value(def.clone())
        .with_context(|| format!("VM {vm}: its definition is not usable"))?;
    Ok(d)
}

/// The definition QEMU runs: disk `i` is export `disk{i}` of `socket`, the serial console
/// goes to `serial`, the name is the VM's.
pub fn qemu_definition(vm: &str, def: &VmDefinition, socket: &Path, serial: &Path) -> VmDefinition {
    let mut d = def.clone();
    d.name = vm.to_string();
    d.serial_log = serial.to_path_buf();
    // The guest agent channel's socket is the agent's own, beside the disks' (QEMU creates it).
    d.guest_agent_socket = def
        .guest_agent_socket
        .as_ref()
        .map(|_| socket.with_file_name("qga.sock"));
    for (i, disk) in d.disks.iter_mut().enumerate() {
        disk.source = DiskSource::Nbd {
            socket: socket.to_path_buf(),
            export: format!("disk{i}"),
        };
    }
    d
}

/// Serves `disks` (export `disk<i>`) on `<dir>/nbd.sock` until the returned sender turns true.
pub fn serve_disks(
    what: &str,
    dir: &Path,
    disks: Vec<Arc<dyn BlockDevice>>,
) -> Result<(watch::Sender<bool>, JoinHandle<()>)> {
    let server = Server::new(ServerConfig::default());
    for (i, d) in disks.into_iter().enumerate() {
        server
            .add_export(Export::new(
                format!("disk{i}"),
                format!("{what} disk {i}"),
                d,
            ))
            .context("adding an NBD export")?;
    }
    let socket = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move { server.serve_unix(listener, stop_rx).await });
    tracing::info!(socket = %socket.display(), "{what}: disks served");
    Ok((stop_tx, task))
}

/// Where a VM's files are: `<data>/vms/<vm>`.
pub fn vm_dir(data: &Path, vm: &str) -> PathBuf {
    data.join("vms").join(vm)
}

/// Starts QEMU in `slot` unless it runs already.
pub async fn start(slot: &QemuSlot, def: &VmDefinition, dir: &Path, accel: Accel) -> Result<()> {
    let mut g = slot.lock().await;
    if let Some(q) = g.as_mut() {
        if matches!(q.try_exit(), Ok(None)) {
            return Ok(());
        }
    }
    let run = dir.join("run");
    stop_stale(&run).await;
    let mut opts = StartOptions::new(&run);
    opts.accel = accel;
    opts.die_with_parent = true;
    let q = lifeboat_qemu::start(def, &opts)
        .await
        .with_context(|| format!("starting VM {}", def.name))?;
    tracing::info!(vm = %def.name, pid = q.pid(), accel = %q.accel(), "VM started");
    *g = Some(q);
    Ok(())
}

/// Whether QEMU runs.
pub async fn running(slot: &QemuSlot) -> bool {
    let mut g = slot.lock().await;
    match g.as_mut() {
        Some(q) => matches!(q.try_exit(), Ok(None)),
        None => false,
    }
}

/// Stops QEMU (ACPI power button, then quit, then kill) and says how.
pub async fn stop(slot: &QemuSlot, timeout: Duration) -> Result<String> {
    match slot.lock().await.take() {
        Some(mut q) => Ok(q.shutdown(timeout).await?.to_string()),
        None => Ok("was not running".into()),
    }
}

/// Kills QEMU at once (the VM's disks are being discarded).
pub async fn kill(slot: &QemuSlot) {
    if let Some(mut q) = slot.lock().await.take() {
        let _ = q.kill().await;
    }
}

/// A QEMU left running by a previous run of the agent (killed with -9 before its VMs) is
/// asked to quit over its QMP socket.
pub async fn stop_stale(run_dir: &Path) {
    let sock = run_dir.join("qmp.sock");
    if !sock.exists() {
        return;
    }
    if let Ok(c) = QmpClient::connect(&sock, Duration::from_secs(2)).await {
        tracing::warn!(socket = %sock.display(), "stopping a QEMU left by a previous run");
        let _ = c.quit().await;
        for _ in 0..50 {
            if std::os::unix::net::UnixStream::connect(&sock).is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
