//! Malformed and hostile input, each over a raw socket: the exact reply or error code, or that
//! the connection was closed, and that the server still serves a new connection afterwards.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lifeboat_nbd::proto::*;
use lifeboat_nbd::{BlockDevice, Export, MemDevice, ServerConfig};

const SIZE: usize = 1 << 20;

#[test]
fn client_without_fixed_newstyle_is_refused() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::connect(&srv.socket);
    c.greeting();
    c.send(&0u32.to_be_bytes());
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn unknown_client_flags_are_refused() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::connect(&srv.socket);
    c.greeting();
    c.send(&(NBD_FLAG_C_FIXED_NEWSTYLE | 1 << 7).to_be_bytes());
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn bad_option_magic_disconnects() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    let mut h = OptionHeader {
        option: NBD_OPT_LIST,
        length: 0,
    }
    .encode();
    h[7] = b'X'; // "IHAVEOPX"
    c.send(&h);
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn option_longer_than_cap_gets_too_big_then_disconnect() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    let len = ServerConfig::default().max_option_len + 1;
    c.send(
        &OptionHeader {
            option: NBD_OPT_GO,
            length: len,
        }
        .encode(),
    );
    let (h, msg) = c.option_reply();
    assert_eq!(h.option, NBD_OPT_GO);
    assert_eq!(h.reply_type, NBD_REP_ERR_TOO_BIG);
    assert!(String::from_utf8_lossy(&msg).contains("more than"));
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn unknown_option_gets_unsup_and_negotiation_continues() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    c.option(&ClientOption::Unknown(4242));
    let (h, _) = c.option_reply();
    assert_eq!((h.option, h.reply_type), (4242, NBD_REP_ERR_UNSUP));
    // STARTTLS is not implemented either.
    c.option(&ClientOption::Unknown(NBD_OPT_STARTTLS));
    let (h, _) = c.option_reply();
    assert_eq!(h.reply_type, NBD_REP_ERR_UNSUP);
    c.option(&ClientOption::Go(ExportRequest {
        name: "disk".into(),
        info_requests: vec![],
    }));
    let (h, _) = c.option_reply();
    assert_eq!(h.reply_type, NBD_REP_INFO);
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn go_for_missing_export_gets_unknown_and_negotiation_continues() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    c.option(&ClientOption::Go(ExportRequest {
        name: "nope".into(),
        info_requests: vec![],
    }));
    let (h, msg) = c.option_reply();
    assert_eq!((h.option, h.reply_type), (NBD_OPT_GO, NBD_REP_ERR_UNKNOWN));
    assert!(String::from_utf8_lossy(&msg).contains("nope"));
    c.option(&ClientOption::Go(ExportRequest {
        name: "disk".into(),
        info_requests: vec![],
    }));
    let (h, p) = c.option_reply();
    assert_eq!(h.reply_type, NBD_REP_INFO);
    assert!(
        matches!(parse_info_reply(&p), Ok(InfoReply::Export { size, .. }) if size == SIZE as u64)
    );
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn export_name_for_missing_export_disconnects() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    c.option(&ClientOption::ExportName("nope".into()));
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn malformed_go_payload_gets_invalid() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    // Name length says 100 but only 3 bytes follow.
    let mut payload = 100u32.to_be_bytes().to_vec();
    payload.extend_from_slice(b"abc");
    c.send(
        &OptionHeader {
            option: NBD_OPT_GO,
            length: payload.len() as u32,
        }
        .encode(),
    );
    c.send(&payload);
    let (h, _) = c.option_reply();
    assert_eq!(h.reply_type, NBD_REP_ERR_INVALID);
    c.option(&ClientOption::Abort);
    let (h, _) = c.option_reply();
    assert_eq!(h.reply_type, NBD_REP_ACK);
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn meta_context_without_structured_replies_is_invalid() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    c.option(&ClientOption::SetMetaContext(MetaContextRequest {
        export: "disk".into(),
        queries: vec![BASE_ALLOCATION.into()],
    }));
    let (h, _) = c.option_reply();
    assert_eq!(h.reply_type, NBD_REP_ERR_INVALID);
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn truncated_handshake_then_eof() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::start(&srv.socket);
    let h = OptionHeader {
        option: NBD_OPT_GO,
        length: 20,
    }
    .encode();
    c.send(&h);
    c.send(&[0, 0, 0]); // 3 of the 20 payload bytes
    c.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn bad_request_magic_disconnects() {
    let (srv, _) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    let mut r = Request {
        flags: 0,
        command: Command::Read,
        handle: 1,
        offset: 0,
        length: 512,
    }
    .encode();
    r[0] ^= 0xff;
    c.send(&r);
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn unknown_command_gets_einval_and_connection_stays_usable() {
    let (srv, _) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(0, Command::Unknown(99), 7, 0, 0);
    let r = c.simple_reply();
    assert_eq!((r.handle, r.error), (7, NBD_EINVAL));
    assert_eq!(c.write(8, 0, b"still here"), 0);
    assert_eq!(&c.read_simple(9, 0, 10), b"still here");
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn read_past_end_gets_einval_and_connection_stays_usable() {
    let (srv, _) = TestServer::mem(SIZE);
    // Simple replies.
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(0, Command::Read, 1, SIZE as u64 - 100, 512);
    let r = c.simple_reply();
    assert_eq!((r.handle, r.error), (1, NBD_EINVAL));
    c.request(0, Command::Read, 2, u64::MAX - 10, 512); // offset + length overflows
    assert_eq!(c.simple_reply().error, NBD_EINVAL);
    assert_eq!(c.read_simple(3, 0, 512).len(), 512);
    c.disconnect();
    // Structured replies: an error chunk with a message.
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", true, false);
    c.request(0, Command::Read, 4, SIZE as u64, 1);
    let (h, p) = c.chunk();
    assert_eq!(
        (h.handle, h.kind, h.flags),
        (4, NBD_REPLY_TYPE_ERROR, NBD_REPLY_FLAG_DONE)
    );
    let (err, msg) = parse_error_chunk(&p).unwrap();
    assert_eq!(err, NBD_EINVAL);
    assert!(msg.contains("past the end"), "{msg}");
    c.request(0, Command::Read, 5, 0, 4096);
    let (h, p) = c.chunk();
    assert_eq!(
        (h.handle, h.kind, h.length),
        (5, NBD_REPLY_TYPE_OFFSET_DATA, 4096 + 8)
    );
    assert_eq!(&p[..8], &0u64.to_be_bytes());
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn write_longer_than_cap_disconnects() {
    let dev = Arc::new(MemDevice::new(SIZE * 4));
    let cfg = ServerConfig {
        max_payload: 1 << 20,
        ..ServerConfig::default()
    };
    let srv = TestServer::start(vec![Export::new("disk", "", dev)], cfg);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(0, Command::Write, 1, 0, (1 << 20) + 1);
    assert!(c.closed());
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn read_longer_than_cap_gets_einval() {
    let dev = Arc::new(MemDevice::new(SIZE * 4));
    let cfg = ServerConfig {
        max_payload: 1 << 20,
        ..ServerConfig::default()
    };
    let srv = TestServer::start(vec![Export::new("disk", "", dev)], cfg);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(0, Command::Read, 1, 0, (1 << 20) + 1);
    assert_eq!(c.simple_reply().error, NBD_EINVAL);
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn write_to_read_only_export_gets_eperm_and_payload_is_drained() {
    let dev = Arc::new(MemDevice::from_bytes(vec![7u8; SIZE]).with_read_only(true));
    let srv = TestServer::start(
        vec![Export::new("ro", "", dev.clone())],
        ServerConfig::default(),
    );
    let (mut c, _, flags) = RawClient::negotiate(&srv.socket, "ro", false, false);
    assert_ne!(flags & NBD_FLAG_READ_ONLY, 0);
    assert_eq!(c.write(1, 0, &[1u8; 4096]), NBD_EPERM);
    c.request(0, Command::Trim, 2, 0, 4096);
    assert_eq!(c.simple_reply().error, NBD_EPERM);
    c.request(NBD_CMD_FLAG_NO_HOLE, Command::WriteZeroes, 3, 0, 4096);
    assert_eq!(c.simple_reply().error, NBD_EPERM);
    // The 4096 payload bytes were consumed, not taken for the next header.
    assert_eq!(c.read_simple(4, 0, 4096), vec![7u8; 4096]);
    assert!(dev.snapshot().iter().all(|&b| b == 7));
    c.disconnect();
    assert_still_serves(&srv.socket, "ro");
}

#[test]
fn write_past_end_gets_enospc_and_payload_is_drained() {
    let (srv, dev) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    assert_eq!(c.write(1, SIZE as u64 - 10, &[9u8; 20]), NBD_ENOSPC);
    c.request(0, Command::Trim, 2, SIZE as u64, 1);
    assert_eq!(c.simple_reply().error, NBD_EINVAL);
    assert_eq!(c.write(3, 0, &[5u8; 20]), 0);
    assert_eq!(c.read_simple(4, 0, 20), vec![5u8; 20]);
    assert!(dev.snapshot()[SIZE - 10..].iter().all(|&b| b == 0));
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn invalid_command_flags_get_einval() {
    let (srv, _) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    // DF without structured replies, REQ_ONE on a read, unknown bit on a write.
    c.request(NBD_CMD_FLAG_DF, Command::Read, 1, 0, 512);
    assert_eq!(c.simple_reply().error, NBD_EINVAL);
    c.request(NBD_CMD_FLAG_REQ_ONE, Command::Read, 2, 0, 512);
    assert_eq!(c.simple_reply().error, NBD_EINVAL);
    c.request(1 << 9, Command::Write, 3, 0, 4);
    c.send(b"abcd");
    assert_eq!(c.simple_reply().error, NBD_EINVAL);
    assert_eq!(c.read_simple(4, 0, 4), vec![0u8; 4]);
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn block_status_without_meta_context_gets_einval() {
    let (srv, _) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", true, false);
    c.request(0, Command::BlockStatus, 1, 0, 4096);
    let (h, p) = c.chunk();
    assert_eq!((h.handle, h.kind), (1, NBD_REPLY_TYPE_ERROR));
    assert_eq!(parse_error_chunk(&p).unwrap().0, NBD_EINVAL);
    // Still usable.
    c.request(0, Command::Flush, 2, 0, 0);
    let (handle, err, _) = c.any_reply();
    assert_eq!((handle, err), (2, 0));
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn block_status_reports_allocation_and_honours_req_one() {
    let (srv, dev) = TestServer::mem(SIZE);
    dev.write_at(8192, &[1u8; 4096], false).unwrap();
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", true, true);
    c.request(0, Command::BlockStatus, 1, 0, 16384);
    let (h, p) = c.chunk();
    assert_eq!(
        (h.handle, h.kind, h.flags),
        (1, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_FLAG_DONE)
    );
    let (id, d) = parse_block_status(&p).unwrap();
    assert_eq!(id, lifeboat_nbd::BASE_ALLOCATION_ID);
    let hz = NBD_STATE_HOLE | NBD_STATE_ZERO;
    assert_eq!(
        d,
        vec![
            BlockDescriptor {
                length: 8192,
                status: hz
            },
            BlockDescriptor {
                length: 4096,
                status: 0
            },
            BlockDescriptor {
                length: 4096,
                status: hz
            },
        ]
    );
    c.request(NBD_CMD_FLAG_REQ_ONE, Command::BlockStatus, 2, 0, 16384);
    let (_, p) = c.chunk();
    assert_eq!(
        parse_block_status(&p).unwrap().1,
        vec![BlockDescriptor {
            length: 8192,
            status: hz
        }]
    );
    c.request(0, Command::BlockStatus, 3, SIZE as u64 - 512, 1024);
    let (h, p) = c.chunk();
    assert_eq!(h.kind, NBD_REPLY_TYPE_ERROR);
    assert_eq!(parse_error_chunk(&p).unwrap().0, NBD_EINVAL);
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let dev = Arc::new(MemDevice::new(SIZE));
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(vec![Export::new("disk", "", dev)], cfg);
    let mut c = RawClient::connect(&srv.socket);
    c.greeting();
    let t = Instant::now();
    assert!(c.closed());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn silent_client_does_not_block_shutdown() {
    let dev = Arc::new(MemDevice::new(SIZE));
    let cfg = ServerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let srv = TestServer::start(vec![Export::new("disk", "", dev)], cfg);
    let _silent = std::os::unix::net::UnixStream::connect(&srv.socket).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // let the server accept it
    let took = srv.stop();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

#[test]
fn idle_connection_is_closed_at_shutdown() {
    let (srv, _) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    assert_eq!(c.write(1, 0, b"x"), 0);
    let took = srv.stop();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert!(c.closed());
}

#[test]
fn list_info_and_abort() {
    let a = Arc::new(MemDevice::new(SIZE));
    let b = Arc::new(MemDevice::new(2 * SIZE).with_read_only(true));
    let srv = TestServer::start(
        vec![Export::new("a", "first disk", a), Export::new("b", "", b)],
        ServerConfig::default(),
    );
    let mut c = RawClient::start(&srv.socket);
    c.option(&ClientOption::List);
    let mut names = Vec::new();
    loop {
        let (h, p) = c.option_reply();
        if h.reply_type == NBD_REP_ACK {
            break;
        }
        assert_eq!(h.reply_type, NBD_REP_SERVER);
        let n = u32::from_be_bytes(p[..4].try_into().unwrap()) as usize;
        names.push((
            String::from_utf8(p[4..4 + n].to_vec()).unwrap(),
            String::from_utf8(p[4 + n..].to_vec()).unwrap(),
        ));
    }
    assert_eq!(
        names,
        vec![
            ("a".into(), "first disk".into()),
            ("b".into(), String::new())
        ]
    );
    // The empty name is ambiguous with two exports.
    c.option(&ClientOption::Info(ExportRequest {
        name: String::new(),
        info_requests: vec![],
    }));
    assert_eq!(c.option_reply().0.reply_type, NBD_REP_ERR_UNKNOWN);
    c.option(&ClientOption::Info(ExportRequest {
        name: "a".into(),
        info_requests: vec![NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE],
    }));
    let mut infos = Vec::new();
    loop {
        let (h, p) = c.option_reply();
        if h.reply_type == NBD_REP_ACK {
            break;
        }
        assert_eq!((h.option, h.reply_type), (NBD_OPT_INFO, NBD_REP_INFO));
        infos.push(parse_info_reply(&p).unwrap());
    }
    assert!(infos.contains(&InfoReply::Name("a".into())));
    assert!(infos.contains(&InfoReply::Description("first disk".into())));
    assert!(infos.contains(&InfoReply::BlockSize {
        min: 1,
        preferred: 4096,
        max: 32 << 20
    }));
    let Some(InfoReply::Export { size, flags }) = infos
        .iter()
        .find(|i| matches!(i, InfoReply::Export { .. }))
        .cloned()
    else {
        panic!("no export info")
    };
    assert_eq!(size, SIZE as u64);
    assert_eq!(flags & NBD_FLAG_READ_ONLY, 0);
    assert_ne!(flags & NBD_FLAG_CAN_MULTI_CONN, 0);
    c.option(&ClientOption::Abort);
    assert_eq!(c.option_reply().0.reply_type, NBD_REP_ACK);
    assert!(c.closed());
    assert_still_serves(&srv.socket, "a");
}

#[test]
fn export_name_option_enters_transmission() {
    let (srv, _) = TestServer::mem(SIZE);
    let mut c = RawClient::connect(&srv.socket);
    c.greeting();
    // Without NO_ZEROES: 8 + 2 + 124 bytes.
    c.send(&NBD_FLAG_C_FIXED_NEWSTYLE.to_be_bytes());
    c.option(&ClientOption::ExportName(String::new()));
    let reply = c.read_exact(8 + 2 + 124);
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().unwrap()),
        SIZE as u64
    );
    assert!(reply[10..].iter().all(|&b| b == 0));
    assert_eq!(c.write(1, 100, b"hello"), 0);
    assert_eq!(c.read_simple(2, 100, 5), b"hello");
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}

#[test]
fn multi_conn_flag_follows_the_device() {
    let dev = Arc::new(MemDevice::new(SIZE).with_multi_conn(false));
    let srv = TestServer::start(vec![Export::new("d", "", dev)], ServerConfig::default());
    let (c, _, flags) = RawClient::negotiate(&srv.socket, "d", true, false);
    assert_eq!(flags & NBD_FLAG_CAN_MULTI_CONN, 0);
    assert_ne!(flags & NBD_FLAG_SEND_DF, 0);
    assert_eq!(flags & NBD_FLAG_READ_ONLY, 0);
    c.disconnect();
    assert_still_serves(&srv.socket, "d");
}

#[test]
fn write_zeroes_flags_reach_the_device() {
    let (srv, dev) = TestServer::mem(SIZE);
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    assert_eq!(c.write(1, 0, &[3u8; 16384]), 0);
    c.request(NBD_CMD_FLAG_NO_HOLE, Command::WriteZeroes, 2, 0, 8192);
    assert_eq!(c.simple_reply().error, 0);
    assert!(
        dev.is_allocated(0) && dev.is_allocated(1),
        "NO_HOLE must not punch"
    );
    c.request(
        NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_FUA,
        Command::WriteZeroes,
        3,
        8192,
        8192,
    );
    assert_eq!(c.simple_reply().error, 0);
    assert!(!dev.is_allocated(2) && !dev.is_allocated(3));
    assert_eq!(c.read_simple(4, 0, 16384), vec![0u8; 16384]);
    c.disconnect();
    assert_still_serves(&srv.socket, "disk");
}
