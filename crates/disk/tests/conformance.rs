//! The `BlockDevice` conformance suite against `JournaledDisk` (the same suite runs against the
//! in-memory test double in lifeboat-nbd), plus the journal/image invariant after it.

use std::sync::Arc;

use lifeboat_disk::{replay_onto, DiskOptions, JournaledDisk};
use lifeboat_journal::{Journal, JournalConfig};
use lifeboat_nbd::conformance::{check_read_only_device, check_writable_device};
use lifeboat_testkit::hash_file;
use lifeboat_types::{DiskId, Epoch, Seq, VmId};

fn open(dir: &std::path::Path, image: &std::path::Path, read_only: bool) -> JournaledDisk {
    let journal = Arc::new(
        Journal::open(
            &dir.join("j"),
            JournalConfig::new(VmId::new("vm").unwrap(), Epoch(1)),
        )
        .unwrap(),
    );
    JournaledDisk::open(
        image,
        DiskId(0),
        journal,
        &dir.join("j"),
        DiskOptions { read_only },
    )
    .unwrap()
}

#[test]
fn journaled_disk_conforms_and_its_journal_replays_to_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vm.img");
    let original = dir.path().join("original.img");
    for p in [&image, &original] {
        std::fs::File::create(p).unwrap().set_len(2 << 20).unwrap();
    }
    let disk = open(dir.path(), &image, false);
    check_writable_device(&disk);
    disk.persist_applied().unwrap();
    drop(disk);
    replay_onto(&dir.path().join("j"), DiskId(0), &original, Seq(0), None).unwrap();
    assert_eq!(hash_file(&original), hash_file(&image));
}

#[test]
fn read_only_journaled_disk_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vm.img");
    std::fs::write(&image, vec![7u8; 1 << 20]).unwrap();
    let disk = open(dir.path(), &image, true);
    check_read_only_device(&disk);
    assert_eq!(disk.image().size(), 1 << 20);
}
