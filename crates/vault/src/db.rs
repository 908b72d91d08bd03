//! The vault's state: one SQLite file, schema by numbered migrations, every change in a
//! transaction. SQLite's journal (WAL) makes each transaction atomic and durable
//! (`synchronous=FULL`), so a vault killed at any moment restarts from the last committed one.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::error::VaultError;

/// Migrations, in order; `schema_version` holds how many ran. Frozen once released: add, never
/// edit.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE regions (
        name TEXT PRIMARY KEY,
        store_url TEXT NOT NULL
     );
     CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        region TEXT NOT NULL REFERENCES regions(name),
        url TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
     );
     CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
     );
     CREATE TABLE vms (
        name TEXT PRIMARY KEY,
        region TEXT NOT NULL REFERENCES regions(name),
        definition TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE items (
        vm TEXT PRIMARY KEY REFERENCES vms(name),
        state TEXT NOT NULL,
        policy TEXT NOT NULL REFERENCES policies(name),
        source_region TEXT NOT NULL REFERENCES regions(name),
        target_region TEXT NOT NULL REFERENCES regions(name),
        active_region TEXT NOT NULL REFERENCES regions(name),
        percent_synced INTEGER NOT NULL DEFAULT 0,
        epoch INTEGER NOT NULL DEFAULT 1,
        job INTEGER,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        operation TEXT NOT NULL,
        vm TEXT,
        from_state TEXT,
        status TEXT NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0,
        steps TEXT NOT NULL,
        params TEXT NOT NULL,
        error TEXT,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
     );
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        level TEXT NOT NULL,
        vm TEXT,
        job INTEGER,
        message TEXT NOT NULL
     );",
    // 2: what the agents report: replication progress (RPO) and hydration.
    "ALTER TABLE items ADD COLUMN replicated_as_of INTEGER;
     ALTER TABLE items ADD COLUMN hydrated_percent INTEGER;",
    // 3: the item's target settings (the VM's size after failover).
    "ALTER TABLE items ADD COLUMN target_vcpus INTEGER;
     ALTER TABLE items ADD COLUMN target_memory_mib INTEGER;",
    // 4: DR drills: the running drill (JSON), the last successful one and its notes.
    "ALTER TABLE items ADD COLUMN drill TEXT;
     ALTER TABLE items ADD COLUMN last_drill_at INTEGER;
     ALTER TABLE items ADD COLUMN last_drill_notes TEXT;",
    // 5: replication groups (multi-VM consistency) and their cuts (the shared points).
    "CREATE TABLE replication_groups (
        name TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
     );
     ALTER TABLE items ADD COLUMN replication_group TEXT REFERENCES replication_groups(name);
     CREATE TABLE group_cuts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        grp TEXT NOT NULL REFERENCES replication_groups(name) ON DELETE CASCADE,
        time_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        members TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE INDEX group_cuts_by_group ON group_cuts(grp, time_ns);",
    // 6: recovery plans (crate::plan, crate::plan_run).
    PLANS_MIGRATION,
    // 7: app-consistent points that failed in a row (the guest could not be frozen), and why.
    "ALTER TABLE items ADD COLUMN app_misses INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE items ADD COLUMN app_error TEXT;",
    // 8: portal sessions (crate::portal), keyed by the BLAKE3 hash of the session id (the id
    // itself is only in the browser's cookie), with the CSRF token and the expiry (ms).
    "CREATE TABLE portal_sessions (
        id_hash TEXT PRIMARY KEY,
        csrf TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX portal_sessions_by_expiry ON portal_sessions (expires_at);",
];

/// Recovery plans: each plan's definition (JSON, `crate::plan::PlanDefinition`), and its runs
/// (one per plan operation: the definition as it was when the run began, the steps with their
/// statuses, the step it is at, the error it stopped on). Self-contained so that migrations
/// added beside it merge by reordering.
const PLANS_MIGRATION: &str = "CREATE TABLE plans (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE plan_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        plan TEXT NOT NULL REFERENCES plans(name) ON DELETE CASCADE,
        operation TEXT NOT NULL,
        params TEXT NOT NULL,
        definition TEXT NOT NULL,
        status TEXT NOT NULL,
        current_step INTEGER NOT NULL DEFAULT 0,
        steps TEXT NOT NULL,
        error TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER
     );
     CREATE INDEX plan_runs_by_plan ON plan_runs (plan, id);";

/// Milliseconds since 1970.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The vault database (cheap to clone; one connection behind a lock: the vault's writes are
/// few and short).
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: String,
}

impl Db {
    /// Opens (creating if missing) the database at `path` and runs pending migrations.
    pub fn open(path: &Path) -> Result<Self, VaultError> {
        let shown = path.display().to_string();
        let err = |source| VaultError::Db {
            what: format!("opening {shown}"),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        migrate(&mut conn, &shown)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
            path: shown,
        })
    }

    /// The file.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic in another request cannot leave a transaction half-applied (SQLite rolls it
        // back when it is dropped), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction (committed if it returns `Ok`).
    pub fn tx<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|source| VaultError::Db {
            what: what.to_string(),
            source,
        })?;
        let out = f(&tx)?;
        tx.commit().map_err(|source| VaultError::Db {
            what: what.to_string(),
            source,
        })?;
        Ok(out)
    }
}

fn migrate(conn: &mut Connection, path: &str) -> Result<(), VaultError> {
    let err = |source| VaultError::Db {
        what: format!("migrating {path}"),
        source,
    };
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(err)?;
    let tx = conn.transaction().map_err(err)?;
    let have: Option<i64> = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map_err(err)?;
    let have = have.unwrap_or(0);
    if have > MIGRATIONS.len() as i64 {
        return Err(VaultError::NewerSchema {
            path: path.to_string(),
            found: have,
            known: MIGRATIONS.len() as i64,
        });
    }
    for m in &MIGRATIONS[have as usize..] {
        tx.execute_batch(m).map_err(err)?;
    }
    tx.execute("DELETE FROM schema_version", []).map_err(err)?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        params![MIGRATIONS.len() as i64],
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(())
}

/// Maps a SQLite error of statement `what`.
pub fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> VaultError {
    move |source| VaultError::Db {
        what: what.to_string(),
        source,
    }
}
