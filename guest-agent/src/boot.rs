//! The agent as PID 1: bring the builder VM up, connect to the host, serve, power off.
//!
//! Order: the kernel file systems, the console, the kernel command line,
//! modules, the host share and the chroot around it, the transport, hello,
//! requests. Whatever fails before hello is told to the host right after it
//! (or, when the host cannot be reached, only on the console); the agent then
//! powers off, as it does when the host asks or goes away.

use std::path::Path;
use std::time::Instant;

use nixdisk_agent::boot_args::{BootArgs, SHARE_MOUNT_POINT};
use nixdisk_agent::protocol::{Hello, PROTOCOL_VERSION};
use rustix::mount::MountFlags;

use crate::modules::{self, MODULE_LIST};
use crate::run::RunConfig;
use crate::serve::{self, Outcome, Receiver, Sender, Startup};
use crate::share;
use crate::system::{self, SystemError};
use crate::transport;

/// Runs the builder VM's init to the end. Never returns: the VM powers off.
pub fn main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        // The console is stderr once attach_console ran; before, the kernel's.
        eprintln!("nixdisk-agent: PANIC: {info}");
        system::power_off();
    }));
    let mut startup = Startup::default();
    let early = mount_kernel_file_systems();
    let console = system::attach_console();
    let args_result = system::read_text("/proc/cmdline")
        .map_err(|error| error.to_string())
        .and_then(|cmdline| BootArgs::parse(&cmdline).map_err(|error| error.to_string()));
    let debug = args_result.as_ref().is_ok_and(|args| args.debug);
    crate::init_logging(debug);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "nixdisk-agent starting as PID 1"
    );
    if let Err(error) = console {
        tracing::warn!(%error, "no /dev/console; logging where the kernel pointed us");
    }
    for error in early {
        startup.warnings.push(error.to_string());
    }
    let args = match args_result {
        Ok(args) => args,
        Err(message) => {
            tracing::error!("{message}");
            startup.fatal = Some((message, vec!["read the kernel command line".to_owned()]));
            BootArgs::default()
        }
    };
    startup.fault = args.fault;
    std::thread::spawn(system::reap_children_forever);

    if let Err(fatal) = load_modules(&args, &mut startup.warnings) {
        startup.fatal.get_or_insert(fatal);
    }
    let chroot_root = match &args.share {
        None => None,
        Some(share) => {
            match share::mount_share(share)
                .and_then(|()| share::prepare_chroot(&mut startup.warnings))
            {
                Ok(()) => Some(SHARE_MOUNT_POINT.to_owned()),
                Err(error) => {
                    let context = vec![format!(
                        "mount the host share {share} on {SHARE_MOUNT_POINT}"
                    )];
                    startup.fatal.get_or_insert((error.to_string(), context));
                    None
                }
            }
        }
    };
    for warning in &startup.warnings {
        tracing::warn!("{warning}");
    }

    let transport = transport::choose(args.transport.clone());
    let connection = match transport::connect(&transport) {
        Ok(connection) => connection,
        Err(error) => {
            tracing::error!(%error, "cannot reach the host; powering off");
            system::power_off();
        }
    };
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        kernel_release: system::kernel_release(),
        transport: transport.clone(),
    };
    let receiver = Receiver::new(connection.reader);
    let sender = Sender::new(connection.writer);
    let config = RunConfig { chroot_root };
    match serve::serve(receiver, sender.clone(), hello, startup, &config) {
        Ok(Outcome::PowerOff) => tracing::info!("the host asked to power off"),
        Ok(Outcome::HostGone) => tracing::info!("the host closed the connection; powering off"),
        Ok(Outcome::Failed) => tracing::error!("startup failed (told the host); powering off"),
        Err(error) => {
            tracing::error!(%error, "connection failed; powering off");
            let _ = sender.send_error(None, error.to_string(), vec!["serve requests".into()], None);
        }
    }
    system::power_off();
}

/// Mounts /dev, /proc, /sys, /tmp, /run (and /dev/pts, /dev/shm); returns what failed.
fn mount_kernel_file_systems() -> Vec<SystemError> {
    let nosuid = MountFlags::NOSUID | MountFlags::NODEV;
    let mounts: [(&str, &str, MountFlags, &str); 7] = [
        ("devtmpfs", "/dev", MountFlags::NOSUID, "mode=0755"),
        ("proc", "/proc", nosuid | MountFlags::NOEXEC, ""),
        ("sysfs", "/sys", nosuid | MountFlags::NOEXEC, ""),
        (
            "devpts",
            "/dev/pts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        ("tmpfs", "/dev/shm", nosuid, "mode=1777"),
        ("tmpfs", "/tmp", nosuid, "mode=1777"),
        ("tmpfs", "/run", nosuid, "mode=0755"),
    ];
    let mut failures = Vec::new();
    for (fstype, target, flags, data) in mounts {
        if let Err(error) = system::mount(fstype, target, fstype, flags, data) {
            failures.push(error);
        }
    }
    // EFI variables, for bootloader installs under OVMF; absent under SeaBIOS.
    let efivars = "/sys/firmware/efi/efivars";
    if Path::new(efivars).is_dir()
        && let Err(error) = system::mount(
            "efivarfs",
            efivars,
            "efivarfs",
            nosuid | MountFlags::NOEXEC,
            "",
        )
    {
        failures.push(error);
    }
    failures
}

/// Loads the listed modules in order. A failing module is a warning, unless
/// the transport needs it: then the message and context of the fatal error
/// (after trying the rest, so the console shows every failure).
fn load_modules(args: &BootArgs, warnings: &mut Vec<String>) -> Result<(), (String, Vec<String>)> {
    let list = match std::fs::read_to_string(MODULE_LIST) {
        Ok(list) => list,
        Err(error) => {
            tracing::info!(%error, "no module list at {MODULE_LIST}; loading nothing");
            return Ok(());
        }
    };
    let mut fatal = None;
    for path in modules::parse_module_list(&list) {
        let started = Instant::now();
        match system::load_module(&path) {
            Ok(()) => {
                tracing::debug!(module = %path.display(), elapsed = ?started.elapsed(), "loaded")
            }
            Err(error) if modules::is_vital(&path, args.transport.as_ref()) => {
                tracing::error!(%error, "a module the transport needs did not load");
                fatal.get_or_insert((
                    error.to_string(),
                    vec!["load the transport's kernel modules".into()],
                ));
            }
            Err(error) => warnings.push(error.to_string()),
        }
    }
    fatal.map_or(Ok(()), Err)
}
