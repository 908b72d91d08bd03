//! kill -9 resilience: hydration runs in a child process (`examples/hydrate.rs`) while a guest
//! thread in it writes, zeroes and trims; the child is killed with SIGKILL at a random moment,
//! several times, each run resuming the last one's state file and journal; a last run
//! finishes. The target image must then be exactly the point plus every journaled guest
//! operation (BLAKE3 of the whole disk), and a reopen without any store must find it
//! hydrated.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use lifeboat_recover::{RecoveryDisk, RecoveryOptions, Source};
use lifeboat_testkit::{hash_file, run_ok, Procs};
use lifeboat_types::DiskId;

const SIZE: usize = 16 << 20;

/// The example binary, built by `cargo test`/`cargo nextest` with the crate's examples.
fn hydrate_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps");
    let p = profile_dir.join("examples").join("hydrate");
    assert!(
        p.is_file(),
        "{} is missing: cargo build -p lifeboat-recover --examples",
        p.display()
    );
    p
}

fn run_args(dir: &Path, cmd: &mut Command) {
    cmd.arg("run")
        .arg("--store")
        .arg(dir.join("store"))
        .args(["--vm", vm().as_str()])
        .arg("--target")
        .arg(target(dir))
        .arg("--journal")
        .arg(dir.join("journal"));
}

/// The local chunk count of the state file (offset 56, see the crate doc), 0 if none yet.
fn local_in_state(dir: &Path) -> u64 {
    match std::fs::read(lifeboat_recover::state_path(&target(dir))) {
        Ok(b) if b.len() >= 64 => u64::from_le_bytes(b[56..64].try_into().unwrap()),
        _ => 0,
    }
}

#[test]
fn hydration_survives_kill_9_at_random_moments() {
    let bin = hydrate_bin();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 77);
    rt.block_on(seed(&store, dir.path(), &content));

    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64)
        | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut procs = Procs::new();
    for run in 0..5u64 {
        let mut cmd = Command::new(&bin);
        run_args(dir.path(), &mut cmd);
        cmd.args(["--max-mib-per-sec", "1.5", "--checkpoint-ms", "40"])
            .args(["--writes", "100000", "--write-every-ms", "30"])
            .args(["--write-seed", &(run + 1).to_string()])
            .stdout(Stdio::null());
        let idx = procs.spawn(cmd);
        let delay = Duration::from_millis(20 + rnd(700));
        std::thread::sleep(delay);
        if let Ok(Some(status)) = procs.child(idx).try_wait() {
            panic!("run {run}: the child exited by itself ({status}) before the kill");
        }
        procs.kill9(idx);
        eprintln!(
            "run {run}: killed after {delay:?}; state file: {} chunks local",
            local_in_state(dir.path())
        );
    }
    assert!(
        local_in_state(dir.path()) < (SIZE as u64).div_ceil(u64::from(CHUNK)),
        "hydrated before the last run: the kills did not interrupt it"
    );

    // The last run finishes (no more guest writes).
    let mut cmd = Command::new(&bin);
    run_args(dir.path(), &mut cmd);
    let out = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("last run: {text}");
    let total = (SIZE as u64).div_ceil(u64::from(CHUNK));
    assert!(
        text.contains(&format!("done local={total}/{total}")),
        "{text}"
    );

    let model = replay_model(&content, &dir.path().join("journal"));
    assert_ne!(hash(&model), hash(&content), "the guest wrote nothing");
    assert_eq!(
        hash_file(&target(dir.path())),
        hash(&model),
        "target image vs point + journal after kills"
    );

    // Hydrated and checkpointed: a reopen needs no store and replays nothing.
    let journal = recovery_journal(dir.path());
    let disk = RecoveryDisk::open(
        RecoveryOptions {
            image: target(dir.path()),
            disk: DiskId(0),
            journal: journal.clone(),
        },
        Source::Unavailable,
    )
    .unwrap();
    assert!(disk.is_hydrated());
    assert_eq!(disk.applied_seq(), journal.last_seq());
    assert_eq!(hash(&read_all(&disk)), hash(&model));
    assert_eq!(disk.size(), SIZE as u64);
}
