//! The vault's side of the agents: which host acts for a region, what the agents report
//! (initial replication progress, the RPO, hydration), and the item changes the executor makes
//! while a job runs (epoch, % synchronized).

use std::time::Duration;

use lifeboat_types::ItemState;
use rusqlite::{params, OptionalExtension};

use crate::agent_wire::HostReport;
use crate::db::{now_ms, sql};
use crate::error::VaultError;
use crate::model::{Host, Item, Vm};
use crate::service::{event, host_of, query_rows, read_item, Vault, HOST_COLS};

/// An agent that has not registered or reported for this long is taken as gone.
pub const HOST_ALIVE: Duration = Duration::from_secs(15);

impl Vault {
    /// One VM.
    pub fn vm(&self, name: &str) -> Result<Vm, VaultError> {
        self.vms()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| VaultError::NotFound {
                kind: "VM",
                name: name.to_string(),
            })
    }

    /// A region's store URL.
    pub fn store_url(&self, region: &str) -> Result<String, VaultError> {
        self.regions()?
            .into_iter()
            .find(|r| r.name == region)
            .map(|r| r.store_url)
            .ok_or_else(|| VaultError::NotFound {
                kind: "region",
                name: region.to_string(),
            })
    }

    /// The host whose agent acts for `region`: the one seen last, if it was seen within
    /// [`HOST_ALIVE`].
    pub fn live_host(&self, region: &str) -> Result<Host, VaultError> {
        let hosts = self.db.tx("listing hosts", |tx| {
            query_rows(
                tx,
                "listing hosts",
                &format!("SELECT {HOST_COLS} FROM hosts WHERE region = ?1 ORDER BY last_seen DESC"),
                params![region],
                host_of,
            )
        })?;
        let alive_since = now_ms() - HOST_ALIVE.as_millis() as i64;
        match hosts.into_iter().next() {
            Some(h) if h.last_seen >= alive_since => Ok(h),
            Some(h) => Err(VaultError::NoAgent(format!(
                "no live agent in region {region}: host {} was last seen {} s ago; start its \
                 agent (`lifeboat agent --region {region}` or `lifeboat up`) and retry",
                h.name,
                (now_ms() - h.last_seen) / 1000
            ))),
            None => Err(VaultError::NoAgent(format!(
                "no agent has registered in region {region}: start one (`lifeboat agent \
                 --region {region}` or `lifeboat up`) and retry"
            ))),
        }
    }

    /// Records what host `host` reports: the RPO of the items it replicates from, the initial
    /// replication progress of items being protected, hydration of failed-over items. Also
    /// counts as a heartbeat.
    pub fn report(&self, host: &str, r: &HostReport) -> Result<(), VaultError> {
        let now = now_ms();
        self.db.tx("recording an agent's report", |tx| {
            let region: Option<String> = tx
                .query_row(
                    "SELECT region FROM hosts WHERE name = ?1",
                    params![host],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql("reading a host"))?;
            let region = region.ok_or_else(|| VaultError::NotFound {
                kind: "host",
                name: host.to_string(),
            })?;
            tx.execute(
                "UPDATE hosts SET last_seen = ?1 WHERE name = ?2",
                params![now, host],
            )
            .map_err(sql("updating a host"))?;
            for s in &r.sources {
                let Ok(item) = read_item(tx, &s.vm) else {
                    continue;
                };
                if let (Some(why), true) = (&s.fenced, item.active_region != region) {
                    // Split brain refused: say so once per host and epoch.
                    let msg = format!(
                        "host {host} in region {region} came back with VM {} as a replicating \
                         source of epoch {}, but the VM failed over to region {} (epoch {}): \
                         fenced, nothing it sends is accepted and the old VM is not started ({why})",
                        s.vm, s.epoch, item.active_region, item.epoch
                    );
                    let seen: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM events WHERE vm = ?1 AND message = ?2 LIMIT 1",
                            params![s.vm, msg],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(sql("reading events"))?;
                    if seen.is_none() {
                        crate::service::event(tx, "warning", Some(&s.vm), None, &msg)?;
                    }
                }
                // Only the region the item replicates from speaks for its RPO.
                if item.source_region != region || item.active_region != region {
                    continue;
                }
                if let Some(t) = s.replicated_as_of {
                    tx.execute(
                        "UPDATE items SET replicated_as_of = ?1 WHERE vm = ?2",
                        params![t, s.vm],
                    )
                    .map_err(sql("updating an item"))?;
                }
                // App-consistent points that fell back to crash-consistent: an event for each
                // new miss; health counts them.
                if s.app_misses > item.app_misses {
                    let msg = format!(
                        "app-consistent recovery point of VM {} failed ({} in a row), it is \
                         crash-consistent: {}",
                        s.vm,
                        s.app_misses,
                        s.app_error.as_deref().unwrap_or("no reason given")
                    );
                    crate::service::event(tx, "warning", Some(&s.vm), None, &msg)?;
                }
                if s.app_misses != item.app_misses {
                    tx.execute(
                        "UPDATE items SET app_misses = ?1, app_error = ?2 WHERE vm = ?3",
                        params![s.app_misses, s.app_error, s.vm],
                    )
                    .map_err(sql("updating an item"))?;
                }
                if item.state == ItemState::EnablingProtection.as_str() {
                    let pct = if s.copy.done {
                        99
                    } else {
                        s.copy.percent.min(99)
                    };
                    tx.execute(
                        "UPDATE items SET percent_synced = MAX(percent_synced, ?1) WHERE vm = ?2",
                        params![pct, s.vm],
                    )
                    .map_err(sql("updating an item"))?;
                }
                if let Some(why) = &s.fenced {
                    tracing::warn!(vm = %s.vm, host, why, "source host is fenced");
                }
            }
            for rec in &r.recovered {
                if read_item(tx, &rec.vm).is_err() {
                    continue;
                }
                tx.execute(
                    "UPDATE items SET hydrated_percent = ?1 WHERE vm = ?2",
                    params![rec.hydrated_percent.clamp(0.0, 100.0) as i64, rec.vm],
                )
                .map_err(sql("updating an item"))?;
            }
            Ok(())
        })
    }

    /// Sets an item's % synchronized.
    pub fn set_percent_synced(&self, vm: &str, percent: u8) -> Result<(), VaultError> {
        self.db.tx("updating an item", |tx| {
            tx.execute(
                "UPDATE items SET percent_synced = ?1 WHERE vm = ?2",
                params![percent.min(100), vm],
            )
            .map_err(sql("updating an item"))?;
            Ok(())
        })
    }

    /// Records the item's drill (test failover) as it stands.
    pub fn set_drill(&self, vm: &str, drill: &crate::model::Drill) -> Result<(), VaultError> {
        let body = serde_json::to_string(drill)
            .map_err(|e| VaultError::BadRequest(format!("encoding a drill: {e}")))?;
        self.db.tx("recording a drill", |tx| {
            tx.execute(
                "UPDATE items SET drill = ?1 WHERE vm = ?2",
                params![body, vm],
            )
            .map_err(sql("updating an item"))?;
            Ok(())
        })
    }

    /// Ends the item's drill (cleanup done): it counts as the last successful drill if its test
    /// failover succeeded; the notes are kept either way.
    pub fn end_drill(&self, vm: &str, notes: Option<&str>, job: i64) -> Result<(), VaultError> {
        let now = now_ms();
        self.db.tx("ending a drill", |tx| {
            let item = read_item(tx, vm)?;
            let ok = item.drill.as_ref().is_some_and(|d| d.succeeded);
            if ok {
                tx.execute(
                    "UPDATE items SET last_drill_at = ?1, last_drill_notes = ?2 WHERE vm = ?3",
                    params![now, notes, vm],
                )
                .map_err(sql("updating an item"))?;
            }
            tx.execute("UPDATE items SET drill = NULL WHERE vm = ?1", params![vm])
                .map_err(sql("updating an item"))?;
            let msg = match (ok, notes) {
                (true, Some(n)) => format!("DR drill of VM {vm} completed; notes: {n}"),
                (true, None) => format!("DR drill of VM {vm} completed"),
                (false, _) => format!(
                    "DR drill of VM {vm} cleaned up; it does not count: its test failover had failed"
                ),
            };
            event(tx, "info", Some(vm), Some(job), &msg)?;
            Ok(())
        })
    }

    /// Records that the item's store now fences every epoch below `epoch` (failover).
    pub fn set_epoch(&self, vm: &str, epoch: u64, job: i64) -> Result<Item, VaultError> {
        self.db.tx("updating an item's epoch", |tx| {
            tx.execute(
                "UPDATE items SET epoch = MAX(epoch, ?1) WHERE vm = ?2",
                params![epoch as i64, vm],
            )
            .map_err(sql("updating an item"))?;
            event(
                tx,
                "info",
                Some(vm),
                Some(job),
                &format!(
                    "VM {vm}: replication epoch {epoch}; the store refuses older epochs \
                     (the source is fenced)"
                ),
            )?;
            read_item(tx, vm)
        })
    }

    /// Records an event from the executor.
    pub fn note(&self, level: &str, vm: &str, job: i64, message: &str) -> Result<(), VaultError> {
        self.db.tx("recording an event", |tx| {
            event(tx, level, Some(vm), Some(job), message)
        })
    }
}
