//! The guest agent: PID 1 of nixdisk's builder VM.
//!
//! As PID 1 it runs [`boot::main`]. Started any other way it only serves the
//! protocol over stdin/stdout (`--serve-stdio`), so the request handling can
//! be tested on the host with real processes.

mod boot;
mod files;
mod modules;
mod run;
mod serve;
mod share;
mod system;
mod transport;

use std::process::ExitCode;

use nixdisk_agent::protocol::{Hello, PROTOCOL_VERSION, Transport};

use crate::run::RunConfig;
use crate::serve::{Outcome, Receiver, Sender, Startup};

/// What the command line asks for, when not PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Serve the protocol on stdin/stdout; `chroot: true` commands run in a chroot of this root.
    ServeStdio { chroot_root: Option<String> },
    /// Print the version.
    Version,
}

const USAGE: &str = "usage: nixdisk-agent --serve-stdio [--chroot-root DIR] | --version\n\
    (nixdisk-agent is the init of nixdisk's builder VM; outside it, it only serves tests)";

fn parse_args(args: &[String]) -> Result<Mode, String> {
    match args {
        [flag] if flag == "--version" => Ok(Mode::Version),
        [flag] if flag == "--serve-stdio" => Ok(Mode::ServeStdio { chroot_root: None }),
        [flag, option, root] if flag == "--serve-stdio" && option == "--chroot-root" => {
            Ok(Mode::ServeStdio {
                chroot_root: Some(root.clone()),
            })
        }
        _ => Err(format!("unexpected arguments {args:?}\n{USAGE}")),
    }
}

/// Logs to stderr: the console in the VM (the host's console log), the test's stderr on the host.
fn init_logging(debug: bool) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_max_level(level)
        .init();
}

fn main() -> ExitCode {
    if std::process::id() == 1 {
        boot::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chroot_root = match parse_args(&args) {
        Ok(Mode::Version) => {
            println!("nixdisk-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Mode::ServeStdio { chroot_root }) => chroot_root,
        Err(message) => {
            eprintln!("nixdisk-agent: {message}");
            return ExitCode::from(2);
        }
    };
    init_logging(std::env::var_os("NIXDISK_AGENT_DEBUG").is_some());
    // The same reaping as in the VM, so the tests exercise it.
    if let Err(error) = system::become_subreaper() {
        tracing::warn!(%error, "orphans of commands will not be reaped by the agent");
    }
    std::thread::spawn(system::reap_children_forever);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: system::kernel_release(),
        transport: Transport::Stdio,
    };
    let receiver = Receiver::new(Box::new(std::io::stdin()));
    let sender = Sender::new(Box::new(std::io::stdout()));
    let config = RunConfig { chroot_root };
    match serve::serve(receiver, sender, hello, Startup::default(), &config) {
        Ok(Outcome::PowerOff | Outcome::HostGone) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(error) => {
            tracing::error!(%error, "serving stdio failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use nixdisk_agent::boot_args::SHARE_MOUNT_POINT;

    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    #[test]
    fn parses_the_test_modes() {
        assert_eq!(
            parse_args(&args(&["--serve-stdio"])),
            Ok(Mode::ServeStdio { chroot_root: None })
        );
        assert_eq!(
            parse_args(&args(&[
                "--serve-stdio",
                "--chroot-root",
                SHARE_MOUNT_POINT
            ])),
            Ok(Mode::ServeStdio {
                chroot_root: Some("/host".into())
            })
        );
        assert_eq!(parse_args(&args(&["--version"])), Ok(Mode::Version));
        assert!(parse_args(&args(&[])).unwrap_err().contains("usage"));
        assert!(parse_args(&args(&["--serve"])).is_err());
    }
}
