//! Recovery points end to end through the CLI: seed, serve with shipping, checkpoint, process,
//! list, restore byte for byte; a damaged chunk is named by `verify` and never restored.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{stop, TestDisk, LIFEBOAT};
use lifeboat_testkit::{hash_file, random_file, require_tool, run_ok, wait_until, Procs};

const MIB: u64 = 1 << 20;

fn lifeboat(args: &[&str]) -> std::process::Output {
    Command::new(LIFEBOAT)
        .args(args)
        .output()
        .expect("run lifeboat")
}

#[test]
fn points_are_cut_listed_restored_and_damage_is_refused() {
    require_tool("nbdcopy");
    let d = TestDisk::random(12 * MIB, 11);
    let dir = d.dir.path();
    let store = dir.join("store");
    let store_s = store.to_str().unwrap();

    // Initial replication of the disk as it is before the VM runs: the point at position 0.
    let mut procs = Procs::new();
    let s = d.seed_and_serve_shipping(&mut procs, "app-1", &[]);
    let first = dir.join("first.img");
    random_file(&first, (4 * MIB) as usize, 12);
    run_ok(Command::new("nbdcopy").arg(&first).arg(s.uri()));
    // A crash-consistent checkpoint; the disk as it is now is what that point must hold.
    procs.signal(s.idx, libc::SIGUSR1);
    wait_until(Duration::from_secs(30), "the checkpoint record", || {
        String::from_utf8_lossy(
            &lifeboat(&["journal", "list", "--journal", d.journal.to_str().unwrap()]).stdout,
        )
        .contains("checkpoint")
    });
    let at_checkpoint = dir.join("at-checkpoint.img");
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&at_checkpoint));
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x77 5m 3m",
        "-c",
        "write -z 0 64k",
        &s.uri(),
    ]));
    stop(&mut procs, &s);

    run_ok(
        Command::new(LIFEBOAT).args(["process", "--store", store_s, "--vm", "app-1", "--latest"]),
    );
    let out = run_ok(Command::new(LIFEBOAT).args([
        "points", "--store", store_s, "--vm", "app-1", "--output", "json",
    ]));
    let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = points.as_array().expect("a list of points");
    assert_eq!(points.len(), 3, "seed, checkpoint, latest: {points:#?}");
    let ids: Vec<&str> = points.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert!(points
        .iter()
        .all(|p| p["kind"] == "crash-consistent" && p["disks_total"] == 1));
    let table = String::from_utf8_lossy(
        &run_ok(Command::new(LIFEBOAT).args(["points", "--store", store_s, "--vm", "app-1"]))
            .stdout,
    )
    .into_owned();
    assert!(
        table.contains("1 of 1 disks") && table.contains(ids[1]),
        "{table}"
    );

    // Each point restores to exactly the disk it stands for.
    for (id, expected) in [
        (ids[0], &d.original),
        (ids[1], &at_checkpoint),
        ("latest", &d.image),
    ] {
        let out = dir.join(format!("restored-{}.img", id.replace('-', "_")));
        run_ok(
            Command::new(LIFEBOAT)
                .args([
                    "restore", "--store", store_s, "--vm", "app-1", "--point", id, "--output",
                ])
                .arg(&out),
        );
        assert_eq!(
            hash_file(&out),
            hash_file(expected),
            "point {id} restored wrong bytes"
        );
    }
    run_ok(Command::new(LIFEBOAT).args(["verify", "--store", store_s]));

    // Flip one bit of one stored chunk: verify names it, restore refuses and writes nothing.
    let chunk = walk(&store.join("chunks"))
        .into_iter()
        .next()
        .expect("a stored chunk");
    let mut bytes = std::fs::read(&chunk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
    let v = lifeboat(&["verify", "--store", store_s]);
    assert!(!v.status.success(), "verify must fail on a damaged chunk");
    assert!(
        String::from_utf8_lossy(&v.stdout).contains(&name),
        "verify must name {name}"
    );
    let mut refused = 0;
    for id in &ids {
        let out = dir.join(format!("again-{id}.img"));
        let r = Command::new(LIFEBOAT)
            .args([
                "restore", "--store", store_s, "--vm", "app-1", "--point", id, "--output",
            ])
            .arg(&out)
            .output()
            .unwrap();
        if !r.status.success() {
            refused += 1;
            assert!(!out.exists(), "a refused restore left {}", out.display());
            let err = String::from_utf8_lossy(&r.stderr);
            assert!(
                err.contains("nothing was written") && err.contains(&name[..16]),
                "{err}"
            );
        }
    }
    assert!(refused >= 1, "no restore noticed the damaged chunk");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
