//! The protocol between the vault and the agents (JSON over HTTP, the same bearer token).
//!
//! The vault drives an agent by **desired state**: `PUT` of what a VM should be on that host
//! (a protected source, a replica being processed, a recovered VM); the agent converges to it
//! and answers with its status, so every call is idempotent and a retried call (after a vault
//! or agent restart) does no harm. The agent persists each desired state (write-temp-then-
//! rename plus fsync) and restores it when it starts again.
//!
//! Routes of the agent (all under the bearer token):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /agent/v1/status` | | [`HostReport`] |
//! | `PUT /agent/v1/sources/{vm}` | [`SourceSpec`] | [`SourceStatus`] |
//! | `POST /agent/v1/sources/{vm}/shutdown` | [`ShutdownRequest`] | [`ShutdownAnswer`] |
//! | `POST /agent/v1/sources/{vm}/checkpoint` | [`CheckpointRequest`] | [`CheckpointAnswer`] |
//! | `PUT /agent/v1/replicas/{vm}` | [`ReplicaSpec`] | [`ReplicaStatus`] |
//! | `POST /agent/v1/replicas/{vm}/process` | | [`ReplicaStatus`] |
//! | `DELETE /agent/v1/replicas/{vm}` | | `{}` |
//! | `PUT /agent/v1/recovered/{vm}` | [`RecoverSpec`] | [`RecoveredStatus`] |
//! | `POST /agent/v1/recovered/{vm}/commit` | | [`RecoveredStatus`] |
//! | `DELETE /agent/v1/recovered/{vm}` | | `{}` |
//! | `POST /agent/v1/recovered/{vm}/reverse` | [`ReverseRequest`] | [`ReverseAnswer`] |
//! | `POST /agent/v1/recovered/{vm}/digests` | [`DigestRequest`] | [`DigestAnswer`] |
//! | `POST /agent/v1/recovered/{vm}/resync` | [`ResyncRequest`] | [`RecoveredStatus`] |
//! | `GET /agent/v1/local/{vm}` | | [`LocalDisks`] |
//! | `POST /agent/v1/local/{vm}/release` | [`ReleaseRequest`] | [`LocalDisks`] |
//! | `POST /agent/v1/local/{vm}/digests` | [`DigestRequest`] | [`DigestAnswer`] |
//! | `POST /agent/v1/local/{vm}/seed` | [`SeedRequest`] | [`LocalDisks`] |
//! | `DELETE /agent/v1/local/{vm}` | | `{}` |
//! | `POST /agent/v1/vms/{vm}/start`, `.../stop` | | the VM's status |
//! | `PUT /agent/v1/drills/{vm}` | [`RecoverSpec`] (`drill: true`) | [`RecoveredStatus`] |
//! | `POST /agent/v1/drills/{vm}/start`, `.../stop`, `.../kill` (cleanup) | | [`RecoveredStatus`] |
//! | `DELETE /agent/v1/drills/{vm}` | | `{}` (the copy and its writes are gone, the pin too) |
//! | `POST /agent/v1/cuts/freeze`, `hold`, `commit`, `release`, `thaw` | [`CutRequest`] | [`CutAnswer`] |
//!
//! A **multi-VM cut** (a replication group's shared point): the vault freezes the members'
//! guest filesystems (app-consistent cuts only), holds every member's journal writes on every
//! host, and only when all are held commits: each journal gets a marker with the same kind and
//! time, and its writes go on. Any failure releases (and thaws) everything and the cut is
//! abandoned; a hold expires by itself after `hold_ms`, so a vault that dies mid-cut never
//! stalls a guest for longer.
//!
//! Re-protect (the vault's `reprotect` job): the host with the **original disks** releases
//! them (`local/{vm}/release`: the old source or recovered VM is closed, never started again,
//! and its journal's writes after the recovery point are summarized); the host running the VM
//! turns its journal into the source of a reverse replication (`recovered/{vm}/reverse`: the
//! position `p0` from which it ships, and the resync plan) and re-journals what diverged
//! (`resync`); the original host seeds its region's store from the original disks as the
//! initial copy at `p0`, consistent from the resync's end (`local/{vm}/seed`).
//!
//! Errors are the vault's [`crate::error::ErrorBody`] (`error` and `causes`).
//!
//! Routes of the vault for agents: `POST /api/hosts` (register, also the heartbeat) and
//! `POST /api/hosts/{name}/report` with a [`HostReport`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Protection of a source VM: where its journal ships to, with which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// The target region's store URL.
    pub store_url: String,
    /// The replication epoch (segments carry it; the store refuses older ones).
    pub epoch: u64,
    /// A crash-consistent checkpoint marker this often (seconds; 0: none).
    #[serde(default = "default_point_secs")]
    pub point_secs: u64,
    /// An app-consistent point (guest filesystems frozen through the QEMU guest agent) this
    /// often (seconds; 0: none).
    #[serde(default)]
    pub app_secs: u64,
    /// The replication group the VM belongs to: its points are then cut by the vault across
    /// the whole group (`cuts/*`), and the agent cuts none of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

fn default_point_secs() -> u64 {
    300
}

/// What a VM should be on its source host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The VM's definition (as the vault holds it: disks are raw image files on the host).
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// Start (true) or stop (false) QEMU; absent: leave it as it is.
    #[serde(default)]
    pub running: Option<bool>,
    /// Ship its writes to a region store; absent: replication off.
    #[serde(default)]
    pub protect: Option<Protection>,
}

/// Initial replication of a source VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CopyState {
    /// Percent copied.
    pub percent: u8,
    /// The store has a copy (or had recovery points before).
    pub done: bool,
    /// Why the last attempt failed (it is retried).
    pub error: Option<String>,
}

/// A source VM on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SourceStatus {
    /// The VM.
    pub vm: String,
    /// QEMU runs.
    pub running: bool,
    /// The VM's serial console log on the host.
    pub serial_log: String,
    /// Replication is on.
    pub protected: bool,
    /// The replication epoch the journal carries.
    pub epoch: u64,
    /// Initial replication.
    pub copy: CopyState,
    /// Every write acknowledged before this instant (ms since 1970) is in the target store.
    pub replicated_as_of: Option<i64>,
    /// The store refused this host's segments (the VM failed over elsewhere): why.
    pub fenced: Option<String>,
    /// The last journal record.
    pub last_seq: u64,
    /// App-consistent points that failed in a row (the guest could not be frozen; each became
    /// crash-consistent).
    #[serde(default)]
    pub app_misses: u32,
    /// Why the last one failed.
    #[serde(default)]
    pub app_error: Option<String>,
}

/// Cut a recovery point of one VM now (`POST /agent/v1/sources/{vm}/checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// `crash-consistent` (default) or `app-consistent`.
    #[serde(default)]
    pub kind: Option<String>,
}

/// The marker a checkpoint appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointAnswer {
    /// The VM.
    pub vm: String,
    /// The marker's journal position.
    pub seq: u64,
    /// Its kind (crash-consistent when an app-consistent one could not freeze the guest).
    pub kind: String,
    /// Why the guest could not be frozen.
    pub freeze_error: Option<String>,
}

/// Shut a source VM down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// Seconds the guest gets to power off after the ACPI power button.
    #[serde(default = "default_shutdown_secs")]
    pub timeout_secs: u64,
}

fn default_shutdown_secs() -> u64 {
    30
}

/// How the shutdown went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShutdownAnswer {
    /// What stopped QEMU (or that it was not running).
    pub report: String,
    /// Every write up to this record is in the target store (when protected).
    pub shipped_through: Option<u64>,
}

/// A replica: the target region's processing of a VM's journal into recovery points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    /// The target region's store URL.
    pub store_url: String,
    /// No journal-backed point is stored sooner than this after its base (seconds; the store
    /// rule `lifeboat_process::StoreRule` decides when, bounding what reading the newest point
    /// replays; retention rolls the base forward besides).
    #[serde(default = "default_store_secs")]
    pub store_secs: u64,
    /// The item's replication policy (retention, CDP window); absent: the default.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub policy: Option<lifeboat_policy::ReplicationPolicy>,
}

fn default_store_secs() -> u64 {
    300
}

/// A replica's processing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaStatus {
    /// The VM.
    pub vm: String,
    /// The newest restorable point's id.
    pub newest_point: Option<String>,
    /// Its time (ms since 1970).
    pub newest_point_time: Option<i64>,
    /// The last processing error, if the last pass failed.
    pub error: Option<String>,
}

/// Recover a VM from a recovery point at this host (failover, change recovery point).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverSpec {
    /// The VM's definition (its disks give their count; the agent serves each from the point).
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// The store holding the point.
    pub store_url: String,
    /// `latest-processed`, `latest`, `latest-app-consistent`, a point id, or a time.
    pub recovery_point: String,
    /// The epoch of the recovered VM's journal.
    pub epoch: u64,
    /// A DR drill copy: not hydrated, its writes discarded at cleanup, every NIC on an
    /// isolated network (QEMU user networking with `restrict=on`), the point pinned in the
    /// store while it runs.
    #[serde(default)]
    pub drill: bool,
}

/// A recovered VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecoveredStatus {
    /// The VM.
    pub vm: String,
    /// The point it was recovered from (id, or the time asked for).
    pub point: String,
    /// The point's journal position.
    pub point_seq: u64,
    /// The point's time (ms since 1970).
    pub point_time: i64,
    /// The point's time as UTC text.
    pub point_time_utc: String,
    /// QEMU runs.
    pub running: bool,
    /// The VM's serial console log on the host.
    pub serial_log: String,
    /// Percent of the disks hydrated (local).
    pub hydrated_percent: f64,
    /// Every disk is local.
    pub hydrated: bool,
    /// Seconds the hydration runs took so far (the longest disk's).
    #[serde(default)]
    pub hydration_secs: f64,
    /// The failover was committed: the disks are final.
    pub committed: bool,
    /// The last hydration error.
    pub error: Option<String>,
    /// Reverse replication (re-protect), when on.
    #[serde(default)]
    pub reverse: Option<ReverseStatus>,
}

/// Everything an agent runs (its answer to `GET /agent/v1/status`, and its report to the vault).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostReport {
    /// Source VMs.
    pub sources: Vec<SourceStatus>,
    /// Replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// Recovered VMs.
    pub recovered: Vec<RecoveredStatus>,
}

/// What the original disks' host knows, for the resync plan (see `lifeboat_policy::resync`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    /// Where the reverse replication ships (the original region's store), with the epoch.
    pub protect: Protection,
    /// The original disks' sizes; absent when they cannot be reused.
    #[serde(default)]
    pub original_sizes: Option<Vec<u64>>,
    /// Why the original disks cannot be reused.
    #[serde(default)]
    pub unusable: Option<String>,
    /// The old source's writes after the point as summarized at commit.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub after_point_store: Option<lifeboat_policy::Covered>,
    /// The old source's spool after the point.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub old_spool: Option<lifeboat_policy::Covered>,
}

/// The resync plan a recovered VM made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReverseAnswer {
    /// The reverse replication ships the records after this position.
    pub p0: u64,
    /// `delta`, `digests` or `full`.
    pub plan: String,
    /// Why not `delta`.
    pub why: Option<String>,
    /// For `delta`: the bytes to send.
    pub bytes: u64,
    /// For `delta`: the ranges to send.
    pub ranges: u64,
}

/// Block digests of a VM's disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DigestRequest {
    /// Block size in bytes.
    pub block: u64,
}

/// Block digests (16 bytes of BLAKE3 per block, hex, concatenated), per disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DigestAnswer {
    /// Block size in bytes.
    pub block: u64,
    /// Disk sizes.
    pub sizes: Vec<u64>,
    /// Per disk, the digests.
    pub disks: Vec<String>,
}

/// What a resync sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ResyncRequest {
    /// The ranges of the plan the reverse call made (`delta`).
    Planned,
    /// These ranges, per disk (from digests).
    Ranges {
        /// Per disk.
        #[schema(value_type = Object)]
        disks: Vec<lifeboat_types::Extents>,
    },
    /// Everything: a full initial copy into the store.
    Full,
}

/// A reverse replication's resync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReverseStatus {
    /// It ships the records after this position.
    pub p0: u64,
    /// The resync asked for (`planned`, `ranges`, `full`), if any.
    pub resync: Option<String>,
    /// Percent done.
    pub percent: u8,
    /// Bytes re-journaled (or copied) so far.
    pub bytes: u64,
    /// Done: every diverged range is in the journal at or before `end`.
    pub done: bool,
    /// The journal position after the resync.
    pub end: Option<u64>,
    /// The last error (it is retried).
    pub error: Option<String>,
}

/// Release of the original disks of a VM at this host (re-protect reuses them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The recovery point's position (in this host's journal): writes after it are summarized.
    pub after_seq: u64,
}

/// Seed the original region's store from the released disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeedRequest {
    /// The store.
    pub store_url: String,
    /// The epoch of the reverse replication.
    pub epoch: u64,
    /// The initial copy's position (the reverse's `p0`).
    pub start: u64,
    /// The position from which it is consistent (the resync's end).
    pub end: u64,
}

/// A VM's disks at this host that re-protect can reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocalDisks {
    /// The VM.
    pub vm: String,
    /// `source` (its original disks), `recovered` (disks of an earlier failover) or `released`.
    pub kind: String,
    /// The images.
    pub images: Vec<String>,
    /// Their sizes (absent when unusable).
    pub sizes: Option<Vec<u64>>,
    /// Why they cannot be reused.
    pub unusable: Option<String>,
    /// The journal's writes after the asked position (on release).
    #[schema(value_type = Object)]
    pub old_spool: Option<lifeboat_policy::Covered>,
    /// Seeding of the store from them.
    pub seed: Option<CopyState>,
}

/// One phase of a multi-VM cut, for the listed VMs at this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CutRequest {
    /// The cut's id (the same for every phase and host).
    pub cut: String,
    /// The VMs at this host (replicating sources).
    pub vms: Vec<String>,
    /// `hold`: how long the writes may stay held at most (milliseconds).
    #[serde(default)]
    pub hold_ms: u64,
    /// `commit`: `crash-consistent` or `app-consistent`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `commit`: the cut's time, nanoseconds since 1970 (every member's marker carries it).
    #[serde(default)]
    pub time_ns: Option<u64>,
    /// `freeze`: how long the guest agent may take to freeze (milliseconds).
    #[serde(default)]
    pub freeze_timeout_ms: u64,
}

/// The outcome of a cut phase per VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CutAnswer {
    /// One per VM of the request, in its order.
    pub vms: Vec<CutVm>,
}

/// The outcome of a cut phase for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CutVm {
    /// The VM.
    pub vm: String,
    /// `commit`: the marker's journal position.
    pub seq: Option<u64>,
    /// `freeze`/`thaw`: how many filesystems.
    pub filesystems: Option<u32>,
    /// Why this VM's phase failed (the cut is then abandoned).
    pub error: Option<String>,
}

impl CutVm {
    /// A phase that went well for `vm` (and says nothing more).
    pub fn ok(vm: &str) -> Self {
        CutVm {
            vm: vm.to_string(),
            seq: None,
            filesystems: None,
            error: None,
        }
    }
}
