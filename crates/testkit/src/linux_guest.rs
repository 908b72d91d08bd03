//! The Linux test guest (`scripts/build-linux-guest`) and the checks of its data disk.
//!
//! [`linux_guest`] builds the guest once per test process (cached across runs by the script)
//! and returns its kernel, initrd and kernel command line, for a VM definition's direct kernel
//! boot. The guest mounts its ext4 data disk (`/dev/vda`, made by [`ext4_disk`]), runs qemu-ga
//! and writes `/data/fN` then logs `N <sha256>` in `/data/log`, forever.
//! [`check_app_consistent`] checks a copy of that disk: a clean filesystem (no journal to
//! replay) whose log's recent entries all name complete files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{require_tool, run_ok};

/// The built guest.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The initramfs (`initrd.img`).
    pub initrd: PathBuf,
    /// The kernel command line (serial console on ttyS0).
    pub append: String,
}

/// The serial line the guest prints once qemu-ga runs and the writer starts.
pub const READY: &str = "lbguest: ready";
/// The prefix of the writer's progress lines (`lbguest: wrote N`).
pub const WROTE: &str = "lbguest: wrote ";
/// The prefix of the guest's error lines (it powers off after one).
pub const ERROR: &str = "lbguest: error";
/// How many of the log's newest entries still have their file (the writer removes f(N-64)).
pub const KEPT_FILES: u64 = 63;

/// Builds (or finds in the cache) the guest: runs `scripts/build-linux-guest` once per process.
/// Panics with the script's output when it fails (it needs a Debian mirror the first time).
pub fn linux_guest() -> &'static LinuxGuest {
    static GUEST: OnceLock<LinuxGuest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-linux-guest");
        let out = run_ok(&mut Command::new(&script));
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(str::to_owned))
                .unwrap_or_else(|| {
                    panic!("{}: no `{k}` line in its output:\n{text}", script.display())
                })
        };
        LinuxGuest {
            kernel: field("kernel=").into(),
            initrd: field("initrd=").into(),
            append: field("append="),
        }
    })
}

/// A raw image of `bytes` bytes at `path`, formatted ext4 (the guest's data disk).
pub fn ext4_disk(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    f.set_len(bytes)
        .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
    run_ok(
        Command::new(require_tool("mkfs.ext4"))
            .args(["-q", "-F"])
            .arg(path),
    );
}

/// What the guest writes to `/data/fN`.
pub fn expected_file(n: u64) -> Vec<u8> {
    let line = format!("lbguest {n}\n");
    let len = 4096 * (1 + (n % 64) as usize);
    line.bytes().cycle().take(len).collect()
}

/// The `N` of the guest's last complete `lbguest: wrote N` line.
pub fn last_wrote(serial: &str) -> Option<u64> {
    let complete = serial.rsplit_once('\n').map_or("", |(done, _)| done);
    complete
        .lines()
        .rev()
        .find_map(|l| l.trim_end().strip_prefix(WROTE)?.parse().ok())
}

/// `e2fsck -fn image`: whether it exits 0 (clean, nothing to replay or fix), and its output.
pub fn e2fsck_clean(image: &Path) -> (bool, String) {
    let out = Command::new(require_tool("e2fsck"))
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("cannot run e2fsck: {e}"));
    let text = format!(
        "e2fsck -fn {} exited {}:\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A file of the guest's ext4 image, read with `debugfs` (no mount); None when absent.
pub fn debugfs_read(image: &Path, file: &str, out_dir: &Path) -> Option<Vec<u8>> {
    let out = out_dir.join(file.trim_start_matches('/').replace('/', "_"));
    let _ = std::fs::remove_file(&out);
    run_ok(
        Command::new(require_tool("debugfs"))
            .arg("-R")
            .arg(format!("dump {file} {}", out.display()))
            .arg(image),
    );
    std::fs::read(&out).ok()
}

/// What [`check_app_consistent`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCheck {
    /// The log's first and last N.
    pub first: u64,
    /// The last N.
    pub last: u64,
    /// Files whose content and logged checksum were checked.
    pub files_checked: usize,
}

/// Checks a copy of the guest's data disk for application-level consistency: `e2fsck -fn` is
/// clean (no journal replay needed), every line of `/data/log` is `N <sha256>` with consecutive
/// N, and each of the last [`KEPT_FILES`] logged files exists with exactly the writer's content
/// and logged checksum. `work` is a scratch directory. The error says what is wrong.
pub fn check_app_consistent(image: &Path, work: &Path) -> Result<AppCheck, String> {
    let (clean, fsck) = e2fsck_clean(image);
    if !clean {
        return Err(fsck);
    }
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let log = debugfs_read(image, "/log", work).ok_or("no /log on the disk")?;
    let log = String::from_utf8(log).map_err(|e| format!("/log is not UTF-8: {e}"))?;
    let mut entries: Vec<(u64, String)> = Vec::new();
    for (i, line) in log.lines().enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(n, sum)| Some((n.parse::<u64>().ok()?, sum)))
            .filter(|(_, sum)| sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some((n, sum)) = parsed else {
            return Err(format!("/log line {} is not `N sha256`: {line:?}", i + 1));
        };
        if let Some((prev, _)) = entries.last() {
            if n != prev + 1 {
                return Err(format!("/log line {}: {n} follows {prev}", i + 1));
            }
        }
        entries.push((n, sum.to_owned()));
    }
    if !log.is_empty() && !log.ends_with('\n') {
        return Err(format!(
            "/log ends with a torn line: {:?}",
            log.lines().last()
        ));
    }
    let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last()) else {
        return Err("/log is empty: the guest wrote nothing".into());
    };
    let (first, last) = (*first, *last);
    let recent: Vec<&(u64, String)> = entries
        .iter()
        .filter(|(n, _)| *n + KEPT_FILES > last)
        .collect();
    for (n, sum) in &recent {
        let name = format!("/f{n}");
        let data = debugfs_read(image, &name, work)
            .ok_or_else(|| format!("{name} is logged but absent"))?;
        if data != expected_file(*n) {
            return Err(format!(
                "{name} is logged but its content is not what was written ({} bytes, expected {})",
                data.len(),
                expected_file(*n).len()
            ));
        }
        let out = run_ok(Command::new("sha256sum").arg(work.join(format!("f{n}"))));
        let got = String::from_utf8_lossy(&out.stdout);
        if !got.starts_with(sum.as_str()) {
            return Err(format!("{name}: logged checksum {sum}, file's {got}"));
        }
    }
    Ok(AppCheck {
        first,
        last,
        files_checked: recent.len(),
    })
}
