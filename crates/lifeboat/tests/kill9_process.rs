//! kill -9 during processing and garbage collection, at random moments, repeatedly: no point
//! lost, no point referencing a missing object, every point exactly its journal position.
//!
//! The journal (random writes and a checkpoint marker every few of them) is shipped to a local
//! store in-process; then `lifeboat process --follow --store-secs 0` (cutting and storing every
//! point) runs beside a loop of `lifeboat gc --grace-secs 0`, and both are killed with SIGKILL
//! at random times, round after round. Afterwards a clean run finishes the work, and every
//! point is restored through the CLI and compared by hash with the model disk at its position.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::LIFEBOAT;
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_process::Processor;
use lifeboat_ship::Shipper;
use lifeboat_store::Store;
use lifeboat_testkit::{hash_file, run_ok, Procs};
use lifeboat_types::{CheckpointKind, DiskId, Epoch, Seq, VmId};

const DISK: usize = 24 << 20;
const CHECKPOINTS: usize = 24;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn lifeboat(args: &[&str]) -> std::process::Output {
    Command::new(LIFEBOAT)
        .args(args)
        .output()
        .expect("run lifeboat")
}

/// Writes the journal, ships it, and returns the model's hash at every checkpoint.
async fn prepare(
    dir: &std::path::Path,
    store: &Store,
    vm: &VmId,
    rng: &mut Rng,
) -> BTreeMap<Seq, blake3::Hash> {
    let mut model = lifeboat_testkit::random_bytes(DISK, rng.next());
    model[DISK / 2..].fill(0);
    let img = dir.join("seed.img");
    std::fs::write(&img, &model).unwrap();
    Processor::new(store.clone(), vm.clone())
        .seed(
            &[(DiskId(0), img.as_path())],
            Seq(0),
            Epoch(1),
            SystemTime::now(),
        )
        .await
        .unwrap();
    let mut jc = JournalConfig::new(vm.clone(), Epoch(1));
    jc.segment_max_bytes = 1 << 20;
    let journal = Arc::new(Journal::open(&dir.join("journal"), jc).unwrap());
    let mut expected = BTreeMap::new();
    for _ in 0..CHECKPOINTS {
        for _ in 0..(4 + rng.below(8)) {
            let len = 4096 * (1 + rng.below(32)) as usize;
            let off = 4096 * rng.below(((DISK - len) / 4096) as u64) as usize;
            if rng.below(5) == 0 {
                journal
                    .append_zero(DiskId(0), off as u64, len as u64)
                    .unwrap();
                model[off..off + len].fill(0);
            } else {
                let data = lifeboat_testkit::random_bytes(len, rng.next());
                journal.append_write(DiskId(0), off as u64, &data).unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
        }
        let kind = if rng.below(4) == 0 {
            CheckpointKind::AppConsistent
        } else {
            CheckpointKind::CrashConsistent
        };
        let seq = journal.append_checkpoint(kind, SystemTime::now()).unwrap();
        expected.insert(seq, blake3::hash(&model));
    }
    journal.seal().unwrap();
    Shipper::new(vm.clone(), journal.clone(), store.clone())
        .ship_once(journal.last_seq())
        .await
        .unwrap();
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_processing_and_gc_loses_no_point() {
    let seed = lifeboat_testkit::test_seed("KILL9_SEED");
    let mut rng = Rng(seed);
    let dir = lifeboat_testkit::tempdir();
    let store_s = dir.path().join("store").to_string_lossy().into_owned();
    let store = Store::open(&store_s).unwrap();
    let vm = VmId::new("k9-1").unwrap();
    let expected = prepare(dir.path(), &store, &vm, &mut rng).await;

    let mut procs = Procs::new();
    let mut gc_killed = false;
    for round in 0..8 {
        let mut p = Command::new(LIFEBOAT);
        p.args([
            "process",
            "--store",
            &store_s,
            "--vm",
            "k9-1",
            "--latest",
            "--follow",
            "--every-ms",
            "50",
            "--store-secs",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let proc_idx = procs.spawn(p);
        let until = Instant::now() + Duration::from_millis(100 + rng.below(1500));
        // Collectors, one after the other, until the kill; one of them (once) killed mid-run.
        while Instant::now() < until {
            let mut g = Command::new(LIFEBOAT);
            g.args(["gc", "--store", &store_s, "--grace-secs", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let gi = procs.spawn(g);
            if !gc_killed && round == 3 {
                std::thread::sleep(Duration::from_millis(rng.below(20)));
                procs.kill9(gi);
                gc_killed = true;
            } else {
                let _ = procs.wait_exit(gi, Duration::from_secs(60), "lifeboat gc");
            }
            std::thread::sleep(Duration::from_millis(rng.below(100)));
        }
        procs.kill9(proc_idx);
    }

    // A clean run finishes the work (a killed collector's lock goes stale within 30 s).
    run_ok(Command::new(LIFEBOAT).args([
        "process",
        "--store",
        &store_s,
        "--vm",
        "k9-1",
        "--store-secs",
        "0",
    ]));
    // The collector killed in round 3 may have taken the GC lock: until it is stale (30 s)
    // another collector is refused, saying so; nothing else may fail.
    let mut last = String::new();
    let collected = lifeboat_testkit::wait_for(Duration::from_secs(45), || {
        let g = lifeboat(&["gc", "--store", &store_s, "--grace-secs", "0"]);
        last = String::from_utf8_lossy(&g.stderr).into_owned();
        assert!(
            g.status.success() || last.contains("another garbage collection"),
            "seed {seed}: gc failed: {last}"
        );
        g.status.success()
    });
    assert!(
        collected,
        "seed {seed}: the killed collector's lock never went stale: {last}"
    );
    let v = lifeboat(&["verify", "--store", &store_s]);
    assert!(
        v.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&v.stdout)
    );

    // Every checkpoint has its point, stored, equal to the model there.
    let points = store.list_points(&vm).await.unwrap();
    for (seq, hash) in &expected {
        let p = points
            .iter()
            .find(|p| p.seq() == *seq)
            .unwrap_or_else(|| panic!("seed {seed}: no point at checkpoint {seq}"));
        assert!(!p.is_journal_backed(), "seed {seed}: {} not stored", p.id);
        let out = dir.path().join(format!("{}.img", p.id));
        run_ok(Command::new(LIFEBOAT).args([
            "restore",
            "--store",
            &store_s,
            "--vm",
            "k9-1",
            "--point",
            &p.id,
            "--output",
            out.to_str().unwrap(),
        ]));
        assert_eq!(
            hash_file(&out),
            *hash,
            "seed {seed}: point {} is not the disk at its position",
            p.id
        );
        std::fs::remove_file(&out).unwrap();
    }
}
