//! Replication lag as measured from the store, for every journal record, from its append (its
//! acknowledgement to the guest follows within microseconds):
//!
//! * to its segment being stored at the secondary (the object's modification time): from then
//!   on the write can be restored (any point in time, `state_at`), and survives the primary;
//! * to the commit of the first recovery point that contains it (a processed point; its
//!   record's first commit, in whichever form).
//!
//! `bench/rpo.sh` reports their percentiles.

use std::time::Duration;

use lifeboat_store::Store;
use lifeboat_types::VmId;

use crate::ProcessError;

/// Per-record lags (see the module doc).
#[derive(Debug, Default)]
pub struct Lags {
    /// Append to segment stored, for every stored record.
    pub to_store: Vec<Duration>,
    /// Append to the first point holding it, for records in a point.
    pub to_point: Vec<Duration>,
}

/// The lags of every record stored for `vm`.
pub async fn record_lags(store: &Store, vm: &VmId) -> Result<Lags, ProcessError> {
    let se = |source| ProcessError::Store {
        vm: vm.clone(),
        source: Box::new(source),
    };
    let mut points = store.list_points(vm).await.map_err(se)?;
    points.sort_by_key(|p| p.seq());
    let mut lags = Lags::default();
    for seg in store.list_segments(vm).await.map_err(se)? {
        let stored = store
            .backend()
            .head(&seg.key)
            .await
            .map_err(se)?
            .map(|o| o.last_modified);
        let (_, records) = store.read_segment(vm, &seg).await.map_err(se)?;
        for r in records {
            if let Some(t) = stored {
                lags.to_store
                    .push(t.duration_since(r.time).unwrap_or(Duration::ZERO));
            }
            // The first point at or after the record.
            let i = points.partition_point(|p| p.seq() < r.seq);
            if let Some(p) = points.get(i) {
                lags.to_point.push(
                    p.cut_time()
                        .duration_since(r.time)
                        .unwrap_or(Duration::ZERO),
                );
            }
        }
    }
    Ok(lags)
}

/// `p` (0..=100) percentile of `lags` (nearest rank), or `None` when empty.
pub fn percentile(lags: &mut [Duration], p: f64) -> Option<Duration> {
    if lags.is_empty() {
        return None;
    }
    lags.sort_unstable();
    let rank = ((p / 100.0) * lags.len() as f64).ceil() as usize;
    Some(lags[rank.clamp(1, lags.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = Duration::from_millis;
        assert_eq!(percentile(&mut [], 50.0), None);
        let mut v: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(ms(50)));
        assert_eq!(percentile(&mut v, 99.0), Some(ms(99)));
        assert_eq!(percentile(&mut v, 100.0), Some(ms(100)));
        assert_eq!(percentile(&mut v, 0.0), Some(ms(1)));
        assert_eq!(percentile(&mut [ms(7)], 99.0), Some(ms(7)));
    }
}
