//! `lifeboat vault`: the vault daemon (state in `<data>/vault.db`, REST API on `--listen`).
//!
//! The bearer token is read from `<data>/token` (created with a random token, mode 0600, by
//! write-temp-then-rename on first start) unless `--token-file` names another file.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use lifeboat_vault::{api, Db, NoAgents, Vault};

#[derive(Args)]
pub struct VaultArgs {
    /// The vault's data directory (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// Listen on this address (loopback by default).
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// Read the API token from this file instead of `<data>/token`.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Reads the token at `path`, creating it (random, 0600) if missing.
fn token(path: &Path) -> Result<String> {
    if !path.exists() {
        let mut raw = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
            .context("reading /dev/urandom for a new API token")?;
        let t: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        writeln!(f, "{t}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("creating {}", path.display()))?;
        tracing::info!(path = %path.display(), "created a new API token");
    }
    let t = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token {}", path.display()))?;
    let t = t.trim().to_string();
    if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "API token in {} is unusable: it must be at least 16 characters with no spaces",
            path.display()
        );
    }
    Ok(t)
}

pub fn run(a: VaultArgs) -> Result<()> {
    std::fs::create_dir_all(&a.data)
        .with_context(|| format!("creating the data directory {}", a.data.display()))?;
    let token = token(&a.token_file.clone().unwrap_or_else(|| a.data.join("token")))?;
    let db_path = a.data.join("vault.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let db = Db::open(&db_path)?;
        let vault = Vault::new(db, Arc::new(NoAgents))?;
        // Handlers first: a SIGTERM sent as soon as the port answers is a clean stop.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        tracing::info!(listen = %a.listen, db = %db_path.display(), "vault serving");
        let stop = async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        };
        axum::serve(listener, api::router(vault, token))
            .with_graceful_shutdown(stop)
            .await
            .context("serving the API")?;
        anyhow::Ok(())
    })
}
