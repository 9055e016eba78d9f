//! The QEMU command line that boots a disk image through its firmware,
//! computed without touching the system so tests compare it exactly.
//!
//! Unlike the builder VM ([`crate::qemu::QemuConfig`]) there is no direct
//! kernel boot and no agent channel: the firmware finds the bootloader on the
//! disk, exactly as on a real machine. The shared pieces (firmware, machine,
//! accelerator types and QEMU's comma escaping) come from [`crate::qemu`].

use std::ffi::OsString;
use std::path::PathBuf;

use crate::qemu::cmdline::{drive_option, escape_commas};
use crate::qemu::{Accel, Firmware};

/// Everything that decides the command line of a disk boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBootConfig {
    /// Accelerator.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub smp: u32,
    /// Firmware (OVMF with its private vars copy, or SeaBIOS).
    pub firmware: Firmware,
    /// The throwaway qcow2 overlay over the image: the guest writes there.
    pub overlay: PathBuf,
    /// Where the serial console is written.
    pub console_log: PathBuf,
    /// The QMP Unix socket QEMU listens on.
    pub qmp_socket: PathBuf,
}

impl DiskBootConfig {
    /// The arguments after the binary, in a fixed order.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut pair = |flag: &str, value: OsString| {
            a.push(flag.into());
            a.push(value);
        };
        pair("-display", "none".into());
        // A reboot or a panic ends the test: exit on reboot, and pause on a
        // panic so the QMP event is read before QEMU goes away.
        pair(
            "-action",
            "reboot=shutdown,shutdown=poweroff,panic=pause".into(),
        );
        let smm = matches!(self.firmware, Firmware::Ovmf { smm: true, .. });
        pair("-machine", if smm { "q35,smm=on" } else { "q35" }.into());
        match self.accel {
            Accel::Kvm => {
                pair("-accel", "kvm".into());
                pair("-cpu", "host".into());
            }
            Accel::Tcg => {
                pair("-accel", "tcg,thread=multi".into());
                pair("-cpu", "max".into());
            }
        }
        pair("-smp", self.smp.to_string().into());
        pair("-m", format!("{}M", self.memory_mib).into());
        match &self.firmware {
            Firmware::SeaBios { bios: None } => {}
            Firmware::SeaBios { bios: Some(bios) } => pair("-bios", bios.into()),
            Firmware::Ovmf {
                code,
                code_format,
                vars,
                vars_format,
                smm,
            } => {
                if *smm {
                    pair(
                        "-global",
                        "driver=cfi.pflash01,property=secure,value=on".into(),
                    );
                }
                let code_options = format!(
                    "if=pflash,format={},unit=0,readonly=on",
                    code_format.as_str()
                );
                pair("-drive", drive_option(&code_options, code));
                let vars_options = format!("if=pflash,format={},unit=1", vars_format.as_str());
                pair("-drive", drive_option(&vars_options, vars));
            }
        }
        // cache=unsafe: the overlay is thrown away after the boot.
        pair(
            "-drive",
            drive_option("if=none,id=disk0,format=qcow2,cache=unsafe", &self.overlay),
        );
        pair("-device", "virtio-blk-pci,drive=disk0,bootindex=0".into());
        let mut console = OsString::from("file,id=console,path=");
        console.push(escape_commas(self.console_log.as_os_str()));
        pair("-chardev", console);
        pair("-serial", "chardev:console".into());
        pair("-device", "pvpanic".into());
        let mut qmp = OsString::from("socket,id=qmp,server=on,wait=off,path=");
        qmp.push(escape_commas(self.qmp_socket.as_os_str()));
        pair("-chardev", qmp);
        pair("-mon", "chardev=qmp,mode=control".into());
        let mut args: Vec<OsString> = vec!["-nodefaults".into(), "-no-user-config".into()];
        args.extend(a);
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::DiskFormat;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn ovmf_tcg_boot_of_an_overlay() {
        let config = DiskBootConfig {
            accel: Accel::Tcg,
            memory_mib: 512,
            smp: 1,
            firmware: Firmware::Ovmf {
                code: "/fw/OVMF_CODE.fd".into(),
                code_format: DiskFormat::Raw,
                vars: "/run/x/vars.fd".into(),
                vars_format: DiskFormat::Raw,
                smm: false,
            },
            overlay: "/run/x/over,lay.qcow2".into(),
            console_log: "/run/x/console.log".into(),
            qmp_socket: "/run/x/qmp.sock".into(),
        };
        assert_eq!(
            strings(config.args()),
            [
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-action",
                "reboot=shutdown,shutdown=poweroff,panic=pause",
                "-machine",
                "q35",
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max",
                "-smp",
                "1",
                "-m",
                "512M",
                "-drive",
                "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE.fd",
                "-drive",
                "if=pflash,format=raw,unit=1,file=/run/x/vars.fd",
                "-drive",
                "if=none,id=disk0,format=qcow2,cache=unsafe,file=/run/x/over,,lay.qcow2",
                "-device",
                "virtio-blk-pci,drive=disk0,bootindex=0",
                "-chardev",
                "file,id=console,path=/run/x/console.log",
                "-serial",
                "chardev:console",
                "-device",
                "pvpanic",
                "-chardev",
                "socket,id=qmp,server=on,wait=off,path=/run/x/qmp.sock",
                "-mon",
                "chardev=qmp,mode=control",
            ]
        );
    }

    #[test]
    fn seabios_kvm_and_smm_ovmf_variants() {
        let mut config = DiskBootConfig {
            accel: Accel::Kvm,
            memory_mib: 1024,
            smp: 2,
            firmware: Firmware::SeaBios {
                bios: Some("/fw/bios.bin".into()),
            },
            overlay: "/o.qcow2".into(),
            console_log: "/c.log".into(),
            qmp_socket: "/q.sock".into(),
        };
        let args = strings(config.args());
        let joined = args.join(" ");
        assert!(joined.contains(
            "-machine q35 -accel kvm -cpu host -smp 2 -m 1024M -bios /fw/bios.bin -drive if=none"
        ));
        assert!(!joined.contains("pflash"));

        config.firmware = Firmware::SeaBios { bios: None };
        assert!(!strings(config.args()).contains(&"-bios".to_owned()));

        config.firmware = Firmware::Ovmf {
            code: "/c.fd".into(),
            code_format: DiskFormat::Raw,
            vars: "/v.fd".into(),
            vars_format: DiskFormat::Raw,
            smm: true,
        };
        let joined = strings(config.args()).join(" ");
        assert!(joined.contains(
            "-machine q35,smm=on -accel kvm -cpu host -smp 2 -m 1024M \
             -global driver=cfi.pflash01,property=secure,value=on -drive if=pflash"
        ));
    }
}
