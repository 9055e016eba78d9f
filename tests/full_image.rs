//! Full images of the example system, end to end through the `nixdisk`
//! binary: for every partition table type, an image that passes independent
//! checks (the table with `sgdisk -v` / `sfdisk --verify`, each file system
//! with its fsck, the installed store with `nix store verify` listing exactly
//! the closure) and boots to the example's marker: efi and efixbootldr on
//! OVMF, legacy, legacy+gpt and legacy+boot on SeaBIOS, hybrid on both;
//! `none` is a bare file system without a bootloader. Then: every output
//! format boots, `contents` get their modes and owners, `touchEFIVars` gives
//! `efi-vars.fd`, and bad inputs fail clearly, leaving nothing behind.
//!
//! Needs root, QEMU, OVMF, SeaBIOS, Debian's nix-bin, loop devices, and the
//! static agent from scripts/build-agent (the tests fail, never skip, without
//! it). At most two VMs of this binary run at once.

#[path = "full_image/build.rs"]
mod build;
#[path = "full_image/inspect.rs"]
mod inspect;
#[path = "full_image/vms.rs"]
mod vms;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use build::{Attempt, Built, build_ok, closure_of, example_system, nixdisk_build};
use inspect::{Loop, fsck_all, mount_root, table_kind, verify_store};
use vms::{Firmware, boot_to_marker};

/// The marker the example prints once generation 1 has booted.
const BOOTED: &str = "NIXDISK-EXAMPLE-BOOTED generation=1 ";

/// Builds the example system (`bootloader`) on `layout`, checks the image
/// independently, and returns it with the closure it must hold.
fn build_and_check(layout: &str, bootloader: &str, extra: &[&str]) -> (Built, Vec<String>) {
    let toplevel = example_system(&["--bootloader", bootloader]);
    let system = toplevel.to_str().expect("a UTF-8 store path");
    let mut args = vec!["--system", system, "--partition-table", layout];
    args.extend_from_slice(extra);
    let built = build_ok(&args, "img");
    let closure = closure_of(&toplevel);
    check_image(&built.image, layout, &closure);
    (built, closure)
}

/// The independent checks of one raw image of `layout`.
fn check_image(image: &Path, layout: &str, closure: &[String]) {
    let expected_table = match layout {
        "none" => None,
        "legacy" | "legacy+boot" => Some("dos"),
        _ => Some("gpt"),
    };
    let kind = table_kind(image);
    assert_eq!(kind.as_deref(), expected_table, "{layout}: the table kind");
    if let Some(kind) = &kind {
        inspect::verify_table(image, kind);
    }
    if layout == "hybrid" {
        // The MBR half, read as MBR: the protective entry and the ones BIOS
        // boots from.
        let mbr = build::run(
            std::process::Command::new("fdisk")
                .args(["-l", "-t", "dos"])
                .arg(image),
        );
        let entries: Vec<&str> = mbr
            .lines()
            .filter(|l| l.starts_with(&*image.to_string_lossy()))
            .collect();
        assert!(
            entries.len() >= 2 && entries.iter().any(|l| l.contains(" ee ")),
            "hybrid MBR:\n{mbr}"
        );
    }
    let partitions = if kind.is_some() {
        inspect::partitions(image)
    } else {
        Vec::new()
    };
    let systems = fsck_all(image, &partitions);
    let types: Vec<&str> = systems.iter().map(|(_, fs)| fs.as_str()).collect();
    let roots: Vec<Option<&inspect::Partition>> = systems
        .iter()
        .filter(|(_, fs)| fs.as_str() == "ext4")
        .map(|(p, _)| p.as_ref())
        .collect();
    assert_eq!(roots.len(), 1, "{layout}: one ext4 root in {types:?}");
    let fats = types.iter().filter(|fs| **fs == "vfat").count();
    let expected_fats = match layout {
        "efi" | "hybrid" | "legacy+boot" => 1,
        "efixbootldr" => 2,
        _ => 0,
    };
    assert_eq!(fats, expected_fats, "{layout}: FAT file systems {types:?}");
    let root = Loop::attach(image, roots[0]);
    let work = tempfile::tempdir().expect("a temporary directory");
    let (merged, lower) = mount_root(&root.device, work.path());
    verify_store(&merged.point, closure);
    for link in [
        "nix/var/nix/profiles/system",
        "nix/var/nix/profiles/system-1-link",
    ] {
        assert!(
            merged.point.join(link).symlink_metadata().is_ok(),
            "{layout}: /{link} exists"
        );
    }
    let tmp = std::fs::metadata(merged.point.join("tmp")).expect("/tmp exists");
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "{layout}: /tmp");
    drop(merged);
    drop(lower);
}

#[test]
fn legacy_boots_with_grub_on_seabios_and_in_every_output_format() {
    let (built, _) = build_and_check("legacy", "grub", &[]);
    boot_to_marker(&built.image, "raw", Firmware::SeaBios, None, BOOTED);
    // Every output format of the same build boots: converted the way
    // `nixdisk build --format` converts.
    let formats = [
        nixdisk::spec::ImageFormat::Qcow2,
        nixdisk::spec::ImageFormat::Vdi,
        nixdisk::spec::ImageFormat::Vpc,
        nixdisk::spec::ImageFormat::Vmdk,
        nixdisk::spec::ImageFormat::Vhdx,
    ];
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::thread::scope(|scope| {
        for format in formats {
            let dest = dir.path().join(format!("nixos.{}", format.extension()));
            let raw = &built.image;
            scope.spawn(move || {
                nixdisk::convert::convert(format, raw, &dest, true)
                    .unwrap_or_else(|e| panic!("converting to {format:?}: {e}"));
                boot_to_marker(
                    &dest,
                    format.qemu_img_format(),
                    Firmware::SeaBios,
                    None,
                    BOOTED,
                );
            });
        }
    });
}

#[test]
fn legacy_gpt_boots_with_grub_on_seabios() {
    let (built, _) = build_and_check("legacy+gpt", "grub", &[]);
    boot_to_marker(&built.image, "raw", Firmware::SeaBios, None, BOOTED);
}

#[test]
fn legacy_boot_boots_with_grub_on_seabios() {
    let (built, _) = build_and_check("legacy+boot", "grub", &[]);
    boot_to_marker(&built.image, "raw", Firmware::SeaBios, None, BOOTED);
}

#[test]
fn efi_boots_with_systemd_boot_on_ovmf_and_touch_efi_vars_gives_the_variables() {
    let (built, _) = build_and_check("efi", "systemd-boot", &["--touch-efi-vars"]);
    let vars = built.out.join("efi-vars.fd");
    let template = std::fs::metadata(vms::ovmf().vars_template).expect("the OVMF vars template");
    let written = std::fs::metadata(&vars)
        .unwrap_or_else(|e| panic!("touchEFIVars writes {}: {e}", vars.display()));
    assert_eq!(
        written.len(),
        template.len(),
        "efi-vars.fd is an OVMF vars file"
    );
    // OVMF itself records its boot options on first start: the file is the
    // builder's, not a copy of the template.
    assert_ne!(
        std::fs::read(&vars).expect("efi-vars.fd"),
        std::fs::read(vms::ovmf().vars_template).expect("the template"),
        "efi-vars.fd holds what the builder wrote"
    );
    let names: Vec<String> = std::fs::read_dir(&built.out)
        .expect("the output")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "no scratch files in the output: {names:?}"
    );
    boot_to_marker(&built.image, "raw", Firmware::Ovmf, Some(&vars), BOOTED);
}

#[test]
fn efixbootldr_boots_with_systemd_boot_on_ovmf() {
    let (built, _) = build_and_check("efixbootldr", "systemd-boot", &[]);
    boot_to_marker(&built.image, "raw", Firmware::Ovmf, None, BOOTED);
}

#[test]
fn hybrid_boots_on_seabios_and_on_ovmf() {
    let (built, _) = build_and_check("hybrid", "both", &[]);
    std::thread::scope(|scope| {
        for firmware in [Firmware::SeaBios, Firmware::Ovmf] {
            let image = &built.image;
            scope.spawn(move || boot_to_marker(image, "raw", firmware, None, BOOTED));
        }
    });
}

#[test]
fn none_is_a_bare_file_system_without_a_bootloader() {
    let (built, _) = build_and_check("none", "grub", &["--no-bootloader"]);
    let loop_dev = Loop::attach(&built.image, None);
    let work = tempfile::tempdir().expect("a temporary directory");
    let (merged, lower) = mount_root(&loop_dev.device, work.path());
    assert!(
        !merged.point.join("boot/grub").exists(),
        "no bootloader was installed"
    );
    drop(merged);
    drop(lower);
}

/// A contents target full of shell metacharacters.
const ODD_TARGET: &str = "/srv/it's $(touch pwned) `id`; \"x\" *";

#[test]
fn contents_get_their_modes_and_owners() {
    let toplevel = example_system(&["--bootloader", "grub"]);
    let sources = tempfile::tempdir().expect("a temporary directory");
    let file = sources.path().join("motd");
    std::fs::write(&file, "hello from contents\n").expect("a source file");
    let tree = sources.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("a source tree");
    std::fs::write(tree.join("sub/data"), "data\n").expect("a source file");
    // A link out of the image is placed as a link, never followed.
    std::os::unix::fs::symlink("/etc", tree.join("escape")).expect("a source link");
    let spec = serde_json::json!({
        "contents": [
            { "source": file, "target": "/etc/motd", "mode": "0640",
              "user": "root", "group": "root" },
            { "source": tree, "target": "/srv/tree",
              "user": "1234", "group": "567" },
            // Shell metacharacters are plain characters of the name: the
            // guest's chown line quotes them.
            { "source": file, "target": ODD_TARGET, "user": "1234", "group": "567" },
        ]
    });
    let spec_file = sources.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).expect("the spec");
    let built = build_ok(
        &[
            "--spec",
            spec_file.to_str().expect("UTF-8"),
            "--system",
            toplevel.to_str().expect("UTF-8"),
            "--partition-table",
            "none",
            "--no-bootloader",
        ],
        "img",
    );
    let loop_dev = Loop::attach(&built.image, None);
    let work = tempfile::tempdir().expect("a temporary directory");
    let (merged, lower) = mount_root(&loop_dev.device, work.path());
    let root = &merged.point;
    let motd = std::fs::metadata(root.join("etc/motd")).expect("/etc/motd is placed");
    assert_eq!(
        (motd.mode() & 0o7777, motd.uid(), motd.gid()),
        (0o640, 0, 0),
        "/etc/motd"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).expect("readable"),
        "hello from contents\n"
    );
    for path in [
        "srv/tree",
        "srv/tree/sub",
        "srv/tree/sub/data",
        "srv/tree/escape",
        ODD_TARGET.trim_start_matches('/'),
    ] {
        let meta = std::fs::symlink_metadata(root.join(path)).expect("placed");
        assert_eq!((meta.uid(), meta.gid()), (1234, 567), "/{path}'s owner");
    }
    assert_eq!(
        std::fs::read_link(root.join("srv/tree/escape")).expect("a link"),
        Path::new("/etc")
    );
    assert_eq!(
        std::fs::read_to_string(root.join(ODD_TARGET.trim_start_matches('/'))).expect("placed"),
        "hello from contents\n"
    );
    drop(merged);
    drop(lower);
}

/// Contents that would climb out of the image, or be placed through a link
/// pointing out of it, are refused while planning; nothing is left.
#[test]
fn contents_that_escape_the_image_are_refused() {
    let toplevel = example_system(&["--bootloader", "grub"]);
    let sources = tempfile::tempdir().expect("a temporary directory");
    let file = sources.path().join("motd");
    std::fs::write(&file, "x\n").expect("a source file");
    let links = sources.path().join("links");
    std::fs::create_dir(&links).expect("a source directory");
    std::os::unix::fs::symlink("/etc", links.join("etc")).expect("a source link");
    let cases = [
        (
            serde_json::json!([{ "source": file, "target": "../../x" }]),
            "contents[0].target",
        ),
        (
            serde_json::json!([{ "source": file, "target": "/etc/../../x" }]),
            "without `.` or `..` components",
        ),
        (
            serde_json::json!([
                { "source": format!("{}/*", links.display()), "target": "/srv" },
                { "source": file, "target": "/srv/etc/passwd" },
            ]),
            "two things are placed at /srv/etc",
        ),
    ];
    for (contents, needle) in cases {
        let spec_file = sources.path().join("spec.json");
        let spec = serde_json::json!({ "contents": contents });
        std::fs::write(&spec_file, spec.to_string()).expect("the spec");
        let attempt = nixdisk_build(&[
            "--spec",
            spec_file.to_str().expect("UTF-8"),
            "--system",
            toplevel.to_str().expect("UTF-8"),
            "--partition-table",
            "none",
        ]);
        assert_failed_cleanly(&attempt, needle);
    }
}

/// Asserts that a failed build said `needle`, left no output directory, and
/// left no process behind that mentions the build's private temp directory.
fn assert_failed_cleanly(attempt: &Attempt, needle: &str) {
    let stderr = attempt.stderr();
    assert!(!attempt.output.status.success(), "the build must fail");
    assert!(
        stderr.contains(needle),
        "the error says {needle:?}:\n{stderr}"
    );
    assert!(!attempt.out.exists(), "no output directory is left");
    let left: Vec<_> = std::fs::read_dir(attempt.dir.path())
        .expect("the test's directory")
        .map(|e| e.expect("an entry").path())
        .collect();
    assert!(left.is_empty(), "nothing is left beside --out: {left:?}");
}

#[test]
fn a_closure_that_does_not_fit_a_fixed_disk_fails_before_the_vm_starts() {
    let toplevel = example_system(&["--bootloader", "grub"]);
    let attempt = nixdisk_build(&[
        "--system",
        toplevel.to_str().expect("UTF-8"),
        "--disk-size",
        "24M",
    ]);
    assert_failed_cleanly(&attempt, "does not fit");
    let stderr = attempt.stderr();
    // The sizes are in the message, and the smallest disk it suggests is the
    // root plus the table's few MiB (additionalSpace counts only for auto).
    let mib_after = |word: &str| -> f64 {
        let rest = &stderr[stderr
            .find(word)
            .unwrap_or_else(|| panic!("{word:?} in:\n{stderr}"))
            + word.len()..];
        let number = rest.split_whitespace().next().expect("a number");
        assert!(
            rest.contains("MiB"),
            "a size in MiB after {word:?}:\n{stderr}"
        );
        number
            .parse()
            .unwrap_or_else(|_| panic!("a size after {word:?}:\n{stderr}"))
    };
    let needed = mib_after("needs ");
    let minimum = mib_after("at least ");
    assert!(
        needed > 24.0 && minimum >= needed && minimum < needed + 16.0,
        "needs {needed} MiB, suggests {minimum} MiB:\n{stderr}"
    );
    // A builder VM takes 15 s to start under TCG: this must be far quicker.
    assert!(
        attempt.seconds < 10.0,
        "failed early: {} s",
        attempt.seconds
    );
    assert!(
        !stderr.contains("builder VM"),
        "no VM was involved:\n{stderr}"
    );
}

#[test]
fn a_missing_store_path_fails_clearly() {
    let attempt = nixdisk_build(&[
        "--system",
        "/nix/store/00000000000000000000000000000000-nixos-system-missing",
    ]);
    assert_failed_cleanly(
        &attempt,
        "00000000000000000000000000000000-nixos-system-missing",
    );
}

#[test]
fn a_contents_source_that_does_not_exist_fails_clearly() {
    let toplevel = example_system(&["--bootloader", "grub"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("no-such-file");
    let spec = serde_json::json!({
        "contents": [ { "source": missing, "target": "/etc/x" } ]
    });
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).expect("the spec");
    let attempt = nixdisk_build(&[
        "--spec",
        spec_file.to_str().expect("UTF-8"),
        "--system",
        toplevel.to_str().expect("UTF-8"),
    ]);
    assert_failed_cleanly(&attempt, "no-such-file");
}

#[test]
fn an_unknown_user_in_contents_fails_clearly() {
    let toplevel = example_system(&["--bootloader", "grub"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("motd");
    std::fs::write(&file, "x\n").expect("a source file");
    let spec = serde_json::json!({
        "contents": [ { "source": file, "target": "/etc/motd", "user": "nosuchuser" } ]
    });
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).expect("the spec");
    let attempt = nixdisk_build(&[
        "--spec",
        spec_file.to_str().expect("UTF-8"),
        "--system",
        toplevel.to_str().expect("UTF-8"),
    ]);
    assert_failed_cleanly(&attempt, "nosuchuser");
}

#[test]
fn a_failing_switch_to_configuration_fails_with_the_guest_log_and_leaves_no_vm() {
    let toplevel = example_system(&["--bootloader", "grub", "--broken-switch"]);
    let attempt = nixdisk_build(&["--system", toplevel.to_str().expect("UTF-8")]);
    assert_failed_cleanly(&attempt, "install the bootloader");
    let stderr = attempt.stderr();
    assert!(
        stderr.contains("guest console"),
        "the guest log tail is shown:\n{stderr}"
    );
    assert_no_builder_vm_left(&attempt);
}

/// No QEMU started for `attempt` is still running: its command line names
/// the output's temporary image beside `--out`.
fn assert_no_builder_vm_left(attempt: &Attempt) {
    let needle = attempt.dir.path().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !(cmdline.contains("qemu") && cmdline.contains(&needle)),
            "a QEMU of the failed build is still running: {cmdline}"
        );
    }
}

#[test]
fn two_deterministic_builds_are_byte_identical() {
    // legacy+boot: an ext4 root and a FAT /boot, both written by the guest.
    let toplevel = example_system(&["--bootloader", "grub"]);
    let args = [
        "--system",
        toplevel.to_str().expect("UTF-8"),
        "--partition-table",
        "legacy+boot",
    ];
    let first = build_ok(&args, "img");
    let second = build_ok(&args, "img");
    let digest = |image: &Path| {
        build::run(std::process::Command::new("sha256sum").arg(image))
            .split_whitespace()
            .next()
            .expect("a digest")
            .to_owned()
    };
    assert_eq!(
        digest(&first.image),
        digest(&second.image),
        "two builds of the same spec"
    );
}
