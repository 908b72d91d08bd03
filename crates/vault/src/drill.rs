//! DR drills (test failover, as in Azure Site Recovery): a copy of the VM boots at the target
//! region from a chosen recovery point while replication goes on, on an isolated network
//! (every NIC on QEMU user networking with `restrict=on`), its writes going to a scratch image
//! that cleanup deletes. The target agent pins the point in the store (`vms/<vm>/pins/drill`)
//! so that retention keeps what the copy reads until cleanup.
//!
//! * **Test failover** (from Protected): the point is checked first; `latest` processes
//!   everything received through the replica (which keeps running) and uses the newest point;
//!   the copy is created and started. The item records the drill (`drill`); a failed test
//!   failover still needs its cleanup (the state machine says so).
//! * **Cleanup test failover**: the copy is stopped and deleted with its pin; the drill counts
//!   as the item's last successful one (`last_drill_at`, with the operator's notes) only when
//!   its test failover had succeeded.

use reqwest::Method;

use crate::agent_wire::{RecoverSpec, RecoveredStatus, ReplicaStatus};
use crate::db::now_ms;
use crate::executor::{point_store, target_definition, text, Flow, Run};
use crate::model::Drill;

pub(crate) async fn test_failover(r: &mut Run) -> Flow {
    let res = steps(r).await;
    if res.is_err() {
        // Whatever was created must go at cleanup: the drill is recorded as failed.
        let drill = r.item().ok().and_then(|i| i.drill);
        if drill.is_none() {
            let d = Drill {
                point: r.req.recovery_point.clone().unwrap_or_default(),
                point_seq: 0,
                host: String::new(),
                started_at: now_ms(),
                succeeded: false,
            };
            let _ = r.vault.set_drill(&r.vm, &d);
        }
    }
    res
}

async fn steps(r: &mut Run) -> Flow {
    r.step("Prerequisites check")?;
    let (item, store_url, _) = r.vault.item_store(&r.vm).map_err(text)?;
    let vm = r.vault.vm(&r.vm).map_err(text)?;
    let target = r.host(&item.target_region)?;
    let mut point = r
        .req
        .recovery_point
        .clone()
        .unwrap_or_else(|| "latest-processed".to_string());
    if point == "latest" {
        // Everything received is processed by the replica itself (it keeps running).
        let s: ReplicaStatus = r
            .call(
                &target,
                Method::POST,
                &format!("/agent/v1/replicas/{}/process", r.vm),
                None,
            )
            .await?;
        point = s
            .newest_point
            .ok_or_else(|| format!("VM {} has no recovery point to drill from yet", r.vm))?;
    }
    point_store(r, &store_url, &item.target_region, &point).await?;
    r.done(&format!(
        "target host {} in region {}; recovery point {point}; replication goes on",
        target.name, item.target_region
    ));

    r.step("Create isolated VM")?;
    let path = format!("/agent/v1/drills/{}", r.vm);
    let spec = RecoverSpec {
        definition: target_definition(&vm.definition, &item),
        store_url,
        recovery_point: point,
        epoch: item.epoch,
        drill: true,
    };
    let st: RecoveredStatus = r.call(&target, Method::PUT, &path, Some(&spec)).await?;
    let mut drill = Drill {
        point: st.point.clone(),
        point_seq: st.point_seq,
        host: target.name.clone(),
        started_at: now_ms(),
        succeeded: false,
    };
    r.vault.set_drill(&r.vm, &drill).map_err(text)?;
    r.done(&format!(
        "from recovery point {} (journal record {}, {}), pinned in the store until cleanup; \
         its writes go to a scratch image",
        st.point, st.point_seq, st.point_time_utc
    ));

    r.step("Start VM")?;
    let st: RecoveredStatus = r
        .call(&target, Method::POST, &format!("{path}/start"), None)
        .await?;
    drill.succeeded = true;
    r.vault.set_drill(&r.vm, &drill).map_err(text)?;
    r.done(&format!(
        "running at host {} on an isolated network (user networking, restrict=on: no route \
         out); serial console {}",
        target.name, st.serial_log
    ));
    Ok(())
}

pub(crate) async fn cleanup(r: &mut Run) -> Flow {
    let item = r.item()?;
    let host = match item.drill.as_ref().filter(|d| !d.host.is_empty()) {
        Some(d) => r
            .vault
            .hosts()
            .map_err(text)?
            .into_iter()
            .find(|h| h.name == d.host)
            .ok_or_else(|| format!("host {} of the drill is not registered", d.host))?,
        None => r.host(&item.target_region)?,
    };
    let path = format!("/agent/v1/drills/{}", r.vm);
    r.step("Stop VM")?;
    match r
        .call::<RecoveredStatus>(&host, Method::POST, &format!("{path}/kill"), None)
        .await
    {
        Ok(_) => r.done(&format!(
            "the drill copy at host {} turned off (its writes are discarded)",
            host.name
        )),
        Err(e) if e.contains("404") => r.skip("no drill copy runs"),
        Err(e) => return Err(e),
    }
    r.step("Delete test resources")?;
    let _: serde_json::Value = r.call(&host, Method::DELETE, &path, None).await?;
    r.vault
        .end_drill(&r.vm, r.req.notes.as_deref(), r.job)
        .map_err(text)?;
    r.done(&format!(
        "the drill copy's disks, its writes and its pin in the store are deleted{}",
        if item.drill.as_ref().is_some_and(|d| d.succeeded) {
            "; recorded as the last successful drill"
        } else {
            "; not counted: its test failover had failed"
        }
    ));
    Ok(())
}
