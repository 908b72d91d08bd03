//! The *applied watermark* of one disk: the journal position up to which the image file is known
//! to hold every record of that disk durably.
//!
//! File `applied-disk<N>` in the journal directory, text, written by write-temp-then-rename with
//! fsync of the file and the directory:
//!
//! ```text
//! lifeboat-applied 1
//! disk 0
//! seq 1234
//! image-size 21474836480
//! ```
//!
//! The image size guards against pointing an old journal at a different image.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lifeboat_types::{DiskId, Seq};

const MAGIC_LINE: &str = "lifeboat-applied 1";

/// The content of an applied-watermark file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Every record of the disk with a sequence number up to this is in the image, durably.
    pub seq: Seq,
    /// The image size when it was written.
    pub image_size: u64,
}

/// The watermark file of `disk` in `journal_dir`.
pub fn path(journal_dir: &Path, disk: DiskId) -> PathBuf {
    journal_dir.join(format!("applied-disk{}", disk.0))
}

/// Reads the watermark; `Ok(None)` when the file does not exist.
pub fn load(journal_dir: &Path, disk: DiskId) -> Result<Option<Applied>, String> {
    let p = path(journal_dir, disk);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    parse(&text, disk).map(Some)
}

fn parse(text: &str, disk: DiskId) -> Result<Applied, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC_LINE) {
        return Err(format!("first line is not {MAGIC_LINE:?}"));
    }
    let mut field = |name: &str| -> Result<u64, String> {
        let line = lines.next().ok_or(format!("missing {name:?} line"))?;
        let value = line
            .strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or(format!("expected {name:?}, found {line:?}"))?;
        value
            .parse::<u64>()
            .map_err(|_| format!("{name} {value:?} is not a number"))
    };
    let d = field("disk")?;
    if d != u64::from(disk.0) {
        return Err(format!("written for disk {d}, not {}", disk.0));
    }
    let seq = Seq(field("seq")?);
    let image_size = field("image-size")?;
    Ok(Applied { seq, image_size })
}

/// Writes the watermark durably (temp file, fsync, rename, fsync of the directory).
pub fn store(journal_dir: &Path, disk: DiskId, applied: Applied) -> io::Result<()> {
    let p = path(journal_dir, disk);
    let tmp = p.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        write!(
            f,
            "{MAGIC_LINE}\ndisk {}\nseq {}\nimage-size {}\n",
            disk.0, applied.seq.0, applied.image_size
        )?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &p)?;
    fs::File::open(journal_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strict_parse() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), DiskId(1)).unwrap(), None);
        let a = Applied {
            seq: Seq(42),
            image_size: 1 << 30,
        };
        store(dir.path(), DiskId(1), a).unwrap();
        assert_eq!(load(dir.path(), DiskId(1)).unwrap(), Some(a));
        assert!(parse(
            "lifeboat-applied 1\ndisk 1\nseq x\nimage-size 1\n",
            DiskId(1)
        )
        .is_err());
        assert!(parse(
            "lifeboat-applied 2\ndisk 1\nseq 1\nimage-size 1\n",
            DiskId(1)
        )
        .is_err());
        assert!(parse(
            "lifeboat-applied 1\ndisk 0\nseq 1\nimage-size 1\n",
            DiskId(1)
        )
        .is_err());
        assert!(parse("lifeboat-applied 1\ndisk 1\n", DiskId(1)).is_err());
    }
}
