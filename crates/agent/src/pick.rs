//! The recovery-point choices of failover: `latest-processed` (the newest point already cut),
//! `latest` (process everything the store received, then the newest point), `latest-app-
//! consistent`, a point id (`<seq>-crash|app`), or a time in the CDP window
//! (`YYYY-MM-DDTHH:MM:SS[.fff]Z` or `@UNIXSECONDS`, to the write).

use std::time::SystemTime;

use anyhow::{Context, Result};
use lifeboat_process::{open_point, parse_utc, state_at, Cut, PointInTime, Processor, Target};
use lifeboat_store::{PointRecord, Store};
use lifeboat_types::{CheckpointKind, VmId};

/// Whether `choice` names a time rather than a point.
pub fn is_time(choice: &str) -> bool {
    choice.starts_with('@') || (choice.ends_with('Z') && choice.contains('T'))
}

/// The point record `choice` names (not for times; `latest` is the newest point already
/// processed: [`resolve`] processes first).
pub async fn pick_point(store: &Store, vm: &VmId, choice: &str) -> Result<PointRecord> {
    let points = store
        .list_points(vm)
        .await
        .with_context(|| format!("listing the recovery points of VM {vm}"))?;
    let mut restorable = points.iter().rev().filter(|p| p.is_restorable());
    let found = match choice {
        "latest" | "latest-processed" => restorable.next().cloned(),
        "latest-app-consistent" => restorable
            .find(|p| p.checkpoint_kind() == Some(CheckpointKind::AppConsistent))
            .cloned(),
        id => Some(
            store
                .get_point(vm, id)
                .await
                .with_context(|| format!("recovery point {id} of VM {vm}"))?,
        ),
    };
    found.with_context(|| {
        if points.iter().any(|p| !p.is_restorable()) {
            format!(
                "VM {vm} has no {choice} recovery point yet: initial replication is still \
                 catching up"
            )
        } else {
            format!("VM {vm} has no {choice} recovery point")
        }
    })
}

/// What `choice` stands for, opened for reading: the state and a label for it.
pub async fn resolve(store: &Store, vm: &VmId, choice: &str) -> Result<(PointInTime, String)> {
    if is_time(choice) {
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

#[cfg(test)]
mod tests {
    use super::is_time;

    #[test]
    fn times_and_points_are_told_apart() {
        assert!(is_time("@1700000000"));
        assert!(is_time("2026-11-27T10:00:00Z"));
        assert!(is_time("2026-11-27T10:00:00.250Z"));
        assert!(!is_time("latest"));
        assert!(!is_time("latest-app-consistent"));
        assert!(!is_time("1234-crash"));
    }
}
