//! Images with several generations, end to end through the `nixdisk` binary:
//! a build with two systems boots the newest by default and `nixdisk boot
//! --entry 1` boots the first, with GRUB on SeaBIOS and with systemd-boot on
//! OVMF; `nixdisk add-generation` on an image built with one system gives
//! the store a two-system build has, leaves the image byte-identical when the
//! new system's bootloader installation fails, and `--set-default 1 --remove
//! 2` rolls back, collecting what only generation 2 needed. Every store is checked with `nix store
//! verify --no-trust --all` and `nix path-info --all`.
//!
//! Needs what tests/full_image.rs needs (root, QEMU, OVMF, SeaBIOS, nix-bin,
//! loop devices, the static agent) and fails, never skips, without it.

#[allow(dead_code)]
#[path = "full_image/build.rs"]
mod build;
#[allow(dead_code)]
#[path = "full_image/inspect.rs"]
mod inspect;
#[allow(dead_code)]
#[path = "full_image/vms.rs"]
mod vms;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use build::{build_ok, closure_of, example_system, require_agent, run};
use inspect::{Loop, fsck_all, mount_root, verify_store};
use vms::VmSlot;

/// The example system with the given marker, GRUB for BIOS and systemd-boot.
fn system(marker: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec!["--bootloader", "both", "--marker", marker];
    args.extend_from_slice(extra);
    example_system(&args)
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// The union of the closures of `systems`, sorted.
fn closures(systems: &[&Path]) -> Vec<String> {
    let mut all: Vec<String> = systems.iter().flat_map(|s| closure_of(s)).collect();
    all.sort();
    all.dedup();
    all
}

/// Runs `nixdisk add-generation IMAGE ARGS` under TCG (this machine's KVM
/// opens but hangs; `auto` would spend 20 s finding out).
fn add_generation(image: &Path, args: &[&str]) -> Output {
    let mut all = vec!["add-generation", text(image), "--accel", "tcg"];
    all.extend_from_slice(args);
    nixdisk(&all)
}

/// Runs the `nixdisk` binary with `args` while holding a VM slot.
fn nixdisk(args: &[&str]) -> Output {
    require_agent();
    let _slot = VmSlot::take();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .args(args)
        .output()
        .expect("nixdisk runs");
    eprintln!(
        "nixdisk {args:?}: {:.1} s, {}",
        started.elapsed().as_secs_f64(),
        output.status
    );
    output
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Boots `image` with `nixdisk boot` until generation `generation` with
/// `marker` shows, choosing `--entry` when given.
fn boots(image: &Path, firmware: &str, entry: Option<u32>, generation: u32, marker: &str) {
    let expect = format!("NIXDISK-EXAMPLE-BOOTED generation={generation} marker={marker} ");
    let entry_text = entry.map(|n| n.to_string());
    let mut args = vec![
        "boot",
        text(image),
        "--firmware",
        firmware,
        "--mem",
        "256",
        // As in add_generation: auto would spend 30 s on KVM here.
        "--accel",
        "tcg",
        "--timeout",
        "300",
        "--expect",
        &expect,
    ];
    if let Some(n) = &entry_text {
        args.extend(["--entry", n]);
    }
    assert_success(
        &nixdisk(&args),
        &format!("booting {firmware} entry {entry:?}"),
    );
}

/// The image's root (the ext4 partition of the raw `image`) mounted with a
/// throwaway overlay, handed to `check`.
fn with_root(image: &Path, check: impl FnOnce(&Path)) {
    let partitions = inspect::partitions(image);
    let found = fsck_all(image, &partitions);
    let root = found
        .iter()
        .find(|(_, fs)| fs == "ext4")
        .and_then(|(p, _)| p.clone())
        .expect("an ext4 root partition");
    let device = Loop::attach(image, Some(&root));
    let work = tempfile::tempdir().expect("a temporary directory");
    let (merged, lower) = mount_root(&device.device, work.path());
    check(&merged.point);
    drop(merged);
    drop(lower);
}

/// The generations `system-N-link` -> toplevel, and where `system` points.
fn profile(root: &Path) -> (Vec<(String, PathBuf)>, PathBuf) {
    let dir = root.join("nix/var/nix/profiles");
    let mut links: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("the profiles directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.starts_with("system-"))
        .map(|name| {
            let target = std::fs::read_link(dir.join(&name)).expect("a link");
            (name, target)
        })
        .collect();
    links.sort();
    let system = std::fs::read_link(dir.join("system")).expect("the system link");
    (links, system)
}

/// A raw copy of a qcow2 `image` in `dir`.
fn raw_copy(image: &Path, dir: &Path) -> PathBuf {
    let raw = dir.join("copy.img");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(&raw));
    raw
}

/// A file of the FAT ESP (the first vfat partition) of the raw `image`,
/// read with mtools (the host kernel may have no vfat driver).
fn esp_file(image: &Path, path: &str) -> String {
    let partitions = inspect::partitions(image);
    let esp = fsck_all(image, &partitions)
        .into_iter()
        .find(|(_, fs)| fs == "vfat")
        .and_then(|(p, _)| p)
        .expect("a FAT partition");
    run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", image.display(), esp.offset))
        .arg(format!("::/{path}")))
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("a directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn two_generations_boot_the_newest_by_default_and_entry_1_the_first() {
    let one = system("gen-one", &[]);
    let two = system("gen-two", &[]);
    let built = build_ok(
        &[
            "--system",
            text(&one),
            "--system",
            text(&two),
            "--partition-table",
            "hybrid",
        ],
        "img",
    );
    with_root(&built.image, |root| {
        verify_store(root, &closures(&[&one, &two]));
        let (links, system) = profile(root);
        assert_eq!(
            links,
            [
                ("system-1-link".to_owned(), one.clone()),
                ("system-2-link".to_owned(), two.clone())
            ]
        );
        assert_eq!(system, Path::new("system-2-link"));
    });
    boots(&built.image, "seabios", None, 2, "gen-two");
    boots(&built.image, "seabios", Some(1), 1, "gen-one");
    boots(&built.image, "ovmf", None, 2, "gen-two");
    boots(&built.image, "ovmf", Some(1), 1, "gen-one");
}

#[test]
fn add_generation_matches_a_two_system_build_fails_atomically_and_rolls_back() {
    let one = system("gen-one", &[]);
    let two = system("gen-two", &[]);
    let broken = system("gen-broken", &["--broken-switch"]);
    let built = build_ok(
        &[
            "--system",
            text(&one),
            "--partition-table",
            "hybrid",
            "--format",
            "qcow2",
        ],
        "qcow2",
    );

    // Inputs that are wrong fail before any VM starts, changing nothing.
    let not_image = built.out.join("nix-support/hydra-build-products");
    let output = add_generation(&not_image, &["--system", text(&two)]);
    assert_eq!(output.status.code(), Some(2), "not an image");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a disk image nixdisk understands"),
        "{stderr}"
    );
    let output = add_generation(&built.image, &["--system", "/nix/store"]);
    assert_eq!(output.status.code(), Some(2), "not a toplevel");
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a NixOS system"));

    // A disk whose file system holds no NixOS root is refused, unchanged.
    let bare = built.out.join("bare.img");
    std::fs::File::create(&bare)
        .and_then(|f| f.set_len(32 << 20))
        .expect("a blank disk");
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&bare));
    let bare_sha = sha256(&bare);
    let output = add_generation(&bare, &["--set-default", "1"]);
    assert_eq!(output.status.code(), Some(2), "no NixOS root");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has no NixOS root"), "{stderr}");
    assert_eq!(sha256(&bare), bare_sha);
    std::fs::remove_file(&bare).expect("the blank disk can be removed");

    // A system whose bootloader installation fails leaves the image as it was.
    let before = sha256(&built.image);
    let listing = names_in(&built.out);
    let output = add_generation(&built.image, &["--system", text(&broken)]);
    assert_eq!(output.status.code(), Some(1), "the broken switch fails");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("install step `install the bootloader` failed")
            && stderr.contains("guest console"),
        "{stderr}"
    );
    assert_eq!(sha256(&built.image), before, "the image is byte-identical");
    assert_eq!(names_in(&built.out), listing, "no temporary file is left");

    // Adding generation 2: the store a build of both systems holds.
    let output = add_generation(&built.image, &["--system", text(&two)]);
    assert_success(&output, "add-generation");
    assert!(String::from_utf8_lossy(&output.stdout).contains("generations 1 2 (default 2)"));
    assert_eq!(names_in(&built.out), listing);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let raw = raw_copy(&built.image, dir.path());
    with_root(&raw, |root| {
        verify_store(root, &closures(&[&one, &two]));
        let (links, system) = profile(root);
        assert_eq!(links.len(), 2, "{links:?}");
        assert_eq!(links[1], ("system-2-link".to_owned(), two.clone()));
        assert_eq!(system, Path::new("system-2-link"));
    });
    // Both bootloaders were installed again (the hybrid ESP is /boot), with
    // generation 2 the default and generation 1 still in the menu.
    let grub = esp_file(&raw, "grub/grub.cfg");
    assert!(grub.contains("set default=nixos-generation-2"), "{grub}");
    assert!(grub.contains("--id nixos-generation-1 "), "{grub}");
    let loader = esp_file(&raw, "loader/loader.conf");
    assert!(
        loader.contains("default nixos-generation-2.conf"),
        "{loader}"
    );
    assert!(esp_file(&raw, "loader/entries/nixos-generation-1.conf").contains("gen-one"));
    std::fs::remove_file(&raw).expect("the copy can be removed");

    // Rolling back: generation 1 the default again, generation 2 removed and
    // what only it needed collected.
    let output = add_generation(&built.image, &["--set-default", "1", "--remove", "2"]);
    assert_success(&output, "add-generation --set-default 1 --remove 2");
    assert!(String::from_utf8_lossy(&output.stdout).contains("generations 1 (default 1)"));
    let raw = raw_copy(&built.image, dir.path());
    with_root(&raw, |root| {
        verify_store(root, &closure_of(&one));
        assert!(!root.join(two.strip_prefix("/").expect("absolute")).exists());
        let (links, system) = profile(root);
        assert_eq!(links, [("system-1-link".to_owned(), one.clone())]);
        assert_eq!(system, Path::new("system-1-link"));
    });
    let grub = esp_file(&raw, "grub/grub.cfg");
    assert!(grub.contains("set default=nixos-generation-1"), "{grub}");
    assert!(
        !grub.contains("nixos-generation-2 "),
        "generation 2 left the menu:\n{grub}"
    );
    let loader = esp_file(&raw, "loader/loader.conf");
    assert!(
        loader.contains("default nixos-generation-1.conf"),
        "{loader}"
    );
}
