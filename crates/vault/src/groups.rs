//! # Replication groups: multi-VM consistency
//!
//! Most applications are several VMs. A **replication group** (at most [`MAX_GROUP_VMS`] VMs,
//! as in ASR) shares its recovery points: every point of the group is one **cut** across all the
//! members' journals at one instant, so that no member's point holds a write that causally
//! follows a write another member's point lacks (VM B writes only after VM A acknowledged:
//! then no point has B's write without A's).
//!
//! ## Cutting
//!
//! The vault cuts ([`Vault::cut_group`]), at the group policy's crash-consistent interval and
//! app-consistent frequency ([`run_cutter`]) or on demand (`POST /api/groups/{name}/cut`, like
//! Zerto's "add checkpoint"):
//!
//! 1. *(app-consistent only)* **freeze** every member's guest filesystems through its QEMU
//!    guest agent; if one cannot be frozen, the cut is crash-consistent (and an event says why);
//! 2. **hold** every member's journal writes, on every host, each at most [`HOLD_MS`];
//! 3. only when all are held, **commit**: every journal gets a marker of the same kind and time;
//! 4. **thaw** what was frozen (always, whatever happened).
//!
//! Any failure releases what is held and records nothing. A cut is recorded (`group_cuts`: its
//! time, kind, and each member's marker position) only when every member committed. Members'
//! agents cut no points of their own (their `Protection.group` is set), so all members have the
//! same point times and retention thins them alike. A cut older than the policy's retention
//! (plus an hour) has no points left and is forgotten when the next cut is recorded.
//!
//! ## Failing over a group
//!
//! A group point is a recorded cut that every member's target store has processed into a
//! recovery point (same time, nanoseconds). `latest-multi-vm-processed` is the newest such
//! point, `latest-multi-vm-app-consistent` the newest app-consistent one, `cut-<id>` a given
//! one. Failover and test failover of the group start every member's job in one transaction,
//! each with its own point of that cut. A member's own failover, test failover or change of
//! recovery point is refused: it would break the group's consistency.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_store::{PointRecord, Store};
use lifeboat_types::item::Operation;
use lifeboat_types::{CheckpointKind, ItemState, VmId};
use reqwest::Method;
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::agent_wire::{CutAnswer, CutRequest, Protection, SourceSpec, SourceStatus};
use crate::db::now_ms;
use crate::db::sql;
use crate::error::VaultError;
use crate::model::{Host, Job, OperationRequest};
use crate::service::{event, query_rows, read_item, Vault};

/// The most VMs a group may have.
pub const MAX_GROUP_VMS: usize = 16;
/// How long a cut may hold a member's writes at most.
pub const HOLD_MS: u64 = 2000;
/// How long each guest may take to freeze its filesystems.
pub const FREEZE_MS: u64 = 10_000;

/// A group to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// The group's name.
    pub name: String,
    /// Its VMs (protected, same regions and policy, in no other group).
    pub vms: Vec<String>,
}

/// A replication group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Its VMs.
    pub vms: Vec<String>,
    /// Created (ms since 1970).
    pub created_at: i64,
    /// How many cuts were recorded.
    pub cuts: u64,
    /// The newest recorded cut.
    pub last_cut: Option<GroupCut>,
    /// What went wrong while telling the agents (the group exists all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A recorded cut: one shared point of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupCut {
    /// Id (`cut-<id>` chooses it for failover).
    pub id: i64,
    /// The time every member's marker carries (ns since 1970).
    pub time_ns: u64,
    /// The same, as UTC text.
    pub time_utc: String,
    /// `crash-consistent` or `app-consistent`.
    pub kind: String,
    /// Each member's marker position.
    pub members: Vec<CutMember>,
}

/// A member's marker of a cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CutMember {
    /// The VM.
    pub vm: String,
    /// Its journal position.
    pub seq: u64,
}

/// A cut and the members' recovery points made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupPoint {
    /// The cut.
    pub cut: GroupCut,
    /// Each member's point of it (absent: not processed yet, or deleted by retention).
    pub points: BTreeMap<String, Option<String>>,
    /// Every member has its point: the group can fail over to it.
    pub complete: bool,
}

fn cut_of(r: &Row<'_>) -> rusqlite::Result<(i64, i64, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_cut((id, time_ns, kind, members): (i64, i64, String, String)) -> GroupCut {
    let time_ns = time_ns.max(0) as u64;
    GroupCut {
        id,
        time_ns,
        time_utc: lifeboat_policy::format_utc(UNIX_EPOCH + Duration::from_nanos(time_ns)),
        kind,
        members: serde_json::from_str(&members).unwrap_or_default(),
    }
}

/// How long a cut is remembered past the policy's retention (its points are gone by then).
const CUT_AGE_MARGIN: Duration = Duration::from_secs(3600);
/// How long a cut is remembered when the group's policy cannot be read (the longest retention).
const MAX_CUT_AGE: Duration = Duration::from_secs(31 * 24 * 3600);

/// The protection a source gets for `item`: its target store, epoch, policy intervals and group.
pub(crate) fn protection(
    store_url: String,
    epoch: u64,
    policy: &lifeboat_policy::ReplicationPolicy,
    group: Option<String>,
) -> Protection {
    Protection {
        store_url,
        epoch,
        point_secs: policy.crash_consistent_interval.as_secs(),
        app_secs: policy
            .app_consistent_frequency
            .map_or(0, |f| f.as_secs().max(1)),
        group,
    }
}

impl Vault {
    /// Creates a replication group of protected VMs and tells their agents (their own
    /// interval points stop: the group's cuts replace them).
    pub async fn create_group(&self, g: &CreateGroup) -> Result<Group, VaultError> {
        VmId::new(&g.name).map_err(|e| {
            VaultError::BadRequest(format!("replication group name {:?}: {e}", g.name))
        })?;
        if g.vms.is_empty() || g.vms.len() > MAX_GROUP_VMS {
            return Err(VaultError::BadRequest(format!(
                "replication group {}: give 1 to {MAX_GROUP_VMS} VMs, not {}",
                g.name,
                g.vms.len()
            )));
        }
        let now = now_ms();
        self.db.tx("creating a replication group", |tx| {
            // Created first (the transaction undoes it if a VM is refused below).
            let created = tx
                .execute(
                    "INSERT OR IGNORE INTO replication_groups (name, created_at) VALUES (?1, ?2)",
                    params![g.name, now],
                )
                .map_err(sql("creating a replication group"))?;
            if created == 0 {
                return Err(VaultError::Exists {
                    kind: "replication group",
                    name: g.name.clone(),
                });
            }
            let mut first: Option<crate::model::Item> = None;
            let mut seen = std::collections::HashSet::new();
            for vm in &g.vms {
                if !seen.insert(vm) {
                    return Err(VaultError::BadRequest(format!(
                        "replication group {}: VM {vm} is listed twice",
                        g.name
                    )));
                }
                let item = read_item(tx, vm)?;
                if item.state != ItemState::Protected.as_str() {
                    return Err(VaultError::Conflict(format!(
                        "VM {vm} is {}: only protected VMs join a replication group (wait for \
                         its job, or protect it first)",
                        item.state
                    )));
                }
                if let Some(other) = &item.replication_group {
                    return Err(VaultError::Conflict(format!(
                        "VM {vm} is already in replication group {other}: delete that group \
                         first"
                    )));
                }
                let region: String = tx
                    .query_row("SELECT region FROM vms WHERE name = ?1", params![vm], |r| {
                        r.get(0)
                    })
                    .map_err(sql("reading a VM"))?;
                if item.source_region != region {
                    return Err(VaultError::Conflict(format!(
                        "VM {vm} replicates from region {}, not its home region {region}: \
                         create the group before failover or after failback",
                        item.source_region
                    )));
                }
                if let Some(f) = &first {
                    if (
                        f.source_region.as_str(),
                        f.target_region.as_str(),
                        f.policy.as_str(),
                    ) != (
                        item.source_region.as_str(),
                        item.target_region.as_str(),
                        item.policy.as_str(),
                    ) {
                        return Err(VaultError::Conflict(format!(
                            "VM {vm} replicates {} → {} with policy {}, VM {} {} → {} with \
                             policy {}: a group's VMs share their regions and policy",
                            item.source_region,
                            item.target_region,
                            item.policy,
                            f.vm,
                            f.source_region,
                            f.target_region,
                            f.policy
                        )));
                    }
                } else {
                    first = Some(item);
                }
            }
            for vm in &g.vms {
                tx.execute(
                    "UPDATE items SET replication_group = ?1, updated_at = ?2 WHERE vm = ?3",
                    params![g.name, now, vm],
                )
                .map_err(sql("adding a VM to a replication group"))?;
            }
            event(
                tx,
                "info",
                None,
                None,
                &format!(
                    "replication group {} created with VMs {}",
                    g.name,
                    g.vms.join(", ")
                ),
            )
        })?;
        let warnings = self.push_protection(&g.vms).await;
        let mut group = self.group(&g.name)?;
        group.warnings = warnings;
        Ok(group)
    }

    /// Deletes a replication group: its VMs stay protected and cut their own points again.
    pub async fn delete_group(&self, name: &str) -> Result<(), VaultError> {
        let g = self.group(name)?;
        self.db.tx("deleting a replication group", |tx| {
            tx.execute(
                "UPDATE items SET replication_group = NULL WHERE replication_group = ?1",
                params![name],
            )
            .map_err(sql("removing VMs from a replication group"))?;
            tx.execute(
                "DELETE FROM replication_groups WHERE name = ?1",
                params![name],
            )
            .map_err(sql("deleting a replication group"))?;
            event(
                tx,
                "info",
                None,
                None,
                &format!("replication group {name} deleted"),
            )
        })?;
        for w in self.push_protection(&g.vms).await {
            tracing::warn!(group = name, warning = %w, "after deleting a replication group");
        }
        Ok(())
    }

    /// Tells each VM's source agent its protection (with or without its group); answers what
    /// could not be told.
    async fn push_protection(&self, vms: &[String]) -> Vec<String> {
        let Some(client) = self.agent_client() else {
            return vec![
                "no agent client: the agents learn the group when they are next told \
                         their protection"
                    .to_string(),
            ];
        };
        let mut warnings = Vec::new();
        for vm in vms {
            let told = async {
                let item = self.item(vm)?;
                let (_, store_url, policy) = self.item_store(vm)?;
                let def = self.vm(vm)?.definition;
                let host = self.live_host(&item.source_region)?;
                let spec = SourceSpec {
                    definition: def,
                    running: None,
                    protect: Some(protection(
                        store_url,
                        item.epoch,
                        &policy,
                        item.replication_group.clone(),
                    )),
                };
                let path = format!("/agent/v1/sources/{vm}");
                let _: SourceStatus = client.call(&host, Method::PUT, &path, Some(&spec)).await?;
                Ok::<(), VaultError>(())
            }
            .await;
            if let Err(e) = told {
                warnings.push(format!("VM {vm}: its agent was not told: {e}"));
            }
        }
        warnings
    }

    /// Every replication group.
    pub fn groups(&self) -> Result<Vec<Group>, VaultError> {
        let names: Vec<String> = self.db.tx("listing replication groups", |tx| {
            query_rows(
                tx,
                "listing replication groups",
                "SELECT name FROM replication_groups ORDER BY name",
                [],
                |r| r.get(0),
            )
        })?;
        names.iter().map(|n| self.group(n)).collect()
    }

    /// One replication group.
    pub fn group(&self, name: &str) -> Result<Group, VaultError> {
        self.db.tx("reading a replication group", |tx| {
            let created_at: i64 = tx
                .query_row(
                    "SELECT created_at FROM replication_groups WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql("reading a replication group"))?
                .ok_or_else(|| VaultError::NotFound {
                    kind: "replication group",
                    name: name.to_string(),
                })?;
            let vms = query_rows(
                tx,
                "listing a group's VMs",
                "SELECT vm FROM items WHERE replication_group = ?1 ORDER BY vm",
                params![name],
                |r| r.get(0),
            )?;
            let cuts: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM group_cuts WHERE grp = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .map_err(sql("counting a group's cuts"))?;
            let last = tx
                .query_row(
                    "SELECT id, time_ns, kind, members FROM group_cuts WHERE grp = ?1
                     ORDER BY time_ns DESC LIMIT 1",
                    params![name],
                    cut_of,
                )
                .optional()
                .map_err(sql("reading a group's cuts"))?;
            Ok(Group {
                name: name.to_string(),
                vms,
                created_at,
                cuts: cuts.max(0) as u64,
                last_cut: last.map(to_cut),
                warnings: Vec::new(),
            })
        })
    }

    /// The group's recorded cuts, newest first.
    pub fn group_cuts(&self, name: &str) -> Result<Vec<GroupCut>, VaultError> {
        self.group(name)?;
        let rows = self.db.tx("listing a group's cuts", |tx| {
            query_rows(
                tx,
                "listing a group's cuts",
                "SELECT id, time_ns, kind, members FROM group_cuts WHERE grp = ?1
                 ORDER BY time_ns DESC",
                params![name],
                cut_of,
            )
        })?;
        Ok(rows.into_iter().map(to_cut).collect())
    }

    /// The time (ns) of the group's newest cut of each kind, by kind name: what the schedule
    /// needs, read without listing every cut.
    pub(crate) fn newest_cuts(&self, name: &str) -> Result<HashMap<String, u64>, VaultError> {
        let rows: Vec<(String, i64)> = self.db.tx("reading a group's newest cuts", |tx| {
            query_rows(
                tx,
                "reading a group's newest cuts",
                "SELECT kind, MAX(time_ns) FROM group_cuts WHERE grp = ?1 GROUP BY kind",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|(k, ns)| (k, ns.max(0) as u64))
            .collect())
    }

    /// The group's cuts with each member's recovery point of it (from the target store),
    /// newest first.
    pub async fn group_points(&self, name: &str) -> Result<Vec<GroupPoint>, VaultError> {
        let group = self.group(name)?;
        let cuts = self.group_cuts(name)?;
        let mut by_vm: HashMap<String, HashMap<u64, String>> = HashMap::new();
        for vm in &group.vms {
            let (item, store_url, _) = self.item_store(vm)?;
            let store = Store::open(&store_url).map_err(|e| VaultError::Store {
                region: item.target_region.clone(),
                source: Box::new(e),
            })?;
            let id = VmId::new(vm).map_err(|e| VaultError::BadRequest(e.to_string()))?;
            let points: Vec<PointRecord> =
                store
                    .list_points(&id)
                    .await
                    .map_err(|e| VaultError::Store {
                        region: item.target_region.clone(),
                        source: Box::new(e),
                    })?;
            by_vm.insert(
                vm.clone(),
                points
                    .into_iter()
                    .filter(|p| p.is_restorable())
                    .map(|p| (p.time_ns, p.id))
                    .collect(),
            );
        }
        Ok(cuts
            .into_iter()
            .map(|cut| {
                let points: BTreeMap<String, Option<String>> = group
                    .vms
                    .iter()
                    .map(|vm| {
                        let p = by_vm.get(vm).and_then(|m| m.get(&cut.time_ns)).cloned();
                        (vm.clone(), p)
                    })
                    .collect();
                let complete = !points.is_empty() && points.values().all(Option::is_some);
                GroupPoint {
                    cut,
                    points,
                    complete,
                }
            })
            .collect())
    }

    /// Cuts one shared point across the group now (see the module doc); answers the recorded
    /// cut. An app-consistent cut whose freeze fails is made crash-consistent.
    pub async fn cut_group(
        &self,
        name: &str,
        kind: CheckpointKind,
    ) -> Result<GroupCut, VaultError> {
        let client = self.agent_client().ok_or_else(|| {
            VaultError::NoAgent("no agent can cut the group's points: start the agents".into())
        })?;
        let _one = self.cut_lock.lock().await;
        let group = self.group(name)?;
        if group.vms.is_empty() {
            return Err(VaultError::Conflict(format!(
                "replication group {name} has no VMs"
            )));
        }
        // The members, by the host they replicate from.
        let mut hosts: BTreeMap<String, (Host, Vec<String>)> = BTreeMap::new();
        for vm in &group.vms {
            let item = self.replicating_item(vm, &format!("replication group {name}: "))?;
            let host = self.live_host(&item.source_region)?;
            hosts
                .entry(host.name.clone())
                .or_insert_with(|| (host, Vec::new()))
                .1
                .push(vm.clone());
        }
        let cut = format!(
            "{name}-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let req = |vms: &[String]| CutRequest {
            cut: cut.clone(),
            vms: vms.to_vec(),
            hold_ms: HOLD_MS,
            kind: None,
            time_ns: None,
            freeze_timeout_ms: FREEZE_MS,
        };
        let phase = |verb: &'static str, body: Vec<(Host, CutRequest)>| {
            let client = client.clone();
            async move {
                let calls = body.into_iter().map(|(h, b)| {
                    let client = client.clone();
                    async move {
                        let path = format!("/agent/v1/cuts/{verb}");
                        client
                            .call::<CutAnswer>(&h, Method::POST, &path, Some(&b))
                            .await
                    }
                });
                futures::future::join_all(calls).await
            }
        };
        let all = |f: &dyn Fn(CutRequest) -> CutRequest| -> Vec<(Host, CutRequest)> {
            hosts
                .values()
                .map(|(h, vms)| (h.clone(), f(req(vms))))
                .collect()
        };
        let mut kind = kind;
        let mut frozen = false;
        if kind == CheckpointKind::AppConsistent {
            let answers = phase("freeze", all(&|r| r)).await;
            let failed: Vec<String> = answers
                .iter()
                .flat_map(|a| match a {
                    Ok(a) => a
                        .vms
                        .iter()
                        .filter_map(|v| v.error.as_ref().map(|e| format!("VM {}: {e}", v.vm)))
                        .collect(),
                    Err(e) => vec![e.to_string()],
                })
                .collect();
            frozen = true;
            if !failed.is_empty() {
                kind = CheckpointKind::CrashConsistent;
                let _ = phase("thaw", all(&|r| r)).await;
                frozen = false;
                self.group_event(
                    "warning",
                    name,
                    &format!(
                        "replication group {name}: the guests could not all be frozen ({}); \
                         this point is crash-consistent",
                        failed.join("; ")
                    ),
                );
            }
        }
        let result = async {
            let held = phase("hold", all(&|r| r)).await;
            if let Some(e) = held.into_iter().find_map(Result::err) {
                return Err(e);
            }
            let time_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let committed = phase(
                "commit",
                all(&|mut r| {
                    r.kind = Some(kind.to_string());
                    r.time_ns = Some(time_ns);
                    r
                }),
            )
            .await;
            let mut members = Vec::new();
            for a in committed {
                for v in a?.vms {
                    match (v.seq, v.error) {
                        (Some(seq), None) => members.push(CutMember { vm: v.vm, seq }),
                        (_, e) => {
                            return Err(VaultError::Conflict(format!(
                                "replication group {name}: VM {}'s marker failed ({}): the \
                                 cut is abandoned",
                                v.vm,
                                e.unwrap_or_default()
                            )))
                        }
                    }
                }
            }
            Ok((time_ns, members))
        }
        .await;
        if result.is_err() {
            let _ = phase("release", all(&|r| r)).await;
        }
        if frozen {
            for a in phase("thaw", all(&|r| r)).await {
                let failed: Vec<String> = match a {
                    Ok(a) => a
                        .vms
                        .into_iter()
                        .filter_map(|v| v.error.map(|e| format!("VM {}: {e}", v.vm)))
                        .collect(),
                    Err(e) => vec![e.to_string()],
                };
                for e in failed {
                    self.group_event(
                        "error",
                        name,
                        &format!("replication group {name}: thaw failed: {e}"),
                    );
                }
            }
        }
        let (time_ns, members) = result?;
        let members_json =
            serde_json::to_string(&members).map_err(|e| VaultError::BadRequest(e.to_string()))?;
        // Cuts older than the policy's retention have no points left: forgotten here.
        let retention = group
            .vms
            .first()
            .and_then(|vm| self.item_store(vm).ok())
            .map_or(MAX_CUT_AGE, |(_, _, p)| p.retention + CUT_AGE_MARGIN);
        let forget_before =
            time_ns.saturating_sub(retention.as_nanos().min(u64::MAX as u128) as u64);
        let id = self.db.tx("recording a cut", |tx| {
            tx.execute(
                "INSERT INTO group_cuts (grp, time_ns, kind, members, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name,
                    time_ns as i64,
                    kind.to_string(),
                    members_json,
                    now_ms()
                ],
            )
            .map_err(sql("recording a cut"))?;
            let id = tx.last_insert_rowid();
            forget_cuts(tx, name, forget_before)?;
            Ok(id)
        })?;
        Ok(to_cut((id, time_ns as i64, kind.to_string(), members_json)))
    }

    /// Cuts a recovery point of one VM now, at its source host (Zerto's "add checkpoint"):
    /// app-consistent (crash-consistent if the guest cannot be frozen) or crash-consistent.
    pub async fn checkpoint(
        &self,
        vm: &str,
        kind: CheckpointKind,
    ) -> Result<crate::agent_wire::CheckpointAnswer, VaultError> {
        let item = self.replicating_item(vm, "")?;
        if let Some(g) = &item.replication_group {
            return Err(VaultError::Conflict(format!(
                "VM {vm} is in replication group {g}: its points are the group's (`lifeboat \
                 group cut {g}`)"
            )));
        }
        let client = self.agent_client().ok_or_else(|| {
            VaultError::NoAgent("no agent can cut the point: start the agents".into())
        })?;
        let host = self.live_host(&item.source_region)?;
        let body = crate::agent_wire::CheckpointRequest {
            kind: Some(kind.to_string()),
        };
        client
            .call(
                &host,
                Method::POST,
                &format!("/agent/v1/sources/{vm}/checkpoint"),
                Some(&body),
            )
            .await
    }

    /// The item of `vm`, which must replicate (a point can be cut); `context` prefixes the
    /// refusal.
    fn replicating_item(&self, vm: &str, context: &str) -> Result<crate::model::Item, VaultError> {
        let item = self.item(vm)?;
        let state: ItemState = item.state.parse().map_err(|_| VaultError::Corrupt {
            what: "item state",
            value: item.state.clone(),
        })?;
        if !crate::service::replicates(state) {
            return Err(VaultError::Conflict(format!(
                "{context}VM {vm} is {} and does not replicate: no recovery point to cut",
                item.state
            )));
        }
        Ok(item)
    }

    fn group_event(&self, level: &str, group: &str, message: &str) {
        tracing::warn!(group, "{message}");
        let _ = self.db.tx("recording an event", |tx| {
            event(tx, level, None, None, message)
        });
    }

    /// Starts `op` on every VM of the group in one transaction (all or none). Failover and
    /// test failover take a group point: `latest-multi-vm-processed` (default),
    /// `latest-multi-vm-app-consistent` or `cut-<id>`; each member gets its own point of it.
    pub async fn group_operation(
        &self,
        name: &str,
        op: Operation,
        req: &OperationRequest,
    ) -> Result<Vec<Job>, VaultError> {
        let group = self.group(name)?;
        let mut per_vm: Vec<(String, OperationRequest)> = group
            .vms
            .iter()
            .map(|vm| {
                let mut r = req.clone();
                r.group = Some(name.to_string());
                (vm.clone(), r)
            })
            .collect();
        if matches!(op, Operation::Failover | Operation::TestFailover) {
            let choice = req
                .recovery_point
                .clone()
                .unwrap_or_else(|| "latest-multi-vm-processed".to_string());
            let points = self.group_points(name).await?;
            let point = choose_group_point(name, &choice, &points)?;
            for (vm, r) in &mut per_vm {
                r.recovery_point = point.points.get(vm.as_str()).cloned().flatten();
            }
        } else if req.recovery_point.is_some() {
            return Err(VaultError::BadRequest(format!(
                "a recovery point does not apply to {op}"
            )));
        }
        self.start_many(op, &per_vm)
    }
}

/// The group point `choice` names among `points` (newest first): only complete ones count.
pub fn choose_group_point<'a>(
    group: &str,
    choice: &str,
    points: &'a [GroupPoint],
) -> Result<&'a GroupPoint, VaultError> {
    let complete = points.iter().filter(|p| p.complete);
    let found = match choice {
        "latest-multi-vm-processed" => complete.into_iter().next(),
        "latest-multi-vm-app-consistent" => complete
            .into_iter()
            .find(|p| p.cut.kind == CheckpointKind::AppConsistent.to_string()),
        other => match other
            .strip_prefix("cut-")
            .and_then(|n| n.parse::<i64>().ok())
        {
            Some(id) => {
                let p = points.iter().find(|p| p.cut.id == id).ok_or_else(|| {
                    VaultError::BadRequest(format!(
                        "replication group {group} has no cut {other}: see `lifeboat group \
                         points {group}`"
                    ))
                })?;
                if !p.complete {
                    let missing: Vec<String> = p
                        .points
                        .iter()
                        .filter(|(_, v)| v.is_none())
                        .map(|(k, _)| k.to_string())
                        .collect();
                    return Err(VaultError::Conflict(format!(
                        "cut {other} of replication group {group} has no recovery point yet for \
                         VM {}: wait for processing, or choose another cut",
                        missing.join(", ")
                    )));
                }
                Some(p)
            }
            None => {
                return Err(VaultError::BadRequest(format!(
                    "replication group {group}: recovery point {other:?} is not a group point: \
                     use latest-multi-vm-processed, latest-multi-vm-app-consistent or cut-<id> \
                     (a single VM's point would break the group's consistency)"
                )))
            }
        },
    };
    found.ok_or_else(|| {
        VaultError::Conflict(format!(
            "replication group {group} has no {choice} point: no cut has been processed for \
             every VM yet (see `lifeboat group points {group}`)"
        ))
    })
}

/// Forgets `group`'s cuts taken before `before_ns`; returns how many.
fn forget_cuts(
    tx: &rusqlite::Transaction<'_>,
    group: &str,
    before_ns: u64,
) -> Result<usize, VaultError> {
    tx.execute(
        "DELETE FROM group_cuts WHERE grp = ?1 AND time_ns < ?2",
        params![group, i64::try_from(before_ns).unwrap_or(i64::MAX)],
    )
    .map_err(sql("forgetting old cuts"))
}

/// Cuts every group's points on its policy's schedule, until the process ends: the group's
/// crash-consistent interval and app-consistent frequency, as an agent does for a lone VM.
pub async fn run_cutter(vault: Vault) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: HashMap<String, u32> = HashMap::new();
    loop {
        every.tick().await;
        let Ok(groups) = vault.groups() else { continue };
        for g in groups {
            let Some(first) = g.vms.first() else { continue };
            let Ok((_, _, policy)) = vault.item_store(first) else {
                continue;
            };
            let Ok(newest) = vault.newest_cuts(&g.name) else {
                continue;
            };
            let at = |k: CheckpointKind| {
                newest
                    .get(&k.to_string())
                    .map(|ns| UNIX_EPOCH + Duration::from_nanos(*ns))
            };
            let due = lifeboat_policy::due_checkpoints(
                at(CheckpointKind::CrashConsistent),
                at(CheckpointKind::AppConsistent),
                &policy,
                SystemTime::now(),
            );
            let Some(kind) = due.kind() else { continue };
            match vault.cut_group(&g.name, kind).await {
                Ok(_) => {
                    failing.remove(&g.name);
                }
                Err(e) => {
                    let n = failing.entry(g.name.clone()).or_default();
                    *n += 1;
                    // One event per streak of failures, not one per tick.
                    if *n == 1 {
                        vault.group_event(
                            "warning",
                            &g.name,
                            &format!("replication group {}: cut failed: {e}", g.name),
                        );
                    }
                }
            }
        }
    }
}

/// The refusal of `op` on `vm` alone when it is in a replication group.
pub(crate) fn refuse_alone(
    vm: &str,
    group: Option<&str>,
    op: Operation,
    req: &OperationRequest,
) -> Result<(), VaultError> {
    let Some(g) = group else { return Ok(()) };
    let shared = matches!(
        op,
        Operation::Failover | Operation::TestFailover | Operation::ChangeRecoveryPoint
    );
    if shared && req.group.as_deref() != Some(g) {
        return Err(VaultError::Conflict(format!(
            "VM {vm} is in replication group {g}: {op} of a single VM of a group is not allowed \
             (it would break the group's consistency); use `lifeboat group {op} {g}`"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: i64, kind: CheckpointKind, complete: bool) -> GroupPoint {
        let mut points = BTreeMap::new();
        points.insert("a".to_string(), Some(format!("pa{id}")));
        points.insert("b".to_string(), complete.then(|| format!("pb{id}")));
        GroupPoint {
            cut: GroupCut {
                id,
                time_ns: id as u64,
                time_utc: String::new(),
                kind: kind.to_string(),
                members: Vec::new(),
            },
            points,
            complete,
        }
    }

    #[test]
    fn group_points_are_chosen_among_complete_cuts_only() {
        use CheckpointKind::{AppConsistent as A, CrashConsistent as C};
        let pts = vec![point(5, C, false), point(4, C, true), point(3, A, true)];
        let c = |s| choose_group_point("g", s, &pts).map(|p| p.cut.id);
        assert_eq!(c("latest-multi-vm-processed").ok(), Some(4));
        assert_eq!(c("latest-multi-vm-app-consistent").ok(), Some(3));
        assert_eq!(c("cut-4").ok(), Some(4));
        let e = c("cut-5").expect_err("incomplete").to_string();
        assert!(e.contains("VM b"), "{e}");
        let e = c("latest").expect_err("single-VM choice").to_string();
        assert!(e.contains("not a group point"), "{e}");
        let e = c("cut-9").expect_err("unknown").to_string();
        assert!(e.contains("no cut cut-9"), "{e}");
        let none = vec![point(1, C, false)];
        let e = choose_group_point("g", "latest-multi-vm-processed", &none)
            .expect_err("none complete")
            .to_string();
        assert!(e.contains("no latest-multi-vm-processed point"), "{e}");
    }

    #[test]
    fn old_cuts_are_forgotten_and_other_groups_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = crate::db::Db::open(&dir.path().join("v.db")).expect("db");
        let count = |g: &str| {
            db.tx("count", |tx| {
                tx.query_row(
                    "SELECT COUNT(*) FROM group_cuts WHERE grp = ?1",
                    params![g],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(sql("count"))
            })
            .expect("count")
        };
        db.tx("setup", |tx| {
            for g in ["g", "h"] {
                tx.execute(
                    "INSERT INTO replication_groups (name, created_at) VALUES (?1, 0)",
                    params![g],
                )
                .map_err(sql("group"))?;
                for t in [10_i64, 20, 30] {
                    tx.execute(
                        "INSERT INTO group_cuts (grp, time_ns, kind, members, created_at)
                         VALUES (?1, ?2, 'crash-consistent', '[]', 0)",
                        params![g, t],
                    )
                    .map_err(sql("cut"))?;
                }
            }
            Ok(())
        })
        .expect("setup");
        let n = db
            .tx("forget", |tx| forget_cuts(tx, "g", 20))
            .expect("forget");
        assert_eq!(n, 1);
        assert_eq!((count("g"), count("h")), (2, 3));
        let n = db
            .tx("forget", |tx| forget_cuts(tx, "g", u64::MAX))
            .expect("forget all");
        assert_eq!((n, count("g"), count("h")), (2, 0, 3));
    }

    #[test]
    fn a_member_alone_is_refused_shared_operations_only() {
        let req = OperationRequest::default();
        for op in [
            Operation::Failover,
            Operation::TestFailover,
            Operation::ChangeRecoveryPoint,
        ] {
            let e = refuse_alone("a", Some("g"), op, &req).expect_err("alone");
            assert!(e.to_string().contains("replication group g"), "{e}");
            let mut ok = req.clone();
            ok.group = Some("g".into());
            refuse_alone("a", Some("g"), op, &ok).expect("as the group");
        }
        for op in [Operation::Commit, Operation::Reprotect] {
            refuse_alone("a", Some("g"), op, &req).expect("commit and reprotect alone");
        }
        refuse_alone("a", None, Operation::Failover, &req).expect("not in a group");
    }
}
