//! `lifeboat disk serve --ship-to STORE`: every write reaches the region store's segments, in
//! order; the segments alone rebuild the disk, byte for byte; the spool empties.

mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;

use common::{stop, TestDisk};
use lifeboat_store::Store;
use lifeboat_testkit::{hash_file, random_file, require_tool, run_ok, Procs};
use lifeboat_types::{RecordKind, Seq, VmId};

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_segments_rebuild_the_disk_and_the_spool_empties() {
    require_tool("nbdcopy");
    let d = TestDisk::sparse(16 * MIB);
    let store_dir = d.dir.path().join("store");
    let src = d.dir.path().join("src.img");
    random_file(&src, (16 * MIB) as usize, 5);
    let mut procs = Procs::new();
    let s = d.serve(
        &mut procs,
        &[
            "--vm",
            "web-1",
            "--segment-mib",
            "2",
            "--ship-to",
            store_dir.to_str().unwrap(),
        ],
    );
    run_ok(Command::new("nbdcopy").arg(&src).arg(s.uri()));
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -z 1m 1m",
        "-c",
        "discard 3m 64k",
        &s.uri(),
    ]));
    stop(&mut procs, &s);

    // The spool is empty: every sealed segment reached the store.
    let left: Vec<_> = std::fs::read_dir(&d.journal)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lbj"))
        .collect();
    assert!(
        left.is_empty(),
        "sealed segments left in the spool: {left:?}"
    );

    // Replaying the store's segments onto the original image gives the served image.
    let store = Store::open(store_dir.to_str().unwrap()).unwrap();
    let vm = VmId::new("web-1").unwrap();
    let segments = store.list_segments(&vm).await.unwrap();
    assert!(
        segments.len() >= 8,
        "16 MiB in 2 MiB segments: {}",
        segments.len()
    );
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(&d.original)
        .unwrap();
    let mut next = Seq(1);
    for seg in &segments {
        let bytes = store.get_segment(&vm, seg).await.unwrap();
        let (_, records) = lifeboat_journal::parse_segment(&bytes).unwrap();
        for r in records {
            assert_eq!(r.seq, next, "records out of order or missing");
            next = r.seq.next();
            match r.kind {
                RecordKind::Write => img.write_all_at(&r.data, r.offset).unwrap(),
                RecordKind::Zero | RecordKind::Trim => img
                    .write_all_at(&vec![0u8; r.length as usize], r.offset)
                    .unwrap(),
                RecordKind::Checkpoint => {}
            }
        }
    }
    drop(img);
    assert_eq!(
        hash_file(&d.original),
        hash_file(&d.image),
        "the store's segments do not rebuild the disk"
    );
}

/// kill -9 of the disk server while it ships under a write load, restart, stop: the latest point
/// processed from the store equals the disk, byte for byte (no segment lost, none applied twice).
#[test]
fn kill9_while_shipping_loses_nothing() {
    require_tool("fio");
    let d = TestDisk::sparse(16 * MIB);
    let store = d.dir.path().join("store");
    let store_s = store.to_str().unwrap().to_owned();
    let original = d.original.to_str().unwrap().to_owned();
    run_ok(Command::new(common::LIFEBOAT).args([
        "seed",
        "--store",
        &store_s,
        "--vm",
        "web-1",
        "--disk",
        &format!("0={original}"),
    ]));
    let args = [
        "--vm",
        "web-1",
        "--segment-mib",
        "1",
        "--segment-secs",
        "1",
        "--ship-to",
        &store_s,
    ];
    let mut procs = Procs::new();
    for round in 0..3 {
        let s = d.serve(&mut procs, &args);
        let mut fio = Command::new("fio");
        fio.args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={}", s.uri()),
            "--rw=randwrite",
            "--bs=16k",
            "--iodepth=8",
            "--size=16M",
            "--time_based",
            "--runtime=30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let f = procs.spawn(fio);
        // Let some segments be sealed and shipped, then kill in the middle of it.
        lifeboat_testkit::wait_until(
            std::time::Duration::from_secs(60),
            "segments in the store",
            || walk_count(&store.join("vms/web-1/segments")) > 2 * (round + 1),
        );
        procs.kill9(s.idx);
        procs.kill9(f);
    }
    // A clean run ships the rest.
    let s = d.serve(&mut procs, &args);
    stop(&mut procs, &s);
    run_ok(
        Command::new(common::LIFEBOAT)
            .args(["process", "--store", &store_s, "--vm", "web-1", "--latest"]),
    );
    let out = d.dir.path().join("restored.img");
    run_ok(
        Command::new(common::LIFEBOAT)
            .args([
                "restore", "--store", &store_s, "--vm", "web-1", "--point", "latest", "--output",
            ])
            .arg(&out),
    );
    assert_eq!(
        hash_file(&out),
        hash_file(&d.image),
        "the latest point differs from the disk after kill -9 while shipping"
    );
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}
