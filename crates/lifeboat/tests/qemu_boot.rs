//! A real VM boots from `lifeboat disk serve` and its writes survive journal replay.
//!
//! The guest is the project's own 512-byte boot sector (`guest/bootsector.S`, assembled at run
//! time by `guest/build.sh` into the test's temporary directory). SeaBIOS loads it from sector 0
//! of an IDE disk that QEMU reaches over NBD (`-blockdev driver=nbd`) on the disk server's unix
//! socket. The guest increments a counter in sector 1 and fills sectors 2..=65 with the byte
//! `(counter + k) & 0xff`, using BIOS int 13h, then exits QEMU through `isa-debug-exit`.
//!
//! The test boots it twice (counter 1, then 2), checks the bytes the server returns after each
//! boot, stops the server with SIGTERM, and then checks the journal: replaying it onto a copy of
//! the original image gives exactly the served image, and replaying only the first boot's
//! records gives exactly the disk as it was after the first boot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lifeboat_testkit::{
    hash_file, kvm_usable, random_bytes, require_tool, run_ok, tempdir, wait_for_socket,
    wait_until, Procs,
};

const SECTOR: usize = 512;
const IMAGE_SIZE: usize = 4 << 20;
/// Sectors the guest fills with its pattern: 2 ..= 65 (`NSECT` in bootsector.S).
const PATTERN_FIRST: usize = 2;
const PATTERN_SECTORS: usize = 64;
/// Under TCG the boot is slower; with KVM it takes well under a second.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn lifeboat() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lifeboat"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Assembles the guest's boot sector into `dir` with guest/build.sh; returns its 512 bytes.
fn build_guest(dir: &Path) -> Vec<u8> {
    require_tool("as");
    require_tool("ld");
    let script = repo_root().join("guest/build.sh");
    run_ok(Command::new("bash").arg(&script).arg(dir));
    let bin = std::fs::read(dir.join("bootsector.bin")).expect("read bootsector.bin");
    assert_eq!(bin.len(), SECTOR, "boot sector size");
    assert_eq!(&bin[510..], &[0x55, 0xaa], "boot signature");
    bin
}

/// The original disk: random bytes everywhere (so untouched and overwritten areas are both
/// checked), the boot sector in sector 0, and a zero counter in sector 1's first 4 bytes.
fn original_image(boot: &[u8]) -> Vec<u8> {
    let mut img = random_bytes(IMAGE_SIZE, 0x6c69_6665_626f_6174);
    img[..SECTOR].copy_from_slice(boot);
    img[SECTOR..SECTOR + 4].fill(0);
    img
}

/// What the disk must hold after the guest ran `boots` times on `original`.
fn expected_after(original: &[u8], boots: u32) -> Vec<u8> {
    let mut img = original.to_vec();
    if boots == 0 {
        return img;
    }
    img[SECTOR..SECTOR + 4].copy_from_slice(&boots.to_le_bytes());
    for k in PATTERN_FIRST..PATTERN_FIRST + PATTERN_SECTORS {
        let byte = (boots as usize + k) as u8;
        img[k * SECTOR..(k + 1) * SECTOR].fill(byte);
    }
    img
}

/// Compares two disk images; on a difference, panics naming the first differing sector.
fn assert_disk_eq(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .expect("some byte differs");
        let s = first / SECTOR;
        panic!(
            "{what}: first difference at byte {first} (sector {s}): got {:02x?}..., want {:02x?}...",
            &got[first..(first + 16).min(got.len())],
            &want[first..(first + 16).min(want.len())],
        );
    }
}

/// Reads the whole export over NBD (the server's view, whatever it has applied to the file yet).
fn read_export(socket: &Path, export: &str) -> Vec<u8> {
    let uri = format!("nbd+unix:///{export}?socket={}", socket.display());
    let out = run_ok(
        Command::new(require_tool("nbdcopy"))
            .arg(&uri)
            .arg("-")
            .stdin(Stdio::null()),
    );
    out.stdout
}

/// Boots the guest once from the export and waits for it to finish; returns the serial log.
fn boot(procs: &mut Procs, dir: &Path, socket: &Path, export: Option<&str>, n: u32) -> String {
    let serial = dir.join(format!("serial-{n}.log"));
    let stderr = dir.join(format!("qemu-{n}.stderr"));
    // LIFEBOAT_TEST_ACCEL=tcg forces TCG on a machine with KVM (to test the fallback).
    let accel = match std::env::var("LIFEBOAT_TEST_ACCEL") {
        Ok(a) if !a.is_empty() => a,
        _ if kvm_usable() => "kvm".to_owned(),
        _ => "tcg".to_owned(),
    };
    let mut blockdev = format!(
        "driver=nbd,node-name=d0,server.type=unix,server.path={},cache.direct=off",
        socket.display()
    );
    if let Some(e) = export {
        blockdev.push_str(&format!(",export={e}"));
    }
    let mut qemu = Command::new(require_tool("qemu-system-x86_64"));
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "pc", "-accel", &accel, "-m", "64"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(["-blockdev", &blockdev])
        .args(["-device", "ide-hd,drive=d0,bootindex=0"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("create qemu stderr file"));
    let q = procs.spawn(qemu);

    let read_serial = || std::fs::read_to_string(&serial).unwrap_or_default();
    let mut early_exit = None;
    wait_until(
        BOOT_TIMEOUT,
        &format!("boot {n}: the guest's \"done\" on serial"),
        || {
            let log = read_serial();
            if log.contains("LIFEBOAT-GUEST done") || log.contains("LIFEBOAT-GUEST error") {
                return true;
            }
            if let Ok(Some(st)) = procs.child(q).try_wait() {
                early_exit = Some(st);
                return true;
            }
            false
        },
    );
    let status = match early_exit {
        Some(st) => st,
        None => procs.wait_exit(q, Duration::from_secs(30), "QEMU after the guest finished"),
    };
    let log = read_serial();
    let qemu_err = std::fs::read_to_string(&stderr).unwrap_or_default();
    // isa-debug-exit: the guest writes 0 to port 0xf4 on success, QEMU exits with (0 << 1) | 1.
    assert!(
        log.contains("LIFEBOAT-GUEST done") && status.code() == Some(1),
        "boot {n} ({accel}) failed: QEMU {status}\nserial:\n{log}\nQEMU stderr:\n{qemu_err}"
    );
    assert!(
        log.contains("LIFEBOAT-GUEST boot\r\n"),
        "boot {n}: no banner on serial:\n{log}"
    );
    let want = format!("LIFEBOAT-GUEST done counter={n:08x}\r\n");
    assert!(
        log.contains(&want),
        "boot {n}: expected {want:?} on serial, got:\n{log}"
    );
    log
}

/// The sequence number of the first journaled write that touches `byte` (from `journal list`).
fn first_write_touching(list: &str, byte: u64) -> Option<u64> {
    list.lines().find_map(|line| {
        let fields: Vec<&str> = line.split('\t').collect();
        let seq = fields.first()?.trim().parse::<u64>().ok()?;
        let (off, len) = fields.last()?.trim().split_once('+')?;
        let (off, len) = (off.parse::<u64>().ok()?, len.parse::<u64>().ok()?);
        (off <= byte && byte < off + len).then_some(seq)
    })
}

#[test]
fn guest_boots_from_the_disk_server_and_journal_replays_to_the_same_bytes() {
    require_tool("qemu-system-x86_64");
    let tmp = tempdir();
    let dir = tmp.path();
    let boot_sector = build_guest(dir);

    let original = original_image(&boot_sector);
    let image = dir.join("vm.raw");
    let original_copy = dir.join("original.raw");
    std::fs::write(&image, &original).unwrap();
    std::fs::write(&original_copy, &original).unwrap();
    let journal = dir.join("journal");
    let socket = dir.join("nbd.sock");
    let server_log = dir.join("server.log");

    let mut procs = Procs::new();
    let mut serve = lifeboat();
    serve
        .args(["disk", "serve", "--vm", "qemu-boot"])
        .arg("--image")
        .arg(&image)
        .arg("--journal")
        .arg(&journal)
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&server_log).expect("create server log"));
    let server = procs.spawn(serve);
    wait_for_socket(&socket, Duration::from_secs(30));

    // Boot 1, by export name.
    boot(&mut procs, dir, &socket, Some("disk0"), 1);
    let after1 = read_export(&socket, "disk0");
    assert_disk_eq(
        "export after boot 1",
        &after1,
        &expected_after(&original, 1),
    );

    // Boot 2, through the empty export name (QEMU's default when `export=` is absent).
    boot(&mut procs, dir, &socket, None, 2);
    let after2 = read_export(&socket, "disk0");
    let want2 = expected_after(&original, 2);
    assert_disk_eq("export after boot 2", &after2, &want2);

    // Clean stop: SIGTERM, exit 0, the image file holds every acknowledged write.
    procs.signal(server, libc::SIGTERM);
    let st = procs.wait_exit(
        server,
        Duration::from_secs(30),
        "lifeboat disk serve after SIGTERM",
    );
    assert!(
        st.success(),
        "lifeboat disk serve exited with {st} after SIGTERM; its log:\n{}",
        std::fs::read_to_string(&server_log).unwrap_or_default()
    );
    let served = std::fs::read(&image).unwrap();
    assert_disk_eq("image file after the server stopped", &served, &want2);

    // The whole journal replayed onto the original gives the served image, byte for byte.
    let replayed = dir.join("replayed.raw");
    std::fs::copy(&original_copy, &replayed).unwrap();
    run_ok(
        lifeboat()
            .args(["journal", "replay", "--disk", "0"])
            .arg("--journal")
            .arg(&journal)
            .arg("--image")
            .arg(&replayed),
    );
    assert_eq!(
        hash_file(&replayed),
        hash_file(&image),
        "BLAKE3 of the replayed copy differs from the served image"
    );
    assert_disk_eq("replayed copy", &std::fs::read(&replayed).unwrap(), &want2);

    // A journal prefix is a consistent past state: the records up to boot 1's counter write
    // (the first write touching sector 1) give exactly the disk as it was after boot 1.
    let list = run_ok(
        lifeboat()
            .args(["journal", "list"])
            .arg("--journal")
            .arg(&journal),
    );
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let upto = first_write_touching(&list, SECTOR as u64).unwrap_or_else(|| {
        panic!("no journaled write touches sector 1 in `lifeboat journal list`:\n{list}")
    });
    let prefix = dir.join("prefix.raw");
    std::fs::copy(&original_copy, &prefix).unwrap();
    run_ok(
        lifeboat()
            .args(["journal", "replay", "--upto", &upto.to_string()])
            .arg("--journal")
            .arg(&journal)
            .arg("--image")
            .arg(&prefix),
    );
    assert_disk_eq(
        &format!("original + journal up to seq {upto}"),
        &std::fs::read(&prefix).unwrap(),
        &after1,
    );
}
