//! [`JournaledDisk`]: the journal + image pair behind an NBD export.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lifeboat_journal::{Journal, JournalError, Record};
use lifeboat_nbd::{BlockDevice, Extent, ZeroFlags};
use lifeboat_types::{DiskId, RecordKind, Seq};

use crate::applied::{self, Applied};
use crate::image::RawImage;

/// Errors opening, replaying or checkpointing a journaled disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image file could not be opened or used.
    #[error("disk image {path}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The journal could not be read or written.
    #[error("write journal of {disk}")]
    Journal {
        /// The disk.
        disk: DiskId,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// The applied watermark file is unreadable or belongs to something else.
    #[error("applied watermark {path}: {reason}; if this journal directory belongs to another image, use a fresh --journal directory")]
    Watermark {
        /// The watermark file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The image has a different size than when the journal was last applied to it.
    #[error("disk image {path} is {found} bytes but journal directory {journal} was last applied to a {expected}-byte image: use the image this journal belongs to, or a fresh --journal directory")]
    SizeMismatch {
        /// The image file.
        path: PathBuf,
        /// The journal directory.
        journal: PathBuf,
        /// Size in the watermark.
        expected: u64,
        /// Size of the image now.
        found: u64,
    },
    /// The journal no longer holds records the image is missing.
    #[error("journal directory {journal} starts at record {first} but image {path} only has records up to {applied}: the records in between are gone, the image cannot be brought up to date from this journal")]
    Gap {
        /// The image file.
        path: PathBuf,
        /// The journal directory.
        journal: PathBuf,
        /// The watermark.
        applied: Seq,
        /// The first record available.
        first: Seq,
    },
    /// A journal record does not fit the image.
    #[error("journal record {seq} of {disk} ({offset}+{length}) lies outside image {path} of {size} bytes")]
    OutOfRange {
        /// The record.
        seq: Seq,
        /// Its disk.
        disk: DiskId,
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u64,
        /// The image.
        path: PathBuf,
        /// The image size.
        size: u64,
    },
}

/// How a disk is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskOptions {
    /// Export read-only: writes are refused, nothing is journaled.
    pub read_only: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records applied to the image.
    pub records: u64,
    /// Bytes of write data applied.
    pub bytes: u64,
    /// The last sequence number seen (any disk), or the starting point if none.
    pub last_seq: Seq,
}

/// A raw image whose writes are journaled before they are acknowledged (see the crate doc).
pub struct JournaledDisk {
    disk: DiskId,
    image: RawImage,
    journal: Arc<Journal>,
    journal_dir: PathBuf,
    order: Mutex<()>,
    read_only: bool,
    /// Cleared when the filesystem cannot zero fast; FAST_ZERO requests are then refused.
    fast_zero: AtomicBool,
}

impl JournaledDisk {
    /// Opens `image` as disk `disk` of the VM whose journal is `journal` (in `journal_dir`),
    /// replays the records the image is missing, and advances the watermark.
    pub fn open(
        image: &Path,
        disk: DiskId,
        journal: Arc<Journal>,
        journal_dir: &Path,
        opts: DiskOptions,
    ) -> Result<Self, DiskError> {
        let img = RawImage::open(image, opts.read_only).map_err(|source| DiskError::Image {
            path: image.to_path_buf(),
            source,
        })?;
        let d = JournaledDisk {
            disk,
            image: img,
            journal,
            journal_dir: journal_dir.to_path_buf(),
            order: Mutex::new(()),
            read_only: opts.read_only,
            fast_zero: AtomicBool::new(true),
        };
        let wm = applied::load(journal_dir, disk).map_err(|reason| DiskError::Watermark {
            path: applied::path(journal_dir, disk),
            reason,
        })?;
        let from = match wm {
            Some(a) if a.image_size != d.image.size() => {
                return Err(DiskError::SizeMismatch {
                    path: image.to_path_buf(),
                    journal: journal_dir.to_path_buf(),
                    expected: a.image_size,
                    found: d.image.size(),
                })
            }
            Some(a) => a.seq,
            None => Seq(0),
        };
        if !opts.read_only {
            let stats = replay_image(&d.image, journal_dir, disk, from, None)?;
            if stats.records > 0 {
                tracing::info!(
                    image = %image.display(),
                    records = stats.records,
                    bytes = stats.bytes,
                    from = from.0,
                    "replayed journal records the image was missing"
                );
            }
            d.persist_applied()?;
        }
        Ok(d)
    }

    /// This disk's index in its VM.
    pub fn disk_id(&self) -> DiskId {
        self.disk
    }

    /// The image.
    pub fn image(&self) -> &RawImage {
        &self.image
    }

    /// Makes the journal and the image durable and advances the applied watermark to the last
    /// record appended before the call. Returns the new watermark.
    pub fn persist_applied(&self) -> Result<Seq, DiskError> {
        let seq = {
            let _g = self.lock();
            self.journal.last_seq()
        };
        self.journal.sync().map_err(|source| DiskError::Journal {
            disk: self.disk,
            source,
        })?;
        self.image.sync().map_err(|source| self.image_err(source))?;
        applied::store(
            &self.journal_dir,
            self.disk,
            Applied {
                seq,
                image_size: self.image.size(),
            },
        )
        .map_err(|e| DiskError::Watermark {
            path: applied::path(&self.journal_dir, self.disk),
            reason: e.to_string(),
        })?;
        Ok(seq)
    }

    /// The last record appended; every record up to it is already written to the image (a
    /// write appends and applies under the disk's order lock), so a copy of the image started
    /// after this call holds at least that state (initial replication's start position).
    pub fn applied_position(&self) -> Seq {
        let _g = self.lock();
        self.journal.last_seq()
    }

    fn image_err(&self, source: io::Error) -> DiskError {
        DiskError::Image {
            path: self.image.path().to_path_buf(),
            source,
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave the image half-updated in a way the journal
        // does not describe, so a poisoned lock is still usable.
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only export",
            ))
        } else {
            Ok(())
        }
    }

    fn sync_journal(&self) -> io::Result<()> {
        self.journal.sync().map_err(io::Error::other)
    }
}

impl BlockDevice for JournaledDisk {
    fn write_may_wait(&self) -> bool {
        self.journal.writes_may_wait()
    }

    fn size(&self) -> u64 {
        self.image.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn can_multi_conn(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.image.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.check_writable()?;
        {
            let _g = self.lock();
            self.journal
                .append_write(self.disk, offset, data)
                .map_err(io::Error::other)?;
            self.image.write_at(offset, data)?;
        }
        if fua {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check_writable()?;
        if flags.fast_only && !self.fast_zero.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "fast zeroing not supported by the image's filesystem",
            ));
        }
        {
            let _g = self.lock();
            self.journal
                .append_zero(self.disk, offset, len)
                .map_err(io::Error::other)?;
            self.apply_zero(offset, len, flags.may_trim)?;
        }
        if flags.fua {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check_writable()?;
        {
            let _g = self.lock();
            self.journal
                .append_trim(self.disk, offset, len)
                .map_err(io::Error::other)?;
            self.apply_zero(offset, len, true)?;
        }
        if fua {
            self.sync_journal()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.sync_journal()
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.image.extents(offset, len)
    }
}

impl JournaledDisk {
    /// Zeroes a range of the image after its record was journaled: the journal already says
    /// "zero", so the image must end up zero whatever the filesystem can do.
    fn apply_zero(&self, offset: u64, len: u64, may_punch: bool) -> io::Result<()> {
        match self.image.zero_fast(offset, len, may_punch) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                self.fast_zero.store(false, Ordering::Relaxed);
                self.image.zero(offset, len, may_punch)
            }
            other => other,
        }
    }
}

/// Replays the records of `disk` with sequence numbers in `(from, upto]` from the journal in
/// `journal_dir` onto the raw image at `image` (used by `lifeboat journal replay` and tests).
pub fn replay_onto(
    journal_dir: &Path,
    disk: DiskId,
    image: &Path,
    from: Seq,
    upto: Option<Seq>,
) -> Result<ReplayStats, DiskError> {
    let img = RawImage::open(image, false).map_err(|source| DiskError::Image {
        path: image.to_path_buf(),
        source,
    })?;
    let stats = replay_image(&img, journal_dir, disk, from, upto)?;
    img.sync().map_err(|source| DiskError::Image {
        path: image.to_path_buf(),
        source,
    })?;
    Ok(stats)
}

fn replay_image(
    img: &RawImage,
    journal_dir: &Path,
    disk: DiskId,
    from: Seq,
    upto: Option<Seq>,
) -> Result<ReplayStats, DiskError> {
    let jerr = |source| DiskError::Journal { disk, source };
    let mut stats = ReplayStats {
        last_seq: from,
        ..Default::default()
    };
    let mut first = true;
    for rec in lifeboat_journal::read_records(journal_dir, from.next()).map_err(jerr)? {
        let rec = rec.map_err(jerr)?;
        if first && rec.seq > from.next() {
            return Err(DiskError::Gap {
                path: img.path().to_path_buf(),
                journal: journal_dir.to_path_buf(),
                applied: from,
                first: rec.seq,
            });
        }
        first = false;
        if upto.is_some_and(|u| rec.seq > u) {
            break;
        }
        stats.last_seq = rec.seq;
        if rec.disk != disk || rec.kind == RecordKind::Checkpoint || rec.seq <= from {
            continue;
        }
        apply_record(img, &rec)?;
        stats.records += 1;
        stats.bytes += rec.data.len() as u64;
    }
    Ok(stats)
}

fn apply_record(img: &RawImage, rec: &Record) -> Result<(), DiskError> {
    let out_of_range = rec
        .offset
        .checked_add(rec.length)
        .is_none_or(|end| end > img.size());
    if out_of_range {
        return Err(DiskError::OutOfRange {
            seq: rec.seq,
            disk: rec.disk,
            offset: rec.offset,
            length: rec.length,
            path: img.path().to_path_buf(),
            size: img.size(),
        });
    }
    let res = match rec.kind {
        RecordKind::Write => img.write_at(rec.offset, &rec.data),
        RecordKind::Zero | RecordKind::Trim => img.zero(rec.offset, rec.length, true),
        RecordKind::Checkpoint => Ok(()),
    };
    res.map_err(|source| DiskError::Image {
        path: img.path().to_path_buf(),
        source,
    })
}
