//! The server against real NBD clients: nbdinfo, nbdcopy (libnbd), qemu-io and qemu-img.
//! A missing tool fails the test with the package to install (`scripts/install-deps`).

mod common;

use std::process::Command;
use std::sync::Arc;

use common::*;
use lifeboat_nbd::{BlockDevice, Export, MemDevice, ServerConfig};

const MIB: usize = 1 << 20;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift), with some zero runs to make holes matter.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    for block in out.chunks_mut(64 << 10).skip(1).step_by(3) {
        block.fill(0);
    }
    out
}

/// The value of `"key": value` in nbdinfo's JSON (enough for flat scalar fields).
fn json_field<'a>(json: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    json[start..]
        .trim_start()
        .split([',', '\n', '}'])
        .next()
        .unwrap()
        .trim()
}

#[test]
fn nbdinfo_reports_size_read_only_and_multi_conn() {
    let Some(nbdinfo) = path_of("nbdinfo") else {
        return;
    };
    let rw = Arc::new(MemDevice::new(3 * MIB));
    let ro = Arc::new(
        MemDevice::new(MIB)
            .with_read_only(true)
            .with_multi_conn(false),
    );
    let srv = TestServer::start(
        vec![Export::new("rw", "writable", rw), Export::new("ro", "", ro)],
        ServerConfig::default(),
    );
    let json = run(Command::new(&nbdinfo).arg("--json").arg(srv.uri("rw")));
    assert_eq!(json_field(&json, "export-size"), (3 * MIB).to_string());
    assert_eq!(json_field(&json, "is_read_only"), "false");
    assert_eq!(json_field(&json, "can_multi_conn"), "true");
    assert_eq!(json_field(&json, "can_flush"), "true");
    assert_eq!(json_field(&json, "can_fua"), "true");
    assert_eq!(json_field(&json, "can_zero"), "true");
    assert_eq!(json_field(&json, "can_fast_zero"), "true");
    assert_eq!(json_field(&json, "can_trim"), "true");
    assert_eq!(json_field(&json, "block_size_preferred"), "4096");
    assert_eq!(json_field(&json, "description"), "\"writable\"");
    let json = run(Command::new(&nbdinfo).arg("--json").arg(srv.uri("ro")));
    assert_eq!(json_field(&json, "export-size"), MIB.to_string());
    assert_eq!(json_field(&json, "is_read_only"), "true");
    assert_eq!(json_field(&json, "can_multi_conn"), "false");
    // --list goes through NBD_OPT_LIST and INFO for each export.
    let list = run(Command::new(&nbdinfo)
        .arg("--list")
        .arg("--json")
        .arg(srv.uri("")));
    assert!(list.contains("\"export-name\": \"rw\""), "{list}");
    assert!(list.contains("\"export-name\": \"ro\""), "{list}");
}

#[test]
fn nbdinfo_map_matches_the_allocation() {
    let Some(nbdinfo) = path_of("nbdinfo") else {
        return;
    };
    let dev = Arc::new(MemDevice::new(MIB));
    dev.write_at(64 << 10, &[1u8; 128 << 10], false).unwrap();
    dev.write_at(512 << 10, &[2u8; 4096], false).unwrap();
    let srv = TestServer::start(
        vec![Export::new("", "", dev.clone())],
        ServerConfig::default(),
    );
    let map = run(Command::new(&nbdinfo).arg("--map").arg(srv.uri("")));
    let got: Vec<(u64, u64, u32)> = map
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
    let want = vec![
        (0, 64 << 10, 3),
        (64 << 10, 128 << 10, 0),
        (192 << 10, 320 << 10, 3),
        (512 << 10, 4096, 0),
        ((512 << 10) + 4096, (512 << 10) - 4096, 3),
    ];
    assert_eq!(got, want, "nbdinfo --map said:\n{map}");
    // And what the device says directly.
    let ext = dev.block_status(0, MIB as u64).unwrap();
    assert_eq!(ext.len(), want.len());
}

#[test]
fn nbdcopy_in_and_out_preserves_every_byte() {
    let Some(nbdcopy) = path_of("nbdcopy") else {
        return;
    };
    let size = 8 * MIB;
    let data = pattern(size, 0x5eed);
    let dev = Arc::new(MemDevice::new(size));
    let srv = TestServer::start(
        vec![Export::new("disk", "", dev.clone())],
        ServerConfig::default(),
    );
    let input = srv.dir.path().join("in.img");
    let output = srv.dir.path().join("out.img");
    std::fs::write(&input, &data).unwrap();
    run(Command::new(&nbdcopy).arg(&input).arg(srv.uri("disk")));
    assert_eq!(blake3::hash(&dev.snapshot()), blake3::hash(&data));
    run(Command::new(&nbdcopy).arg(srv.uri("disk")).arg(&output));
    let copied = std::fs::read(&output).unwrap();
    assert_eq!(copied.len(), size);
    assert_eq!(blake3::hash(&copied), blake3::hash(&data));
    // Several connections (nbdcopy uses multi-conn when offered) and the zero-detecting
    // path: copying an all-zero image over it must zero the device.
    let zeros = srv.dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; size]).unwrap();
    run(Command::new(&nbdcopy)
        .arg("--connections=4")
        .arg(&zeros)
        .arg(srv.uri("disk")));
    assert!(dev.snapshot().iter().all(|&b| b == 0));
}

#[test]
fn qemu_io_write_read_zero_discard() {
    let Some(qemu_io) = path_of("qemu-io") else {
        return;
    };
    let (srv, dev) = TestServer::mem(MIB);
    dev.write_at(0, &[0x11u8; 256 << 10], false).unwrap();
    let out = run(Command::new(&qemu_io)
        .args(["-f", "raw"])
        .args(["-c", "write -P 0xab 0 64k"])
        .args(["-c", "read -P 0xab 0 64k"])
        .args(["-c", "write -z 64k 64k"])
        .args(["-c", "read -P 0 64k 64k"])
        .args(["-c", "discard 128k 64k"])
        .args(["-c", "write -P 0xcd -f 192k 4k"])
        .args(["-c", "read -P 0x11 196k 60k"])
        .args(["-c", "flush"])
        .arg(srv.uri("disk")));
    assert!(!out.contains("verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let snap = dev.snapshot();
    assert!(snap[..64 << 10].iter().all(|&b| b == 0xab));
    assert!(snap[64 << 10..128 << 10].iter().all(|&b| b == 0));
    // Discarded blocks read back as zeroes on MemDevice and are holes again.
    assert!(snap[128 << 10..192 << 10].iter().all(|&b| b == 0));
    assert!(!dev.is_allocated(40));
    assert!(snap[192 << 10..196 << 10].iter().all(|&b| b == 0xcd));
    assert!(snap[196 << 10..256 << 10].iter().all(|&b| b == 0x11));
    assert!(snap[256 << 10..].iter().all(|&b| b == 0));
    assert!(
        dev.flush_count() >= 2,
        "FUA write and flush reached the device"
    );
    // A pattern mismatch must be visible to this test.
    let out = Command::new(&qemu_io)
        .args(["-f", "raw", "-c", "read -P 0x99 0 4k"])
        .arg(srv.uri("disk"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verification failed"), "{text}");
}

#[test]
fn qemu_img_compare_and_convert() {
    let Some(qemu_img) = path_of("qemu-img") else {
        return;
    };
    let size = 4 * MIB;
    let data = pattern(size, 42);
    let dev = Arc::new(MemDevice::from_bytes(data.clone()));
    let srv = TestServer::start(
        vec![Export::new("disk", "", dev.clone())],
        ServerConfig::default(),
    );
    let file = srv.dir.path().join("same.img");
    std::fs::write(&file, &data).unwrap();
    let same = Command::new(&qemu_img)
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&file)
        .arg(srv.uri("disk"))
        .output()
        .unwrap();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
    dev.write_at(3 * MIB as u64 + 7, b"!", false).unwrap();
    let differ = Command::new(&qemu_img)
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&file)
        .arg(srv.uri("disk"))
        .output()
        .unwrap();
    assert_eq!(
        differ.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&differ.stdout)
    );
    assert!(String::from_utf8_lossy(&differ.stdout).contains(&(3 * MIB).to_string()));
    // convert out of the export (block status + reads) gives the same bytes.
    let out = srv.dir.path().join("out.img");
    run(Command::new(&qemu_img)
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(srv.uri("disk"))
        .arg(&out));
    assert_eq!(
        blake3::hash(&std::fs::read(&out).unwrap()),
        blake3::hash(&dev.snapshot())
    );
}
