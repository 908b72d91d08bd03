//! `lifeboat disk serve`: one raw image, one journal, one NBD export.
//!
//! Background duties (a ticker, every second or half the segment age if shorter, run off the
//! async threads): append a crash-consistent
//! checkpoint marker every `--point-secs` (the recovery-point interval), seal the active segment
//! when it reaches its age limit, and advance the image's applied watermark every
//! `--checkpoint-secs`, and with `--ship-to STORE` ship sealed segments to a region store
//! (`lifeboat-ship`: a segment leaves the journal once the store has it and the image has applied
//! it; a fenced store stops shipping). SIGUSR1 appends a crash-consistent checkpoint marker to the journal.
//! With `--ship-to`, a store without a recovery point of the VM first gets the whole image,
//! copied while the guest keeps writing (`initial_copy`).
//! SIGTERM / SIGINT: stop accepting, finish in-flight requests, make the journal and image
//! durable, advance the watermark, seal and ship what is left (with `--ship-to`), remove the
//! socket, exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;
use lifeboat_disk::{DiskOptions, JournaledDisk};
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_nbd::{BlockDevice, Export, Server, ServerConfig};
use lifeboat_ship::{ShipError, Shipper};
use lifeboat_store::Store;
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
pub struct ServeArgs {
    /// The raw disk image to serve (written in place).
    #[arg(long)]
    image: PathBuf,
    /// The VM's write-journal directory (created if missing).
    #[arg(long)]
    journal: PathBuf,
    /// Listen on this unix socket (e.g. for QEMU's `-blockdev driver=nbd`).
    #[arg(long, conflicts_with = "listen", required_unless_present = "listen")]
    socket: Option<PathBuf>,
    /// Listen on this TCP address instead (loopback, e.g. 127.0.0.1:10809).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The VM id written into the journal (default: the image file's name).
    #[arg(long)]
    vm: Option<String>,
    /// The NBD export name (the empty name also reaches it).
    #[arg(long, default_value = "disk0")]
    export: String,
    /// Serve read-only (nothing is journaled).
    #[arg(long)]
    read_only: bool,
    /// Replication epoch written into new journal segments.
    #[arg(long, default_value_t = 1)]
    epoch: u64,
    /// Seal a journal segment when it reaches this many MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Seal a journal segment after this many seconds (fractions allowed, at least 0.05): the
    /// shipping delay, and so a floor of the RPO.
    #[arg(long, default_value_t = 10.0)]
    segment_secs: f64,
    /// Ship sealed journal segments to this region store (a directory path, `file:///path`,
    /// `s3://bucket/prefix` or `az://container/prefix`); shipped segments leave the journal.
    #[arg(long, value_name = "STORE_URL")]
    ship_to: Option<String>,
    /// Append a crash-consistent checkpoint marker (a recovery point once processed) this often,
    /// in seconds (ASR: every 5 minutes). 0 turns interval markers off.
    #[arg(long, default_value_t = 300)]
    point_secs: u64,
    /// Advance the image's applied watermark this often (seconds): bounds how much journal a
    /// restart replays, at the cost of an image fdatasync.
    #[arg(long, default_value_t = 30)]
    checkpoint_secs: u64,
    /// Bandwidth limit of initial replication in MiB/s (0: none). With `--ship-to`, a store
    /// that has no recovery point of the VM gets the whole image first, copied in the
    /// background while the guest keeps writing (progress in the log).
    #[arg(long, default_value_t = 0)]
    copy_rate_mib: u64,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let vm = match &args.vm {
        Some(v) => VmId::new(v.clone()).context("--vm")?,
        None => default_vm_id(&args.image)?,
    };
    let mut jc = JournalConfig::new(vm.clone(), Epoch(args.epoch));
    jc.segment_max_bytes = args.segment_mib.max(1) << 20;
    if !(args.segment_secs.is_finite() && args.segment_secs >= 0.05) {
        bail!(
            "--segment-secs {} is out of range: use 0.05 seconds or more",
            args.segment_secs
        );
    }
    jc.segment_max_age = Duration::from_secs_f64(args.segment_secs);
    let journal = Arc::new(
        Journal::open(&args.journal, jc)
            .with_context(|| format!("opening journal {}", args.journal.display()))?,
    );
    let disk = Arc::new(
        JournaledDisk::open(
            &args.image,
            DiskId(0),
            journal.clone(),
            &args.journal,
            DiskOptions {
                read_only: args.read_only,
            },
        )
        .with_context(|| format!("opening disk image {}", args.image.display()))?,
    );
    tracing::info!(
        vm = %vm,
        image = %args.image.display(),
        size = disk.size(),
        last_seq = journal.last_seq().0,
        "disk ready"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, journal, disk))
}

fn default_vm_id(image: &std::path::Path) -> Result<VmId> {
    let stem = image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(VmId::MAX_LEN)
        .collect();
    VmId::new(cleaned).with_context(|| {
        format!(
            "cannot derive a VM id from image name {}: pass --vm",
            image.display()
        )
    })
}

async fn serve(args: ServeArgs, journal: Arc<Journal>, disk: Arc<JournaledDisk>) -> Result<()> {
    let server = Server::new(ServerConfig::default());
    server
        .add_export(Export::new(
            args.export.clone(),
            format!("lifeboat disk {}", args.image.display()),
            disk.clone(),
        ))
        .context("adding the export")?;
    let shipper = match &args.ship_to {
        Some(url) => {
            let store = Store::open(url).with_context(|| format!("opening region store {url}"))?;
            tracing::info!(store = %url, "shipping sealed journal segments");
            Some(Arc::new(Shipper::new(
                journal.config().vm.clone(),
                journal.clone(),
                store,
            )))
        }
        None => None,
    };
    let copier = match (&args.ship_to, args.read_only) {
        (Some(url), false) => {
            let store = Store::open(url).with_context(|| format!("opening region store {url}"))?;
            let (vm, d) = (journal.config().vm.clone(), disk.clone());
            let epoch = Epoch(args.epoch);
            let rate = (args.copy_rate_mib > 0).then_some(args.copy_rate_mib << 20);
            Some(tokio::spawn(async move {
                if let Err(e) = crate::initial_copy::run(store, vm, d, epoch, rate).await {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "initial replication failed; it starts again when the server restarts"
                    );
                }
            }))
        }
        _ => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let ticker = tokio::spawn(background(
        journal.clone(),
        disk.clone(),
        shipper.clone(),
        // The ticker seals and ships: run it often enough for short segments.
        Duration::from_secs_f64((args.segment_secs / 2.0).clamp(0.05, 1.0)),
        Duration::from_secs(args.checkpoint_secs.max(1)),
        (args.point_secs > 0).then(|| Duration::from_secs(args.point_secs)),
        stop_rx.clone(),
    ));
    let signals = tokio::spawn(signals(install_signals()?, journal.clone(), stop_tx));

    match (&args.socket, args.listen) {
        (Some(path), _) => {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("listening on unix socket {}", path.display()))?;
            tracing::info!(socket = %path.display(), export = %args.export, "serving NBD");
            server.serve_unix(listener, stop_rx).await;
            let _ = std::fs::remove_file(path);
        }
        (None, Some(addr)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tracing::info!(%addr, export = %args.export, "serving NBD");
            server.serve_tcp(listener, stop_rx).await;
        }
        (None, None) => bail!("give --socket PATH or --listen HOST:PORT"),
    }
    signals.abort();
    if let Some(c) = copier {
        if !c.is_finished() {
            tracing::warn!(
                "stopping during initial replication: it starts again on the next start"
            );
        }
        c.abort();
    }
    let _ = ticker.await;
    let shipper_present = shipper.is_some();
    let (d, j) = (disk.clone(), journal.clone());
    let applied = tokio::task::spawn_blocking(move || {
        let applied = d.persist_applied()?;
        if shipper_present {
            j.seal()?;
        }
        anyhow::Ok(applied)
    })
    .await
    .context("final checkpoint task")?
    .context("making the journal and image durable at shutdown")?;
    if let Some(s) = &shipper {
        let r = s
            .ship_once(applied)
            .await
            .context("shipping the last journal segments at shutdown")?;
        tracing::info!(
            stored = r.stored,
            removed = r.removed,
            "final shipping pass"
        );
    }
    tracing::info!(last_seq = journal.last_seq().0, "stopped cleanly");
    Ok(())
}

/// Removes a socket file left by a killed server; refuses if a server still listens there.
fn remove_stale_socket(path: &std::path::Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "unix socket {} is in use by a running server: stop it or choose another --socket",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .with_context(|| format!("removing stale unix socket {}", path.display()))
}

/// SIGTERM, SIGINT and SIGUSR1, installed before the server listens: a signal sent as soon
/// as the socket exists is handled, never the default action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

fn install_signals() -> Result<Signals> {
    Ok(Signals {
        term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        usr1: signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?,
    })
}

async fn signals(
    sigs: Signals,
    journal: Arc<Journal>,
    stop: tokio::sync::watch::Sender<bool>,
) -> Result<()> {
    let Signals {
        mut term,
        mut int,
        mut usr1,
    } = sigs;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                let j = journal.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let seq = j.append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())?;
                    j.sync()?;
                    Ok::<_, lifeboat_journal::JournalError>(seq)
                }).await;
                match r {
                    Ok(Ok(seq)) => tracing::info!(seq = seq.0, "crash-consistent checkpoint appended"),
                    Ok(Err(e)) => tracing::error!(error = %e, "checkpoint failed"),
                    Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
                }
            }
        }
    }
    tracing::info!("stopping: finishing in-flight requests");
    let _ = stop.send(true);
    Ok(())
}

async fn background(
    journal: Arc<Journal>,
    disk: Arc<JournaledDisk>,
    shipper: Option<Arc<Shipper>>,
    tick_every: Duration,
    checkpoint_every: Duration,
    point_every: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(tick_every);
    let mut last_checkpoint = Instant::now();
    let mut last_point = Instant::now();
    // The image's applied watermark (set at open); shipping never removes records after it.
    let mut applied = journal.last_seq();
    let mut shipping = shipper.is_some();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let (j, d) = (journal.clone(), disk.clone());
        let due = last_checkpoint.elapsed() >= checkpoint_every;
        let point_due = point_every.is_some_and(|every| last_point.elapsed() >= every);
        if point_due {
            last_point = Instant::now();
        }
        let r = tokio::task::spawn_blocking(move || -> Result<Option<Seq>> {
            if point_due {
                j.append_checkpoint(CheckpointKind::CrashConsistent, SystemTime::now())
                    .context("appending the interval checkpoint marker")?;
            }
            j.seal_if_due().context("sealing the journal segment")?;
            // The image's fdatasync is the expensive part: only on the timer, so that a burst
            // of sealed segments does not turn into a burst of image syncs.
            if due {
                let seq = d
                    .persist_applied()
                    .context("advancing the applied watermark")?;
                return Ok(Some(seq));
            }
            Ok(None)
        })
        .await;
        match r {
            Ok(Ok(Some(seq))) => {
                applied = seq;
                last_checkpoint = Instant::now();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "background duty failed"),
            Err(e) => tracing::error!(error = %e, "background task failed"),
        }
        if let (true, Some(s)) = (shipping, &shipper) {
            match s.ship_once(applied).await {
                Ok(r) if r.stored + r.removed > 0 => tracing::debug!(
                    stored = r.stored,
                    bytes = r.bytes,
                    removed = r.removed,
                    "shipped"
                ),
                Ok(_) => {}
                Err(e @ ShipError::Fenced { .. }) => {
                    tracing::error!(
                        error = %e,
                        "replication fenced: this host no longer replicates the VM"
                    );
                    shipping = false;
                }
                // The spool keeps everything; the next tick retries.
                Err(e) => tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(e)),
                    "shipping failed; will retry"
                ),
            }
        }
    }
}
