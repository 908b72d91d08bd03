//! Re-protect (from *Failover committed*): replication turned around, from the region the VM
//! runs in (`X`, the item's active region) back to the region it came from (`Y`), reusing the
//! original disks at `Y` so that only what diverged crosses between the regions.
//!
//! Steps (each agent call is idempotent, so a job failed by a restart is retried as it is):
//!
//! 1. **Prerequisites**: both agents answer; the VM at `X` is committed; `Y`'s store is
//!    raised to the item's epoch (older segments are refused there too) and holds no stale
//!    points of the VM.
//! 2. **Reverse replication**: `Y` *releases* its original disks (the old source, or an
//!    earlier recovered VM, closed for good; its journal's writes after the recovery point
//!    summarized); `X` starts shipping its journal after its position `p0` to `Y`'s store and
//!    plans the resync (`lifeboat_policy::plan_resync`) from what it wrote since failover, the
//!    commit's summary of the old source's writes after the point (in `X`'s store), and `Y`'s.
//! 3. **Resynchronize**: a delta is re-journaled at `X` as is; without that knowledge both
//!    sides hash their disks in parallel and the blocks that differ are re-journaled; with no
//!    usable original disks, `X` copies its disks whole. Then `Y` seeds its store from the
//!    original disks as the initial copy at `p0`, consistent from the resync's end.
//! 4. **Start replication**: `Y` processes the reverse journal into recovery points; the first
//!    one ends the job. The item is then Protected with `X` as its source region.

use std::time::Instant;

use lifeboat_policy::{diff_digests, Covered};
use lifeboat_store::Store;
use lifeboat_types::{Epoch, Extents};
use reqwest::Method;
use serde::Serialize;

use crate::agent_wire::{
    DigestAnswer, DigestRequest, LocalDisks, RecoveredStatus, ReleaseRequest, ReplicaSpec,
    ReplicaStatus, ResyncRequest, ReverseAnswer, ReverseRequest, SeedRequest,
};
use crate::error::VaultError;
use crate::executor::{poll, text, AgentClient, Flow, Run};
use crate::model::Host;
use crate::service::Vault;

/// The block size digests are compared at when the journals do not tell what diverged.
pub const DIGEST_BLOCK: u64 = 64 << 10;

/// What re-protect will do, shown before the operator confirms.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReprotectPlan {
    /// The VM.
    pub vm: String,
    /// `X → Y`.
    pub direction: String,
    /// Resources it creates, each ending in "(new)".
    pub create: Vec<String>,
    /// Resources it reuses.
    pub reuse: Vec<String>,
    /// What is sent.
    pub sync: String,
}

/// The plan of re-protecting `vm` (asks both agents; changes nothing).
pub async fn plan(
    vault: &Vault,
    client: &AgentClient,
    vm: &str,
) -> Result<ReprotectPlan, VaultError> {
    let item = vault.item(vm)?;
    let (x_region, y_region) = (item.active_region.clone(), item.source_region.clone());
    let x = vault.live_host(&x_region)?;
    let y = vault.live_host(&y_region)?;
    let y_store = vault.store_url(&y_region)?;
    let local: LocalDisks = client
        .call(&y, Method::GET, &format!("/agent/v1/local/{vm}"), None)
        .await?;
    let mut reuse = Vec::new();
    let sync = match (&local.sizes, &local.unusable) {
        (Some(_), _) => {
            reuse.push(format!(
                "original disks at host {} ({}): {}",
                y.name,
                local.kind,
                local.images.join(", ")
            ));
            "only what diverged since the recovery point: the VM's writes since failover and \
             the original VM's writes after the point (block digests compared where the \
             journals do not tell)"
                .to_string()
        }
        (None, why) => format!(
            "full copy of every disk: the original disks cannot be reused ({})",
            why.clone()
                .unwrap_or_else(|| "none at the original host".into())
        ),
    };
    reuse.push(format!("the running VM at host {} and its disks", x.name));
    Ok(ReprotectPlan {
        vm: vm.to_string(),
        direction: format!("{x_region} → {y_region}"),
        create: vec![
            format!(
                "replication of VM {vm} from host {} to region {y_region} (new)",
                x.name
            ),
            format!("recovery points of VM {vm} in region {y_region}'s store {y_store} (new)"),
            format!("processing at host {} (new)", y.name),
        ],
        reuse,
        sync,
    })
}

fn covered(rec: &lifeboat_store::DivergenceRecord) -> Covered {
    Covered {
        after: rec.point_seq,
        through: rec.through_seq,
        disks: rec.disks.clone(),
    }
}

async fn digests(r: &Run, host: &Host, path: &str) -> Result<DigestAnswer, String> {
    r.call(
        host,
        Method::POST,
        path,
        Some(&DigestRequest {
            block: DIGEST_BLOCK,
        }),
    )
    .await
}

pub(crate) async fn reprotect(r: &mut Run) -> Flow {
    r.step("Prerequisites check")?;
    let (item, _, policy) = r.vault.item_store(&r.vm).map_err(text)?;
    let (x_region, y_region) = (item.active_region.clone(), item.source_region.clone());
    if x_region == y_region {
        return Err(format!(
            "VM {} runs in its source region {x_region}: nothing to turn around",
            r.vm
        ));
    }
    let x = r.host(&x_region)?;
    let y = r.host(&y_region).map_err(|e| {
        format!(
            "re-protect needs the agent of region {y_region}, where the original disks are: {e}"
        )
    })?;
    let vm = r.vm.clone();
    let rec: RecoveredStatus = r
        .call(&x, Method::GET, &format!("/agent/v1/recovered/{vm}"), None)
        .await?;
    if !rec.committed {
        return Err(format!(
            "VM {vm} at host {}: the failover is not committed yet: commit it first",
            x.name
        ));
    }
    let y_url = r.vault.store_url(&y_region).map_err(text)?;
    let x_url = r.vault.store_url(&x_region).map_err(text)?;
    let y_store = Store::open(&y_url).map_err(|e| format!("region store {y_url}: {e}"))?;
    let x_store = Store::open(&x_url).map_err(|e| format!("region store {x_url}: {e}"))?;
    let vm_id = r.vm_id()?;
    y_store
        .bump_epoch(&vm_id, Epoch(item.epoch))
        .await
        .map_err(|e| format!("raising the epoch of VM {vm} in {y_url}: {e}"))?;
    // Points of an older epoch are stale (an earlier protection in this direction); the
    // seed of an earlier attempt of this re-protect has the item's epoch and stays.
    let stale: Vec<String> = y_store
        .list_points(&vm_id)
        .await
        .map_err(|e| format!("listing recovery points in {y_url}: {e}"))?
        .into_iter()
        .filter(|p| p.epoch() < Epoch(item.epoch))
        .map(|p| p.id)
        .collect();
    let mut note = String::new();
    if !stale.is_empty() {
        for id in &stale {
            y_store
                .delete_point(&vm_id, id)
                .await
                .map_err(|e| format!("deleting stale recovery point {id}: {e}"))?;
        }
        note = format!(
            "; {} stale recovery points of an earlier protection deleted from {y_url}",
            stale.len()
        );
    }
    r.done(&format!(
        "from host {} ({x_region}) to host {} ({y_region}), store {y_url}, epoch {}{note}",
        x.name, y.name, item.epoch
    ));

    r.step("Reverse replication")?;
    let rel: LocalDisks = r
        .call(
            &y,
            Method::POST,
            &format!("/agent/v1/local/{vm}/release"),
            Some(&ReleaseRequest {
                after_seq: rec.point_seq,
            }),
        )
        .await?;
    let summary = x_store
        .get_divergence(&vm_id)
        .await
        .map_err(|e| format!("reading the divergence summary in {x_url}: {e}"))?
        .filter(|d| d.point_seq == rec.point_seq);
    let req = ReverseRequest {
        protect: crate::groups::protection(
            y_url.clone(),
            item.epoch,
            &policy,
            item.replication_group.clone(),
        ),
        original_sizes: rel.sizes.clone(),
        unusable: rel.unusable.clone(),
        after_point_store: summary.as_ref().map(covered),
        old_spool: rel.old_spool.clone(),
    };
    let ans: ReverseAnswer = r
        .call(
            &x,
            Method::POST,
            &format!("/agent/v1/recovered/{vm}/reverse"),
            Some(&req),
        )
        .await?;
    let plan_text = match ans.plan.as_str() {
        "delta" => format!(
            "delta from the journals: {} bytes in {} ranges",
            ans.bytes, ans.ranges
        ),
        other => format!("{other}: {}", ans.why.clone().unwrap_or_default()),
    };
    r.done(&format!(
        "host {} ships its journal after record {} to {y_url}; original disks at host {}: {} ({}); plan: {plan_text}",
        x.name,
        ans.p0,
        y.name,
        if rel.sizes.is_some() { "reused" } else { "not usable" },
        rel.images.join(", "),
    ));

    r.step("Resynchronize")?;
    let started = Instant::now();
    let resync = match ans.plan.as_str() {
        "delta" => ResyncRequest::Planned,
        "full" => ResyncRequest::Full,
        _ => {
            r.detail(&format!(
                "comparing {} KiB block digests of both sides ({})",
                DIGEST_BLOCK >> 10,
                ans.why.clone().unwrap_or_default()
            ));
            let (pa, pb) = (
                format!("/agent/v1/recovered/{vm}/digests"),
                format!("/agent/v1/local/{vm}/digests"),
            );
            let (a, b) = tokio::join!(digests(r, &x, &pa), digests(r, &y, &pb));
            let (a, b) = (a?, b?);
            let mut disks = Vec::new();
            for (d, size) in a.sizes.iter().enumerate() {
                let parse = |t: Option<&String>| -> Result<Vec<String>, String> {
                    let t = t.ok_or_else(|| format!("no digests of disk {d}"))?;
                    Ok(t.as_bytes()
                        .chunks(32)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect())
                };
                let (da, db) = (parse(a.disks.get(d))?, parse(b.disks.get(d))?);
                disks.push(diff_digests(&da, &db, DIGEST_BLOCK, *size));
            }
            ResyncRequest::Ranges { disks }
        }
    };
    let diverged: u64 = match &resync {
        ResyncRequest::Ranges { disks } => disks.iter().map(Extents::bytes).sum(),
        ResyncRequest::Planned => ans.bytes,
        ResyncRequest::Full => 0,
    };
    let _: serde_json::Value = r
        .call(
            &x,
            Method::POST,
            &format!("/agent/v1/recovered/{vm}/resync"),
            Some(&resync),
        )
        .await?;
    let rpath = format!("/agent/v1/recovered/{vm}");
    let (end, bytes) = poll(r, &x, &rpath, "running VM's", |r, s: RecoveredStatus| {
        let Some(rv) = s.reverse else {
            return Err("the running VM's host lost the re-protect state".to_string());
        };
        let _ = r.vault.set_percent_synced(&r.vm, rv.percent / 2);
        if let (true, Some(end)) = (rv.done, rv.end) {
            return Ok(Some((end, rv.bytes)));
        }
        let mut d = format!(
            "{}% of the diverged data re-journaled ({} bytes)",
            rv.percent, rv.bytes
        );
        if let Some(e) = rv.error {
            d.push_str(&format!(" (last attempt failed, retrying: {e})"));
        }
        r.detail(&d);
        Ok(None)
    })
    .await?;
    if resync != ResyncRequest::Full {
        // The diverged data is in the original region once its records are in its store.
        r.detail("waiting for the re-journaled ranges to be shipped");
        let shipped = tokio::time::timeout(std::time::Duration::from_secs(600), async {
            loop {
                match y_store.list_segments(&vm_id).await {
                    Ok(segs) if segs.iter().any(|s| s.last_seq.0 >= end) => return,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
            }
        })
        .await;
        if shipped.is_err() {
            return Err(format!(
                "the re-journaled records up to {end} did not reach {y_url} within 10 minutes: \
                 see host {}'s log; retry re-protect",
                x.name
            ));
        }
    }
    let resync_secs = started.elapsed().as_secs_f64();
    let seed_started = Instant::now();
    if resync != ResyncRequest::Full {
        let _: serde_json::Value = r
            .call(
                &y,
                Method::POST,
                &format!("/agent/v1/local/{vm}/seed"),
                Some(&SeedRequest {
                    store_url: y_url.clone(),
                    epoch: item.epoch,
                    start: ans.p0,
                    end,
                }),
            )
            .await?;
        let lpath = format!("/agent/v1/local/{vm}");
        poll(r, &y, &lpath, "original", |r, s: LocalDisks| {
            let Some(seed) = s.seed else {
                return Err("the original host lost the seeding request".to_string());
            };
            let _ = r.vault.set_percent_synced(&r.vm, 50 + seed.percent / 2);
            if seed.done {
                return Ok(Some(()));
            }
            let mut d = format!(
                "diverged data re-journaled in {resync_secs:.1} s; {}% of the original disks \
                 copied into {y_url} (local to region {y_region})",
                seed.percent
            );
            if let Some(e) = seed.error {
                d.push_str(&format!(" (last attempt failed, retrying: {e})"));
            }
            r.detail(&d);
            Ok(None)
        })
        .await?;
    }
    let what = match &resync {
        ResyncRequest::Full => format!(
            "full copy of the disks into {y_url} ({})",
            ans.why.clone().unwrap_or_default()
        ),
        _ => format!(
            "{bytes} bytes re-journaled ({diverged} bytes diverged) as records {}..={end} and \
             shipped to region {y_region} in {resync_secs:.2} s; the original disks copied into \
             {y_url} (local to region {y_region}) in {:.2} s",
            ans.p0 + 1,
            seed_started.elapsed().as_secs_f64()
        ),
    };
    r.done(&what);

    r.step("Start replication")?;
    let spec = ReplicaSpec {
        store_url: y_url.clone(),
        store_secs: 300,
        policy: Some(policy),
    };
    let path = format!("/agent/v1/replicas/{vm}");
    let _: ReplicaStatus = r.call(&y, Method::PUT, &path, Some(&spec)).await?;
    let first = poll(r, &y, &path, "original", |r, s: ReplicaStatus| {
        if s.newest_point.is_some() {
            return Ok(Some(s));
        }
        r.detail(&format!(
            "waiting for the first recovery point in {y_url}{}",
            s.error
                .map(|e| format!(" (last pass: {e})"))
                .unwrap_or_default()
        ));
        Ok(None)
    })
    .await?;
    let _: serde_json::Value = r
        .call(&y, Method::DELETE, &format!("/agent/v1/local/{vm}"), None)
        .await?;
    if let Err(e) = x_store.delete_divergence(&vm_id).await {
        let _ = r.vault.note(
            "warning",
            &vm,
            r.job,
            &format!("the divergence summary in {x_url} could not be deleted: {e}"),
        );
    }
    r.vault.set_percent_synced(&vm, 100).map_err(text)?;
    r.done(&format!(
        "first recovery point {} in region {y_region}; writes replicate continuously from \
         host {} to region {y_region}",
        first.newest_point.unwrap_or_default(),
        x.name
    ));
    Ok(())
}
