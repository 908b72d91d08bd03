//! Several connections at once, pipelining, FLUSH off the connection task, DISC and shutdown
//! finishing in-flight requests.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lifeboat_nbd::proto::*;
use lifeboat_nbd::{Export, MemDevice, Server, ServerConfig};

const SIZE: usize = 8 << 20;

#[test]
fn concurrent_writers_then_flush_then_read_back_elsewhere() {
    let (srv, dev) = TestServer::mem(SIZE);
    let conns = 4;
    let per_conn = 256; // 4 KiB writes, pipelined 32 deep
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let path = srv.socket.clone();
            std::thread::spawn(move || {
                let (mut cl, _, _) = RawClient::negotiate(&path, "disk", c % 2 == 0, false);
                let mut outstanding = 0;
                for i in 0..per_conn {
                    // Interleaved blocks: connection c owns blocks c, c+4, c+8, ...
                    let block = (i * conns + c) as u64;
                    cl.request(0, Command::Write, block, block * 4096, 4096);
                    cl.send(&[(block % 251) as u8 + 1; 4096]);
                    outstanding += 1;
                    if outstanding == 32 {
                        for _ in 0..32 {
                            let (_, err, _) = cl.any_reply();
                            assert_eq!(err, 0);
                        }
                        outstanding = 0;
                    }
                }
                for _ in 0..outstanding {
                    assert_eq!(cl.any_reply().1, 0);
                }
                cl
            })
        })
        .collect();
    let clients: Vec<RawClient> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let flushes = dev.flush_count();
    let mut clients = clients.into_iter();
    let mut first = clients.next().unwrap();
    first.request(0, Command::Flush, 999, 0, 0);
    assert_eq!(first.any_reply(), (999, 0, None));
    assert_eq!(dev.flush_count(), flushes + 1);
    // Read everything back on a new connection.
    let (mut reader, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    let total = conns * per_conn;
    let back = reader.read_simple(1, 0, (total * 4096) as u32);
    for block in 0..total {
        let want = (block % 251) as u8 + 1;
        assert!(
            back[block * 4096..(block + 1) * 4096]
                .iter()
                .all(|&b| b == want),
            "block {block}"
        );
    }
    reader.disconnect();
    for c in clients {
        c.disconnect();
    }
    first.disconnect();
}

fn slow_flush_server(delay: Duration) -> (TestServer, Arc<MemDevice>) {
    let dev = Arc::new(MemDevice::new(SIZE).with_flush_delay(delay));
    let srv = TestServer::start(
        vec![Export::new("disk", "", dev.clone())],
        ServerConfig::default(),
    );
    (srv, dev)
}

#[test]
fn flush_does_not_stall_the_connection() {
    let (srv, dev) = slow_flush_server(Duration::from_millis(400));
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", true, false);
    assert_eq!(c.write(1, 0, b"data"), 0);
    let t = Instant::now();
    c.request(0, Command::Flush, 2, 0, 0);
    c.request(0, Command::Read, 3, 0, 4);
    // The read is answered while the flush is still running.
    let (handle, err, chunk) = c.any_reply();
    assert_eq!((handle, err), (3, 0));
    let (h, p) = chunk.unwrap();
    assert_eq!(h.kind, NBD_REPLY_TYPE_OFFSET_DATA);
    assert_eq!(&p[8..], b"data");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "read waited {:?}",
        t.elapsed()
    );
    assert_eq!(dev.flush_count(), 0);
    assert_eq!(c.any_reply(), (2, 0, None));
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!(dev.flush_count(), 1);
    c.disconnect();
}

#[test]
fn disc_finishes_in_flight_requests_first() {
    let (srv, dev) = slow_flush_server(Duration::from_millis(200));
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(0, Command::Flush, 5, 0, 0);
    c.request(0, Command::Disc, 6, 0, 0);
    assert_eq!(
        c.simple_reply(),
        SimpleReply {
            error: 0,
            handle: 5
        }
    );
    assert!(c.closed());
    assert_eq!(dev.flush_count(), 1);
}

#[test]
fn shutdown_finishes_in_flight_requests_then_closes() {
    let (srv, dev) = slow_flush_server(Duration::from_millis(300));
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(0, Command::Flush, 5, 0, 0);
    std::thread::sleep(Duration::from_millis(50));
    let took = srv.stop();
    assert!(
        took >= Duration::from_millis(200),
        "did not wait for the flush: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        c.simple_reply(),
        SimpleReply {
            error: 0,
            handle: 5
        }
    );
    assert!(c.closed());
    assert_eq!(dev.flush_count(), 1);
}

#[test]
fn fua_write_is_durable_before_its_reply() {
    let (srv, dev) = slow_flush_server(Duration::from_millis(50));
    let (mut c, _, _) = RawClient::negotiate(&srv.socket, "disk", false, false);
    c.request(NBD_CMD_FLAG_FUA, Command::Write, 1, 4096, 3);
    c.send(b"fua");
    assert_eq!(
        c.simple_reply(),
        SimpleReply {
            error: 0,
            handle: 1
        }
    );
    assert_eq!(dev.flush_count(), 1);
    assert_eq!(&dev.snapshot()[4096..4099], b"fua");
    c.disconnect();
}

#[tokio::test]
async fn handle_connection_over_a_duplex_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dev = Arc::new(MemDevice::new(1 << 20));
    let server = Server::with_exports(
        ServerConfig::default(),
        vec![Export::new("", "", dev.clone())],
    )
    .unwrap();
    let (mut client, serv) = tokio::io::duplex(64 << 10);
    let task = tokio::spawn(async move { server.handle_connection(serv).await });
    let mut greeting = [0u8; GREETING_LEN];
    client.read_exact(&mut greeting).await.unwrap();
    client
        .write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    ClientOption::ExportName(String::new())
        .encode(&mut out)
        .unwrap();
    let w = Request {
        flags: 0,
        command: Command::Write,
        handle: 1,
        offset: 10,
        length: 2,
    };
    out.extend_from_slice(&w.encode());
    out.extend_from_slice(b"hi");
    let d = Request {
        flags: 0,
        command: Command::Disc,
        handle: 2,
        offset: 0,
        length: 0,
    };
    out.extend_from_slice(&d.encode());
    client.write_all(&out).await.unwrap();
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply.len(), 10 + SIMPLE_REPLY_LEN);
    assert_eq!(
        SimpleReply::parse(&reply[10..]).unwrap(),
        SimpleReply {
            error: 0,
            handle: 1
        }
    );
    task.await.unwrap().unwrap();
    assert_eq!(&dev.snapshot()[10..12], b"hi");
}
