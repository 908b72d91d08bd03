//! Shared test harness: the real server on a unix socket in a tempdir, driven from a
//! dedicated runtime thread, and a blocking raw NBD client for byte-level tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_nbd::proto::*;
use lifeboat_nbd::{BlockDevice, Export, MemDevice, Server, ServerConfig};
use tokio::sync::watch;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub server: Server,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(exports: Vec<Export>, config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let server = Server::with_exports(config, exports).unwrap();
        let (stop, rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let s = server.clone();
        let thread = std::thread::spawn(move || rt.block_on(s.serve_unix(listener, rx)));
        Self {
            dir,
            socket,
            server,
            stop,
            thread: Some(thread),
        }
    }

    /// One writable MemDevice export named "disk".
    pub fn mem(size: usize) -> (Self, Arc<MemDevice>) {
        let dev = Arc::new(MemDevice::new(size));
        let s = Self::start(
            vec![Export::new("disk", "test disk", dev.clone())],
            ServerConfig::default(),
        );
        (s, dev)
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Signals shutdown and returns how long `serve_unix` took to return.
    pub fn stop(mut self) -> Duration {
        let t = Instant::now();
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        t.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The path of an external client; a missing tool fails the test (never a silent skip).
pub fn path_of(tool: &str) -> Option<PathBuf> {
    Some(lifeboat_testkit::require_tool(tool))
}

pub struct RawClient {
    pub s: UnixStream,
}

pub const HANDSHAKE: Duration = Duration::from_secs(5);

impl RawClient {
    pub fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(HANDSHAKE)).unwrap();
        Self { s }
    }

    pub fn greeting(&mut self) -> u16 {
        let mut g = [0u8; GREETING_LEN];
        self.s.read_exact(&mut g).unwrap();
        parse_greeting(&g).unwrap()
    }

    /// Greeting read, fixed-newstyle + no-zeroes flags sent.
    pub fn start(path: &Path) -> Self {
        let mut c = Self::connect(path);
        let flags = c.greeting();
        assert_eq!(flags, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        c.send(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes());
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    pub fn option(&mut self, opt: &ClientOption) {
        let mut out = Vec::new();
        opt.encode(&mut out).unwrap();
        self.send(&out);
    }

    pub fn option_reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        self.s.read_exact(&mut h).unwrap();
        let h = OptionReplyHeader::parse(&h).unwrap();
        let mut p = vec![0u8; h.length as usize];
        self.s.read_exact(&mut p).unwrap();
        (h, p)
    }

    /// Whether the server closed the connection (EOF or reset) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        }
    }

    /// Full handshake with NBD_OPT_GO; returns the client, size and transmission flags.
    pub fn negotiate(path: &Path, export: &str, structured: bool, meta: bool) -> (Self, u64, u16) {
        let mut c = Self::start(path);
        if structured {
            c.option(&ClientOption::StructuredReply);
            let (h, _) = c.option_reply();
            assert_eq!(h.reply_type, NBD_REP_ACK);
        }
        if meta {
            c.option(&ClientOption::SetMetaContext(MetaContextRequest {
                export: export.into(),
                queries: vec![BASE_ALLOCATION.into()],
            }));
            let (h, p) = c.option_reply();
            assert_eq!(h.reply_type, NBD_REP_META_CONTEXT);
            assert_eq!(&p[4..], BASE_ALLOCATION.as_bytes());
            let (h, _) = c.option_reply();
            assert_eq!(h.reply_type, NBD_REP_ACK);
        }
        c.option(&ClientOption::Go(ExportRequest {
            name: export.into(),
            info_requests: vec![],
        }));
        let mut size_flags = None;
        loop {
            let (h, p) = c.option_reply();
            match h.reply_type {
                NBD_REP_INFO => {
                    if let InfoReply::Export { size, flags } = parse_info_reply(&p).unwrap() {
                        size_flags = Some((size, flags));
                    }
                }
                NBD_REP_ACK => break,
                other => panic!("GO failed with reply {other:#x}"),
            }
        }
        let (size, flags) = size_flags.expect("no NBD_INFO_EXPORT");
        (c, size, flags)
    }

    pub fn request(&mut self, flags: u16, command: Command, handle: u64, offset: u64, length: u32) {
        let r = Request {
            flags,
            command,
            handle,
            offset,
            length,
        };
        self.send(&r.encode());
    }

    pub fn simple_reply(&mut self) -> SimpleReply {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h).unwrap();
        SimpleReply::parse(&h).unwrap()
    }

    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    pub fn chunk(&mut self) -> (ChunkHeader, Vec<u8>) {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        self.s.read_exact(&mut h).unwrap();
        let h = ChunkHeader::parse(&h).unwrap();
        let p = self.read_exact(h.length as usize);
        (h, p)
    }

    /// Either kind of reply header: returns (handle, error, structured chunk payload if any).
    pub fn any_reply(&mut self) -> (u64, u32, Option<(ChunkHeader, Vec<u8>)>) {
        let mut magic = [0u8; 4];
        self.s.read_exact(&mut magic).unwrap();
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => {
                let mut rest = [0u8; SIMPLE_REPLY_LEN - 4];
                self.s.read_exact(&mut rest).unwrap();
                let mut all = magic.to_vec();
                all.extend_from_slice(&rest);
                let r = SimpleReply::parse(&all).unwrap();
                (r.handle, r.error, None)
            }
            STRUCTURED_REPLY_MAGIC => {
                let mut rest = [0u8; CHUNK_HEADER_LEN - 4];
                self.s.read_exact(&mut rest).unwrap();
                let mut all = magic.to_vec();
                all.extend_from_slice(&rest);
                let h = ChunkHeader::parse(&all).unwrap();
                let p = self.read_exact(h.length as usize);
                let err = if h.kind == NBD_REPLY_TYPE_ERROR {
                    parse_error_chunk(&p).unwrap().0
                } else {
                    0
                };
                (h.handle, err, Some((h, p)))
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    pub fn write(&mut self, handle: u64, offset: u64, data: &[u8]) -> u32 {
        self.request(0, Command::Write, handle, offset, data.len() as u32);
        self.send(data);
        let r = self.simple_reply();
        assert_eq!(r.handle, handle);
        r.error
    }

    /// READ without structured replies.
    pub fn read_simple(&mut self, handle: u64, offset: u64, len: u32) -> Vec<u8> {
        self.request(0, Command::Read, handle, offset, len);
        let r = self.simple_reply();
        assert_eq!((r.handle, r.error), (handle, 0));
        self.read_exact(len as usize)
    }

    pub fn disconnect(mut self) {
        self.request(0, Command::Disc, 0, 0, 0);
        assert!(self.closed(), "server did not close after NBD_CMD_DISC");
    }
}

/// A full read/write round trip on a fresh connection (the server still serves).
pub fn assert_still_serves(path: &Path, export: &str) {
    let (mut c, size, _) = RawClient::negotiate(path, export, false, false);
    assert!(size >= 512);
    let before = c.read_simple(1, 0, 512);
    assert_eq!(before.len(), 512);
    c.disconnect();
}

pub fn dev_export(name: &str, dev: Arc<dyn BlockDevice>) -> Export {
    Export::new(name, "", dev)
}
