//! The agent's settings on the kernel command line, written by the host and read by the agent.
//!
//! `nixdisk.transport=vsock:<port>|serial:<name>`, `nixdisk.share=9p:<tag>|virtiofs:<tag>`,
//! `nixdisk.debug`, and for fault tests `nixdisk.fault=panic|exit`. Other words on the command line belong to the kernel
//! and are ignored.
//!
//! What the host must give the builder VM for the agent:
//! - an initramfs with the agent as `/init`, `/dev/console`, and the modules
//!   in `/etc/nixdisk/modules` (absolute paths, one per line, dependencies
//!   first: `modules.dep` lists a module's dependencies, e.g. `virtio_ring`
//!   before `virtio`, `netfs` before `fscache` before `9p`);
//! - for `9p:<tag>`, `-virtfs local,path=/,mount_tag=<tag>,security_model=none,readonly=on,multidevs=remap`:
//!   without `multidevs=remap` the host's /proc, /sys, /dev look like one
//!   directory to the guest and the chroot breaks (the agent then reports it);
//! - for `serial:<name>`, `-device virtserialport,name=<name>` on a
//!   virtio-serial bus; hello waits until the host side is connected;
//! - for `vsock:<port>`, a vsock device; the agent listens, the host connects.
//!
//! In the chroot, `/tmp` and `/run` are fresh tmpfs (the host's are hidden;
//! top-level symlinks of the host's `/run`, such as NixOS's `current-system`,
//! are recreated), and `/mnt` is a tmpfs shared with the agent's own `/mnt`.

use std::fmt;
use std::str::FromStr;

use crate::protocol::{Transport, TransportParseError};

/// The vsock port the agent listens on when the host names none.
pub const DEFAULT_VSOCK_PORT: u32 = 7000;

/// What the agent prints on the console when its vsock transport is up and
/// it is about to listen. The host sends no connection request before this
/// line: vhost-device-vsock can wedge on a request that arrives while the
/// guest's vsock device is still being set up, and then answers none.
pub const VSOCK_WAITING_MARKER: &str = "waiting for the host on vsock";

/// The virtio-serial port name the agent opens when the host names none.
pub const DEFAULT_SERIAL_PORT: &str = "org.nixdisk.agent";

/// Where the host's root file system is mounted (read-only) in the guest; commands run with
/// `chroot: true` run in a chroot of it.
pub const SHARE_MOUNT_POINT: &str = "/host";

/// How the host shares its root file system with the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// 9p over virtio (`-virtfs` / `virtio-9p-pci`), with this mount tag.
    NineP {
        /// The mount tag.
        tag: String,
    },
    /// virtiofs (`vhost-user-fs-pci` with virtiofsd), with this tag.
    Virtiofs {
        /// The mount tag.
        tag: String,
    },
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Share::NineP { tag } => write!(f, "9p:{tag}"),
            Share::Virtiofs { tag } => write!(f, "virtiofs:{tag}"),
        }
    }
}

/// A kernel command-line setting of the agent that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootArgsError {
    /// `nixdisk.transport=` is wrong.
    #[error("kernel command line: nixdisk.transport: {0}")]
    Transport(#[from] TransportParseError),
    /// `nixdisk.share=` is wrong.
    #[error(
        "kernel command line: invalid nixdisk.share={value:?}; expected `9p:<tag>` or \
         `virtiofs:<tag>` with a tag of at most 36 bytes, no blanks"
    )]
    Share {
        /// The value given.
        value: String,
    },
    /// A `nixdisk.` word nobody knows: probably a typo, better caught than ignored.
    #[error(
        "kernel command line: unknown setting {word:?}; known: nixdisk.transport=, nixdisk.share=, \
         nixdisk.debug, nixdisk.fault=panic|exit"
    )]
    Unknown {
        /// The word.
        word: String,
    },
}

impl FromStr for Share {
    type Err = BootArgsError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = || BootArgsError::Share {
            value: value.to_owned(),
        };
        let (kind, tag) = value.split_once(':').ok_or_else(fail)?;
        // virtio-9p and virtiofs both limit mount tags to 36 bytes.
        if tag.is_empty() || tag.len() > 36 || tag.chars().any(char::is_whitespace) {
            return Err(fail());
        }
        let tag = tag.to_owned();
        match kind {
            "9p" => Ok(Share::NineP { tag }),
            "virtiofs" => Ok(Share::Virtiofs { tag }),
            _ => Err(fail()),
        }
    }
}

/// A failure the agent causes on purpose right after hello, so the host's
/// handling of a crashed agent or a panicked guest can be tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `nixdisk.fault=panic`: the agent panics (its panic hook logs and powers off).
    Panic,
    /// `nixdisk.fault=exit`: PID 1 exits, so the kernel panics.
    Exit,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Panic => "panic",
            Fault::Exit => "exit",
        })
    }
}

/// The agent's settings from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootArgs {
    /// How to reach the host; `None`: the default serial port if it exists, else vsock on
    /// [`DEFAULT_VSOCK_PORT`].
    pub transport: Option<Transport>,
    /// The host's root share, if any.
    pub share: Option<Share>,
    /// Verbose logging on the console.
    pub debug: bool,
    /// A failure to cause after hello (fault-injection tests only).
    pub fault: Option<Fault>,
}

impl BootArgs {
    /// Reads the `nixdisk.*` words of a kernel command line (`/proc/cmdline`).
    pub fn parse(cmdline: &str) -> Result<Self, BootArgsError> {
        let mut args = BootArgs::default();
        for word in cmdline.split_whitespace() {
            let Some(setting) = word.strip_prefix("nixdisk.") else {
                continue;
            };
            match setting.split_once('=') {
                Some(("transport", value)) => args.transport = Some(value.parse()?),
                Some(("share", value)) => args.share = Some(value.parse()?),
                Some(("fault", "panic")) => args.fault = Some(Fault::Panic),
                Some(("fault", "exit")) => args.fault = Some(Fault::Exit),
                None if setting == "debug" => args.debug = true,
                _ => {
                    return Err(BootArgsError::Unknown {
                        word: word.to_owned(),
                    });
                }
            }
        }
        Ok(args)
    }

    /// The kernel command-line words that [`BootArgs::parse`] reads back as `self`.
    pub fn to_kernel_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some(transport) = &self.transport {
            words.push(format!("nixdisk.transport={transport}"));
        }
        if let Some(share) = &self.share {
            words.push(format!("nixdisk.share={share}"));
        }
        if self.debug {
            words.push("nixdisk.debug".to_owned());
        }
        if let Some(fault) = self.fault {
            words.push(format!("nixdisk.fault={fault}"));
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_words_among_the_kernels() {
        let args = BootArgs::parse(
            "console=ttyS0 nixdisk.transport=vsock:7001 quiet nixdisk.share=9p:hostroot nixdisk.debug",
        )
        .unwrap();
        assert_eq!(
            args,
            BootArgs {
                transport: Some(Transport::Vsock { port: 7001 }),
                share: Some(Share::NineP {
                    tag: "hostroot".into()
                }),
                debug: true,
                fault: None,
            }
        );
    }

    #[test]
    fn nothing_given_means_defaults() {
        assert_eq!(
            BootArgs::parse("console=ttyS0\n").unwrap(),
            BootArgs::default()
        );
    }

    #[test]
    fn words_round_trip() {
        let args = BootArgs {
            transport: Some(Transport::Serial {
                name: DEFAULT_SERIAL_PORT.into(),
            }),
            share: Some(Share::Virtiofs { tag: "root".into() }),
            debug: false,
            fault: Some(Fault::Exit),
        };
        assert_eq!(
            args.to_kernel_words(),
            [
                "nixdisk.transport=serial:org.nixdisk.agent",
                "nixdisk.share=virtiofs:root",
                "nixdisk.fault=exit"
            ]
        );
        assert_eq!(
            BootArgs::parse(&args.to_kernel_words().join(" ")).unwrap(),
            args
        );
    }

    #[test]
    fn bad_settings_are_errors_naming_the_value() {
        let error = BootArgs::parse("nixdisk.share=nfs:x").unwrap_err();
        assert!(error.to_string().contains("\"nfs:x\""), "{error}");
        assert!(matches!(
            BootArgs::parse("nixdisk.transport=vsock:zero"),
            Err(BootArgsError::Transport(_))
        ));
        assert!(matches!(
            BootArgs::parse("nixdisk.fault=segv"),
            Err(BootArgsError::Unknown { .. })
        ));
        assert!(matches!(
            BootArgs::parse("nixdisk.degub"),
            Err(BootArgsError::Unknown { .. })
        ));
        assert!(BootArgs::parse(&format!("nixdisk.share=9p:{}", "t".repeat(37))).is_err());
    }
}
