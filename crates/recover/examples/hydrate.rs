//! Instant recovery from the command line, for the kill -9 test and `bench/hydrate.sh`.
//!
//! ```text
//! cargo build --release -p lifeboat-recover --examples
//! target/release/examples/hydrate seed --store DIR --vm VM --image IMG
//! target/release/examples/hydrate run --store DIR --vm VM --target OUT.img --journal JDIR
//! ```
//!
//! `seed` stores a raw image as the VM's first recovery point (`Processor::seed`). `run` opens
//! (or reopens) the recovery of disk 0 of the VM's newest point (or `--seq`) into `--target`,
//! optionally lets a "guest" thread write, zero and trim at random meanwhile (`--writes`), and
//! hydrates to the end, printing `progress LOCAL TOTAL` after every chunk and a final `done`
//! line with the rate.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_nbd::{BlockDevice, ZeroFlags};
use lifeboat_process::Processor;
use lifeboat_recover::{HydrateConfig, RecoveryDisk, RecoveryOptions, Source};
use lifeboat_store::{Store, StoreConfig};
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

#[derive(Parser)]
#[command(about = "Instant recovery of one disk from a region store")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Store a raw image as the VM's first recovery point (disk 0).
    Seed {
        #[arg(long)]
        store: String,
        #[arg(long)]
        vm: String,
        #[arg(long)]
        image: PathBuf,
        /// Chunk size of the store in KiB.
        #[arg(long, default_value_t = 4096)]
        chunk_kib: u32,
        /// Do not fsync store objects (tests).
        #[arg(long)]
        no_fsync: bool,
    },
    /// Open (or resume) the recovery of disk 0 and hydrate it to the end.
    Run {
        #[arg(long)]
        store: String,
        #[arg(long)]
        vm: String,
        /// The point's journal position (default: the newest point).
        #[arg(long)]
        seq: Option<u64>,
        #[arg(long)]
        target: PathBuf,
        /// The recovery's write journal directory.
        #[arg(long)]
        journal: PathBuf,
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        #[arg(long, default_value_t = 2000)]
        checkpoint_ms: u64,
        #[arg(long)]
        max_mib_per_sec: Option<f64>,
        /// Guest operations to issue while hydrating.
        #[arg(long, default_value_t = 0)]
        writes: u64,
        #[arg(long, default_value_t = 1)]
        write_seed: u64,
        /// Pause between guest operations.
        #[arg(long, default_value_t = 2)]
        write_every_ms: u64,
        /// Print a progress line after every chunk.
        #[arg(long)]
        progress: bool,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = real_main(Cli::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn real_main(cli: Cli) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match cli.cmd {
        Cmd::Seed {
            store,
            vm,
            image,
            chunk_kib,
            no_fsync,
        } => {
            let config = StoreConfig {
                chunk_size: chunk_kib << 10,
                fsync: !no_fsync,
                ..StoreConfig::default()
            };
            let store = Store::open_with(&store, config).map_err(|e| chain(&e))?;
            let vm = VmId::new(vm).map_err(|e| e.to_string())?;
            let p = rt
                .block_on(Processor::new(store, vm).seed(
                    &[(DiskId(0), image.as_path())],
                    Seq(0),
                    Epoch(1),
                    SystemTime::now(),
                ))
                .map_err(|e| chain(&e))?;
            println!("point {} seq {}", p.id, p.seq);
            Ok(())
        }
        Cmd::Run {
            store,
            vm,
            seq,
            target,
            journal,
            in_flight,
            checkpoint_ms,
            max_mib_per_sec,
            writes,
            write_seed,
            write_every_ms,
            progress,
        } => {
            let t0 = Instant::now();
            let store = Store::open(&store).map_err(|e| chain(&e))?;
            let vm = VmId::new(vm).map_err(|e| e.to_string())?;
            let seq = match seq {
                Some(s) => Seq(s),
                None => rt
                    .block_on(store.latest_point(&vm))
                    .map_err(|e| chain(&e))?
                    .ok_or_else(|| format!("VM {vm} has no recovery point"))?
                    .seq(),
            };
            let j = Journal::open(&journal, JournalConfig::new(vm.clone(), Epoch(2)))
                .map_err(|e| chain(&e))?;
            let disk = RecoveryDisk::open(
                RecoveryOptions {
                    image: target,
                    disk: DiskId(0),
                    journal: Arc::new(j),
                },
                Source::Store { store, vm, seq },
            )
            .map_err(|e| chain(&e))?;
            let disk = Arc::new(disk);
            let guest = (writes > 0).then(|| {
                let d = disk.clone();
                std::thread::spawn(move || guest(&d, writes, write_seed, write_every_ms))
            });
            let mut watch = disk.subscribe();
            // Progress lines from the watch, on a thread with its own small runtime.
            let printer = progress.then(|| {
                std::thread::spawn(move || {
                    let Ok(prt) = tokio::runtime::Builder::new_current_thread().build() else {
                        return;
                    };
                    prt.block_on(async move {
                        let mut last = 0;
                        while watch.changed().await.is_ok() {
                            let p = watch.borrow_and_update().clone();
                            if p.chunks_local != last {
                                last = p.chunks_local;
                                println!("progress {} {}", p.chunks_local, p.chunks_total);
                            }
                            if !p.running && p.is_hydrated() {
                                break;
                            }
                        }
                    })
                })
            });
            let cfg = HydrateConfig {
                in_flight,
                checkpoint_every: Duration::from_millis(checkpoint_ms),
                max_bytes_per_sec: max_mib_per_sec.map(|m| (m * 1048576.0) as u64),
            };
            let p = disk
                .hydrate(&cfg, &AtomicBool::new(false))
                .map_err(|e| chain(&e))?;
            if let Some(g) = guest {
                g.join()
                    .map_err(|_| "guest thread panicked".to_string())??;
            }
            disk.checkpoint().map_err(|e| chain(&e))?;
            if let Some(p) = printer {
                let _ = p.join();
            }
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "done local={}/{} copied_bytes={} zero_chunks={} hydrate_secs={:.3} total_secs={secs:.3} disk_mib_per_s={:.1}",
                p.chunks_local,
                p.chunks_total,
                p.bytes_copied,
                p.chunks_zero,
                p.elapsed.as_secs_f64(),
                p.bytes_total as f64 / secs / 1048576.0
            );
            Ok(())
        }
    }
}

/// A guest: `n` writes, zeroes and trims at pseudo-random places (xorshift from `seed`), some
/// across chunk boundaries, some FUA, with a flush now and then.
fn guest(disk: &RecoveryDisk, n: u64, seed: u64, every_ms: u64) -> Result<(), String> {
    let size = disk.size();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for k in 0..n {
        let len = 1 + next() % (3 * u64::from(disk.chunk_size()) / 2).min(size);
        let offset = next() % (size - len + 1);
        let r = match next() % 8 {
            0 => disk.write_zeroes(
                offset,
                len,
                ZeroFlags {
                    may_trim: k % 2 == 0,
                    fast_only: false,
                    fua: false,
                },
            ),
            1 => disk.trim(offset, len, false),
            2 => disk.flush(),
            _ => {
                let fill = (next() % 251) as u8 + 1;
                let data: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                disk.write_at(offset, &data, k % 5 == 0)
            }
        };
        r.map_err(|e| format!("guest operation {k} at {offset}+{len}: {e}"))?;
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    Ok(())
}
