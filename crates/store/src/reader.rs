//! [`DiskReader`]: random access to one disk of a point.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::error::{FormatError, Result, StoreError};
use crate::format::{page_key, Entry, ObjectId, Root};
use crate::store::Store;

/// Reads one disk of a recovery point: every byte is verified (BLAKE3) before it is returned;
/// zero chunks are synthesized. Keeps the index pages it has read and a small LRU of chunks.
/// `Send + Sync`; concurrent reads are fine (the caches are behind mutexes, never held across
/// an await).
#[derive(Debug)]
pub struct DiskReader {
    store: Store,
    root_id: ObjectId,
    root: Root,
    pages: Mutex<HashMap<usize, Arc<Vec<Entry>>>>,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
    capacity: usize,
}

impl DiskReader {
    pub(crate) fn new(store: Store, root_id: ObjectId, root: Root) -> Self {
        let capacity = store.config.reader_cache_chunks.max(1);
        DiskReader {
            store,
            root_id,
            root,
            pages: Mutex::new(HashMap::new()),
            cache: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// The disk size in bytes.
    pub fn size(&self) -> u64 {
        self.root.disk_size
    }

    /// The chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.root.chunk_size
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.root.chunk_count()
    }

    /// The root manifest's id.
    pub fn root_id(&self) -> ObjectId {
        self.root_id
    }

    async fn page(&self, p: usize) -> Result<Arc<Vec<Entry>>> {
        if let Some(e) = self.pages.lock().ok().and_then(|m| m.get(&p).cloned()) {
            return Ok(e);
        }
        let id = self.root.pages.get(p).copied().ok_or_else(|| {
            StoreError::InvalidArgument(format!("index page {p} is past the end of the disk"))
        })?;
        let entries = self.store.get_page(&id).await?;
        if entries.len() != self.root.entries_in_page(p) {
            return Err(StoreError::corrupt(
                page_key(&id),
                FormatError::Invalid {
                    field: "page entry count (for its disk)",
                    value: entries.len().to_string(),
                },
            ));
        }
        let entries = Arc::new(entries);
        if let Ok(mut m) = self.pages.lock() {
            m.insert(p, entries.clone());
        }
        Ok(entries)
    }

    /// What chunk `i` is: zero, or a stored chunk.
    pub async fn entry(&self, i: u64) -> Result<Entry> {
        if i >= self.chunk_count() {
            return Err(StoreError::InvalidArgument(format!(
                "chunk {i} is past the end of the disk ({} chunks)",
                self.chunk_count()
            )));
        }
        let per = self.root.page_entries as u64;
        let page = self.page((i / per) as usize).await?;
        page.get((i % per) as usize)
            .copied()
            .ok_or_else(|| StoreError::InvalidArgument(format!("chunk {i} not in its page")))
    }

    /// The plain data of chunk `i` (the last chunk may be shorter than the chunk size).
    pub async fn read_chunk(&self, i: u64) -> Result<Arc<Vec<u8>>> {
        if let Ok(mut c) = self.cache.lock() {
            if let Some(pos) = c.iter().position(|(k, _)| *k == i) {
                if let Some(hit) = c.remove(pos) {
                    let data = hit.1.clone();
                    c.push_front(hit);
                    return Ok(data);
                }
            }
        }
        let len = self.root.chunk_len(i);
        let data = match self.entry(i).await? {
            Entry::Zero => Arc::new(vec![0u8; len]),
            Entry::Chunk(id) => {
                let d = self.store.get_chunk(&id, len).await?;
                if d.len() != len {
                    return Err(StoreError::corrupt(
                        crate::format::chunk_key(&id),
                        FormatError::Invalid {
                            field: "chunk length (for its disk position)",
                            value: d.len().to_string(),
                        },
                    ));
                }
                Arc::new(d)
            }
        };
        if let Ok(mut c) = self.cache.lock() {
            c.push_front((i, data.clone()));
            c.truncate(self.capacity);
        }
        Ok(data)
    }

    /// Reads from `offset` into `buf`; returns the number of bytes read (less than `buf.len()`
    /// only at the end of the disk, 0 at or past it).
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.size();
        if offset >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - offset) as usize;
        let cs = self.root.chunk_size as u64;
        let mut done = 0usize;
        while done < n {
            let pos = offset + done as u64;
            let i = pos / cs;
            let within = (pos % cs) as usize;
            let chunk = self.read_chunk(i).await?;
            let take = (chunk.len() - within).min(n - done);
            buf[done..done + take].copy_from_slice(&chunk[within..within + take]);
            done += take;
        }
        Ok(n)
    }
}
