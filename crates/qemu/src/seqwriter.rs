//! The seqwriter test guest (`guest/seqwriter.S`): building its disk, and verifying a disk.
//!
//! The guest writes records 1, 2, 3 ... (one 4 KiB block each, one int 13h call each) into a
//! ring of `R` blocks, record `N` in block `(N - 1) mod R`, and prints `seq N` on COM1 after
//! record `N` was acknowledged (for multiples of its print interval). After a reboot it goes on
//! from the highest valid record on its disk. The layout tables are in the assembly source's
//! header; this module is their Rust twin ([`record`] builds exactly the bytes the guest writes).
//!
//! **What [`verify`] decides.** A disk "holds exactly the writes 1..N" when every ring block
//! holds what writing records 1..N in order leaves there: for `N >= R` the records `N-R+1..=N`,
//! for `N < R` the records `1..=N` and nothing in the other blocks. [`RingReport::last_seq`] is
//! the highest such `N` for which the records of the window are all present (a record that was
//! overwritten cannot be checked). Every block is compared against the state for the highest
//! valid record `M` seen ([`RingReport::max_seq`]); each difference is a [`RingProblem`]:
//! a missing record, a record that should not be there (stale, or beyond a gap), a damaged block
//! (magic present, but checksum or filler wrong: torn or garbled) or a misdirected one.
//!
//! A crash while record `M + 1` is being written may leave its block torn (IDE writes the 8
//! sectors one by one, header first); such a block, with `M + 1` in its header and in the block
//! `M + 1` goes to, is the in-flight write, reported with `in_flight: true` and accepted by
//! [`RingReport::is_crash_consistent`], as a real disk's unacknowledged write would be.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::serial::complete_lines;

/// The guest's assembly source (compiled into this crate, so it is assembled from wherever the
/// crate is built).
pub const SOURCE: &str = include_str!("../../../guest/seqwriter.S");
/// Bytes of guest code at the start of the disk (stage 1 and stage 2).
pub const CODE_BYTES: usize = 4096;
/// Ring block (= record) size.
pub const BLOCK: usize = 4096;
/// Where the parameter block is (byte offset on the disk).
pub const PARAMS_OFFSET: usize = 512;
/// The parameter block's magic.
pub const PARAMS_MAGIC: &[u8; 8] = b"LBSEQCFG";
/// A record's magic.
pub const RECORD_MAGIC: &[u8; 8] = b"LBSEQREC";
/// The checksum's seed.
pub const CHECKSUM_SEED: u32 = 0x4c42_4f41;
/// The filler's multiplier.
pub const FILL_MUL: u32 = 0x9e37_79b1;
const WORDS: usize = BLOCK / 4;
const CHECKSUM_WORD: usize = 5;
const FIRST_FILLER_WORD: usize = 8;

/// What can go wrong building or checking a seqwriter disk.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// `as` or `ld` could not be run.
    #[error("cannot run {tool} to build the seqwriter guest (apt-get install binutils)")]
    Tool {
        /// The program.
        tool: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `as` or `ld` failed.
    #[error("{tool} failed building the seqwriter guest: {stderr}")]
    Build {
        /// The program.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("seqwriter disk {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The assembled code is not what the layout expects.
    #[error("seqwriter guest binary: {0}")]
    BadBinary(String),
    /// Parameters out of range.
    #[error("seqwriter parameters: {0}")]
    BadParams(String),
    /// The image does not start with a seqwriter parameter block, or is too small for its ring.
    #[error("not a seqwriter disk: {0}")]
    NotSeqWriter(String),
}

/// The guest's tunables, stored in its parameter block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestParams {
    /// Ring blocks (1 ..= 65535; the guest reads them all at boot).
    pub ring_blocks: u32,
    /// Writes per BIOS timer tick (18.2 Hz) before waiting for the next tick; 0 = unthrottled.
    pub writes_per_tick: u16,
    /// `seq N` is printed when N is a multiple of this (>= 1).
    pub print_every: u16,
}

impl Default for GuestParams {
    fn default() -> Self {
        GuestParams {
            ring_blocks: 256,
            writes_per_tick: 0,
            print_every: 16,
        }
    }
}

/// A seqwriter disk's layout, read from its parameter block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// First sector of the ring.
    pub ring_lba: u32,
    /// The tunables.
    pub params: GuestParams,
}

impl Layout {
    /// Byte offset of ring block `i`.
    pub fn block_offset(&self, i: u32) -> u64 {
        u64::from(self.ring_lba) * 512 + u64::from(i) * BLOCK as u64
    }

    /// Bytes the disk needs (code + ring).
    pub fn disk_bytes(&self) -> u64 {
        self.block_offset(self.params.ring_blocks)
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Assembles `guest/seqwriter.S` with GNU binutils in `work_dir` (like `guest/build.sh`):
/// `as --32`, `ld -m elf_i386 -Ttext 0x7c00 --oformat binary`. Returns the 4096-byte binary.
pub fn assemble(work_dir: &Path) -> Result<Vec<u8>, GuestError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GuestError::Io { path, source }
    };
    std::fs::create_dir_all(work_dir).map_err(io(work_dir))?;
    let src = work_dir.join("seqwriter.S");
    let obj = work_dir.join("seqwriter.o");
    let bin = work_dir.join("seqwriter.bin");
    std::fs::write(&src, SOURCE).map_err(io(&src))?;
    let run = |tool: &'static str, cmd: &mut Command| -> Result<(), GuestError> {
        let out = cmd
            .output()
            .map_err(|source| GuestError::Tool { tool, source })?;
        if !out.status.success() {
            return Err(GuestError::Build {
                tool,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    };
    run(
        "as",
        Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&src),
    )?;
    run(
        "ld",
        Command::new("ld")
            .args(["-m", "elf_i386", "-Ttext", "0x7c00", "-e", "_start"])
            .args(["--oformat", "binary", "-o"])
            .arg(&bin)
            .arg(&obj),
    )?;
    let code = std::fs::read(&bin).map_err(io(&bin))?;
    check_code(&code)?;
    Ok(code)
}

fn check_code(code: &[u8]) -> Result<(), GuestError> {
    if code.len() != CODE_BYTES {
        return Err(GuestError::BadBinary(format!(
            "{} bytes, expected {CODE_BYTES}",
            code.len()
        )));
    }
    if code[510..512] != [0x55, 0xaa] {
        return Err(GuestError::BadBinary("no boot signature at 510".into()));
    }
    parse_params(code).map_err(|e| GuestError::BadBinary(e.to_string()))?;
    Ok(())
}

/// The guest code with `params` patched into its parameter block.
pub fn with_params(code: &[u8], params: GuestParams) -> Result<Vec<u8>, GuestError> {
    check_code(code)?;
    if !(1..=65535).contains(&params.ring_blocks) {
        return Err(GuestError::BadParams(format!(
            "ring_blocks {} is out of range: use 1 to 65535",
            params.ring_blocks
        )));
    }
    if params.print_every == 0 {
        return Err(GuestError::BadParams(
            "print_every is 0: use 1 or more".into(),
        ));
    }
    let mut c = code.to_vec();
    let p = PARAMS_OFFSET;
    c[p + 16..p + 20].copy_from_slice(&params.ring_blocks.to_le_bytes());
    c[p + 20..p + 22].copy_from_slice(&params.writes_per_tick.to_le_bytes());
    c[p + 22..p + 24].copy_from_slice(&params.print_every.to_le_bytes());
    Ok(c)
}

/// Creates (or replaces) a disk image of `size` bytes at `path`: the guest code with `params`,
/// then zeros (a sparse file). The ring starts empty.
pub fn write_image(
    path: &Path,
    code: &[u8],
    params: GuestParams,
    size: u64,
) -> Result<Layout, GuestError> {
    let code = with_params(code, params)?;
    let layout = parse_params(&code)?;
    if size < layout.disk_bytes() {
        return Err(GuestError::BadParams(format!(
            "a {size}-byte disk cannot hold a ring of {} blocks: make it at least {} bytes",
            params.ring_blocks,
            layout.disk_bytes()
        )));
    }
    let io = |source| GuestError::Io {
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::create(path).map_err(io)?;
    f.set_len(size).map_err(io)?;
    std::os::unix::fs::FileExt::write_all_at(&f, &code, 0).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(layout)
}

/// Reads the parameter block at the start of a seqwriter disk (or guest binary).
pub fn parse_params(image: &[u8]) -> Result<Layout, GuestError> {
    let p = PARAMS_OFFSET;
    if image.len() < p + 24 {
        return Err(GuestError::NotSeqWriter(format!(
            "{} bytes: too small for the parameter block",
            image.len()
        )));
    }
    if &image[p..p + 8] != PARAMS_MAGIC {
        return Err(GuestError::NotSeqWriter(format!(
            "no {:?} magic at byte {p}",
            String::from_utf8_lossy(PARAMS_MAGIC)
        )));
    }
    let version = u32_at(image, p + 8);
    if version != 1 {
        return Err(GuestError::NotSeqWriter(format!(
            "layout version {version}; this verifier knows version 1"
        )));
    }
    let ring_lba = u32_at(image, p + 12);
    let params = GuestParams {
        ring_blocks: u32_at(image, p + 16),
        writes_per_tick: u16::from_le_bytes([image[p + 20], image[p + 21]]),
        print_every: u16::from_le_bytes([image[p + 22], image[p + 23]]),
    };
    if (ring_lba as usize) * 512 < CODE_BYTES || params.ring_blocks == 0 {
        return Err(GuestError::NotSeqWriter(format!(
            "ring at sector {ring_lba} with {} blocks",
            params.ring_blocks
        )));
    }
    Ok(Layout { ring_lba, params })
}

/// The checksum of a block (its checksum field read as 0).
pub fn checksum(block: &[u8]) -> u32 {
    let mut c = CHECKSUM_SEED;
    for (k, w) in block.chunks_exact(4).enumerate().take(WORDS) {
        let w = if k == CHECKSUM_WORD {
            0
        } else {
            u32::from_le_bytes([w[0], w[1], w[2], w[3]])
        };
        c = c.rotate_left(7).wrapping_add(w);
    }
    c
}

fn filler_word(seq: u64, k: usize) -> u32 {
    (seq as u32).wrapping_add(k as u32).wrapping_mul(FILL_MUL)
}

/// The block the guest writes for record `seq` of boot `boot` in a ring of `ring_blocks`.
pub fn record(seq: u64, boot: u32, ring_blocks: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    let block = ((seq.max(1) - 1) % u64::from(ring_blocks.max(1))) as u32;
    b[..8].copy_from_slice(RECORD_MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..20].copy_from_slice(&boot.to_le_bytes());
    b[24..28].copy_from_slice(&block.to_le_bytes());
    for k in FIRST_FILLER_WORD..WORDS {
        b[k * 4..k * 4 + 4].copy_from_slice(&filler_word(seq, k).to_le_bytes());
    }
    let c = checksum(&b);
    b[20..24].copy_from_slice(&c.to_le_bytes());
    b
}

/// What one ring block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// No record magic.
    Empty,
    /// A whole record.
    Valid {
        seq: u64,
        boot: u32,
        says_block: u32,
    },
    /// Record magic, but checksum or filler wrong.
    Damaged { header_seq: u64, why: &'static str },
}

fn read_slot(b: &[u8]) -> Slot {
    if &b[..8] != RECORD_MAGIC {
        return Slot::Empty;
    }
    let header_seq = u64_at(b, 8);
    if checksum(b) != u32_at(b, 20) {
        return Slot::Damaged {
            header_seq,
            why: "checksum mismatch",
        };
    }
    if u32_at(b, 28) != 0
        || (FIRST_FILLER_WORD..WORDS).any(|k| u32_at(b, k * 4) != filler_word(header_seq, k))
    {
        return Slot::Damaged {
            header_seq,
            why: "filler does not match the sequence number",
        };
    }
    if header_seq == 0 {
        return Slot::Damaged {
            header_seq,
            why: "sequence number 0",
        };
    }
    Slot::Valid {
        seq: header_seq,
        boot: u32_at(b, 16),
        says_block: u32_at(b, 24),
    }
}

/// One way a disk differs from "exactly the writes 1..M".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingProblem {
    /// No record where record `expected` should be.
    Missing {
        /// Ring block.
        block: u32,
        /// The record that belongs there.
        expected: u64,
    },
    /// A whole record that does not belong there (stale, or written after a lost one).
    Unexpected {
        /// Ring block.
        block: u32,
        /// The record that belongs there (None: the block should be empty).
        expected: Option<u64>,
        /// The record found.
        found: u64,
    },
    /// Record magic, but the block is torn or garbled.
    Damaged {
        /// Ring block.
        block: u32,
        /// The sequence number in its header.
        header_seq: u64,
        /// What is wrong.
        why: &'static str,
        /// It is the write of record `max_seq + 1`, cut by a crash.
        in_flight: bool,
    },
    /// A whole record in the wrong block.
    Misdirected {
        /// Ring block.
        block: u32,
        /// The record.
        seq: u64,
        /// The block the record says it belongs to.
        says_block: u32,
    },
    /// Boot numbers go down as sequence numbers go up.
    BootOrder {
        /// Ring block.
        block: u32,
        /// The record.
        seq: u64,
        /// Its boot number.
        boot: u32,
        /// The boot number of the record before it.
        previous_boot: u32,
    },
}

impl fmt::Display for RingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingProblem::Missing { block, expected } => {
                write!(f, "block {block}: record {expected} missing")
            }
            RingProblem::Unexpected {
                block,
                expected: Some(e),
                found,
            } => write!(f, "block {block}: record {found} where record {e} belongs"),
            RingProblem::Unexpected {
                block,
                expected: None,
                found,
            } => write!(f, "block {block}: record {found} where no record belongs"),
            RingProblem::Damaged {
                block,
                header_seq,
                why,
                in_flight,
            } => {
                write!(
                    f,
                    "block {block}: damaged record (header says {header_seq}): {why}"
                )?;
                if *in_flight {
                    f.write_str(" (the in-flight write)")?;
                }
                Ok(())
            }
            RingProblem::Misdirected {
                block,
                seq,
                says_block,
            } => write!(
                f,
                "block {block}: record {seq}, which belongs in block {says_block}"
            ),
            RingProblem::BootOrder {
                block,
                seq,
                boot,
                previous_boot,
            } => write!(
                f,
                "block {block}: record {seq} has boot {boot} after boot {previous_boot}"
            ),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingReport {
    /// The disk's layout.
    pub layout: Layout,
    /// N: the highest sequence number for which the ring holds every record it can still hold
    /// of the writes 1..N (0: none).
    pub last_seq: u64,
    /// The boot number of record N (0 when N is 0).
    pub last_boot: u32,
    /// M: the highest sequence number of a whole, rightly placed record (0: none).
    pub max_seq: u64,
    /// Every difference from "exactly the writes 1..M".
    pub problems: Vec<RingProblem>,
}

impl RingReport {
    /// The disk holds exactly the writes 1..N: nothing missing, damaged or beyond N.
    pub fn is_exact(&self) -> bool {
        self.problems.is_empty() && self.last_seq == self.max_seq
    }

    /// Exact, except possibly the torn block of write N + 1 cut by a crash.
    pub fn is_crash_consistent(&self) -> bool {
        self.last_seq == self.max_seq
            && self.problems.iter().all(|p| {
                matches!(
                    p,
                    RingProblem::Damaged {
                        in_flight: true,
                        ..
                    }
                )
            })
    }

    /// The disk holds exactly the writes 1..n (crash-consistently).
    pub fn holds_exactly(&self, n: u64) -> bool {
        self.is_crash_consistent() && self.last_seq == n
    }
}

impl fmt::Display for RingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "writes 1..{} (boot {}), highest record {}, ring of {} blocks",
            self.last_seq, self.last_boot, self.max_seq, self.layout.params.ring_blocks
        )?;
        if self.problems.is_empty() {
            return f.write_str(", consistent");
        }
        write!(f, ", {} problem(s):", self.problems.len())?;
        for p in self.problems.iter().take(20) {
            write!(f, "\n  {p}")?;
        }
        if self.problems.len() > 20 {
            write!(f, "\n  ... {} more", self.problems.len() - 20)?;
        }
        Ok(())
    }
}

/// The record ring block `i` holds after writes 1..m in a ring of `r` blocks.
fn expected_at(i: u64, m: u64, r: u64) -> Option<u64> {
    // The largest s <= m with (s - 1) mod r == i.
    if m < i + 1 {
        return None;
    }
    Some(m - (m - 1 - i) % r)
}

/// Verifies a whole seqwriter disk image (see the module doc for what is decided).
pub fn verify(image: &[u8]) -> Result<RingReport, GuestError> {
    let layout = parse_params(image)?;
    let r = layout.params.ring_blocks;
    if (image.len() as u64) < layout.disk_bytes() {
        return Err(GuestError::NotSeqWriter(format!(
            "{} bytes, but its ring of {r} blocks needs {}",
            image.len(),
            layout.disk_bytes()
        )));
    }
    let slots: Vec<Slot> = (0..r)
        .map(|i| {
            let off = layout.block_offset(i) as usize;
            read_slot(&image[off..off + BLOCK])
        })
        .collect();
    let r64 = u64::from(r);
    let placed = |i: usize, seq: u64, says: u32| says as usize == i && (seq - 1) % r64 == i as u64;

    // M, and N: the top of the highest run of consecutive records long enough to fill its window.
    let mut seqs: Vec<u64> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match *s {
            Slot::Valid {
                seq, says_block, ..
            } if placed(i, seq, says_block) => Some(seq),
            _ => None,
        })
        .collect();
    seqs.sort_unstable();
    let max_seq = seqs.last().copied().unwrap_or(0);
    let in_flight_block = (max_seq % r64) as usize;
    let in_flight =
        |i: usize, header_seq: u64| i == in_flight_block && header_seq == max_seq.wrapping_add(1);
    let mut last_seq = 0;
    let mut run_start = 0usize;
    for j in 0..seqs.len() {
        if j > 0 && seqs[j] != seqs[j - 1] + 1 {
            run_start = j;
        }
        let top = seqs[j];
        let run_len = (j - run_start + 1) as u64;
        let need = top.min(r64);
        // The oldest record of a full window may be the one the in-flight write is replacing.
        let torn_next = matches!(slots[(top % r64) as usize],
            Slot::Damaged { header_seq, .. } if header_seq == top + 1);
        if run_len >= need || (torn_next && top >= r64 && run_len + 1 >= need) {
            last_seq = top;
        }
    }

    let mut problems = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let block = i as u32;
        let expected = expected_at(i as u64, max_seq, r64);
        match *slot {
            Slot::Empty => {
                if let Some(e) = expected {
                    problems.push(RingProblem::Missing { block, expected: e });
                }
            }
            Slot::Damaged { header_seq, why } => problems.push(RingProblem::Damaged {
                block,
                header_seq,
                why,
                in_flight: in_flight(i, header_seq),
            }),
            Slot::Valid {
                seq, says_block, ..
            } if !placed(i, seq, says_block) => problems.push(RingProblem::Misdirected {
                block,
                seq,
                says_block,
            }),
            Slot::Valid { seq, .. } => {
                if expected != Some(seq) {
                    problems.push(RingProblem::Unexpected {
                        block,
                        expected,
                        found: seq,
                    });
                }
            }
        }
    }

    // Boot numbers never go down along the records of the window of N.
    let boot_of = |seq: u64| match slots[((seq - 1) % r64) as usize] {
        Slot::Valid { seq: s, boot, .. } if s == seq => Some(boot),
        _ => None,
    };
    let mut previous: Option<u32> = None;
    let window_start = last_seq.saturating_sub(r64 - 1).max(1);
    for seq in window_start..=last_seq {
        if let Some(boot) = boot_of(seq) {
            if let Some(prev) = previous.filter(|&p| boot < p) {
                problems.push(RingProblem::BootOrder {
                    block: ((seq - 1) % r64) as u32,
                    seq,
                    boot,
                    previous_boot: prev,
                });
            }
            previous = Some(boot);
        }
    }
    let last_boot = if last_seq == 0 {
        0
    } else {
        boot_of(last_seq).unwrap_or(0)
    };
    Ok(RingReport {
        layout,
        last_seq,
        last_boot,
        max_seq,
        problems,
    })
}

/// Reads and verifies a seqwriter disk image file.
pub fn verify_file(path: &Path) -> Result<RingReport, GuestError> {
    let image = std::fs::read(path).map_err(|source| GuestError::Io {
        path: path.to_owned(),
        source,
    })?;
    verify(&image)
}

/// The sequence numbers of the `seq N` lines of a serial log (complete lines only).
pub fn reported_seqs(serial: &str) -> impl Iterator<Item = u64> + '_ {
    complete_lines(serial).filter_map(|l| l.strip_prefix("seq ")?.trim().parse().ok())
}

/// The last `seq N` the guest printed.
pub fn last_reported_seq(serial: &str) -> Option<u64> {
    reported_seqs(serial).last()
}

/// The guest's boots in a serial log: `(boot B, resumed after seq M)` per
/// `seqwriter boot B after seq M` line.
pub fn boots(serial: &str) -> Vec<(u32, u64)> {
    complete_lines(serial)
        .filter_map(|l| {
            let rest = l.strip_prefix("seqwriter boot ")?;
            let (b, m) = rest.split_once(" after seq ")?;
            Some((b.trim().parse().ok()?, m.trim().parse().ok()?))
        })
        .collect()
}

/// The guest's error line (`seqwriter error ah=XX`), if it printed one.
pub fn error_line(serial: &str) -> Option<&str> {
    complete_lines(serial).find(|l| l.starts_with("seqwriter error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake disk: a code area with a parameter block, and records 1..=n of `boot` written.
    fn disk(ring: u32, n: u64) -> Vec<u8> {
        let mut img = vec![0u8; CODE_BYTES + ring as usize * BLOCK];
        let p = PARAMS_OFFSET;
        img[510] = 0x55;
        img[511] = 0xaa;
        img[p..p + 8].copy_from_slice(PARAMS_MAGIC);
        img[p + 8..p + 12].copy_from_slice(&1u32.to_le_bytes());
        img[p + 12..p + 16].copy_from_slice(&8u32.to_le_bytes());
        img[p + 16..p + 20].copy_from_slice(&ring.to_le_bytes());
        img[p + 22..p + 24].copy_from_slice(&16u16.to_le_bytes());
        for s in 1..=n {
            put(&mut img, ring, s, 1);
        }
        img
    }

    fn block_of(ring: u32, seq: u64) -> usize {
        CODE_BYTES + ((seq - 1) % u64::from(ring)) as usize * BLOCK
    }

    fn put(img: &mut [u8], ring: u32, seq: u64, boot: u32) {
        let off = block_of(ring, seq);
        img[off..off + BLOCK].copy_from_slice(&record(seq, boot, ring));
    }

    #[test]
    fn empty_partial_and_wrapped_rings_are_exact() {
        for (ring, n) in [(8, 0), (8, 5), (8, 8), (8, 21), (1, 7), (5, 100)] {
            let r = verify(&disk(ring, n)).unwrap();
            assert!(r.is_exact(), "ring {ring}, n {n}: {r}");
            assert_eq!((r.last_seq, r.max_seq), (n, n), "{r}");
            assert!(r.holds_exactly(n));
            assert_eq!(r.last_boot, u32::from(n > 0));
        }
    }

    #[test]
    fn a_lost_write_shows_as_missing_with_later_records_beyond_n() {
        let mut img = disk(16, 5);
        put(&mut img, 16, 7, 1); // 6 lost, 7 present
        let r = verify(&img).unwrap();
        assert_eq!((r.last_seq, r.max_seq), (5, 7), "{r}");
        assert_eq!(
            r.problems,
            [RingProblem::Missing {
                block: 5,
                expected: 6
            }]
        );
        assert!(!r.is_crash_consistent());
    }

    #[test]
    fn a_stale_block_in_a_wrapped_ring_is_reported() {
        // Ring of 4 after writes 1..9: blocks hold 9, 6, 7, 8. Write 10 never arrived: that
        // is just the earlier state "writes 1..9".
        let mut img = disk(4, 9);
        let r = verify(&img).unwrap();
        assert!(r.holds_exactly(9), "{r}");
        // Write 10 arrived (block 1) but block 2 holds record 3 instead of 7: no N explains it.
        put(&mut img, 4, 10, 1);
        put(&mut img, 4, 3, 1);
        let r = verify(&img).unwrap();
        assert_eq!(r.max_seq, 10);
        assert!(r.problems.contains(&RingProblem::Unexpected {
            block: 2,
            expected: Some(7),
            found: 3
        }));
        assert!(r.last_seq < 10, "{r}");
    }

    #[test]
    fn torn_in_flight_write_is_crash_consistent_other_damage_is_not() {
        let ring = 4;
        let mut img = disk(ring, 10);
        // Write 11 cut after its first sector: header of 11 over the old block of 7.
        let rec = record(11, 1, ring);
        let off = block_of(ring, 11);
        img[off..off + 512].copy_from_slice(&rec[..512]);
        let r = verify(&img).unwrap();
        assert_eq!((r.last_seq, r.max_seq), (10, 10), "{r}");
        assert!(!r.is_exact());
        assert!(r.is_crash_consistent(), "{r}");
        assert!(matches!(
            r.problems[..],
            [RingProblem::Damaged {
                block: 2,
                header_seq: 11,
                in_flight: true,
                ..
            }]
        ));

        // A flipped byte in an older record is damage, not a crash.
        let mut img = disk(ring, 10);
        img[block_of(ring, 8) + 3000] ^= 0x40;
        let r = verify(&img).unwrap();
        assert!(!r.is_crash_consistent(), "{r}");
        assert!(matches!(
            r.problems[..],
            [RingProblem::Damaged {
                block: 3,
                header_seq: 8,
                in_flight: false,
                ..
            }]
        ));
        assert!(r.to_string().contains("checksum mismatch"), "{r}");
    }

    #[test]
    fn filler_and_placement_are_checked() {
        let ring = 8;
        // Right checksum, wrong filler.
        let mut img = disk(ring, 3);
        let off = block_of(ring, 2);
        img[off + 100] ^= 1;
        let c = checksum(&img[off..off + BLOCK]);
        img[off + 20..off + 24].copy_from_slice(&c.to_le_bytes());
        let r = verify(&img).unwrap();
        assert!(r.to_string().contains("filler"), "{r}");
        // A whole record written to the wrong block.
        let mut img = disk(ring, 3);
        let rec = record(3, 1, ring);
        let off = block_of(ring, 5);
        img[off..off + BLOCK].copy_from_slice(&rec);
        let r = verify(&img).unwrap();
        assert!(
            r.problems.contains(&RingProblem::Misdirected {
                block: 4,
                seq: 3,
                says_block: 2
            }),
            "{r}"
        );
    }

    #[test]
    fn boots_must_not_go_backwards() {
        let ring = 8;
        let mut img = disk(ring, 0);
        for (s, b) in [(1, 1), (2, 1), (3, 2), (4, 1)] {
            put(&mut img, ring, s, b);
        }
        let r = verify(&img).unwrap();
        assert_eq!(r.last_seq, 4);
        assert_eq!(
            r.problems,
            [RingProblem::BootOrder {
                block: 3,
                seq: 4,
                boot: 1,
                previous_boot: 2
            }]
        );
        put(&mut img, ring, 4, 3);
        let r = verify(&img).unwrap();
        assert!(r.is_exact(), "{r}");
        assert_eq!(r.last_boot, 3);
    }

    #[test]
    fn not_a_seqwriter_disk() {
        assert!(matches!(
            verify(&[0u8; 100]),
            Err(GuestError::NotSeqWriter(_))
        ));
        assert!(matches!(
            verify(&vec![0u8; 8192]),
            Err(GuestError::NotSeqWriter(_))
        ));
        let mut img = disk(8, 1);
        img.truncate(CODE_BYTES + 3 * BLOCK);
        let e = verify(&img).unwrap_err();
        assert!(e.to_string().contains("needs"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut img = disk(4, 6);
        for (i, b) in img[CODE_BYTES..].iter_mut().enumerate() {
            if i % 7 == 3 {
                *b = (i * 31) as u8;
            }
        }
        let _ = verify(&img).unwrap();
        // Magic with seq 0 and u64::MAX headers.
        let mut img = disk(4, 0);
        for (blk, seq) in [(0usize, 0u64), (1, u64::MAX)] {
            let off = CODE_BYTES + blk * BLOCK;
            img[off..off + 8].copy_from_slice(RECORD_MAGIC);
            img[off + 8..off + 16].copy_from_slice(&seq.to_le_bytes());
        }
        let r = verify(&img).unwrap();
        assert_eq!(r.last_seq, 0);
        assert_eq!(r.problems.len(), 2, "{r}");
    }

    #[test]
    fn serial_parsing() {
        let log = "seqwriter boot 2 after seq 40\r\nseq 48\r\nseq 64\r\nseq 8";
        assert_eq!(reported_seqs(log).collect::<Vec<_>>(), [48, 64]);
        assert_eq!(last_reported_seq(log), Some(64));
        assert_eq!(boots(log), [(2, 40)]);
        assert_eq!(
            error_line("seqwriter error ah=01\r\n"),
            Some("seqwriter error ah=01")
        );
    }

    #[test]
    fn expected_at_matches_ring_semantics() {
        assert_eq!(expected_at(0, 0, 4), None);
        assert_eq!(expected_at(2, 2, 4), None);
        assert_eq!(expected_at(1, 2, 4), Some(2));
        assert_eq!(expected_at(0, 10, 4), Some(9));
        assert_eq!(expected_at(1, 10, 4), Some(10));
        assert_eq!(expected_at(2, 10, 4), Some(7));
        assert_eq!(expected_at(3, 10, 4), Some(8));
    }
}
