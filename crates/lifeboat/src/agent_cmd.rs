//! `lifeboat agent` (one per hypervisor host) and `lifeboat up` (the embedded default: the
//! vault and one agent per region, "primary" and "secondary", in one process, everything under
//! one data directory, region stores in local directories).
//!
//! `lifeboat up --data DIR` lays out:
//!
//! ```text
//! DIR/vault/{vault.db,token}        the vault (API on --listen, 127.0.0.1:7480)
//! DIR/regions/<region>/store/       each region's recovery-point store
//! DIR/agents/<region>/              each region's agent (VM journals, recovered disks, state)
//! ```
//!
//! SIGTERM or SIGINT stops the agents cleanly (journals durable, last segments shipped), then
//! the vault.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use lifeboat_agent::{Agent, AgentConfig};
use lifeboat_qemu::Accel;
use lifeboat_vault::model::Region;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Clone, Copy, ValueEnum)]
pub enum AccelArg {
    /// KVM when /dev/kvm works, else TCG.
    Auto,
    /// KVM only.
    Kvm,
    /// TCG (emulation).
    Tcg,
}

impl From<AccelArg> for Accel {
    fn from(a: AccelArg) -> Accel {
        match a {
            AccelArg::Auto => Accel::Auto,
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg,
        }
    }
}

#[derive(Args)]
pub struct AgentArgs {
    /// This host's name (unique in the vault).
    #[arg(long)]
    name: String,
    /// Its region.
    #[arg(long)]
    region: String,
    /// Its data directory (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// The vault's URL.
    #[arg(long, env = "LIFEBOAT_VAULT", default_value = "http://127.0.0.1:7480")]
    vault: String,
    /// A file holding the vault's API token.
    #[arg(long, env = "LIFEBOAT_TOKEN_FILE")]
    token_file: PathBuf,
    /// Where the agent API listens (port 0: any free port; the agent registers its URL).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// How QEMU runs VMs.
    #[arg(long, value_enum, default_value = "auto", env = "LIFEBOAT_ACCEL")]
    accel: AccelArg,
}

#[derive(Args)]
pub struct UpArgs {
    /// Everything goes under this directory (created if missing).
    #[arg(long, default_value = ".lifeboat/up")]
    data: PathBuf,
    /// Where the vault's API listens.
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// How QEMU runs VMs.
    #[arg(long, value_enum, default_value = "auto", env = "LIFEBOAT_ACCEL")]
    accel: AccelArg,
}

/// A watch that turns true on SIGTERM or SIGINT (handlers installed now).
pub fn stop_signal() -> Result<watch::Receiver<bool>> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("stopping");
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn agent(a: AgentArgs) -> Result<()> {
    let token = crate::vault_cmd::token(&a.token_file)?;
    let cfg = AgentConfig {
        name: a.name,
        region: a.region,
        data: a.data,
        vault: a.vault,
        token,
        listen: a.listen,
        accel: a.accel.into(),
    };
    runtime()?.block_on(async move {
        let stop = stop_signal()?;
        Agent::run(cfg, stop).await
    })
}

pub const REGIONS: [&str; 2] = ["primary", "secondary"];

pub fn up(a: UpArgs) -> Result<()> {
    let vault_dir = a.data.join("vault");
    std::fs::create_dir_all(&vault_dir)
        .with_context(|| format!("creating {}", vault_dir.display()))?;
    let token_file = vault_dir.join("token");
    let token = crate::vault_cmd::token(&token_file)?;
    let data =
        std::path::absolute(&a.data).with_context(|| format!("resolving {}", a.data.display()))?;
    runtime()?.block_on(async move {
        let stop = stop_signal()?;
        let vault = crate::vault_cmd::open_vault(&vault_dir, &token)?;
        for r in REGIONS {
            let store = data.join("regions").join(r).join("store");
            std::fs::create_dir_all(&store)
                .with_context(|| format!("creating {}", store.display()))?;
            vault
                .add_region(&Region {
                    name: r.to_string(),
                    store_url: store.display().to_string(),
                })
                .with_context(|| format!("adding region {r}"))?;
        }
        let listener = crate::vault_cmd::bind(a.listen).await?;
        let url = format!("http://{}", listener.local_addr().context("vault address")?);
        let api = tokio::spawn(crate::vault_cmd::serve(
            vault,
            listener,
            token.clone(),
            stop.clone(),
        ));
        let mut agents = Vec::new();
        for r in REGIONS {
            let cfg = AgentConfig {
                name: format!("{r}-host"),
                region: r.to_string(),
                data: data.join("agents").join(r),
                vault: url.clone(),
                token: token.clone(),
                listen: "127.0.0.1:0".parse().context("agent address")?,
                accel: a.accel.into(),
            };
            agents.push(tokio::spawn(Agent::run(cfg, stop.clone())));
        }
        println!(
            "Lifeboat is up: vault {url} (token in {}), regions {} with their agents; data in {}",
            token_file.display(),
            REGIONS.join(" and "),
            data.display()
        );
        let mut failed = None;
        for t in agents {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed = Some(e),
                Err(e) => failed = Some(anyhow::anyhow!("agent task: {e}")),
            }
        }
        api.await.context("vault task")??;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}
