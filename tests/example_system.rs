//! The example system (`nix/example-system`, built by
//! `scripts/build-example-system`) on its own, without nixdisk: its toplevel
//! has the shape of a NixOS system, its closureInfo lists its closure, and it
//! boots for real: by direct kernel boot, through systemd-boot on OVMF (with
//! the ESP alone and with an XBOOTLDR partition), and through GRUB on SeaBIOS
//! after switch-to-configuration ran in a chroot holding only the store,
//! through GRUB for EFI on OVMF, and a hybrid disk on both firmwares.
//!
//! Needs root, Debian's nix-bin, QEMU, OVMF, mtools, gdisk, fdisk and loop
//! devices (scripts/setup installs them).

#[path = "example_system/disk.rs"]
mod disk;
#[path = "example_system/vm.rs"]
mod vm;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use disk::{
    Loop, MIB, blank_disk, closure, make_ext4, make_ext4_labelled, make_fat, place, run, stage_root,
};
use vm::{Firmware, Vm};

/// One built example system.
struct ExampleSystem {
    toplevel: PathBuf,
    closure_info: PathBuf,
}

/// Builds the example system with `scripts/build-example-system ARGS`.
fn build(args: &[&str]) -> ExampleSystem {
    // Builds share GC-root links: one at a time within this test binary.
    static BUILDS: Mutex<()> = Mutex::new(());
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-example-system");
    let out = run(Command::new(script).args(args));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "the script prints toplevel and closureInfo: {out}"
    );
    ExampleSystem {
        toplevel: PathBuf::from(lines[0]),
        closure_info: PathBuf::from(lines[1]),
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The marker the example prints when generation `generation` of the system
/// with marker `marker` has booted.
fn booted(generation: u32, marker: &str) -> String {
    format!("NIXDISK-EXAMPLE-BOOTED generation={generation} marker={marker} ")
}

#[test]
fn toplevel_is_shaped_like_a_nixos_system() {
    let system = build(&["--marker", "shape", "--bootloader", "both"]);
    let top = &system.toplevel;
    for file in [
        "kernel",
        "initrd",
        "init",
        "bin/switch-to-configuration",
        "sw/bin/busybox",
    ] {
        assert!(
            top.join(file).is_file(),
            "{file} missing from {}",
            top.display()
        );
    }
    for exe in ["init", "bin/switch-to-configuration"] {
        let mode = fs::metadata(top.join(exe))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{exe} is executable");
    }
    assert_eq!(
        read(&top.join("nixos-version")).trim(),
        "nixdisk-example-shape"
    );
    assert_eq!(read(&top.join("bootloader")).trim(), "systemd-boot grub");
    assert_eq!(read(&top.join("grub-device")).trim(), "/dev/vda");
    let params = read(&top.join("kernel-params"));
    assert!(
        params.contains("console=ttyS0"),
        "serial console in {params}"
    );

    let spec: serde_json::Value =
        serde_json::from_str(&read(&top.join("boot.json"))).expect("boot.json is JSON");
    let v1 = &spec["org.nixos.bootspec.v1"];
    let resolve = |link: &str| fs::read_link(top.join(link)).expect("a link into the store");
    assert_eq!(v1["toplevel"], top.to_str().expect("UTF-8 path"));
    assert_eq!(v1["init"], top.join("init").to_str().expect("UTF-8 path"));
    assert_eq!(
        v1["kernel"],
        resolve("kernel").to_str().expect("UTF-8 path")
    );
    assert_eq!(
        v1["initrd"],
        resolve("initrd").to_str().expect("UTF-8 path")
    );
    assert_eq!(v1["system"], "x86_64-linux");
    let listed: Vec<&str> = v1["kernelParams"]
        .as_array()
        .expect("kernelParams is a list")
        .iter()
        .map(|p| p.as_str().expect("a string"))
        .collect();
    assert_eq!(listed, params.split_whitespace().collect::<Vec<_>>());

    let sd_only = build(&["--marker", "shape", "--bootloader", "systemd-boot"]);
    assert_eq!(
        read(&sd_only.toplevel.join("bootloader")).trim(),
        "systemd-boot"
    );
    assert!(!sd_only.toplevel.join("grub-device").exists());
}

#[test]
fn closure_info_lists_exactly_the_closure() {
    let system = build(&["--marker", "closure"]);
    let listed: BTreeSet<PathBuf> = read(&system.closure_info.join("store-paths"))
        .lines()
        .map(PathBuf::from)
        .collect();
    let expected: BTreeSet<PathBuf> = closure(&[&system.toplevel]).into_iter().collect();
    assert_eq!(listed, expected);

    // registration: path, narHash, narSize, deriver, reference count, references.
    let registration = read(&system.closure_info.join("registration"));
    let mut lines = registration.lines();
    let mut registered = BTreeSet::new();
    let mut total = 0u64;
    while let Some(path) = lines.next() {
        let hash = lines.next().expect("a narHash line");
        let size: u64 = lines
            .next()
            .expect("a narSize line")
            .parse()
            .expect("a number");
        assert_eq!(lines.next(), Some(""), "an empty deriver for {path}");
        let count: usize = lines
            .next()
            .expect("a count line")
            .parse()
            .expect("a number");
        let refs: BTreeSet<String> = (&mut lines).take(count).map(String::from).collect();
        let nix_refs: BTreeSet<String> =
            run(Command::new("nix-store").args(["-q", "--references", path]))
                .lines()
                .map(String::from)
                .collect();
        assert_eq!(refs, nix_refs, "references of {path}");
        let nix_hash = run(Command::new("nix-store").args(["-q", "--hash", path]));
        assert!(hash.starts_with("sha256:"), "{hash}");
        let nix_size: u64 = run(Command::new("nix-store").args(["-q", "--size", path]))
            .trim()
            .parse()
            .expect("a number");
        assert_eq!(size, nix_size, "narSize of {path}");
        // nix-store prints base32; the JSON may hold either encoding.
        if hash.len() == nix_hash.trim().len() {
            assert_eq!(hash, nix_hash.trim(), "narHash of {path}");
        }
        total += size;
        registered.insert(PathBuf::from(path));
    }
    assert_eq!(registered, expected);
    assert_eq!(
        read(&system.closure_info.join("total-nar-size")).trim(),
        total.to_string()
    );
}

#[test]
fn markers_make_distinct_systems_that_share_kernel_and_initrd() {
    let one = build(&["--marker", "gen1"]);
    let two = build(&["--marker", "gen2"]);
    assert_ne!(one.toplevel, two.toplevel);
    for link in ["kernel", "initrd", "sw"] {
        assert_eq!(
            fs::read_link(one.toplevel.join(link)).expect("a link"),
            fs::read_link(two.toplevel.join(link)).expect("a link"),
            "{link} is shared"
        );
    }
    // Building again finds everything built: the same paths.
    let again = build(&["--marker", "gen1"]);
    assert_eq!(again.toplevel, one.toplevel);
    assert_eq!(again.closure_info, one.closure_info);
}

#[test]
fn boots_to_its_marker_by_direct_kernel_boot() {
    let system = build(&["--marker", "direct"]);
    let top = &system.toplevel;
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[top]);
    let root = dir.path().join("root.img");
    make_ext4(&root, &stage, 128);
    let append = format!(
        "{} init={}/init nixdisk.generation=1 console=ttyS0",
        read(&top.join("kernel-params")).trim(),
        top.display()
    );
    let mut vm = Vm::start(
        Firmware::DirectKernel {
            kernel: &top.join("kernel"),
            initrd: &top.join("initrd"),
            append: &append,
        },
        &root,
        &dir.path().join("console.log"),
    );
    vm.wait_for(&booted(1, "direct"));
    vm.wait_for_exit();
}

/// Runs `toplevel`'s switch-to-configuration on the host against the staged
/// root, with the ESP (and XBOOTLDR) as directories inside it (enough for
/// every loader but GRUB for BIOS, whose boot code needs a real disk).
fn install_with_root_prefix(stage: &Path, toplevel: &Path, esp: &str, xbootldr: Option<&str>) {
    let mut cmd = Command::new(toplevel.join("bin/switch-to-configuration"));
    cmd.arg("boot")
        .env("NIXDISK_EXAMPLE_ROOT", stage)
        .env("NIXDISK_EXAMPLE_ESP", esp)
        .env("NIXOS_INSTALL_BOOTLOADER", "1");
    if let Some(x) = xbootldr {
        cmd.env("NIXDISK_EXAMPLE_XBOOTLDR", x);
    }
    run(&mut cmd);
}

#[test]
fn systemd_boot_on_ovmf_boots_the_default_and_a_chosen_generation() {
    let one = build(&["--marker", "sd1", "--bootloader", "systemd-boot"]);
    let two = build(&["--marker", "sd2", "--bootloader", "systemd-boot"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&one.toplevel, &two.toplevel]);
    install_with_root_prefix(&stage, &two.toplevel, "/boot", None);

    let loader = read(&stage.join("boot/loader/loader.conf"));
    assert!(
        loader.contains("default nixos-generation-2.conf"),
        "{loader}"
    );
    assert!(loader.contains("timeout 0"), "{loader}");
    for g in [1, 2] {
        let entry = read(&stage.join(format!("boot/loader/entries/nixos-generation-{g}.conf")));
        assert!(
            entry.contains(&format!("nixdisk.generation={g}")),
            "{entry}"
        );
    }
    assert!(stage.join("boot/EFI/BOOT/BOOTX64.EFI").is_file());
    assert!(stage.join("boot/EFI/systemd/systemd-bootx64.efi").is_file());

    // GPT: ESP (64 MiB) then root.
    let (esp, root, disk) = (
        dir.path().join("esp.img"),
        dir.path().join("root.img"),
        dir.path().join("disk.img"),
    );
    make_fat(&esp, &stage.join("boot"), 64, "ESP");
    fs::remove_dir_all(stage.join("boot")).expect("staged /boot can be emptied");
    fs::create_dir(stage.join("boot")).expect("/boot can be made");
    make_ext4(&root, &stage, 160);
    blank_disk(&disk, 1 + 64 + 160 + 1);
    run(Command::new("sgdisk")
        .args(["-n1:1M:+64M", "-t1:ef00", "-n2:0:+160M", "-t2:8304"])
        .arg(&disk));
    place(&disk, &esp, 1);
    place(&disk, &root, 65);

    let vars = dir.path().join("vars.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("OVMF_VARS.fd is there (install ovmf)");
    let console = dir.path().join("console-default.log");
    let mut vm = Vm::start(Firmware::Ovmf { vars: &vars }, &disk, &console);
    vm.wait_for(&booted(2, "sd2"));
    vm.wait_for_exit();
    drop(vm);

    // Choosing generation 1 the way nixdisk's --entry can: loader.conf's default.
    let conf = dir.path().join("loader.conf");
    fs::write(
        &conf,
        loader.replace("nixos-generation-2.conf", "nixos-generation-1.conf"),
    )
    .expect("loader.conf can be written");
    let esp_in_disk = format!("{}@@{}", disk.display(), MIB);
    run(Command::new("mcopy")
        .args(["-o", "-i", &esp_in_disk])
        .arg(&conf)
        .arg("::/loader/loader.conf"));
    let console = dir.path().join("console-chosen.log");
    let mut vm = Vm::start(Firmware::Ovmf { vars: &vars }, &disk, &console);
    vm.wait_for(&booted(1, "sd1"));
    vm.wait_for_exit();
}

#[test]
fn systemd_boot_with_xbootldr_boots_on_ovmf() {
    let system = build(&["--marker", "xbootldr", "--bootloader", "systemd-boot"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&system.toplevel]);
    fs::create_dir_all(stage.join("efi")).expect("/efi can be made");
    install_with_root_prefix(&stage, &system.toplevel, "/efi", Some("/boot"));
    assert!(stage.join("efi/loader/loader.conf").is_file());
    assert!(
        stage
            .join("boot/loader/entries/nixos-generation-1.conf")
            .is_file()
    );
    assert!(
        !stage.join("efi/EFI/nixos").exists(),
        "kernels go to XBOOTLDR"
    );

    let (esp, xbootldr) = (dir.path().join("esp.img"), dir.path().join("xbootldr.img"));
    let (root, disk) = (dir.path().join("root.img"), dir.path().join("disk.img"));
    make_fat(&esp, &stage.join("efi"), 32, "ESP");
    make_fat(&xbootldr, &stage.join("boot"), 64, "XBOOTLDR");
    for d in ["efi", "boot"] {
        fs::remove_dir_all(stage.join(d)).expect("staged boot dirs can be emptied");
        fs::create_dir(stage.join(d)).expect("mount points can be made");
    }
    make_ext4(&root, &stage, 128);
    blank_disk(&disk, 1 + 32 + 64 + 128 + 1);
    run(Command::new("sgdisk")
        .args([
            "-n1:1M:+32M",
            "-t1:ef00",
            "-n2:0:+64M",
            "-t2:ea00",
            "-n3:0:+128M",
            "-t3:8304",
        ])
        .arg(&disk));
    place(&disk, &esp, 1);
    place(&disk, &xbootldr, 33);
    place(&disk, &root, 97);

    let vars = dir.path().join("vars.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("OVMF_VARS.fd is there (install ovmf)");
    let mut vm = Vm::start(
        Firmware::Ovmf { vars: &vars },
        &disk,
        &dir.path().join("console.log"),
    );
    vm.wait_for(&booted(1, "xbootldr"));
    vm.wait_for_exit();
}

/// Writes an MBR with one Linux partition from 1 MiB, `size_mib` long.
fn partition_mbr(disk: &Path, size_mib: u64) {
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(disk)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk starts (install fdisk)");
    let table = format!(
        "label: dos\nstart=2048, size={}, type=83\n",
        size_mib * MIB / 512
    );
    child
        .stdin
        .take()
        .expect("sfdisk's stdin")
        .write_all(table.as_bytes())
        .expect("sfdisk reads the table");
    assert!(
        child.wait().expect("sfdisk runs").success(),
        "sfdisk failed"
    );
}

/// Runs switch-to-configuration boot as nixdisk will: chrooted into the
/// mounted root (which has no /bin or /lib, only the store), /dev holding the
/// disk and the root partition with `/dev/vda` (the system's grub-device)
/// linked to the disk, /proc and /sys mounted. Everything is mounted in a
/// private mount namespace, so it all goes away when the command ends.
fn install_from_chroot(disk: &Loop, part: &Loop, mnt: &Path) {
    let script = r#"
        set -e
        disk=$1 part=$2 mnt=$3
        mount "$part" "$mnt"
        mount -t tmpfs dev "$mnt/dev"
        cp -a "$disk" "$part" "$mnt/dev/"
        ln -s "$disk" "$mnt/dev/vda"
        mount -t proc proc "$mnt/proc"
        mount --rbind /sys "$mnt/sys"
        test ! -e "$mnt/bin" && test ! -e "$mnt/lib"
        chroot "$mnt" /nix/var/nix/profiles/system/bin/switch-to-configuration boot
    "#;
    fs::create_dir_all(mnt).expect("mount point can be made");
    run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&disk.device)
        .arg(&part.device)
        .arg(mnt)
        .env("NIXOS_INSTALL_BOOTLOADER", "1"));
}

#[test]
fn grub_installed_from_a_chroot_boots_on_seabios() {
    let one = build(&["--marker", "grub1", "--bootloader", "grub"]);
    let two = build(&["--marker", "grub2", "--bootloader", "grub"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&one.toplevel, &two.toplevel]);
    // A one-shot choice of generation 1, as grub-reboot writes it; GRUB
    // clears it, so the second boot takes the default again.
    let mut grubenv = b"# GRUB Environment Block\nnext_entry=nixos-generation-1\n".to_vec();
    grubenv.resize(1024, b'#');
    fs::create_dir_all(stage.join("boot/grub")).expect("/boot/grub can be made");
    fs::write(stage.join("boot/grub/grubenv"), grubenv).expect("grubenv can be written");

    let (root, disk) = (dir.path().join("root.img"), dir.path().join("disk.img"));
    make_ext4(&root, &stage, 200);
    blank_disk(&disk, 1 + 200);
    partition_mbr(&disk, 200);
    place(&disk, &root, 1);
    {
        let whole = Loop::attach(&disk, None);
        let part = Loop::attach(&disk, Some((1, 200)));
        install_from_chroot(&whole, &part, &dir.path().join("mnt"));
    }

    let mut vm = Vm::start(
        Firmware::SeaBios,
        &disk,
        &dir.path().join("console-once.log"),
    );
    vm.wait_for(&booted(1, "grub1"));
    vm.wait_for_exit();
    drop(vm);
    let mut vm = Vm::start(
        Firmware::SeaBios,
        &disk,
        &dir.path().join("console-default.log"),
    );
    vm.wait_for(&booted(2, "grub2"));
    vm.wait_for_exit();
}

#[test]
fn initrd_finds_the_root_by_partuuid() {
    let system = build(&["--marker", "partuuid"]);
    let top = &system.toplevel;
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[top]);
    let (root, disk) = (dir.path().join("root.img"), dir.path().join("disk.img"));
    // Not the default label: only the PARTUUID can find it.
    make_ext4_labelled(&root, &stage, 128, "elsewhere");
    blank_disk(&disk, 1 + 128 + 1);
    let partuuid = "5f1c2a44-0f0e-4d5b-9a3c-8e2b6d7f1a90";
    run(Command::new("sgdisk")
        .args(["-n1:1M:+128M", "-t1:8304"])
        .arg(format!("-u1:{partuuid}"))
        .arg(&disk));
    place(&disk, &root, 1);
    let append = format!(
        "{} root=PARTUUID={} init={}/init nixdisk.generation=7",
        read(&top.join("kernel-params")).trim(),
        partuuid.to_uppercase(),
        top.display()
    );
    let mut vm = Vm::start(
        Firmware::DirectKernel {
            kernel: &top.join("kernel"),
            initrd: &top.join("initrd"),
            append: &append,
        },
        &disk,
        &dir.path().join("console.log"),
    );
    vm.wait_for(&booted(7, "partuuid"));
    vm.wait_for_exit();
}

#[test]
fn switch_to_configuration_follows_the_profile_links() {
    let one = build(&["--marker", "links1", "--bootloader", "systemd-boot"]);
    let two = build(&["--marker", "links2", "--bootloader", "systemd-boot"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&one.toplevel, &two.toplevel]);
    let profiles = stage.join("nix/var/nix/profiles");
    let entries = stage.join("boot/loader/entries");
    let entry_names = || -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&entries)
            .expect("entries are listed")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };

    // The default is the generation `system` points to, not the newest.
    fs::remove_file(profiles.join("system")).expect("system link can be removed");
    std::os::unix::fs::symlink("system-1-link", profiles.join("system"))
        .expect("system link can be made");
    install_with_root_prefix(&stage, &two.toplevel, "/boot", None);
    let loader = read(&stage.join("boot/loader/loader.conf"));
    assert!(
        loader.contains("default nixos-generation-1.conf"),
        "{loader}"
    );
    assert_eq!(
        entry_names(),
        ["nixos-generation-1.conf", "nixos-generation-2.conf"]
    );

    // A removed generation loses its entry; files still used stay.
    fs::remove_file(profiles.join("system-1-link")).expect("link can be removed");
    install_with_root_prefix(&stage, &two.toplevel, "/boot", None);
    let loader = read(&stage.join("boot/loader/loader.conf"));
    assert!(
        loader.contains("default nixos-generation-2.conf"),
        "{loader}"
    );
    assert_eq!(entry_names(), ["nixos-generation-2.conf"]);
    let entry = read(&entries.join("nixos-generation-2.conf"));
    for line in entry
        .lines()
        .filter(|l| l.starts_with("linux ") || l.starts_with("initrd "))
    {
        let file = line.split_whitespace().nth(1).expect("a path");
        assert!(
            stage.join("boot").join(&file[1..]).is_file(),
            "{file} is on the ESP"
        );
    }

    // No generation at all, or an action other than boot: clear failures.
    fs::remove_file(profiles.join("system-2-link")).expect("link can be removed");
    let out = Command::new(two.toplevel.join("bin/switch-to-configuration"))
        .arg("boot")
        .env("NIXDISK_EXAMPLE_ROOT", &stage)
        .env("NIXDISK_EXAMPLE_ESP", "/boot")
        .output()
        .expect("switch-to-configuration runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no generations in"), "{stderr}");
    let out = Command::new(two.toplevel.join("bin/switch-to-configuration"))
        .arg("switch")
        .output()
        .expect("switch-to-configuration runs");
    assert!(!out.status.success());
}

/// Installs the bootloaders of a hybrid system: the root partition `part` of
/// `disk` mounted (in a private mount namespace) and used as the root
/// prefix, the ESP standing in as its /boot directory, whose contents are
/// then moved to `esp_dir` for an image made with mtools (this host cannot
/// mount FAT).
fn install_hybrid(toplevel: &Path, disk: &Loop, part: &Loop, mnt: &Path, esp_dir: &Path) {
    let script = r#"
        set -e
        stc=$1 disk=$2 part=$3 mnt=$4 esp=$5
        mount "$part" "$mnt"
        ln -s "$disk" "$mnt/dev/vda"
        NIXDISK_EXAMPLE_ROOT=$mnt NIXDISK_EXAMPLE_ESP=/boot "$stc" boot
        rm "$mnt/dev/vda"
        cp -a "$mnt/boot/." "$esp/"
        rm -rf "$mnt/boot"
        mkdir "$mnt/boot"
    "#;
    fs::create_dir_all(mnt).expect("mount point can be made");
    fs::create_dir_all(esp_dir).expect("ESP staging can be made");
    run(Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(toplevel.join("bin/switch-to-configuration"))
        .arg(&disk.device)
        .arg(&part.device)
        .arg(mnt)
        .arg(esp_dir)
        .env("NIXOS_INSTALL_BOOTLOADER", "1"));
}

/// A hybrid disk (GPT with a BIOS boot partition, ESP at /boot, root) of a
/// system with `bootloader` boots to generation 1 on SeaBIOS and on OVMF.
fn hybrid_boots_on_seabios_and_ovmf(bootloader: &str, marker: &str) {
    let system = build(&["--marker", marker, "--bootloader", bootloader]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&system.toplevel]);
    let (root, esp, disk) = (
        dir.path().join("root.img"),
        dir.path().join("esp.img"),
        dir.path().join("disk.img"),
    );
    make_ext4(&root, &stage, 160);
    // GPT: BIOS boot partition for GRUB's core, ESP, root.
    blank_disk(&disk, 2 + 96 + 160 + 1);
    run(Command::new("sgdisk")
        .args([
            "-n1:1M:+1M",
            "-t1:ef02",
            "-n2:0:+96M",
            "-t2:ef00",
            "-n3:0:+160M",
            "-t3:8304",
        ])
        .arg(&disk));
    place(&disk, &root, 98);
    let esp_dir = dir.path().join("esp");
    {
        let whole = Loop::attach(&disk, None);
        let part = Loop::attach(&disk, Some((98, 160)));
        install_hybrid(
            &system.toplevel,
            &whole,
            &part,
            &dir.path().join("mnt"),
            &esp_dir,
        );
    }
    assert!(esp_dir.join("grub/grub.cfg").is_file());
    assert!(esp_dir.join("EFI/BOOT/BOOTX64.EFI").is_file());
    make_fat(&esp, &esp_dir, 96, "ESP");
    place(&disk, &esp, 2);

    let mut vm = Vm::start(
        Firmware::SeaBios,
        &disk,
        &dir.path().join("console-bios.log"),
    );
    vm.wait_for(&booted(1, marker));
    vm.wait_for_exit();
    drop(vm);
    let vars = dir.path().join("vars.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("OVMF_VARS.fd is there (install ovmf)");
    let mut vm = Vm::start(
        Firmware::Ovmf { vars: &vars },
        &disk,
        &dir.path().join("console-efi.log"),
    );
    vm.wait_for(&booted(1, marker));
    vm.wait_for_exit();
}

#[test]
fn hybrid_with_systemd_boot_and_grub_boots_on_seabios_and_ovmf() {
    hybrid_boots_on_seabios_and_ovmf("both", "hybrid");
}

#[test]
fn hybrid_with_grub_for_bios_and_efi_boots_on_seabios_and_ovmf() {
    hybrid_boots_on_seabios_and_ovmf("grub-both", "grubhybrid");
}

#[test]
fn a_broken_switch_fails_with_a_clear_message() {
    let system = build(&["--marker", "broken", "--broken-switch"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&system.toplevel]);
    let out = Command::new(system.toplevel.join("bin/switch-to-configuration"))
        .arg("boot")
        .env("NIXDISK_EXAMPLE_ROOT", &stage)
        .env("NIXDISK_EXAMPLE_ESP", "/boot")
        .output()
        .expect("switch-to-configuration runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("built to fail"), "{stderr}");
    assert_eq!(
        fs::read_dir(stage.join("boot"))
            .expect("/boot is there")
            .count(),
        0
    );
}

#[test]
fn grub_for_efi_boots_on_ovmf_a_chosen_then_the_default_generation() {
    let one = build(&["--marker", "grubefi1", "--bootloader", "grub-efi"]);
    let two = build(&["--marker", "grubefi2", "--bootloader", "grub-efi"]);
    let dir = tempfile::tempdir().expect("a temp dir");
    let stage = dir.path().join("stage");
    stage_root(&stage, &[&one.toplevel, &two.toplevel]);
    // The ESP is /boot; GRUB writes to it through the root prefix.
    install_with_root_prefix(&stage, &two.toplevel, "/boot", None);
    assert!(stage.join("boot/EFI/BOOT/BOOTX64.EFI").is_file());
    assert!(stage.join("boot/grub/x86_64-efi/normal.mod").is_file());
    let cfg = read(&stage.join("boot/grub/grub.cfg"));
    assert!(
        cfg.contains("linux /kernels/"),
        "paths on the ESP's own file system: {cfg}"
    );
    let mut grubenv = b"# GRUB Environment Block\nnext_entry=nixos-generation-1\n".to_vec();
    grubenv.resize(1024, b'#');
    fs::write(stage.join("boot/grub/grubenv"), grubenv).expect("grubenv can be written");

    let (esp, root, disk) = (
        dir.path().join("esp.img"),
        dir.path().join("root.img"),
        dir.path().join("disk.img"),
    );
    make_fat(&esp, &stage.join("boot"), 96, "ESP");
    fs::remove_dir_all(stage.join("boot")).expect("staged /boot can be emptied");
    fs::create_dir(stage.join("boot")).expect("/boot can be made");
    make_ext4(&root, &stage, 160);
    blank_disk(&disk, 1 + 96 + 160 + 1);
    run(Command::new("sgdisk")
        .args(["-n1:1M:+96M", "-t1:ef00", "-n2:0:+160M", "-t2:8304"])
        .arg(&disk));
    place(&disk, &esp, 1);
    place(&disk, &root, 97);

    let vars = dir.path().join("vars.fd");
    fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).expect("OVMF_VARS.fd is there (install ovmf)");
    let mut vm = Vm::start(
        Firmware::Ovmf { vars: &vars },
        &disk,
        &dir.path().join("console-once.log"),
    );
    vm.wait_for(&booted(1, "grubefi1"));
    vm.wait_for_exit();
    drop(vm);
    let mut vm = Vm::start(
        Firmware::Ovmf { vars: &vars },
        &disk,
        &dir.path().join("console-default.log"),
    );
    vm.wait_for(&booted(2, "grubefi2"));
    vm.wait_for_exit();
}
