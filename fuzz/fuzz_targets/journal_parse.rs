//! `lifeboat_journal::parse_segment` on arbitrary bytes: it must never panic (nor allocate more
//! than the input), and what parses must re-encode to the same bytes (the format is canonical).
//!
//! Three views of each input: the raw bytes; the bytes behind a valid segment header; and the
//! same with every record's and the trailer's checksum fixed up, so that the fuzzer reaches the
//! record, sequence and trailer checks instead of stopping at a checksum.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use lifeboat_journal::{
    encode_segment, parse_segment, Epoch, Seq, SegmentHeader, VmId, RECORD_HEADER_LEN,
    RECORD_MAGIC, SEGMENT_HEADER_LEN, TRAILER_LEN, TRAILER_MAGIC,
};

fn check(bytes: &[u8]) {
    if let Ok((header, records)) = parse_segment(bytes) {
        let again = encode_segment(&header, &records).expect("parsed records re-encode");
        assert_eq!(again, bytes, "re-encoding differs");
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Rewrites the checksums of the records and trailer found by walking `b` from the header on.
fn fix_checksums(b: &mut [u8]) {
    let mut pos = SEGMENT_HEADER_LEN;
    while pos + 4 <= b.len() {
        if b[pos..pos + 4] == RECORD_MAGIC && pos + RECORD_HEADER_LEN <= b.len() {
            let data_len = u32_at(b, pos + 40) as usize;
            let end = pos + RECORD_HEADER_LEN + data_len;
            if end > b.len() {
                return;
            }
            let data_crc = crc32c::crc32c(&b[pos + RECORD_HEADER_LEN..end]);
            let crc = crc32c::crc32c_append(data_crc, &b[pos + 8..pos + RECORD_HEADER_LEN]);
            b[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
            pos = end;
        } else if b[pos..pos + 4] == TRAILER_MAGIC && pos + TRAILER_LEN <= b.len() {
            let crc = crc32c::crc32c(&b[pos + 8..pos + TRAILER_LEN]);
            b[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
            return;
        } else {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let header = SegmentHeader {
        vm: VmId::new("fuzz-vm").expect("valid id"),
        epoch: Epoch(1),
        first_seq: Seq(1),
        created: UNIX_EPOCH + Duration::from_secs(1),
    };
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(data);
    check(&bytes);
    fix_checksums(&mut bytes);
    check(&bytes);
});
