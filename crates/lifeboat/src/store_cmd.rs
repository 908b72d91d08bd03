//! Region-store commands: `points`, `restore`, `verify`, `process`, `seed`.
//!
//! `seed` and `process` are the building blocks the agents will run by themselves (initial
//! replication at the primary, processing at the secondary); until the agent exists they are
//! run by hand or by tests.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;
use lifeboat_agent::pick::pick_point;
use lifeboat_process::{
    format_utc_ms, open_point, parse_utc, state_at, ChunkChange, Cut, PointInTime, Processor,
    Target,
};
use lifeboat_store::{is_time_choice, Entry, PinRecord, PointRecord, Store};
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

#[derive(Args)]
pub struct PointsArgs {
    /// A protected VM: its recovery points in its target region, through the vault.
    name: Option<String>,
    /// Or read a region store directly (a directory path, `file:///path`, `s3://...`,
    /// `az://...`), with `--vm`.
    #[arg(long, requires = "vm", conflicts_with = "name")]
    store: Option<String>,
    /// The VM (with `--store`).
    #[arg(long, requires = "store")]
    vm: Option<String>,
    #[command(flatten)]
    conn: crate::client::VaultConn,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[arg(long)]
    store: String,
    #[arg(long)]
    vm: String,
    /// `latest` (alias `latest-processed`: the newest point), `latest-app-consistent`, a point id
    /// from `lifeboat points`, or a time inside the
    /// continuous-data-protection window, to the write: `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) or
    /// `@UNIXSECONDS[.fff]`.
    #[arg(long)]
    point: String,
    /// Which disk of the VM.
    #[arg(long, default_value_t = 0)]
    disk: u32,
    /// The raw image to write (must not exist).
    #[arg(long)]
    output: PathBuf,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[arg(long)]
    store: String,
}

#[derive(Args)]
pub struct ProcessArgs {
    #[arg(long)]
    store: String,
    #[arg(long)]
    vm: String,
    /// Also cut a point at the last record received ("latest").
    #[arg(long)]
    latest: bool,
    /// Keep processing, every `--every-ms`, until SIGINT or SIGTERM.
    #[arg(long)]
    follow: bool,
    #[arg(long, default_value_t = 1000)]
    every_ms: u64,
    /// When to store journal-backed points (write their chunks). 0: store every point as it is
    /// cut. Otherwise the store rule (`lifeboat_process::StoreRule`), with no point stored by
    /// age or replay sooner than this many seconds after its base:
    /// the newest point once its base is 25 h old, its journal would need a quarter of a
    /// reader's index budget, or replaying its journal would read 4 times what storing it
    /// writes (retention rolls the base forward besides). With --follow this runs beside the
    /// processing loop, so cutting points never waits for it.
    #[arg(long, default_value_t = 300.0)]
    store_secs: f64,
}

#[derive(Args)]
pub struct LagArgs {
    #[arg(long)]
    store: String,
    #[arg(long)]
    vm: String,
}

#[derive(Args)]
pub struct RetentionArgs {
    #[arg(long)]
    store: String,
    #[arg(long)]
    vm: String,
    /// Keep points this many hours (ASR: up to 15 days; Lifeboat: up to 30).
    #[arg(long, default_value_t = 24.0)]
    retention_hours: f64,
    /// Keep the raw journal (any instant restorable) this many minutes.
    #[arg(long, default_value_t = 60.0)]
    cdp_window_mins: f64,
}

#[derive(Args)]
pub struct GcArgs {
    #[arg(long)]
    store: String,
    /// Never delete an object younger than this (seconds): covers lease-less tools and clock
    /// skew.
    #[arg(long, default_value_t = 3600)]
    grace_secs: u64,
}

#[derive(Args)]
pub struct SeedArgs {
    #[arg(long)]
    store: String,
    #[arg(long)]
    vm: String,
    /// A disk as `N=PATH` (raw image); repeat for each disk.
    #[arg(long = "disk", value_name = "N=PATH", required = true)]
    disks: Vec<String>,
    /// The journal position the images correspond to.
    #[arg(long, default_value_t = 0)]
    seq: u64,
    #[arg(long, default_value_t = 1)]
    epoch: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open(url: &str) -> Result<Store> {
    Store::open(url).with_context(|| format!("opening region store {url}"))
}

fn vm_id(s: &str) -> Result<VmId> {
    VmId::new(s).context("--vm")
}

pub fn points(a: PointsArgs) -> Result<()> {
    let (store, vm) = match (&a.name, &a.store, &a.vm) {
        (Some(name), None, None) => return crate::client::item_points(&a.conn, name),
        (None, Some(store), Some(vm)) => (store, vm),
        _ => bail!("give a protected VM's name (through the vault), or --store URL --vm ID"),
    };
    let store = open(store)?;
    let vm = vm_id(vm)?;
    let points = runtime()?
        .block_on(store.list_points(&vm))
        .with_context(|| format!("listing the points of VM {vm}"))?;
    match a.conn.is_json() {
        true => println!("{}", serde_json::to_string_pretty(&points)?),
        false => {
            println!(
                "{:<28} {:<25} {:<17} {:<12} {:<8} NEW",
                "POINT", "TIME (UTC)", "KIND", "DISKS", "FORM"
            );
            for p in &points {
                let (form, new) = if !p.is_restorable() {
                    (
                        "copy",
                        format!(
                            "initial copy: restorable from journal record {} on",
                            p.copy_end.unwrap_or(p.seq)
                        ),
                    )
                } else if let Some(base) = &p.base {
                    ("journal", format!("point {base} + journal"))
                } else {
                    (
                        "stored",
                        format!("{} chunks, {} bytes", p.new_chunks, p.new_bytes),
                    )
                };
                println!(
                    "{:<28} {:<25} {:<17} {:<12} {:<8} {new}",
                    p.id,
                    format_utc_ms(p.time()),
                    p.kind,
                    p.disks_summary(),
                    form,
                );
            }
        }
    }
    Ok(())
}

/// What a restore wrote from: a recovery point, or a point in time of the journal.
enum Restored {
    Point(PointRecord),
    Time { asked: SystemTime, pit: PointInTime },
}

pub fn restore(a: RestoreArgs) -> Result<()> {
    if is_time_choice(&a.point) {
        // Fail on a malformed time before touching anything.
        parse_utc(&a.point).map_err(anyhow::Error::msg)?;
    }
    if a.output.exists() {
        bail!(
            "{} exists: restore writes a new file, choose another --output",
            a.output.display()
        );
    }
    let store = open(&a.store)?;
    let vm = vm_id(&a.vm)?;
    let tmp = a.output.with_extension("restoring");
    let disk = DiskId(a.disk);
    let result = runtime()?.block_on(async {
        if is_time_choice(&a.point) {
            let asked = parse_utc(&a.point).map_err(anyhow::Error::msg)?;
            let open = || state_at(&store, &vm, Target::Time(asked));
            let pit = write_pinned(&store, &vm, open, disk, &tmp).await?;
            return anyhow::Ok(Restored::Time { asked, pit });
        }
        let point = pick_point(&store, &vm, &a.point).await?;
        let open = || open_point(&store, &vm, &point);
        write_pinned(&store, &vm, open, disk, &tmp).await?;
        anyhow::Ok(Restored::Point(point))
    });
    match result {
        Ok(Restored::Time { asked, pit }) => {
            std::fs::rename(&tmp, &a.output)?;
            let mut out = std::io::stdout();
            writeln!(
                out,
                "restored disk {} of VM {vm} as of {} to {}: journal record {} (appended {}), \
                 point {} plus {} records",
                a.disk,
                format_utc_ms(asked),
                a.output.display(),
                pit.seq,
                format_utc_ms(pit.time),
                pit.base.id,
                pit.records
            )?;
            if pit.after_last {
                writeln!(
                    out,
                    "note: {} is after the last record the region store has received; \
                     this is the state at that last record",
                    format_utc_ms(asked)
                )?;
            }
            Ok(())
        }
        Ok(Restored::Point(point)) => {
            std::fs::rename(&tmp, &a.output)?;
            let mut out = std::io::stdout();
            writeln!(
                out,
                "restored disk {} of point {} ({}, {}) to {}",
                a.disk,
                point.id,
                point.kind,
                format_utc_ms(point.time()),
                a.output.display()
            )?;
            Ok(())
        }
        Err(e) => {
            // Never leave a partial or unverified disk behind.
            let _ = std::fs::remove_file(&tmp);
            Err(e.context(format!(
                "restoring VM {vm} to {}: nothing was written",
                a.output.display()
            )))
        }
    }
}

/// How long a restore's pin holds unless renewed (it is renewed every fifth of that).
const RESTORE_LEASE: std::time::Duration = std::time::Duration::from_secs(600);

/// Opens a point with `open` and writes `disk` of it to `path` ([`write_disk`]) under a leased
/// pin of what it reads (its base and journal), so that retention neither drops nor rolls past
/// them meanwhile; the lease lapses by itself if this process is killed. A base that rolled
/// forward between opening and pinning is seen (its record is gone) and the point opened again.
async fn write_pinned<F, Fut>(
    store: &Store,
    vm: &VmId,
    open: F,
    disk: DiskId,
    path: &Path,
) -> Result<PointInTime>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<PointInTime, lifeboat_process::ProcessError>>,
{
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("restore-{}-{nanos}", std::process::id());
    let note = format!("lifeboat restore of {disk} to {}", path.display());
    let mut attempt = 0;
    let (pit, pin) = loop {
        attempt += 1;
        let pit = open().await?;
        let pin = PinRecord::leased(pit.base.seq().0, pit.seq.0, &note, RESTORE_LEASE);
        store
            .put_pin(vm, &name, &pin)
            .await
            .with_context(|| format!("pinning what the restore of VM {vm} reads"))?;
        match store.get_point(vm, &pit.base.id).await {
            Ok(_) => break (pit, pin),
            Err(lifeboat_store::StoreError::PointNotFound { .. }) if attempt < 3 => continue,
            Err(e) => {
                let _ = store.delete_pin(vm, &name).await;
                return Err(e)
                    .with_context(|| format!("base point {} of the restore", pit.base.id));
            }
        }
    };
    let renew = async {
        loop {
            tokio::time::sleep(RESTORE_LEASE / 5).await;
            if let Err(e) = store.put_pin(vm, &name, &pin).await {
                tracing::warn!(error = %e, "renewing the restore's pin failed; will retry");
            }
        }
    };
    let written = tokio::select! {
        r = write_disk(store, &pit, disk, path) => r,
        () = renew => unreachable!("renewing never ends"),
    };
    if let Err(e) = store.delete_pin(vm, &name).await {
        tracing::warn!(error = %e, pin = %name, "removing the restore's pin failed: it lapses by itself");
    }
    written.map(|()| pit)
}

/// Chunks the journal changed that [`write_disk`] builds in one pass over their segments.
const BUILD_BATCH: usize = 16;

/// Writes disk `disk` of `pit` to the new file `path` (zero chunks stay holes) and syncs it.
/// Chunks the journal changed since the base are built in batches of [`BUILD_BATCH`], each
/// batch reading the journal segments it needs once.
async fn write_disk(store: &Store, pit: &PointInTime, disk: DiskId, path: &Path) -> Result<()> {
    let reader = store
        .disk_reader(&pit.base, disk)
        .await
        .with_context(|| format!("{disk} of point {}", pit.base.id))?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(reader.size())?;
    let cs = u64::from(reader.chunk_size());
    let write_changed = |batch: &mut Vec<u64>| {
        let batch = std::mem::take(batch);
        let file = &file;
        async move {
            let built = pit
                .read_disk_chunks(store, disk, &batch)
                .await
                .with_context(|| {
                    format!(
                        "chunks {batch:?} of {disk} at journal record {} (point {} and the journal since)",
                        pit.seq, pit.base.id
                    )
                })?;
            for (i, data) in batch.iter().zip(built) {
                if data.iter().any(|b| *b != 0) {
                    file.write_all_at(&data, i * cs)?;
                }
            }
            anyhow::Ok(())
        }
    };
    let mut changed = Vec::with_capacity(BUILD_BATCH);
    for i in 0..reader.chunk_count() {
        match pit.chunk_change(disk, i) {
            ChunkChange::Zeroed => continue,
            ChunkChange::Changed => {
                changed.push(i);
                if changed.len() == BUILD_BATCH {
                    write_changed(&mut changed).await?;
                }
                continue;
            }
            ChunkChange::Unchanged => {}
        }
        if reader.entry(i).await? == Entry::Zero {
            continue;
        }
        let data = reader
            .read_chunk(i)
            .await
            .with_context(|| format!("chunk {i} of {disk} of point {}", pit.base.id))?;
        file.write_all_at(&data, i * cs)?;
    }
    if !changed.is_empty() {
        write_changed(&mut changed).await?;
    }
    file.sync_all()?;
    Ok(())
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let store = open(&a.store)?;
    let report = runtime()?
        .block_on(store.verify())
        .with_context(|| format!("verifying region store {}", a.store))?;
    println!(
        "checked {} objects: {} chunks, {} points, {} segments",
        report.objects, report.chunks, report.points, report.segments
    );
    for b in &report.bad {
        println!("BAD {}: {}", b.key, b.reason);
    }
    if !report.bad.is_empty() {
        bail!(
            "{} bad objects in region store {}: points that use them cannot be restored",
            report.bad.len(),
            a.store
        );
    }
    Ok(())
}

pub fn process(a: ProcessArgs) -> Result<()> {
    let store = open(&a.store)?;
    let vm = vm_id(&a.vm)?;
    let cut = if a.latest {
        Cut::Latest
    } else {
        Cut::AtMarkers
    };
    if !(a.store_secs.is_finite() && a.store_secs >= 0.0) {
        bail!(
            "--store-secs {}: give a number of seconds, 0 or more",
            a.store_secs
        );
    }
    let interval = std::time::Duration::from_secs_f64(a.store_secs);
    let processor = std::sync::Arc::new(Processor::new(store, vm.clone()));
    let rt = runtime()?;
    if a.follow {
        let (storer, v) = (processor.clone(), vm.clone());
        let task = rt.spawn(async move { store_loop(&storer, &v, interval).await });
        let r = rt.block_on(follow(&processor, &vm, cut, a.every_ms.max(10)));
        task.abort();
        return r;
    }
    let report = rt
        .block_on(processor.process(cut))
        .with_context(|| format!("processing the journal of VM {vm}"))?;
    for p in &report.points {
        println!("{} {} {}", p.id, p.kind, format_utc_ms(p.time()));
    }
    println!(
        "{} points from {} records (through record {})",
        report.points.len(),
        report.records,
        report.last_seq.map(|s| s.0).unwrap_or(0)
    );
    let stored = rt
        .block_on(processor.store_due(interval))
        .with_context(|| format!("storing the recovery points of VM {vm}"))?;
    for p in &stored {
        println!(
            "stored {} ({} new chunks, {} bytes)",
            p.id, p.new_chunks, p.new_bytes
        );
    }
    Ok(())
}

/// Stores due points, one pass a second, until aborted; a failed pass is logged and retried.
async fn store_loop(processor: &Processor, vm: &VmId, interval: std::time::Duration) {
    loop {
        match processor.store_due(interval).await {
            Ok(v) if !v.is_empty() => {
                tracing::debug!(vm = %vm, stored = v.len(), "recovery points stored")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                vm = %vm,
                error = format!("{:#}", anyhow::Error::new(e)),
                "storing recovery points failed; will retry"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Processes every `every_ms` until SIGINT/SIGTERM; a failed pass is logged and retried.
async fn follow(processor: &Processor, vm: &VmId, cut: Cut, every_ms: u64) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(every_ms));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        match processor.process(cut).await {
            Ok(r) if !r.points.is_empty() => {
                tracing::debug!(vm = %vm, points = r.points.len(), records = r.records, "processed")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                vm = %vm,
                error = format!("{:#}", anyhow::Error::new(e)),
                "processing failed; will retry"
            ),
        }
    }
}

/// Replication lag per record: append to the commit of the first point holding it.
pub fn lag(a: LagArgs) -> Result<()> {
    let store = open(&a.store)?;
    let vm = vm_id(&a.vm)?;
    let mut lags = runtime()?
        .block_on(lifeboat_process::record_lags(&store, &vm))
        .with_context(|| format!("measuring the replication lag of VM {vm}"))?;
    let ms = |p: f64, l: &mut [std::time::Duration]| {
        lifeboat_process::percentile(l, p)
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    for (what, l) in [
        ("to_store", &mut lags.to_store),
        ("to_point", &mut lags.to_point),
    ] {
        println!(
            "{what} records {} p50_ms {} p99_ms {} max_ms {}",
            l.len(),
            ms(50.0, l),
            ms(99.0, l),
            ms(100.0, l)
        );
    }
    Ok(())
}

fn duration_arg(name: &str, v: f64, unit: f64) -> Result<std::time::Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("--{name} {v}: give a number, 0 or more");
    }
    Ok(std::time::Duration::from_secs_f64(v * unit))
}

pub fn retention(a: RetentionArgs) -> Result<()> {
    let store = open(&a.store)?;
    let vm = vm_id(&a.vm)?;
    let policy = lifeboat_policy::ReplicationPolicy {
        retention: duration_arg("retention-hours", a.retention_hours, 3600.0)?,
        cdp_window: duration_arg("cdp-window-mins", a.cdp_window_mins, 60.0)?,
        ..lifeboat_policy::ReplicationPolicy::default()
    };
    policy.validate().context("the retention policy")?;
    let r = runtime()?
        .block_on(lifeboat_process::apply_retention(
            &store,
            &vm,
            &policy,
            SystemTime::now(),
        ))
        .with_context(|| format!("applying retention to VM {vm}"))?;
    for roll in &r.rolled {
        println!(
            "rolled the base forward from {} to {} ({} points re-based)",
            roll.from,
            roll.to,
            roll.rebase.len()
        );
    }
    for (id, why) in &r.dropped {
        println!("dropped {id}: {why}");
    }
    for id in &r.future {
        println!("warning: point {id} is in the future (clock skew?): kept");
    }
    println!(
        "kept {} points; deleted {} journal segments and {} unreferenced objects{}",
        r.kept,
        r.segments_deleted,
        r.gc.deleted.len(),
        if r.gc.deferred {
            " (garbage collection deferred: a point is being stored)"
        } else {
            ""
        }
    );
    Ok(())
}

pub fn gc(a: GcArgs) -> Result<()> {
    let store = open(&a.store)?;
    let r = runtime()?
        .block_on(store.gc_with_grace(std::time::Duration::from_secs(a.grace_secs)))
        .with_context(|| format!("collecting garbage in region store {}", a.store))?;
    if r.deferred {
        println!(
            "deferred: {} point writer(s) at work; nothing deleted, run again later",
            r.leases
        );
        return Ok(());
    }
    println!(
        "{} points checked; deleted {} unreferenced objects and {} staging files; kept {} younger than the grace period",
        r.points,
        r.deleted.len(),
        r.staging_removed.len(),
        r.kept_young
    );
    Ok(())
}

pub fn seed(a: SeedArgs) -> Result<()> {
    let store = open(&a.store)?;
    let vm = vm_id(&a.vm)?;
    let mut disks = Vec::new();
    for d in &a.disks {
        let (n, path) = d
            .split_once('=')
            .with_context(|| format!("--disk {d:?}: write it as N=PATH, e.g. 0=vm.img"))?;
        let n: u32 = n
            .parse()
            .with_context(|| format!("--disk {d:?}: {n:?} is not a disk number"))?;
        disks.push((DiskId(n), PathBuf::from(path)));
    }
    let refs: Vec<_> = disks.iter().map(|(d, p)| (*d, p.as_path())).collect();
    let point = runtime()?
        .block_on(Processor::new(store, vm.clone()).seed(
            &refs,
            Seq(a.seq),
            Epoch(a.epoch),
            SystemTime::now(),
        ))
        .with_context(|| format!("seeding VM {vm}"))?;
    println!(
        "seeded point {} ({}, {} new chunks)",
        point.id,
        point.disks_summary(),
        point.new_chunks
    );
    Ok(())
}
