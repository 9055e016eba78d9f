//! The serial console as a stream of cleaned lines, matched against the
//! expected regex. OVMF and bootloaders draw with escape sequences, so every
//! line is stripped of them first and the regex may match anywhere in it.

use regex::Regex;

use crate::qemu::console::clean_line;

/// What the kernel prints when it panics; the boot fails at once even when
/// the guest has no pvpanic driver loaded.
const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// Splits console bytes into lines as they arrive.
#[derive(Debug, Default)]
pub struct ConsoleLines {
    pending: Vec<u8>,
}

impl ConsoleLines {
    /// Appends newly read bytes; returns the lines they completed, cleaned.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.pending.drain(..=last_newline).collect();
        String::from_utf8_lossy(&complete)
            .lines()
            .map(clean_line)
            .collect()
    }

    /// The text after the last newline, cleaned: a prompt such as `login: `
    /// is never followed by one.
    pub fn partial(&self) -> String {
        clean_line(&String::from_utf8_lossy(&self.pending))
    }
}

/// What one console line means for the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineVerdict {
    /// The expected text: the boot succeeded.
    Matched,
    /// The guest kernel panicked.
    Panicked,
    /// Nothing yet.
    Continue,
}

/// Judges one cleaned line; the expected regex wins over a panic message on
/// the same line, so a test may expect a panic.
pub fn judge(expect: &Regex, line: &str) -> LineVerdict {
    if expect.is_match(line) {
        LineVerdict::Matched
    } else if line.contains(KERNEL_PANIC) {
        LineVerdict::Panicked
    } else {
        LineVerdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_reads_and_cleaned() {
        let mut lines = ConsoleLines::default();
        assert_eq!(
            lines.push(b"\x1b[2J\x1b[01;01HBdsDxe: load"),
            Vec::<String>::new()
        );
        assert_eq!(lines.partial(), "BdsDxe: load");
        assert_eq!(
            lines.push(b"ing\r\nsecond\nthird"),
            ["BdsDxe: loading", "second"]
        );
        assert_eq!(lines.partial(), "third");
        assert_eq!(lines.push(b"\n"), ["third"]);
        assert_eq!(lines.partial(), "");
    }

    #[test]
    fn invalid_utf8_does_not_stop_the_stream() {
        let mut lines = ConsoleLines::default();
        assert_eq!(lines.push(b"a\xffb\nmarker\n"), ["a\u{fffd}b", "marker"]);
    }

    #[test]
    fn verdicts() {
        let expect = Regex::new(r"MARKER-\d+").expect("regex");
        assert_eq!(judge(&expect, "xx MARKER-2 yy"), LineVerdict::Matched);
        assert_eq!(judge(&expect, "MARKER-"), LineVerdict::Continue);
        assert_eq!(
            judge(
                &expect,
                "[ 1.0] Kernel panic - not syncing: Attempted to kill init!"
            ),
            LineVerdict::Panicked
        );
        let expect_panic = Regex::new("Kernel panic").expect("regex");
        assert_eq!(
            judge(&expect_panic, "Kernel panic - not syncing: VFS"),
            LineVerdict::Matched
        );
    }
}
