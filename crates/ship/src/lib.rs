//! # lifeboat-ship: from the primary's spool to the secondary region's store
//!
//! The **spool** is the VM's write journal on the primary host: its sealed segments stay there
//! until the secondary region's store has them. [`Shipper::ship_once`] sends every sealed
//! segment, oldest first, with [`lifeboat_store::Store::put_segment`], and only then removes it
//! from the journal. So:
//!
//! * **No loss**: a segment leaves the spool only after the store acknowledged it (the store's
//!   put is atomic: a reader sees the whole segment or nothing).
//! * **No duplicate effect**: after a crash of either side between the put and the removal, the
//!   same segment is sent again and the store answers `AlreadyStored` (segments are keyed by
//!   their sequence-number range and checked byte for byte); records are applied by sequence
//!   number downstream, so nothing is applied twice.
//! * **Order**: segments are sent in sequence order and shipping stops at the first failure, so
//!   the store's segments always form a prefix of the journal, without holes.
//! * **Replay safety**: a segment is removed from the spool only through `keep_after`, the
//!   lowest applied watermark of the VM's disks, so a restarting disk server can still replay
//!   every record its image may be missing.
//! * **Fencing**: a store that has seen a newer epoch for the VM (the VM failed over) refuses the
//!   segment; the shipper stops with [`ShipError::Fenced`] and keeps its spool. The caller must
//!   stop replicating (and, once the vault exists, stop the VM).
//!
//! The shipper holds no state of its own: everything it needs is in the journal directory and the
//! store, which is what makes kill -9 at any step safe.

use std::path::PathBuf;
use std::sync::Arc;

use lifeboat_journal::{Journal, JournalError, SegmentInfo};
use lifeboat_store::{SegmentPut, Store, StoreError};
use lifeboat_types::{Epoch, Seq, VmId};

/// Why shipping stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The journal's list of sealed segments or their removal failed.
    #[error("spool (write journal) of VM {vm}")]
    Journal {
        /// The VM.
        vm: VmId,
        /// Why.
        #[source]
        source: JournalError,
    },
    /// A sealed segment could not be read from the spool.
    #[error("reading sealed segment {path}")]
    ReadSegment {
        /// The segment file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The store is fenced against this epoch: the VM failed over elsewhere.
    #[error("VM {vm} failed over: the store has epoch {store_epoch}, this host ships epoch {segment_epoch}; stop replicating from this host (its segments stay in the spool)")]
    Fenced {
        /// The VM.
        vm: VmId,
        /// The epoch of the refused segment.
        segment_epoch: Epoch,
        /// The store's epoch.
        store_epoch: Epoch,
    },
    /// A blocking task of the shipper panicked or was cancelled.
    #[error("shipper task")]
    Task(#[source] tokio::task::JoinError),
    /// The store refused or failed to take a segment.
    #[error("shipping segment {first}..{last} of VM {vm} to the store")]
    Store {
        /// The VM.
        vm: VmId,
        /// The segment's first record.
        first: Seq,
        /// The segment's last record.
        last: Seq,
        /// Why.
        #[source]
        source: StoreError,
    },
}

/// What one [`Shipper::ship_once`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Segments newly stored.
    pub stored: usize,
    /// Segments the store already had (a resend after a restart).
    pub already_stored: usize,
    /// Bytes sent.
    pub bytes: u64,
    /// Segments removed from the spool.
    pub removed: usize,
    /// The last sequence number the store has from this pass, if any.
    pub shipped_through: Option<Seq>,
}

/// Ships one VM's sealed journal segments to a store.
pub struct Shipper {
    vm: VmId,
    journal: Arc<Journal>,
    store: Store,
    /// The last record this process knows the store has: segments at or below it are not sent
    /// again while they wait in the spool for the image watermark. Lost on restart, which only
    /// costs one idempotent resend.
    shipped: std::sync::Mutex<Seq>,
}

impl Shipper {
    /// A shipper for `vm`'s journal into `store`.
    pub fn new(vm: VmId, journal: Arc<Journal>, store: Store) -> Self {
        Shipper {
            vm,
            journal,
            store,
            shipped: std::sync::Mutex::new(Seq(0)),
        }
    }

    /// Ships only segments with records after `seq` from now on: the target has everything up
    /// to it another way (re-protect: it seeds the store itself from the original disks).
    /// Segments entirely at or below `seq` leave the spool once the disks' images hold them.
    pub fn start_after(&self, seq: Seq) {
        let mut s = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        *s = (*s).max(seq);
    }

    /// Sends every sealed segment the spool holds, oldest first, then removes from the spool
    /// the shipped segments whose records are all at or below `keep_after` (the lowest applied
    /// watermark of the VM's disks). Stops at the first failure; what was shipped before it
    /// stays shipped and is reported in the error's log line.
    pub async fn ship_once(&self, keep_after: Seq) -> Result<ShipReport, ShipError> {
        let journal_err = |source| ShipError::Journal {
            vm: self.vm.clone(),
            source,
        };
        let j = self.journal.clone();
        let segments = tokio::task::spawn_blocking(move || j.sealed_segments())
            .await
            .map_err(ShipError::Task)?
            .map_err(journal_err)?;
        let mut report = ShipReport::default();
        let known = *self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        if known > Seq(0) {
            report.shipped_through = Some(known);
        }
        for seg in segments.iter().filter(|s| s.last_seq > known) {
            self.ship_segment(seg, &mut report).await?;
            *self.shipped.lock().unwrap_or_else(|p| p.into_inner()) = seg.last_seq;
        }
        if let Some(through) = report.shipped_through {
            let upto = through.min(keep_after);
            let j = self.journal.clone();
            report.removed = tokio::task::spawn_blocking(move || j.remove_sealed_through(upto))
                .await
                .map_err(ShipError::Task)?
                .map_err(journal_err)?;
        }
        Ok(report)
    }

    async fn ship_segment(
        &self,
        seg: &SegmentInfo,
        report: &mut ShipReport,
    ) -> Result<(), ShipError> {
        let bytes = tokio::fs::read(&seg.path)
            .await
            .map_err(|source| ShipError::ReadSegment {
                path: seg.path.clone(),
                source,
            })?;
        let len = bytes.len() as u64;
        let put = self
            .store
            .put_segment(
                &self.vm,
                seg.epoch,
                seg.first_seq,
                seg.last_seq,
                bytes::Bytes::from(bytes),
            )
            .await;
        match put {
            Ok(SegmentPut::Stored) => {
                report.stored += 1;
                report.bytes += len;
            }
            Ok(SegmentPut::AlreadyStored) => report.already_stored += 1,
            Err(StoreError::Fenced {
                segment_epoch,
                store_epoch,
                ..
            }) => {
                return Err(ShipError::Fenced {
                    vm: self.vm.clone(),
                    segment_epoch,
                    store_epoch,
                })
            }
            Err(source) => {
                return Err(ShipError::Store {
                    vm: self.vm.clone(),
                    first: seg.first_seq,
                    last: seg.last_seq,
                    source,
                })
            }
        }
        report.shipped_through = Some(seg.last_seq);
        tracing::debug!(vm = %self.vm, first = seg.first_seq.0, last = seg.last_seq.0, len, "segment shipped");
        Ok(())
    }
}
