//! The `lifeboat` command: every Lifeboat role in one binary.
//!
//! * `lifeboat disk serve`: a standalone disk server over one raw image (NBD export, every write
//!   journaled before it is acknowledged). Used by tests and benchmarks, and the building block of
//!   the agent's disk servers.
//! * `lifeboat journal list|replay`: inspect a write journal, or replay it onto an image.
//! * `lifeboat points|restore|verify|process|seed|lag|retention|gc`: a region store's recovery
//!   points.
//! * `lifeboat vault`: the vault daemon (SQLite state, REST API).
//! * `lifeboat agent`: a host's agent; `lifeboat up`: the vault and two regions' agents in one
//!   process (the embedded default).
//!
//! Errors print their whole cause chain (anyhow's `{:#}`).

mod agent_cmd;
mod client;
mod disk_serve;
mod group_cmd;
mod initial_copy;
mod journal_cmd;
mod plan_cmd;
mod store_cmd;
mod vault_cmd;

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
    /// List a VM's recovery points in a region store.
    Points(store_cmd::PointsArgs),
    /// Write one disk of a recovery point to a raw image file.
    Restore(store_cmd::RestoreArgs),
    /// Re-hash every object of a region store and name the bad ones.
    Verify(store_cmd::VerifyArgs),
    /// Turn a VM's shipped journal segments into recovery points.
    Process(store_cmd::ProcessArgs),
    /// Store whole disk images as a VM's first recovery point (initial replication).
    Seed(store_cmd::SeedArgs),
    /// Replication lag of every record: from its append to the first point holding it.
    Lag(store_cmd::LagArgs),
    /// Apply a replication policy's retention to a VM's points and journal, then collect garbage.
    Retention(store_cmd::RetentionArgs),
    /// Delete chunks, pages and roots no recovery point references (and leftover staging files).
    Gc(store_cmd::GcArgs),
    /// Run the vault: state in SQLite, the REST API.
    Vault(vault_cmd::VaultArgs),
    /// Run a host's agent: disk servers, shipping, processing, recovery, QEMU.
    Agent(agent_cmd::AgentArgs),
    /// Run everything on this machine: the vault and an agent for each of two regions.
    Up(agent_cmd::UpArgs),
    /// Regions (vault API).
    Region {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(subcommand)]
        cmd: client::RegionCmd,
    },
    /// Hosts whose agents registered, and when they last reported (vault API).
    Hosts {
        #[command(flatten)]
        conn: client::VaultConn,
    },
    /// VMs (vault API).
    Vm {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(subcommand)]
        cmd: client::VmCmd,
    },
    /// Enable replication of a VM (vault API).
    Protect {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::ProtectArgs,
    },
    /// Replicated items: state, health, active region (vault API).
    Items {
        #[command(flatten)]
        conn: client::VaultConn,
    },
    /// One replicated item, with its allowed operations (vault API).
    Item {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(subcommand)]
        cmd: ItemCommand,
    },
    /// Fail a VM over to the other region (vault API).
    Failover {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::OpArgs,
    },
    /// Restart a failed-over VM from another recovery point (vault API).
    ChangeRecoveryPoint {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::OpArgs,
    },
    /// Make a failover final (vault API).
    Commit {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::OpArgs,
    },
    /// Replicate a committed VM back to the region it came from, reusing its original disks
    /// there; shows the plan first (vault API). Failback = failover, commit, reprotect again.
    Reprotect {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::ReprotectArgs,
    },
    /// DR drill: boot a copy at the target region from a recovery point, on an isolated
    /// network, while replication goes on (vault API).
    TestFailover {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::OpArgs,
    },
    /// End a DR drill: delete its copy and record it, with `--notes` (vault API).
    CleanupTestFailover {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::OpArgs,
    },
    /// Stop protecting a VM: it keeps running, its recovery points are deleted (vault API).
    DisableProtection {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(flatten)]
        args: client::OpArgs,
    },
    /// Replication groups: multi-VM consistency (vault API).
    Group {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(subcommand)]
        cmd: group_cmd::GroupCmd,
    },
    /// Recovery plans: ordered groups of VMs with scripts and manual actions between them
    /// (vault API).
    Plan {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(subcommand)]
        cmd: plan_cmd::PlanCmd,
    },
    /// Cut a recovery point of a VM now (vault API): `--app-consistent` freezes the guest's
    /// filesystems through its QEMU guest agent first.
    Checkpoint {
        #[command(flatten)]
        conn: client::VaultConn,
        /// The VM.
        vm: String,
        /// Freeze the guest first (crash-consistent if it cannot be frozen).
        #[arg(long)]
        app_consistent: bool,
    },
    /// Events, oldest first (vault API).
    Events {
        #[command(flatten)]
        conn: client::VaultConn,
    },
    /// Jobs, newest first (vault API).
    Jobs {
        #[command(flatten)]
        conn: client::VaultConn,
    },
    /// One job (vault API).
    Job {
        #[command(flatten)]
        conn: client::VaultConn,
        #[command(subcommand)]
        cmd: client::JobCmd,
    },
}

#[derive(Subcommand)]
enum ItemCommand {
    /// Show an item: state, health and why, latest points, allowed operations.
    Show { vm: String },
    /// An item's recovery points in its target region.
    Points { vm: String },
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Serve one raw image over NBD, journaling every write before it is acknowledged.
    Serve(disk_serve::ServeArgs),
}

/// Keeps large buffers (4 MiB chunks, 1 MiB NBD payloads, zstd output) in the heap instead of a
/// fresh `mmap` per allocation: every fresh mapping is page-faulted and zeroed by the kernel
/// again, which `perf` showed as a third of initial replication's CPU time.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> std::process::ExitCode {
    tune_malloc();
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
        Command::Points(a) => store_cmd::points(a),
        Command::Restore(a) => store_cmd::restore(a),
        Command::Verify(a) => store_cmd::verify(a),
        Command::Process(a) => store_cmd::process(a),
        Command::Seed(a) => store_cmd::seed(a),
        Command::Lag(a) => store_cmd::lag(a),
        Command::Retention(a) => store_cmd::retention(a),
        Command::Gc(a) => store_cmd::gc(a),
        Command::Vault(a) => vault_cmd::run(a),
        Command::Agent(a) => agent_cmd::agent(a),
        Command::Up(a) => agent_cmd::up(a),
        Command::Region { conn, cmd } => client::region(&conn, cmd),
        Command::Vm { conn, cmd } => client::vm(&conn, cmd),
        Command::Hosts { conn } => client::hosts(&conn),
        Command::Protect { conn, args } => client::protect(&conn, args),
        Command::Items { conn } => client::items(&conn),
        Command::Item { conn, cmd } => match cmd {
            ItemCommand::Show { vm } => client::item_show(&conn, &vm),
            ItemCommand::Points { vm } => client::item_points(&conn, &vm),
        },
        Command::Failover { conn, args } => client::operate(&conn, "failover", args),
        Command::ChangeRecoveryPoint { conn, args } => {
            client::operate(&conn, "change-recovery-point", args)
        }
        Command::Commit { conn, args } => client::operate(&conn, "commit", args),
        Command::Reprotect { conn, args } => client::reprotect(&conn, args),
        Command::Jobs { conn } => client::jobs(&conn),
        Command::Events { conn } => client::events(&conn),
        Command::Checkpoint {
            conn,
            vm,
            app_consistent,
        } => group_cmd::checkpoint(&conn, &vm, app_consistent),
        Command::TestFailover { conn, args } => client::operate(&conn, "test-failover", args),
        Command::CleanupTestFailover { conn, args } => {
            client::operate(&conn, "cleanup-test-failover", args)
        }
        Command::Job { conn, cmd } => client::job(&conn, cmd),
        Command::Group { conn, cmd } => group_cmd::run(&conn, cmd),
        Command::DisableProtection { conn, args } => {
            client::operate(&conn, "disable-protection", args)
        }
        Command::Plan { conn, cmd } => plan_cmd::run(&conn, cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
