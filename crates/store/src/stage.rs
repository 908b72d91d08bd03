//! Chunks staged straight from an image file into a local-directory store.
//!
//! Reading a 4 MiB chunk into memory, hashing it and writing it out again moves it through
//! main memory three times; on the 2-vCPU VMs we measure on, that cost more than the copying
//! itself (a 4 MiB-buffer copy took 2-3x the CPU of a 256 KiB one). A [`ChunkStager`] instead
//! streams a chunk in [`PIECE`]-sized pieces that stay in the CPU's cache: each piece is read,
//! zero-checked, hashed and written at its place in a staging file (`chunks/staged-<pid>#<n>`,
//! a name listings skip and GC removes when a crash leaves it); then the header goes at the
//! front and the file is published under the chunk's key ([`crate::bulk::publish`], create
//! only). The object is byte for byte what [`crate::PreparedChunk::new`] would store for an
//! incompressible chunk, so readers, verify and GC see no difference.
//!
//! A chunk that would compress (the first 8 KiB of an even piece shrinks under zstd) or that
//! is partly zero is left to the in-memory path ([`ChunkStager::stage`] returns `None`), as is
//! a store that is not a local directory. A chunk already stored and fresh is kept and the
//! staging file dropped; one older than the writer is replaced by the staging file (same
//! bytes) so that its age protects it from GC, as [`crate::PointWriter`] does for every
//! object. Nothing is fsynced here: the writer syncs the keys with the rest of its batch,
//! before its first index page.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::backend::{PutMode, PutOutcome};
use crate::bulk::{new_staging, publish, start_writeback};
use crate::format::{
    chunk_header, chunk_key, is_zero, sample_compresses, ObjectId, CHUNK_HEADER_LEN,
};
use crate::writer::{PreparedChunk, Stored};

/// The piece a chunk is streamed in: small enough to stay in a core's L2 cache.
pub const PIECE: usize = 256 << 10;
/// The sample of each piece tried with zstd.
const SAMPLE: usize = 8 << 10;

/// Writes chunks of an image straight into a local-directory store (see the module doc);
/// from [`crate::PointWriter::stager`], used on blocking threads.
#[derive(Debug, Clone)]
pub struct ChunkStager {
    root: PathBuf,
    level: i32,
    /// Objects modified before this are older than the writer (see [`Stored::Rewritten`]).
    fresh_since: SystemTime,
}

/// What streaming a chunk found.
enum Filled {
    Zero,
    /// Compressible or partly zero: for the in-memory path.
    NotStaged,
    Data(ObjectId),
}

thread_local! {
    /// Each thread's piece buffer.
    static PIECE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl ChunkStager {
    pub(crate) fn new(root: PathBuf, level: i32, fresh_since: SystemTime) -> Self {
        ChunkStager {
            root,
            level,
            fresh_since,
        }
    }

    /// Streams the `len` bytes of `file` at `start` into the store as one chunk (see the module
    /// doc). `Ok(None)`: the chunk would compress or is partly zero; prepare it in memory
    /// ([`PreparedChunk::from_buf`]) instead. A short read (the image shrank) is an error.
    pub fn stage(&self, file: &File, start: u64, len: usize) -> io::Result<Option<PreparedChunk>> {
        PIECE_BUF.with(|cell| {
            let mut buf = cell
                .try_borrow_mut()
                .map_err(|_| io::Error::other("chunk stager re-entered on one thread"))?;
            if buf.len() < PIECE {
                buf.resize(PIECE, 0);
            }
            self.stage_with(&mut buf, file, start, len)
        })
    }

    fn stage_with(
        &self,
        buf: &mut [u8],
        file: &File,
        start: u64,
        len: usize,
    ) -> io::Result<Option<PreparedChunk>> {
        let name = self
            .root
            .join("chunks")
            .join(format!("staged-{}", std::process::id()));
        let (out, staging) = new_staging(&name)?;
        let filled = self.fill(buf, file, start, len, &out);
        let id = match filled {
            Ok(Filled::Data(id)) => id,
            other => {
                drop(out);
                let _ = std::fs::remove_file(&staging);
                return match other? {
                    Filled::Zero => Ok(Some(PreparedChunk::zero(len))),
                    _ => Ok(None),
                };
            }
        };
        start_writeback(&out);
        drop(out);
        let key = chunk_key(&id);
        let path = self.root.join(&key);
        // As the writer's own puts: a fresh object is kept, an older one replaced (same bytes)
        // for its age, else created (a create that loses a race finds a fresh object).
        let existing = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let stored = match existing {
            Some(t) if t >= self.fresh_since => {
                let _ = std::fs::remove_file(&staging);
                Stored::Found
            }
            Some(_) => {
                publish(&staging, &path, PutMode::Overwrite)?;
                Stored::Rewritten
            }
            None => match publish(&staging, &path, PutMode::Create)? {
                PutOutcome::Written => Stored::New((CHUNK_HEADER_LEN + len) as u64),
                PutOutcome::AlreadyExists => Stored::Found,
            },
        };
        Ok(Some(PreparedChunk::staged(len, id, key, stored)))
    }

    /// Streams the chunk through `buf` into `out` (payload after the header's room, then the
    /// header), hashing it; stops early when it is not for staging.
    fn fill(
        &self,
        buf: &mut [u8],
        file: &File,
        start: u64,
        len: usize,
        out: &File,
    ) -> io::Result<Filled> {
        let mut hasher = blake3::Hasher::new();
        let (mut zero_pieces, mut data_pieces) = (0usize, 0usize);
        let mut at = 0usize;
        let piece_len = buf.len();
        while at < len {
            let n = (len - at).min(piece_len);
            let piece = &mut buf[..n];
            file.read_exact_at(piece, start + at as u64)?;
            if is_zero(piece) {
                zero_pieces += 1;
            } else {
                data_pieces += 1;
                // Every other piece's first 8 KiB: eight samples of a 4 MiB chunk, as the
                // in-memory path takes.
                if (at / piece_len).is_multiple_of(2)
                    && sample_compresses(&piece[..n.min(SAMPLE)], self.level)
                {
                    return Ok(Filled::NotStaged);
                }
            }
            if zero_pieces > 0 && data_pieces > 0 {
                return Ok(Filled::NotStaged);
            }
            hasher.update(piece);
            if data_pieces > 0 {
                out.write_all_at(piece, (CHUNK_HEADER_LEN + at) as u64)?;
            }
            at += n;
        }
        if data_pieces == 0 {
            return Ok(Filled::Zero);
        }
        let id = ObjectId(*hasher.finalize().as_bytes());
        out.write_all_at(&chunk_header(len, false, len, &id), 0)?;
        Ok(Filled::Data(id))
    }
}
