//! Running the host's tools (mke2fs, debugfs, qemu-img, nix, ...): shell
//! quoting, command lines for messages, and the tail of a failed tool's
//! stderr that an error carries.

use std::ffi::{OsStr, OsString};

/// Quotes `text` for a POSIX shell: as it is when every character is safe
/// unquoted (a `#` only after the first, where it starts no comment), else in
/// single quotes.
pub fn quote(text: &str) -> String {
    let safe = |(at, b): (usize, u8)| {
        b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b) || (b == b'#' && at > 0)
    };
    if !text.is_empty() && text.bytes().enumerate().all(safe) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A command line as one could paste it into a shell (for messages).
pub fn shell_line<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> String {
    std::iter::once(program.as_ref())
        .chain(args.iter().map(AsRef::as_ref))
        .map(|word| quote(&word.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command line as a user would type it (for messages, not for a shell).
pub(crate) fn command_line(program: &str, args: &[OsString]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The last `lines` lines of a command's stderr, as text.
pub(crate) fn stderr_tail(stderr: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(stderr);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("/dev/vda"), "/dev/vda");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote(".#nixos"), ".#nixos");
        assert_eq!(quote("#x"), "'#x'");
    }

    #[test]
    fn shell_lines_quote_each_word() {
        assert_eq!(
            shell_line("qemu-img", &["info", "my disk.raw"]),
            "qemu-img info 'my disk.raw'"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_last_lines() {
        assert_eq!(stderr_tail(b"a\nb\nc\n", 2), "b\nc");
        assert_eq!(stderr_tail(b"only", 5), "only");
        assert_eq!(stderr_tail(b"", 5), "");
    }
}
