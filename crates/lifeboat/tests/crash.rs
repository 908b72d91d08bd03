//! kill -9 of the disk server in the middle of a write load, then restart: every acknowledged
//! write is in the image (journal replay), and the image equals the replay of the journal onto the
//! original image.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{serve, sparse_image, stop, TestDisk};
use lifeboat_testkit::nbd_client::Client;
use lifeboat_testkit::{hash_file, random_bytes, require_tool, wait_until, Procs};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
const TRACKED_BASE: u64 = 32 * MIB;

#[test]
fn kill9_under_fio_load_loses_no_acknowledged_write() {
    require_tool("fio");
    let d = TestDisk::sparse(64 * MIB);
    let (dir, image, journal) = (d.dir.path(), &d.image, &d.journal);

    let mut procs = Procs::new();
    let s = d.serve(
        &mut procs,
        &["--segment-mib", "1", "--checkpoint-secs", "1"],
    );

    // Background load: fio random writes with periodic flushes on [0, 32 MiB).
    let mut fio = Command::new("fio");
    fio.args([
        "--name=load",
        "--ioengine=nbd",
        &format!("--uri={}", s.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=16",
        "--offset=0",
        "--size=32M",
        "--fsync=64",
        "--time_based",
        "--runtime=60",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let fio_idx = procs.spawn(fio);

    // Tracked writer on [32 MiB, 64 MiB): block i gets pattern i; a FLUSH every 8 writes.
    let acked = Arc::new(AtomicU64::new(0));
    let flushed = Arc::new(AtomicU64::new(0));
    let socket = s.socket.clone();
    let (a2, f2) = (acked.clone(), flushed.clone());
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(&socket, "disk0").expect("connect tracked writer");
        for i in 0..(32 * MIB / BLOCK) {
            let data = random_bytes(BLOCK as usize, i + 1);
            if c.write(TRACKED_BASE + i * BLOCK, &data, false).is_err() {
                return;
            }
            a2.store(i + 1, Ordering::SeqCst);
            if (i + 1) % 8 == 0 {
                if c.flush().is_err() {
                    return;
                }
                f2.store(i + 1, Ordering::SeqCst);
            }
        }
    });

    wait_until(Duration::from_secs(60), "tracked writes under load", || {
        flushed.load(Ordering::SeqCst) >= 2000
    });
    procs.kill9(s.idx);
    writer.join().expect("writer thread");
    procs.kill9(fio_idx);
    let (acked, flushed) = (acked.load(Ordering::SeqCst), flushed.load(Ordering::SeqCst));
    assert!(flushed >= 2000 && acked >= flushed);

    // Restart: the journal is replayed onto the image.
    let s2 = serve(&mut procs, dir, image, journal, &[]);
    let mut c = Client::connect(&s2.socket, "disk0").expect("connect after restart");
    let mut missing = Vec::new();
    for i in 0..acked {
        let got = c
            .read(TRACKED_BASE + i * BLOCK, BLOCK as u32)
            .expect("read back");
        if got != random_bytes(BLOCK as usize, i + 1) {
            missing.push(i);
        }
    }
    assert!(
        missing.iter().all(|&i| i >= flushed),
        "writes acknowledged before a completed FLUSH are missing after kill -9: {:?}",
        &missing[..missing.len().min(20)]
    );
    assert!(
        missing.is_empty(),
        "acknowledged writes (journaled before the reply) missing after kill -9: {:?}",
        &missing[..missing.len().min(20)]
    );
    c.disconnect().ok();
    stop(&mut procs, &s2);

    // The image equals the replay of the whole journal onto the original image.
    d.assert_replay_reproduces();

    // The image is only written back lazily: the journal alone rebuilds it. Lose the image (back
    // to its original content) and its watermark; the next start replays every record.
    let served = hash_file(image);
    sparse_image(image, 64 * MIB);
    std::fs::remove_file(journal.join("applied-disk0")).expect("watermark file exists");
    let s3 = serve(&mut procs, dir, image, journal, &[]);
    stop(&mut procs, &s3);
    assert_eq!(
        hash_file(image),
        served,
        "start-up replay did not rebuild the image"
    );
    let log = std::fs::read_to_string(&s3.log).unwrap_or_default();
    assert!(
        log.contains("replayed journal records"),
        "no replay logged:\n{log}"
    );
}
