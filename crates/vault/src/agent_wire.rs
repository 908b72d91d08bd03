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
//! | `PUT /agent/v1/replicas/{vm}` | [`ReplicaSpec`] | [`ReplicaStatus`] |
//! | `POST /agent/v1/replicas/{vm}/process` | | [`ReplicaStatus`] |
//! | `DELETE /agent/v1/replicas/{vm}` | | `{}` |
//! | `PUT /agent/v1/recovered/{vm}` | [`RecoverSpec`] | [`RecoveredStatus`] |
//! | `POST /agent/v1/recovered/{vm}/commit` | | [`RecoveredStatus`] |
//! | `DELETE /agent/v1/recovered/{vm}` | | `{}` |
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
    /// rule `lifeboat_process::StoreRule` decides when, weighing the journal kept against the
    /// chunks a stored point adds over the policy's retention).
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
