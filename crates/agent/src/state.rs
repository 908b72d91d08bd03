//! The agent's persisted desired state: one JSON file per VM and role under
//! `<data>/state/{sources,replicas,recovered}/<vm>.json`, written by write-temp-then-rename
//! with fsync of the file and the directory, so a kill -9 leaves the old or the new file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Writes `value` to `path` atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).context("encoding agent state")?;
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))?;
    Ok(())
}

/// Every `(vm, value)` of the files in `dir` (a file that cannot be read is an error naming
/// it: the operator decides, nothing is dropped silently).
pub fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries {
        let path = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Some(vm) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let v = serde_json::from_slice(&body).with_context(|| {
            format!(
                "agent state file {} is not valid: fix or remove it",
                path.display()
            )
        })?;
        out.push((vm, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The state file of `vm` in role directory `role`.
pub fn file(data: &Path, role: &str, vm: &str) -> PathBuf {
    data.join("state").join(role).join(format!("{vm}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_state_reads_back_and_bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path(), "sources", "vm-1");
        write_json(&f, &serde_json::json!({"a": 1})).unwrap();
        let all: Vec<(String, serde_json::Value)> =
            read_all(&d.path().join("state/sources")).unwrap();
        assert_eq!(all, vec![("vm-1".to_string(), serde_json::json!({"a": 1}))]);
        std::fs::write(file(d.path(), "sources", "vm-2"), b"{not json").unwrap();
        let e = read_all::<serde_json::Value>(&d.path().join("state/sources")).unwrap_err();
        assert!(format!("{e:#}").contains("vm-2.json is not valid"), "{e:#}");
    }
}
