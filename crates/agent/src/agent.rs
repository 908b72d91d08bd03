//! [`Agent`]: one per hypervisor host. Serves the agent API (see
//! `lifeboat_vault::agent_wire`), registers with the vault and reports every
//! [`HEARTBEAT`], persists every desired state and restores it on start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lifeboat_qemu::Accel;
use lifeboat_store::Store;
use lifeboat_types::{Epoch, VmId};
use lifeboat_vault::agent_wire::{
    DigestAnswer, DigestRequest, HostReport, LocalDisks, Protection, RecoverSpec, RecoveredStatus,
    ReleaseRequest, ReplicaSpec, ReplicaStatus, ResyncRequest, ReverseRequest, SeedRequest,
    ShutdownAnswer, ShutdownRequest, SourceSpec, SourceStatus,
};
use lifeboat_vault::error::ErrorBody;
use lifeboat_vault::model::RegisterHost;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::local::{Released, ReleasedState};
use crate::recovered::{RecoveredState, RecoveredVm};
use crate::replica::Replica;
use crate::replication::Replication;
use crate::source::SourceVm;
use crate::state::{file, read_all, write_json};
use crate::vm;

/// How often the agent registers and reports to the vault.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The host's name (unique in the vault).
    pub name: String,
    /// Its region.
    pub region: String,
    /// Its data directory (VM journals, recovered disks, state).
    pub data: PathBuf,
    /// The vault's URL.
    pub vault: String,
    /// The API token (the vault's; agents accept the same one).
    pub token: String,
    /// Where the agent API listens (loopback; port 0 picks one).
    pub listen: SocketAddr,
    /// KVM, TCG or whichever works.
    pub accel: Accel,
}

/// What is persisted of a source VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SourceState {
    definition: serde_json::Value,
    running: bool,
    protect: Option<Protection>,
}

struct SourceEntry {
    vm: Arc<SourceVm>,
    state: Mutex<SourceState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An agent (see the module doc).
pub struct Agent {
    cfg: AgentConfig,
    /// Changes are made one at a time; status reads never wait for them.
    ops: tokio::sync::Mutex<()>,
    sources: Mutex<HashMap<String, Arc<SourceEntry>>>,
    replicas: Mutex<HashMap<String, Arc<Replica>>>,
    recovered: Mutex<HashMap<String, Arc<RecoveredVm>>>,
    /// Original disks released for re-protect.
    released: Mutex<HashMap<String, Arc<Released>>>,
    /// DR drill copies (test failover).
    drills: Mutex<HashMap<String, Arc<RecoveredVm>>>,
}

/// Checks the store's epoch for a protected VM restored or opened here: a newer one means
/// the VM failed over while this host was away, and it is fenced before anything starts.
async fn check_fence(vm: &VmId, repl: &Replication, p: &Protection) {
    let store = match Store::open(&p.store_url) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(vm = %vm, error = %e, "cannot open the target store to check fencing");
            return;
        }
    };
    match store.epoch(vm).await {
        Ok(e) if e > Epoch(p.epoch) => repl.set_fenced(format!(
            "VM {vm} failed over while this host was away: region store {} has epoch {}, this \
             host's journal epoch {}; the VM is not started here and nothing it wrote since is \
             accepted",
            p.store_url, e.0, p.epoch
        )),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(vm = %vm, error = %e, "cannot read the target store's epoch to check fencing")
        }
    }
}

/// Once `repl` is fenced: `halt` stops the VM (killed: its writes can no longer be
/// replicated, and another copy runs elsewhere).
fn on_fence<F, Fut>(vm: String, repl: &Replication, halt: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut rx = repl.fenced();
    tokio::spawn(async move {
        if rx.wait_for(|f| *f).await.is_ok() {
            tracing::error!(vm, "fenced: the VM failed over to another region; it is stopped here and not started again");
            halt().await;
        }
    });
}

/// An API error: a status and the whole cause chain.
pub(crate) struct ApiErr(pub(crate) StatusCode, pub(crate) anyhow::Error);

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let causes: Vec<String> = self.1.chain().map(|c| c.to_string()).collect();
        if self.0.is_server_error() {
            tracing::error!(error = %causes.join(": "), "agent request failed");
        }
        let body = ErrorBody {
            error: self.1.to_string(),
            causes,
        };
        (self.0, Json(body)).into_response()
    }
}

fn bad(e: anyhow::Error) -> ApiErr {
    ApiErr(StatusCode::BAD_REQUEST, e)
}

fn failed(e: anyhow::Error) -> ApiErr {
    ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e)
}

fn not_found(what: &str, vm: &str) -> ApiErr {
    ApiErr(
        StatusCode::NOT_FOUND,
        anyhow!("this host has no {what} VM {vm}"),
    )
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiErr>;

/// The entry of `vm` in `map`, or 404 naming the role.
fn find<T: Clone>(map: &Mutex<HashMap<String, T>>, role: &str, vm: &str) -> Result<T, ApiErr> {
    lock(map)
        .get(vm)
        .cloned()
        .ok_or_else(|| not_found(role, vm))
}

fn body<T: DeserializeOwned>(what: &str, b: &Bytes) -> Result<T, ApiErr> {
    serde_json::from_slice(b).map_err(|e| bad(anyhow!("bad {what} body: {e}")))
}

fn vm_id(vm: &str) -> Result<VmId, ApiErr> {
    VmId::new(vm).map_err(|e| bad(anyhow!("VM name {vm:?}: {e}")))
}

impl Agent {
    /// The replication of VM `vm` at this host, whichever kind of VM replicates it (a source,
    /// or a recovered VM after re-protect).
    pub(crate) fn replication_of(&self, vm: &str) -> Option<Arc<Replication>> {
        if let Some(r) = lock(&self.recovered).get(vm) {
            if r.repl.is_on() {
                return Some(r.repl.clone());
            }
        }
        lock(&self.sources).get(vm).map(|e| e.vm.repl.clone())
    }

    /// Runs an agent until `stop` turns true: restores its VMs, serves its API, registers and
    /// reports; at the end stops every VM cleanly (journals durable, last segments shipped).
    pub async fn run(cfg: AgentConfig, mut stop: watch::Receiver<bool>) -> Result<()> {
        std::fs::create_dir_all(&cfg.data).with_context(|| {
            format!("creating the agent's data directory {}", cfg.data.display())
        })?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("agent {}: listening on {}", cfg.name, cfg.listen))?;
        let addr = listener.local_addr().context("the agent's address")?;
        let url = format!("http://{addr}");
        let agent = Arc::new(Agent {
            cfg,
            ops: tokio::sync::Mutex::new(()),
            sources: Mutex::new(HashMap::new()),
            replicas: Mutex::new(HashMap::new()),
            recovered: Mutex::new(HashMap::new()),
            released: Mutex::new(HashMap::new()),
            drills: Mutex::new(HashMap::new()),
        });
        agent.restore().await?;
        tracing::info!(host = %agent.cfg.name, region = %agent.cfg.region, %url, "agent ready");
        let hb = tokio::spawn(heartbeat(agent.clone(), url));
        let app = router(agent.clone());
        let mut s2 = stop.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = s2.wait_for(|v| *v).await;
            })
            .await
            .context("serving the agent API")?;
        let _ = stop.wait_for(|v| *v).await;
        hb.abort();
        agent.close_all().await;
        Ok(())
    }

    async fn restore(&self) -> Result<()> {
        let d = &self.cfg.data;
        for (vm, st) in read_all::<SourceState>(&d.join("state/sources"))? {
            if let Err(e) = self.restore_source(&vm, st).await {
                tracing::error!(vm, error = format!("{e:#}"), "cannot restore source VM");
            }
        }
        for (vm, spec) in read_all::<ReplicaSpec>(&d.join("state/replicas"))? {
            match Replica::start(vm_id(&vm).map_err(|e| e.1)?, spec).await {
                Ok(r) => {
                    lock(&self.replicas).insert(vm, r);
                }
                Err(e) => tracing::error!(vm, error = format!("{e:#}"), "cannot restore replica"),
            }
        }
        for (vm, st) in read_all::<ReleasedState>(&d.join("state/released"))? {
            let id = vm_id(&vm).map_err(|e| e.1)?;
            lock(&self.released).insert(vm, Released::new(id, st));
        }
        for (vm, st) in read_all::<RecoveredState>(&d.join("state/drills"))? {
            let id = vm_id(&vm).map_err(|e| e.1)?;
            let running = st.running;
            match RecoveredVm::reopen(id, &self.drill_dir(&vm), &file(d, "drills", &vm), st).await {
                Ok(r) => {
                    if running {
                        if let Err(e) = r.start(self.cfg.accel).await {
                            tracing::error!(
                                vm,
                                error = format!("{e:#}"),
                                "cannot restart a drill copy"
                            );
                        }
                    }
                    lock(&self.drills).insert(vm, r);
                }
                Err(e) => {
                    tracing::error!(vm, error = format!("{e:#}"), "cannot restore a drill copy")
                }
            }
        }
        for (vm, st) in read_all::<RecoveredState>(&d.join("state/recovered"))? {
            let id = vm_id(&vm).map_err(|e| e.1)?;
            let running = st.running;
            let r = RecoveredVm::reopen(
                id.clone(),
                &self.recovered_dir(&vm),
                &file(d, "recovered", &vm),
                st,
            )
            .await;
            match r {
                Ok(r) => {
                    if let Some(p) = r.repl.protection() {
                        check_fence(&id, &r.repl, &p).await;
                    }
                    self.watch_recovered(&vm, &r);
                    if running {
                        if let Err(e) = r.start(self.cfg.accel).await {
                            tracing::error!(
                                vm,
                                error = format!("{e:#}"),
                                "cannot restart recovered VM"
                            );
                        }
                    }
                    lock(&self.recovered).insert(vm, r);
                }
                Err(e) => {
                    tracing::error!(vm, error = format!("{e:#}"), "cannot restore recovered VM")
                }
            }
        }
        Ok(())
    }

    async fn restore_source(&self, vm: &str, st: SourceState) -> Result<()> {
        let spec = SourceSpec {
            definition: st.definition,
            running: Some(st.running),
            protect: st.protect,
        };
        self.put_source(vm, spec).await.map(|_| ())
    }

    fn drill_dir(&self, vm: &str) -> PathBuf {
        self.cfg.data.join("drills").join(vm)
    }

    fn recovered_dir(&self, vm: &str) -> PathBuf {
        self.cfg.data.join("recovered").join(vm)
    }

    async fn put_source(&self, vm: &str, spec: SourceSpec) -> Result<SourceStatus> {
        let id = VmId::new(vm).map_err(|e| anyhow!("VM name {vm:?}: {e}"))?;
        let def = vm::parse_definition(vm, &spec.definition)?;
        if lock(&self.released).contains_key(vm) || lock(&self.recovered).contains_key(vm) {
            return Err(anyhow!(
                "VM {vm} runs here as a recovered VM or its original disks were released for \
                 re-protect: it is not opened again as a source"
            ));
        }
        let existing = lock(&self.sources).get(vm).cloned();
        let entry = match existing {
            Some(e) => e,
            None => {
                let epoch = Epoch(spec.protect.as_ref().map_or(1, |p| p.epoch));
                let dir = vm::vm_dir(&self.cfg.data, vm);
                let s = SourceVm::open(id.clone(), &dir, &def, epoch).await?;
                let e = Arc::new(SourceEntry {
                    vm: s,
                    state: Mutex::new(SourceState {
                        definition: spec.definition.clone(),
                        running: false,
                        protect: None,
                    }),
                });
                lock(&self.sources).insert(vm.to_string(), e.clone());
                if let Some(p) = &spec.protect {
                    check_fence(&id, &e.vm.repl, p).await;
                }
                let (weak, data, name) =
                    (Arc::downgrade(&e), self.cfg.data.clone(), vm.to_string());
                on_fence(vm.to_string(), &e.vm.repl, move || async move {
                    let Some(e) = weak.upgrade() else { return };
                    vm::kill(&e.vm.qemu).await;
                    e.vm.stop_serving();
                    let st = {
                        let mut s = lock(&e.state);
                        s.running = false;
                        s.clone()
                    };
                    if let Err(err) = write_json(&file(&data, "sources", &name), &st) {
                        tracing::error!(
                            vm = name,
                            error = format!("{err:#}"),
                            "persisting a fenced VM's state"
                        );
                    }
                });
                e
            }
        };
        if let Some(why) = entry.vm.repl.fenced_reason() {
            vm::kill(&entry.vm.qemu).await;
            let st = {
                let mut s = lock(&entry.state);
                s.running = false;
                s.clone()
            };
            write_json(&file(&self.cfg.data, "sources", vm), &st)?;
            return Err(anyhow!(
                "VM {vm} is fenced at host {}: {why}",
                self.cfg.name
            ));
        }
        let running = spec.running.unwrap_or(lock(&entry.state).running);
        let st = SourceState {
            definition: spec.definition.clone(),
            running,
            protect: spec.protect.clone(),
        };
        write_json(&file(&self.cfg.data, "sources", vm), &st)?;
        *lock(&entry.state) = st;
        entry.vm.set_protection(spec.protect).await?;
        let dir = vm::vm_dir(&self.cfg.data, vm);
        if running {
            let qdef = vm::qemu_definition(vm, &def, &entry.vm.socket(), &dir.join("serial.log"));
            vm::start(&entry.vm.qemu, &qdef, &dir, self.cfg.accel).await?;
        } else {
            vm::stop(&entry.vm.qemu, Duration::from_secs(30)).await?;
        }
        Ok(self.source_status(vm, &entry).await)
    }

    async fn source_status(&self, vm: &str, e: &SourceEntry) -> SourceStatus {
        let serial = vm::vm_dir(&self.cfg.data, vm).join("serial.log");
        let running = vm::running(&e.vm.qemu).await;
        e.vm.status(running, &serial).await
    }

    /// Everything this agent runs.
    pub async fn report(&self) -> HostReport {
        let sources: Vec<_> = lock(&self.sources)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut r = HostReport::default();
        for (vm, e) in sources {
            r.sources.push(self.source_status(&vm, &e).await);
        }
        r.replicas = lock(&self.replicas).values().map(|x| x.status()).collect();
        let recovered: Vec<_> = lock(&self.recovered).values().cloned().collect();
        for x in recovered {
            if x.repl.is_on() || x.repl.fenced_reason().is_some() {
                r.sources.push(x.source_status().await);
            }
            r.recovered.push(x.status().await);
        }
        r
    }

    fn watch_recovered(&self, _vm: &str, r: &Arc<RecoveredVm>) {
        let weak = Arc::downgrade(r);
        on_fence(r.vm().to_string(), &r.repl, move || async move {
            if let Some(r) = weak.upgrade() {
                r.halt().await;
            }
        });
    }

    /// Closes the old source or recovered VM of `vm` for good and keeps its disks for
    /// re-protect (see `crate::local`).
    async fn release(&self, vm: &str, after_seq: u64) -> Result<LocalDisks> {
        let id = VmId::new(vm).map_err(|e| anyhow!("VM name {vm:?}: {e}"))?;
        let released = lock(&self.released).get(vm).cloned();
        if let Some(r) = released {
            return Ok(r.status(Some(after_seq)));
        }
        let src = lock(&self.sources).get(vm).cloned();
        let rec = lock(&self.recovered).get(vm).cloned();
        let st = if let Some(e) = src {
            e.vm.close().await;
            ReleasedState {
                kind: "source".into(),
                images: e.vm.images(),
                journal_dir: e.vm.journal_dir(),
            }
        } else if let Some(r) = rec {
            if !r.is_committed() {
                return Err(anyhow!(
                    "VM {vm} runs here from a failover that was not committed: its disks \
                     cannot seed re-protect"
                ));
            }
            r.close(false).await?;
            ReleasedState {
                kind: "recovered".into(),
                images: r.images(),
                journal_dir: r.journal_dir(),
            }
        } else {
            ReleasedState {
                kind: "none".into(),
                images: Vec::new(),
                journal_dir: self.cfg.data.join("vms").join(vm).join("journal"),
            }
        };
        write_json(&file(&self.cfg.data, "released", vm), &st)?;
        for role in ["sources", "recovered"] {
            match std::fs::remove_file(file(&self.cfg.data, role, vm)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow!("removing the {role} state of VM {vm}: {e}"))
                }
                _ => {}
            }
        }
        lock(&self.sources).remove(vm);
        lock(&self.recovered).remove(vm);
        let r = Released::new(id, st);
        lock(&self.released).insert(vm.to_string(), r.clone());
        tracing::info!(vm, kind = %r.state.kind, "original disks released for re-protect");
        Ok(r.status(Some(after_seq)))
    }

    /// What this host has of `vm` that re-protect could reuse (changes nothing).
    async fn local(&self, vm: &str) -> Result<LocalDisks> {
        let released = lock(&self.released).get(vm).cloned();
        if let Some(r) = released {
            return Ok(r.status(None));
        }
        let src = lock(&self.sources).get(vm).cloned();
        let rec = lock(&self.recovered).get(vm).cloned();
        let (kind, images) = match (src, rec) {
            (Some(e), _) => ("source", e.vm.images()),
            (None, Some(r)) if r.is_committed() => ("recovered", r.images()),
            (None, Some(_)) => ("recovered-uncommitted", Vec::new()),
            (None, None) => ("none", Vec::new()),
        };
        let u = crate::local::usable(&images);
        Ok(LocalDisks {
            vm: vm.to_string(),
            kind: kind.into(),
            images: images.iter().map(|p| p.display().to_string()).collect(),
            sizes: u.as_ref().ok().cloned(),
            unusable: u.err(),
            old_spool: None,
            seed: None,
        })
    }

    async fn close_all(&self) {
        let sources: Vec<_> = lock(&self.sources).drain().collect();
        for (_, e) in sources {
            e.vm.close().await;
        }
        let replicas: Vec<_> = lock(&self.replicas).drain().collect();
        for (_, r) in replicas {
            r.stop().await;
        }
        let recovered: Vec<_> = lock(&self.recovered).drain().collect();
        for (vm, r) in recovered {
            if let Err(e) = r.close(false).await {
                tracing::warn!(vm, error = format!("{e:#}"), "closing a recovered VM");
            }
        }
        for (_, r) in lock(&self.released).drain() {
            r.stop();
        }
        let drills: Vec<_> = lock(&self.drills).drain().collect();
        for (vm, r) in drills {
            if let Err(e) = r.close(false).await {
                tracing::warn!(vm, error = format!("{e:#}"), "closing a drill copy");
            }
        }
        tracing::info!(host = %self.cfg.name, "agent stopped cleanly");
    }
}

async fn heartbeat(agent: Arc<Agent>, url: String) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client: no heartbeat");
            return;
        }
    };
    let vault = agent.cfg.vault.trim_end_matches('/').to_string();
    let reg = RegisterHost {
        name: agent.cfg.name.clone(),
        region: agent.cfg.region.clone(),
        url,
    };
    let mut warned = false;
    loop {
        let r = async {
            let token = &agent.cfg.token;
            post_to_vault(
                &http,
                &format!("{vault}/api/hosts"),
                token,
                &reg,
                "registering",
            )
            .await?;
            let report = agent.report().await;
            let url = format!("{vault}/api/hosts/{}/report", agent.cfg.name);
            post_to_vault(&http, &url, token, &report, "reporting").await
        }
        .await;
        match r {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(vault = %vault, error = format!("{e:#}"), "cannot reach the vault; retrying");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// POSTs `body` to the vault; a refusal is an error with the vault's answer.
async fn post_to_vault<T: Serialize>(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &T,
    what: &str,
) -> Result<()> {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| what.to_string())?;
    if !resp.status().is_success() {
        return Err(anyhow!(
            "{what}: {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(a): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), a.cfg.token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiErr(
            StatusCode::UNAUTHORIZED,
            anyhow!("missing or wrong bearer token: use the vault's API token"),
        )
        .into_response()
    }
}

fn router(a: Arc<Agent>) -> Router {
    Router::new()
        .route("/agent/v1/status", get(status))
        .route("/agent/v1/sources/{vm}", get(get_source).put(put_source))
        .route("/agent/v1/sources/{vm}/shutdown", post(shutdown_source))
        .route("/agent/v1/sources/{vm}/checkpoint", post(checkpoint_source))
        .route(
            "/agent/v1/replicas/{vm}",
            get(get_replica).put(put_replica).delete(delete_replica),
        )
        .route("/agent/v1/replicas/{vm}/process", post(process_replica))
        .route(
            "/agent/v1/recovered/{vm}",
            get(get_recovered)
                .put(put_recovered)
                .delete(delete_recovered),
        )
        .route("/agent/v1/recovered/{vm}/{verb}", post(recovered_verb))
        .route("/agent/v1/local/{vm}", get(get_local).delete(delete_local))
        .route("/agent/v1/local/{vm}/{verb}", post(local_verb))
        .route("/agent/v1/vms/{vm}/{verb}", post(vm_verb))
        .route(
            "/agent/v1/drills/{vm}",
            get(get_drill).put(put_drill).delete(delete_drill),
        )
        .route("/agent/v1/drills/{vm}/{verb}", post(drill_verb))
        .route("/agent/v1/cuts/{verb}", post(crate::cuts::cut_verb))
        .layer(middleware::from_fn_with_state(a.clone(), auth))
        .with_state(a)
}

async fn status(State(a): State<Arc<Agent>>) -> Json<HostReport> {
    Json(a.report().await)
}

async fn get_source(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<SourceStatus> {
    let rec = lock(&a.recovered).get(&vm).cloned();
    if let Some(r) = rec {
        if r.repl.is_on() || r.repl.fenced_reason().is_some() {
            return Ok(Json(r.source_status().await));
        }
    }
    let e = find(&a.sources, "source", &vm)?;
    Ok(Json(a.source_status(&vm, &e).await))
}

async fn put_source(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<SourceStatus> {
    vm_id(&vm)?;
    let spec: SourceSpec = body("source VM", &b)?;
    let def = vm::parse_definition(&vm, &spec.definition).map_err(bad)?;
    if let Some(i) = def
        .disks
        .iter()
        .position(|d| matches!(d.source, lifeboat_qemu::DiskSource::Nbd { .. }))
    {
        return Err(bad(anyhow!(
            "VM {vm} disk {i}: the agent serves the VM's disks itself: give a raw or qcow2 \
             image file, not an NBD export"
        )));
    }
    let _one = a.ops.lock().await;
    Ok(Json(a.put_source(&vm, spec).await.map_err(failed)?))
}

/// `POST /agent/v1/sources/{vm}/checkpoint`: a recovery point of the VM now.
async fn checkpoint_source(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<lifeboat_vault::agent_wire::CheckpointAnswer> {
    let req: lifeboat_vault::agent_wire::CheckpointRequest =
        if b.iter().all(u8::is_ascii_whitespace) {
            lifeboat_vault::agent_wire::CheckpointRequest { kind: None }
        } else {
            body("checkpoint", &b)?
        };
    let kind: lifeboat_types::CheckpointKind = req
        .kind
        .as_deref()
        .unwrap_or("crash-consistent")
        .parse()
        .map_err(|e: String| bad(anyhow!("checkpoint of VM {vm}: {e}")))?;
    let repl = a
        .replication_of(&vm)
        .ok_or_else(|| not_found("replicating", &vm))?;
    if let Some(g) = repl.protection().and_then(|p| p.group) {
        return Err(ApiErr(
            StatusCode::CONFLICT,
            anyhow!(
                "VM {vm} is in replication group {g}: its points are the group's (cut the \
                 group: `lifeboat group cut {g}`)"
            ),
        ));
    }
    let (seq, kind, freeze_error) = repl.checkpoint_now(kind).await.map_err(failed)?;
    Ok(Json(lifeboat_vault::agent_wire::CheckpointAnswer {
        vm,
        seq: seq.0,
        kind: kind.to_string(),
        freeze_error,
    }))
}

async fn shutdown_source(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<ShutdownAnswer> {
    let req: ShutdownRequest = if b.iter().all(u8::is_ascii_whitespace) {
        ShutdownRequest { timeout_secs: 30 }
    } else {
        body("shutdown", &b)?
    };
    let t = Duration::from_secs(req.timeout_secs.clamp(1, 600));
    // The guest may take the whole timeout to power off: the agent-wide lock is held only to
    // find the VM and persist that it should be stopped (a restart then leaves it stopped),
    // so that several VMs (a group's or a plan's failover) shut down at once. Starting the
    // same VM meanwhile waits for its QEMU slot.
    let one = a.ops.lock().await;
    let rec = lock(&a.recovered).get(&vm).cloned();
    if let Some(r) = rec {
        drop(one);
        return Ok(Json(r.shutdown(t).await.map_err(failed)?));
    }
    let e = find(&a.sources, "source", &vm)?;
    let st = {
        let mut s = lock(&e.state);
        s.running = false;
        s.clone()
    };
    write_json(&file(&a.cfg.data, "sources", &vm), &st).map_err(failed)?;
    drop(one);
    Ok(Json(e.vm.shutdown(t).await.map_err(failed)?))
}

async fn get_replica(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<ReplicaStatus> {
    let r = find(&a.replicas, "replica", &vm)?;
    Ok(Json(r.status()))
}

async fn put_replica(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<ReplicaStatus> {
    let id = vm_id(&vm)?;
    let spec: ReplicaSpec = body("replica", &b)?;
    let _one = a.ops.lock().await;
    let existing = lock(&a.replicas).get(&vm).cloned();
    if let Some(r) = existing {
        if r.spec == spec {
            return Ok(Json(r.status()));
        }
        r.stop().await;
    }
    write_json(&file(&a.cfg.data, "replicas", &vm), &spec).map_err(failed)?;
    let r = Replica::start(id, spec).await.map_err(failed)?;
    lock(&a.replicas).insert(vm, r.clone());
    Ok(Json(r.status()))
}

async fn process_replica(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<ReplicaStatus> {
    let r = find(&a.replicas, "replica", &vm)?;
    Ok(Json(r.process().await.map_err(failed)?))
}

async fn delete_replica(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<serde_json::Value> {
    let _one = a.ops.lock().await;
    let r = lock(&a.replicas).remove(&vm);
    if let Some(r) = r {
        r.stop().await;
    }
    match std::fs::remove_file(file(&a.cfg.data, "replicas", &vm)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(anyhow!("removing the replica's state: {e}"))),
    }
    Ok(Json(serde_json::json!({})))
}

async fn get_recovered(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<RecoveredStatus> {
    let r = find(&a.recovered, "recovered", &vm)?;
    Ok(Json(r.status().await))
}

async fn put_recovered(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<RecoveredStatus> {
    let id = vm_id(&vm)?;
    let spec: RecoverSpec = body("recover", &b)?;
    vm::parse_definition(&vm, &spec.definition).map_err(bad)?;
    let _one = a.ops.lock().await;
    // A retried request (the vault restarted) or a new point: the previous recovery goes.
    let old = lock(&a.recovered).remove(&vm);
    if let Some(old) = old {
        old.close(true).await.map_err(failed)?;
    }
    let r = RecoveredVm::create(
        id,
        &a.recovered_dir(&vm),
        &file(&a.cfg.data, "recovered", &vm),
        spec,
    )
    .await
    .map_err(failed)?;
    a.watch_recovered(&vm, &r);
    lock(&a.recovered).insert(vm, r.clone());
    Ok(Json(r.status().await))
}

async fn delete_recovered(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<serde_json::Value> {
    let _one = a.ops.lock().await;
    let r = lock(&a.recovered).remove(&vm);
    if let Some(r) = r {
        r.close(true).await.map_err(failed)?;
    }
    Ok(Json(serde_json::json!({})))
}

fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value, ApiErr> {
    serde_json::to_value(v).map_err(|e| failed(anyhow!("encoding the answer: {e}")))
}

async fn recovered_verb(
    State(a): State<Arc<Agent>>,
    Path((vm, verb)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<serde_json::Value> {
    let _one = a.ops.lock().await;
    let r = find(&a.recovered, "recovered", &vm)?;
    match verb.as_str() {
        "start" => r.start(a.cfg.accel).await.map_err(failed)?,
        "stop" => {
            r.stop().await.map_err(failed)?;
        }
        "commit" => r.request_commit().map_err(failed)?,
        "reverse" => {
            let req: ReverseRequest = body("reverse", &b)?;
            return Ok(Json(to_value(&r.reverse(req).await.map_err(failed)?)?));
        }
        "digests" => {
            let req: DigestRequest = body("digests", &b)?;
            let (sizes, disks) = r.digests(req.block).await.map_err(failed)?;
            return Ok(Json(to_value(&DigestAnswer {
                block: req.block,
                sizes,
                disks,
            })?));
        }
        "resync" => {
            let req: ResyncRequest = body("resync", &b)?;
            r.resync(req).map_err(failed)?;
        }
        _ => {
            return Err(bad(anyhow!(
                "unknown action {verb:?} on recovered VM {vm}: use start, stop, commit, \
                 reverse, digests or resync"
            )))
        }
    }
    Ok(Json(to_value(&r.status().await)?))
}

async fn get_local(State(a): State<Arc<Agent>>, Path(vm): Path<String>) -> ApiResult<LocalDisks> {
    vm_id(&vm)?;
    Ok(Json(a.local(&vm).await.map_err(failed)?))
}

async fn local_verb(
    State(a): State<Arc<Agent>>,
    Path((vm, verb)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<serde_json::Value> {
    vm_id(&vm)?;
    let _one = a.ops.lock().await;
    match verb.as_str() {
        "release" => {
            let req: ReleaseRequest = body("release", &b)?;
            Ok(Json(to_value(
                &a.release(&vm, req.after_seq).await.map_err(failed)?,
            )?))
        }
        "digests" => {
            let req: DigestRequest = body("digests", &b)?;
            let r = find(&a.released, "released", &vm)?;
            Ok(Json(to_value(
                &r.digests(req.block).await.map_err(failed)?,
            )?))
        }
        "seed" => {
            let req: SeedRequest = body("seed", &b)?;
            let r = find(&a.released, "released", &vm)?;
            r.seed(req);
            Ok(Json(to_value(&r.status(None))?))
        }
        _ => Err(bad(anyhow!(
            "unknown action {verb:?} on the local disks of VM {vm}: use release, digests or seed"
        ))),
    }
}

async fn delete_local(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<serde_json::Value> {
    let _one = a.ops.lock().await;
    if let Some(r) = lock(&a.released).remove(&vm) {
        r.stop();
    }
    match std::fs::remove_file(file(&a.cfg.data, "released", &vm)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(anyhow!("removing the released state: {e}"))),
    }
    Ok(Json(serde_json::json!({})))
}

/// Starts or stops a VM wherever it runs on this host (recovered or source).
async fn vm_verb(
    State(a): State<Arc<Agent>>,
    Path((vm, verb)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let running = match verb.as_str() {
        "start" => true,
        "stop" => false,
        _ => {
            return Err(bad(anyhow!(
                "unknown action {verb:?} on VM {vm}: use start or stop"
            )))
        }
    };
    let _one = a.ops.lock().await;
    let rec = lock(&a.recovered).get(&vm).cloned();
    if let Some(r) = rec {
        if running {
            r.start(a.cfg.accel).await.map_err(failed)?;
        } else {
            r.stop().await.map_err(failed)?;
        }
        return Ok(Json(to_value(&r.status().await)?));
    }
    let e = find(&a.sources, "source", &vm)?;
    let st = lock(&e.state).clone();
    let spec = SourceSpec {
        definition: st.definition,
        running: Some(running),
        protect: st.protect,
    };
    Ok(Json(to_value(
        &a.put_source(&vm, spec).await.map_err(failed)?,
    )?))
}

async fn get_drill(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<RecoveredStatus> {
    let r = find(&a.drills, "drill", &vm)?;
    Ok(Json(r.status().await))
}

/// Creates (or, asked again, replaces) the drill copy of `vm` from the point its spec names.
async fn put_drill(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<RecoveredStatus> {
    let id = vm_id(&vm)?;
    let spec: RecoverSpec = body("drill", &b)?;
    if !spec.drill {
        return Err(bad(anyhow!(
            "a drill copy of VM {vm} must be asked for with \"drill\": true"
        )));
    }
    vm::parse_definition(&vm, &spec.definition).map_err(bad)?;
    let _one = a.ops.lock().await;
    let old = lock(&a.drills).remove(&vm);
    if let Some(old) = old {
        old.close(true).await.map_err(failed)?;
    }
    let r = RecoveredVm::create(
        id,
        &a.drill_dir(&vm),
        &file(&a.cfg.data, "drills", &vm),
        spec,
    )
    .await
    .map_err(failed)?;
    lock(&a.drills).insert(vm, r.clone());
    Ok(Json(r.status().await))
}

/// Removes the drill copy of `vm`: QEMU killed, its disks and writes deleted, its pin gone.
async fn delete_drill(
    State(a): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> ApiResult<serde_json::Value> {
    let id = vm_id(&vm)?;
    let _one = a.ops.lock().await;
    let r = lock(&a.drills).remove(&vm);
    if let Some(r) = r {
        let url = r.store_url();
        r.close(true).await.map_err(failed)?;
        let store = Store::open(&url).map_err(|e| failed(anyhow!("region store {url}: {e}")))?;
        store
            .delete_pin(&id, crate::recovered::DRILL_PIN)
            .await
            .map_err(|e| failed(anyhow!("removing the drill's pin in {url}: {e}")))?;
    }
    let dir = a.drill_dir(&vm);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| failed(anyhow!("removing {}: {e}", dir.display())))?;
    }
    match std::fs::remove_file(file(&a.cfg.data, "drills", &vm)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(anyhow!("removing the drill's state: {e}"))),
    }
    Ok(Json(serde_json::json!({})))
}

async fn drill_verb(
    State(a): State<Arc<Agent>>,
    Path((vm, verb)): Path<(String, String)>,
) -> ApiResult<RecoveredStatus> {
    let _one = a.ops.lock().await;
    let r = find(&a.drills, "drill", &vm)?;
    match verb.as_str() {
        "start" => r.start(a.cfg.accel).await.map_err(failed)?,
        "stop" => {
            r.stop().await.map_err(failed)?;
        }
        // Cleanup: the copy and its writes are discarded, so no guest shutdown is waited for.
        "kill" => crate::vm::kill(&r.qemu).await,
        _ => {
            return Err(bad(anyhow!(
                "unknown action {verb:?} on the drill copy of VM {vm}: use start, stop or kill"
            )))
        }
    }
    Ok(Json(r.status().await))
}
