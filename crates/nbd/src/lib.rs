//! # lifeboat-nbd: Lifeboat's in-house NBD server, on tokio
//!
//! Serves [`BlockDevice`]s to NBD clients (QEMU's `-blockdev driver=nbd`, `nbdinfo`,
//! `nbdcopy`, `qemu-img`, `fio --ioengine=nbd`) over unix sockets or TCP.
//!
//! ## Protocol subset
//!
//! * **Handshake**: fixed newstyle only. A client that does not set
//!   `NBD_FLAG_C_FIXED_NEWSTYLE`, or sets unknown client flags, is disconnected with a logged
//!   reason. `NBD_FLAG_NO_ZEROES` is offered and honoured.
//! * **Options**: `EXPORT_NAME`, `GO`, `INFO` (`NBD_INFO_EXPORT` always; `NAME` and
//!   `DESCRIPTION` when asked; `BLOCK_SIZE` always, min 1 / preferred 4096 / max =
//!   [`ServerConfig::max_payload`]), `LIST`, `ABORT`, `STRUCTURED_REPLY`,
//!   `LIST_META_CONTEXT` and `SET_META_CONTEXT` with the single context `base:allocation`
//!   (other queries are simply not selected; both need structured replies first). Any other
//!   option (STARTTLS, EXTENDED_HEADERS, ...) gets `NBD_REP_ERR_UNSUP`; a known option with a
//!   malformed payload gets `NBD_REP_ERR_INVALID`; `GO`/`INFO` for a missing export gets
//!   `NBD_REP_ERR_UNKNOWN`. The empty export name means the sole export when there is exactly
//!   one.
//! * **Transmission flags**: `HAS_FLAGS`, `SEND_FLUSH`, `SEND_FUA`, `SEND_TRIM`,
//!   `SEND_WRITE_ZEROES`, `SEND_FAST_ZERO`, `SEND_DF` (with structured replies), `READ_ONLY`
//!   when [`BlockDevice::read_only`], and `CAN_MULTI_CONN` **only** when
//!   [`BlockDevice::can_multi_conn`] (the device promises that a FLUSH on one connection
//!   covers the writes of all).
//! * **Commands**: `READ` (one `OFFSET_DATA` chunk with structured replies, so `DF` always
//!   holds; a simple reply otherwise), `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES` (`NO_HOLE` ->
//!   `may_trim = false`, `FAST_ZERO` -> `fast_only`), `BLOCK_STATUS` (only when
//!   `base:allocation` was selected for this export, else `EINVAL`; `REQ_ONE` honoured;
//!   extents merged and cut to the request, at most 1024 descriptors), `DISC`. `FUA` is
//!   accepted on every command and passed to the device for writes. `CACHE` and unknown
//!   commands get `EINVAL`, as do flags not valid for a command.
//!
//! ## Limits and errors
//!
//! * A request whose range passes the end of the export gets `ENOSPC` for WRITE and
//!   WRITE_ZEROES (what the spec recommends and qemu-nbd does) and `EINVAL` for the other
//!   commands. A WRITE's payload is always read first, so the stream stays in sync.
//! * A WRITE longer than [`ServerConfig::max_payload`] (32 MiB) disconnects: its payload
//!   cannot be skipped safely. A READ that long gets `EINVAL`. TRIM, WRITE_ZEROES and
//!   BLOCK_STATUS carry no payload and may cover any 32-bit length.
//! * Writes to a read-only export get `EPERM`. Device errors map as documented on
//!   [`BlockDevice`]. With structured replies errors go out as `NBD_REPLY_TYPE_ERROR` chunks
//!   carrying a message; otherwise as simple replies.
//! * A bad request magic, an option header with a bad magic, an option longer than
//!   [`ServerConfig::max_option_len`] (answered `NBD_REP_ERR_TOO_BIG` first), an unknown
//!   export in `EXPORT_NAME`, and any I/O error disconnect. Every disconnect is logged with its
//!   reason (`tracing`, `info` for clean ends, `warn` for the others).
//! * The whole handshake must finish within [`ServerConfig::handshake_timeout`] (30 s), so a
//!   silent client cannot hold a task. Once in transmission a client may stay idle forever
//!   (QEMU does).
//! * Nothing read from the network is trusted: lengths are checked before any allocation or
//!   slice (see [`proto`], which is fuzzed and property-tested), and a panic in a device call
//!   becomes an `EIO` reply.
//!
//! ## Tasks, ordering and replies
//!
//! Each connection is one tokio task. After the handshake the stream is split:
//!
//! * The **connection task** reads requests through a 256 KiB `BufReader` (a WRITE's payload
//!   lands in a buffer reused across requests) and runs READ, WRITE, and BLOCK_STATUS
//!   **inline**: the device calls are synchronous and fast (page-cache copies), and running
//!   them in order on the reader means that when a FLUSH is read, every write this connection
//!   acknowledged has already reached the device. The reply is written straight into the
//!   shared writer; read data goes from the reused buffer to the socket without another copy.
//! * **Slow commands** — FLUSH, any command with FUA, TRIM and WRITE_ZEROES — run on tokio's
//!   blocking pool (`spawn_blocking`); a small task awaits each and writes its reply, while
//!   the connection task keeps reading and serving other requests. At most
//!   [`ServerConfig::max_blocking_in_flight`] per connection; at the limit the connection
//!   waits for one to finish. Replies can therefore come out of order, as NBD allows (a
//!   FLUSH's reply may follow later reads), and two overlapping requests in flight at the
//!   same time have no defined order, as in the spec; a request the client sends after
//!   receiving another's reply always sees its effect.
//! * **Replies** go through one writer: a 256 KiB `BufWriter` behind a `tokio::sync::Mutex`.
//!   Each reply is written whole while the lock is held, so replies never interleave. The
//!   connection task flushes the buffer whenever no complete request is waiting in its read
//!   buffer (i.e. just before it could block on the socket), so a burst of pipelined requests
//!   (fio at queue depth 32) is answered with one `write` syscall; blocking-pool tasks flush
//!   after their own reply.
//!
//! `NBD_CMD_DISC`, EOF between requests and server shutdown all end the read loop; then the
//! connection waits for its blocking-pool requests, flushes their replies and closes.
//!
//! ## Server lifecycle
//!
//! [`Server`] is cheap to clone (an `Arc` inside); clones share the exports, which can be
//! added and removed while serving. [`Server::serve_unix`] / [`Server::serve_tcp`] run one
//! task per connection until their `shutdown` watch turns true, then stop accepting, let each
//! connection finish its in-flight requests and close (a connection still in its handshake
//! is closed at once), and return when all connection tasks ended, aborting those still open
//! after [`ServerConfig::shutdown_grace`] (10 s). [`Server::handle_connection`] serves a
//! single already-accepted stream (any `AsyncRead + AsyncWrite`, e.g. a
//! `tokio::io::duplex` in tests and fuzzing).
//!
//! ## Multi-conn
//!
//! `NBD_FLAG_CAN_MULTI_CONN` is advertised only when the device says so; the server itself
//! keeps no per-connection cache, so the promise is entirely the device's (a FLUSH calls
//! [`BlockDevice::flush`], which must make every acknowledged write of every connection
//! durable).
//!
//! [`MemDevice`] is an in-memory [`BlockDevice`] for tests, fuzzing and benchmarks.

pub mod conformance;
pub mod device;
mod error;
pub mod mem;
pub mod proto;
mod server;
mod transmission;

pub use device::{BlockDevice, Extent, ZeroFlags};
pub use error::NbdError;
pub use mem::MemDevice;
pub use proto::ProtoError;
pub use server::{Export, Server, ServerConfig, BASE_ALLOCATION_ID};
