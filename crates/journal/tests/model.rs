//! Property test: random records and seal/reopen points, replayed onto model disks, give the
//! same disks as applying the operations directly.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use common::*;
use lifeboat_journal::{replay, CheckpointKind, DiskId, JournalError, Record, RecordKind, Seq};
use proptest::prelude::*;

const DISKS: usize = 3;
const DISK_SIZE: u64 = 8192;

#[derive(Debug, Clone)]
enum Op {
    Write {
        disk: u32,
        offset: u64,
        len: usize,
        seed: u64,
    },
    Zero {
        disk: u32,
        offset: u64,
        len: u64,
    },
    Trim {
        disk: u32,
        offset: u64,
        len: u64,
    },
    Checkpoint {
        app: bool,
        nanos: u64,
    },
    Seal,
    SealIfDue,
    Sync,
    Reopen,
}

fn range() -> impl Strategy<Value = (u32, u64, u64)> {
    (0..DISKS as u32, 0..DISK_SIZE)
        .prop_flat_map(|(d, off)| (Just(d), Just(off), 0..=(DISK_SIZE - off).min(1500)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(), any::<u64>()).prop_map(|((disk, offset, len), seed)| Op::Write { disk, offset, len: len as usize, seed }),
        2 => range().prop_map(|(disk, offset, len)| Op::Zero { disk, offset, len }),
        2 => range().prop_map(|(disk, offset, len)| Op::Trim { disk, offset, len }),
        1 => (any::<bool>(), any::<u64>()).prop_map(|(app, nanos)| Op::Checkpoint { app, nanos }),
        1 => Just(Op::Seal),
        1 => Just(Op::SealIfDue),
        1 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

fn apply(disks: &mut [Vec<u8>], r: &Record) {
    let d = &mut disks[r.disk.0 as usize];
    let (a, b) = (r.offset as usize, (r.offset + r.length) as usize);
    match r.kind {
        RecordKind::Write => d[a..b].copy_from_slice(&r.data),
        RecordKind::Zero | RecordKind::Trim => d[a..b].fill(0),
        RecordKind::Checkpoint => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn replay_matches_the_model(ops in prop::collection::vec(op(), 1..120), max_bytes in 200u64..6000) {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Some(open(tmp.path(), max_bytes));
        let mut model = vec![vec![0xAAu8; DISK_SIZE as usize]; DISKS];
        let mut checkpoints = Vec::new();
        let mut next = 1u64;
        for op in &ops {
            let jr = j.as_ref().unwrap();
            let seq = match *op {
                Op::Write { disk, offset, len, seed } => {
                    let d = data(seed, len);
                    model[disk as usize][offset as usize..offset as usize + len].copy_from_slice(&d);
                    Some(jr.append_write(DiskId(disk), offset, &d).unwrap())
                }
                Op::Zero { disk, offset, len } | Op::Trim { disk, offset, len } => {
                    model[disk as usize][offset as usize..(offset + len) as usize].fill(0);
                    Some(if matches!(op, Op::Zero { .. }) {
                        jr.append_zero(DiskId(disk), offset, len).unwrap()
                    } else {
                        jr.append_trim(DiskId(disk), offset, len).unwrap()
                    })
                }
                Op::Checkpoint { app, nanos } => {
                    let kind = if app { CheckpointKind::AppConsistent } else { CheckpointKind::CrashConsistent };
                    let time = UNIX_EPOCH + Duration::from_nanos(nanos);
                    let seq = jr.append_checkpoint(kind, time).unwrap();
                    checkpoints.push((seq, kind, time, model.clone()));
                    Some(seq)
                }
                Op::Seal => { jr.seal().unwrap(); None }
                Op::SealIfDue => { jr.seal_if_due().unwrap(); None }
                Op::Sync => { jr.sync().unwrap(); prop_assert_eq!(jr.durable_seq(), jr.last_seq()); None }
                Op::Reopen => {
                    drop(j.take());
                    j = Some(open(tmp.path(), max_bytes));
                    None
                }
            };
            if let Some(seq) = seq {
                prop_assert_eq!(seq, Seq(next));
                next += 1;
            }
        }
        prop_assert_eq!(j.as_ref().unwrap().last_seq(), Seq(next - 1));

        // Full replay gives the model; each checkpoint's prefix gives the model at that time.
        let mut disks = vec![vec![0xAAu8; DISK_SIZE as usize]; DISKS];
        let mut cps = checkpoints.iter();
        let last = replay(tmp.path(), Seq(0), |r| {
            apply(&mut disks, r);
            if let Some(c) = r.checkpoint {
                let (seq, kind, time, at) = cps.next().unwrap();
                assert_eq!((r.seq, c.kind, c.time), (*seq, *kind, *time));
                assert!(disks == *at, "state at checkpoint {seq}");
            }
            Ok::<(), JournalError>(())
        }).unwrap();
        prop_assert_eq!(last, (next > 1).then(|| Seq(next - 1)));
        prop_assert!(cps.next().is_none());
        prop_assert!(disks == model);
    }
}
