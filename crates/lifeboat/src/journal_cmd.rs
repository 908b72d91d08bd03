//! `lifeboat journal list|replay`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lifeboat_types::{DiskId, RecordKind, Seq};

#[derive(Subcommand)]
pub enum JournalCommand {
    /// List the records of a journal (one line each).
    List(ListArgs),
    /// Replay a disk's records onto a raw image (e.g. a copy of the original image).
    Replay(ReplayArgs),
}

#[derive(Args)]
pub struct ListArgs {
    /// The journal directory.
    #[arg(long)]
    journal: PathBuf,
    /// First sequence number to list.
    #[arg(long, default_value_t = 1)]
    from: u64,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// The journal directory.
    #[arg(long)]
    journal: PathBuf,
    /// The raw image to apply the records to (changed in place).
    #[arg(long)]
    image: PathBuf,
    /// Which disk of the VM.
    #[arg(long, default_value_t = 0)]
    disk: u32,
    /// Replay records after this sequence number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Stop after this sequence number (default: the end of the journal).
    #[arg(long)]
    upto: Option<u64>,
}

pub fn run(cmd: JournalCommand) -> Result<()> {
    match cmd {
        JournalCommand::List(a) => list(a),
        JournalCommand::Replay(a) => replay(a),
    }
}

fn list(a: ListArgs) -> Result<()> {
    let records = lifeboat_journal::read_records(&a.journal, Seq(a.from))
        .with_context(|| format!("reading journal {}", a.journal.display()))?;
    for rec in records {
        let rec = rec.with_context(|| format!("reading journal {}", a.journal.display()))?;
        match rec.kind {
            RecordKind::Checkpoint => {
                let what = rec
                    .checkpoint
                    .map(|c| c.kind.to_string())
                    .unwrap_or_default();
                println!("{}\tcheckpoint\t{what}", rec.seq.0);
            }
            k => println!(
                "{}\t{:?}\tdisk {}\t{}+{}",
                rec.seq.0, k, rec.disk.0, rec.offset, rec.length
            ),
        }
    }
    Ok(())
}

fn replay(a: ReplayArgs) -> Result<()> {
    let stats = lifeboat_disk::replay_onto(
        &a.journal,
        DiskId(a.disk),
        &a.image,
        Seq(a.after),
        a.upto.map(Seq),
    )
    .with_context(|| {
        format!(
            "replaying journal {} onto {}",
            a.journal.display(),
            a.image.display()
        )
    })?;
    println!(
        "replayed {} records ({} bytes of data), up to record {}",
        stats.records, stats.bytes, stats.last_seq.0
    );
    Ok(())
}
