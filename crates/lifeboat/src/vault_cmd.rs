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
use lifeboat_vault::{api, AgentExecutor, Db, Vault};

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
pub fn token(path: &Path) -> Result<String> {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Handlers first: a SIGTERM sent as soon as the port answers is a clean stop.
        let stop = crate::agent_cmd::stop_signal()?;
        let vault = open_vault(&a.data, &token)?;
        let listener = bind(a.listen).await?;
        serve(vault, listener, token, stop).await
    })
}

/// The vault on `<data>/vault.db`, running jobs through the agents.
pub fn open_vault(data: &Path, token: &str) -> Result<Vault> {
    let db = Db::open(&data.join("vault.db"))?;
    Ok(Vault::new(
        db,
        Arc::new(AgentExecutor::new(token.to_string())?),
    )?)
}

/// Listens for the API.
pub async fn bind(listen: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))
}

/// Serves the API until `stop` turns true.
pub async fn serve(
    vault: Vault,
    listener: tokio::net::TcpListener,
    token: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let addr = listener.local_addr().context("the vault's address")?;
    tracing::info!(listen = %addr, portal = %format!("http://{addr}/portal/"), "vault serving");
    let cutter = tokio::spawn(lifeboat_vault::groups::run_cutter(vault.clone()));
    let _stop_cutter = AbortOnDrop(cutter);
    let app =
        api::router(vault, token).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        })
        .await
        .context("serving the API")
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
