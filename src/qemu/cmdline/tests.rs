use super::*;

fn base() -> QemuConfig {
    QemuConfig {
        binary: "qemu-system-x86_64".into(),
        machine: Machine::Q35,
        accel: Accel::Tcg,
        smp: 2,
        memory_mib: 1024,
        firmware: Firmware::SeaBios { bios: None },
        boot: DirectBoot {
            kernel: "/run/vmlinux".into(),
            initrd: "/run/initrd".into(),
            append: "console=ttyS0 panic=-1".into(),
        },
        disks: vec![Disk {
            path: "/img/disk,1.raw".into(),
            format: DiskFormat::Raw,
        }],
        host_share: Some(HostShare {
            path: "/".into(),
            tag: "host".into(),
        }),
        console_log: "/run/console.log".into(),
        qmp_socket: "/run/qmp.sock".into(),
        transport: TransportDevice::VirtioSerial {
            socket: "/run/agent.sock".into(),
            name: "org.nixdisk.agent".into(),
        },
    }
}

fn strings(config: &QemuConfig) -> Vec<String> {
    config
        .args()
        .into_iter()
        .map(|a| a.into_string().expect("test paths are UTF-8"))
        .collect()
}

const COMMON_HEAD: [&str; 7] = [
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-action",
    "panic=exit-failure",
];

fn tail(transport: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "-kernel",
        "/run/vmlinux",
        "-initrd",
        "/run/initrd",
        "-append",
        "console=ttyS0 panic=-1",
        "-drive",
        "if=none,id=disk0,format=raw,cache=unsafe,aio=threads,discard=unmap,file=/img/disk,,1.raw",
        "-device",
        "virtio-blk-pci,drive=disk0",
        "-fsdev",
        "local,id=hostshare,security_model=none,readonly=on,multidevs=remap,path=/",
        "-device",
        "virtio-9p-pci,fsdev=hostshare,mount_tag=host",
        "-chardev",
        "file,id=console,path=/run/console.log",
        "-serial",
        "chardev:console",
        "-device",
        "pvpanic",
        "-chardev",
        "socket,id=qmp,server=on,wait=off,path=/run/qmp.sock",
        "-mon",
        "chardev=qmp,mode=control",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(transport.iter().map(|s| s.to_string()));
    v
}

#[test]
fn seabios_tcg_virtio_serial() {
    let mut expected: Vec<String> = COMMON_HEAD.iter().map(|s| s.to_string()).collect();
    expected.extend(
        [
            "-machine",
            "q35",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024M",
        ]
        .map(String::from),
    );
    expected.extend(tail(&[
        "-chardev",
        "socket,id=agent,server=on,wait=off,path=/run/agent.sock",
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtserialport,chardev=agent,name=org.nixdisk.agent",
    ]));
    assert_eq!(strings(&base()), expected);
}

#[test]
fn ovmf_kvm_vhost_user_vsock_shares_memory() {
    let config = QemuConfig {
        accel: Accel::Kvm,
        firmware: Firmware::Ovmf {
            code: "/fw/OVMF_CODE.fd".into(),
            code_format: DiskFormat::Raw,
            vars: "/run/vars.fd".into(),
            vars_format: DiskFormat::Qcow2,
            smm: false,
        },
        transport: TransportDevice::VhostUserVsock {
            socket: "/run/vhost.sock".into(),
        },
        ..base()
    };
    assert!(config.needs_shared_memory());
    let mut expected: Vec<String> = COMMON_HEAD.iter().map(|s| s.to_string()).collect();
    expected.extend(
        [
            "-object",
            "memory-backend-memfd,id=mem,size=1024M,share=on",
            "-machine",
            "q35,memory-backend=mem",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-smp",
            "2",
            "-m",
            "1024M",
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE.fd",
            "-drive",
            "if=pflash,format=qcow2,unit=1,file=/run/vars.fd",
        ]
        .map(String::from),
    );
    expected.extend(tail(&[
        "-chardev",
        "socket,id=vhostvsock,path=/run/vhost.sock",
        "-device",
        "vhost-user-vsock-pci,chardev=vhostvsock",
    ]));
    assert_eq!(strings(&config), expected);
}

#[test]
fn secure_boot_ovmf_enables_smm_and_secure_pflash() {
    let config = QemuConfig {
        firmware: Firmware::Ovmf {
            code: "/fw/OVMF_CODE.secboot.fd".into(),
            code_format: DiskFormat::Raw,
            vars: "/run/vars.fd".into(),
            vars_format: DiskFormat::Raw,
            smm: true,
        },
        ..base()
    };
    let args = strings(&config);
    let machine = args.iter().position(|a| a == "-machine").expect("-machine");
    assert_eq!(args[machine + 1], "q35,smm=on");
    let global = args.iter().position(|a| a == "-global").expect("-global");
    assert_eq!(
        args[global + 1],
        "driver=cfi.pflash01,property=secure,value=on"
    );
    assert!(global < args.iter().position(|a| a == "-drive").expect("-drive"));
}

#[test]
fn pc_machine_kernel_vsock_explicit_bios_qcow2() {
    let config = QemuConfig {
        machine: Machine::Pc,
        firmware: Firmware::SeaBios {
            bios: Some("/fw/bios.bin".into()),
        },
        disks: vec![
            Disk {
                path: "/img/a.qcow2".into(),
                format: DiskFormat::Qcow2,
            },
            Disk {
                path: "/img/b.raw".into(),
                format: DiskFormat::Raw,
            },
        ],
        host_share: None,
        transport: TransportDevice::KernelVsock { guest_cid: 42 },
        ..base()
    };
    let args = strings(&config);
    let joined = args.join(" ");
    assert!(joined.contains("-machine pc -accel"), "{joined}");
    assert!(
        joined.contains("-m 1024M -bios /fw/bios.bin -kernel"),
        "{joined}"
    );
    assert!(joined.contains(
        "-drive if=none,id=disk0,format=qcow2,cache=unsafe,aio=threads,discard=unmap,file=/img/a.qcow2 \
         -device virtio-blk-pci,drive=disk0 \
         -drive if=none,id=disk1,format=raw,cache=unsafe,aio=threads,discard=unmap,file=/img/b.raw \
         -device virtio-blk-pci,drive=disk1 -chardev"
    ), "{joined}");
    assert!(!joined.contains("-fsdev"), "{joined}");
    assert!(
        joined.ends_with("-device vhost-vsock-pci,guest-cid=42"),
        "{joined}"
    );
    assert!(!joined.contains("memory-backend"), "{joined}");
}
