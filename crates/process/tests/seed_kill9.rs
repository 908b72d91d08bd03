//! kill -9 during a seed (`Processor::seed`: chunks read and prepared ahead, stored in batches
//! whose fsyncs run in the background, one barrier before the index pages): round after round,
//! a child process seeding an image into a local store (fsync on) is killed at a random moment.
//! The store must never hold a point that references a missing or bad object, every point
//! there must be the image, and a seed that runs to its end must leave its point.
//!
//! The child is this test binary itself, started again with `SEED_KILL9_CHILD` set.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use lifeboat_process::Processor;
use lifeboat_store::{Store, StoreConfig};
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

const CHUNK: u32 = 64 << 10;
const SIZE: usize = 24 << 20;
const TEST: &str = "kill9_during_a_seed_leaves_no_point_with_a_missing_chunk";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn store(path: &Path) -> Store {
    Store::open_with(
        path.to_str().unwrap(),
        StoreConfig {
            chunk_size: CHUNK,
            page_entries: 16,
            fsync: true,
            ..StoreConfig::default()
        },
    )
    .unwrap()
}

/// The child: seeds the image as the VM's point at 0, then exits.
fn child(spec: &str) {
    let mut it = spec.split('|');
    let (st, img, vm) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        Processor::new(store(Path::new(st)), VmId::new(vm).unwrap())
            .seed(
                &[(DiskId(0), Path::new(img))],
                Seq(0),
                Epoch(1),
                SystemTime::now(),
            )
            .await
            .unwrap();
    });
}

fn spawn_child(st: &Path, img: &Path, vm: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
        .env(
            "SEED_KILL9_CHILD",
            format!("{}|{}|{vm}", st.display(), img.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Every object good, every point whole and equal to its VM's image; returns the VMs with a
/// point.
async fn check(st: &Path, imgs: &BTreeMap<String, PathBuf>) -> Vec<String> {
    let s = store(st);
    let report = s.verify().await.unwrap();
    assert!(
        report.is_ok(),
        "bad objects after kill -9: {:?}",
        report.bad
    );
    let mut with_point = Vec::new();
    for (vm, path) in imgs {
        let img = std::fs::read(path).unwrap();
        for p in s.list_points(&VmId::new(vm).unwrap()).await.unwrap() {
            let reader = s.disk_reader(&p, DiskId(0)).await.unwrap();
            let mut got = vec![0u8; img.len()];
            assert_eq!(reader.read_at(0, &mut got).await.unwrap(), img.len());
            assert!(got == img, "point {} of {vm} is not its image", p.id);
            with_point.push(vm.clone());
        }
    }
    with_point
}

/// An image: random data, repeated chunks, zeroes; where `shared` is given, a quarter of its
/// chunks are `shared`'s.
fn image(rng: &mut Rng, shared: Option<&[u8]>) -> Vec<u8> {
    let c = CHUNK as usize;
    let mut img = vec![0u8; SIZE];
    for i in 0..SIZE / c {
        let at = i * c..(i + 1) * c;
        match (rng.below(6), shared) {
            (0, Some(sh)) => img[at.clone()].copy_from_slice(&sh[at]),
            (1 | 2, _) => {
                for b in img[at].chunks_mut(8) {
                    b.copy_from_slice(&rng.next().to_le_bytes());
                }
            }
            (3, _) if i > 0 => img.copy_within((i - 1) * c..i * c, i * c),
            _ => {}
        }
    }
    img
}

/// Writes `img` as a sparse file: holes where a chunk is zero, except every third such chunk
/// (written zeroes).
fn write_image(dir: &Path, name: &str, img: Vec<u8>) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("{name}.img"));
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(img.len() as u64).unwrap();
    for (i, chunk) in img.chunks(CHUNK as usize).enumerate() {
        if chunk.iter().any(|&b| b != 0) || i % 3 == 0 {
            f.write_all_at(chunk, (i * CHUNK as usize) as u64).unwrap();
        }
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_seed_leaves_no_point_with_a_missing_chunk() {
    if let Ok(spec) = std::env::var("SEED_KILL9_CHILD") {
        tokio::task::block_in_place(|| child(&spec));
        return;
    }
    let seed = lifeboat_testkit::test_seed("KILL9_SEED");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("store");
    let shared = image(&mut rng, None);
    let mut imgs = BTreeMap::new();
    // How long a whole seed takes here.
    let t = Instant::now();
    let first = write_image(dir.path(), "k0", image(&mut rng, Some(&shared)));
    assert!(spawn_child(&st, &first, "k0").wait().unwrap().success());
    let full = t.elapsed();
    imgs.insert("k0".to_string(), first);
    assert_eq!(check(&st, &imgs).await, ["k0"]);
    // Kills at random moments of later seeds (of other VMs, whose images share some chunks
    // with the ones before).
    // The kill comes within `range`, which shrinks after a seed that finished before it and
    // grows after one killed midway, so most kills land in the middle of a seed.
    let rounds = 10;
    let mut range = full;
    let mut committed = 0;
    for r in 1..=rounds {
        let vm = format!("k{r}");
        let path = write_image(dir.path(), &vm, image(&mut rng, Some(&shared)));
        imgs.insert(vm.clone(), path.clone());
        let mut child = spawn_child(&st, &path, &vm);
        std::thread::sleep(range.mul_f64(rng.below(1000) as f64 / 1000.0));
        child.kill().unwrap();
        child.wait().unwrap();
        if check(&st, &imgs).await.contains(&vm) {
            committed += 1;
            range = range.mul_f64(0.6);
        } else {
            range = range.mul_f64(1.2);
        }
    }
    // A seed that runs to its end, over whatever the killed ones left.
    let last = format!("k{}", rounds + 1);
    let path = write_image(dir.path(), &last, image(&mut rng, Some(&shared)));
    imgs.insert(last.clone(), path.clone());
    let t = Instant::now();
    assert!(spawn_child(&st, &path, &last).wait().unwrap().success());
    eprintln!("last seed: {:?}", t.elapsed());
    let with_point = check(&st, &imgs).await;
    assert!(with_point.contains(&last), "{with_point:?}");
    eprintln!("the first seed took {full:?}; {committed} of {rounds} killed seeds had committed");
    // Their lease stays until it expires; a collector defers meanwhile: nothing is lost.
    let s = store(&st);
    s.gc_with_grace(Duration::ZERO).await.unwrap();
    check(&st, &imgs).await;
}
