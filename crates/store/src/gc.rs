//! Maintenance: [`Store::verify`] and [`Store::gc`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use lifeboat_types::{Seq, VmId};

use crate::backend::{PutMode, PutOutcome};
use crate::error::{FormatError, Result, StoreError};
use crate::format::{
    chunk_key, decode_chunk, decode_json, decode_page, decode_root, id_of_key, page_key, root_key,
    Entry, EpochRecord, GcLockRecord, LeaseRecord, ObjectId, Root, EPOCH_FORMAT, GC_LOCK_FORMAT,
    GC_LOCK_KEY, LEASE_FORMAT, MAX_CHUNK_SIZE,
};
use crate::store::{
    check_id, check_segment_bytes, decode_point, parse_point_id, parse_segment_name, point_key,
    Store,
};

/// Slack for clock granularity and skew between writers, GC and the backend: a writer treats
/// objects modified up to this long before it started as its own, and GC keeps them.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(2);

/// An object that failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadObject {
    /// Its key.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Objects checked, of every kind.
    pub objects: usize,
    /// Chunks checked.
    pub chunks: usize,
    /// Points checked.
    pub points: usize,
    /// Segments checked.
    pub segments: usize,
    /// Every bad object, with the reason.
    pub bad: Vec<BadObject>,
}

impl VerifyReport {
    /// Whether everything checked out.
    pub fn is_ok(&self) -> bool {
        self.bad.is_empty()
    }
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Points whose objects were kept.
    pub points: usize,
    /// Live writer leases honoured.
    pub leases: usize,
    /// Keys deleted.
    pub deleted: Vec<String>,
    /// Unreferenced objects kept because they are younger than the cutoff.
    pub kept_young: usize,
    /// Live writers were found: nothing was swept (run GC again later).
    pub deferred: bool,
    /// Leftover staging files of interrupted puts that were removed (paths).
    pub staging_removed: Vec<String>,
}

/// Staging files older than this (or the grace period, if longer) are leftovers.
pub const STAGING_AGE: Duration = Duration::from_secs(600);

/// The GC lock this collector holds.
struct GcLock {
    refreshed: Instant,
    body: Bytes,
}

fn bad(key: &str, reason: impl std::fmt::Display) -> BadObject {
    BadObject {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn chain(e: &StoreError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl Store {
    /// Re-reads and re-hashes every object: chunks (decoded, BLAKE3 of the plain data),
    /// index pages and roots (BLAKE3 of the bytes, then decoded), point records (parsed, and
    /// every root, page and chunk they reference must be present and good: otherwise the point
    /// is reported), segments (parsed as sealed journal segments matching their key), epoch
    /// records and writer leases. Any other object is reported as unexpected.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let mut rep = VerifyReport::default();
        let mut objects = self.backend.list("").await?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        rep.objects = objects.len();
        let mut good_chunks: HashSet<ObjectId> = HashSet::new();
        let mut pages: HashMap<ObjectId, Vec<Entry>> = HashMap::new();
        let mut roots: HashMap<ObjectId, Root> = HashMap::new();
        let mut point_keys = Vec::new();
        // Stored journal ranges per VM (from segment names), for journal-backed points.
        let mut ranges: HashMap<VmId, Vec<(Seq, Seq)>> = HashMap::new();
        for o in &objects {
            let key = o.key.as_str();
            let top = key.split('/').next().unwrap_or("");
            match top {
                "chunks" => {
                    rep.chunks += 1;
                    let Some(id) = id_of_key("chunks", key) else {
                        rep.bad.push(bad(key, "not a chunk key"));
                        continue;
                    };
                    match self.backend.get(key).await {
                        Ok(obj) => match decode_chunk(&obj, &id, MAX_CHUNK_SIZE as usize) {
                            Ok(_) => {
                                good_chunks.insert(id);
                            }
                            Err(p) => rep.bad.push(bad(key, p)),
                        },
                        Err(e) => rep.bad.push(bad(key, chain(&e))),
                    }
                }
                "pages" | "roots" => {
                    let Some(id) = id_of_key(top, key) else {
                        rep.bad.push(bad(key, format!("not a {top} key")));
                        continue;
                    };
                    let obj = match self.backend.get(key).await {
                        Ok(o) => o,
                        Err(e) => {
                            rep.bad.push(bad(key, chain(&e)));
                            continue;
                        }
                    };
                    if let Err(e) = check_id(key, &id, &obj) {
                        rep.bad.push(bad(key, chain(&e)));
                        continue;
                    }
                    if top == "pages" {
                        match decode_page(&obj) {
                            Ok(p) => {
                                pages.insert(id, p);
                            }
                            Err(p) => rep.bad.push(bad(key, p)),
                        }
                    } else {
                        match decode_root(&obj) {
                            Ok(r) => {
                                roots.insert(id, r);
                            }
                            Err(p) => rep.bad.push(bad(key, p)),
                        }
                    }
                }
                "vms" => {
                    let parts: Vec<&str> = key.split('/').collect();
                    let vm = parts.get(1).and_then(|v| VmId::new(*v).ok());
                    match (vm, parts.as_slice()) {
                        (Some(_), [_, _, "points", name]) if name.ends_with(".json") => {
                            point_keys.push(o.key.clone());
                        }
                        (Some(vm), [_, _, "segments", name]) => {
                            rep.segments += 1;
                            if let Some(r) = parse_segment_name(name) {
                                ranges.entry(vm.clone()).or_default().push(r);
                            }
                            if let Some(b) = self.verify_segment(&vm, key, name).await {
                                rep.bad.push(b);
                            }
                        }
                        (Some(_), [_, _, "epochs", _]) => {
                            if let Err(e) = self.get_json::<EpochRecord>(key, EPOCH_FORMAT).await {
                                rep.bad.push(bad(key, chain(&e)));
                            }
                        }
                        (Some(_), [_, _, "pins", name]) if name.ends_with(".json") => {
                            let got = self.backend.get(key).await.map_err(|e| chain(&e)).and_then(
                                |obj| {
                                    crate::format::decode_json(
                                        &obj,
                                        crate::pins::PIN_FORMAT,
                                        |r: &crate::pins::PinRecord| (&r.format, r.version),
                                    )
                                    .map_err(|p| p.to_string())
                                },
                            );
                            if let Err(e) = got {
                                rep.bad.push(bad(key, e));
                            }
                        }
                        (Some(_), [_, _, "divergence.json"]) => {
                            let got = self.backend.get(key).await.map_err(|e| chain(&e)).and_then(
                                |obj| {
                                    crate::format::decode_json(
                                        &obj,
                                        crate::divergence::DIVERGENCE_FORMAT,
                                        |r: &crate::divergence::DivergenceRecord| {
                                            (&r.format, r.version)
                                        },
                                    )
                                    .map_err(|p| p.to_string())
                                },
                            );
                            if let Err(e) = got {
                                rep.bad.push(bad(key, e));
                            }
                        }
                        (Some(_), [_, _, "writer-lease"]) => {
                            if let Err(e) = self.get_json::<LeaseRecord>(key, LEASE_FORMAT).await {
                                rep.bad.push(bad(key, chain(&e)));
                            }
                        }
                        _ => rep.bad.push(bad(key, "unexpected object in the store")),
                    }
                }
                "gc" if key == GC_LOCK_KEY => {
                    if let Err(e) = self.get_json::<GcLockRecord>(key, GC_LOCK_FORMAT).await {
                        if !e.is_not_found() {
                            rep.bad.push(bad(key, chain(&e)));
                        }
                    }
                }
                _ => rep.bad.push(bad(key, "unexpected object in the store")),
            }
        }
        // Roots must fit their pages.
        for (rid, r) in &roots {
            for (p, pid) in r.pages.iter().enumerate() {
                if let Some(entries) = pages.get(pid) {
                    if entries.len() != r.entries_in_page(p) {
                        rep.bad.push(bad(
                            &root_key(rid),
                            format!(
                                "page {} has {} entries, expected {}",
                                page_key(pid),
                                entries.len(),
                                r.entries_in_page(p)
                            ),
                        ));
                    }
                }
            }
        }
        // Points must reference only present, good objects.
        for key in point_keys {
            rep.points += 1;
            let parts: Vec<&str> = key.split('/').collect();
            let (Some(vm), Some(name)) =
                (parts.get(1).and_then(|v| VmId::new(*v).ok()), parts.get(3))
            else {
                continue;
            };
            let id = name.trim_end_matches(".json");
            let point = match self.backend.get(&key).await {
                Ok(obj) => decode_point(&key, &vm, id, &obj),
                Err(e) => Err(e),
            };
            let point = match point {
                Ok(p) => p,
                Err(e) => {
                    rep.bad.push(bad(&key, chain(&e)));
                    continue;
                }
            };
            let mut missing: Vec<String> = Vec::new();
            if let Some(base) = &point.base {
                let base_key = point_key(&vm, base);
                if !objects.iter().any(|o| o.key == base_key) {
                    missing.push(format!("base point {base_key}"));
                }
                let from = parse_point_id(base).map_or(point.seq(), |(n, _)| n.min(point.seq()));
                let have = ranges.get(&vm).map(Vec::as_slice).unwrap_or(&[]);
                if let Some(hole) = first_uncovered(have, from.next(), point.seq()) {
                    missing.push(format!(
                        "journal records {hole}..={} (no stored segment holds them)",
                        point.seq()
                    ));
                }
            }
            for d in &point.disks {
                let Some(r) = roots.get(&d.root) else {
                    missing.push(root_key(&d.root));
                    continue;
                };
                if r.disk_size != d.size {
                    missing.push(format!(
                        "{} (size {} != {})",
                        root_key(&d.root),
                        r.disk_size,
                        d.size
                    ));
                }
                for pid in &r.pages {
                    let Some(entries) = pages.get(pid) else {
                        missing.push(page_key(pid));
                        continue;
                    };
                    for e in entries {
                        if let Entry::Chunk(c) = e {
                            if !good_chunks.contains(c) {
                                missing.push(chunk_key(c));
                            }
                        }
                    }
                }
            }
            if !missing.is_empty() {
                missing.sort();
                missing.dedup();
                let n = missing.len();
                missing.truncate(5);
                rep.bad.push(bad(
                    &key,
                    format!(
                        "references {n} missing or bad object(s): {}",
                        missing.join(", ")
                    ),
                ));
            }
        }
        Ok(rep)
    }

    async fn verify_segment(&self, vm: &VmId, key: &str, name: &str) -> Option<BadObject> {
        let Some((first, last)) = parse_segment_name(name) else {
            return Some(bad(key, "not a segment name"));
        };
        let bytes = match self.backend.get(key).await {
            Ok(b) => b,
            Err(e) => return Some(bad(key, chain(&e))),
        };
        let bytes = match crate::store::stored_segment_bytes(key, bytes) {
            Ok(b) => b,
            Err(e) => return Some(bad(key, chain(&e))),
        };
        match check_segment_bytes(vm, key, &bytes) {
            Err(e) => Some(bad(key, chain(&e))),
            Ok((h, records)) => {
                let end = records
                    .last()
                    .map(|r| r.seq)
                    .unwrap_or(Seq(h.first_seq.0.saturating_sub(1)));
                if h.vm != *vm || h.first_seq != first || end != last {
                    Some(bad(
                        key,
                        format!("content is VM {} {}..={}", h.vm, h.first_seq, end),
                    ))
                } else {
                    None
                }
            }
        }
    }

    async fn get_json<T: for<'de> serde::Deserialize<'de> + JsonRecord>(
        &self,
        key: &str,
        format: &str,
    ) -> Result<T> {
        let obj = self.backend.get(key).await?;
        decode_json(&obj, format, T::header).map_err(|p| StoreError::corrupt(key, p))
    }

    /// Deletes every chunk, index page and root that no point (and no live writer) references
    /// and that is older than the cutoff; see "Garbage collection" in the crate doc for why this
    /// never deletes an object a point needs. Stops with an error, deleting nothing more, if a
    /// point or anything it references cannot be read.
    pub async fn gc(&self) -> Result<GcReport> {
        self.gc_with_grace(self.config.gc_grace).await
    }

    /// [`Store::gc`] with an explicit grace period.
    pub async fn gc_with_grace(&self, grace: Duration) -> Result<GcReport> {
        let mut lock = self.take_gc_lock().await?;
        let r = self.sweep(grace, &mut lock).await;
        let released = self.backend.delete(GC_LOCK_KEY).await;
        let rep = r?;
        released?;
        Ok(rep)
    }

    /// Takes the store's GC lock (create-only; a lock older than `gc_lock_ttl` is a killed
    /// collector's and is taken over).
    async fn take_gc_lock(&self) -> Result<GcLock> {
        let body = |now: SystemTime| {
            serde_json::to_vec(&GcLockRecord {
                format: GC_LOCK_FORMAT.to_string(),
                version: 1,
                started_ns: crate::store::to_ns(now),
            })
            .map(Bytes::from)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))
        };
        let now = SystemTime::now();
        match self
            .backend
            .put(GC_LOCK_KEY, body(now)?, PutMode::Create)
            .await?
        {
            PutOutcome::Written => {}
            PutOutcome::AlreadyExists => {
                let age = match self.backend.head(GC_LOCK_KEY).await? {
                    Some(h) => now
                        .duration_since(h.last_modified)
                        .unwrap_or(Duration::ZERO),
                    None => self.config.gc_lock_ttl, // released meanwhile
                };
                if age < self.config.gc_lock_ttl {
                    return Err(StoreError::GcRunning {
                        key: GC_LOCK_KEY.to_string(),
                        age_secs: age.as_secs(),
                    });
                }
                tracing::warn!(age_secs = age.as_secs(), "taking over a stale GC lock");
                self.backend
                    .put(GC_LOCK_KEY, body(now)?, PutMode::Overwrite)
                    .await?;
            }
        }
        Ok(GcLock {
            refreshed: Instant::now(),
            body: body(now)?,
        })
    }

    /// Refreshes the GC lock when a quarter of its TTL has passed; fails (deleting nothing
    /// more) if the collector stalled so long that writers may have taken the lock for dead.
    async fn keep_gc_lock(&self, lock: &mut GcLock) -> Result<()> {
        let ttl = self.config.gc_lock_ttl;
        let since = lock.refreshed.elapsed();
        if since < ttl / 4 {
            return Ok(());
        }
        if since >= ttl / 2 {
            return Err(StoreError::InvalidArgument(format!(
                "garbage collection stalled for {} s, past half its lock's TTL: stopped, \
                 deleting nothing more; run it again",
                since.as_secs()
            )));
        }
        self.backend
            .put(GC_LOCK_KEY, lock.body.clone(), PutMode::Overwrite)
            .await?;
        lock.refreshed = Instant::now();
        Ok(())
    }

    async fn sweep(&self, grace: Duration, lock: &mut GcLock) -> Result<GcReport> {
        let mut rep = GcReport::default();
        let now = SystemTime::now();
        let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut roots: HashSet<ObjectId> = HashSet::new();
        // 1. Live writer leases, listed after the lock was taken (see the crate doc): with one,
        //    nothing is swept.
        for o in self.backend.list("vms").await? {
            if !o.key.ends_with("/writer-lease") {
                continue;
            }
            let live = now
                .duration_since(o.last_modified)
                .map(|age| age < self.config.lease_ttl)
                .unwrap_or(true);
            if live {
                rep.leases += 1;
            }
        }
        if rep.leases > 0 {
            rep.deferred = true;
            return Ok(rep);
        }
        // 2. Points.
        for o in self.backend.list("vms").await? {
            let parts: Vec<&str> = o.key.split('/').collect();
            if let [_, vm, "points", name] = parts.as_slice() {
                let vm = VmId::new(*vm).map_err(|_| {
                    StoreError::corrupt(&o.key, FormatError::Json("invalid VM id in key".into()))
                })?;
                let id = name.trim_end_matches(".json");
                let obj = self.backend.get(&o.key).await;
                let point = match obj {
                    Ok(obj) => decode_point(&o.key, &vm, id, &obj)?,
                    Err(StoreError::NotFound { .. }) => continue, // deleted meanwhile
                    Err(e) => return Err(e),
                };
                rep.points += 1;
                roots.extend(point.disks.iter().map(|d| d.root));
            }
        }
        // 3. Mark.
        let mut pages: HashSet<ObjectId> = HashSet::new();
        let mut chunks: HashSet<ObjectId> = HashSet::new();
        for r in &roots {
            let root = self.get_root(r).await?;
            for p in root.pages {
                if pages.insert(p) {
                    for e in self.get_page(&p).await? {
                        if let Entry::Chunk(c) = e {
                            chunks.insert(c);
                        }
                    }
                }
            }
        }
        // 4. Sweep: roots first, then pages, then chunks (a reader never meets a dangling
        //    reference from an object GC has left in place).
        for (dir, marked) in [("roots", &roots), ("pages", &pages), ("chunks", &chunks)] {
            for o in self.backend.list(dir).await? {
                let Some(id) = id_of_key(dir, &o.key) else {
                    continue; // not ours: verify reports it
                };
                if marked.contains(&id) {
                    continue;
                }
                self.keep_gc_lock(lock).await?;
                if o.last_modified >= cutoff {
                    rep.kept_young += 1;
                    continue;
                }
                // Look again right before deleting (a lease-less tool may have refreshed it).
                match self.backend.head(&o.key).await? {
                    Some(h) if h.last_modified < cutoff => {
                        self.backend.delete(&o.key).await?;
                        rep.deleted.push(o.key);
                    }
                    Some(_) => rep.kept_young += 1,
                    None => {}
                }
            }
        }
        // 5. Staging files of puts interrupted by a crash (local directories); a put publishes
        //    its staging file within moments, so ten minutes is far past any live one.
        let stale = now
            .checked_sub(grace.max(STAGING_AGE))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        rep.staging_removed = self.backend.remove_stale_staging(stale).await?;
        rep.deleted.sort();
        Ok(rep)
    }
}

/// JSON records with a format header.
trait JsonRecord {
    fn header(&self) -> (&str, u32);
}
impl JsonRecord for EpochRecord {
    fn header(&self) -> (&str, u32) {
        (&self.format, self.version)
    }
}
impl JsonRecord for GcLockRecord {
    fn header(&self) -> (&str, u32) {
        (&self.format, self.version)
    }
}
impl JsonRecord for LeaseRecord {
    fn header(&self) -> (&str, u32) {
        (&self.format, self.version)
    }
}

/// The first record in `from..=to` that no range holds (`None`: all held).
pub(crate) fn first_uncovered(ranges: &[(Seq, Seq)], from: Seq, to: Seq) -> Option<Seq> {
    let mut sorted = ranges.to_vec();
    sorted.sort();
    let mut next = from;
    for (a, b) in sorted {
        if next > to {
            break;
        }
        if a > next {
            return Some(next);
        }
        if b >= next {
            next = b.next();
        }
    }
    (next <= to).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_journal_ranges() {
        let r = [(Seq(5), Seq(9)), (Seq(1), Seq(4)), (Seq(12), Seq(20))];
        assert_eq!(first_uncovered(&r, Seq(1), Seq(9)), None);
        assert_eq!(first_uncovered(&r, Seq(3), Seq(8)), None);
        assert_eq!(first_uncovered(&r, Seq(3), Seq(12)), Some(Seq(10)));
        assert_eq!(first_uncovered(&r, Seq(12), Seq(21)), Some(Seq(21)));
        assert_eq!(first_uncovered(&r, Seq(0), Seq(2)), Some(Seq(0)));
        assert_eq!(first_uncovered(&[], Seq(1), Seq(1)), Some(Seq(1)));
        // An empty range (a point right at its base) needs nothing.
        assert_eq!(first_uncovered(&[], Seq(5), Seq(4)), None);
    }
}
