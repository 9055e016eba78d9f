//! Why booting an image did not show the expected text.

use std::path::PathBuf;

/// What went wrong booting an image.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image does not exist or cannot be read.
    #[error("cannot read the image {}: {source}", path.display())]
    Image {
        /// The image.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A helper program (`qemu-img`, mtools) failed.
    #[error("`{command}` failed: {message}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it did not start.
        message: String,
    },
    /// `qemu-img info` reported a format nixdisk does not write.
    #[error(
        "{} is a `{format}` image; nixdisk boots the formats it writes: {allowed}",
        path.display()
    )]
    UnsupportedFormat {
        /// The image.
        path: PathBuf,
        /// The format qemu-img saw.
        format: String,
        /// The accepted formats.
        allowed: String,
    },
    /// `--efi-vars` with SeaBIOS.
    #[error(
        "--efi-vars {} needs UEFI, but the image boots with SeaBIOS\n\
         hint: add --firmware ovmf",
        path.display()
    )]
    VarsWithoutUefi {
        /// The vars file given.
        path: PathBuf,
    },
    /// No usable firmware.
    #[error(transparent)]
    Firmware(#[from] nixdisk_firmware::FirmwareError),
    /// Starting or talking to QEMU failed.
    #[error(transparent)]
    Qemu(#[from] crate::qemu::Error),
    /// `--entry` cannot be applied to this image.
    #[error("cannot select boot entry {entry}: {reason}")]
    Entry {
        /// The entry asked for.
        entry: u32,
        /// Why not.
        reason: String,
    },
    /// The expected text did not appear in time.
    #[error(
        "the console did not show /{expect}/ within {seconds} s; its last lines:\n{tail}\n\
         hint: raise --timeout, or run with -v to watch the console"
    )]
    Timeout {
        /// The regex.
        expect: String,
        /// The timeout.
        seconds: u64,
        /// The end of the console.
        tail: String,
    },
    /// The guest kernel panicked (pvpanic, or the panic message on the console).
    #[error("the guest panicked before the console showed /{expect}/; its last lines:\n{tail}")]
    GuestPanicked {
        /// The regex.
        expect: String,
        /// The end of the console.
        tail: String,
    },
    /// QEMU ended before the expected text appeared.
    #[error(
        "QEMU exited ({status}) before the console showed /{expect}/; the console's last lines:\n{tail}{}",
        stderr_suffix(.stderr)
    )]
    QemuExited {
        /// The regex.
        expect: String,
        /// How QEMU ended.
        status: String,
        /// The end of the console.
        tail: String,
        /// The end of QEMU's own output.
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("\nQEMU said:\n{}", stderr.trim_end())
    }
}
