//! Initial replication into a local-directory store streams incompressible chunks straight
//! into the store (`lifeboat_store::ChunkStager`); any other store, and any chunk that would
//! compress or is partly zero, goes through memory (`PreparedChunk`). Both paths must give the
//! same point: the same chunk ids, and every disk restored byte for byte. Seeding again into
//! the same store finds every chunk; chunks older than the writer are written again (for their
//! age, which protects them from GC), and no staging file is left behind.

use std::path::Path;
use std::time::{Duration, SystemTime};

use lifeboat_process::Processor;
use lifeboat_store::{Entry, PointRecord, Store, StoreConfig};
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

const CHUNK: u32 = 1 << 20;

fn config() -> StoreConfig {
    StoreConfig {
        chunk_size: CHUNK,
        ..StoreConfig::default()
    }
}

/// An image of 10 chunks plus a partial one: random, zero, text (compressible), random with a
/// zero half, a hole (sparse), random, random..., then 300 KiB of random (a short last chunk).
fn image(path: &Path) -> Vec<u8> {
    let mut seed = 0u64;
    let mut random = |n: usize| {
        seed += 1;
        lifeboat_testkit::random_bytes(n, seed)
    };
    let c = CHUNK as usize;
    let mut img = Vec::new();
    img.extend(random(c));
    img.extend(vec![0u8; c]);
    img.extend(
        b"the quick brown fox jumps over the lazy dog\n"
            .iter()
            .cycle()
            .take(c),
    );
    img.extend(random(c / 2));
    img.extend(vec![0u8; c / 2]);
    let hole_at = img.len();
    img.extend(vec![0u8; c]);
    for _ in 0..5 {
        img.extend(random(c));
    }
    img.extend(random(300 << 10));
    std::fs::write(path, &img).unwrap();
    // Punch the hole (the seed skips it without reading).
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: fallocate on an open file descriptor.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            hole_at as libc::off_t,
            c as libc::off_t,
        )
    };
    assert_eq!(r, 0, "punch hole");
    img
}

async fn entries(store: &Store, point: &PointRecord) -> Vec<Entry> {
    let r = store.disk_reader(point, DiskId(0)).await.unwrap();
    let mut out = Vec::new();
    for i in 0..r.chunk_count() {
        out.push(r.entry(i).await.unwrap());
    }
    out
}

async fn restored(store: &Store, point: &PointRecord) -> Vec<u8> {
    let r = store.disk_reader(point, DiskId(0)).await.unwrap();
    let mut out = Vec::new();
    for i in 0..r.chunk_count() {
        out.extend_from_slice(&r.read_chunk(i).await.unwrap());
    }
    out.truncate(r.size() as usize);
    out
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_and_in_memory_seeds_give_the_same_point() {
    let dir = tempfile::tempdir().unwrap();
    let img_path = dir.path().join("d.img");
    let img = image(&img_path);
    let vm = VmId::new("staged").unwrap();
    let seed = |store: Store, seq: u64| {
        let (vm, img_path) = (vm.clone(), img_path.clone());
        async move {
            Processor::new(store, vm)
                .seed(
                    &[(DiskId(0), &img_path)],
                    Seq(seq),
                    Epoch(1),
                    SystemTime::now(),
                )
                .await
                .unwrap()
        }
    };

    let root = dir.path().join("store");
    let local = Store::open_with(root.to_str().unwrap(), config()).unwrap();
    let memory = Store::open_with("memory://", config()).unwrap();
    let p_local = seed(local.clone(), 0).await;
    let p_memory = seed(memory.clone(), 0).await;
    let e_local = entries(&local, &p_local).await;
    assert_eq!(e_local, entries(&memory, &p_memory).await);
    assert_eq!(
        e_local.iter().filter(|e| **e == Entry::Zero).count(),
        2,
        "the zero chunk and the hole: {e_local:?}"
    );
    assert_eq!(restored(&local, &p_local).await, img);
    assert_eq!(restored(&memory, &p_memory).await, img);
    assert!(local.verify().await.unwrap().is_ok());

    // Again into the same store: every chunk found; then with every chunk made older than the
    // writer: each is written again (fresh), and still verifies.
    let again = seed(local.clone(), 1).await;
    assert_eq!(entries(&local, &again).await, e_local);
    let mut files = Vec::new();
    files_under(&root.join("chunks"), &mut files);
    let old = SystemTime::now() - Duration::from_secs(3 * 3600);
    for f in &files {
        let h = std::fs::File::options().write(true).open(f).unwrap();
        h.set_modified(old).unwrap();
    }
    let third = seed(local.clone(), 2).await;
    assert_eq!(entries(&local, &third).await, e_local);
    let mut after = Vec::new();
    files_under(&root.join("chunks"), &mut after);
    for f in &after {
        let m = std::fs::metadata(f).unwrap().modified().unwrap();
        assert!(
            m > old + Duration::from_secs(3600),
            "{} kept its old age",
            f.display()
        );
        assert!(
            !f.to_string_lossy().contains('#'),
            "staging file left: {}",
            f.display()
        );
    }
    assert_eq!(after.len(), files.len());
    assert_eq!(restored(&local, &third).await, img);
    assert!(local.verify().await.unwrap().is_ok());
}

/// The stager streams data chunks that do not compress, and only them; an image that shrinks
/// under the copy is an error, not a short chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stager_streams_only_incompressible_data_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path().join("store").to_str().unwrap(), config()).unwrap();
    let w = store
        .point_writer(&VmId::new("short").unwrap(), None)
        .await
        .unwrap();
    let stager = w.stager().expect("a local directory has a stager");
    let img_path = dir.path().join("d.img");
    image(&img_path);
    let img = std::fs::File::open(&img_path).unwrap();
    let c = CHUNK as usize;
    let at = |i: u64| i * u64::from(CHUNK);
    let random = stager
        .stage(&img, at(0), c)
        .unwrap()
        .expect("random: streamed");
    assert!(!random.is_zero() && random.len() == c);
    let zero = stager.stage(&img, at(1), c).unwrap().expect("zero: known");
    assert!(zero.is_zero());
    assert!(
        stager.stage(&img, at(2), c).unwrap().is_none(),
        "text compresses"
    );
    assert!(stager.stage(&img, at(3), c).unwrap().is_none(), "half zero");
    let last = stager
        .stage(&img, at(10), 300 << 10)
        .unwrap()
        .expect("short last chunk");
    assert_eq!(last.len(), 300 << 10);
    let f = dir.path().join("short.img");
    std::fs::write(&f, vec![7u8; 1000]).unwrap();
    let file = std::fs::File::open(&f).unwrap();
    let e = stager.stage(&file, 0, CHUNK as usize).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    let mut files = Vec::new();
    files_under(&dir.path().join("store"), &mut files);
    assert!(
        !files.iter().any(|f| f.to_string_lossy().contains('#')),
        "{files:?}"
    );
    // An in-memory store has none.
    let m = Store::open_with("memory://", config()).unwrap();
    let w = m
        .point_writer(&VmId::new("short").unwrap(), None)
        .await
        .unwrap();
    assert!(w.stager().is_none());
}
