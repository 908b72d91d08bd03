//! The REST API (JSON over HTTP, bearer token). Every error is a JSON [`ErrorBody`] with the
//! whole cause chain; malformed bodies are 400 with serde's reason, wrong-state operations 409
//! with the state and the allowed operations.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lifeboat_types::Operation;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::OpenApi;

use crate::agent_wire::{CopyState, HostReport, RecoveredStatus, ReplicaStatus, SourceStatus};
use crate::error::{ErrorBody, VaultError};
use crate::groups::{CreateGroup, CutMember, Group, GroupCut, GroupPoint};
use crate::model::{
    CreateVm, Event, HealthInfo, Host, Item, Job, OperationRequest, PointInfo, Policy,
    ProtectRequest, Region, RegisterHost, Step, Vm,
};
use crate::plan::{PlanDefinition, PlanInfo, PlanOperation, PlanRequest, PlanRun};
use crate::service::Vault;

#[derive(Clone)]
struct AppState {
    vault: Vault,
    token: Arc<String>,
}

type ApiResult<T> = Result<Json<T>, VaultError>;

/// Parses a JSON body, turning serde's complaint into a 400 naming the resource.
fn body<T: DeserializeOwned>(what: &str, bytes: &Bytes) -> Result<T, VaultError> {
    serde_json::from_slice(bytes)
        .map_err(|e| VaultError::BadRequest(format!("bad {what} body: {e}")))
}

/// Equal in time whatever the contents (tokens are compared this way).
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), st.token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        VaultError::Unauthorized.into_response()
    }
}

/// The API's router, every route but the OpenAPI document behind the bearer token.
pub fn router(vault: Vault, token: String) -> Router {
    let st = AppState {
        vault,
        token: Arc::new(token),
    };
    let portal = crate::portal::router(st.vault.clone(), st.token.clone());
    let api = Router::new()
        .route("/api/regions", get(list_regions).post(add_region))
        .route("/api/hosts", get(list_hosts).post(register_host))
        .route("/api/hosts/{name}/report", post(host_report))
        .route("/api/policies", get(list_policies))
        .route("/api/policies/{name}", put(put_policy))
        .route("/api/vms", get(list_vms).post(create_vm))
        .route("/api/vms/{name}/{verb}", post(vm_power))
        .route("/api/items", get(list_items).post(protect))
        .route("/api/items/{vm}", get(get_item))
        .route("/api/items/{vm}/points", get(item_points))
        .route("/api/items/{vm}/health", get(item_health))
        .route("/api/items/{vm}/reprotect-plan", get(reprotect_plan))
        .route("/api/items/{vm}/checkpoint", post(item_checkpoint))
        .route("/api/items/{vm}/{operation}", post(operate))
        .route("/api/groups", get(list_groups).post(create_group))
        .route("/api/groups/{name}", get(get_group).delete(delete_group))
        .route("/api/groups/{name}/points", get(group_points))
        .route("/api/groups/{name}/cut", post(cut_group))
        .route("/api/groups/{name}/{operation}", post(group_operation))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/events", get(list_events))
        .route("/api/plans", get(list_plans).post(create_plan))
        .route(
            "/api/plans/{name}",
            get(get_plan).put(replace_plan).delete(delete_plan),
        )
        .route("/api/plans/{name}/runs", get(list_plan_runs))
        .route("/api/plans/{name}/runs/{id}", get(get_plan_run))
        .route(
            "/api/plans/{name}/runs/{id}/{action}",
            post(plan_run_action),
        )
        .route("/api/plans/{name}/{operation}", post(plan_operate))
        .layer(middleware::from_fn_with_state(st.clone(), auth))
        .with_state(st);
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .merge(portal)
        .merge(api)
        .fallback(not_found)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody {
            error: "no such API route: see /api/openapi.json".to_string(),
            causes: vec!["no such API route: see /api/openapi.json".to_string()],
        }),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Lifeboat vault API", description = "Disaster recovery for KVM/QEMU VMs"),
    paths(
        list_regions, add_region, list_hosts, register_host, host_report, list_policies,
        put_policy, list_vms, create_vm, vm_power, list_items, protect, get_item, item_points, item_health, reprotect_plan, operate,
        list_jobs, get_job,
        list_events, item_checkpoint, list_groups, create_group, get_group, delete_group, group_points, cut_group,
        group_operation, list_plans, create_plan, get_plan, replace_plan, delete_plan,
        list_plan_runs, get_plan_run, plan_run_action, plan_operate
    ),
    components(schemas(
        Region, RegisterHost, Host, Policy, CreateVm, Vm, ProtectRequest, OperationRequest,
        Item, crate::model::Drill, Step, Job, Event, ErrorBody, PointInfo, HealthInfo, HostReport, SourceStatus,
        ReplicaStatus, RecoveredStatus, CopyState, crate::reprotect::ReprotectPlan,
        CreateGroup, Group, GroupCut, CutMember, GroupPoint, CutKind,
        crate::agent_wire::CheckpointAnswer,
        PlanDefinition, crate::plan::PlanGroup, crate::plan::PlanAction,
        crate::plan::ScriptAction, crate::plan::ManualAction, crate::plan::PlanStep,
        crate::plan::Phase, PlanRequest, PlanRun, PlanInfo
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;
impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let comps = openapi.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

#[utoipa::path(get, path = "/api/regions", responses((status = 200, body = [Region])))]
async fn list_regions(State(st): State<AppState>) -> ApiResult<Vec<Region>> {
    Ok(Json(st.vault.regions()?))
}

#[utoipa::path(post, path = "/api/regions", request_body = Region,
    responses((status = 200, body = Region), (status = 409, body = ErrorBody)))]
async fn add_region(State(st): State<AppState>, b: Bytes) -> ApiResult<Region> {
    Ok(Json(st.vault.add_region(&body("region", &b)?)?))
}

#[utoipa::path(get, path = "/api/hosts", responses((status = 200, body = [Host])))]
async fn list_hosts(State(st): State<AppState>) -> ApiResult<Vec<Host>> {
    Ok(Json(st.vault.hosts()?))
}

#[utoipa::path(post, path = "/api/hosts", request_body = RegisterHost,
    responses((status = 200, body = Host), (status = 404, body = ErrorBody)))]
async fn register_host(State(st): State<AppState>, b: Bytes) -> ApiResult<Host> {
    Ok(Json(
        st.vault.register_host(&body("host registration", &b)?)?,
    ))
}

#[utoipa::path(post, path = "/api/hosts/{name}/report", request_body = HostReport,
    params(("name" = String, Path, description = "Host name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn host_report(
    State(st): State<AppState>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<serde_json::Value> {
    st.vault.report(&name, &body("host report", &b)?)?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(get, path = "/api/policies", responses((status = 200, body = [Policy])))]
async fn list_policies(State(st): State<AppState>) -> ApiResult<Vec<Policy>> {
    Ok(Json(st.vault.policies()?))
}

#[utoipa::path(put, path = "/api/policies/{name}", request_body = Object,
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, body = Policy), (status = 400, body = ErrorBody)))]
async fn put_policy(
    State(st): State<AppState>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<Policy> {
    let policy = body("policy", &b)?;
    Ok(Json(st.vault.put_policy(&Policy { name, policy })?))
}

#[utoipa::path(get, path = "/api/vms", responses((status = 200, body = [Vm])))]
async fn list_vms(State(st): State<AppState>) -> ApiResult<Vec<Vm>> {
    Ok(Json(st.vault.vms()?))
}

#[utoipa::path(post, path = "/api/vms", request_body = CreateVm,
    responses((status = 200, body = Vm), (status = 409, body = ErrorBody)))]
async fn create_vm(State(st): State<AppState>, b: Bytes) -> ApiResult<Vm> {
    Ok(Json(st.vault.create_vm(&body("VM", &b)?)?))
}

#[utoipa::path(post, path = "/api/vms/{name}/{verb}",
    params(("name" = String, Path, description = "VM name"),
           ("verb" = String, Path, description = "start or stop")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn vm_power(
    State(st): State<AppState>,
    Path((name, verb)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let running = match verb.as_str() {
        "start" => true,
        "stop" => false,
        _ => {
            return Err(VaultError::BadRequest(format!(
                "unknown VM action {verb:?}: use start or stop"
            )))
        }
    };
    Ok(Json(st.vault.set_running(&name, running).await?))
}

#[utoipa::path(get, path = "/api/items", responses((status = 200, body = [Item])))]
async fn list_items(State(st): State<AppState>) -> ApiResult<Vec<Item>> {
    Ok(Json(st.vault.items()?))
}

#[utoipa::path(post, path = "/api/items", request_body = ProtectRequest,
    responses((status = 200, body = Job), (status = 409, body = ErrorBody)))]
async fn protect(State(st): State<AppState>, b: Bytes) -> ApiResult<Job> {
    Ok(Json(st.vault.protect(&body("protect request", &b)?)?))
}

#[utoipa::path(get, path = "/api/items/{vm}",
    params(("vm" = String, Path, description = "VM name")),
    responses((status = 200, body = Item), (status = 404, body = ErrorBody)))]
async fn get_item(State(st): State<AppState>, Path(vm): Path<String>) -> ApiResult<Item> {
    Ok(Json(st.vault.item(&vm)?))
}

#[utoipa::path(get, path = "/api/items/{vm}/points",
    params(("vm" = String, Path, description = "VM name")),
    responses((status = 200, body = [PointInfo]), (status = 404, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn item_points(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<Vec<PointInfo>> {
    Ok(Json(st.vault.points(&vm).await?))
}

#[utoipa::path(get, path = "/api/items/{vm}/health",
    params(("vm" = String, Path, description = "VM name")),
    responses((status = 200, body = HealthInfo), (status = 404, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn item_health(State(st): State<AppState>, Path(vm): Path<String>) -> ApiResult<HealthInfo> {
    Ok(Json(st.vault.health(&vm).await?))
}

#[utoipa::path(get, path = "/api/items/{vm}/reprotect-plan",
    params(("vm" = String, Path, description = "VM name")),
    responses((status = 200, body = crate::reprotect::ReprotectPlan),
              (status = 404, body = ErrorBody), (status = 502, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn reprotect_plan(
    State(st): State<AppState>,
    Path(vm): Path<String>,
) -> ApiResult<serde_json::Value> {
    Ok(Json(st.vault.reprotect_plan(&vm).await?))
}

#[utoipa::path(post, path = "/api/items/{vm}/{operation}", request_body = OperationRequest,
    params(("vm" = String, Path, description = "VM name"),
           ("operation" = String, Path, description = "failover, change-recovery-point, commit, \
            reprotect, test-failover, cleanup-test-failover, disable-protection")),
    responses((status = 200, body = Job), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn operate(
    State(st): State<AppState>,
    Path((vm, operation)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<Job> {
    let op: Operation = operation.parse().map_err(|_| {
        VaultError::BadRequest(format!(
            "unknown operation {operation:?}: use failover, change-recovery-point, commit, \
             reprotect, test-failover, cleanup-test-failover or disable-protection"
        ))
    })?;
    if op == Operation::EnableProtection {
        return Err(VaultError::BadRequest(
            "enable protection with POST /api/items (vm, policy, target_region)".to_string(),
        ));
    }
    let req: OperationRequest = if b.iter().all(u8::is_ascii_whitespace) {
        OperationRequest::default()
    } else {
        body("operation request", &b)?
    };
    Ok(Json(st.vault.start(&vm, op, &req)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct Limit {
    /// At most this many (default 50).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/jobs", params(Limit), responses((status = 200, body = [Job])))]
async fn list_jobs(State(st): State<AppState>, Query(q): Query<Limit>) -> ApiResult<Vec<Job>> {
    Ok(Json(st.vault.jobs(q.limit.unwrap_or(50).clamp(1, 1000))?))
}

#[utoipa::path(get, path = "/api/jobs/{id}", params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
async fn get_job(State(st): State<AppState>, Path(id): Path<i64>) -> ApiResult<Job> {
    Ok(Json(st.vault.job(id)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct Since {
    /// Events after this id (default 0).
    since: Option<i64>,
    /// At most this many (default 100).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/events", params(Since), responses((status = 200, body = [Event])))]
async fn list_events(State(st): State<AppState>, Query(q): Query<Since>) -> ApiResult<Vec<Event>> {
    Ok(Json(st.vault.events(
        q.since.unwrap_or(0),
        q.limit.unwrap_or(100).clamp(1, 10_000),
    )?))
}

#[utoipa::path(get, path = "/api/groups", responses((status = 200, body = [Group])))]
async fn list_groups(State(st): State<AppState>) -> ApiResult<Vec<Group>> {
    Ok(Json(st.vault.groups()?))
}

#[utoipa::path(post, path = "/api/groups", request_body = CreateGroup,
    responses((status = 200, body = Group), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn create_group(State(st): State<AppState>, b: Bytes) -> ApiResult<Group> {
    let g: CreateGroup = body("replication group", &b)?;
    Ok(Json(st.vault.create_group(&g).await?))
}

#[utoipa::path(get, path = "/api/groups/{name}",
    params(("name" = String, Path, description = "Replication group")),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
async fn get_group(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Group> {
    Ok(Json(st.vault.group(&name)?))
}

#[utoipa::path(delete, path = "/api/groups/{name}",
    params(("name" = String, Path, description = "Replication group")),
    responses((status = 200), (status = 404, body = ErrorBody)))]
async fn delete_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    st.vault.delete_group(&name).await?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(get, path = "/api/groups/{name}/points",
    params(("name" = String, Path, description = "Replication group")),
    responses((status = 200, body = [GroupPoint]), (status = 404, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn group_points(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Vec<GroupPoint>> {
    Ok(Json(st.vault.group_points(&name).await?))
}

/// The kind of an on-demand group cut.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CutKind {
    /// `crash-consistent` (default) or `app-consistent`.
    #[serde(default)]
    kind: Option<String>,
}

#[utoipa::path(post, path = "/api/items/{vm}/checkpoint", request_body = CutKind,
    params(("vm" = String, Path, description = "VM name")),
    responses((status = 200, body = crate::agent_wire::CheckpointAnswer),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn item_checkpoint(
    State(st): State<AppState>,
    Path(vm): Path<String>,
    b: Bytes,
) -> ApiResult<crate::agent_wire::CheckpointAnswer> {
    let kind = cut_kind(&b)?;
    Ok(Json(st.vault.checkpoint(&vm, kind).await?))
}

/// The kind of a cut or checkpoint body (empty: crash-consistent).
fn cut_kind(b: &Bytes) -> Result<lifeboat_types::CheckpointKind, VaultError> {
    let k: CutKind = if b.iter().all(u8::is_ascii_whitespace) {
        CutKind { kind: None }
    } else {
        body("cut", b)?
    };
    k.kind
        .as_deref()
        .unwrap_or("crash-consistent")
        .parse()
        .map_err(VaultError::BadRequest)
}

#[utoipa::path(post, path = "/api/groups/{name}/cut", request_body = CutKind,
    params(("name" = String, Path, description = "Replication group")),
    responses((status = 200, body = GroupCut), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn cut_group(
    State(st): State<AppState>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<GroupCut> {
    let kind = cut_kind(&b)?;
    Ok(Json(st.vault.cut_group(&name, kind).await?))
}

#[utoipa::path(post, path = "/api/groups/{name}/{operation}", request_body = OperationRequest,
    params(("name" = String, Path, description = "Replication group"),
           ("operation" = String, Path, description = "failover, test-failover, \
            cleanup-test-failover, commit, reprotect")),
    responses((status = 200, body = [Job]), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn group_operation(
    State(st): State<AppState>,
    Path((name, operation)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<Vec<Job>> {
    let op: Operation = operation
        .parse()
        .ok()
        .filter(|o| {
            matches!(
                o,
                Operation::Failover
                    | Operation::TestFailover
                    | Operation::CleanupTestFailover
                    | Operation::Commit
                    | Operation::Reprotect
            )
        })
        .ok_or_else(|| {
            VaultError::BadRequest(format!(
                "unknown group operation {operation:?}: use failover, test-failover, \
                 cleanup-test-failover, commit or reprotect"
            ))
        })?;
    let req: OperationRequest = if b.iter().all(u8::is_ascii_whitespace) {
        OperationRequest::default()
    } else {
        body("operation request", &b)?
    };
    if req.group.is_some() {
        return Err(VaultError::BadRequest(
            "`group` is set by the vault itself: leave it out".to_string(),
        ));
    }
    Ok(Json(st.vault.group_operation(&name, op, &req).await?))
}

#[utoipa::path(get, path = "/api/plans", responses((status = 200, body = [PlanInfo])))]
async fn list_plans(State(st): State<AppState>) -> ApiResult<Vec<PlanInfo>> {
    Ok(Json(st.vault.plans()?))
}

#[utoipa::path(post, path = "/api/plans", request_body = PlanDefinition,
    responses((status = 200, body = PlanInfo), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn create_plan(State(st): State<AppState>, b: Bytes) -> ApiResult<PlanInfo> {
    Ok(Json(st.vault.create_plan(&body("recovery plan", &b)?)?))
}

#[utoipa::path(get, path = "/api/plans/{name}",
    params(("name" = String, Path, description = "Plan name")),
    responses((status = 200, body = PlanInfo), (status = 404, body = ErrorBody)))]
async fn get_plan(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<PlanInfo> {
    Ok(Json(st.vault.plan(&name)?))
}

#[utoipa::path(put, path = "/api/plans/{name}", request_body = PlanDefinition,
    params(("name" = String, Path, description = "Plan name")),
    responses((status = 200, body = PlanInfo), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn replace_plan(
    State(st): State<AppState>,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult<PlanInfo> {
    Ok(Json(
        st.vault.replace_plan(&name, &body("recovery plan", &b)?)?,
    ))
}

#[utoipa::path(delete, path = "/api/plans/{name}",
    params(("name" = String, Path, description = "Plan name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn delete_plan(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    st.vault.delete_plan(&name)?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(get, path = "/api/plans/{name}/runs", params(Limit,
    ("name" = String, Path, description = "Plan name")),
    responses((status = 200, body = [PlanRun]), (status = 404, body = ErrorBody)))]
async fn list_plan_runs(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> ApiResult<Vec<PlanRun>> {
    Ok(Json(
        st.vault
            .plan_runs(&name, q.limit.unwrap_or(50).clamp(1, 1000))?,
    ))
}

#[utoipa::path(get, path = "/api/plans/{name}/runs/{id}",
    params(("name" = String, Path, description = "Plan name"),
           ("id" = i64, Path, description = "Run id")),
    responses((status = 200, body = PlanRun), (status = 404, body = ErrorBody)))]
async fn get_plan_run(
    State(st): State<AppState>,
    Path((name, id)): Path<(String, i64)>,
) -> ApiResult<PlanRun> {
    Ok(Json(st.vault.plan_run(&name, id)?))
}

#[utoipa::path(post, path = "/api/plans/{name}/runs/{id}/{action}",
    params(("name" = String, Path, description = "Plan name"),
           ("id" = i64, Path, description = "Run id (the plan's latest)"),
           ("action" = String, Path, description = "confirm (a waiting manual action), retry \
            (the failed step), skip (the failed or waiting step)")),
    responses((status = 200, body = PlanRun), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn plan_run_action(
    State(st): State<AppState>,
    Path((name, id, action)): Path<(String, i64, String)>,
) -> ApiResult<PlanRun> {
    Ok(Json(match action.as_str() {
        "confirm" => st.vault.confirm_plan_run(&name, id)?,
        "retry" => st.vault.retry_plan_run(&name, id)?,
        "skip" => st.vault.skip_plan_run_step(&name, id)?,
        _ => {
            return Err(VaultError::BadRequest(format!(
                "unknown plan run action {action:?}: use confirm, retry or skip"
            )))
        }
    }))
}

#[utoipa::path(post, path = "/api/plans/{name}/{operation}", request_body = PlanRequest,
    params(("name" = String, Path, description = "Plan name"),
           ("operation" = String, Path, description = "failover, test-failover, \
            cleanup-test-failover (or cleanup), commit, reprotect")),
    responses((status = 200, body = PlanRun), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn plan_operate(
    State(st): State<AppState>,
    Path((name, operation)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult<PlanRun> {
    let op: PlanOperation = operation.parse().map_err(VaultError::BadRequest)?;
    let req: PlanRequest = if b.iter().all(u8::is_ascii_whitespace) {
        PlanRequest::default()
    } else {
        body("plan operation request", &b)?
    };
    Ok(Json(st.vault.start_plan(&name, op, &req)?))
}
