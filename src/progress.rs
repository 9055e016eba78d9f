//! Progress bars and tracing setup shared by the commands.
//!
//! Log lines and progress bars both go to stderr; log lines are written with
//! the bars suspended, so a bar never tears a message in half. Bars are drawn
//! only on a terminal and never in quiet mode.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// The environment variable holding a tracing filter, such as
/// `nixdisk=debug` or `nixdisk::qemu=trace,info`. It wins over `-v`/`-q`.
pub const LOG_ENV: &str = "NIXDISK_LOG";

/// How much the user asked to hear: `-q` lowers, each `-v` raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verbosity {
    /// Number of `-v` flags.
    pub verbose: u8,
    /// Whether `-q` was given.
    pub quiet: bool,
}

impl Verbosity {
    /// The tracing filter for this verbosity when `NIXDISK_LOG` is unset.
    pub fn default_filter(self) -> &'static str {
        if self.quiet {
            return "error";
        }
        match self.verbose {
            0 => "nixdisk=info,warn",
            1 => "nixdisk=debug,info",
            2 => "nixdisk=trace,debug",
            _ => "trace",
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// `NIXDISK_LOG` holds something that is not a tracing filter.
    #[error(
        "{LOG_ENV}=`{value}` is not a log filter{}",
        "\n  hint: write levels such as `debug` or `nixdisk=debug,warn`"
    )]
    BadFilter {
        /// The variable's text.
        value: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global tracing subscriber was already installed.
    #[error("logging was already set up")]
    AlreadySet,
}

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The bars of this process; hidden until [`init`] says they may be drawn.
fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()))
}

/// Sets up tracing to stderr and decides whether bars are drawn. Call once,
/// from `main`.
pub fn init(verbosity: Verbosity) -> Result<(), ProgressError> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(&value)
            .map_err(|source| ProgressError::BadFilter { value, source })?,
        _ => EnvFilter::new(verbosity.default_filter()),
    };
    if !verbosity.quiet {
        // indicatif's stderr target draws only when stderr is a terminal.
        bars().set_draw_target(ProgressDrawTarget::stderr());
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| BarAwareStderr)
        .with_target(verbosity.verbose > 0)
        .with_ansi(io::stderr().is_terminal())
        .without_time()
        .try_init()
        .map_err(|_| ProgressError::AlreadySet)
}

/// A bar for work measured in bytes (copies, conversions).
pub fn bytes_bar(total: u64, message: impl Into<String>) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|style| style.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bars().add(
        ProgressBar::new(total)
            .with_style(style)
            .with_message(message.into()),
    )
}

/// A bar for work measured in steps (store paths, partitions).
pub fn steps_bar(total: u64, message: impl Into<String>) -> ProgressBar {
    let style = ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} {elapsed}")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bars().add(
        ProgressBar::new(total)
            .with_style(style)
            .with_message(message.into()),
    )
}

/// A spinner for work of unknown length (booting the builder VM).
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let bar = bars().add(ProgressBar::new_spinner().with_message(message.into()));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// stderr, with the bars lifted while a log line is written.
struct BarAwareStderr;

impl Write for BarAwareStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        bars().suspend(|| io::stderr().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_maps_to_filters() {
        let at = |verbose, quiet| Verbosity { verbose, quiet }.default_filter();
        assert_eq!(at(0, false), "nixdisk=info,warn");
        assert_eq!(at(1, false), "nixdisk=debug,info");
        assert_eq!(at(5, false), "trace");
        assert_eq!(at(3, true), "error");
        for verbose in 0..4 {
            assert!(EnvFilter::try_new(at(verbose, false)).is_ok());
        }
    }

    #[test]
    fn bars_are_hidden_until_init() {
        let bar = bytes_bar(10, "copy");
        assert!(bar.is_hidden());
        bar.finish_and_clear();
    }
}
