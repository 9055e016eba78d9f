//! The builder VM's install steps as shell scripts, planned on the host.
//!
//! Each step is one script run by the agent in the chroot of the host share,
//! so it uses the host's own tools (`mkfs.*`, `mount`, `cp`, `chroot`). The
//! plan is pure: tests compare the scripts exactly.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::host_tool::quote;
use crate::install::ChownOp;
use crate::layout::{PartitionTable, Role, TableKind};
use crate::spec::{ByteSize, DiskSize, FsType, ImageSpec};

/// The target disk as the builder VM sees it: the first virtio disk.
pub const TARGET_DISK: &str = "/dev/vda";
/// Where the target's root is mounted in the builder (a tmpfs the agent and
/// the chroot share).
pub const TARGET_ROOT: &str = "/mnt/root";
/// Where the host sends the list of store paths to copy.
pub const PATHS_FILE: &str = "/mnt/store-paths";
/// Where the host sends the tar of the image root staging tree.
pub const STAGING_TAR: &str = "/mnt/image-root.tar";

/// How boot partitions (all FAT) are mounted: the kernel's default
/// character set (`ascii`) is a module the builder does not load, so name
/// the ones it does (`nls_cp437`, `nls_iso8859_1`).
const FAT_MOUNT_OPTIONS: &str = "-t vfat -o codepage=437,iocharset=iso8859-1";

/// One install step: a name for progress and errors, and its script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does, for progress and error messages.
    pub name: &'static str,
    /// The POSIX shell script, run with `sh -eu -c`.
    pub script: String,
}

/// What the install steps need to know besides the spec and the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInputs {
    /// `mkfs` options for the root file system from the sizing.
    pub root_mkfs_options: Vec<String>,
    /// GRUB devices named by the system, linked to the target disk.
    pub grub_devices: Vec<PathBuf>,
    /// Owner changes for `contents`, after everything is copied.
    pub chowns: Vec<ChownOp>,
    /// The EFI variables are writable (the builder runs on OVMF).
    pub efi_vars: bool,
    /// The root file system, closure and staged root included, was made on
    /// the host: the guest only mounts it (no mkfs, no copy).
    pub root_on_host: bool,
}

/// The name of the step that copies the closure in the guest.
pub const COPY_STEP: &str = "copy the closure";
/// The name of the step that runs the system's bootloader installation.
pub const BOOTLOADER_STEP: &str = "install the bootloader";

/// Where a step writes, for the hint when it runs out of space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// The root file system, sized by diskSize.
    Root(DiskSize),
    /// A boot partition of its own, sized by bootSize.
    Boot(ByteSize),
}

/// The device node of partition `number` (0: the whole disk).
pub fn partition_device(number: u32) -> String {
    if number == 0 {
        TARGET_DISK.to_owned()
    } else {
        format!("{TARGET_DISK}{number}")
    }
}

/// The install steps for `spec` on `table`, in order.
pub fn plan_steps(spec: &ImageSpec, table: &PartitionTable, inputs: &StepInputs) -> Vec<Step> {
    let mut steps = if inputs.root_on_host {
        // Nothing to copy: the boot partitions are made and mounted in one
        // step, which saves a round trip through the emulated shell.
        let mut script = mkfs_script(spec, table, inputs);
        script.push_str(&mount_boot_script(table));
        vec![Step {
            name: "make boot file systems and mount",
            script,
        }]
    } else {
        vec![
            Step {
                name: "make file systems",
                script: mkfs_script(spec, table, inputs),
            },
            Step {
                name: COPY_STEP,
                script: copy_script(),
            },
            Step {
                name: "mount boot partitions",
                script: mount_boot_script(table),
            },
        ]
    };
    if spec.install_boot_loader {
        steps.push(Step {
            name: BOOTLOADER_STEP,
            script: bootloader_script(inputs),
        });
    }
    if !inputs.chowns.is_empty() {
        steps.push(Step {
            name: "set owners of contents",
            script: chown_script(&inputs.chowns),
        });
    }
    steps.push(Step {
        name: "unmount and sync",
        script: format!("sync\numount -R {TARGET_ROOT}\nsync\n"),
    });
    steps
}

/// A FAT volume id (8 hex digits) derived from a UUID.
fn fat_volume_id(uuid: &str) -> String {
    let hex: String = uuid.chars().filter(char::is_ascii_hexdigit).collect();
    hex.chars().take(8).collect::<String>().to_uppercase()
}

fn mkfs_script(spec: &ImageSpec, table: &PartitionTable, inputs: &StepInputs) -> String {
    let mut script = String::new();
    let uuid = spec.effective_root_fsuid().to_lowercase();
    for partition in &table.partitions {
        let device = partition_device(if table.kind == TableKind::None {
            0
        } else {
            partition.number
        });
        let Some(fs) = partition.fs_type else {
            continue;
        };
        let line = match partition.role {
            Role::Root if inputs.root_on_host => continue,
            Role::Root => root_mkfs(spec, fs, &uuid, &inputs.root_mkfs_options, &device),
            Role::Esp | Role::Xbootldr | Role::Boot => {
                let label = match partition.role {
                    Role::Esp => "ESP",
                    _ => "BOOT",
                };
                let guid = partition
                    .guid
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| format!("{:08x}", partition.number));
                let id = if spec.deterministic {
                    format!(" -i {}", fat_volume_id(&guid))
                } else {
                    String::new()
                };
                format!("mkfs.vfat -n {label}{id} {device}")
            }
            Role::BiosBoot => continue,
        };
        let _ = writeln!(script, "{line} >/dev/null");
    }
    // Deterministic ext4: blocks are allocated as they are written, in copy
    // order, not when writeback happens to run.
    let options = if spec.deterministic && spec.fs_type == FsType::Ext4 {
        "-o nodelalloc "
    } else {
        ""
    };
    let _ = writeln!(
        script,
        "mkdir -p {TARGET_ROOT}\nmount {options}{} {TARGET_ROOT}",
        partition_device(if table.kind == TableKind::None {
            0
        } else {
            table.root().number
        })
    );
    script
}

fn root_mkfs(spec: &ImageSpec, fs: FsType, uuid: &str, options: &[String], device: &str) -> String {
    let label = quote(spec.effective_label());
    let options: Vec<String> = options.iter().map(|o| quote(o)).collect();
    let options = options.join(" ");
    match fs {
        FsType::Ext4 | FsType::Ext3 | FsType::Ext2 => {
            let time = if spec.deterministic {
                "E2FSPROGS_FAKE_TIME=1 "
            } else {
                ""
            };
            let seed = if spec.deterministic {
                format!(" -E hash_seed={uuid}")
            } else {
                String::new()
            };
            let options = if options.is_empty() {
                format!("-F -t {}", fs.as_str())
            } else {
                options
            };
            format!("{time}mke2fs {options} -L {label} -U {uuid}{seed} {device}")
        }
        FsType::Btrfs => format!("mkfs.btrfs -f -L {label} -U {uuid} {device}"),
        FsType::Xfs => format!("mkfs.xfs -f -L {label} -m uuid={uuid} {device}"),
        FsType::Vfat => format!("mkfs.vfat -n {label} -i {} {device}", fat_volume_id(uuid)),
        // Validation keeps read-only file systems to store-only images.
        FsType::Erofs | FsType::Squashfs => format!(
            "echo 'nixdisk: {} cannot hold a system installation' >&2; exit 1",
            fs.as_str()
        ),
    }
}

fn copy_script() -> String {
    format!(
        "mkdir -p {TARGET_ROOT}/nix/store\n\
         xargs -r -a {PATHS_FILE} cp -a -t {TARGET_ROOT}/nix/store\n\
         tar -xpf {STAGING_TAR} -C {TARGET_ROOT} --numeric-owner\n"
    )
}

pub(crate) fn mount_boot_script(table: &PartitionTable) -> String {
    let mut script = String::new();
    let mut boot: Vec<_> = table
        .partitions
        .iter()
        .filter(|p| p.role != Role::Root && p.fs_type.is_some())
        .filter_map(|p| p.mount_point.map(|m| (m, p.number)))
        .collect();
    // Parents first: /efi and /boot are siblings, but keep the order stable.
    boot.sort();
    for (mount_point, number) in boot {
        let target = format!("{TARGET_ROOT}{mount_point}");
        let _ = writeln!(
            script,
            "mkdir -p {target}\nmount {FAT_MOUNT_OPTIONS} {} {target}",
            partition_device(number)
        );
    }
    if script.is_empty() {
        script.push_str(":\n");
    }
    script
}

pub(crate) fn bootloader_script(inputs: &StepInputs) -> String {
    let mut script = String::new();
    // A chroot like nixos-enter's: the kernel's file systems and the devices.
    for (fs, dir) in [("proc", "proc"), ("sysfs", "sys"), ("tmpfs", "run")] {
        let _ = writeln!(
            script,
            "mkdir -p {TARGET_ROOT}/{dir}\nmount -t {fs} {fs} {TARGET_ROOT}/{dir}"
        );
    }
    let _ = writeln!(
        script,
        "mkdir -p {TARGET_ROOT}/dev\nmount --rbind /dev {TARGET_ROOT}/dev"
    );
    if inputs.efi_vars {
        let _ = writeln!(
            script,
            "mount -t efivarfs efivarfs {TARGET_ROOT}/sys/firmware/efi/efivars"
        );
    }
    for device in &inputs.grub_devices {
        let device = device.display().to_string();
        if device != TARGET_DISK {
            let _ = writeln!(
                script,
                "mkdir -p \"$(dirname {q})\"\nln -sfn {TARGET_DISK} {q}",
                q = quote(&device)
            );
        }
    }
    let _ = writeln!(
        script,
        "NIXOS_INSTALL_BOOTLOADER=1 chroot {TARGET_ROOT} \
         /nix/var/nix/profiles/system/bin/switch-to-configuration boot"
    );
    script
}

fn chown_script(chowns: &[ChownOp]) -> String {
    let mut script = String::new();
    for op in chowns {
        let target = format!("{TARGET_ROOT}{}", op.target.display());
        let _ = writeln!(
            script,
            "chown -R -h {}:{} {}",
            op.uid,
            op.gid,
            quote(&target)
        );
    }
    script
}

/// A hint for a failed step, from what its output says; empty when none
/// fits. Begins with a newline.
pub fn failure_hint(output: &str, space: Space) -> String {
    if output.contains("No space left on device") {
        let disk_size = match space {
            Space::Boot(boot_size) => {
                return format!(
                    "\nhint: the boot partition is full: bootSize {boot_size} leaves too little room \
                     for the kernels and initrds the bootloader copies onto it; raise bootSize \
                     (--boot-size)"
                );
            }
            Space::Root(disk_size) => disk_size,
        };
        return match disk_size {
            DiskSize::Fixed(_) => "\nhint: the data outgrew the fixed diskSize (it changed after \
                                   planning, or the disk is too tight): use diskSize \"auto\", or a \
                                   larger diskSize"
                .to_owned(),
            DiskSize::Auto => "\nhint: the automatic size was too small: please report this with \
                               the output above; additionalSpace adds room meanwhile"
                .to_owned(),
        };
    }
    if output.contains("cannot stat '/nix/store/") {
        return "\nhint: a store path of the closure vanished from the host's store after \
                planning (garbage-collected?): keep the system alive with a GC root while \
                the image builds"
            .to_owned();
    }
    String::new()
}

#[cfg(test)]
mod tests;
