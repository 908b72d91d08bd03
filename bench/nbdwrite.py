#!/usr/bin/env python3
"""Writes random data to a random fraction of an NBD export's blocks, then lists them.

A dependency-free NBD client (fixed newstyle handshake; NBD_OPT_GO, or NBD_OPT_EXPORT_NAME
when the server has no NBD_OPT_GO; simple replies only) over a unix socket. It picks
round(fraction x blocks) distinct `--block`-sized blocks of the disk (seeded: the same seed
picks the same blocks), writes os.urandom data (incompressible) to each with NBD_CMD_WRITE,
keeping `--depth` requests in flight, then NBD_CMD_FLUSH and NBD_CMD_DISC, and writes the
chosen blocks' byte offsets to `--list` (one per line, ascending).

    nbdwrite.py --socket PATH --export disk0 --size BYTES --block 4096 --fraction 0.01 \
        --seed N --list OUT.txt [--exclude-first BYTES] [--depth 32]

`--size` defaults to the export's size; a larger size than the export's is an error, a smaller
one confines the writes to the first `--size` bytes. `--exclude-first` leaves the blocks of
the first BYTES alone (e.g. a guest's boot code). Exit status 0 when every write and the flush
succeeded; otherwise a message naming the failed step and 1.
"""

import argparse
import errno
import os
import random
import socket
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC_OPT = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_GO = 7

REP_ACK = 1
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1

INFO_EXPORT = 0

TFLAG_HAS_FLAGS = 1 << 0
TFLAG_READ_ONLY = 1 << 1
TFLAG_SEND_FLUSH = 1 << 2

CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3

REP_ERRORS = {
    REP_FLAG_ERROR | 1: "NBD_REP_ERR_UNSUP",
    REP_FLAG_ERROR | 2: "NBD_REP_ERR_POLICY",
    REP_FLAG_ERROR | 3: "NBD_REP_ERR_INVALID",
    REP_FLAG_ERROR | 4: "NBD_REP_ERR_PLATFORM",
    REP_FLAG_ERROR | 5: "NBD_REP_ERR_TLS_REQD",
    REP_FLAG_ERROR | 6: "NBD_REP_ERR_UNKNOWN",
    REP_FLAG_ERROR | 7: "NBD_REP_ERR_SHUTDOWN",
    REP_FLAG_ERROR | 8: "NBD_REP_ERR_BLOCK_SIZE_REQD",
    REP_FLAG_ERROR | 9: "NBD_REP_ERR_TOO_BIG",
}


class NbdError(Exception):
    pass


def recv_exact(rfile, n, what):
    buf = rfile.read(n)
    if len(buf) != n:
        raise NbdError(f"{what}: the server closed the connection "
                       f"({len(buf)} of {n} bytes received)")
    return buf


def errno_name(e):
    return f"{errno.errorcode.get(e, 'errno')} ({e}: {os.strerror(e)})"


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise NbdError(f"connecting to {path}: {e}") from e
        self.rfile = self.sock.makefile("rb", buffering=1 << 16)
        self.size = 0
        self.tflags = 0

    # ---- handshake ----

    def handshake(self, export):
        magic, opt_magic, hflags = struct.unpack(">QQH", recv_exact(self.rfile, 18, "greeting"))
        if magic != NBDMAGIC:
            raise NbdError(f"greeting: not an NBD server (magic {magic:#x})")
        if opt_magic != IHAVEOPT:
            raise NbdError("greeting: the server speaks oldstyle NBD, only newstyle is supported")
        cflags = 0
        if hflags & FLAG_FIXED_NEWSTYLE:
            cflags |= FLAG_FIXED_NEWSTYLE
        no_zeroes = bool(hflags & FLAG_NO_ZEROES)
        if no_zeroes:
            cflags |= FLAG_NO_ZEROES
        self.sock.sendall(struct.pack(">I", cflags))
        name = export.encode()
        if hflags & FLAG_FIXED_NEWSTYLE and self._opt_go(name):
            return
        self._send_opt(OPT_EXPORT_NAME, name)
        data = recv_exact(self.rfile, 10 if no_zeroes else 134, "NBD_OPT_EXPORT_NAME reply")
        self.size, self.tflags = struct.unpack(">QH", data[:10])

    def _send_opt(self, opt, data):
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def _opt_go(self, name):
        """NBD_OPT_GO; False when the server does not know it (then EXPORT_NAME is used)."""
        self._send_opt(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        got_export = False
        while True:
            magic, opt, rtype, length = struct.unpack(
                ">QIII", recv_exact(self.rfile, 20, "NBD_OPT_GO reply"))
            if magic != REPLY_MAGIC_OPT:
                raise NbdError(f"NBD_OPT_GO: bad option reply magic {magic:#x}")
            if opt != OPT_GO:
                raise NbdError(f"NBD_OPT_GO: reply for option {opt}")
            data = recv_exact(self.rfile, length, "NBD_OPT_GO reply data") if length else b""
            if rtype == REP_ACK:
                if not got_export:
                    raise NbdError("NBD_OPT_GO: acknowledged without NBD_INFO_EXPORT")
                return True
            if rtype == REP_INFO:
                if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                    if len(data) != 12:
                        raise NbdError(f"NBD_OPT_GO: NBD_INFO_EXPORT of {len(data)} bytes")
                    self.size, self.tflags = struct.unpack(">QH", data[2:])
                    got_export = True
                continue
            if rtype == REP_ERR_UNSUP:
                return False
            if rtype & REP_FLAG_ERROR:
                why = data.decode(errors="replace")
                raise NbdError(f"NBD_OPT_GO for export {name.decode()!r} refused: "
                               f"{REP_ERRORS.get(rtype, hex(rtype))}{': ' + why if why else ''}")
            # An unknown non-error reply type: ignore it, as the protocol says.

    # ---- transmission ----

    def request(self, cmd, handle, offset=0, length=0, data=b""):
        return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, handle, offset, length) + data

    def reply(self, what):
        magic, err, handle = struct.unpack(">IIQ", recv_exact(self.rfile, 16, what))
        if magic == STRUCTURED_REPLY_MAGIC:
            raise NbdError(f"{what}: a structured reply, which was never negotiated")
        if magic != SIMPLE_REPLY_MAGIC:
            raise NbdError(f"{what}: bad reply magic {magic:#x}")
        return err, handle

    def write_blocks(self, offsets, block, depth):
        inflight = {}
        handle = 0
        it = iter(offsets)
        pending = True
        while pending or inflight:
            batch = []
            while pending and len(inflight) < depth:
                off = next(it, None)
                if off is None:
                    pending = False
                    break
                handle += 1
                inflight[handle] = off
                batch.append(self.request(CMD_WRITE, handle, off, block, os.urandom(block)))
            if batch:
                self.sock.sendall(b"".join(batch))
            # Drain to half the depth (all at the end), then send the next batch in one go.
            low = depth // 2 if pending else 0
            while len(inflight) > low:
                err, h = self.reply("NBD_CMD_WRITE reply")
                off = inflight.pop(h, None)
                if off is None:
                    raise NbdError(f"NBD_CMD_WRITE: reply for unknown handle {h}")
                if err:
                    raise NbdError(f"NBD_CMD_WRITE of {block} bytes at offset {off} failed: "
                                   f"{errno_name(err)}")

    def flush(self):
        if not self.tflags & TFLAG_SEND_FLUSH:
            return False
        self.sock.sendall(self.request(CMD_FLUSH, 0xF1))
        err, h = self.reply("NBD_CMD_FLUSH reply")
        if h != 0xF1:
            raise NbdError(f"NBD_CMD_FLUSH: reply for unknown handle {h}")
        if err:
            raise NbdError(f"NBD_CMD_FLUSH failed: {errno_name(err)}")
        return True

    def disconnect(self):
        self.sock.sendall(self.request(CMD_DISC, 0xD15C))
        try:
            self.sock.shutdown(socket.SHUT_WR)
            # A server closes after DISC; wait for it so the writes are settled server side.
            self.sock.settimeout(10)
            while self.sock.recv(4096):
                pass
        except OSError:
            pass
        self.sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="the NBD server's unix socket")
    p.add_argument("--export", default="disk0", help="export name (default disk0)")
    p.add_argument("--size", type=int, help="disk size in bytes (default: the export's)")
    p.add_argument("--block", type=int, default=4096, help="block size in bytes (default 4096)")
    p.add_argument("--fraction", type=float, required=True,
                   help="fraction of the disk's blocks to write (0..1)")
    p.add_argument("--seed", type=int, required=True, help="seed of the block choice")
    p.add_argument("--list", required=True, help="file to write the blocks' offsets to")
    p.add_argument("--exclude-first", type=int, default=0,
                   help="leave the blocks of the first BYTES alone")
    p.add_argument("--depth", type=int, default=32, help="requests in flight (default 32)")
    a = p.parse_args()
    if a.block <= 0 or a.block % 512:
        p.error("--block must be a positive multiple of 512")
    if not 0 <= a.fraction <= 1:
        p.error("--fraction must be between 0 and 1")
    if a.depth < 1:
        p.error("--depth must be at least 1")
    if a.exclude_first < 0:
        p.error("--exclude-first must not be negative")

    step = "handshake"
    try:
        c = Client(a.socket)
        c.handshake(a.export)
        if c.tflags & TFLAG_HAS_FLAGS and c.tflags & TFLAG_READ_ONLY:
            raise NbdError(f"export {a.export!r} is read-only")
        size = c.size if a.size is None else a.size
        if size > c.size:
            raise NbdError(f"--size {size} is larger than export {a.export!r} ({c.size} bytes)")
        nblocks = size // a.block
        first = -(-a.exclude_first // a.block)
        count = round(a.fraction * nblocks)
        if count > nblocks - first:
            raise NbdError(f"{count} blocks asked for, but only {max(nblocks - first, 0)} "
                           f"blocks lie past --exclude-first {a.exclude_first}")
        blocks = random.Random(a.seed).sample(range(first, nblocks), count)
        offsets = [b * a.block for b in blocks]
        step = "writing"
        t0 = time.monotonic()
        c.write_blocks(offsets, a.block, a.depth)
        step = "flush"
        flushed = c.flush()
        secs = time.monotonic() - t0
        step = "disconnect"
        c.disconnect()
    except (NbdError, OSError) as e:
        print(f"nbdwrite.py: {a.socket} export {a.export}: {step} failed: {e}", file=sys.stderr)
        return 1
    tmp = a.list + ".tmp"
    with open(tmp, "w") as f:
        for off in sorted(offsets):
            f.write(f"{off}\n")
    os.replace(tmp, a.list)
    mib = count * a.block / (1 << 20)
    print(f"nbdwrite.py: wrote {count} blocks of {a.block} bytes ({mib:.1f} MiB) of {nblocks} "
          f"in {secs:.2f} s ({mib / secs if secs > 0 else 0:.0f} MiB/s)"
          f"{', flushed' if flushed else ' (the server takes no FLUSH)'}; offsets in {a.list}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
