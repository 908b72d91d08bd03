//! The pure parsers: request header, option header and payloads, client flags, reply parsers,
//! and the extent-to-descriptor conversion. None may panic; what parses must re-encode to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_nbd::proto::*;
use lifeboat_nbd::Extent;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::parse(data) {
        assert_eq!(&req.encode()[..], data);
    }
    let _ = complete_request_buffered(data);
    if data.len() >= REQUEST_LEN {
        let _ = Request::parse(&data[..REQUEST_LEN]);
    }
    let _ = parse_client_flags(data);
    if let Ok(h) = OptionHeader::parse(data) {
        assert_eq!(&h.encode()[..], data);
    }
    if data.len() >= 4 {
        let option = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let payload = &data[4..];
        for code in [option, option % 16] {
            if let Ok(opt) = parse_option(code, payload) {
                // Known options re-encode to an equal option.
                let mut out = Vec::new();
                if opt.encode(&mut out).is_ok() {
                    let h = OptionHeader::parse(&out[..OPTION_HEADER_LEN]).unwrap();
                    let again = parse_option(h.option, &out[OPTION_HEADER_LEN..]);
                    match &opt {
                        ClientOption::Unknown(_) => {}
                        _ => assert_eq!(again.as_ref(), Ok(&opt)),
                    }
                }
            }
        }
    }
    let _ = parse_greeting(data);
    let _ = OptionReplyHeader::parse(data);
    let _ = parse_info_reply(data);
    let _ = SimpleReply::parse(data);
    let _ = ChunkHeader::parse(data);
    let _ = parse_error_chunk(data);
    let _ = parse_block_status(data);

    // Extents from the bytes: 9 bytes each (length, flags).
    let extents: Vec<Extent> = data
        .chunks_exact(9)
        .map(|c| Extent {
            length: u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            hole: c[8] & 1 != 0,
            zero: c[8] & 2 != 0,
        })
        .collect();
    let length = data.first().map_or(1, |&b| u32::from(b) << 16 | 1);
    for req_one in [false, true] {
        let d = extents_to_descriptors(&extents, length, req_one, 64);
        assert!(!d.is_empty());
        assert!(d.iter().map(|x| u64::from(x.length)).sum::<u64>() <= u64::from(length));
        let mut out = Vec::new();
        encode_block_status(&mut out, 1, 1, &d).unwrap();
        assert_eq!(parse_block_status(&out[CHUNK_HEADER_LEN..]).map(|x| x.1), Ok(d));
    }
});
