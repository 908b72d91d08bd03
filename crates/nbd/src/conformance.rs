//! The conformance suite of [`BlockDevice`]: one set of checks that every implementation must
//! pass (the in-memory [`crate::MemDevice`] test double and Lifeboat's journaled disk). Each
//! implementation's tests call [`check_writable_device`] (and [`check_read_only_device`]) on a
//! fresh device; a failed check panics with what the device did wrong.
//!
//! The contract checked here, beyond plain reads and writes: zeroed and trimmed ranges read back
//! as zeroes (Lifeboat treats trims as zeroes so recovery points are deterministic), extents
//! returned by `block_status` start at the requested offset, are in order and never claim a
//! written range is a hole, and FLUSH and FUA succeed.

use crate::device::{BlockDevice, ZeroFlags};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    dev.read_at(offset, &mut buf)
        .unwrap_or_else(|e| panic!("read of {len} bytes at {offset} failed: {e}"));
    buf
}

fn assert_allocated(dev: &dyn BlockDevice, offset: u64, len: u64) {
    let extents = dev
        .block_status(offset, len)
        .unwrap_or_else(|e| panic!("block_status at {offset} failed: {e}"));
    assert!(!extents.is_empty(), "block_status returned no extents");
    let first = extents[0];
    assert!(first.length > 0, "zero-length extent");
    assert!(
        !first.hole && !first.zero,
        "written range at {offset} reported as hole/zero: {extents:?}"
    );
}

/// Checks a writable device of at least 1 MiB whose content starts as all zeroes.
pub fn check_writable_device(dev: &dyn BlockDevice) {
    let size = dev.size();
    assert!(
        size >= 1 << 20,
        "conformance needs a device of at least 1 MiB"
    );
    assert!(!dev.read_only(), "device must be writable");
    assert_eq!(
        read(dev, 0, 8192),
        vec![0u8; 8192],
        "fresh device is not zero"
    );

    // Aligned and unaligned writes, FUA, reads across their boundaries.
    let a = pattern(65536, 1);
    dev.write_at(0, &a, false).expect("aligned write");
    let b = pattern(1000, 2);
    dev.write_at(70_001, &b, true).expect("unaligned FUA write");
    let end = pattern(512, 3);
    dev.write_at(size - 512, &end, false)
        .expect("write at the last bytes");
    assert_eq!(read(dev, 0, 65536), a, "aligned write did not read back");
    let mut around = vec![0u8; 1200];
    around[100..1100].copy_from_slice(&b);
    assert_eq!(read(dev, 69_901, 1200), around, "unaligned write");
    assert_eq!(read(dev, size - 512, 512), end, "write at the end");
    assert_allocated(dev, 0, 65536);

    // Overwrite part of a range.
    let c = pattern(4096, 4);
    dev.write_at(8192, &c, false).expect("overwrite");
    let mut expect = a.clone();
    expect[8192..12288].copy_from_slice(&c);
    assert_eq!(read(dev, 0, 65536), expect, "overwrite");

    // WRITE_ZEROES with and without punching, and TRIM: all read back as zeroes.
    for (i, may_trim) in [false, true].into_iter().enumerate() {
        let off = 4096 * (1 + 2 * i as u64);
        dev.write_zeroes(
            off,
            4096,
            ZeroFlags {
                may_trim,
                fast_only: false,
                fua: i == 1,
            },
        )
        .expect("write_zeroes");
        expect[off as usize..off as usize + 4096].fill(0);
    }
    dev.trim(32768, 8192, false).expect("trim");
    expect[32768..40960].fill(0);
    assert_eq!(read(dev, 0, 65536), expect, "zeroed/trimmed ranges");

    // Extents start at the requested offset and are in order, up to the requested length.
    for (offset, len) in [(0u64, size), (4097, 100_000), (size - 1, 1)] {
        let ext = dev
            .block_status(offset, len)
            .unwrap_or_else(|e| panic!("block_status({offset}, {len}): {e}"));
        assert!(!ext.is_empty(), "no extents for ({offset}, {len})");
        let total: u64 = ext.iter().map(|e| e.length).sum();
        assert!(total > 0, "extents cover nothing");
        assert!(
            ext.iter().all(|e| e.length > 0),
            "zero-length extent: {ext:?}"
        );
        assert!(
            !ext.iter().any(|e| e.hole && !e.zero),
            "a hole must read as zeroes: {ext:?}"
        );
    }
    dev.flush().expect("flush");
}

/// Checks a read-only device: reads work, every kind of write is refused with
/// `PermissionDenied` and changes nothing.
pub fn check_read_only_device(dev: &dyn BlockDevice) {
    assert!(dev.read_only(), "device must say it is read-only");
    let before = read(dev, 0, 4096);
    let denied = |r: std::io::Result<()>, what: &str| match r {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => panic!("{what} on a read-only device: expected PermissionDenied, got {other:?}"),
    };
    denied(dev.write_at(0, &[1u8; 4096], false), "write");
    denied(
        dev.write_zeroes(0, 4096, ZeroFlags::default()),
        "write_zeroes",
    );
    denied(dev.trim(0, 4096, false), "trim");
    assert_eq!(
        read(dev, 0, 4096),
        before,
        "a refused write changed the data"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    #[test]
    fn mem_device_conforms() {
        check_writable_device(&MemDevice::new(2 << 20));
        check_read_only_device(&MemDevice::new(1 << 20).with_read_only(true));
    }
}
