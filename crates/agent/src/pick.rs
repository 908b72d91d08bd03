//! The recovery-point choices of failover: `latest-processed` (the newest point already cut),
//! `latest` (process everything the store received, then the newest point), `latest-app-
//! consistent`, a point id (`<seq>-crash|app`), or a time in the CDP window
//! (`YYYY-MM-DDTHH:MM:SS[.fff]Z` or `@UNIXSECONDS`, to the write).

use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use lifeboat_process::{open_point, parse_utc, state_at, Cut, PointInTime, Processor, Target};
use lifeboat_store::{choose_point, is_time_choice, PointRecord, Store};
use lifeboat_types::VmId;

/// The point record `choice` names (not for times; `latest` is the newest point already
/// processed: [`resolve`] processes first).
pub async fn pick_point(store: &Store, vm: &VmId, choice: &str) -> Result<PointRecord> {
    let points = store
        .list_points(vm)
        .await
        .with_context(|| format!("listing the recovery points of VM {vm}"))?;
    if let Some(p) = choose_point(&points, choice) {
        return Ok(p.clone());
    }
    if !choice.starts_with("latest") {
        bail!("VM {vm} has no recovery point {choice}: see `lifeboat points`");
    }
    if points.iter().any(|p| !p.is_restorable()) {
        bail!(
            "VM {vm} has no {choice} recovery point yet: initial replication is still catching up"
        )
    }
    bail!("VM {vm} has no {choice} recovery point")
}

/// What `choice` stands for, opened for reading: the state and a label for it.
pub async fn resolve(store: &Store, vm: &VmId, choice: &str) -> Result<(PointInTime, String)> {
    if is_time_choice(choice) {
        let t: SystemTime = parse_utc(choice).map_err(anyhow::Error::msg)?;
        let pit = state_at(store, vm, Target::Time(t))
            .await
            .with_context(|| format!("the state of VM {vm} at {choice}"))?;
        return Ok((pit, choice.to_string()));
    }
    if choice == "latest" {
        Processor::new(store.clone(), vm.clone())
            .process(Cut::Latest)
            .await
            .with_context(|| format!("processing what VM {vm}'s store received"))?;
    }
    let p = pick_point(store, vm, choice).await?;
    let pit = open_point(store, vm, &p)
        .await
        .with_context(|| format!("opening recovery point {} of VM {vm}", p.id))?;
    Ok((pit, p.id))
}
