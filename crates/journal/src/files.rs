//! Segment file names, directory listing and the small durable-file helpers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lifeboat_types::Seq;

use crate::error::JournalError;
use crate::format::SegmentHeader;

/// Prefix of every file the journal owns.
pub(crate) const PREFIX: &str = "seg-";
/// Suffix of the segment being appended to (or whose seal was interrupted).
pub(crate) const OPEN_SUFFIX: &str = "open";
/// Suffix of a sealed segment.
pub(crate) const SEALED_SUFFIX: &str = "lbj";
/// Suffix of a segment header being written durably (never holds records).
pub(crate) const TMP_SUFFIX: &str = "tmp";

/// The lifecycle state a segment file's name says it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameState {
    Open,
    Sealed,
    Tmp,
}

/// A `seg-*` file found in the directory.
#[derive(Debug, Clone)]
pub(crate) struct SegFile {
    pub path: PathBuf,
    pub first: Seq,
    pub state: NameState,
}

pub(crate) fn seg_path(dir: &Path, first: Seq, state: NameState) -> PathBuf {
    let suffix = match state {
        NameState::Open => OPEN_SUFFIX,
        NameState::Sealed => SEALED_SUFFIX,
        NameState::Tmp => TMP_SUFFIX,
    };
    dir.join(format!("{PREFIX}{:020}.{suffix}", first.0))
}

fn parse_name(name: &str) -> Option<(Seq, NameState)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (num, suffix) = rest.split_once('.')?;
    if num.len() != 20 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let first: u64 = num.parse().ok()?;
    if first == 0 || first >= crate::format::MAX_FIRST_SEQ {
        return None;
    }
    let first = Seq(first);
    let state = match suffix {
        OPEN_SUFFIX => NameState::Open,
        SEALED_SUFFIX => NameState::Sealed,
        TMP_SUFFIX => NameState::Tmp,
        _ => return None,
    };
    Some((first, state))
}

/// Lists the journal's files in `dir`, sorted by first sequence number (then by state: open
/// before sealed before tmp). Files not starting with `seg-` are ignored; a `seg-*` name that is
/// not ours is an error.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegFile>, JournalError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(JournalError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(PREFIX) {
            continue;
        }
        let path = dir.join(name);
        let (first, state) = parse_name(name).ok_or(JournalError::UnknownFile(path.clone()))?;
        out.push(SegFile { path, first, state });
    }
    out.sort_by_key(|f| {
        let rank = match f.state {
            NameState::Open => 0,
            NameState::Sealed => 1,
            NameState::Tmp => 2,
        };
        (f.first, rank)
    });
    Ok(out)
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir_file: &File, dir: &Path) -> Result<(), JournalError> {
    dir_file.sync_all().map_err(|e| JournalError::io(dir, e))
}

/// Creates `seg-<first>.open` holding only `header`, durably: written to `seg-<first>.tmp`,
/// fdatasync'ed, renamed into place (replacing an empty segment of the same name, if any), and
/// the directory fsync'ed. Returns the open file, positioned after the header.
pub(crate) fn create_durable(
    dir: &Path,
    dir_file: &File,
    header: &SegmentHeader,
) -> Result<(File, PathBuf), JournalError> {
    let tmp = seg_path(dir, header.first_seq, NameState::Tmp);
    let path = seg_path(dir, header.first_seq, NameState::Open);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| JournalError::io(&tmp, e))?;
    f.write_all(&header.encode())
        .and_then(|()| f.sync_data())
        .map_err(|e| JournalError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| JournalError::io(&tmp, e))?;
    sync_dir(dir_file, dir)?;
    Ok((f, path))
}

/// Creates `seg-<first>.open` holding only `header` with one write(2), without waiting for it to
/// be durable (the next `sync` fdatasyncs it and the directory). Fails if the file exists.
pub(crate) fn create_fast(
    dir: &Path,
    header: &SegmentHeader,
) -> Result<(File, PathBuf), JournalError> {
    let path = seg_path(dir, header.first_seq, NameState::Open);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| JournalError::io(&path, e))?;
    f.write_all(&header.encode())
        .map_err(|e| JournalError::io(&path, e))?;
    Ok((f, path))
}
