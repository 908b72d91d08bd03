//! Continuous data protection: the state of a VM at any time (or journal position) inside the
//! window of raw journal the store still holds, to the write.
//!
//! [`state_at`] finds the journal position that a target stands for — for a time `T`, the last
//! record of the longest journal prefix whose records were all appended at or before `T` (record
//! times are non-decreasing, so that is the last record with time `<= T`) — then the newest
//! stored recovery point at or before that position (the *base*), and indexes the records
//! between them by the chunks they touch: references to the records (segment, place in it),
//! not their data, so memory grows with the number of records, not with the bytes they wrote
//! (see the `overlay` module). The result, [`PointInTime`], reads any chunk of any disk: a
//! chunk the records touched is built when read — the base's chunk with its records applied
//! in journal order (zeroes and trims give zeroes), exactly as the processor cuts a point —
//! through a small cache of decoded segments; any other chunk is the base's.
//!
//! The window starts at the oldest stored record that a stored point can reach with stored
//! records only; a target before it is refused ([`ProcessError::BeforeWindow`]). A target after
//! the last stored record gives the state at the last record ([`PointInTime::after_last`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_store::{PointRecord, SegmentRef, Store};
use lifeboat_types::{Seq, VmId};

use crate::overlay::{index_journal, load, store_err, PointInTime};
use crate::ProcessError;

/// What to restore: a time or a journal position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The state after every record appended at or before this time.
    Time(SystemTime),
    /// The state after every record up to this sequence number.
    Seq(Seq),
}

/// A time as UTC text with milliseconds, `YYYY-MM-DDTHH:MM:SS.fffZ` (parsed back by
/// [`parse_utc`]).
pub fn format_utc_ms(t: SystemTime) -> String {
    let base = lifeboat_policy::format_utc(t);
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    format!("{}.{ms:03}Z", base.trim_end_matches('Z'))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff...]Z` (UTC) or `@UNIXSECONDS[.fff...]` (up to 9 fraction
/// digits).
pub fn parse_utc(s: &str) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "invalid time {s:?}: expected YYYY-MM-DDTHH:MM:SS[.fff]Z (UTC) or @UNIXSECONDS[.fff]"
        )
    };
    let frac_ns = |f: &str| -> Result<u64, String> {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let mut digits = f.to_string();
        while digits.len() < 9 {
            digits.push('0');
        }
        digits.parse().map_err(|_| bad())
    };
    let split = |t: &str| -> Result<(String, u64), String> {
        match t.split_once('.') {
            Some((a, f)) => Ok((a.to_string(), frac_ns(f)?)),
            None => Ok((t.to_string(), 0)),
        }
    };
    if let Some(rest) = s.strip_prefix('@') {
        let (secs, ns) = split(rest)?;
        if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let secs: u64 = secs.parse().map_err(|_| bad())?;
        return UNIX_EPOCH
            .checked_add(Duration::new(secs, ns as u32))
            .ok_or_else(bad);
    }
    let body = s.strip_suffix('Z').ok_or_else(bad)?;
    let (main, ns) = split(body)?;
    let b = main.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let t = &main[r];
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match mo {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if y < 1970 || d < 1 || d > dim || h > 23 || mi > 59 || sec > 59 {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    UNIX_EPOCH
        .checked_add(Duration::new(secs, ns as u32))
        .ok_or_else(bad)
}

/// What the first pass over the stored journal found.
struct Scan {
    /// The first stored record.
    first: (Seq, SystemTime),
    /// The last stored record read.
    last: (Seq, SystemTime),
    /// For a time target: the last record of the prefix appended at or before it.
    at_time: Option<(Seq, SystemTime)>,
    /// Times of the records at the points' positions.
    point_times: HashMap<Seq, SystemTime>,
    /// The scan stopped before the end of the journal (a record after the target time).
    stopped: bool,
}

async fn scan(
    store: &Store,
    vm: &VmId,
    segments: &[SegmentRef],
    points: &[PointRecord],
    target: Target,
) -> Result<Option<Scan>, ProcessError> {
    let wanted: std::collections::HashSet<Seq> = points
        .iter()
        .flat_map(|p| [Some(p.seq()), p.copy_end.map(Seq)])
        .flatten()
        .collect();
    let mut out: Option<Scan> = None;
    let mut expected: Option<Seq> = None;
    for seg in segments {
        if let (Target::Seq(s), Some(o)) = (target, &out) {
            // Past the target and the first record: the rest is not needed.
            if seg.first_seq > s && o.last.0 >= s {
                o_stop(&mut out);
                break;
            }
        }
        for rec in load(store, vm, seg).await? {
            if let Some(e) = expected {
                if rec.seq < e {
                    continue;
                }
                if rec.seq != e {
                    return Err(ProcessError::Gap {
                        vm: vm.clone(),
                        expected: e,
                        found: rec.seq,
                    });
                }
            }
            expected = Some(rec.seq.next());
            let here = (rec.seq, rec.time);
            let o = out.get_or_insert_with(|| Scan {
                first: here,
                last: here,
                at_time: None,
                point_times: HashMap::new(),
                stopped: false,
            });
            if let Target::Time(t) = target {
                if rec.time > t {
                    o.stopped = true;
                    return Ok(out);
                }
                o.at_time = Some(here);
            }
            o.last = here;
            if wanted.contains(&rec.seq) {
                o.point_times.insert(rec.seq, rec.time);
            }
        }
    }
    Ok(out)
}

fn o_stop(out: &mut Option<Scan>) {
    if let Some(o) = out {
        o.stopped = true;
    }
}

/// The state of `vm` at `target` (see the module doc).
pub async fn state_at(
    store: &Store,
    vm: &VmId,
    target: Target,
) -> Result<PointInTime, ProcessError> {
    state_at_within(store, vm, target, INDEX_BUDGET).await
}

/// Memory a [`PointInTime`] may take for its index of the journal since its base (counted as
/// 16 bytes per record and chunk it touches, 96 per chunk touched and 160 per segment): 1 GiB
/// by default, tens of millions of records. Past it, the read is refused ([`ProcessError::TooFarFromBase`]) rather
/// than exhausting the host's memory. The chunks themselves are built when read, never all
/// held; the decoded segments they are built from are bounded apart
/// ([`crate::SEGMENT_CACHE_BYTES`]).
pub const INDEX_BUDGET: u64 = 1 << 30;

/// [`state_at`] with an explicit memory budget (bytes) for the index of the journal since the
/// base ([`INDEX_BUDGET`]; [`PointInTime::index_bytes`] tells what a point took). Before the
/// index was lazy this budget also counted the records' data and every changed chunk; it now
/// counts only the index, so the same number admits far longer journals.
pub async fn state_at_within(
    store: &Store,
    vm: &VmId,
    target: Target,
    budget: u64,
) -> Result<PointInTime, ProcessError> {
    let se = |e| store_err(vm, e);
    let points = store.list_points(vm).await.map_err(se)?;
    if points.is_empty() {
        return Err(ProcessError::NoBase { vm: vm.clone() });
    }
    let all_segments = store.list_segments(vm).await.map_err(se)?;
    let segments = island(&all_segments, target);
    let s = scan(store, vm, segments, &points, target)
        .await?
        .ok_or_else(|| ProcessError::NoJournal { vm: vm.clone() })?;
    // The oldest stored point that stored records continue from.
    let p0 = points
        .iter()
        .filter(|p| !p.is_journal_backed())
        .find(|p| p.seq().0.saturating_add(1) >= s.first.0 .0)
        .ok_or_else(|| {
            let newest = points.last().map_or(Seq(0), |p| p.seq());
            ProcessError::Gap {
                vm: vm.clone(),
                expected: newest.next(),
                found: s.first.0,
            }
        })?;
    let mut start = if p0.seq() >= s.first.0 {
        let t = s.point_times.get(&p0.seq()).copied().unwrap_or(p0.time());
        (p0.seq(), t)
    } else {
        s.first
    };
    // An initial copy taken while the VM wrote is consistent only from where the copy ended.
    if let Some(end) = p0.copy_end.map(Seq).filter(|e| *e > start.0) {
        match s.point_times.get(&end) {
            Some(t) => start = (end, *t),
            None => {
                return Err(ProcessError::CopyInProgress {
                    vm: vm.clone(),
                    point: p0.id.clone(),
                    copy_end: end,
                })
            }
        }
    }
    let before = |what: String| ProcessError::BeforeWindow {
        vm: vm.clone(),
        target: what,
        start: format!("{} (journal record {})", format_utc_ms(start.1), start.0),
    };
    let (seq, time, after_last) = match target {
        Target::Time(t) => match s.at_time {
            Some((seq, time)) if seq >= start.0 && time >= start.1 => (seq, time, !s.stopped),
            _ => return Err(before(format!("time {}", format_utc_ms(t)))),
        },
        Target::Seq(q) => {
            if let Some(p) = points.iter().find(|p| p.seq() == q) {
                if !p.is_restorable() {
                    return Err(ProcessError::NotRestorable {
                        vm: vm.clone(),
                        point: p.id.clone(),
                        copy_end: Seq(p.copy_end.unwrap_or(p.seq)),
                    });
                }
                let t = s.point_times.get(&q).copied().unwrap_or(p.time());
                (q, t, false)
            } else if q < start.0 {
                return Err(before(format!("journal record {q}")));
            } else if q > s.last.0 {
                (s.last.0, s.last.1, true)
            } else {
                // Found by the scan, which read through q; its time is not kept: read again below.
                (q, UNIX_EPOCH, false)
            }
        }
    };
    let base = crate::processor::stored_base(&points, seq)
        .cloned()
        .ok_or_else(|| before(format!("journal record {seq}")))?;
    let mut pit = PointInTime::on_base(vm, base, seq, time, after_last);
    index_journal(store, vm, segments, &mut pit, budget).await?;
    Ok(pit)
}

/// The run of stored segments without a hole that `target` is read from. Retention releases
/// the journal nothing kept needs, so the stored journal may have holes: the last run is the
/// continuous-data-protection window (and any time target is read there); a position is read
/// from the run that holds it (or whose first record follows it), else from the last run.
fn island(segments: &[SegmentRef], target: Target) -> &[SegmentRef] {
    let mut runs: Vec<&[SegmentRef]> = Vec::new();
    let mut start = 0;
    for i in 1..=segments.len() {
        let hole = segments
            .get(i)
            .is_none_or(|s| s.first_seq.0 > segments[i - 1].last_seq.0.saturating_add(1));
        if hole {
            runs.push(&segments[start..i]);
            start = i;
        }
    }
    let last = runs.last().copied().unwrap_or(&[]);
    match target {
        Target::Time(_) => last,
        Target::Seq(q) => runs
            .iter()
            .copied()
            .find(|r| match (r.first(), r.last()) {
                (Some(f), Some(l)) => f.first_seq.0.saturating_sub(1) <= q.0 && q <= l.last_seq,
                _ => false,
            })
            .unwrap_or(last),
    }
}

/// A reader of recovery point `point`: a stored point is read through its roots, a
/// journal-backed one through the newest stored point before it and the stored journal from
/// there to its position (which retention keeps for as long as the point is kept, however old
/// its base: [`crate::plan_retention`]). An initial copy taken while the VM wrote is refused:
/// it is not a consistent state. A journal-backed point whose journal is no longer all stored
/// is refused with [`ProcessError::JournalGone`].
pub async fn open_point(
    store: &Store,
    vm: &VmId,
    point: &PointRecord,
) -> Result<PointInTime, ProcessError> {
    let not_restorable = |p: &PointRecord| ProcessError::NotRestorable {
        vm: vm.clone(),
        point: p.id.clone(),
        copy_end: Seq(p.copy_end.unwrap_or(p.seq)),
    };
    if !point.is_restorable() {
        return Err(not_restorable(point));
    }
    if !point.is_journal_backed() {
        return Ok(PointInTime::on_base(
            vm,
            point.clone(),
            point.seq(),
            point.time(),
            false,
        ));
    }
    let se = |e| store_err(vm, e);
    let points = store.list_points(vm).await.map_err(se)?;
    let base = crate::processor::stored_base(&points, point.seq())
        .cloned()
        .ok_or_else(|| ProcessError::NoBase { vm: vm.clone() })?;
    if base.copy_end.is_some_and(|e| e > point.seq) {
        return Err(not_restorable(&base));
    }
    let segments = store.list_segments(vm).await.map_err(se)?;
    let mut pit = PointInTime::on_base(vm, base.clone(), point.seq(), point.time(), false);
    match index_journal(store, vm, &segments, &mut pit, INDEX_BUDGET).await {
        Ok(()) => Ok(pit),
        Err(ProcessError::Gap { expected, .. }) => Err(ProcessError::JournalGone {
            vm: vm.clone(),
            point: point.id.clone(),
            base: base.id.clone(),
            missing: expected,
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_take_the_run_of_segments_that_holds_their_target() {
        let seg = |a: u64, b: u64| SegmentRef {
            first_seq: Seq(a),
            last_seq: Seq(b),
            key: format!("{a}-{b}"),
            size: 1,
        };
        // Runs 1..=20, 31..=50 (a hole at 21..=30), 51..=60 touching the last.
        let segs = vec![
            seg(1, 10),
            seg(11, 20),
            seg(31, 40),
            seg(41, 50),
            seg(51, 60),
        ];
        let keys = |r: &[SegmentRef]| r.iter().map(|s| s.key.clone()).collect::<Vec<_>>();
        let first = keys(&segs[..2]);
        let last = keys(&segs[2..]);
        assert_eq!(keys(island(&segs, Target::Time(UNIX_EPOCH))), last);
        for q in [0, 1, 15, 20] {
            assert_eq!(keys(island(&segs, Target::Seq(Seq(q)))), first, "{q}");
        }
        // A point just before a run (its base) reads from that run.
        for q in [30, 31, 60] {
            assert_eq!(keys(island(&segs, Target::Seq(Seq(q)))), last, "{q}");
        }
        // Inside the hole or past the end: the last run (the window), which refuses or ends.
        for q in [25, 99] {
            assert_eq!(keys(island(&segs, Target::Seq(Seq(q)))), last, "{q}");
        }
        assert!(island(&[], Target::Seq(Seq(3))).is_empty());
    }

    #[test]
    fn utc_times_parse_and_format() {
        let t = parse_utc("2026-11-27T12:31:01.250Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_795_782_661_250)
        );
        assert_eq!(format_utc_ms(t), "2026-11-27T12:31:01.250Z");
        assert_eq!(parse_utc("@1795782661.25").unwrap(), t);
        assert_eq!(parse_utc("1970-01-01T00:00:00Z").unwrap(), UNIX_EPOCH);
        assert_eq!(
            parse_utc("2024-02-29T23:59:59.000000001Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap(),
            Duration::new(1_709_251_199, 1)
        );
        for bad in [
            "2026-11-27 12:31:01Z",
            "2026-11-27T12:31:01",
            "2025-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T12:31:01.Z",
            "2026-11-27T12:31:01.1234567890Z",
            "@",
            "@-5",
            "@12.x",
            "latest",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }
}
