//! Arbitrary bytes as the client side of a connection to `Server::handle_connection`, over an
//! in-memory duplex stream with MemDevice exports. The server must neither panic nor hang:
//! every run has to end within a few seconds once the client's bytes are consumed (EOF).
//!
//! The first input byte picks a prefix so that the fuzzer also reaches the transmission phase
//! without having to discover the handshake first:
//! 0: raw bytes after the greeting; 1: flags + GO ""; 2: flags + structured replies +
//! base:allocation + GO ""; 3: flags + EXPORT_NAME "ro".
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lifeboat_nbd::proto::*;
use lifeboat_nbd::{BlockDevice, Export, MemDevice, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
}

fn prefix(mode: u8) -> Vec<u8> {
    let mut out = Vec::new();
    if mode % 4 == 0 {
        return out;
    }
    out.extend_from_slice(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes());
    let go = ClientOption::Go(ExportRequest { name: String::new(), info_requests: vec![] });
    let opts = match mode % 4 {
        1 => vec![go],
        2 => vec![
            ClientOption::StructuredReply,
            ClientOption::SetMetaContext(MetaContextRequest {
                export: String::new(),
                queries: vec![BASE_ALLOCATION.into()],
            }),
            go,
        ],
        _ => vec![ClientOption::ExportName("ro".into())],
    };
    for o in opts {
        let _ = o.encode(&mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut input = prefix(mode);
    input.extend_from_slice(rest);

    RUNTIME.with(|rt| rt.block_on(async move {
        let rw = Arc::new(MemDevice::with_block_size(64 << 10, 512));
        // Some allocated data so block status and reads see both kinds of extents.
        let _ = rw.write_at(4096, &[0xa5; 8192], false);
        let ro = Arc::new(MemDevice::new(8 << 10).with_read_only(true).with_multi_conn(false));
        let config = ServerConfig {
            max_payload: 256 << 10,
            max_option_len: 8 << 10,
            handshake_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        };
        let server = Server::with_exports(
            config,
            vec![Export::new("", "fuzz disk", rw), Export::new("ro", "", ro)],
        )
        .unwrap();
        let (client, serv) = tokio::io::duplex(16 << 10);
        let (mut cr, mut cw) = tokio::io::split(client);
        let conn = tokio::spawn(async move { server.handle_connection(serv).await });
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 16 << 10];
            while let Ok(n) = cr.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        // The server may close early (an error): then writes fail, which is fine.
        let _ = cw.write_all(&input).await;
        let _ = cw.shutdown().await;
        drop(cw);
        let done = tokio::time::timeout(Duration::from_secs(5), conn).await;
        let Ok(joined) = done else { panic!("handle_connection did not finish") };
        joined.expect("connection task panicked").ok();
        let _ = drain.await;
    }));
});
