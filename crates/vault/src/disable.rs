//! Disable protection (ASR's "Disable replication"): the VM keeps running where it is, nothing
//! of it is replicated any more, and its recovery points are deleted.
//!
//! * **Protected, from its home region** (the source is the VM on its original disks): the
//!   source host stops shipping (`Protection` off; the VM and its disk server go on), the target
//!   host stops processing (the replica is deleted), and the target store loses every point,
//!   journal segment, pin and divergence summary of the VM; their chunks are collected.
//! * **Failover committed**: nothing replicates; what re-protect would have reused is dropped
//!   (the divergence summary in the store the VM runs from). The VM keeps running as recovered
//!   at the other region; protecting it again from there is not offered (it would have to
//!   become a source there: re-protect instead of disabling to keep it protected).
//!
//! Refused, naming what to do: a VM of a replication group (delete the group first), and a VM
//! whose source is a recovered VM after re-protect (fail back first).
//! Every step is idempotent: a retried job (after a vault or agent restart) converges.

use lifeboat_store::Store;
use reqwest::Method;

use crate::agent_wire::{SourceSpec, SourceStatus};
use crate::executor::{delete_replica_data, text, Flow, Run};

pub(crate) async fn disable(r: &mut Run) -> Flow {
    r.step("Stop replication")?;
    let item = r.item()?;
    let vm = r.vault.vm(&r.vm).map_err(text)?;
    if let Some(g) = &item.replication_group {
        return Err(format!(
            "VM {} is in replication group {g}: delete the group first (`lifeboat group delete \
             {g}`; its other VMs stay protected), then disable protection",
            r.vm
        ));
    }
    let vm_id = r.vm_id()?;
    let committed = item.active_region != item.source_region;
    if committed {
        r.skip(&format!(
            "nothing replicates: the VM runs unprotected at region {}",
            item.active_region
        ));
    } else {
        if item.source_region != vm.region {
            return Err(format!(
                "VM {} replicates from a recovered copy at region {} (re-protected): fail it \
                 back first (failover, commit, re-protect), then disable protection",
                r.vm, item.source_region
            ));
        }
        let source = r.host(&item.source_region)?;
        let spec = SourceSpec {
            definition: vm.definition.clone(),
            running: None,
            protect: None,
        };
        let path = format!("/agent/v1/sources/{}", r.vm);
        let st: SourceStatus = r.call(&source, Method::PUT, &path, Some(&spec)).await?;
        r.done(&format!(
            "host {} no longer ships VM {}'s writes; the VM {}",
            source.name,
            r.vm,
            if st.running {
                "keeps running"
            } else {
                "is not running"
            }
        ));
    }

    r.step("Delete recovery points")?;
    let store_region = if committed {
        &item.active_region
    } else {
        &item.target_region
    };
    if !committed {
        let target = r.host(&item.target_region)?;
        let path = format!("/agent/v1/replicas/{}", r.vm);
        let _: serde_json::Value = r.call(&target, Method::DELETE, &path, None).await?;
    }
    let store_url = r.vault.store_url(store_region).map_err(text)?;
    let store = Store::open(&store_url).map_err(|e| format!("store {store_url}: {e}"))?;
    let pins = store
        .list_pins(&vm_id)
        .await
        .map_err(|e| format!("listing pins in {store_url}: {e}"))?;
    for (name, _) in &pins {
        store
            .delete_pin(&vm_id, name)
            .await
            .map_err(|e| format!("deleting pin {name} in {store_url}: {e}"))?;
    }
    store
        .delete_divergence(&vm_id)
        .await
        .map_err(|e| format!("deleting the divergence summary in {store_url}: {e}"))?;
    let deleted = delete_replica_data(&store, &store_url, &vm_id).await?;
    r.done(&format!("in region {store_region}: {deleted}"));
    Ok(())
}
