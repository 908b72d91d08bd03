//! The region store's object decoders on arbitrary bytes: a chunk, an index page, a root, a
//! zstd-wrapped journal segment, and a point record. None may panic or allocate without
//! bound; a chunk that decodes must hash to its id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_store::format::{
    decode_chunk, decode_page, decode_root, decode_stored_segment, ObjectId,
};

fuzz_target!(|data: &[u8]| {
    let id = ObjectId::of(data);
    if let Ok(plain) = decode_chunk(data, &id, 1 << 20) {
        assert_eq!(ObjectId::of(&plain), id);
    }
    let _ = decode_page(data);
    let _ = decode_root(data);
    if let Ok(seg) = decode_stored_segment(data) {
        let _ = lifeboat_journal::parse_segment(&seg);
    }
    let _ = serde_json::from_slice::<lifeboat_store::PointRecord>(data);
});
