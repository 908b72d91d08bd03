//! Torn tails, damage, and interrupted seals: what `Journal::open` keeps, drops or refuses.

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use common::*;
use lifeboat_journal::{
    encode_segment, read_records, DiskId, Journal, JournalError, Problem, Record, Seq,
};

/// A journal with one sealed segment (records 1..=3) and an open one (records 4..=7, of
/// different sizes). Returns the open segment's path and the offsets where its records start.
fn build(dir: &Path) -> (PathBuf, Vec<u64>) {
    let j = open(dir, 1 << 20);
    for i in 0..3 {
        j.append_write(DiskId(0), i * 10, &data(i, 50)).unwrap();
    }
    j.seal().unwrap();
    let mut offsets = vec![128u64];
    for i in 3..7u64 {
        j.append_write(DiskId(1), i * 10, &data(i, 20 + i as usize * 30))
            .unwrap();
        offsets.push(offsets.last().unwrap() + 48 + 20 + i * 30);
    }
    j.sync().unwrap();
    drop(j);
    let open_seg = dir.join("seg-00000000000000000004.open");
    assert_eq!(
        fs::metadata(&open_seg).unwrap().len(),
        *offsets.last().unwrap()
    );
    (open_seg, offsets)
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq.0).collect()
}

#[test]
fn truncation_at_every_byte_of_the_last_records_keeps_exactly_the_complete_ones() {
    let base = tempfile::tempdir().unwrap();
    let (open_seg, offsets) = build(base.path());
    let name = open_seg.file_name().unwrap();
    // Every cut from the start of record 5 to the end of the file.
    for cut in offsets[1]..=offsets[4] {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(base.path(), tmp.path());
        let seg = tmp.path().join(name);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let complete = offsets.iter().filter(|&&o| o <= cut).count() as u64 - 1;
        let j = open(tmp.path(), 1 << 20);
        assert_eq!(j.last_seq(), Seq(3 + complete), "cut at {cut}");
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            offsets[complete as usize],
            "truncated at a record boundary"
        );
        let got = read_all(tmp.path());
        assert_eq!(seqs(&got), (1..=3 + complete).collect::<Vec<_>>());
        assert_eq!(
            got.last().unwrap().data,
            data(
                2 + complete,
                if complete == 0 {
                    50
                } else {
                    20 + (2 + complete) as usize * 30
                }
            )
        );
        let next = j.append_write(DiskId(2), 0, b"after").unwrap();
        assert_eq!(next, Seq(4 + complete), "cut at {cut}");
        let got = read_all(tmp.path());
        assert_eq!(got.last().unwrap().data, b"after");
        assert_eq!(got.len() as u64, 4 + complete);
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_drops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (open_seg, offsets) = build(tmp.path());
    for at in [offsets[3] + 10, offsets[3] + 60, offsets[4] - 1] {
        let mut bytes = fs::read(&open_seg).unwrap();
        bytes[at as usize] ^= 0x01;
        fs::write(&open_seg, &bytes).unwrap();
        let j = open(tmp.path(), 1 << 20);
        assert_eq!(j.last_seq(), Seq(6), "flip at {at}");
        assert_eq!(seqs(&read_all(tmp.path())), [1, 2, 3, 4, 5, 6]);
        assert_eq!(
            j.append_write(DiskId(1), 60, &data(6, 200)).unwrap(),
            Seq(7)
        );
        drop(j);
        assert_eq!(fs::metadata(&open_seg).unwrap().len(), offsets[4]);
    }
}

#[test]
fn damage_inside_the_unsealed_segment_ends_the_journal_there() {
    // A damaged record that is not the last cannot be told from a torn tail: the journal ends
    // before it (documented rule; everything after it was in the same unsealed segment).
    let tmp = tempfile::tempdir().unwrap();
    let (open_seg, offsets) = build(tmp.path());
    let mut bytes = fs::read(&open_seg).unwrap();
    bytes[offsets[1] as usize + 20] ^= 0x80;
    fs::write(&open_seg, &bytes).unwrap();
    // A reader stops there too.
    assert_eq!(seqs(&read_all(tmp.path())), [1, 2, 3, 4]);
    let j = open(tmp.path(), 1 << 20);
    assert_eq!(j.last_seq(), Seq(4));
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let sealed = tmp.path().join("seg-00000000000000000001.lbj");
    let mut bytes = fs::read(&sealed).unwrap();
    let second = 128 + 48 + 50;
    bytes[second + 60] ^= 0x04; // data of record 2
    fs::write(&sealed, &bytes).unwrap();

    let e = Journal::open(tmp.path(), config(1 << 20)).err().unwrap();
    match &e {
        JournalError::Corrupt {
            path,
            offset,
            problem,
        } => {
            assert_eq!(
                (path, *offset, problem),
                (&sealed, second as u64, &Problem::RecordChecksum)
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("seg-00000000000000000001.lbj") && msg.contains("at byte 226"),
        "{msg}"
    );
    assert_eq!(
        std::error::Error::source(&e).unwrap().to_string(),
        "record checksum mismatch"
    );
    // The reader refuses too, after the good record before it.
    let mut it = read_records(tmp.path(), Seq(0)).unwrap();
    assert_eq!(it.next().unwrap().unwrap().seq, Seq(1));
    assert!(matches!(it.next(), Some(Err(JournalError::Corrupt { .. }))));
    assert!(it.next().is_none());
    // Nothing was "repaired": the file is unchanged.
    assert_eq!(fs::read(&sealed).unwrap(), bytes);
}

#[test]
fn a_truncated_sealed_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let sealed = tmp.path().join("seg-00000000000000000001.lbj");
    let len = fs::metadata(&sealed).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&sealed)
        .unwrap()
        .set_len(len - 40)
        .unwrap();
    let e = Journal::open(tmp.path(), config(1 << 20)).err().unwrap();
    assert!(matches!(e, JournalError::Corrupt { .. }), "{e:?}");
}

#[test]
fn a_gap_between_segments_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    for s in 0..3u64 {
        j.append_write(DiskId(0), s, b"x").unwrap();
        j.seal().unwrap();
    }
    drop(j);
    fs::remove_file(tmp.path().join("seg-00000000000000000002.lbj")).unwrap();
    let e = Journal::open(tmp.path(), config(1 << 20)).err().unwrap();
    assert!(
        matches!(
            &e,
            JournalError::Corrupt {
                problem: Problem::SeqGap {
                    expected: Seq(2),
                    found: Seq(3)
                },
                ..
            }
        ),
        "{e:?}"
    );
    let mut it = read_records(tmp.path(), Seq(0)).unwrap();
    assert!(it.next().unwrap().is_ok());
    assert!(matches!(it.next(), Some(Err(JournalError::Corrupt { .. }))));
}

/// Power loss during a seal: the trailer of segment 1 is lost but its records are there, and
/// segment 2 continues it. Open seals segment 1 again.
#[test]
fn a_lost_trailer_is_rewritten_when_the_next_segment_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    for i in 0..3 {
        j.append_write(DiskId(0), i, b"one").unwrap();
    }
    j.seal().unwrap();
    j.append_write(DiskId(0), 9, b"two").unwrap();
    drop(j);
    let sealed = tmp.path().join("seg-00000000000000000001.lbj");
    let len = fs::metadata(&sealed).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&sealed)
        .unwrap()
        .set_len(len - 32)
        .unwrap();
    let unsealed = tmp.path().join("seg-00000000000000000001.open");
    fs::rename(&sealed, &unsealed).unwrap();

    let j = open(tmp.path(), 1 << 20);
    assert_eq!(j.last_seq(), Seq(4));
    assert!(!unsealed.exists() && sealed.exists());
    assert_eq!(fs::metadata(&sealed).unwrap().len(), len);
    assert_eq!(j.sealed_segments().unwrap().len(), 1);
    assert_eq!(seqs(&read_all(tmp.path())), [1, 2, 3, 4]);
}

/// Power loss during a seal that also lost records of segment 1 (never synced): segment 2 was
/// never synced either, so it is dropped and the journal continues in segment 1.
#[test]
fn a_torn_segment_followed_by_unsynced_segments_ends_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    for i in 0..3 {
        j.append_write(DiskId(0), i, b"one").unwrap();
    }
    j.seal().unwrap();
    j.append_write(DiskId(0), 9, b"two").unwrap();
    drop(j);
    let sealed = tmp.path().join("seg-00000000000000000001.lbj");
    let len = fs::metadata(&sealed).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&sealed)
        .unwrap()
        .set_len(len - 32 - 10)
        .unwrap();
    let unsealed = tmp.path().join("seg-00000000000000000001.open");
    fs::rename(&sealed, &unsealed).unwrap();

    let j = open(tmp.path(), 1 << 20);
    assert_eq!(j.last_seq(), Seq(2));
    assert!(!tmp.path().join("seg-00000000000000000004.open").exists());
    assert_eq!(j.append_write(DiskId(0), 0, b"x").unwrap(), Seq(3));
    assert_eq!(seqs(&read_all(tmp.path())), [1, 2, 3]);
}

#[test]
fn interrupted_rename_of_a_sealed_segment_is_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    j.append_write(DiskId(0), 0, b"a").unwrap();
    j.seal().unwrap();
    drop(j);
    let sealed = tmp.path().join("seg-00000000000000000001.lbj");
    let unsealed = tmp.path().join("seg-00000000000000000001.open");
    fs::rename(&sealed, &unsealed).unwrap();
    // A reader treats it as sealed already (it ends with a trailer).
    assert_eq!(read_all(tmp.path()).len(), 1);
    let j = open(tmp.path(), 1 << 20);
    assert!(sealed.exists() && !unsealed.exists());
    assert_eq!(j.sealed_segments().unwrap()[0].last_seq, Seq(1));
    assert_eq!(j.append_write(DiskId(0), 0, b"b").unwrap(), Seq(2));
}

#[test]
fn a_torn_header_of_the_newest_segment_is_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    j.append_write(DiskId(0), 0, b"a").unwrap();
    j.seal().unwrap();
    drop(j);
    let newest = tmp.path().join("seg-00000000000000000002.open");
    fs::write(&newest, [0u8; 60]).unwrap();
    assert_eq!(
        read_all(tmp.path()).len(),
        1,
        "reader: no records there yet"
    );
    let j = open(tmp.path(), 1 << 20);
    assert_eq!(j.last_seq(), Seq(1));
    assert_eq!(fs::metadata(&newest).unwrap().len(), 128);
    assert_eq!(j.append_write(DiskId(0), 0, b"b").unwrap(), Seq(2));
    assert_eq!(seqs(&read_all(tmp.path())), [1, 2]);
}

#[test]
fn a_damaged_header_of_a_sealed_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let sealed = tmp.path().join("seg-00000000000000000001.lbj");
    let mut bytes = fs::read(&sealed).unwrap();
    bytes[50] ^= 1;
    fs::write(&sealed, &bytes).unwrap();
    let e = Journal::open(tmp.path(), config(1 << 20)).err().unwrap();
    assert!(
        matches!(
            &e,
            JournalError::Corrupt {
                offset: 0,
                problem: Problem::HeaderChecksum,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn segments_written_by_encode_segment_are_read_like_the_journal_s_own() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path(), 1 << 30);
    j.append_write(DiskId(3), 4096, b"abc").unwrap();
    j.seal().unwrap();
    drop(j);
    let path = tmp.path().join("seg-00000000000000000001.lbj");
    let (h, recs) = lifeboat_journal::parse_segment(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(encode_segment(&h, &recs).unwrap(), fs::read(&path).unwrap());
}
