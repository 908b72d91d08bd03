//! The agent's side of a multi-VM cut (a replication group's shared recovery point), driven by
//! the vault in phases (`POST /agent/v1/cuts/{hold,commit,release}`; see
//! `lifeboat_vault::agent_wire`):
//!
//! 1. **hold**: every listed VM's journal holds its writes (each at most `hold_ms`); if one
//!    cannot, the ones held by this request are released and the request fails.
//! 2. **commit**: every listed VM's journal gets the cut's marker (kind and time from the vault)
//!    while its writes are still held, then they go on. A VM whose hold expired answers an
//!    error: the vault then records no cut.
//! 3. **release**: an abandoned cut releases whatever it still holds.
//!
//! An app-consistent cut first **freezes** every member's guest (`freeze`, through its guest
//! agent: `crate::guest`) and ends with **thaw**; a guest the vault never thaws is thawed by a
//! watchdog.
//!
//! Holds are in memory only: a restarted agent holds nothing, and the vault's commit then fails
//! for it, so no cut spanning a restart is ever recorded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use lifeboat_types::CheckpointKind;
use lifeboat_vault::agent_wire::{CutAnswer, CutRequest, CutVm};

use crate::agent::{Agent, ApiErr, ApiResult};
use crate::replication::Replication;

/// The longest a cut may hold a guest's writes.
pub const MAX_HOLD: Duration = Duration::from_secs(10);

fn bad(msg: String) -> ApiErr {
    ApiErr(StatusCode::BAD_REQUEST, anyhow!(msg))
}

fn members(a: &Agent, req: &CutRequest) -> Result<Vec<(String, Arc<Replication>)>, ApiErr> {
    if req.vms.is_empty() {
        return Err(bad(format!("cut {}: no VMs listed", req.cut)));
    }
    req.vms
        .iter()
        .map(|vm| {
            a.replication_of(vm)
                .map(|r| (vm.clone(), r))
                .ok_or_else(|| {
                    ApiErr(
                        StatusCode::NOT_FOUND,
                        anyhow!("cut {}: this host has no replicating VM {vm}", req.cut),
                    )
                })
        })
        .collect()
}

/// `POST /agent/v1/cuts/{verb}`.
pub(crate) async fn cut_verb(
    State(a): State<Arc<Agent>>,
    Path(verb): Path<String>,
    b: Bytes,
) -> ApiResult<CutAnswer> {
    let req: CutRequest =
        serde_json::from_slice(&b).map_err(|e| bad(format!("bad cut {verb} body: {e}")))?;
    let vms = members(&a, &req)?;
    let answer = |f: &dyn Fn(&str, &Replication) -> CutVm| CutAnswer {
        vms: vms.iter().map(|(vm, r)| f(vm, r)).collect(),
    };
    match verb.as_str() {
        "hold" => {
            if req.hold_ms == 0 || Duration::from_millis(req.hold_ms) > MAX_HOLD {
                return Err(bad(format!(
                    "cut {}: hold_ms must be 1 to {} (a guest's writes wait that long at most)",
                    req.cut,
                    MAX_HOLD.as_millis()
                )));
            }
            let until = Instant::now() + Duration::from_millis(req.hold_ms);
            for (i, (_, r)) in vms.iter().enumerate() {
                if let Err(e) = r.hold(&req.cut, until) {
                    for (_, held) in &vms[..i] {
                        held.release_cut(&req.cut);
                    }
                    return Err(ApiErr(StatusCode::CONFLICT, e));
                }
            }
            Ok(Json(answer(&|vm, _| CutVm::ok(vm))))
        }
        "commit" => {
            let kind: CheckpointKind = req
                .kind
                .as_deref()
                .unwrap_or("crash-consistent")
                .parse()
                .map_err(|_| {
                    bad(format!(
                        "cut {}: kind must be crash-consistent or app-consistent",
                        req.cut
                    ))
                })?;
            let time = req
                .time_ns
                .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
                .ok_or_else(|| bad(format!("cut {}: commit needs time_ns", req.cut)))?;
            let spread = spread();
            let mut vms_out = Vec::new();
            for (i, (vm, r)) in vms.iter().enumerate() {
                if i > 0 && !spread.is_zero() {
                    tokio::time::sleep(spread).await;
                }
                vms_out.push(commit(&req.cut, vm, r, kind, time));
            }
            Ok(Json(CutAnswer { vms: vms_out }))
        }
        "release" => Ok(Json(answer(&|vm, r| {
            r.release_cut(&req.cut);
            CutVm::ok(vm)
        }))),
        "freeze" | "thaw" => {
            let timeout = Duration::from_millis(req.freeze_timeout_ms.clamp(100, 60_000));
            let calls = vms.iter().map(|(vm, r)| {
                let (cut, guest, verb) = (req.cut.clone(), r.guest.clone(), verb.clone());
                async move {
                    let res = if verb == "freeze" {
                        guest.freeze_for_cut(&cut, timeout).await
                    } else {
                        guest.thaw_cut(&cut).await
                    };
                    match res {
                        Ok(n) => CutVm {
                            filesystems: Some(n),
                            ..CutVm::ok(vm)
                        },
                        Err(e) => CutVm {
                            error: Some(e),
                            ..CutVm::ok(vm)
                        },
                    }
                }
            });
            Ok(Json(CutAnswer {
                vms: futures::future::join_all(calls).await,
            }))
        }
        other => Err(bad(format!(
            "unknown cut phase {other:?}: use freeze, hold, commit, release or thaw"
        ))),
    }
}

/// `LIFEBOAT_CUT_SPREAD_MS`: a pause between the markers of one cut, as when the members run
/// on hosts far apart (tests use it to show the holds, not luck, make a cut consistent).
fn spread() -> Duration {
    std::env::var("LIFEBOAT_CUT_SPREAD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

fn commit(cut: &str, vm: &str, r: &Replication, kind: CheckpointKind, time: SystemTime) -> CutVm {
    match r.commit_cut(cut, kind, time) {
        Ok(seq) => CutVm {
            seq: Some(seq.0),
            ..CutVm::ok(vm)
        },
        Err(e) => CutVm {
            error: Some(format!("{e:#}")),
            ..CutVm::ok(vm)
        },
    }
}
