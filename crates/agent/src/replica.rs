//! A replica: the target region's processing of one VM's journal into recovery points. Every
//! [`PASS`] it processes what the store received (a "latest" point per pass with new records:
//! the sub-second path of failover to `latest-processed`); every [`STORE_PASS`] it stores the
//! points the store rule says are due (`lifeboat_process::StoreRule` for the item's policy: most
//! points stay journal-backed) and applies the policy's retention, rolling the base forward
//! (`lifeboat_process::Processor::retain`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use lifeboat_process::{Cut, Processor, StoreRule};
use lifeboat_store::{PointRecord, Store};
use lifeboat_types::VmId;
use lifeboat_vault::agent_wire::{ReplicaSpec, ReplicaStatus};
use tokio::task::JoinHandle;

/// How often the journal is processed.
pub const PASS: Duration = Duration::from_secs(1);
/// How often due points are stored and retention runs.
pub const STORE_PASS: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A replica being processed (see the module doc).
pub struct Replica {
    vm: VmId,
    /// What was asked.
    pub spec: ReplicaSpec,
    processor: Processor,
    /// One processing pass at a time (the loop, a `process` request).
    pass: tokio::sync::Mutex<()>,
    status: Mutex<ReplicaStatus>,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Replica {
    /// Starts processing `vm` in `spec.store_url`.
    pub async fn start(vm: VmId, spec: ReplicaSpec) -> Result<Arc<Replica>> {
        let store = Store::open(&spec.store_url)
            .with_context(|| format!("opening region store {}", spec.store_url))?;
        let r = Arc::new(Replica {
            vm: vm.clone(),
            spec,
            processor: Processor::new(store.clone(), vm.clone()),
            pass: tokio::sync::Mutex::new(()),
            status: Mutex::new(ReplicaStatus {
                vm: vm.to_string(),
                newest_point: None,
                newest_point_time: None,
                error: None,
            }),
            task: Mutex::new(None),
        });
        if let Ok(points) = store.list_points(&vm).await {
            r.note_points(&points);
        }
        let me = r.clone();
        *lock(&r.task) = Some(tokio::spawn(async move { me.run().await }));
        Ok(r)
    }

    fn note_points(&self, points: &[PointRecord]) {
        if let Some(p) = points.iter().rev().find(|p| p.is_restorable()) {
            let mut s = lock(&self.status);
            s.newest_point = Some(p.id.clone());
            s.newest_point_time = Some(ms(p.time()));
        }
    }

    /// One processing pass now (failover to `latest`).
    pub async fn process(&self) -> Result<ReplicaStatus> {
        let _one = self.pass.lock().await;
        let r = self
            .processor
            .process(Cut::Latest)
            .await
            .with_context(|| format!("processing the journal of VM {}", self.vm));
        match r {
            Ok(rep) => {
                self.note_points(&rep.points);
                lock(&self.status).error = None;
                Ok(self.status())
            }
            Err(e) => {
                lock(&self.status).error = Some(format!("{e:#}"));
                Err(e)
            }
        }
    }

    /// Status.
    pub fn status(&self) -> ReplicaStatus {
        lock(&self.status).clone()
    }

    async fn run(self: Arc<Self>) {
        // Which journal-backed points get stored: the item's policy's store rule (how far back
        // the chain may reach); retention rolls the base forward and applies the policy.
        let policy = self.spec.policy.clone().unwrap_or_default();
        let rule = StoreRule {
            min_interval: Duration::from_secs(self.spec.store_secs),
            ..StoreRule::for_policy(&policy)
        };
        let mut last_store = Instant::now();
        loop {
            tokio::time::sleep(PASS).await;
            if let Err(e) = self.process().await {
                tracing::warn!(vm = %self.vm, error = format!("{e:#}"), "processing failed; will retry");
            }
            if last_store.elapsed() < STORE_PASS {
                continue;
            }
            last_store = Instant::now();
            let _one = self.pass.lock().await;
            if let Err(e) = self.processor.store_due_with(&rule).await {
                tracing::warn!(vm = %self.vm, error = format!("{:#}", anyhow::Error::new(e)), "storing points failed; will retry");
            }
            if let Err(e) = self.processor.retain(&policy, SystemTime::now()).await {
                tracing::warn!(vm = %self.vm, error = format!("{:#}", anyhow::Error::new(e)), "retention failed; will retry");
            }
        }
    }

    /// Stops processing at once: the loop is cancelled even in the middle of storing a point
    /// (the store is safe against that, as against a kill: chunks and manifests first, the
    /// record last), so failover never waits for a point of a big disk to be stored; then a
    /// `process` request in flight is waited for.
    pub async fn stop(&self) {
        let task = lock(&self.task).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        let _one = self.pass.lock().await;
    }
}
