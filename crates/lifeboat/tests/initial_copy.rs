//! Initial replication while the guest writes: `disk serve --ship-to` copies the image into an
//! empty store in the background (bandwidth-limited here, so that the copy surely overlaps the
//! writes); the initial copy is never restored, and the first point after it equals the served
//! disk byte for byte.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{stop, TestDisk, LIFEBOAT};
use lifeboat_store::{PointOrigin, PointRecord, Store};
use lifeboat_testkit::{hash_file, require_tool, run_ok, wait_until, Procs};
use lifeboat_types::VmId;

const MIB: u64 = 1 << 20;

fn lifeboat(args: &[&str]) -> std::process::Output {
    Command::new(LIFEBOAT)
        .args(args)
        .output()
        .expect("run lifeboat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_taken_while_the_guest_writes_becomes_an_exact_point() {
    require_tool("fio");
    // The VM's disk before protection: 32 MiB of random data, copied at 8 MiB/s (4 s).
    let d = TestDisk::random(32 * MIB, 11);
    let store_s = d.store();
    let mut procs = Procs::new();
    let s = d.serve(
        &mut procs,
        &[
            "--vm",
            "init-1",
            "--segment-secs",
            "0.5",
            "--copy-rate-mib",
            "8",
            "--ship-to",
            &store_s,
        ],
    );
    // The guest writes all through the copy.
    run_ok(Command::new("fio").args([
        "--name=during-copy",
        "--ioengine=nbd",
        &format!("--uri={}", s.uri()),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=4",
        "--size=32M",
        "--rate=2m",
        "--time_based",
        "--runtime=2",
    ]));
    let store = Store::open(&store_s).unwrap();
    let vm = VmId::new("init-1").unwrap();
    let copied = || {
        let rt = tokio::runtime::Handle::current();
        let (st, v) = (store.clone(), vm.clone());
        tokio::task::block_in_place(|| rt.block_on(st.list_points(&v)))
            .map(|p| !p.is_empty())
            .unwrap_or(false)
    };
    wait_until(
        Duration::from_secs(120),
        "the initial copy in the store",
        copied,
    );
    // More writes after the copy, then a clean stop (the last segments are shipped).
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 3m 1m",
        "-c",
        "write -z 7m 2m",
        &s.uri(),
    ]));
    stop(&mut procs, &s);

    let points: Vec<PointRecord> = store.list_points(&vm).await.unwrap();
    assert_eq!(points.len(), 1, "{points:?}");
    let copy = &points[0];
    assert_eq!(copy.origin, PointOrigin::InitialCopy);
    let copy_end = copy
        .copy_end
        .expect("an initial copy records where it ended");
    assert!(
        copy_end > copy.seq,
        "the guest wrote during the copy ({}..{copy_end})",
        copy.seq
    );
    let table = lifeboat(&["points", "--store", &store_s, "--vm", "init-1"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("initial copy: restorable from journal record"),
        "{text}"
    );

    // The initial copy itself is refused, and nothing is written.
    let out = d.dir.path().join("copy.img");
    let r = lifeboat(&[
        "restore",
        "--store",
        &store_s,
        "--vm",
        "init-1",
        "--point",
        &copy.id,
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && !out.exists());
    assert!(
        err.contains("is the initial copy") && err.contains("never restored"),
        "{err}"
    );
    // So is "latest" before any point was processed.
    let r = lifeboat(&[
        "restore",
        "--store",
        &store_s,
        "--vm",
        "init-1",
        "--point",
        "latest",
        "--output",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && !out.exists());
    assert!(
        err.contains("initial replication is still catching up"),
        "{err}"
    );

    // Processing cuts the first real point; it equals the served disk.
    run_ok(
        Command::new(LIFEBOAT).args(["process", "--store", &store_s, "--vm", "init-1", "--latest"]),
    );
    let r = lifeboat(&[
        "restore",
        "--store",
        &store_s,
        "--vm",
        "init-1",
        "--point",
        "latest",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        hash_file(&out),
        hash_file(&d.image),
        "the first point after the initial copy is not the served disk"
    );
    // Everything the store holds verifies.
    let v = lifeboat(&["verify", "--store", &store_s]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
