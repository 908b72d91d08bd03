//! The on-disk format: encoding and validating parsing of segment headers, records and trailers.
//! The byte layouts are documented in the crate doc; this module is their only implementation.

use std::io::{self, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_types::{CheckpointKind, DiskId, Epoch, RecordKind, Seq, VmId};

use crate::error::{FormatError, JournalError, Problem};
use crate::{Checkpoint, Record};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"LBJOURNL";
/// The format version written by this build (the only one it reads).
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 128;
/// Magic at the start of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"LBJR";
/// Size of a record header (the data follows it).
pub const RECORD_HEADER_LEN: usize = 48;
/// Magic at the start of the trailer that seals a segment.
pub const TRAILER_MAGIC: [u8; 4] = *b"LBJE";
/// Size of the trailer.
pub const TRAILER_LEN: usize = 32;
/// Largest data a single record may carry (64 MiB); longer writes must be split by the caller.
pub const MAX_RECORD_DATA: u64 = 64 << 20;

/// Segment headers must have `1 <= first_seq < 2^63` (so sequence numbers never overflow).
pub(crate) const MAX_FIRST_SEQ: u64 = 1 << 63;

/// The header at the start of each segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The VM whose journal this is.
    pub vm: VmId,
    /// The replication epoch the segment was written in.
    pub epoch: Epoch,
    /// Sequence number of the segment's first record.
    pub first_seq: Seq,
    /// When the segment was created (nanosecond resolution). Every record's time is stored as
    /// milliseconds after this.
    pub created: SystemTime,
}

/// The trailer that seals a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Sequence number of the segment's last record.
    pub last_seq: Seq,
    /// Number of records in the segment.
    pub records: u64,
    /// Byte offset of the trailer in the segment (= segment length - [`TRAILER_LEN`]).
    pub offset: u64,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn time_to_ns(t: SystemTime) -> Option<u64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_nanos()).ok()
}

fn ns_to_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Milliseconds from `created` to `time` as stored in a record (offset 44), or `None` if `time`
/// is before `created` or more than `u32::MAX` ms (about 49.7 days) after it.
pub(crate) fn time_to_ms(created: SystemTime, time: SystemTime) -> Option<u32> {
    let d = time.duration_since(created).ok()?;
    u32::try_from(d.as_millis()).ok()
}

/// The time a record's stored milliseconds stand for.
pub(crate) fn ms_to_time(created: SystemTime, ms: u32) -> SystemTime {
    created + Duration::from_millis(u64::from(ms))
}

impl SegmentHeader {
    /// Encodes the header (128 bytes).
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.0.to_le_bytes());
        let created = time_to_ns(self.created).unwrap_or(0);
        b[32..40].copy_from_slice(&created.to_le_bytes());
        let vm = self.vm.as_str().as_bytes();
        // VmId guarantees 1..=64 bytes.
        b[40] = vm.len() as u8;
        b[41..41 + vm.len()].copy_from_slice(vm);
        let crc = crc32c::crc32c(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header (offset 0 of a segment).
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        let err = |problem| FormatError { offset: 0, problem };
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(err(Problem::Truncated("segment header")));
        }
        let b = &b[..SEGMENT_HEADER_LEN];
        if b[0..8] != SEGMENT_MAGIC {
            return Err(err(Problem::BadMagic));
        }
        if crc32c::crc32c(&b[..124]) != le_u32(b, 124) {
            return Err(err(Problem::HeaderChecksum));
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION || le_u32(b, 12) as usize != SEGMENT_HEADER_LEN {
            return Err(err(Problem::UnsupportedVersion(version)));
        }
        let vm_len = usize::from(b[40]);
        if vm_len > VmId::MAX_LEN {
            return Err(err(Problem::BadVmId));
        }
        if b[41 + vm_len..124].iter().any(|&x| x != 0) {
            return Err(err(Problem::Reserved));
        }
        let vm = std::str::from_utf8(&b[41..41 + vm_len])
            .ok()
            .and_then(|s| VmId::new(s).ok())
            .ok_or_else(|| err(Problem::BadVmId))?;
        let first_seq = le_u64(b, 24);
        if first_seq == 0 || first_seq >= MAX_FIRST_SEQ {
            return Err(err(Problem::BadFirstSeq));
        }
        Ok(SegmentHeader {
            vm,
            epoch: Epoch(le_u64(b, 16)),
            first_seq: Seq(first_seq),
            created: ns_to_time(le_u64(b, 32)),
        })
    }
}

impl Trailer {
    /// Encodes the trailer (32 bytes).
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..4].copy_from_slice(&TRAILER_MAGIC);
        b[8..16].copy_from_slice(&self.last_seq.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.records.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        let crc = crc32c::crc32c(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a trailer and checks its checksum (not its agreement with the records).
    pub(crate) fn decode(b: &[u8; TRAILER_LEN]) -> Result<Trailer, Problem> {
        if b[0..4] != TRAILER_MAGIC {
            return Err(Problem::BadRecordMagic);
        }
        if crc32c::crc32c(&b[8..]) != le_u32(b, 4) {
            return Err(Problem::TrailerChecksum);
        }
        Ok(Trailer {
            last_seq: Seq(le_u64(b, 8)),
            records: le_u64(b, 16),
            offset: le_u64(b, 24),
        })
    }
}

/// The fields of a record header, before the data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHead {
    pub seq: Seq,
    pub disk: DiskId,
    pub kind: RecordKind,
    pub checkpoint: Option<CheckpointKind>,
    /// Disk offset; for a checkpoint, its time in nanoseconds since 1970.
    pub offset: u64,
    pub length: u64,
    pub data_len: u32,
    /// When it was appended: milliseconds after its segment's creation time.
    pub time_ms: u32,
}

impl RecordHead {
    /// Encodes the header; `data_crc` is `crc32c(data)`, computed by the caller (outside any lock).
    pub fn encode(&self, data_crc: u32) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[8..16].copy_from_slice(&self.seq.0.to_le_bytes());
        b[16..20].copy_from_slice(&self.disk.0.to_le_bytes());
        b[20] = self.kind.code();
        b[21] = self.checkpoint.map_or(0, CheckpointKind::code);
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.length.to_le_bytes());
        b[40..44].copy_from_slice(&self.data_len.to_le_bytes());
        b[44..48].copy_from_slice(&self.time_ms.to_le_bytes());
        let crc = crc32c::crc32c_append(data_crc, &b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a record header (not its checksum, which needs the data).
    /// Returns the header and the stored checksum.
    fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Result<(RecordHead, u32), Problem> {
        if b[0..4] != RECORD_MAGIC {
            return Err(Problem::BadRecordMagic);
        }
        if b[22..24] != [0, 0] {
            return Err(Problem::Reserved);
        }
        let kind = RecordKind::from_code(b[20]).map_err(|_| Problem::UnknownKind(b[20]))?;
        let head = RecordHead {
            seq: Seq(le_u64(b, 8)),
            disk: DiskId(le_u32(b, 16)),
            kind,
            checkpoint: None,
            offset: le_u64(b, 24),
            length: le_u64(b, 32),
            data_len: le_u32(b, 40),
            time_ms: le_u32(b, 44),
        };
        let head = head.validated(b[21])?;
        Ok((head, le_u32(b, 4)))
    }

    fn validated(mut self, ck_code: u8) -> Result<RecordHead, Problem> {
        if u64::from(self.data_len) > MAX_RECORD_DATA {
            return Err(Problem::DataTooLong(u64::from(self.data_len)));
        }
        match self.kind {
            RecordKind::Checkpoint => {
                let ck = CheckpointKind::from_code(ck_code)
                    .map_err(|_| Problem::UnknownCheckpointKind(ck_code))?;
                if self.length != 0 || self.data_len != 0 || self.disk != DiskId(0) {
                    return Err(Problem::LengthMismatch);
                }
                self.checkpoint = Some(ck);
            }
            RecordKind::Write | RecordKind::Zero | RecordKind::Trim => {
                if ck_code != 0 {
                    return Err(Problem::Reserved);
                }
                let want_data = if self.kind == RecordKind::Write {
                    self.length
                } else {
                    0
                };
                if u64::from(self.data_len) != want_data {
                    return Err(Problem::LengthMismatch);
                }
                if self.offset.checked_add(self.length).is_none() {
                    return Err(Problem::RangeOverflow);
                }
            }
        }
        Ok(self)
    }

    fn into_record(self, data: Vec<u8>, created: SystemTime) -> Record {
        let time = ms_to_time(created, self.time_ms);
        match self.checkpoint {
            Some(kind) => Record {
                seq: self.seq,
                disk: self.disk,
                kind: self.kind,
                offset: 0,
                length: 0,
                data,
                time,
                checkpoint: Some(Checkpoint {
                    kind,
                    time: ns_to_time(self.offset),
                }),
            },
            None => Record {
                seq: self.seq,
                disk: self.disk,
                kind: self.kind,
                offset: self.offset,
                length: self.length,
                data,
                time,
                checkpoint: None,
            },
        }
    }
}

/// The header fields that encode `record` in a segment created at `created` (checks what the
/// appender checks).
pub(crate) fn head_of(record: &Record, created: SystemTime) -> Result<RecordHead, JournalError> {
    let time_ms = time_to_ms(created, record.time).ok_or(JournalError::RecordTime)?;
    let (offset, length, checkpoint, disk) = match (record.kind, &record.checkpoint) {
        (RecordKind::Checkpoint, Some(c)) => (
            time_to_ns(c.time).ok_or(JournalError::BadTime)?,
            0,
            Some(c.kind),
            DiskId(0),
        ),
        (RecordKind::Write, _) => (record.offset, record.data.len() as u64, None, record.disk),
        (_, _) => (record.offset, record.length, None, record.disk),
    };
    let data_len = if record.kind == RecordKind::Write {
        record.data.len() as u64
    } else {
        0
    };
    if data_len > MAX_RECORD_DATA {
        return Err(JournalError::TooLarge {
            len: data_len,
            max: MAX_RECORD_DATA,
        });
    }
    if offset.checked_add(length).is_none() && checkpoint.is_none() {
        return Err(JournalError::RangeOverflow {
            offset,
            len: length,
        });
    }
    Ok(RecordHead {
        seq: record.seq,
        disk,
        kind: record.kind,
        checkpoint,
        offset,
        length,
        data_len: data_len as u32,
        time_ms,
    })
}

/// Encodes one record (header and data) as it appears in a segment created at `created` (the
/// segment header's time). A `Write` record's length is its data's length; a `Checkpoint` record
/// needs `checkpoint` set. The record's time is stored in whole milliseconds after `created`
/// (rounded down); it must lie in `created ..= created + u32::MAX ms`.
pub fn encode_record(record: &Record, created: SystemTime) -> Result<Vec<u8>, JournalError> {
    let head = head_of(record, created)?;
    let data: &[u8] = if record.kind == RecordKind::Write {
        &record.data
    } else {
        &[]
    };
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + data.len());
    out.extend_from_slice(&head.encode(crc32c::crc32c(data)));
    out.extend_from_slice(data);
    Ok(out)
}

/// Encodes a whole sealed segment: header, records (whose sequence numbers must continue from
/// `header.first_seq`) and trailer. For tests, tools and the store's own checks.
pub fn encode_segment(header: &SegmentHeader, records: &[Record]) -> Result<Vec<u8>, JournalError> {
    let mut out = header.encode().to_vec();
    for r in records {
        out.extend_from_slice(&encode_record(r, header.created)?);
    }
    let trailer = Trailer {
        last_seq: Seq((header.first_seq.0 + records.len() as u64).wrapping_sub(1)),
        records: records.len() as u64,
        offset: out.len() as u64,
    };
    out.extend_from_slice(&trailer.encode());
    Ok(out)
}

/// A failure while scanning: the source failed, or the bytes are wrong at an offset.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    Format(FormatError),
}

/// One step of a scan.
pub(crate) enum Item {
    Record(Record),
    Trailer,
    /// The bytes end exactly at a record boundary (no trailer).
    End,
}

/// Reads a segment from any byte source, validating every length before allocating.
pub(crate) struct Scanner<R> {
    r: R,
    /// Offset of the next unread byte.
    pub pos: u64,
    /// Bytes available in the source (the scan never reads past this).
    len: u64,
    pub header: SegmentHeader,
    /// Sequence number the next record must have.
    pub next_seq: Seq,
    pub records: u64,
    /// Stored time (ms after the header's creation) of the last record read; 0 before any.
    pub last_ms: u32,
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Scanner<R> {
    /// Reads and checks the segment header. `len` is the number of bytes the source holds.
    pub fn new(mut r: R, len: u64) -> Result<Self, ScanError> {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        let n = fill(&mut r, &mut b).map_err(ScanError::Io)?;
        let header = SegmentHeader::decode(&b[..n]).map_err(ScanError::Format)?;
        Ok(Scanner {
            r,
            pos: SEGMENT_HEADER_LEN as u64,
            len,
            next_seq: header.first_seq,
            header,
            records: 0,
            last_ms: 0,
        })
    }

    /// Reads the next record or the trailer. With `keep_data` false a record's data is checked
    /// but not returned. After an error the scanner must not be used further.
    pub fn next_item(&mut self, keep_data: bool) -> Result<Item, ScanError> {
        let start = self.pos;
        let bad = |problem| {
            ScanError::Format(FormatError {
                offset: start,
                problem,
            })
        };
        let mut head = [0u8; RECORD_HEADER_LEN];
        let n = fill(&mut self.r, &mut head[..4]).map_err(ScanError::Io)?;
        if n == 0 {
            return Ok(Item::End);
        }
        if n < 4 {
            return Err(bad(Problem::Truncated("record")));
        }
        if head[0..4] == TRAILER_MAGIC {
            let mut t = [0u8; TRAILER_LEN];
            t[..4].copy_from_slice(&head[..4]);
            if fill(&mut self.r, &mut t[4..]).map_err(ScanError::Io)? < TRAILER_LEN - 4 {
                return Err(bad(Problem::Truncated("trailer")));
            }
            let trailer = Trailer::decode(&t).map_err(bad)?;
            let last = Seq(self.next_seq.0.wrapping_sub(1));
            if trailer.last_seq != last
                || trailer.records != self.records
                || trailer.offset != start
            {
                return Err(bad(Problem::TrailerMismatch));
            }
            self.pos += TRAILER_LEN as u64;
            if self.pos != self.len {
                return Err(bad(Problem::TrailingBytes));
            }
            return Ok(Item::Trailer);
        }
        if head[0..4] != RECORD_MAGIC {
            return Err(bad(Problem::BadRecordMagic));
        }
        if fill(&mut self.r, &mut head[4..]).map_err(ScanError::Io)? < RECORD_HEADER_LEN - 4 {
            return Err(bad(Problem::Truncated("record")));
        }
        let (h, stored_crc) = RecordHead::decode(&head).map_err(bad)?;
        let data_len = u64::from(h.data_len);
        if data_len > self.len.saturating_sub(start + RECORD_HEADER_LEN as u64) {
            return Err(bad(Problem::Truncated("record")));
        }
        let mut data = Vec::new();
        let data_crc = if keep_data {
            data = vec![0u8; h.data_len as usize];
            if fill(&mut self.r, &mut data).map_err(ScanError::Io)? < data.len() {
                return Err(bad(Problem::Truncated("record")));
            }
            crc32c::crc32c(&data)
        } else {
            let mut crc = 0u32;
            let mut left = data_len;
            let mut buf = [0u8; 16 * 1024];
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let got = fill(&mut self.r, &mut buf[..want]).map_err(ScanError::Io)?;
                if got < want {
                    return Err(bad(Problem::Truncated("record")));
                }
                crc = crc32c::crc32c_append(crc, &buf[..want]);
                left -= want as u64;
            }
            crc
        };
        if crc32c::crc32c_append(data_crc, &head[8..]) != stored_crc {
            return Err(bad(Problem::RecordChecksum));
        }
        if h.seq != self.next_seq {
            return Err(bad(Problem::SeqGap {
                expected: self.next_seq,
                found: h.seq,
            }));
        }
        self.pos = start + RECORD_HEADER_LEN as u64 + data_len;
        self.next_seq = self.next_seq.next();
        self.records += 1;
        self.last_ms = h.time_ms;
        Ok(Item::Record(h.into_record(data, self.header.created)))
    }
}

/// Parses a complete, sealed segment held in memory (as shipped): header, every record, and the
/// trailer, which must end the bytes. Any defect is an error with its byte offset; arbitrary input
/// never panics and never allocates more than the input's size.
pub fn parse_segment(bytes: &[u8]) -> Result<(SegmentHeader, Vec<Record>), JournalError> {
    let mut s = match Scanner::new(bytes, bytes.len() as u64) {
        Ok(s) => s,
        Err(ScanError::Format(e)) => return Err(e.into()),
        Err(ScanError::Io(e)) => return Err(JournalError::io("<memory>", e)),
    };
    let mut records = Vec::new();
    loop {
        match s.next_item(true) {
            Ok(Item::Record(r)) => records.push(r),
            Ok(Item::Trailer) => return Ok((s.header, records)),
            Ok(Item::End) => {
                return Err(FormatError {
                    offset: s.pos,
                    problem: Problem::NotSealed,
                }
                .into())
            }
            Err(ScanError::Format(e)) => return Err(e.into()),
            Err(ScanError::Io(e)) => return Err(JournalError::io("<memory>", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_rec() -> Record {
        Record {
            seq: Seq(7),
            disk: DiskId(1),
            kind: RecordKind::Write,
            offset: 4096,
            length: 5,
            data: b"hello".to_vec(),
            time: created() + Duration::from_millis(1234),
            checkpoint: None,
        }
    }

    fn checkpoint_rec() -> Record {
        Record {
            seq: Seq(8),
            disk: DiskId(0),
            kind: RecordKind::Checkpoint,
            offset: 0,
            length: 0,
            data: vec![],
            time: created() + Duration::from_millis(70_000),
            checkpoint: Some(Checkpoint {
                kind: CheckpointKind::AppConsistent,
                time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            }),
        }
    }

    fn created() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn header() -> SegmentHeader {
        SegmentHeader {
            vm: VmId::new("vm-1").unwrap(),
            epoch: Epoch(3),
            first_seq: Seq(7),
            created: created(),
        }
    }

    fn unhex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    /// The frozen format: these bytes were checked against an independent CRC-32C. If this test
    /// fails, the on-disk format changed: bump FORMAT_VERSION and keep reading version 1.
    ///
    /// Changed deliberately once, before version 1 was released: the record header's bytes
    /// 44..48 (reserved until then) now hold the append time in ms after the segment's creation
    /// (`d2 04 00 00` = 1234 ms, `70 11 01 00` = 70 000 ms), which also changed the checksums
    /// (recomputed with an independent bitwise CRC-32C in Python).
    #[test]
    fn frozen_record_bytes() {
        let write = unhex(
            "4c 42 4a 52 bb d9 9b f5 07 00 00 00 00 00 00 00
             01 00 00 00 01 00 00 00 00 10 00 00 00 00 00 00
             05 00 00 00 00 00 00 00 05 00 00 00 d2 04 00 00
             68 65 6c 6c 6f",
        );
        assert_eq!(encode_record(&write_rec(), created()).unwrap(), write);
        let checkpoint = unhex(
            "4c 42 4a 52 c4 6a 08 1f 08 00 00 00 00 00 00 00
             00 00 00 00 04 02 00 00 15 cd 85 3d fe 9c 97 17
             00 00 00 00 00 00 00 00 00 00 00 00 70 11 01 00",
        );
        assert_eq!(
            encode_record(&checkpoint_rec(), created()).unwrap(),
            checkpoint
        );
        // Parsing gives the time back as creation time + the stored milliseconds.
        let (_, back) =
            parse_segment(&encode_segment(&header(), &[write_rec(), checkpoint_rec()]).unwrap())
                .unwrap();
        assert_eq!(back[0].time, created() + Duration::from_millis(1234));
        assert_eq!(back[1].time, created() + Duration::from_millis(70_000));
    }

    #[test]
    fn record_times_outside_the_segment_s_range_are_refused() {
        let mut r = write_rec();
        r.time = created() - Duration::from_millis(1);
        assert!(matches!(
            encode_record(&r, created()),
            Err(JournalError::RecordTime)
        ));
        r.time = created() + Duration::from_millis(u64::from(u32::MAX) + 1);
        assert!(matches!(
            encode_record(&r, created()),
            Err(JournalError::RecordTime)
        ));
        r.time = created() + Duration::from_millis(u64::from(u32::MAX));
        let bytes = encode_record(&r, created()).unwrap();
        assert_eq!(&bytes[44..48], &[0xff; 4]);
        // Sub-millisecond parts are dropped (rounded down).
        r.time = created() + Duration::from_micros(1999);
        assert_eq!(
            &encode_record(&r, created()).unwrap()[44..48],
            &[1, 0, 0, 0]
        );
    }

    #[test]
    fn frozen_header_and_trailer_bytes() {
        let mut h = unhex(
            "4c 42 4a 4f 55 52 4e 4c 01 00 00 00 80 00 00 00
             03 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00
             00 00 2a 36 fe 9c 97 17 04 76 6d 2d 31",
        );
        h.resize(124, 0);
        h.extend_from_slice(&[0xf1, 0xf0, 0x01, 0x15]);
        assert_eq!(header().encode().to_vec(), h);
        assert_eq!(SegmentHeader::decode(&h).unwrap(), header());
        let t = unhex(
            "4c 42 4a 45 23 ff 0c ee 08 00 00 00 00 00 00 00
             02 00 00 00 00 00 00 00 e5 00 00 00 00 00 00 00",
        );
        let trailer = Trailer {
            last_seq: Seq(8),
            records: 2,
            offset: 229,
        };
        assert_eq!(trailer.encode().to_vec(), t);
    }

    #[test]
    fn segment_round_trip_and_exact_layout() {
        let records = vec![write_rec(), checkpoint_rec()];
        let seg = encode_segment(&header(), &records).unwrap();
        // header + (48 + 5) + 48 + trailer; the trailer sits at 229 as in the frozen test.
        assert_eq!(seg.len(), 128 + 53 + 48 + 32);
        assert_eq!(&seg[229..233], b"LBJE");
        let (h, back) = parse_segment(&seg).unwrap();
        assert_eq!(h, header());
        assert_eq!(back, records);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
        let records = vec![write_rec(), checkpoint_rec()];
        let seg = encode_segment(&header(), &records).unwrap();
        for cut in 0..seg.len() {
            assert!(parse_segment(&seg[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..seg.len() {
            for bit in 0..8 {
                let mut bad = seg.clone();
                bad[i] ^= 1 << bit;
                // The header's creation time is not interpreted, but it is checksummed.
                assert!(parse_segment(&bad).is_err(), "flip byte {i} bit {bit}");
            }
        }
        let mut extra = seg.clone();
        extra.push(0);
        match parse_segment(&extra) {
            Err(JournalError::Malformed(e)) => {
                assert_eq!(e.offset, 229);
                assert_eq!(e.problem, Problem::TrailingBytes);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_carry_the_offset_of_the_bad_record() {
        let seg = encode_segment(&header(), &[write_rec(), checkpoint_rec()]).unwrap();
        let mut bad = seg.clone();
        bad[181 + 30] ^= 0x40; // inside the checkpoint record (at 181)
        let e = parse_segment(&bad).unwrap_err();
        assert_eq!(e.to_string(), "malformed journal segment at byte 181");
        match e {
            JournalError::Malformed(f) => assert_eq!(f.problem, Problem::RecordChecksum),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_lengths_are_refused_before_allocating() {
        // A valid-looking header claiming 4 GiB - 1 of data.
        let mut seg = header().encode().to_vec();
        let head = RecordHead {
            seq: Seq(7),
            disk: DiskId(0),
            kind: RecordKind::Write,
            checkpoint: None,
            offset: 0,
            length: u64::from(u32::MAX),
            data_len: u32::MAX,
            time_ms: 0,
        };
        seg.extend_from_slice(&head.encode(0));
        let e = parse_segment(&seg).unwrap_err();
        assert!(matches!(
            e,
            JournalError::Malformed(FormatError {
                offset: 128,
                problem: Problem::DataTooLong(_)
            })
        ));
        // Within the limit but longer than the input: truncated, no allocation.
        let mut seg = header().encode().to_vec();
        let head = RecordHead {
            length: 1 << 20,
            data_len: 1 << 20,
            ..head
        };
        seg.extend_from_slice(&head.encode(0));
        assert!(matches!(
            parse_segment(&seg),
            Err(JournalError::Malformed(FormatError {
                problem: Problem::Truncated(_),
                ..
            }))
        ));
    }

    #[test]
    fn appender_side_checks() {
        let mut r = write_rec();
        r.offset = u64::MAX - 2;
        assert!(matches!(
            encode_record(&r, created()),
            Err(JournalError::RangeOverflow { .. })
        ));
        let mut c = checkpoint_rec();
        c.checkpoint = Some(Checkpoint {
            kind: CheckpointKind::CrashConsistent,
            time: UNIX_EPOCH - Duration::from_secs(1),
        });
        assert!(matches!(
            encode_record(&c, created()),
            Err(JournalError::BadTime)
        ));
    }
}
