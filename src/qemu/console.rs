//! The guest's serial console as QEMU writes it to a file: its tail for error
//! messages, markers anywhere in a line (OVMF prints screen-control escapes
//! before text), and streaming to the log when asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The serial console log of one VM.
#[derive(Debug, Clone)]
pub struct ConsoleLog {
    path: PathBuf,
}

impl ConsoleLog {
    /// The console written to `path` (it may not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ConsoleLog { path: path.into() }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything written so far, lossily decoded (empty if nothing yet).
    pub fn contents(&self) -> String {
        std::fs::read(&self.path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines, cleaned of control characters.
    pub fn tail(&self, n: usize) -> String {
        last_lines(&self.contents(), n)
    }

    /// Whether `marker` appears anywhere in the console so far.
    pub fn contains(&self, marker: &str) -> bool {
        self.contents().contains(marker)
    }

    /// Logs each new console line (tracing target `nixdisk::guest`) until the
    /// task is dropped; `-v` uses it to show the guest booting.
    pub async fn stream(self) {
        let mut offset = 0usize;
        let mut partial = String::new();
        loop {
            if let Ok(bytes) = tokio::fs::read(&self.path).await
                && bytes.len() > offset
            {
                partial.push_str(&String::from_utf8_lossy(&bytes[offset..]));
                offset = bytes.len();
                while let Some(end) = partial.find('\n') {
                    let line: String = partial.drain(..=end).collect();
                    tracing::info!(target: "nixdisk::guest", "{}", clean_line(&line));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The last `n` lines of `text`, each cleaned of escapes and carriage returns.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<String> = text
        .lines()
        .map(clean_line)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Drops ANSI escape sequences and other control characters from one line.
pub fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; other escapes: ESC + one char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end_and_skips_blank_lines() {
        let text = "one\ntwo\n\nthree\r\nfour\n";
        assert_eq!(last_lines(text, 2), "three\nfour");
        assert_eq!(last_lines(text, 10), "one\ntwo\nthree\nfour");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn clean_line_removes_ovmf_screen_escapes() {
        assert_eq!(
            clean_line("\u{1b}[2J\u{1b}[01;01H\u{1b}[=3h\u{1b}[2J\u{1b}[01;01HBdsDxe: loading"),
            "BdsDxe: loading"
        );
        assert_eq!(clean_line("a\u{1b}cb\u{7}\tc\r"), "ab\tc");
    }

    #[test]
    fn contains_finds_markers_mid_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = ConsoleLog::new(dir.path().join("console.log"));
        assert!(!log.contains("marker"));
        assert_eq!(log.tail(5), "");
        std::fs::write(log.path(), "boot\n\u{1b}[01;01Hxx marker yy\n").expect("write");
        assert!(log.contains("marker"));
        assert_eq!(log.tail(1), "xx marker yy");
    }
}
