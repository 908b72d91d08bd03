//! The API's resources (JSON), shared with the CLI.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A region: where a VM runs or replicates to, with its recovery-point store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// `[A-Za-z0-9._-]{1,64}`, e.g. `primary`.
    pub name: String,
    /// The region store's URL (a directory path, `file://`, `s3://`, `az://`).
    pub store_url: String,
}

/// What an agent sends to register its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    /// The host's name, unique.
    pub name: String,
    /// Its region (must exist).
    pub region: String,
    /// Where the vault reaches the agent (`http://127.0.0.1:PORT`).
    pub url: String,
}

/// A hypervisor host with its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Host {
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// The agent's URL.
    pub url: String,
    /// First registration (ms since 1970).
    pub registered_at: i64,
    /// Last registration or heartbeat (ms since 1970).
    pub last_seen: i64,
}

/// A replication policy (see `lifeboat_policy::ReplicationPolicy`: durations as text such as
/// `24h`, `5m`, `off`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// Its settings.
    #[schema(value_type = Object)]
    pub policy: lifeboat_policy::ReplicationPolicy,
}

/// A VM to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    /// `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// The region it runs in.
    pub region: String,
    /// Its definition (vCPUs, memory, disks, NICs), as the QEMU driver reads it.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

/// A VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    /// Name.
    pub name: String,
    /// The region it runs in.
    pub region: String,
    /// Its definition.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    /// When it was created (ms since 1970).
    pub created_at: i64,
}

/// Enable replication of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectRequest {
    /// The VM.
    pub vm: String,
    /// The replication policy (default `default`).
    #[serde(default = "default_policy")]
    pub policy: String,
    /// The region to replicate to.
    pub target_region: String,
    /// vCPUs of the VM after failover (default: as defined).
    #[serde(default)]
    pub target_vcpus: Option<u32>,
    /// Memory of the VM after failover, MiB (default: as defined).
    #[serde(default)]
    pub target_memory_mib: Option<u64>,
}

fn default_policy() -> String {
    "default".to_string()
}

/// Parameters of an operation on an item (those that do not apply are refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperationRequest {
    /// Failover, change recovery point, test failover: `latest-processed`, `latest`,
    /// `latest-app-consistent`, a point id, or a time inside the CDP window
    /// (`YYYY-MM-DDTHH:MM:SS[.fff]Z` or `@UNIXSECONDS`).
    #[serde(default)]
    pub recovery_point: Option<String>,
    /// Failover: shut the source VM down first (best effort).
    #[serde(default)]
    pub shutdown_source: bool,
    /// With `shutdown_source`: seconds the guest gets to power off after the ACPI power
    /// button before QEMU is told to quit (default 30, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Cleanup test failover: the operator's notes.
    #[serde(default)]
    pub notes: Option<String>,
    /// Set by the vault on each member's job of a replication group's operation (an API body
    /// that sets it is refused: use the group's operation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// A replicated item: a protected VM and its replication state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    /// The VM.
    pub vm: String,
    /// State (kebab-case name, e.g. `failed-over`).
    pub state: String,
    /// State as operators read it (e.g. `Failed over (not committed)`).
    pub state_label: String,
    /// Operations allowed now.
    pub allowed_operations: Vec<String>,
    /// Replication policy.
    pub policy: String,
    /// Region it replicates from.
    pub source_region: String,
    /// Region it replicates to.
    pub target_region: String,
    /// Region the VM runs in now.
    pub active_region: String,
    /// Initial replication progress.
    pub percent_synced: u8,
    /// Replication epoch (failover raises it).
    pub epoch: u64,
    /// The running job, if any.
    pub job: Option<i64>,
    /// Recovery point objective: how far behind the active region the replica is (ms), from
    /// what the source agent reported; absent when not replicating or never reported.
    #[serde(default)]
    pub rpo_ms: Option<i64>,
    /// Failed over: percent of the disks made local at the target (hydration).
    #[serde(default)]
    pub hydrated_percent: Option<u8>,
    /// vCPUs of the VM after failover (absent: as defined).
    #[serde(default)]
    pub target_vcpus: Option<u32>,
    /// Memory of the VM after failover in MiB (absent: as defined).
    #[serde(default)]
    pub target_memory_mib: Option<u64>,
    /// The DR drill (test failover) in place, until its cleanup.
    #[serde(default)]
    pub drill: Option<Drill>,
    /// When the last successful drill was cleaned up (ms since 1970): a drill counts only when
    /// its test failover and its cleanup both succeeded, as in ASR.
    #[serde(default)]
    pub last_drill_at: Option<i64>,
    /// The operator's notes of the last drill.
    #[serde(default)]
    pub last_drill_notes: Option<String>,
    /// The replication group (multi-VM consistency) the VM belongs to.
    #[serde(default)]
    pub replication_group: Option<String>,
    /// App-consistent points that failed in a row (each became crash-consistent).
    #[serde(default)]
    pub app_misses: u32,
    /// Why the last one failed.
    #[serde(default)]
    pub app_error: Option<String>,
    /// Last change (ms since 1970).
    pub updated_at: i64,
}

/// A DR drill (test failover) of an item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Drill {
    /// The point the drill copy booted from (id, or the time asked for).
    pub point: String,
    /// Its journal position.
    pub point_seq: u64,
    /// The host the copy runs on.
    pub host: String,
    /// Started (ms since 1970).
    pub started_at: i64,
    /// The test failover succeeded (the copy runs).
    pub succeeded: bool,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    /// What it does.
    pub name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`.
    pub status: String,
    /// Details (what went wrong, what was skipped and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A job: one operation on one item, with steps and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Id.
    pub id: i64,
    /// The operation (kebab-case).
    pub operation: String,
    /// The VM.
    pub vm: Option<String>,
    /// `running`, `succeeded`, `failed`.
    pub status: String,
    /// Percent done.
    pub progress: u8,
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// The request.
    pub params: OperationRequest,
    /// Why it failed (whole cause chain) and what to do.
    pub error: Option<String>,
    /// Created (ms since 1970).
    pub created_at: i64,
    /// Finished (ms since 1970).
    pub finished_at: Option<i64>,
}

/// An event of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Id (increasing).
    pub id: i64,
    /// When (ms since 1970).
    pub at: i64,
    /// `info`, `warning`, `error`.
    pub level: String,
    /// The VM concerned.
    pub vm: Option<String>,
    /// The job concerned.
    pub job: Option<i64>,
    /// What happened.
    pub message: String,
}

/// A recovery point, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PointInfo {
    /// Its id (`<journal position>-<crash|app>`).
    pub id: String,
    /// Its time (ms since 1970).
    pub time: i64,
    /// `crash-consistent` or `app-consistent`.
    pub kind: String,
    /// `stored`, `journal` (journal-backed) or `initial-copy` (never restored).
    pub form: String,
    /// "N of M disks".
    pub disks: String,
}

/// An item's replication health and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthInfo {
    /// `healthy`, `warning`, `critical`, or `none` (not protected).
    pub health: String,
    /// Every reason, worst first (empty when healthy).
    pub reasons: Vec<String>,
    /// The newest crash-consistent point.
    pub latest_crash_consistent: Option<PointInfo>,
    /// The newest app-consistent point.
    pub latest_app_consistent: Option<PointInfo>,
}
