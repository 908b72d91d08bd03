//! Property tests of the pure wire-format code: no parser panics on any input, and what the
//! encoders write the parsers read back unchanged.

use lifeboat_nbd::proto::*;
use lifeboat_nbd::Extent;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:/._ -]{0,40}"
}

fn client_option() -> impl Strategy<Value = ClientOption> {
    prop_oneof![
        name().prop_map(ClientOption::ExportName),
        Just(ClientOption::Abort),
        Just(ClientOption::List),
        Just(ClientOption::StructuredReply),
        (name(), prop::collection::vec(any::<u16>(), 0..8)).prop_map(|(name, info_requests)| {
            ClientOption::Info(ExportRequest {
                name,
                info_requests,
            })
        }),
        (name(), prop::collection::vec(any::<u16>(), 0..8)).prop_map(|(name, info_requests)| {
            ClientOption::Go(ExportRequest {
                name,
                info_requests,
            })
        }),
        (name(), prop::collection::vec(name(), 0..5)).prop_map(|(export, queries)| {
            ClientOption::ListMetaContext(MetaContextRequest { export, queries })
        }),
        (name(), prop::collection::vec(name(), 0..5)).prop_map(|(export, queries)| {
            ClientOption::SetMetaContext(MetaContextRequest { export, queries })
        }),
        (12u32..1000).prop_map(ClientOption::Unknown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), option in any::<u32>()) {
        let _ = parse_greeting(&bytes);
        let _ = parse_client_flags(&bytes);
        let _ = OptionHeader::parse(&bytes);
        let _ = parse_option(option, &bytes);
        for opt in 1..=12 {
            let _ = parse_option(opt, &bytes);
        }
        let _ = Request::parse(&bytes);
        let _ = complete_request_buffered(&bytes);
        let _ = OptionReplyHeader::parse(&bytes);
        let _ = parse_info_reply(&bytes);
        let _ = SimpleReply::parse(&bytes);
        let _ = ChunkHeader::parse(&bytes);
        let _ = parse_error_chunk(&bytes);
        let _ = parse_block_status(&bytes);
    }

    #[test]
    fn request_round_trip(flags in any::<u16>(), cmd in any::<u16>(), handle in any::<u64>(),
                          offset in any::<u64>(), length in any::<u32>()) {
        let r = Request { flags, command: Command::from_u16(cmd), handle, offset, length };
        let bytes = r.encode();
        prop_assert_eq!(Request::parse(&bytes), Ok(r));
        prop_assert_eq!(Command::from_u16(cmd).to_u16(), cmd);
        // Any other length is refused.
        prop_assert!(Request::parse(&bytes[..27]).is_err());
    }

    #[test]
    fn option_round_trip(opt in client_option()) {
        let mut out = Vec::new();
        opt.encode(&mut out).unwrap();
        let header = OptionHeader::parse(&out[..OPTION_HEADER_LEN]).unwrap();
        prop_assert_eq!(header.option, opt.code());
        prop_assert_eq!(header.length as usize, out.len() - OPTION_HEADER_LEN);
        prop_assert_eq!(parse_option(header.option, &out[OPTION_HEADER_LEN..]), Ok(opt.clone()));
        // A truncated payload is an error for options that have one, never a panic.
        if out.len() > OPTION_HEADER_LEN + 1 {
            let _ = parse_option(header.option, &out[OPTION_HEADER_LEN..out.len() - 1]);
        }
    }

    #[test]
    fn client_flags_round_trip(fixed in any::<bool>(), no_zeroes in any::<bool>(), junk in 2u32..32) {
        let f = ClientFlags { fixed_newstyle: fixed, no_zeroes };
        prop_assert_eq!(parse_client_flags(&f.bits().to_be_bytes()), Ok(f));
        prop_assert!(parse_client_flags(&(f.bits() | 1 << junk).to_be_bytes()).is_err());
    }

    #[test]
    fn reply_round_trips(handle in any::<u64>(), error in any::<u32>(), msg in ".{0,64}",
                         option in any::<u32>(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let s = encode_simple_reply(error, handle);
        prop_assert_eq!(SimpleReply::parse(&s), Ok(SimpleReply { error, handle }));

        let mut out = Vec::new();
        encode_error_chunk(&mut out, handle, error, &msg);
        let h = ChunkHeader::parse(&out[..CHUNK_HEADER_LEN]).unwrap();
        prop_assert_eq!((h.handle, h.kind, h.flags), (handle, NBD_REPLY_TYPE_ERROR, NBD_REPLY_FLAG_DONE));
        prop_assert_eq!(h.length as usize, out.len() - CHUNK_HEADER_LEN);
        // NUL is not allowed in NBD strings: the encoder replaces it.
        prop_assert_eq!(parse_error_chunk(&out[CHUNK_HEADER_LEN..]), Ok((error, msg.replace('\0', " "))));

        let mut out = Vec::new();
        encode_option_reply(&mut out, option, NBD_REP_ACK, &payload).unwrap();
        let h = OptionReplyHeader::parse(&out[..OPTION_REPLY_HEADER_LEN]).unwrap();
        prop_assert_eq!((h.option, h.reply_type, h.length as usize), (option, NBD_REP_ACK, payload.len()));
        prop_assert_eq!(&out[OPTION_REPLY_HEADER_LEN..], &payload[..]);

        let h = encode_offset_data_header(NBD_REPLY_FLAG_DONE, handle, 77, payload.len()).unwrap();
        let c = ChunkHeader::parse(&h[..CHUNK_HEADER_LEN]).unwrap();
        prop_assert_eq!(c.length as usize, payload.len() + 8);
        prop_assert_eq!(&h[CHUNK_HEADER_LEN..], &77u64.to_be_bytes());
    }

    #[test]
    fn info_round_trips(size in any::<u64>(), flags in any::<u16>(), name in name(),
                        min in any::<u32>(), pref in any::<u32>(), max in any::<u32>()) {
        let mut out = Vec::new();
        encode_info_export(&mut out, NBD_OPT_GO, size, flags);
        prop_assert_eq!(parse_info_reply(&out[OPTION_REPLY_HEADER_LEN..]), Ok(InfoReply::Export { size, flags }));
        let mut out = Vec::new();
        encode_info_string(&mut out, NBD_OPT_GO, NBD_INFO_NAME, &name).unwrap();
        prop_assert_eq!(parse_info_reply(&out[OPTION_REPLY_HEADER_LEN..]), Ok(InfoReply::Name(name.clone())));
        let mut out = Vec::new();
        encode_info_block_size(&mut out, NBD_OPT_GO, min, pref, max);
        prop_assert_eq!(parse_info_reply(&out[OPTION_REPLY_HEADER_LEN..]),
                        Ok(InfoReply::BlockSize { min, preferred: pref, max }));
    }

    #[test]
    fn descriptors_respect_the_request(
        extents in prop::collection::vec((0u64..1 << 34, any::<bool>(), any::<bool>()), 0..40),
        length in 1u32.., req_one in any::<bool>(), max in 1usize..20, handle in any::<u64>()
    ) {
        let ext: Vec<Extent> = extents.iter().map(|&(length, hole, zero)| Extent { length, hole, zero }).collect();
        let d = extents_to_descriptors(&ext, length, req_one, max);
        prop_assert!(!d.is_empty());
        let cap = if req_one { 1 } else { max };
        prop_assert!(d.len() <= cap);
        prop_assert!(d.iter().all(|x| x.length > 0));
        prop_assert!(d.iter().map(|x| u64::from(x.length)).sum::<u64>() <= u64::from(length));
        prop_assert!(d.windows(2).all(|w| w[0].status != w[1].status));
        let mut out = Vec::new();
        encode_block_status(&mut out, handle, 1, &d).unwrap();
        let h = ChunkHeader::parse(&out[..CHUNK_HEADER_LEN]).unwrap();
        prop_assert_eq!(h.kind, NBD_REPLY_TYPE_BLOCK_STATUS);
        prop_assert_eq!(parse_block_status(&out[CHUNK_HEADER_LEN..]), Ok((1, d)));
    }
}
