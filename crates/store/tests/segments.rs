//! Journal segments: validation, idempotence, fencing.

mod common;

use std::time::SystemTime;

use bytes::Bytes;
use common::*;
use lifeboat_journal::{encode_segment, Record, SegmentHeader};
use lifeboat_store::{SegmentPut, StoreError};
use lifeboat_types::{DiskId, Epoch, RecordKind, Seq, VmId};

fn segment(vm: &VmId, epoch: u64, first: u64, n: u64) -> Bytes {
    let h = SegmentHeader {
        vm: vm.clone(),
        epoch: Epoch(epoch),
        first_seq: Seq(first),
        created: SystemTime::now(),
    };
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            seq: Seq(first + i),
            disk: DiskId(0),
            kind: RecordKind::Write,
            offset: i * 4096,
            length: 8,
            data: vec![i as u8; 8],
            checkpoint: None,
            time: h.created,
        })
        .collect();
    Bytes::from(encode_segment(&h, &records).unwrap())
}

#[tokio::test]
async fn segments_are_checked_idempotent_and_fenced() {
    let store = memory_store();
    let v = vm("vm1");
    let s1 = segment(&v, 1, 1, 10);
    let put = |first, last, e, b: Bytes| {
        let store = store.clone();
        let v = v.clone();
        async move {
            store
                .put_segment(&v, Epoch(e), Seq(first), Seq(last), b)
                .await
        }
    };
    assert_eq!(put(1, 10, 1, s1.clone()).await.unwrap(), SegmentPut::Stored);
    assert_eq!(
        put(1, 10, 1, s1.clone()).await.unwrap(),
        SegmentPut::AlreadyStored
    );
    assert_eq!(store.epoch(&v).await.unwrap(), Epoch(1));
    let segs = store.list_segments(&v).await.unwrap();
    assert_eq!(segs.len(), 1);
    assert_eq!(
        segs[0].key,
        "vms/vm1/segments/00000000000000000001-00000000000000000010.lbj"
    );
    assert_eq!(store.get_segment(&v, &segs[0]).await.unwrap(), s1);

    // Mismatches with what the caller says.
    let e = put(1, 11, 1, s1.clone()).await.unwrap_err();
    assert!(e.to_string().contains("ends at #10"), "{e}");
    let e = put(2, 10, 1, s1.clone()).await.unwrap_err();
    assert!(matches!(e, StoreError::SegmentMismatch { .. }), "{e}");
    let e = put(1, 10, 2, s1.clone()).await.unwrap_err();
    assert!(e.to_string().contains("epoch 1, not epoch 2"), "{e}");
    let e = store
        .put_segment(&vm("other"), Epoch(1), Seq(1), Seq(10), s1.clone())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("names VM vm1"), "{e}");
    // Damaged or unsealed bytes.
    let mut bad = s1.to_vec();
    bad[200] ^= 1;
    let e = put(1, 10, 1, Bytes::from(bad)).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidSegment { .. }), "{e}");
    let e = put(1, 10, 1, s1.slice(..s1.len() - 32)).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidSegment { .. }), "{e}");
    // Same key, different content.
    let mut other_rec = segment(&v, 1, 1, 10).to_vec();
    other_rec.truncate(0);
    let h = SegmentHeader {
        vm: v.clone(),
        epoch: Epoch(1),
        first_seq: Seq(1),
        created: SystemTime::UNIX_EPOCH,
    };
    let recs: Vec<Record> = (0..10)
        .map(|i| Record {
            seq: Seq(1 + i),
            disk: DiskId(0),
            kind: RecordKind::Zero,
            offset: 0,
            length: 512,
            data: vec![],
            checkpoint: None,
            time: h.created,
        })
        .collect();
    let different = Bytes::from(encode_segment(&h, &recs).unwrap());
    let e = put(1, 10, 1, different).await.unwrap_err();
    assert!(matches!(e, StoreError::SegmentConflict { .. }), "{e}");

    // More segments; a newer epoch raises the store's.
    assert_eq!(
        put(11, 20, 1, segment(&v, 1, 11, 10)).await.unwrap(),
        SegmentPut::Stored
    );
    assert_eq!(
        put(21, 25, 2, segment(&v, 2, 21, 5)).await.unwrap(),
        SegmentPut::Stored
    );
    assert_eq!(store.epoch(&v).await.unwrap(), Epoch(2));
    // Fenced: the old primary comes back with epoch 1.
    let e = put(26, 30, 1, segment(&v, 1, 26, 5)).await.unwrap_err();
    match &e {
        StoreError::Fenced {
            vm,
            segment_epoch,
            store_epoch,
        } => {
            assert_eq!((vm, *segment_epoch, *store_epoch), (&v, Epoch(1), Epoch(2)));
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("failed over"), "{e}");
    assert!(e.to_string().contains("must stop replicating"), "{e}");
    // Even a retry of a segment it already stored is refused now.
    assert!(matches!(
        put(1, 10, 1, s1.clone()).await.unwrap_err(),
        StoreError::Fenced { .. }
    ));
    assert_eq!(store.list_segments(&v).await.unwrap().len(), 3);

    // Failover bumps; lowering is refused.
    assert!(store.bump_epoch(&v, Epoch(3)).await.unwrap());
    assert!(!store.bump_epoch(&v, Epoch(3)).await.unwrap());
    assert!(matches!(
        store.bump_epoch(&v, Epoch(2)).await.unwrap_err(),
        StoreError::EpochRegression { .. }
    ));
    assert!(matches!(
        put(26, 30, 2, segment(&v, 2, 26, 5)).await.unwrap_err(),
        StoreError::Fenced { .. }
    ));

    // Deleting through a sequence number removes whole segments only.
    assert_eq!(store.delete_segments_through(&v, Seq(15)).await.unwrap(), 1);
    let left: Vec<(u64, u64)> = store
        .list_segments(&v)
        .await
        .unwrap()
        .iter()
        .map(|s| (s.first_seq.0, s.last_seq.0))
        .collect();
    assert_eq!(left, [(11, 20), (21, 25)]);
    assert!(store.verify().await.unwrap().is_ok());

    // A damaged stored segment: get refuses, verify names it.
    let segs = store.list_segments(&v).await.unwrap();
    let mut b = store.backend().get(&segs[0].key).await.unwrap().to_vec();
    b[150] ^= 0x10;
    store
        .backend()
        .put(
            &segs[0].key,
            Bytes::from(b),
            lifeboat_store::PutMode::Overwrite,
        )
        .await
        .unwrap();
    let e = store.get_segment(&v, &segs[0]).await.unwrap_err();
    assert!(e.to_string().contains(&segs[0].key), "{e}");
    let rep = store.verify().await.unwrap();
    assert_eq!(rep.bad.len(), 1);
    assert_eq!(rep.bad[0].key, segs[0].key);
}

#[tokio::test]
async fn segments_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let v = vm("vm-a");
    let s = segment(&v, 4, 100, 3);
    let r = store
        .put_segment(&v, Epoch(4), Seq(100), Seq(102), s.clone())
        .await;
    assert_eq!(r.unwrap(), SegmentPut::Stored);
    let r = store
        .put_segment(&v, Epoch(4), Seq(100), Seq(102), s.clone())
        .await;
    assert_eq!(r.unwrap(), SegmentPut::AlreadyStored);
    let path = dir
        .path()
        .join("vms/vm-a/segments/00000000000000000100-00000000000000000102.lbj");
    // Stored wrapped in zstd (the records' headers compress), read back as the journal's bytes.
    let on_disk = std::fs::read(path).unwrap();
    assert!(on_disk.starts_with(b"LBSEGZ01") && on_disk.len() < s.len());
    assert_eq!(
        lifeboat_store::format::decode_stored_segment(&on_disk)
            .unwrap()
            .as_ref(),
        &s[..]
    );
    let refs = store.list_segments(&v).await.unwrap();
    assert_eq!(store.get_segment(&v, &refs[0]).await.unwrap(), s);
    // Reopening the same directory sees the epoch.
    let again = local_store(dir.path());
    assert_eq!(again.epoch(&v).await.unwrap(), Epoch(4));
}

#[tokio::test]
async fn overlapping_segments_are_refused_and_racing_failovers_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let v = vm("vm2");
    let put = |first: u64, n: u64| {
        let (store, v) = (store.clone(), v.clone());
        async move {
            store
                .put_segment(
                    &v,
                    Epoch(1),
                    Seq(first),
                    Seq(first + n - 1),
                    segment(&v, 1, first, n),
                )
                .await
        }
    };
    put(1, 10).await.unwrap();
    put(11, 5).await.unwrap();
    // Records 14..=20 again under another key: refused and not left in the store, even by a
    // fresh `Store` value (which learns the stored end from a listing).
    for s in [store.clone(), local_store(dir.path())] {
        let e = s
            .put_segment(&v, Epoch(1), Seq(14), Seq(20), segment(&v, 1, 14, 7))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::SegmentMismatch { .. }), "{e:?}");
        assert!(e.to_string().contains("overlaps"), "{e}");
    }
    assert_eq!(store.list_segments(&v).await.unwrap().len(), 2);
    put(16, 4).await.unwrap();

    // Ten failovers race to epoch 2: exactly one raised it.
    let raised = futures::future::join_all((0..10).map(|_| {
        let (s, v) = (local_store(dir.path()), v.clone());
        async move { s.bump_epoch(&v, Epoch(2)).await.unwrap() }
    }))
    .await;
    assert_eq!(raised.iter().filter(|r| **r).count(), 1, "{raised:?}");
    assert_eq!(store.epoch(&v).await.unwrap(), Epoch(2));
    assert!(store.verify().await.unwrap().is_ok());
}

#[tokio::test]
async fn commit_summarizes_what_was_written_after_a_point_unless_a_record_is_missing() {
    let store = memory_store();
    let v = vm("vm1");
    // Records 1..=10 write 8 bytes at (i * 4096) for i = 0..10, 11..=20 the same again.
    for first in [1, 11] {
        let s = segment(&v, 1, first, 10);
        store
            .put_segment(&v, Epoch(1), Seq(first), Seq(first + 9), s)
            .await
            .unwrap();
    }
    let sum = store.summarize_after(&v, Seq(15)).await.unwrap().unwrap();
    assert_eq!((sum.point_seq, sum.through_seq), (15, 20));
    // Records 16..=20 are i = 5..10 of the second segment.
    let want: Vec<(u64, u64)> = (5..10).map(|i| (i * 4096, 8)).collect();
    assert_eq!(sum.disks[0].ranges(), want.as_slice());
    store.put_divergence(&v, &sum).await.unwrap();
    assert_eq!(store.get_divergence(&v).await.unwrap(), Some(sum));
    assert!(store.verify().await.unwrap().is_ok());
    store.delete_divergence(&v).await.unwrap();
    assert_eq!(store.get_divergence(&v).await.unwrap(), None);
    // A hole after the point: nothing can be said.
    let seg = store.list_segments(&v).await.unwrap()[0].clone();
    store.delete_segment(&v, &seg).await.unwrap();
    assert_eq!(store.summarize_after(&v, Seq(3)).await.unwrap(), None);
    // A bad summary is named by verify.
    store
        .backend()
        .put(
            "vms/vm1/divergence.json",
            Bytes::from_static(b"{\"format\":\"x\"}"),
            lifeboat_store::PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert!(store.get_divergence(&v).await.is_err());
    let rep = store.verify().await.unwrap();
    assert!(
        rep.bad.iter().any(|b| b.key.contains("divergence")),
        "{rep:?}"
    );
}

/// A backend that records the segment objects put, and (with `fence`), right after a segment
/// object appears, does what a failover does at that instant: raises the VM's epoch and
/// processes (reads) the segment.
#[derive(Debug)]
struct FenceAfterSegmentPut {
    inner: std::sync::Arc<dyn lifeboat_store::Backend>,
    fence: bool,
    segments_put: std::sync::Mutex<Vec<String>>,
    read_by_processing: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl lifeboat_store::Backend for FenceAfterSegmentPut {
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        mode: lifeboat_store::PutMode,
    ) -> lifeboat_store::Result<lifeboat_store::PutOutcome> {
        let out = self.inner.put(key, data, mode).await?;
        if key.contains("/segments/") {
            self.segments_put.lock().unwrap().push(key.to_string());
        }
        if let Some(vm) = key
            .strip_prefix("vms/")
            .and_then(|r| r.split_once("/segments/"))
            .map(|(vm, _)| VmId::new(vm).unwrap())
            .filter(|_| self.fence)
        {
            let failover = lifeboat_store::Store::new(self.inner.clone(), small_config()).unwrap();
            let now = failover.epoch(&vm).await?;
            failover.bump_epoch(&vm, Epoch(now.0 + 1)).await?;
            for seg in failover.list_segments(&vm).await? {
                failover.read_segment(&vm, &seg).await?;
                self.read_by_processing.lock().unwrap().push(seg.key);
            }
        }
        Ok(out)
    }
    async fn get(&self, key: &str) -> lifeboat_store::Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> lifeboat_store::Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> lifeboat_store::Result<Option<lifeboat_store::ObjectInfo>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> lifeboat_store::Result<Vec<lifeboat_store::ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> lifeboat_store::Result<()> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("fence-after-segment-put over {}", self.inner.describe())
    }
}

/// The CI failure of 2026-11-28: a failover raised the epoch between a segment's epoch check
/// and its object appearing; the put took the segment back, after the failover's processing had
/// listed it ("store object ... not found"), and could as well have deleted records a point was
/// already cut from. Such a segment stays in the store (what processing read is still there),
/// and the put is reported fenced (the source keeps it in its spool).
#[tokio::test]
async fn a_segment_racing_a_fence_stays_readable_and_is_reported_fenced() {
    let backend = std::sync::Arc::new(FenceAfterSegmentPut {
        inner: memory_backend(),
        fence: true,
        segments_put: Default::default(),
        read_by_processing: Default::default(),
    });
    let store = lifeboat_store::Store::new(backend.clone(), small_config()).unwrap();
    let v = vm("raced");
    let e = store
        .put_segment(&v, Epoch(1), Seq(1), Seq(10), segment(&v, 1, 1, 10))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert_eq!(store.epoch(&v).await.unwrap(), Epoch(2));
    let key = "vms/raced/segments/00000000000000000001-00000000000000000010.lbj";
    assert_eq!(backend.read_by_processing.lock().unwrap().as_slice(), [key]);
    // What processing read is still there, whole.
    let segs = store.list_segments(&v).await.unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    let (_, records) = store.read_segment(&v, &segs[0]).await.unwrap();
    assert_eq!(records.len(), 10);
    // The source is fenced from its next segment on.
    let e = store
        .put_segment(&v, Epoch(1), Seq(11), Seq(15), segment(&v, 1, 11, 5))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert_eq!(store.list_segments(&v).await.unwrap().len(), 1);
}

/// An overlapping segment is refused before it is written: a segment written and deleted again
/// could be read by processing in between.
#[tokio::test]
async fn an_overlapping_segment_is_never_written() {
    let backend = std::sync::Arc::new(FenceAfterSegmentPut {
        inner: memory_backend(),
        fence: false,
        segments_put: Default::default(),
        read_by_processing: Default::default(),
    });
    let store = lifeboat_store::Store::new(backend.clone(), small_config()).unwrap();
    let v = vm("overlap");
    let first = segment(&v, 1, 1, 10);
    let put = |first_seq: u64, n: u64, bytes: Bytes| {
        let store = store.clone();
        let v = v.clone();
        async move {
            let last = Seq(first_seq + n - 1);
            store
                .put_segment(&v, Epoch(1), Seq(first_seq), last, bytes)
                .await
        }
    };
    assert_eq!(put(1, 10, first.clone()).await.unwrap(), SegmentPut::Stored);
    let e = put(5, 10, segment(&v, 1, 5, 10)).await.unwrap_err();
    assert!(
        e.to_string().contains("overlaps records already stored"),
        "{e}"
    );
    // The retry of the stored segment is still idempotent.
    assert_eq!(put(1, 10, first).await.unwrap(), SegmentPut::AlreadyStored);
    let seen = backend.segments_put.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|k| k.contains("00000000000000000005-")),
        "the overlapping segment was written: {seen:?}"
    );
    assert_eq!(store.list_segments(&v).await.unwrap().len(), 1);
}
