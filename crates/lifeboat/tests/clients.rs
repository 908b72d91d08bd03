//! Real NBD clients against `lifeboat disk serve`: nbdinfo, nbdcopy, qemu-img, qemu-io and fio's
//! nbd engine. Every test checks bytes (whole-image BLAKE3), and that replaying the journal onto a
//! copy of the original image reproduces the served image exactly.

mod common;

use std::process::Command;

use common::{serve, serve_command, serve_error, sparse_image, stop, TestDisk};
use lifeboat_testkit::{hash_file, random_file, require_tool, run_ok, tempdir, Procs};

const MIB: u64 = 1 << 20;

#[test]
fn nbdinfo_reports_size_flags_and_allocation_map() {
    require_tool("nbdinfo");
    let dir = tempdir();
    let image = dir.path().join("vm.img");
    sparse_image(&image, 8 * MIB);
    // One data extent at [1 MiB, 2 MiB); the rest is a hole.
    std::fs::write(dir.path().join("data"), vec![0x5au8; MIB as usize]).unwrap();
    run_ok(Command::new("dd").args([
        &format!("if={}", dir.path().join("data").display()),
        &format!("of={}", image.display()),
        "bs=1M",
        "seek=1",
        "conv=notrunc",
        "status=none",
    ]));
    let mut procs = Procs::new();
    let s = serve(&mut procs, dir.path(), &image, &dir.path().join("j"), &[]);

    let out = run_ok(Command::new("nbdinfo").args(["--json", &s.uri()]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --json");
    let export = &v["exports"][0];
    assert_eq!(export["export-size"], 8 * MIB, "{v}");
    assert_eq!(export["is_read_only"], false, "{v}");
    assert_eq!(export["can_multi_conn"], true, "{v}");
    assert_eq!(export["can_flush"], true, "{v}");
    assert_eq!(export["can_fua"], true, "{v}");
    assert_eq!(export["can_zero"], true, "{v}");
    assert_eq!(export["can_trim"], true, "{v}");

    let out = run_ok(Command::new("nbdinfo").args(["--map", &s.uri()]));
    let map = String::from_utf8_lossy(&out.stdout);
    // Lines: "offset length type description"; type 0 = data, 3 = hole,zero.
    let extents: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        extents,
        vec![(0, MIB, 3), (MIB, MIB, 0), (2 * MIB, 6 * MIB, 3)],
        "nbdinfo --map:\n{map}"
    );
    stop(&mut procs, &s);
}

#[test]
fn nbdcopy_in_and_out_round_trips_and_journal_replays() {
    require_tool("nbdcopy");
    let d = TestDisk::sparse(24 * MIB);
    let dir = &d.dir;
    // Source: random data with a zero hole in the middle.
    let src = dir.path().join("src.img");
    random_file(&src, (24 * MIB) as usize, 42);
    run_ok(Command::new("dd").args([
        "if=/dev/zero",
        &format!("of={}", src.display()),
        "bs=1M",
        "seek=8",
        "count=4",
        "conv=notrunc",
        "status=none",
    ]));

    let mut procs = Procs::new();
    let s = d.serve(&mut procs, &["--segment-mib", "4"]);
    run_ok(Command::new("nbdcopy").arg(&src).arg(s.uri()));
    let out = dir.path().join("out.img");
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(&out));
    assert_eq!(
        hash_file(&out),
        hash_file(&src),
        "nbdcopy out != nbdcopy in"
    );
    stop(&mut procs, &s);
    assert_eq!(
        hash_file(&d.image),
        hash_file(&src),
        "served image != source"
    );
    d.assert_replay_reproduces();
}

#[test]
fn qemu_io_writes_zeroes_discards_and_qemu_img_compares() {
    require_tool("qemu-io");
    require_tool("qemu-img");
    let d = TestDisk::random(4 * MIB, 7);
    let (dir, original) = (&d.dir, &d.original);
    let mut procs = Procs::new();
    let s = d.serve(&mut procs, &[]);

    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 0 64k",
        "-c",
        "write -z 64k 64k",
        "-c",
        "discard 128k 64k",
        "-c",
        "write -P 0xcd -f 1m 4k",
        "-c",
        "flush",
        "-c",
        "read -P 0xab 0 64k",
        "-c",
        "read -P 0 64k 128k",
        "-c",
        "read -P 0xcd 1m 4k",
        &s.uri(),
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("fail"),
        "qemu-io reported a failure:\n{text}"
    );

    // The model: the original with the same changes applied.
    let mut model = std::fs::read(original).unwrap();
    model[..64 << 10].fill(0xab);
    model[64 << 10..192 << 10].fill(0);
    model[MIB as usize..MIB as usize + 4096].fill(0xcd);
    let model_path = dir.path().join("model.img");
    std::fs::write(&model_path, &model).unwrap();

    // qemu-img compare over NBD: 0 = identical, 1 = different.
    let same = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&model_path)
        .arg(s.uri())
        .status()
        .unwrap();
    assert_eq!(
        same.code(),
        Some(0),
        "qemu-img compare: served disk != model"
    );
    let differs = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(original)
        .arg(s.uri())
        .status()
        .unwrap();
    assert_eq!(
        differs.code(),
        Some(1),
        "qemu-img compare must see the change"
    );
    stop(&mut procs, &s);
    assert_eq!(hash_file(&d.image), hash_file(&model_path));
    d.assert_replay_reproduces();
}

#[test]
fn fio_nbd_engine_verifies_crc32c() {
    require_tool("fio");
    let d = TestDisk::sparse(32 * MIB);
    let mut procs = Procs::new();
    let s = d.serve(&mut procs, &["--segment-mib", "2"]);
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", s.uri()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=32M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fio verify failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // fio's nbd engine may print notes before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text.find('{').expect("fio printed no JSON")..];
    let v: serde_json::Value = serde_json::from_str(json).expect("fio json");
    let job = &v["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(
        job["write"]["io_bytes"],
        32 * MIB,
        "fio wrote everything: {job}"
    );
    assert!(
        job["read"]["io_bytes"].as_u64() >= Some(32 * MIB),
        "fio verified everything: {job}"
    );
    stop(&mut procs, &s);
    d.assert_replay_reproduces();
}

#[test]
fn read_only_export_refuses_writes() {
    require_tool("qemu-io");
    let dir = tempdir();
    let image = dir.path().join("vm.img");
    random_file(&image, MIB as usize, 3);
    let before = hash_file(&image);
    let mut procs = Procs::new();
    let s = serve(
        &mut procs,
        dir.path(),
        &image,
        &dir.path().join("j"),
        &["--read-only"],
    );
    let out = run_ok(Command::new("nbdinfo").args(["--json", &s.uri()]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k", &s.uri()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("read-only")
            || text.contains("Operation not permitted")
            || text.contains("Permission denied"),
        "qemu-io should refuse to write a read-only export:\n{text}"
    );
    stop(&mut procs, &s);
    assert_eq!(
        hash_file(&image),
        before,
        "a read-only export changed the image"
    );
}

#[test]
fn bad_config_gets_clear_errors() {
    let dir = tempdir();
    let err = serve_error(
        &dir.path().join("nope.img"),
        &dir.path().join("j"),
        &dir.path().join("s"),
    );
    assert!(
        err.contains("nope.img") && err.contains("No such file"),
        "{err}"
    );

    let d = TestDisk::sparse(MIB);
    let mut procs = Procs::new();
    let s = d.serve(&mut procs, &[]);
    // A second server on the same journal while the first runs.
    let err = serve_error(&d.image, &d.journal, &d.dir.path().join("s2"));
    assert!(err.contains("journal"), "{err}");
    stop(&mut procs, &s);

    // A journal directory that belongs to an image of another size.
    sparse_image(&d.image, 2 * MIB);
    let err = serve_error(&d.image, &d.journal, &d.dir.path().join("s2"));
    assert!(err.contains("fresh --journal directory"), "{err}");
}

#[test]
fn loopback_tcp_listener_serves_nbdcopy() {
    require_tool("nbdcopy");
    let d = TestDisk::sparse(4 * MIB);
    let src = d.dir.path().join("src.img");
    random_file(&src, (4 * MIB) as usize, 99);
    let port = lifeboat_testkit::free_loopback_port();
    let mut procs = Procs::new();
    let mut cmd = serve_command(&d.image, &d.journal);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::null());
    let idx = procs.spawn(cmd);
    lifeboat_testkit::wait_for_port(port, std::time::Duration::from_secs(30));
    let uri = format!("nbd://127.0.0.1:{port}/disk0");
    run_ok(Command::new("nbdcopy").arg(&src).arg(&uri));
    let out = d.dir.path().join("out.img");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&out));
    assert_eq!(hash_file(&out), hash_file(&src));
    procs.signal(idx, libc::SIGTERM);
    let status = procs.wait_exit(idx, std::time::Duration::from_secs(30), "disk server");
    assert!(status.success());
    assert_eq!(hash_file(&d.image), hash_file(&src));
    d.assert_replay_reproduces();
}

#[test]
fn sigusr1_appends_a_crash_consistent_checkpoint_after_the_writes() {
    require_tool("qemu-io");
    let d = TestDisk::sparse(MIB);
    let mut procs = Procs::new();
    let s = d.serve(&mut procs, &[]);
    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x11 0 8k", &s.uri()]));
    let list = || {
        let out = run_ok(
            Command::new(common::LIFEBOAT)
                .args(["journal", "list", "--journal"])
                .arg(&d.journal),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !list().contains("checkpoint"),
        "no checkpoint before SIGUSR1"
    );
    procs.signal(s.idx, libc::SIGUSR1);
    lifeboat_testkit::wait_until(
        std::time::Duration::from_secs(30),
        "a checkpoint record",
        || list().contains("checkpoint"),
    );
    stop(&mut procs, &s);
    let text = list();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one write, then the checkpoint:\n{text}");
    assert!(lines[0].starts_with("1\tWrite\tdisk 0\t0+8192"), "{text}");
    assert_eq!(lines[1], "2\tcheckpoint\tcrash-consistent", "{text}");
}

#[test]
fn interval_checkpoints_are_appended_every_point_secs() {
    let d = TestDisk::sparse(MIB);
    let mut procs = Procs::new();
    let s = d.serve(&mut procs, &["--point-secs", "1"]);
    let checkpoints = || {
        let out = run_ok(
            Command::new(common::LIFEBOAT)
                .args(["journal", "list", "--journal"])
                .arg(&d.journal),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with("\tcheckpoint\tcrash-consistent"))
            .count()
    };
    lifeboat_testkit::wait_until(
        std::time::Duration::from_secs(30),
        "two interval checkpoints",
        || checkpoints() >= 2,
    );
    stop(&mut procs, &s);
}

/// SIGTERM sent the moment the socket exists is a clean stop (exit 0), never the default action:
/// the signal handlers are installed before the server listens.
#[test]
fn sigterm_right_after_start_is_a_clean_stop() {
    let d = TestDisk::sparse(MIB);
    let mut procs = Procs::new();
    for _ in 0..10 {
        let s = d.serve(&mut procs, &[]);
        stop(&mut procs, &s);
    }
}
