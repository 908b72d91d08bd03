//! The backend boundary: the few object operations the store needs, over `object_store`.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload};

use crate::error::{Result, StoreError};

/// How a put treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (atomically: readers see the old or the new object, never a mix).
    Overwrite,
    /// Only create: if the key exists, nothing is written ([`PutOutcome::AlreadyExists`]).
    Create,
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Written,
    /// [`PutMode::Create`] found the key taken; the existing object is unchanged.
    AlreadyExists,
}

/// An object's metadata, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the store's root.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (the backend's clock).
    pub last_modified: SystemTime,
}

/// The object operations the region store is built on. Keys are `/`-separated relative paths of
/// `[A-Za-z0-9._-]` segments.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Writes a whole object atomically, durably (it survives a crash of the machine once this
    /// returns).
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<PutOutcome>;
    /// Writes a whole object atomically, like [`Backend::put`], from the concatenation of
    /// `parts`, but it need only be durable once a later [`Backend::sync`] names it: readers
    /// see it when this returns, a crash of the machine before the sync may lose it. Bulk
    /// writers put many objects this way and sync them together, off their critical path.
    /// Default: a durable [`Backend::put`].
    async fn put_unsynced(
        &self,
        key: &str,
        parts: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let data = match <[Bytes; 1]>::try_from(parts) {
            Ok([one]) => one,
            Err(parts) => Bytes::from(parts.concat()),
        };
        self.put(key, data, mode).await
    }
    /// Makes the objects `keys` durable, whoever wrote them and however (after it returns,
    /// they survive a crash of the machine as if each had been written with
    /// [`Backend::put`]); an absent one may be [`StoreError::NotFound`]. A writer calls it for
    /// every object a record will reference before it writes the record, including objects it
    /// found already there (another writer's [`Backend::put_unsynced`] may not be synced yet).
    /// Default: nothing to do (every put is durable).
    async fn sync(&self, keys: &[String]) -> Result<()> {
        let _ = keys;
        Ok(())
    }
    /// Reads a whole object ([`StoreError::NotFound`] if absent).
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// Reads a byte range of an object (the range must lie inside it).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;
    /// An object's metadata, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;
    /// Every object whose key starts with `prefix/` (recursively), in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes an object; deleting an absent object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// A human description (for logs).
    fn describe(&self) -> String;
    /// The directory of a local-directory backend whose objects are plain files `<dir>/<key>`
    /// (written with the staging and publishing of [`Backend::put_unsynced`]): a
    /// [`crate::ChunkStager`] writes chunks there itself. Default: none.
    fn local_dir(&self) -> Option<&std::path::Path> {
        None
    }
    /// Removes what interrupted puts left behind that is older than `older_than` (a local
    /// directory's staging files); returns what it removed, as paths. Other backends have
    /// nothing to clean.
    async fn remove_stale_staging(&self, older_than: SystemTime) -> Result<Vec<String>> {
        let _ = older_than;
        Ok(Vec::new())
    }
}

/// [`Backend`] over any `object_store` implementation, with an optional key prefix.
///
/// Atomicity: `LocalFileSystem` writes every put to a staging file `<key>#<n>` and publishes it
/// with `rename(2)` (overwrite) or `link(2)` (create, which fails if the key exists), so readers
/// never see a partial object and a create never replaces one; staging files left by a crash
/// are ignored by listings and removed by GC ([`Backend::remove_stale_staging`]). With `fsync`
/// the file and its directory are synced before the put returns. A local directory's
/// [`Backend::put_unsynced`] does the same staging itself and publishes a create with
/// `renameat2(RENAME_NOREPLACE)` where the filesystem has it (else link + unlink), without
/// fsync but starting the file's write-back at once; [`Backend::sync`] then waits for the
/// files' data, makes it and the directories durable with one `syncfs` (Linux; elsewhere an
/// fsync of each file and directory), and drops the files' pages from the page cache.
/// `InMemory` swaps whole objects under a lock. S3 and Azure puts are atomic and durable by the
/// services' contracts (so `sync` has nothing to do), and both support create-only puts
/// (`If-None-Match: *`).
#[derive(Debug, Clone)]
pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// A local directory's root (for its staging files, unsynced puts and syncs).
    local_root: Option<std::path::PathBuf>,
    /// A local directory's puts fsync (and so does [`Backend::sync`]).
    fsync: bool,
}

impl ObjectBackend {
    /// Wraps a store; `prefix` (may be empty) is prepended to every key.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectBackend {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            local_root: None,
            fsync: false,
        }
    }

    /// A local directory at `root` (whose staging files [`Backend::remove_stale_staging`]
    /// cleans), taken to fsync its puts (see [`ObjectBackend::local_with`]).
    pub fn local(store: Arc<dyn ObjectStore>, root: &std::path::Path) -> Self {
        ObjectBackend::local_with(store, root, true)
    }

    /// A local directory at `root`, `store` being `LocalFileSystem` over it with fsync on or
    /// off as `fsync` says ([`Backend::put_unsynced`] and [`Backend::sync`] follow it).
    pub fn local_with(store: Arc<dyn ObjectStore>, root: &std::path::Path, fsync: bool) -> Self {
        ObjectBackend {
            local_root: Some(root.to_path_buf()),
            fsync,
            ..ObjectBackend::new(store, "")
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{}", self.prefix, key))
        }
    }

    fn strip(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/'))
                .unwrap_or(s)
                .to_string()
        }
    }

    async fn put_payload(
        &self,
        key: &str,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            },
            ..Default::default()
        };
        match self.store.put_opts(&self.path(key), payload, opts).await {
            Ok(_) => Ok(PutOutcome::Written),
            Err(object_store::Error::AlreadyExists { .. }) if mode == PutMode::Create => {
                Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => Err(StoreError::backend("put", key, e)),
        }
    }
}

#[async_trait]
impl Backend for ObjectBackend {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<PutOutcome> {
        self.put_payload(key, PutPayload::from_bytes(data), mode)
            .await
    }

    async fn put_unsynced(
        &self,
        key: &str,
        parts: Vec<Bytes>,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        let Some(root) = &self.local_root else {
            return self
                .put_payload(key, PutPayload::from_iter(parts), mode)
                .await;
        };
        let path = root.join(self.path(key).as_ref());
        tokio::task::spawn_blocking(move || crate::bulk::put_local(&path, &parts, mode))
            .await
            .map_err(|e| StoreError::InvalidArgument(format!("put task: {e}")))?
            .map_err(|source| StoreError::Io {
                op: "put",
                path: key.to_string(),
                source,
            })
    }

    async fn sync(&self, keys: &[String]) -> Result<()> {
        let Some(root) = self.local_root.clone().filter(|_| self.fsync) else {
            return Ok(());
        };
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|k| self.path(k).to_string()).collect();
        tokio::task::spawn_blocking(move || sync_files(&root, &keys))
            .await
            .map_err(|e| StoreError::InvalidArgument(format!("sync task: {e}")))?
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let r = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| StoreError::backend("get", key, e))?;
        r.bytes()
            .await
            .map_err(|e| StoreError::backend("get", key, e))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.path(key), range)
            .await
            .map_err(|e| StoreError::backend("get_range", key, e))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self.store.head(&self.path(key)).await {
            Ok(m) => Ok(Some(ObjectInfo {
                key: key.to_string(),
                size: m.size,
                last_modified: SystemTime::from(m.last_modified),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::backend("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| StoreError::backend("list", prefix, e))?;
        Ok(metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.strip(&m.location),
                size: m.size,
                last_modified: SystemTime::from(m.last_modified),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::backend("delete", key, e)),
        }
    }

    fn local_dir(&self) -> Option<&std::path::Path> {
        self.local_root
            .as_deref()
            .filter(|_| self.prefix.is_empty())
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            self.store.to_string()
        } else {
            format!("{}/{}", self.store, self.prefix)
        }
    }

    async fn remove_stale_staging(&self, older_than: SystemTime) -> Result<Vec<String>> {
        let Some(root) = self.local_root.clone() else {
            return Ok(Vec::new());
        };
        let shown = root.display().to_string();
        tokio::task::spawn_blocking(move || remove_staging_files(&root, older_than))
            .await
            .map_err(|e| StoreError::InvalidArgument(format!("staging cleanup task: {e}")))?
            .map_err(|source| StoreError::Staging {
                path: shown,
                source,
            })
    }
}

/// Options for opening a store URL.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Local directories: fsync every object and its directory before a put returns
    /// (default on: the shipper deletes its spool once the store has a segment).
    pub fsync: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { fsync: true }
    }
}

/// Opens a backend from a URL: a plain path or `file:///abs/path` (a local directory, created
/// if missing), `memory://` (a fresh in-memory store), `s3://bucket/prefix` (feature `s3`,
/// credentials and region from the `AWS_*` environment), `az://container/prefix` (feature
/// `azure`, account and key from the `AZURE_*` environment).
pub fn open_url(url: &str, opts: OpenOptions) -> Result<Arc<dyn Backend>> {
    let bad = |reason: &str| StoreError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if url == "memory://" || url == "memory:" {
        let s: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        return Ok(Arc::new(ObjectBackend::new(s, "")));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = split_bucket(rest).ok_or_else(|| bad("no bucket name"))?;
        return open_s3(url, bucket, prefix);
    }
    if let Some(rest) = url.strip_prefix("az://") {
        let (container, prefix) = split_bucket(rest).ok_or_else(|| bad("no container name"))?;
        return open_azure(url, container, prefix);
    }
    let path = if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("a file URL needs an absolute path: file:///abs/path"));
        }
        rest
    } else if url.contains("://") {
        return Err(bad(
            "unknown scheme: use a path, file://, memory://, s3:// or az://",
        ));
    } else {
        url
    };
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    std::fs::create_dir_all(path).map_err(|source| StoreError::CreateDir {
        path: path.to_string(),
        source,
    })?;
    let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
        .map_err(|e| StoreError::backend("open", path, e))?
        .with_fsync(opts.fsync);
    Ok(Arc::new(ObjectBackend::local_with(
        Arc::new(fs),
        std::path::Path::new(path),
        opts.fsync,
    )))
}

/// [`Backend::sync`] of a local directory. On Linux: starts the write-back of every file (so
/// that the disk writes them together), waits for each file's data to be written
/// (`sync_file_range`, which also reports a write error of that file), then makes everything
/// durable with one `syncfs(2)` of the store's filesystem (the files' inodes, the directories
/// on their paths, which were created and renamed into without fsync, and one flush of the
/// disk's cache), and drops the files' pages from the page cache (see the `bulk` module). That
/// is the guarantee of an fsync of each file and each directory, for one cache flush per batch
/// instead of one per object; Proxmox Backup Server's default `sync-level` (`filesystem`)
/// makes a backup durable the same way. It also writes back whatever else is dirty on that
/// filesystem. Elsewhere: an fsync of each file and each directory up to `root` once.
/// Measured in bench/RESULTS.md ("Initial replication, fifth measurement").
fn sync_files(root: &std::path::Path, keys: &[String]) -> Result<()> {
    let io_err = |path: &std::path::Path, source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::NotFound {
                key: path
                    .strip_prefix(root)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
            }
        } else {
            StoreError::Io {
                op: "fsync",
                path: path.display().to_string(),
                source,
            }
        }
    };
    let mut files = Vec::with_capacity(keys.len());
    for key in keys {
        let path = root.join(key);
        let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        crate::bulk::start_writeback(&file);
        files.push((path, file));
    }
    #[cfg(target_os = "linux")]
    let synced = sync_filesystem(root, &files, &io_err);
    #[cfg(not(target_os = "linux"))]
    let synced = fsync_each(root, &files, &io_err);
    synced
}

/// [`sync_files`] elsewhere: an fsync of each file, then of each directory on their paths up to
/// `root`, once.
#[cfg(not(target_os = "linux"))]
fn fsync_each(
    root: &std::path::Path,
    files: &[(std::path::PathBuf, std::fs::File)],
    io_err: &dyn Fn(&std::path::Path, std::io::Error) -> StoreError,
) -> Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for (path, f) in files {
        f.sync_all().map_err(|e| io_err(path, e))?;
        crate::bulk::drop_cached(f);
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(root)) {
            if !dirs.insert(d.to_path_buf()) {
                break;
            }
            dir = d.parent();
        }
    }
    for d in &dirs {
        std::fs::File::open(d)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(d, e))?;
    }
    Ok(())
}

/// [`sync_files`] on Linux: each file's data written, then one `syncfs` of `root`'s filesystem.
#[cfg(target_os = "linux")]
fn sync_filesystem(
    root: &std::path::Path,
    files: &[(std::path::PathBuf, std::fs::File)],
    io_err: &dyn Fn(&std::path::Path, std::io::Error) -> StoreError,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    for (path, f) in files {
        // SAFETY: a plain syscall on an open descriptor; it touches no memory of ours.
        let r = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                0,
                0,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if r != 0 {
            return Err(io_err(path, std::io::Error::last_os_error()));
        }
    }
    let dir = std::fs::File::open(root).map_err(|e| io_err(root, e))?;
    // SAFETY: as above. Since Linux 5.8 it reports a write-back error of the filesystem.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io_err(root, std::io::Error::last_os_error()));
    }
    for (_, f) in files {
        crate::bulk::drop_cached(f);
    }
    Ok(())
}

/// Whether a file name is a `LocalFileSystem` staging file: `<name>#<digits>`.
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(base, n)| {
        !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Removes staging files under `root` modified before `older_than`.
fn remove_staging_files(
    root: &std::path::Path,
    older_than: SystemTime,
) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                dirs.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            if !ft.is_file() || !is_staging_name(&name.to_string_lossy()) {
                continue;
            }
            if entry.metadata()?.modified()? < older_than {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed.push(entry.path().display().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    removed.sort();
    Ok(removed)
}

fn split_bucket(rest: &str) -> Option<(&str, &str)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        None
    } else {
        Some((bucket, prefix))
    }
}

#[cfg(feature = "s3")]
fn open_s3(url: &str, bucket: &str, prefix: &str) -> Result<Arc<dyn Backend>> {
    let s = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| StoreError::backend("open", url, e))?;
    Ok(Arc::new(ObjectBackend::new(Arc::new(s), prefix)))
}

#[cfg(not(feature = "s3"))]
fn open_s3(url: &str, _bucket: &str, _prefix: &str) -> Result<Arc<dyn Backend>> {
    Err(StoreError::FeatureMissing {
        url: url.to_string(),
        feature: "s3",
    })
}

#[cfg(feature = "azure")]
fn open_azure(url: &str, container: &str, prefix: &str) -> Result<Arc<dyn Backend>> {
    let s = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .build()
        .map_err(|e| StoreError::backend("open", url, e))?;
    Ok(Arc::new(ObjectBackend::new(Arc::new(s), prefix)))
}

#[cfg(not(feature = "azure"))]
fn open_azure(url: &str, _container: &str, _prefix: &str) -> Result<Arc<dyn Backend>> {
    Err(StoreError::FeatureMissing {
        url: url.to_string(),
        feature: "azure",
    })
}

/// The conformance suite every [`Backend`] must pass; run by the tests against the local
/// directory and the in-memory store (and later against S3/Azure emulators).
pub mod conformance {
    use super::*;

    fn check(cond: bool, what: &str) -> Result<(), String> {
        if cond {
            Ok(())
        } else {
            Err(format!("backend conformance: {what}"))
        }
    }

    /// Runs every check against an empty backend; `Err` says which property failed.
    pub async fn run(b: &dyn Backend) -> Result<(), String> {
        let e = |e: StoreError| format!("backend conformance: unexpected error: {e}");
        // Absent objects.
        check(
            b.head("c/none").await.map_err(e)?.is_none(),
            "head of absent",
        )?;
        check(
            matches!(b.get("c/none").await, Err(StoreError::NotFound { .. })),
            "get of absent is NotFound",
        )?;
        check(b.delete("c/none").await.is_ok(), "delete of absent is Ok")?;
        check(b.list("c").await.map_err(e)?.is_empty(), "empty listing")?;

        // Put, get, head, range.
        let data = Bytes::from((0..1000u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
        let w = b.put("c/a/x1", data.clone(), PutMode::Overwrite).await;
        check(w.map_err(e)? == PutOutcome::Written, "put writes")?;
        check(
            b.get("c/a/x1").await.map_err(e)? == data,
            "get returns bytes",
        )?;
        let h = b.head("c/a/x1").await.map_err(e)?;
        check(h.as_ref().map(|h| h.size) == Some(1000), "head size")?;
        let age = h
            .and_then(|h| SystemTime::now().duration_since(h.last_modified).ok())
            .map(|d| d.as_secs());
        check(age.is_some_and(|a| a < 3600), "last_modified is recent")?;
        let r = b.get_range("c/a/x1", 10..20).await.map_err(e)?;
        check(r[..] == data[10..20], "get_range returns the range")?;

        // Create-only.
        let other = Bytes::from_static(b"other");
        let c = b.put("c/a/x1", other.clone(), PutMode::Create).await;
        check(
            c.map_err(e)? == PutOutcome::AlreadyExists,
            "create on existing",
        )?;
        check(
            b.get("c/a/x1").await.map_err(e)? == data,
            "create leaves existing",
        )?;
        let c = b.put("c/b/y", other.clone(), PutMode::Create).await;
        check(c.map_err(e)? == PutOutcome::Written, "create on absent")?;
        // Overwrite replaces whole.
        b.put("c/a/x1", other.clone(), PutMode::Overwrite)
            .await
            .map_err(e)?;
        check(
            b.get("c/a/x1").await.map_err(e)? == other,
            "overwrite replaces",
        )?;
        // Empty objects.
        b.put("c/empty", Bytes::new(), PutMode::Overwrite)
            .await
            .map_err(e)?;
        check(
            b.get("c/empty").await.map_err(e)?.is_empty(),
            "empty object",
        )?;

        // Listing: recursive, prefix is a path prefix (not a string prefix).
        b.put("cc/z", other.clone(), PutMode::Overwrite)
            .await
            .map_err(e)?;
        let mut keys: Vec<String> = b
            .list("c")
            .await
            .map_err(e)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        check(
            keys == ["c/a/x1", "c/b/y", "c/empty"],
            &format!("recursive listing, got {keys:?}"),
        )?;
        let sub = b.list("c/a").await.map_err(e)?;
        check(
            sub.len() == 1 && sub[0].key == "c/a/x1" && sub[0].size == 5,
            "sub-listing",
        )?;

        // Delete.
        b.delete("c/a/x1").await.map_err(e)?;
        check(b.head("c/a/x1").await.map_err(e)?.is_none(), "deleted")?;
        check(
            b.list("c/a").await.map_err(e)?.is_empty(),
            "deleted listing",
        )?;
        let c = b.put("c/a/x1", data.clone(), PutMode::Create).await;
        check(c.map_err(e)? == PutOutcome::Written, "create after delete")?;

        // Unsynced puts: the object is the parts' concatenation, visible at once; create-only
        // and overwrite as for put; sync of objects written either way (and in new
        // directories).
        let parts = vec![data.slice(..10), Bytes::new(), data.slice(10..)];
        let u = b.put_unsynced("u/new/dir/x", parts, PutMode::Create).await;
        check(u.map_err(e)? == PutOutcome::Written, "unsynced create")?;
        check(
            b.get("u/new/dir/x").await.map_err(e)? == data,
            "unsynced put is the concatenation of its parts",
        )?;
        let u = b
            .put_unsynced("u/new/dir/x", vec![other.clone()], PutMode::Create)
            .await;
        check(
            u.map_err(e)? == PutOutcome::AlreadyExists,
            "unsynced create on existing",
        )?;
        check(
            b.get("u/new/dir/x").await.map_err(e)? == data,
            "unsynced create leaves existing",
        )?;
        b.put_unsynced("u/y", vec![other.clone()], PutMode::Overwrite)
            .await
            .map_err(e)?;
        b.put_unsynced("u/y", vec![data.clone()], PutMode::Overwrite)
            .await
            .map_err(e)?;
        check(
            b.get("u/y").await.map_err(e)? == data,
            "unsynced overwrite replaces",
        )?;
        b.sync(&[
            "u/new/dir/x".to_string(),
            "u/y".to_string(),
            "c/b/y".to_string(),
        ])
        .await
        .map_err(e)?;
        b.sync(&[]).await.map_err(e)?;
        check(
            b.get("u/new/dir/x").await.map_err(e)? == data,
            "synced object unchanged",
        )?;
        let mut keys: Vec<String> = b
            .list("u")
            .await
            .map_err(e)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        check(
            keys == ["u/new/dir/x", "u/y"],
            &format!("listing of unsynced puts, got {keys:?}"),
        )?;
        Ok(())
    }
}
