//! Damaged objects of every kind give errors naming the key; verify names each bad object.

mod common;

use bytes::Bytes;
use common::*;
use lifeboat_store::format::{chunk_key, page_key, root_key};
use lifeboat_store::{Entry, PointRecord, PutMode, Store};
use lifeboat_types::{CheckpointKind, DiskId};

async fn setup() -> (Store, PointRecord, Vec<u8>) {
    let store = memory_store();
    let size = 40 * CHUNK as usize;
    let mut model = vec![0u8; size];
    // Compressible in the first half, random in the second.
    for (i, b) in model[..size / 2].iter_mut().enumerate() {
        *b = (i / 100) as u8;
    }
    Rng(5).fill(&mut model[size / 2..size - 3 * CHUNK as usize]);
    let mut w = store.point_writer(&vm("vm1"), None).await.unwrap();
    w.add_disk(DiskId(0), size as u64).unwrap();
    for i in 0..40u64 {
        let s = (i * CHUNK as u64) as usize;
        w.set_chunk(DiskId(0), i, &model[s..s + CHUNK as usize])
            .await
            .unwrap();
    }
    let p = w
        .commit(meta(1, CheckpointKind::CrashConsistent))
        .await
        .unwrap();
    (store, p, model)
}

async fn damage(store: &Store, key: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = store.backend().get(key).await.unwrap().to_vec();
    f(&mut b);
    store
        .backend()
        .put(key, Bytes::from(b), PutMode::Overwrite)
        .await
        .unwrap();
}

async fn read_all(store: &Store, p: &PointRecord) -> Result<Vec<u8>, lifeboat_store::StoreError> {
    let r = store.disk_reader(p, DiskId(0)).await?;
    let mut out = vec![0u8; r.size() as usize];
    r.read_at(0, &mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn damaged_chunks_are_errors_naming_the_key() {
    for (chunk, how) in [
        (2u64, "flip"),
        (30, "flip"),
        (3, "truncate"),
        (31, "truncate"),
        (4, "header"),
    ] {
        let (store, p, model) = setup().await;
        assert_eq!(read_all(&store, &p).await.unwrap(), model);
        let r = store.disk_reader(&p, DiskId(0)).await.unwrap();
        let Entry::Chunk(id) = r.entry(chunk).await.unwrap() else {
            panic!("zero")
        };
        let key = chunk_key(&id);
        damage(&store, &key, |b| match how {
            "flip" => {
                let n = b.len();
                b[n - 10] ^= 0x20
            }
            "truncate" => b.truncate(b.len() / 2),
            _ => b[14] ^= 1, // plain length
        })
        .await;
        let e = read_all(&store, &p).await.unwrap_err();
        assert!(e.to_string().contains(&key), "{how} chunk {chunk}: {e}");
        assert!(
            matches!(e, lifeboat_store::StoreError::Corrupt { .. }),
            "{e}"
        );
        let rep = store.verify().await.unwrap();
        let bad: Vec<&str> = rep.bad.iter().map(|b| b.key.as_str()).collect();
        assert!(bad.contains(&key.as_str()), "{bad:?}");
        let point_key = lifeboat_store::point_key(&vm("vm1"), &p.id);
        assert!(
            bad.contains(&point_key.as_str()),
            "the point is reported too: {bad:?}"
        );
        assert_eq!(bad.len(), 2, "{:?}", rep.bad);
        // Undamaged chunks still read.
        assert_eq!(
            &r.read_chunk(0).await.unwrap()[..],
            &model[..CHUNK as usize]
        );
        // GC refuses nothing here (the chunk is referenced) and deletes nothing.
        assert!(store
            .gc_with_grace(std::time::Duration::ZERO)
            .await
            .unwrap()
            .deleted
            .is_empty());
    }
}

#[tokio::test]
async fn a_missing_chunk_makes_a_bad_point() {
    let (store, p, _) = setup().await;
    let r = store.disk_reader(&p, DiskId(0)).await.unwrap();
    let Entry::Chunk(id) = r.entry(7).await.unwrap() else {
        panic!("zero")
    };
    store.backend().delete(&chunk_key(&id)).await.unwrap();
    let e = read_all(&store, &p).await.unwrap_err();
    assert!(e.to_string().contains(&chunk_key(&id)), "{e}");
    let rep = store.verify().await.unwrap();
    assert_eq!(rep.bad.len(), 1, "{:?}", rep.bad);
    assert!(rep.bad[0].key.ends_with(&format!("{}.json", p.id)));
    assert!(
        rep.bad[0].reason.contains(&chunk_key(&id)),
        "{}",
        rep.bad[0].reason
    );
}

#[tokio::test]
async fn damaged_pages_roots_and_records() {
    type Damage = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Damage)> = vec![
        ("page", |b| b[20] ^= 4),
        ("page", |b| b.truncate(b.len() - 1)),
        ("root", |b| b[40] ^= 1),
        ("root", |b| b.truncate(30)),
        ("record", |b| b.truncate(b.len() / 2)),
        ("record", |b| {
            let s = String::from_utf8(b.clone()).unwrap().replacen(
                "lifeboat-point",
                "lifeboat-pint",
                1,
            );
            *b = s.into_bytes();
        }),
        ("record", |b| {
            let s = String::from_utf8(b.clone())
                .unwrap()
                .replacen("\"seq\": 1", "\"seq\": 2", 1);
            *b = s.into_bytes();
        }),
    ];
    for (what, f) in cases {
        let (store, p, _) = setup().await;
        let root_id = p.disks[0].root;
        let root = store.get_root(&root_id).await.unwrap();
        let key = match what {
            "page" => page_key(&root.pages[1]),
            "root" => root_key(&root_id),
            _ => lifeboat_store::point_key(&vm("vm1"), &p.id),
        };
        damage(&store, &key, f).await;
        let e = match what {
            "record" => store
                .get_point(&vm("vm1"), &p.id)
                .await
                .map(|_| ())
                .unwrap_err(),
            _ => read_all(&store, &p).await.map(|_| ()).unwrap_err(),
        };
        assert!(e.to_string().contains(&key), "{what}: {e}");
        assert!(
            matches!(e, lifeboat_store::StoreError::Corrupt { .. }),
            "{what}: {}",
            chain(&e)
        );
        let rep = store.verify().await.unwrap();
        assert!(
            rep.bad.iter().any(|b| b.key == key),
            "{what}: {:?}",
            rep.bad
        );
        // GC will not run over a point it cannot read.
        if what != "page" {
            assert!(
                store
                    .gc_with_grace(std::time::Duration::ZERO)
                    .await
                    .is_err(),
                "{what}"
            );
        }
    }
}

#[tokio::test]
async fn foreign_objects_are_reported() {
    let (store, _, _) = setup().await;
    store
        .backend()
        .put(
            "chunks/zz/not-a-chunk",
            Bytes::from_static(b"x"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    store
        .backend()
        .put("elsewhere", Bytes::from_static(b"x"), PutMode::Overwrite)
        .await
        .unwrap();
    let rep = store.verify().await.unwrap();
    let keys: Vec<&str> = rep.bad.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(keys, ["chunks/zz/not-a-chunk", "elsewhere"]);
}
