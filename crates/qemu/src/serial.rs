//! The serial console log QEMU writes (`-chardev file`): reading it while the guest runs.

use std::path::{Path, PathBuf};

/// A VM's serial console log file.
#[derive(Debug, Clone)]
pub struct SerialLog {
    path: PathBuf,
}

impl SerialLog {
    /// The log at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SerialLog { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything logged so far (invalid UTF-8 replaced; empty while the file does not exist).
    pub fn read(&self) -> String {
        match std::fs::read(&self.path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => String::new(),
        }
    }
}

/// The last `n` lines of `log`.
pub fn tail_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The complete lines of `log` (those ended by `\n`, without `\r`): a line the guest is still
/// printing is not returned.
pub fn complete_lines(log: &str) -> impl Iterator<Item = &str> {
    let end = log.rfind('\n').map_or(0, |i| i + 1);
    log[..end].lines().map(|l| l.trim_end_matches('\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_lines_skip_the_partial_last_line() {
        let lines: Vec<&str> = complete_lines("a\r\nb\r\nseq 1").collect();
        assert_eq!(lines, ["a", "b"]);
        assert_eq!(complete_lines("partial").count(), 0);
        assert_eq!(tail_lines("1\n2\n3\n", 2), "2\n3");
    }
}
