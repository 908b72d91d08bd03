//! The divergence summary commit leaves behind (`vms/<vm>/divergence.json`): the ranges the
//! old source wrote *after* the recovery point the VM was recovered from, taken from the
//! stored journal just before commit deletes it, so that a later re-protect sends those ranges
//! back (they are in the original disks, not in the point) without comparing whole disks.
//!
//! Format (JSON, version 1, frozen): `{"format": "lifeboat-divergence", "version": 1,
//! "point_seq": P, "through_seq": S, "disks": [[[offset, len], ...], ...]}` — the records
//! `(P, S]` were all stored without a gap and wrote exactly those ranges.

use bytes::Bytes;
use lifeboat_types::{Extents, RecordKind, Seq, VmId};
use serde::{Deserialize, Serialize};

use crate::backend::PutMode;
use crate::error::{Result, StoreError};
use crate::format::decode_json;
use crate::store::Store;

/// `"format"` of a divergence summary.
pub const DIVERGENCE_FORMAT: &str = "lifeboat-divergence";

/// The summary (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DivergenceRecord {
    /// Always [`DIVERGENCE_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The recovery point's position.
    pub point_seq: u64,
    /// The last stored record summarized.
    pub through_seq: u64,
    /// Per disk, the ranges records `(point_seq, through_seq]` wrote, zeroed or trimmed.
    pub disks: Vec<Extents>,
}

/// The key of a VM's divergence summary.
pub fn divergence_key(vm: &VmId) -> String {
    format!("vms/{vm}/divergence.json")
}

impl Store {
    /// Summarizes the stored journal after `point` (see the module doc). `None` when the
    /// stored records after the point have a gap (retention deleted some): nothing can be
    /// said without comparing the disks.
    pub async fn summarize_after(&self, vm: &VmId, point: Seq) -> Result<Option<DivergenceRecord>> {
        let mut disks: Vec<Extents> = Vec::new();
        let mut next = point.next();
        for seg in self.list_segments(vm).await? {
            if seg.last_seq < next {
                continue;
            }
            if seg.first_seq > next {
                return Ok(None);
            }
            let (_, records) = self.read_segment(vm, &seg).await?;
            for r in records.iter().filter(|r| r.seq > point) {
                if matches!(r.kind, RecordKind::Checkpoint) {
                    continue;
                }
                let d = r.disk.0 as usize;
                if disks.len() <= d {
                    disks.resize(d + 1, Extents::new());
                }
                disks[d].insert(r.offset, r.length);
            }
            next = seg.last_seq.next();
        }
        Ok(Some(DivergenceRecord {
            format: DIVERGENCE_FORMAT.to_string(),
            version: 1,
            point_seq: point.0,
            through_seq: next.0 - 1,
            disks,
        }))
    }

    /// Stores a VM's divergence summary (replacing an older one).
    pub async fn put_divergence(&self, vm: &VmId, rec: &DivergenceRecord) -> Result<()> {
        let body =
            serde_json::to_vec(rec).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        self.backend()
            .put(&divergence_key(vm), Bytes::from(body), PutMode::Overwrite)
            .await?;
        Ok(())
    }

    /// A VM's divergence summary, if commit left one.
    pub async fn get_divergence(&self, vm: &VmId) -> Result<Option<DivergenceRecord>> {
        let key = divergence_key(vm);
        match self.backend().get(&key).await {
            Ok(obj) => decode_json(&obj, DIVERGENCE_FORMAT, |r: &DivergenceRecord| {
                (&r.format, r.version)
            })
            .map(Some)
            .map_err(|p| StoreError::corrupt(&key, p)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a VM's divergence summary (re-protect used it); absent is fine.
    pub async fn delete_divergence(&self, vm: &VmId) -> Result<()> {
        match self.backend().delete(&divergence_key(vm)).await {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}
