//! The QEMU command line of the builder VM, computed from a [`QemuConfig`]
//! without touching the system, so that tests can compare it exactly.

use std::ffi::OsString;
use std::path::PathBuf;

/// The emulated machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `q35`: PCIe, needed by OVMF with SMM; the default.
    Q35,
    /// `pc` (i440fx): the older PC, enough for SeaBIOS.
    Pc,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`, with the host's CPU model.
    Kvm,
    /// QEMU's software emulator, one host thread per virtual CPU.
    Tcg,
}

/// The firmware QEMU starts before the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (legacy BIOS); `None` keeps QEMU's built-in copy.
    SeaBios {
        /// An explicit `bios.bin`, passed as `-bios`.
        bios: Option<PathBuf>,
    },
    /// OVMF (UEFI) as two pflash drives: read-only code and a private,
    /// writable copy of the variables template.
    Ovmf {
        /// The firmware code (`OVMF_CODE*.fd`).
        code: PathBuf,
        /// Its format.
        code_format: DiskFormat,
        /// The private vars file (a copy of `OVMF_VARS*.fd`).
        vars: PathBuf,
        /// Its format.
        vars_format: DiskFormat,
        /// Secure-boot builds need SMM and a secure pflash (`q35,smm=on`).
        smm: bool,
    },
}

/// The format of a disk image attached to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A plain raw image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

impl DiskFormat {
    /// Parses QEMU's format name (`raw`, `qcow2`).
    pub fn from_name(name: &str) -> Option<DiskFormat> {
        match name {
            "raw" => Some(DiskFormat::Raw),
            "qcow2" => Some(DiskFormat::Qcow2),
            _ => None,
        }
    }

    /// QEMU's name for the format.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A disk attached as virtio-blk; the guest sees them in order as `vda`, `vdb`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The image file on the host.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
}

/// A host directory shared into the guest read-only over 9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShare {
    /// The host directory (the builder shares `/`).
    pub path: PathBuf,
    /// The 9p mount tag the guest mounts it by.
    pub tag: String,
}

/// The device the host and the agent talk through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportDevice {
    /// vsock through the kernel's `vhost-vsock` (needs `/dev/vhost-vsock`).
    KernelVsock {
        /// The guest's context id, unique on the host.
        guest_cid: u32,
    },
    /// vsock through a vhost-user backend (`vhost-device-vsock`); needs guest
    /// RAM shared with the backend.
    VhostUserVsock {
        /// The backend's vhost-user socket.
        socket: PathBuf,
    },
    /// A virtio-serial port on a Unix socket that QEMU serves.
    VirtioSerial {
        /// The Unix socket QEMU listens on.
        socket: PathBuf,
        /// The port name the guest finds under `/dev/virtio-ports/`.
        name: String,
    },
}

/// The kernel QEMU boots directly, with its initramfs and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot {
    /// The kernel: an uncompressed vmlinux (PVH entry) or a bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
}

/// Everything that decides QEMU's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    /// The QEMU binary (`qemu-system-x86_64`).
    pub binary: PathBuf,
    /// Machine type.
    pub machine: Machine,
    /// Accelerator.
    pub accel: Accel,
    /// Number of virtual CPUs.
    pub smp: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Firmware.
    pub firmware: Firmware,
    /// Kernel, initramfs and command line.
    pub boot: DirectBoot,
    /// Disks, in guest order.
    pub disks: Vec<Disk>,
    /// The host directory shared read-only, if any.
    pub host_share: Option<HostShare>,
    /// Where the serial console is written.
    pub console_log: PathBuf,
    /// The QMP Unix socket QEMU listens on.
    pub qmp_socket: PathBuf,
    /// The host-guest channel.
    pub transport: TransportDevice,
}

impl QemuConfig {
    /// Whether guest RAM must be a shared memfd (vhost-user backends map it).
    pub fn needs_shared_memory(&self) -> bool {
        matches!(self.transport, TransportDevice::VhostUserVsock { .. })
    }

    /// The arguments after the binary, in a fixed order.
    pub fn args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.flag("-nodefaults");
        a.flag("-no-user-config");
        a.pair("-display", "none");
        // A guest reboot means the build went wrong (panic=-1): exit instead.
        a.flag("-no-reboot");
        a.pair("-action", "panic=exit-failure");

        let smm = matches!(self.firmware, Firmware::Ovmf { smm: true, .. });
        let machine = match (self.machine, smm) {
            (Machine::Q35, true) => "q35,smm=on",
            (Machine::Q35, false) => "q35",
            (Machine::Pc, _) => "pc",
        };
        let memory_backend = if self.needs_shared_memory() {
            a.pair(
                "-object",
                format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
            );
            ",memory-backend=mem"
        } else {
            ""
        };
        a.pair("-machine", format!("{machine}{memory_backend}"));
        match self.accel {
            Accel::Kvm => {
                a.pair("-accel", "kvm");
                a.pair("-cpu", "host");
            }
            Accel::Tcg => {
                a.pair("-accel", "tcg,thread=multi");
                a.pair("-cpu", "max");
            }
        }
        a.pair("-smp", self.smp.to_string());
        a.pair("-m", format!("{}M", self.memory_mib));

        match &self.firmware {
            Firmware::SeaBios { bios: None } => {}
            Firmware::SeaBios { bios: Some(bios) } => a.pair("-bios", bios),
            Firmware::Ovmf {
                code,
                code_format,
                vars,
                vars_format,
                smm,
            } => {
                if *smm {
                    a.pair("-global", "driver=cfi.pflash01,property=secure,value=on");
                }
                let code_options = format!(
                    "if=pflash,format={},unit=0,readonly=on",
                    code_format.as_str()
                );
                a.pair("-drive", drive_option(&code_options, code));
                let vars_options = format!("if=pflash,format={},unit=1", vars_format.as_str());
                a.pair("-drive", drive_option(&vars_options, vars));
            }
        }

        a.pair("-kernel", &self.boot.kernel);
        a.pair("-initrd", &self.boot.initrd);
        a.pair("-append", &self.boot.append);

        for (index, disk) in self.disks.iter().enumerate() {
            // cache=unsafe: the image is thrown away if the build fails, and
            // skipping flushes is much faster under emulation.
            let options = format!(
                "if=none,id=disk{index},format={},cache=unsafe,aio=threads,discard=unmap",
                disk.format.as_str()
            );
            a.pair("-drive", drive_option(&options, &disk.path));
            a.pair("-device", format!("virtio-blk-pci,drive=disk{index}"));
        }

        if let Some(share) = &self.host_share {
            // multidevs=remap: the host root spans many file systems, whose
            // inode numbers would collide in the guest otherwise.
            let mut fsdev = OsString::from(
                "local,id=hostshare,security_model=none,readonly=on,multidevs=remap,path=",
            );
            fsdev.push(escape_commas(share.path.as_os_str()));
            a.pair("-fsdev", fsdev);
            a.pair(
                "-device",
                format!("virtio-9p-pci,fsdev=hostshare,mount_tag={}", share.tag),
            );
        }

        let mut console = OsString::from("file,id=console,path=");
        console.push(escape_commas(self.console_log.as_os_str()));
        a.pair("-chardev", console);
        a.pair("-serial", "chardev:console");
        a.pair("-device", "pvpanic");

        let mut qmp = OsString::from("socket,id=qmp,server=on,wait=off,path=");
        qmp.push(escape_commas(self.qmp_socket.as_os_str()));
        a.pair("-chardev", qmp);
        a.pair("-mon", "chardev=qmp,mode=control");

        match &self.transport {
            TransportDevice::KernelVsock { guest_cid } => {
                a.pair("-device", format!("vhost-vsock-pci,guest-cid={guest_cid}"));
            }
            TransportDevice::VhostUserVsock { socket } => {
                let mut chardev = OsString::from("socket,id=vhostvsock,path=");
                chardev.push(escape_commas(socket.as_os_str()));
                a.pair("-chardev", chardev);
                a.pair("-device", "vhost-user-vsock-pci,chardev=vhostvsock");
            }
            TransportDevice::VirtioSerial { socket, name } => {
                let mut chardev = OsString::from("socket,id=agent,server=on,wait=off,path=");
                chardev.push(escape_commas(socket.as_os_str()));
                a.pair("-chardev", chardev);
                a.pair("-device", "virtio-serial-pci");
                a.pair(
                    "-device",
                    format!("virtserialport,chardev=agent,name={name}"),
                );
            }
        }
        a.0
    }
}

/// `-drive` options followed by `file=<path>` (commas in the path doubled).
pub(crate) fn drive_option(options: &str, path: &std::path::Path) -> OsString {
    let mut s = OsString::from(options);
    s.push(",file=");
    s.push(escape_commas(path.as_os_str()));
    s
}

/// QEMU's option syntax escapes a comma inside a value by doubling it.
pub(crate) fn escape_commas(value: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, flag: &str) {
        self.0.push(flag.into());
    }
    fn pair(&mut self, flag: &str, value: impl AsRef<std::ffi::OsStr>) {
        self.0.push(flag.into());
        self.0.push(value.as_ref().to_owned());
    }
}

#[cfg(test)]
mod tests;
