//! Real NBD clients against a `RecoveryDisk` served by `lifeboat_nbd::Server` on a unix socket:
//! `nbdcopy` reads the export before any hydration (the point's exact bytes, served from the
//! store), `qemu-io` writes, zeroes and discards while hydration runs, hydration completes,
//! and the target image, and the export read again, equal the model. Once on a stored point,
//! once on a journal-backed point (processed from shipped segments).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lifeboat_nbd::{Export, Server, ServerConfig};
use lifeboat_recover::{HydrateConfig, RecoveryDisk};
use lifeboat_store::PointRecord;
use lifeboat_testkit::{hash_file, require_tool, run_ok, wait_for_socket};
use tokio::sync::watch;

const SIZE: usize = 4 << 20;

struct Served {
    socket: PathBuf,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(dir: &Path, disk: Arc<RecoveryDisk>) -> Served {
        let socket = dir.join("nbd.sock");
        let server = Server::with_exports(
            ServerConfig::default(),
            vec![Export::new("disk", "recovery", disk)],
        )
        .unwrap();
        let (stop, rx) = watch::channel(false);
        let rt = rt();
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let thread = std::thread::spawn(move || {
            rt.block_on(server.serve_unix(listener, rx));
        });
        wait_for_socket(&socket, Duration::from_secs(10));
        Served {
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///disk?socket={}", self.socket.display())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn nbdcopy_out(s: &Served, out: &Path) {
    let _ = std::fs::remove_file(out);
    run_ok(Command::new("nbdcopy").arg(s.uri()).arg(out));
}

fn check_clients(
    dir: &Path,
    store: &lifeboat_store::Store,
    point: &PointRecord,
    point_model: &[u8],
) {
    require_tool("nbdcopy");
    require_tool("qemu-io");
    let rt = rt();
    let journal = recovery_journal(dir);
    let disk = Arc::new(open_ready(&rt, store, point, dir, journal));
    let s = Served::start(dir, disk.clone());

    // Before any hydration: every byte comes from the store (nothing is local yet).
    let out = dir.join("out.img");
    nbdcopy_out(&s, &out);
    assert_eq!(
        hash_file(&out),
        hash(point_model),
        "nbdcopy of the served point"
    );
    assert_eq!(disk.progress().chunks_local, 0, "reads must not hydrate");

    // Guest-like writes while hydration runs (throttled so that both overlap).
    let hyd = disk
        .spawn_hydration(HydrateConfig {
            max_bytes_per_sec: Some(8 << 20),
            ..HydrateConfig::default()
        })
        .unwrap();
    let out_io = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0xab 100k 300k",
        "-c",
        "write -z 1m 200k",
        "-c",
        "discard 2m 128k",
        "-c",
        "write -P 0x5c -f 4000k 96k",
        "-c",
        "write -P 0x33 3m 64k",
        "-c",
        "flush",
        "-c",
        "read -P 0xab 100k 300k",
        &s.uri(),
    ]));
    let text = String::from_utf8_lossy(&out_io.stdout);
    assert!(
        !text.contains("fail"),
        "qemu-io reported a failure:\n{text}"
    );
    let mut model = point_model.to_vec();
    model[100 << 10..400 << 10].fill(0xab);
    model[1 << 20..(1 << 20) + (200 << 10)].fill(0);
    model[2 << 20..(2 << 20) + (128 << 10)].fill(0);
    model[4000 << 10..4096 << 10].fill(0x5c);
    model[3 << 20..(3 << 20) + (64 << 10)].fill(0x33);

    let p = hyd.join().unwrap();
    assert!(p.is_hydrated() && disk.is_hydrated(), "{p:?}");
    nbdcopy_out(&s, &out);
    assert_eq!(hash_file(&out), hash(&model), "nbdcopy after hydration");
    drop(s);
    disk.checkpoint().unwrap();
    assert_eq!(
        hash_file(&target(dir)),
        hash(&model),
        "target image after hydration"
    );
    assert_eq!(
        hash(&replay_model(point_model, &dir.join("journal"))),
        hash(&model),
        "the journal holds exactly the guest's writes"
    );
}

#[test]
fn stored_point_through_nbdcopy_and_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 5);
    let point = rt.block_on(seed(&store, dir.path(), &content));
    assert!(!point.is_journal_backed());
    check_clients(dir.path(), &store, &point, &content);
}

#[test]
fn journal_backed_point_through_nbdcopy_and_qemu_io() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = small_store(dir.path());
    let content = mixed_image(SIZE, 6);
    let ops: Vec<(u64, Vec<u8>)> = (0..24u64)
        .map(|k| {
            let len = 1 + (k * 40_503) % 150_000;
            let off = (k * 977_131) % (SIZE as u64 - len);
            (off, lifeboat_testkit::random_bytes(len as usize, 1000 + k))
        })
        .collect();
    let (point, model) = rt.block_on(journal_backed(&store, dir.path(), &content, &ops));
    assert_ne!(hash(&model), hash(&content));
    check_clients(dir.path(), &store, &point, &model);
}
