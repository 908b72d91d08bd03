//! Benchmark harness: serves a raw file (or a MemDevice) over NBD on a unix socket until
//! SIGINT/SIGTERM, so fio's nbd engine can be pointed at it side by side with qemu-nbd.
//!
//! ```sh
//! cargo run --release -p lifeboat-nbd --example serve_file -- /tmp/nbd.sock /dev/shm/disk.img
//! cargo run --release -p lifeboat-nbd --example serve_file -- /tmp/nbd.sock mem:1073741824
//! fio --ioengine=nbd --uri='nbd+unix:///?socket=/tmp/nbd.sock' --rw=randwrite --bs=4k \
//!     --iodepth=32 --size=1g --runtime=20 --time_based --name=w
//! ```

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use lifeboat_nbd::{BlockDevice, Export, Extent, MemDevice, Server, ServerConfig, ZeroFlags};

/// A plain file: page-cache writes, fdatasync on flush, no allocation tracking.
struct FileDevice {
    file: File,
    size: u64,
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        false
    }
    fn can_multi_conn(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.file
                .write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        if flags.fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
    fn trim(&self, _offset: u64, _len: u64, _fua: bool) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn block_status(&self, _offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(vec![Extent {
            length: len,
            hole: false,
            zero: false,
        }])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(backing)) = (args.next(), args.next()) else {
        eprintln!("usage: serve_file <socket> <file | mem:SIZE>");
        std::process::exit(2);
    };
    let device: Arc<dyn BlockDevice> = match backing.strip_prefix("mem:") {
        Some(size) => Arc::new(MemDevice::new(size.parse()?)),
        None => {
            let file = File::options().read(true).write(true).open(&backing)?;
            let size = file.metadata()?.len();
            Arc::new(FileDevice { file, size })
        }
    };
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let server = Server::with_exports(
        ServerConfig::default(),
        vec![Export::new("", "benchmark disk", device)],
    )?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_unix(listener, rx).await }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop.send(true);
    serving.await?;
    Ok(())
}
