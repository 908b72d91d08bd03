//! Shipping against a real journal and a real local-directory store.

use std::sync::Arc;

use lifeboat_journal::{parse_segment, Journal, JournalConfig};
use lifeboat_ship::{ShipError, Shipper};
use lifeboat_store::Store;
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

fn vm() -> VmId {
    VmId::new("web-1").unwrap()
}

fn journal(dir: &std::path::Path, epoch: u64) -> Arc<Journal> {
    let mut c = JournalConfig::new(vm(), Epoch(epoch));
    c.segment_max_bytes = 64 << 10;
    Arc::new(Journal::open(dir, c).unwrap())
}

/// Appends `n` 8 KiB writes with distinct data and seals; returns the data per seq.
fn fill(j: &Journal, n: u64) -> Vec<(Seq, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let data: Vec<u8> = (0..8192u32).map(|b| (b as u64 * 7 + i) as u8).collect();
        let seq = j.append_write(DiskId(0), i * 8192, &data).unwrap();
        out.push((seq, data));
    }
    j.seal_if_due().unwrap();
    j.seal().unwrap();
    out
}

async fn stored_records(store: &Store) -> Vec<(Seq, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = Seq(1);
    for seg in store.list_segments(&vm()).await.unwrap() {
        assert_eq!(seg.first_seq, next, "store segments leave a hole");
        let bytes = store.get_segment(&vm(), &seg).await.unwrap();
        let (_, records) = parse_segment(&bytes).unwrap();
        for r in records {
            out.push((r.seq, r.data));
        }
        next = seg.last_seq.next();
    }
    out
}

#[tokio::test]
async fn ships_every_sealed_segment_in_order_then_empties_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir.path().join("j"), 1);
    let written = fill(&j, 40);
    let sealed = j.sealed_segments().unwrap().len();
    assert!(sealed >= 4, "want several segments, got {sealed}");
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let shipper = Shipper::new(vm(), j.clone(), store.clone());

    let r = shipper.ship_once(Seq(u64::MAX)).await.unwrap();
    assert_eq!(r.stored, sealed);
    assert_eq!(r.already_stored, 0);
    assert_eq!(r.removed, sealed);
    assert_eq!(r.shipped_through, Some(Seq(40)));
    assert!(j.sealed_segments().unwrap().is_empty(), "spool not emptied");
    assert_eq!(stored_records(&store).await, written, "store != journal");

    // Nothing left: a second pass sends nothing.
    let r = shipper.ship_once(Seq(u64::MAX)).await.unwrap();
    assert_eq!((r.stored, r.already_stored, r.removed), (0, 0, 0));
}

#[tokio::test]
async fn resend_after_a_crash_is_idempotent_and_keep_after_protects_replay() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir.path().join("j"), 1);
    let written = fill(&j, 24);
    let sealed = j.sealed_segments().unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let shipper = Shipper::new(vm(), j.clone(), store.clone());

    // The images have applied nothing yet: everything is shipped, nothing leaves the spool.
    let r = shipper.ship_once(Seq(0)).await.unwrap();
    assert_eq!((r.stored, r.removed), (sealed.len(), 0));
    assert_eq!(j.sealed_segments().unwrap(), sealed);

    // The same shipper does not send again what the store has while it waits in the spool.
    let r = shipper.ship_once(Seq(0)).await.unwrap();
    assert_eq!((r.stored, r.already_stored, r.removed), (0, 0, 0));

    // After a crash between put and removal, a new shipper sends everything again: the store
    // answers AlreadyStored, nothing is duplicated.
    let shipper = Shipper::new(vm(), j.clone(), store.clone());
    let keep_after = sealed[1].last_seq;
    let r = shipper.ship_once(keep_after).await.unwrap();
    assert_eq!((r.stored, r.already_stored), (0, sealed.len()));
    assert_eq!(
        r.removed, 2,
        "only segments at or below the watermark leave the spool"
    );
    assert_eq!(j.sealed_segments().unwrap(), sealed[2..].to_vec());
    assert_eq!(
        store.list_segments(&vm()).await.unwrap().len(),
        sealed.len()
    );
    assert_eq!(stored_records(&store).await, written);
}

#[tokio::test]
async fn a_fenced_store_refuses_the_old_epoch_and_the_spool_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("j");
    let j = journal(&jdir, 1);
    fill(&j, 16);
    let sealed = j.sealed_segments().unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    // The VM failed over: the store has moved to epoch 2.
    store.bump_epoch(&vm(), Epoch(2)).await.unwrap();
    let shipper = Shipper::new(vm(), j.clone(), store.clone());
    let err = shipper.ship_once(Seq(u64::MAX)).await.unwrap_err();
    match &err {
        ShipError::Fenced {
            segment_epoch,
            store_epoch,
            ..
        } => assert_eq!((*segment_epoch, *store_epoch), (Epoch(1), Epoch(2))),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert!(err.to_string().contains("failed over"), "{err}");
    assert_eq!(
        j.sealed_segments().unwrap(),
        sealed,
        "a fenced shipper must keep its spool"
    );
    assert!(store.list_segments(&vm()).await.unwrap().is_empty());
}
