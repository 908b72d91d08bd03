//! [`AgentExecutor`]: runs an item's jobs by calling the agents of its regions
//! ([`crate::agent_wire`]), step by step, recording each step's status and detail.
//!
//! * **Enable protection**: the target agent starts processing the VM's journal (a replica);
//!   the source agent serves the VM's disks with journaling and shipping to the target store,
//!   and copies the disks there (initial replication, % reported); Protected once the first
//!   recovery point exists.
//! * **Failover**: optionally shut the source down (best effort: if its agent is gone, the job
//!   says so and goes on); raise the item's epoch in the target store, which fences the source
//!   (its segments are refused from then on); for `latest`, process everything received; stop
//!   processing (the points stay while the VM recovers from one); the target agent serves the
//!   chosen point over NBD straight from the store and starts the VM; disks hydrate behind it.
//! * **Change recovery point**: stop the recovered VM, discard its disks, recover again.
//! * **Commit**: the target agent finishes hydration and marks the disks final; the item's
//!   recovery points and journal are deleted from the store (their chunks go at the next GC).
//!
//! Every agent call is idempotent (desired state), so a job failed by a vault restart can be
//! retried as it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_store::{choose_point, is_time_choice, PointRecord, Store};
use lifeboat_types::{Epoch, ItemState, Operation, Outcome, Seq, VmId};
use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::agent_wire::{
    RecoverSpec, RecoveredStatus, ReplicaSpec, ReplicaStatus, ShutdownAnswer, ShutdownRequest,
    SourceSpec, SourceStatus,
};
use crate::error::{chain, ErrorBody, VaultError};
use crate::model::{Host, Item, OperationRequest};
use crate::service::{replicates, Executor, Vault};

/// How long a job waits for an agent that stopped answering before it fails.
const AGENT_PATIENCE: Duration = Duration::from_secs(60);
/// How long protection waits for the first recovery point after the copy.
const FIRST_POINT_WAIT: Duration = Duration::from_secs(600);

/// An HTTP client of the agents' API.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    token: Arc<String>,
}

impl AgentClient {
    /// A client sending `token`.
    pub fn new(token: String) -> Result<Self, VaultError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| VaultError::BadRequest(format!("cannot build the HTTP client: {e}")))?;
        Ok(AgentClient {
            http,
            token: Arc::new(token),
        })
    }

    /// Calls `method path` on `host`'s agent with an optional JSON body.
    pub async fn call<T: DeserializeOwned>(
        &self,
        host: &Host,
        method: Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
    ) -> Result<T, VaultError> {
        let err = |message: String| VaultError::Agent {
            host: host.name.clone(),
            message,
        };
        let url = format!("{}{path}", host.url.trim_end_matches('/'));
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.token.as_str());
        if let Some(b) = body {
            let text = b
                .to_json()
                .map_err(|e| err(format!("{method} {path}: encoding the request: {e}")))?;
            req = req.header("content-type", "application/json").body(text);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| err(format!("{method} {url}: {}", chain(&e).join(": "))))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| err(format!("{method} {url}: reading the answer: {e}")))?;
        if !status.is_success() {
            let msg = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => b.causes.join(": "),
                Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
            };
            return Err(err(format!("{method} {path}: {status}: {msg}")));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| err(format!("{method} {path}: unexpected answer ({e})")))
    }
}

/// JSON bodies without generic parameters on [`AgentClient::call`].
pub mod erased {
    /// A body that serializes to JSON.
    pub trait Json {
        /// The JSON text.
        fn to_json(&self) -> Result<String, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<String, serde_json::Error> {
            serde_json::to_string(self)
        }
    }
}

/// The executor of a vault with agents.
pub struct AgentExecutor {
    client: AgentClient,
}

impl AgentExecutor {
    /// An executor calling agents with `token`.
    pub fn new(token: String) -> Result<Self, VaultError> {
        Ok(AgentExecutor {
            client: AgentClient::new(token)?,
        })
    }
}

impl Executor for AgentExecutor {
    fn agent_client(&self) -> Option<AgentClient> {
        Some(self.client.clone())
    }

    fn run(&self, vault: Vault, job: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let mut run = match Run::load(vault.clone(), client, job) {
                Ok(r) => r,
                Err(e) => {
                    let msg = chain(&e).join(": ");
                    let _ = vault.finish_job(job, Outcome::Failed, Some(&msg));
                    return;
                }
            };
            let r = match run.op {
                Operation::EnableProtection => protect(&mut run).await,
                Operation::Failover => failover(&mut run).await,
                Operation::ChangeRecoveryPoint => change_point(&mut run).await,
                Operation::Commit => commit(&mut run).await,
                Operation::Reprotect => crate::reprotect::reprotect(&mut run).await,
                Operation::TestFailover => crate::drill::test_failover(&mut run).await,
                Operation::CleanupTestFailover => crate::drill::cleanup(&mut run).await,
                Operation::DisableProtection => crate::disable::disable(&mut run).await,
            };
            let (outcome, error) = match r {
                Ok(()) => (Outcome::Succeeded, None),
                Err(e) => {
                    run.fail(&e);
                    (Outcome::Failed, Some(e))
                }
            };
            if let Err(e) = vault.finish_job(job, outcome, error.as_deref()) {
                tracing::error!(job, error = %chain(&e).join(": "), "finishing a job failed");
            }
        })
    }

    fn set_running(
        &self,
        vault: Vault,
        vm: String,
        running: bool,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, VaultError>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move { set_running(&vault, &client, &vm, running).await })
    }

    fn reprotect_plan(
        &self,
        vault: Vault,
        vm: String,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, VaultError>> + Send>> {
        let client = self.client.clone();
        Box::pin(async move {
            let p = crate::reprotect::plan(&vault, &client, &vm).await?;
            serde_json::to_value(p).map_err(|e| VaultError::BadRequest(e.to_string()))
        })
    }
}

/// One job being run: its item, request and steps.
pub(crate) struct Run {
    pub(crate) vault: Vault,
    client: AgentClient,
    pub(crate) job: i64,
    op: Operation,
    pub(crate) vm: String,
    pub(crate) req: OperationRequest,
    steps: Vec<String>,
    current: Option<usize>,
}

pub(crate) type Flow = Result<(), String>;

pub(crate) fn text(e: VaultError) -> String {
    chain(&e).join(": ")
}

impl Run {
    fn load(vault: Vault, client: AgentClient, job: i64) -> Result<Run, VaultError> {
        let j = vault.job(job)?;
        let op: Operation = j.operation.parse().map_err(|_| VaultError::Corrupt {
            what: "job operation",
            value: j.operation.clone(),
        })?;
        let vm = j.vm.clone().ok_or_else(|| VaultError::Corrupt {
            what: "job without a VM",
            value: job.to_string(),
        })?;
        Ok(Run {
            vault,
            client,
            job,
            op,
            vm,
            req: j.params.clone(),
            steps: j.steps.iter().map(|s| s.name.clone()).collect(),
            current: None,
        })
    }

    pub(crate) fn set(&self, i: usize, status: &str, detail: Option<&str>) {
        if let Err(e) = self.vault.set_step(self.job, i, status, detail) {
            tracing::error!(job = self.job, error = %text(e), "recording a step failed");
        }
    }

    /// Starts the step named `name`.
    pub(crate) fn step(&mut self, name: &str) -> Flow {
        let i = self
            .steps
            .iter()
            .position(|s| s == name)
            .ok_or_else(|| format!("job {} has no step {name:?}", self.job))?;
        self.current = Some(i);
        self.set(i, "running", None);
        Ok(())
    }

    /// Updates the running step's detail.
    pub(crate) fn detail(&self, detail: &str) {
        if let Some(i) = self.current {
            self.set(i, "running", Some(detail));
        }
    }

    pub(crate) fn done(&mut self, detail: &str) {
        if let Some(i) = self.current.take() {
            self.set(i, "succeeded", Some(detail));
        }
    }

    pub(crate) fn skip(&mut self, detail: &str) {
        if let Some(i) = self.current.take() {
            self.set(i, "skipped", Some(detail));
        }
    }

    pub(crate) fn fail(&mut self, why: &str) {
        if let Some(i) = self.current.take() {
            self.set(i, "failed", Some(why));
        }
    }

    pub(crate) fn item(&self) -> Result<Item, String> {
        self.vault.item(&self.vm).map_err(text)
    }

    pub(crate) fn host(&self, region: &str) -> Result<Host, String> {
        self.vault.live_host(region).map_err(text)
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        host: &Host,
        method: Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
    ) -> Result<T, String> {
        self.client
            .call(host, method, path, body)
            .await
            .map_err(text)
    }

    pub(crate) fn vm_id(&self) -> Result<VmId, String> {
        VmId::new(&self.vm).map_err(|e| format!("VM name {:?}: {e}", self.vm))
    }
}

/// Reads `path` from `host` every 300 ms until `f` returns a value (or an error); fails when
/// the agent has not answered for [`AGENT_PATIENCE`].
pub(crate) async fn poll<T: DeserializeOwned, R>(
    r: &Run,
    host: &Host,
    path: &str,
    who: &str,
    mut f: impl FnMut(&Run, T) -> Result<Option<R>, String>,
) -> Result<R, String> {
    let mut last_ok = Instant::now();
    loop {
        match r.call::<T>(host, Method::GET, path, None).await {
            Ok(s) => {
                last_ok = Instant::now();
                if let Some(x) = f(r, s)? {
                    return Ok(x);
                }
            }
            Err(e) if last_ok.elapsed() > AGENT_PATIENCE => {
                return Err(format!("the {who} agent stopped answering: {e}"))
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn protect(r: &mut Run) -> Flow {
    r.step("Prerequisites check")?;
    let (item, store_url, policy) = r.vault.item_store(&r.vm).map_err(text)?;
    let vm = r.vault.vm(&r.vm).map_err(text)?;
    let source = r.host(&item.source_region)?;
    let target = r.host(&item.target_region)?;
    r.done(&format!(
        "source host {} ({}), target host {} ({}), target store {store_url}",
        source.name, item.source_region, target.name, item.target_region
    ));

    r.step("Initial replication")?;
    let path = format!("/agent/v1/replicas/{}", r.vm);
    let spec = ReplicaSpec {
        store_url: store_url.clone(),
        store_secs: 300,
        policy: Some(policy.clone()),
    };
    let _: ReplicaStatus = r.call(&target, Method::PUT, &path, Some(&spec)).await?;
    let spec = SourceSpec {
        definition: vm.definition.clone(),
        running: None,
        protect: Some(crate::groups::protection(
            store_url,
            item.epoch,
            &policy,
            item.replication_group.clone(),
        )),
    };
    let spath = format!("/agent/v1/sources/{}", r.vm);
    let _: SourceStatus = r.call(&source, Method::PUT, &spath, Some(&spec)).await?;
    poll(r, &source, &spath, "source", |r, s: SourceStatus| {
        if let Some(f) = s.fenced {
            return Err(format!("the source host is fenced: {f}"));
        }
        let pct = s.copy.percent.min(99);
        let _ = r.vault.set_percent_synced(&r.vm, pct);
        if s.copy.done {
            return Ok(Some(()));
        }
        let mut d = format!("{pct}% of the disks copied");
        if let Some(e) = s.copy.error {
            d.push_str(&format!(" (last attempt failed, retrying: {e})"));
        }
        r.detail(&d);
        Ok(None)
    })
    .await?;
    r.done("the disks are in the target store");

    r.step("Start replication")?;
    let started = Instant::now();
    let first = poll(r, &target, &path, "target", |_, s: ReplicaStatus| {
        if s.newest_point.is_some() {
            return Ok(Some(s));
        }
        if started.elapsed() > FIRST_POINT_WAIT {
            return Err(format!(
                "no recovery point {} s after the copy: {}",
                FIRST_POINT_WAIT.as_secs(),
                s.error
                    .unwrap_or_else(|| "the journal has not caught up".into())
            ));
        }
        Ok(None)
    })
    .await?;
    r.vault.set_percent_synced(&r.vm, 100).map_err(text)?;
    r.done(&format!(
        "first recovery point {}; writes replicate continuously",
        first.newest_point.unwrap_or_default()
    ));
    Ok(())
}

async fn failover(r: &mut Run) -> Flow {
    let res = failover_steps(r).await;
    if res.is_err() {
        // The item goes back to Protected: processing at the target must go on.
        if let Err(e) = resume_replica(r).await {
            let _ = r.vault.note(
                "warning",
                &r.vm,
                r.job,
                &format!("could not resume processing at the target: {e}"),
            );
        }
    }
    res
}

async fn resume_replica(r: &Run) -> Result<(), String> {
    let (item, store_url, policy) = r.vault.item_store(&r.vm).map_err(text)?;
    let target = r.host(&item.target_region)?;
    let spec = ReplicaSpec {
        store_url,
        store_secs: 300,
        policy: Some(policy),
    };
    let path = format!("/agent/v1/replicas/{}", r.vm);
    let _: ReplicaStatus = r.call(&target, Method::PUT, &path, Some(&spec)).await?;
    Ok(())
}

/// The VM's definition as it runs after failover: sized per the item's target settings.
pub(crate) fn target_definition(def: &serde_json::Value, item: &Item) -> serde_json::Value {
    let mut d = def.clone();
    if let Some(v) = item.target_vcpus {
        d["vcpus"] = serde_json::json!(v);
    }
    if let Some(m) = item.target_memory_mib {
        d["memory_mib"] = serde_json::json!(m);
    }
    d
}

/// Checks, before anything changes, that `choice` can be recovered from `points`.
fn check_point(vm: &str, region: &str, choice: &str, points: &[PointRecord]) -> Flow {
    let any = points.iter().any(|p| p.is_restorable());
    let found = if is_time_choice(choice) {
        // A time is checked against the CDP window when it is opened.
        any
    } else {
        match choose_point(points, choice) {
            Some(p) if p.is_restorable() => true,
            Some(p) => {
                return Err(format!(
                    "recovery point {} of VM {vm} is the initial copy, which is not a \
                     consistent state: choose a later point",
                    p.id
                ))
            }
            None if !choice.starts_with("latest") => {
                return Err(format!(
                    "VM {vm} has no recovery point {choice} in region {region}: see `lifeboat \
                     points {vm}`"
                ))
            }
            None => false,
        }
    };
    if found {
        return Ok(());
    }
    let why = if any {
        ""
    } else {
        ": initial replication has not finished"
    };
    Err(format!(
        "VM {vm} has no {choice} recovery point in region {region}{why}; nothing was changed"
    ))
}

/// Opens the target store and checks, before anything changes, that `choice` can be
/// recovered from its points.
pub(crate) async fn point_store(
    r: &Run,
    store_url: &str,
    region: &str,
    choice: &str,
) -> Result<Store, String> {
    let store = Store::open(store_url).map_err(|e| format!("target store {store_url}: {e}"))?;
    let points = store
        .list_points(&r.vm_id()?)
        .await
        .map_err(|e| format!("listing recovery points in {store_url}: {e}"))?;
    check_point(&r.vm, region, choice, &points)?;
    Ok(store)
}

/// Raises the item's epoch in the target store: from now on the store refuses the source's
/// segments (it is fenced).
async fn fence(r: &Run, store: &Store, item: &Item) -> Result<u64, String> {
    let epoch = item.epoch + 1;
    let vm_id = r.vm_id()?;
    store
        .bump_epoch(&vm_id, Epoch(epoch))
        .await
        .map_err(|e| format!("fencing the source (epoch {epoch}): {e}"))?;
    r.vault.set_epoch(&r.vm, epoch, r.job).map_err(text)?;
    Ok(epoch)
}

async fn failover_steps(r: &mut Run) -> Flow {
    r.step("Prerequisites check")?;
    let item = r.item()?;
    let vm = r.vault.vm(&r.vm).map_err(text)?;
    let target = r.host(&item.target_region)?;
    let store_url = r.vault.store_url(&item.target_region).map_err(text)?;
    let point = r
        .req
        .recovery_point
        .clone()
        .unwrap_or_else(|| "latest-processed".to_string());
    let store = point_store(r, &store_url, &item.target_region, &point).await?;
    r.done(&format!(
        "target host {} in region {}; recovery point {point}",
        target.name, item.target_region
    ));

    if r.req.shutdown_source {
        r.step("Shut down source VM")?;
        let shut = async {
            let source = r.host(&item.source_region)?;
            let path = format!("/agent/v1/sources/{}/shutdown", r.vm);
            let body = ShutdownRequest {
                timeout_secs: r.req.shutdown_timeout_secs.unwrap_or(30),
            };
            r.call::<ShutdownAnswer>(&source, Method::POST, &path, Some(&body))
                .await
        }
        .await;
        match shut {
            Ok(a) => {
                let through = a
                    .shipped_through
                    .map(|s| format!("; every write through record {s} is in the target store"))
                    .unwrap_or_default();
                r.done(&format!("source VM {}{through}", a.report));
            }
            Err(e) => {
                let msg = format!("the source VM could not be shut down ({e}); failover goes on");
                let _ = r.vault.note("warning", &r.vm, r.job, &msg);
                r.skip(&msg);
            }
        }
    }

    r.step("Process data")?;
    let path = format!("/agent/v1/replicas/{}", r.vm);
    let mut epoch = None;
    if point == "latest" {
        // Fenced first, so that "everything received" is everything the source will send.
        epoch = Some(fence(r, &store, &item).await?);
        // Processing may have been stopped by an earlier attempt of this failover.
        resume_replica(r).await?;
        let s: ReplicaStatus = r
            .call(&target, Method::POST, &format!("{path}/process"), None)
            .await?;
        r.detail(&format!(
            "everything received was processed: newest point {}",
            s.newest_point.unwrap_or_default()
        ));
    }
    // Processing stops: the points stay as they are while the VM recovers from one.
    let _: serde_json::Value = r.call(&target, Method::DELETE, &path, None).await?;
    if point == "latest" {
        r.done("everything received was processed; processing stopped");
    } else {
        r.done(&format!(
            "recovery point {point} is already processed; processing stopped"
        ));
    }
    create_and_start(
        r,
        &target,
        target_definition(&vm.definition, &item),
        store_url,
        point,
        epoch,
        &store,
        &item,
    )
    .await
}

/// Creates the recovered VM from `point` and starts it; fences the source first if
/// `epoch` says it is not fenced yet.
#[allow(clippy::too_many_arguments)]
async fn create_and_start(
    r: &mut Run,
    target: &Host,
    definition: serde_json::Value,
    store_url: String,
    point: String,
    epoch: Option<u64>,
    store: &Store,
    item: &Item,
) -> Flow {
    r.step("Create VM")?;
    let path = format!("/agent/v1/recovered/{}", r.vm);
    let spec = RecoverSpec {
        definition,
        store_url,
        recovery_point: point,
        epoch: epoch.unwrap_or(item.epoch + 1),
        drill: false,
    };
    let st: RecoveredStatus = r.call(target, Method::PUT, &path, Some(&spec)).await?;
    r.done(&format!(
        "from recovery point {} (journal record {}, {}); its disks are served from the store \
         and hydrate in the background",
        st.point, st.point_seq, st.point_time_utc
    ));
    r.step("Start VM")?;
    if epoch.is_none() {
        fence(r, store, item).await?;
    }
    let st: RecoveredStatus = r
        .call(target, Method::POST, &format!("{path}/start"), None)
        .await?;
    r.done(&format!(
        "running at host {}; serial console {}",
        target.name, st.serial_log
    ));
    Ok(())
}

async fn change_point(r: &mut Run) -> Flow {
    let item = r.item()?;
    let vm = r.vault.vm(&r.vm).map_err(text)?;
    let target = r.host(&item.target_region)?;
    let store_url = r.vault.store_url(&item.target_region).map_err(text)?;
    let point = r
        .req
        .recovery_point
        .clone()
        .ok_or("change-recovery-point needs a recovery point")?;
    r.step("Stop VM")?;
    let path = format!("/agent/v1/recovered/{}", r.vm);
    let _: serde_json::Value = r.call(&target, Method::DELETE, &path, None).await?;
    r.done("stopped; its disks and the writes made since failover are discarded");
    let store = Store::open(&store_url).map_err(|e| format!("target store {store_url}: {e}"))?;
    let epoch = Some(item.epoch);
    create_and_start(
        r,
        &target,
        target_definition(&vm.definition, &item),
        store_url,
        point,
        epoch,
        &store,
        &item,
    )
    .await
}

async fn commit(r: &mut Run) -> Flow {
    r.step("Make disks local")?;
    let item = r.item()?;
    let target = r.host(&item.target_region)?;
    let path = format!("/agent/v1/recovered/{}", r.vm);
    let _: RecoveredStatus = r
        .call(&target, Method::POST, &format!("{path}/commit"), None)
        .await?;
    let point_seq = poll(r, &target, &path, "target", |r, s: RecoveredStatus| {
        if s.committed {
            return Ok(Some(s.point_seq));
        }
        let mut d = format!("{:.1}% of the disks local", s.hydrated_percent);
        if let Some(e) = s.error {
            d.push_str(&format!(" (hydration error, retrying: {e})"));
        }
        r.detail(&d);
        Ok(None)
    })
    .await?;
    r.done("every disk is local and final");

    r.step("Delete recovery points")?;
    let store_url = r.vault.store_url(&item.target_region).map_err(text)?;
    let store = Store::open(&store_url).map_err(|e| format!("target store {store_url}: {e}"))?;
    let vm_id = r.vm_id()?;
    // What the old source wrote after the point is in the stored journal: summarized before
    // it goes, so that re-protect sends those ranges back without comparing whole disks.
    let summary = match store.summarize_after(&vm_id, Seq(point_seq)).await {
        Ok(Some(d)) => match store.put_divergence(&vm_id, &d).await {
            Ok(()) if d.through_seq <= point_seq => {
                "nothing was written after the point (noted for re-protect)".to_string()
            }
            Ok(()) => format!(
                "the writes after the point (records {}..={}) summarized for re-protect",
                point_seq + 1,
                d.through_seq
            ),
            Err(e) => format!("no summary for re-protect ({e}): it will compare disks"),
        },
        Ok(None) => "the stored journal after the point has gaps: re-protect will compare \
                     disks"
            .to_string(),
        Err(e) => format!("no summary for re-protect ({e}): it will compare disks"),
    };
    let deleted = delete_replica_data(&store, &store_url, &vm_id).await?;
    r.done(&format!("{deleted}; {summary}"));
    Ok(())
}

/// Deletes every recovery point and journal segment of `vm_id` in `store`, then collects
/// their chunks (unless a writer is at work: then the next `lifeboat gc` does); says what it
/// did.
pub(crate) async fn delete_replica_data(
    store: &Store,
    store_url: &str,
    vm_id: &lifeboat_types::VmId,
) -> Result<String, String> {
    let points = store
        .list_point_ids(vm_id)
        .await
        .map_err(|e| format!("listing recovery points in {store_url}: {e}"))?;
    for id in &points {
        store
            .delete_point(vm_id, id)
            .await
            .map_err(|e| format!("deleting recovery point {id}: {e}"))?;
    }
    let segments = store
        .delete_segments_through(vm_id, Seq(u64::MAX))
        .await
        .map_err(|e| format!("deleting the journal of VM {vm_id}: {e}"))?;
    // A failed collection does not fail the operation.
    let gc = match store.gc().await {
        Ok(g) if g.deferred => "chunk collection deferred: a writer is at work in the store; \
                                 `lifeboat gc` collects them later"
            .to_string(),
        Ok(g) => format!(
            "{} unreferenced objects collected ({} too young, kept)",
            g.deleted.len(),
            g.kept_young
        ),
        Err(e) => format!("chunk collection failed ({e}); `lifeboat gc` collects them later"),
    };
    Ok(format!(
        "{} recovery points and {segments} journal segments deleted; {gc}",
        points.len()
    ))
}

/// Starts or stops a VM where it runs now: at its source host, or (failed over) at the target.
async fn set_running(
    vault: &Vault,
    client: &AgentClient,
    name: &str,
    running: bool,
) -> Result<serde_json::Value, VaultError> {
    let vm = vault.vm(name)?;
    let item = vault.item(name).ok();
    let region = item
        .as_ref()
        .map_or(vm.region.clone(), |i| i.active_region.clone());
    let host = vault.live_host(&region)?;
    // A VM that runs from recovered disks (failed over, maybe re-protected) is started and
    // stopped where it is; only a VM on its original disks is (re)opened as a source.
    let local: crate::agent_wire::LocalDisks = client
        .call(&host, Method::GET, &format!("/agent/v1/local/{name}"), None)
        .await?;
    if local.kind.starts_with("recovered") {
        let verb = if running { "start" } else { "stop" };
        let path = format!("/agent/v1/vms/{name}/{verb}");
        return client.call(&host, Method::POST, &path, None).await;
    }
    if region != vm.region || local.kind == "released" {
        // Its original disks are elsewhere (or were handed to re-protect): never open them here.
        return Err(VaultError::BadRequest(format!(
            "VM {name} runs in region {region}, but host {} has no recovered copy of it to {}",
            host.name,
            if running { "start" } else { "stop" }
        )));
    }
    let protect = match &item {
        Some(i) => {
            let s: ItemState = i.state.parse().map_err(|_| VaultError::Corrupt {
                what: "item state",
                value: i.state.clone(),
            })?;
            if replicates(s) {
                let (_, store_url, policy) = vault.item_store(name)?;
                Some(crate::groups::protection(
                    store_url,
                    i.epoch,
                    &policy,
                    i.replication_group.clone(),
                ))
            } else {
                None
            }
        }
        None => None,
    };
    let spec = SourceSpec {
        definition: vm.definition,
        running: Some(running),
        protect,
    };
    client
        .call(
            &host,
            Method::PUT,
            &format!("/agent/v1/sources/{name}"),
            Some(&spec),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_serialize_through_the_erased_trait() {
        let spec = ShutdownRequest { timeout_secs: 7 };
        let b: &dyn erased::Json = &spec;
        assert_eq!(b.to_json().unwrap(), r#"{"timeout_secs":7}"#);
    }
}
