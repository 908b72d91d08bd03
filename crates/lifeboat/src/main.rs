//! The `lifeboat` command: every Lifeboat role in one binary.
//!
//! * `lifeboat disk serve`: a standalone disk server over one raw image (NBD export, every write
//!   journaled before it is acknowledged). Used by tests and benchmarks, and the building block of
//!   the agent's disk servers.
//! * `lifeboat journal list|replay`: inspect a write journal, or replay it onto an image.
//!
//! Errors print their whole cause chain (anyhow's `{:#}`).

mod disk_serve;
mod journal_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeboat",
    version,
    about = "Self-hosted disaster recovery for KVM/QEMU VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve and journal VM disks.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Inspect or replay a write journal.
    #[command(subcommand)]
    Journal(journal_cmd::JournalCommand),
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Serve one raw image over NBD, journaling every write before it is acknowledged.
    Serve(disk_serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LIFEBOAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Disk(DiskCommand::Serve(args)) => disk_serve::run(args),
        Command::Journal(cmd) => journal_cmd::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
