//! [`Vault`]: the operations behind the API, on the database. Every change is one transaction;
//! an operation on an item goes through the state machine (`lifeboat_types::item`) inside the
//! same transaction that records its job, so two requests can never both start one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lifeboat_policy::{health, HealthInputs, HealthThresholds, ReplicationPolicy};
use lifeboat_store::{PointRecord, Store};
use lifeboat_types::item::{begin, finish};
use lifeboat_types::{allowed_operations, CheckpointKind, ItemState, Operation, Outcome, VmId};
use rusqlite::{params, OptionalExtension, Row, Transaction};

use crate::db::{now_ms, sql, Db};
use crate::error::VaultError;
use crate::model::{
    CreateVm, Event, HealthInfo, Host, Item, Job, OperationRequest, PointInfo, Policy,
    ProtectRequest, Region, RegisterHost, Step, Vm,
};

/// Runs jobs (the agents' side of an operation); the vault records and orders them.
pub trait Executor: Send + Sync + 'static {
    /// Runs job `job`; reports through [`Vault::set_step`] and ends with [`Vault::finish_job`].
    fn run(&self, vault: Vault, job: i64) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Starts or stops VM `vm` where it runs now; answers the agent's status of it.
    fn set_running(
        &self,
        _vault: Vault,
        vm: String,
        _running: bool,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, VaultError>> + Send>> {
        Box::pin(async move {
            Err(VaultError::NoAgent(format!(
                "no agent can start or stop VM {vm}: start the regions' agents \
                 (`lifeboat up` or `lifeboat agent`) and retry"
            )))
        })
    }

    /// The client the vault calls agents with, if it has agents (replication groups' cuts).
    fn agent_client(&self) -> Option<crate::executor::AgentClient> {
        None
    }

    /// What re-protecting `vm` would do (asks the agents; changes nothing).
    fn reprotect_plan(
        &self,
        _vault: Vault,
        vm: String,
    ) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, VaultError>> + Send>> {
        Box::pin(async move {
            Err(VaultError::NoAgent(format!(
                "no agent can plan the re-protect of VM {vm}: start the regions' agents and retry"
            )))
        })
    }
}

/// The executor of a vault with no agent able to act yet: every job fails at its first step,
/// saying so, and the item returns to where it was.
pub struct NoAgents;

impl Executor for NoAgents {
    fn run(&self, vault: Vault, job: i64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let why = "no agent can run this operation yet: start the regions' agents \
                       (`lifeboat up` or `lifeboat agent`) and retry";
            let _ = vault.set_step(job, 0, "failed", Some(why));
            if let Err(e) = vault.finish_job(job, Outcome::Failed, Some(why)) {
                tracing::error!(job, error = %e, "finishing a job failed");
            }
        })
    }
}

/// The vault's state and operations (cheap to clone).
#[derive(Clone)]
pub struct Vault {
    pub(crate) db: Db,
    executor: Arc<dyn Executor>,
    /// One multi-VM cut at a time (the schedule's and those asked for).
    pub(crate) cut_lock: Arc<tokio::sync::Mutex<()>>,
}

fn name_ok(kind: &'static str, name: &str) -> Result<(), VaultError> {
    VmId::new(name).map(|_| ()).map_err(|_| {
        VaultError::BadRequest(format!(
            "invalid {kind} name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -"
        ))
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The steps of an operation's job.
pub fn steps_of(op: Operation, req: &OperationRequest) -> Vec<Step> {
    let names: Vec<&str> = match op {
        Operation::EnableProtection => vec![
            "Prerequisites check",
            "Initial replication",
            "Start replication",
        ],
        Operation::DisableProtection => vec!["Stop replication", "Delete recovery points"],
        Operation::Failover => {
            let mut v = vec!["Prerequisites check"];
            if req.shutdown_source {
                v.push("Shut down source VM");
            }
            v.extend(["Process data", "Create VM", "Start VM"]);
            v
        }
        Operation::ChangeRecoveryPoint => vec!["Stop VM", "Create VM", "Start VM"],
        Operation::Commit => vec!["Make disks local", "Delete recovery points"],
        Operation::Reprotect => vec![
            "Prerequisites check",
            "Reverse replication",
            "Resynchronize",
            "Start replication",
        ],
        Operation::TestFailover => vec!["Prerequisites check", "Create isolated VM", "Start VM"],
        Operation::CleanupTestFailover => vec!["Stop VM", "Delete test resources"],
    };
    names
        .into_iter()
        .map(|n| Step {
            name: n.to_string(),
            status: "pending".to_string(),
            detail: None,
        })
        .collect()
}

/// Checks that the request's parameters fit the operation.
fn check_request(op: Operation, req: &OperationRequest) -> Result<(), VaultError> {
    let takes_point = matches!(
        op,
        Operation::Failover | Operation::ChangeRecoveryPoint | Operation::TestFailover
    );
    if req.recovery_point.is_some() && !takes_point {
        return Err(VaultError::BadRequest(format!(
            "recovery_point does not apply to {op}: only to failover, change-recovery-point and \
             test-failover"
        )));
    }
    if let Some(p) = &req.recovery_point {
        if p.is_empty() || p.len() > 64 || p.chars().any(|c| c.is_control() || c == '/') {
            return Err(VaultError::BadRequest(format!(
                "invalid recovery_point {p:?}: use latest-processed, latest, \
                 latest-app-consistent, a point id, or a time"
            )));
        }
    }
    if req.shutdown_source && op != Operation::Failover {
        return Err(VaultError::BadRequest(format!(
            "shutdown_source does not apply to {op}: only to failover"
        )));
    }
    if let Some(t) = req.shutdown_timeout_secs {
        if !req.shutdown_source || !(1..=600).contains(&t) {
            return Err(VaultError::BadRequest(format!(
                "shutdown_timeout_secs {t}: give 1 to 600 seconds, with shutdown_source"
            )));
        }
    }
    if req.notes.is_some() && op != Operation::CleanupTestFailover {
        return Err(VaultError::BadRequest(format!(
            "notes do not apply to {op}: only to cleanup-test-failover"
        )));
    }
    Ok(())
}

fn item_of(row: &Row<'_>) -> rusqlite::Result<(Item, String, Option<i64>)> {
    let state: String = row.get(1)?;
    Ok((
        Item {
            vm: row.get(0)?,
            state: state.clone(),
            state_label: String::new(),
            allowed_operations: Vec::new(),
            policy: row.get(2)?,
            source_region: row.get(3)?,
            target_region: row.get(4)?,
            active_region: row.get(5)?,
            percent_synced: row.get::<_, i64>(6)?.clamp(0, 100) as u8,
            epoch: row.get::<_, i64>(7)?.max(0) as u64,
            job: row.get(8)?,
            updated_at: row.get(9)?,
            rpo_ms: None,
            hydrated_percent: row
                .get::<_, Option<i64>>(11)?
                .map(|p| p.clamp(0, 100) as u8),
            target_vcpus: row.get::<_, Option<i64>>(12)?.map(|v| v.max(0) as u32),
            target_memory_mib: row.get::<_, Option<i64>>(13)?.map(|v| v.max(0) as u64),
            drill: row
                .get::<_, Option<String>>(14)?
                .and_then(|j| serde_json::from_str(&j).ok()),
            last_drill_at: row.get(15)?,
            last_drill_notes: row.get(16)?,
            replication_group: row.get(17)?,
            app_misses: row.get::<_, i64>(18)?.clamp(0, i64::from(u32::MAX)) as u32,
            app_error: row.get(19)?,
        },
        state,
        row.get::<_, Option<i64>>(10)?,
    ))
}

fn complete_item(
    (mut item, state, replicated_as_of): (Item, String, Option<i64>),
) -> Result<Item, VaultError> {
    let s: ItemState = state.parse().map_err(|_| VaultError::Corrupt {
        what: "item state",
        value: state.clone(),
    })?;
    if replicates(s) {
        item.rpo_ms = replicated_as_of.map(|t| (now_ms() - t).max(0));
    }
    item.state_label = s.label().to_string();
    item.allowed_operations = allowed_operations(s)
        .iter()
        .map(|o| o.as_str().to_string())
        .collect();
    Ok(item)
}

/// Runs query `q` and collects its rows with `f`.
pub(crate) fn query_rows<T, P: rusqlite::Params>(
    tx: &Transaction<'_>,
    what: &'static str,
    q: &str,
    params: P,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, VaultError> {
    let mut st = tx.prepare(q).map_err(sql(what))?;
    let rows = st
        .query_map(params, f)
        .map_err(sql(what))?
        .collect::<rusqlite::Result<Vec<T>>>()
        .map_err(sql(what));
    rows
}

pub(crate) const HOST_COLS: &str = "name, region, url, registered_at, last_seen";

pub(crate) fn host_of(r: &Row<'_>) -> rusqlite::Result<Host> {
    Ok(Host {
        name: r.get(0)?,
        region: r.get(1)?,
        url: r.get(2)?,
        registered_at: r.get(3)?,
        last_seen: r.get(4)?,
    })
}

const ITEM_COLS: &str = "vm, state, policy, source_region, target_region, active_region, \
                         percent_synced, epoch, job, updated_at, replicated_as_of, \
                         hydrated_percent, target_vcpus, target_memory_mib, drill, \
                         last_drill_at, last_drill_notes, replication_group, \
                         app_misses, app_error";

/// Whether an item in state `s` replicates (so has an RPO).
pub(crate) fn replicates(s: ItemState) -> bool {
    matches!(
        s,
        ItemState::EnablingProtection
            | ItemState::Protected
            | ItemState::FailoverInProgress
            | ItemState::TestFailoverInProgress
            | ItemState::TestFailedOver
            | ItemState::CleanupTestFailoverInProgress
    )
}
const JOB_COLS: &str =
    "id, operation, vm, status, progress, steps, params, error, created_at, finished_at";

fn job_of(row: &Row<'_>) -> rusqlite::Result<(Job, String, String)> {
    Ok((
        Job {
            id: row.get(0)?,
            operation: row.get(1)?,
            vm: row.get(2)?,
            status: row.get(3)?,
            progress: row.get::<_, i64>(4)?.clamp(0, 100) as u8,
            steps: Vec::new(),
            params: OperationRequest::default(),
            error: row.get(7)?,
            created_at: row.get(8)?,
            finished_at: row.get(9)?,
        },
        row.get(5)?,
        row.get(6)?,
    ))
}

fn complete_job((mut job, steps, params): (Job, String, String)) -> Result<Job, VaultError> {
    job.steps = serde_json::from_str(&steps).map_err(|_| VaultError::Corrupt {
        what: "job steps",
        value: steps,
    })?;
    job.params = serde_json::from_str(&params).map_err(|_| VaultError::Corrupt {
        what: "job parameters",
        value: params,
    })?;
    Ok(job)
}

pub(crate) fn event(
    tx: &Transaction<'_>,
    level: &str,
    vm: Option<&str>,
    job: Option<i64>,
    message: &str,
) -> Result<(), VaultError> {
    tx.execute(
        "INSERT INTO events (at, level, vm, job, message) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms(), level, vm, job, message],
    )
    .map_err(sql("recording an event"))?;
    Ok(())
}

impl Vault {
    /// A vault on `db` whose jobs `executor` runs. Jobs a previous run left running are ended
    /// as failed (their item returns to where it was) before anything else happens.
    pub fn new(db: Db, executor: Arc<dyn Executor>) -> Result<Self, VaultError> {
        let v = Vault {
            db,
            executor,
            cut_lock: Arc::default(),
        };
        v.ensure_default_policy()?;
        v.recover_interrupted_jobs()?;
        v.recover_plan_runs()?;
        Ok(v)
    }

    fn ensure_default_policy(&self) -> Result<(), VaultError> {
        let body = serde_json::to_string(&ReplicationPolicy::default())
            .map_err(|e| VaultError::BadRequest(e.to_string()))?;
        self.db.tx("creating the default policy", |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO policies (name, body) VALUES ('default', ?1)",
                params![body],
            )
            .map_err(sql("creating the default policy"))?;
            Ok(())
        })
    }

    fn recover_interrupted_jobs(&self) -> Result<(), VaultError> {
        let running: Vec<i64> = self.db.tx("listing interrupted jobs", |tx| {
            query_rows(
                tx,
                "listing interrupted jobs",
                "SELECT id FROM jobs WHERE status = 'running'",
                [],
                |r| r.get(0),
            )
        })?;
        for id in running {
            self.finish_job(
                id,
                Outcome::Failed,
                Some(
                    "the vault stopped while this job ran; the item is back in the state it \
                     started from: retry the operation",
                ),
            )?;
        }
        Ok(())
    }

    /// What re-protecting `vm` would do (through the agents; changes nothing).
    pub async fn reprotect_plan(&self, vm: &str) -> Result<serde_json::Value, VaultError> {
        self.item(vm)?;
        self.executor
            .reprotect_plan(self.clone(), vm.to_string())
            .await
    }

    /// Starts or stops a VM where it runs now (through its agent).
    pub async fn set_running(
        &self,
        vm: &str,
        running: bool,
    ) -> Result<serde_json::Value, VaultError> {
        self.executor
            .set_running(self.clone(), vm.to_string(), running)
            .await
    }

    // ---- regions, hosts, policies, VMs ----

    /// Adds a region (its store URL cannot change once set).
    pub fn add_region(&self, r: &Region) -> Result<Region, VaultError> {
        name_ok("region", &r.name)?;
        if r.store_url.trim().is_empty() {
            return Err(VaultError::BadRequest(format!(
                "region {}: store_url is empty: give the region store's URL",
                r.name
            )));
        }
        self.db.tx("adding a region", |tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT store_url FROM regions WHERE name = ?1",
                    params![r.name],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql("reading a region"))?;
            match existing {
                Some(u) if u == r.store_url => Ok(r.clone()),
                Some(_) => Err(VaultError::Exists {
                    kind: "region",
                    name: r.name.clone(),
                }),
                None => {
                    tx.execute(
                        "INSERT INTO regions (name, store_url) VALUES (?1, ?2)",
                        params![r.name, r.store_url],
                    )
                    .map_err(sql("adding a region"))?;
                    event(tx, "info", None, None, &format!("region {} added", r.name))?;
                    Ok(r.clone())
                }
            }
        })
    }

    /// Every region.
    pub fn regions(&self) -> Result<Vec<Region>, VaultError> {
        self.db.tx("listing regions", |tx| {
            query_rows(
                tx,
                "listing regions",
                "SELECT name, store_url FROM regions ORDER BY name",
                [],
                |r| {
                    Ok(Region {
                        name: r.get(0)?,
                        store_url: r.get(1)?,
                    })
                },
            )
        })
    }

    /// Registers (or re-registers) an agent's host.
    pub fn register_host(&self, h: &RegisterHost) -> Result<Host, VaultError> {
        name_ok("host", &h.name)?;
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            return Err(VaultError::BadRequest(format!(
                "host {}: url {:?} must start with http:// or https://",
                h.name, h.url
            )));
        }
        let now = now_ms();
        self.db.tx("registering a host", |tx| {
            self.require_region(tx, &h.region)?;
            tx.execute(
                "INSERT INTO hosts (name, region, url, registered_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT(name) DO UPDATE SET region = ?2, url = ?3, last_seen = ?4",
                params![h.name, h.region, h.url, now],
            )
            .map_err(sql("registering a host"))?;
            event(
                tx,
                "info",
                None,
                None,
                &format!(
                    "host {} registered in region {} ({})",
                    h.name, h.region, h.url
                ),
            )?;
            tx.query_row(
                &format!("SELECT {HOST_COLS} FROM hosts WHERE name = ?1"),
                params![h.name],
                host_of,
            )
            .map_err(sql("reading a host"))
        })
    }

    /// Every host.
    pub fn hosts(&self) -> Result<Vec<Host>, VaultError> {
        self.db.tx("listing hosts", |tx| {
            query_rows(
                tx,
                "listing hosts",
                &format!("SELECT {HOST_COLS} FROM hosts ORDER BY name"),
                [],
                host_of,
            )
        })
    }

    /// Creates or replaces a policy (validated first).
    pub fn put_policy(&self, p: &Policy) -> Result<Policy, VaultError> {
        name_ok("policy", &p.name)?;
        p.policy
            .validate()
            .map_err(|e| VaultError::BadRequest(format!("policy {}: {e}", p.name)))?;
        let body =
            serde_json::to_string(&p.policy).map_err(|e| VaultError::BadRequest(e.to_string()))?;
        self.db.tx("storing a policy", |tx| {
            tx.execute(
                "INSERT INTO policies (name, body) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET body = ?2",
                params![p.name, body],
            )
            .map_err(sql("storing a policy"))?;
            Ok(p.clone())
        })
    }

    /// Every policy.
    pub fn policies(&self) -> Result<Vec<Policy>, VaultError> {
        self.db.tx("listing policies", |tx| {
            let rows = query_rows(
                tx,
                "listing policies",
                "SELECT name, body FROM policies ORDER BY name",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )?;
            rows.into_iter()
                .map(|(name, body)| {
                    let policy = serde_json::from_str(&body).map_err(|_| VaultError::Corrupt {
                        what: "policy",
                        value: body,
                    })?;
                    Ok(Policy { name, policy })
                })
                .collect()
        })
    }

    /// Creates a VM record.
    pub fn create_vm(&self, v: &CreateVm) -> Result<Vm, VaultError> {
        name_ok("VM", &v.name)?;
        if !v.definition.is_object() {
            return Err(VaultError::BadRequest(format!(
                "VM {}: definition must be a JSON object (vcpus, memory_mib, disks, nics)",
                v.name
            )));
        }
        let now = now_ms();
        self.db.tx("creating a VM", |tx| {
            self.require_region(tx, &v.region)?;
            tx.execute(
                "INSERT INTO vms (name, region, definition, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![v.name, v.region, v.definition.to_string(), now],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    VaultError::Exists {
                        kind: "VM",
                        name: v.name.clone(),
                    }
                } else {
                    sql("creating a VM")(e)
                }
            })?;
            event(
                tx,
                "info",
                Some(&v.name),
                None,
                &format!("VM {} created in region {}", v.name, v.region),
            )?;
            Ok(Vm {
                name: v.name.clone(),
                region: v.region.clone(),
                definition: v.definition.clone(),
                created_at: now,
            })
        })
    }

    /// Every VM.
    pub fn vms(&self) -> Result<Vec<Vm>, VaultError> {
        self.db.tx("listing VMs", |tx| {
            let rows = query_rows(
                tx,
                "listing VMs",
                "SELECT name, region, definition, created_at FROM vms ORDER BY name",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(name, region, def, created_at)| {
                    let definition =
                        serde_json::from_str(&def).map_err(|_| VaultError::Corrupt {
                            what: "VM definition",
                            value: def,
                        })?;
                    Ok(Vm {
                        name,
                        region,
                        definition,
                        created_at,
                    })
                })
                .collect()
        })
    }

    fn require_region(&self, tx: &Transaction<'_>, name: &str) -> Result<(), VaultError> {
        let n: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM regions WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .map_err(sql("reading a region"))?;
        if n == 0 {
            return Err(VaultError::NotFound {
                kind: "region",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    // ---- items and operations ----

    /// Every replicated item.
    pub fn items(&self) -> Result<Vec<Item>, VaultError> {
        self.db.tx("listing items", |tx| {
            let rows = query_rows(
                tx,
                "listing items",
                &format!("SELECT {ITEM_COLS} FROM items ORDER BY vm"),
                [],
                item_of,
            )?;
            rows.into_iter().map(complete_item).collect()
        })
    }

    /// One item.
    pub fn item(&self, vm: &str) -> Result<Item, VaultError> {
        self.db.tx("reading an item", |tx| read_item(tx, vm))
    }

    /// Enables protection of a VM: creates its item and starts initial replication.
    pub fn protect(&self, req: &ProtectRequest) -> Result<Job, VaultError> {
        if req.target_vcpus.is_some_and(|v| !(1..=255).contains(&v)) {
            return Err(VaultError::BadRequest(format!(
                "VM {}: target_vcpus must be 1 to 255",
                req.vm
            )));
        }
        if req
            .target_memory_mib
            .is_some_and(|m| !(16..=1 << 20).contains(&m))
        {
            return Err(VaultError::BadRequest(format!(
                "VM {}: target_memory_mib must be 16 to 1048576",
                req.vm
            )));
        }
        let now = now_ms();
        let vm = req.vm.clone();
        self.db.tx("protecting a VM", |tx| {
            let region: String = tx
                .query_row(
                    "SELECT region FROM vms WHERE name = ?1",
                    params![req.vm],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql("reading a VM"))?
                .ok_or_else(|| VaultError::NotFound {
                    kind: "VM",
                    name: req.vm.clone(),
                })?;
            self.require_region(tx, &req.target_region)?;
            if region == req.target_region {
                return Err(VaultError::BadRequest(format!(
                    "VM {} runs in region {region}: replicate it to another region",
                    req.vm
                )));
            }
            let policies: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM policies WHERE name = ?1",
                    params![req.policy],
                    |r| r.get(0),
                )
                .map_err(sql("reading a policy"))?;
            if policies == 0 {
                return Err(VaultError::NotFound {
                    kind: "policy",
                    name: req.policy.clone(),
                });
            }
            tx.execute(
                "INSERT OR IGNORE INTO items (vm, state, policy, source_region, target_region,
                 active_region, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6)",
                params![
                    req.vm,
                    ItemState::NotProtected.as_str(),
                    req.policy,
                    region,
                    req.target_region,
                    now
                ],
            )
            .map_err(sql("creating an item"))?;
            tx.execute(
                "UPDATE items SET target_vcpus = ?1, target_memory_mib = ?2 WHERE vm = ?3
                 AND state = ?4",
                params![
                    req.target_vcpus.map(i64::from),
                    req.target_memory_mib.map(|m| m as i64),
                    req.vm,
                    ItemState::NotProtected.as_str()
                ],
            )
            .map_err(sql("setting an item's target"))?;
            Ok(())
        })?;
        self.start(
            &vm,
            Operation::EnableProtection,
            &OperationRequest::default(),
        )
    }

    /// Starts `op` on `vm`'s item: refused (409, with the state and the allowed operations)
    /// in the wrong state; else a job is recorded, the item moves to the in-progress state,
    /// and the executor runs the job.
    pub fn start(
        &self,
        vm: &str,
        op: Operation,
        req: &OperationRequest,
    ) -> Result<Job, VaultError> {
        if req.group.is_some() {
            return Err(VaultError::BadRequest(
                "`group` is set by the vault itself: operate on a replication group with \
                 POST /api/groups/{name}/{operation}"
                    .to_string(),
            ));
        }
        let mut jobs = self.start_many(op, &[(vm.to_string(), req.clone())])?;
        jobs.pop()
            .ok_or_else(|| VaultError::BadRequest("no job started".to_string()))
    }

    /// Starts `op` on several items in one transaction: all start or none does (a replication
    /// group's operation); the executor then runs every job.
    pub(crate) fn start_many(
        &self,
        op: Operation,
        items: &[(String, OperationRequest)],
    ) -> Result<Vec<Job>, VaultError> {
        for (_, req) in items {
            check_request(op, req)?;
        }
        let now = now_ms();
        let jobs = self.db.tx("starting an operation", |tx| {
            let mut jobs = Vec::new();
            for (vm, req) in items {
                let steps = serde_json::to_string(&steps_of(op, req))
                    .map_err(|e| VaultError::BadRequest(e.to_string()))?;
                let params_json = serde_json::to_string(req)
                    .map_err(|e| VaultError::BadRequest(e.to_string()))?;
                let item = read_item(tx, vm)?;
                let state: ItemState = item.state.parse().map_err(|_| VaultError::Corrupt {
                    what: "item state",
                    value: item.state.clone(),
                })?;
                crate::groups::refuse_alone(vm, item.replication_group.as_deref(), op, req)?;
                let next = begin(state, op).map_err(|refused| VaultError::WrongState {
                    vm: vm.to_string(),
                    refused,
                })?;
                tx.execute(
                    "INSERT INTO jobs (operation, vm, from_state, status, steps, params, created_at)
                     VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6)",
                    params![op.as_str(), vm, state.as_str(), steps, params_json, now],
                )
                .map_err(sql("recording a job"))?;
                let id = tx.last_insert_rowid();
                tx.execute(
                    "UPDATE items SET state = ?1, job = ?2, updated_at = ?3 WHERE vm = ?4",
                    params![next.as_str(), id, now, vm],
                )
                .map_err(sql("updating an item"))?;
                let of_group = req
                    .group
                    .as_ref()
                    .map(|g| format!(" as part of replication group {g}"))
                    .unwrap_or_default();
                event(
                    tx,
                    "info",
                    Some(vm),
                    Some(id),
                    &format!("{op} of VM {vm} started (job {id}){of_group}"),
                )?;
                jobs.push(read_job(tx, id)?);
            }
            Ok(jobs)
        })?;
        for job in &jobs {
            let run = self.executor.run(self.clone(), job.id);
            tokio::spawn(run);
        }
        Ok(jobs)
    }

    /// The client to call agents with (none when the vault has no agents).
    pub(crate) fn agent_client(&self) -> Option<crate::executor::AgentClient> {
        self.executor.agent_client()
    }

    /// Records a step's status (and detail) and the job's progress.
    pub fn set_step(
        &self,
        job: i64,
        index: usize,
        status: &str,
        detail: Option<&str>,
    ) -> Result<(), VaultError> {
        self.db.tx("updating a job step", |tx| {
            let mut j = read_job(tx, job)?;
            let n = j.steps.len().max(1);
            if let Some(s) = j.steps.get_mut(index) {
                s.status = status.to_string();
                s.detail = detail.map(str::to_string);
            }
            let done = j
                .steps
                .iter()
                .filter(|s| s.status == "succeeded" || s.status == "skipped")
                .count();
            let steps = serde_json::to_string(&j.steps)
                .map_err(|e| VaultError::BadRequest(e.to_string()))?;
            tx.execute(
                "UPDATE jobs SET steps = ?1, progress = ?2 WHERE id = ?3",
                params![steps, (done * 100 / n) as i64, job],
            )
            .map_err(sql("updating a job step"))?;
            Ok(())
        })
    }

    /// Ends a running job: the item moves by the state machine's [`finish`] and is released.
    /// A job already ended is left alone.
    pub fn finish_job(
        &self,
        job: i64,
        outcome: Outcome,
        error: Option<&str>,
    ) -> Result<Job, VaultError> {
        let now = now_ms();
        self.db.tx("finishing a job", |tx| {
            let row: (String, Option<String>, Option<String>, String) = tx
                .query_row(
                    "SELECT operation, vm, from_state, status FROM jobs WHERE id = ?1",
                    params![job],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(sql("reading a job"))?
                .ok_or_else(|| VaultError::NotFound {
                    kind: "job",
                    name: job.to_string(),
                })?;
            let (op, vm, from, status) = row;
            if status != "running" {
                return read_job(tx, job);
            }
            let op: Operation = op.parse().map_err(|_| VaultError::Corrupt {
                what: "job operation",
                value: op.clone(),
            })?;
            let status = match outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Failed => "failed",
            };
            tx.execute(
                "UPDATE jobs SET status = ?1, error = ?2, finished_at = ?3,
                 progress = CASE WHEN ?1 = 'succeeded' THEN 100 ELSE progress END WHERE id = ?4",
                params![status, error, now, job],
            )
            .map_err(sql("finishing a job"))?;
            if let (Some(vm), Some(from)) = (vm, from) {
                let from: ItemState = from.parse().map_err(|_| VaultError::Corrupt {
                    what: "job's starting state",
                    value: from.clone(),
                })?;
                let next = finish(from, op, outcome);
                if op == Operation::Reprotect && outcome == Outcome::Succeeded {
                    // Replication goes the other way now: from where the VM runs.
                    tx.execute(
                        "UPDATE items SET source_region = target_region,
                         target_region = source_region, active_region = target_region,
                         replicated_as_of = NULL WHERE vm = ?1",
                        params![vm],
                    )
                    .map_err(sql("updating an item"))?;
                }
                if op == Operation::Failover && outcome == Outcome::Succeeded {
                    // The VM runs in the target region now.
                    tx.execute(
                        "UPDATE items SET active_region = target_region, replicated_as_of = NULL
                         WHERE vm = ?1",
                        params![vm],
                    )
                    .map_err(sql("updating an item"))?;
                }
                tx.execute(
                    "UPDATE items SET state = ?1, job = NULL, updated_at = ?2 WHERE vm = ?3",
                    params![next.as_str(), now, vm],
                )
                .map_err(sql("updating an item"))?;
                let (level, msg) = match (outcome, error) {
                    (Outcome::Succeeded, _) => {
                        ("info", format!("{op} of VM {vm} succeeded (job {job})"))
                    }
                    (Outcome::Failed, e) => (
                        "error",
                        format!(
                            "{op} of VM {vm} failed (job {job}): {}; the item is {}",
                            e.unwrap_or("no reason given"),
                            next.label()
                        ),
                    ),
                };
                event(tx, level, Some(&vm), Some(job), &msg)?;
            }
            read_job(tx, job)
        })
    }

    // ---- recovery points and health (read from the item's target region store) ----

    /// The item, its target region's store URL and the item's policy.
    pub(crate) fn item_store(
        &self,
        vm: &str,
    ) -> Result<(Item, String, ReplicationPolicy), VaultError> {
        self.db.tx("reading an item's store", |tx| {
            let item = read_item(tx, vm)?;
            let url: String = tx
                .query_row(
                    "SELECT store_url FROM regions WHERE name = ?1",
                    params![item.target_region],
                    |r| r.get(0),
                )
                .map_err(sql("reading a region"))?;
            let body: String = tx
                .query_row(
                    "SELECT body FROM policies WHERE name = ?1",
                    params![item.policy],
                    |r| r.get(0),
                )
                .map_err(sql("reading a policy"))?;
            let policy = serde_json::from_str(&body).map_err(|_| VaultError::Corrupt {
                what: "policy",
                value: body,
            })?;
            Ok((item, url, policy))
        })
    }

    /// The item's recovery points in its target region's store, oldest first.
    pub async fn points(&self, vm: &str) -> Result<Vec<PointInfo>, VaultError> {
        let (item, url, _) = self.item_store(vm)?;
        let records = list_points(&item, &url).await?;
        Ok(records.iter().map(point_info).collect())
    }

    /// The item's health (`lifeboat_policy::health`) and its newest points.
    pub async fn health(&self, vm: &str) -> Result<HealthInfo, VaultError> {
        let (item, url, policy) = self.item_store(vm)?;
        let state: ItemState = item.state.parse().map_err(|_| VaultError::Corrupt {
            what: "item state",
            value: item.state.clone(),
        })?;
        if !replicates(state) {
            let why = if state == ItemState::NotProtected {
                "not protected".to_string()
            } else {
                format!(
                    "not replicating: {} (the VM runs in region {})",
                    state.label(),
                    item.active_region
                )
            };
            return Ok(HealthInfo {
                health: "none".into(),
                reasons: vec![why],
                latest_crash_consistent: None,
                latest_app_consistent: None,
            });
        }
        let records = list_points(&item, &url).await?;
        let newest = |kind: CheckpointKind| {
            records
                .iter()
                .rev()
                .find(|p| p.is_restorable() && p.checkpoint_kind() == Some(kind))
        };
        let crash = newest(CheckpointKind::CrashConsistent);
        let app = newest(CheckpointKind::AppConsistent);
        let inputs = HealthInputs {
            now: std::time::SystemTime::now(),
            synchronized: records.iter().any(|p| p.is_restorable()),
            newest_crash: crash.map(|p| p.time()),
            newest_app: app.map(|p| p.time()),
            rpo: item
                .rpo_ms
                .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64)),
            app_misses: item.app_misses,
        };
        let (h, reasons) = health(&inputs, &policy, &HealthThresholds::default());
        Ok(HealthInfo {
            health: h.as_str().into(),
            reasons,
            latest_crash_consistent: crash.map(point_info),
            latest_app_consistent: app.map(point_info),
        })
    }

    // ---- jobs and events ----

    /// Jobs, newest first (at most `limit`).
    pub fn jobs(&self, limit: i64) -> Result<Vec<Job>, VaultError> {
        self.db.tx("listing jobs", |tx| {
            let rows = query_rows(
                tx,
                "listing jobs",
                &format!("SELECT {JOB_COLS} FROM jobs ORDER BY id DESC LIMIT ?1"),
                params![limit],
                job_of,
            )?;
            rows.into_iter().map(complete_job).collect()
        })
    }

    /// One job.
    pub fn job(&self, id: i64) -> Result<Job, VaultError> {
        self.db.tx("reading a job", |tx| read_job(tx, id))
    }

    /// Events after `since` (an event id), oldest first, at most `limit`.
    pub fn events(&self, since: i64, limit: i64) -> Result<Vec<Event>, VaultError> {
        self.db.tx("listing events", |tx| {
            query_rows(
                tx,
                "listing events",
                "SELECT id, at, level, vm, job, message FROM events WHERE id > ?1
                 ORDER BY id LIMIT ?2",
                params![since, limit],
                event_of,
            )
        })
    }
}

/// An event from a row of `SELECT id, at, level, vm, job, message FROM events`.
pub(crate) fn event_of(r: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        level: r.get(2)?,
        vm: r.get(3)?,
        job: r.get(4)?,
        message: r.get(5)?,
    })
}

pub(crate) fn read_item(tx: &Transaction<'_>, vm: &str) -> Result<Item, VaultError> {
    let row = tx
        .query_row(
            &format!("SELECT {ITEM_COLS} FROM items WHERE vm = ?1"),
            params![vm],
            item_of,
        )
        .optional()
        .map_err(sql("reading an item"))?
        .ok_or_else(|| VaultError::NotFound {
            kind: "replicated item",
            name: vm.to_string(),
        })?;
    complete_item(row)
}

pub(crate) fn read_job(tx: &Transaction<'_>, id: i64) -> Result<Job, VaultError> {
    let row = tx
        .query_row(
            &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
            params![id],
            job_of,
        )
        .optional()
        .map_err(sql("reading a job"))?
        .ok_or_else(|| VaultError::NotFound {
            kind: "job",
            name: id.to_string(),
        })?;
    complete_job(row)
}

async fn list_points(item: &Item, url: &str) -> Result<Vec<PointRecord>, VaultError> {
    let err = |source| VaultError::Store {
        region: item.target_region.clone(),
        source: Box::new(source),
    };
    let vm = VmId::new(&item.vm).map_err(|_| VaultError::Corrupt {
        what: "VM name",
        value: item.vm.clone(),
    })?;
    let store = Store::open(url).map_err(err)?;
    store.list_points(&vm).await.map_err(err)
}

fn point_info(p: &PointRecord) -> PointInfo {
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    };
    PointInfo {
        id: p.id.clone(),
        time: ms(p.time()),
        kind: p.kind.clone(),
        form: if !p.is_restorable() {
            "initial-copy"
        } else if p.is_journal_backed() {
            "journal"
        } else {
            "stored"
        }
        .to_string(),
        disks: p.disks_summary(),
    }
}
