//! The backend conformance suite on both local backends, and URL parsing.

mod common;

use std::sync::Arc;

use lifeboat_store::{conformance, open_url, ObjectBackend, OpenOptions, Store, StoreError};

#[tokio::test]
async fn conformance_in_memory() {
    let b = common::memory_backend();
    conformance::run(b.as_ref()).await.unwrap();
}

#[tokio::test]
async fn conformance_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let b = open_url(dir.path().to_str().unwrap(), OpenOptions::default()).unwrap();
    conformance::run(b.as_ref()).await.unwrap();
    // The objects are plain files under the directory, and no staging file is left behind
    // (a create is published by a rename, or a link and an unlink).
    assert!(dir.path().join("c/a/x1").is_file());
    let mut left = Vec::new();
    let mut dirs = vec![dir.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.to_string_lossy().contains('#') {
                left.push(p);
            }
        }
    }
    assert!(left.is_empty(), "staging files left: {left:?}");
}

#[tokio::test]
async fn conformance_with_a_prefix() {
    let mem = Arc::new(object_store::memory::InMemory::new());
    let b = ObjectBackend::new(mem.clone(), "region-a/store");
    conformance::run(&b).await.unwrap();
    // A second prefix on the same bucket is independent.
    let other = ObjectBackend::new(mem, "region-b");
    conformance::run(&other).await.unwrap();
}

#[tokio::test]
async fn urls() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("new/store");
    let url = format!("file://{}", sub.display());
    open_url(&url, OpenOptions::default()).unwrap();
    assert!(sub.is_dir(), "the directory is created");
    assert!(Store::open("memory://").is_ok());

    let e = open_url("file://relative/path", OpenOptions::default()).unwrap_err();
    assert!(matches!(e, StoreError::InvalidUrl { .. }), "{e}");
    let e = open_url("ftp://x/y", OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("unknown scheme"), "{e}");
    #[cfg(not(feature = "s3"))]
    {
        let e = open_url("s3://bucket/prefix", OpenOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("built without the s3 feature: rebuild with --features s3"),
            "{e}"
        );
    }
    #[cfg(not(feature = "azure"))]
    {
        let e = open_url("az://container/prefix", OpenOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("built without the azure feature: rebuild with --features azure"),
            "{e}"
        );
    }
    let e = open_url("s3://", OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no bucket"), "{e}");
}
