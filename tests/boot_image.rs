//! `nixdisk boot` against real QEMU under TCG: a small UEFI disk made here
//! (GPT from nixdisk's efi layout, an ESP made with mkfs.vfat and mtools,
//! systemd-boot, Debian's kernel and a busybox initramfs per entry) boots on
//! OVMF to its marker, in raw and qcow2 form, without the image changing;
//! `--entry` picks the other entry; a wrong regex fails with the console tail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use nixdisk::boot_test::{
    AccelChoice, BootError, BootPlan, FirmwareChoice, ImageFormat, boot_until, inspect,
};
use nixdisk::initramfs::Initramfs;
use nixdisk::layout::Role;
use nixdisk_firmware::FirmwareKind;
use regex::Regex;

/// One VM at a time: the machine has two cores.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Generation 1 prints its marker and stays up; generation 2 (the default)
/// prints its marker and powers off.
const ENTRIES: [(u32, &str); 2] = [
    (1, "/bin/busybox sleep 3600"),
    (2, "/bin/busybox poweroff -f"),
];

/// Whether the tools exist; panics unless `NIXDISK_SKIP_VM_TESTS` is set,
/// so a missing tool never passes silently.
fn require_tools() -> bool {
    let have = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "--version"),
        ("qemu-img", "--version"),
        ("mkfs.vfat", "--help"),
        ("mcopy", "--version"),
    ]
    .into_iter()
    .filter(|(p, a)| !have(p, a))
    .map(|(p, _)| p)
    .chain(
        [SYSTEMD_BOOT, "/bin/busybox"]
            .into_iter()
            .filter(|p| !Path::new(p).is_file()),
    )
    .collect();
    if missing.is_empty() && kernel().is_some() {
        return true;
    }
    if std::env::var_os("NIXDISK_SKIP_VM_TESTS").is_some() {
        eprintln!("skipping: missing {missing:?} or /boot/vmlinuz-*");
        return false;
    }
    panic!(
        "boot tests need {missing:?} and a /boot/vmlinuz-*; set NIXDISK_SKIP_VM_TESTS=1 to skip"
    );
}

fn kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn marker(generation: u32) -> String {
    format!("NIXDISK-BOOT-TEST generation={generation}")
}

/// An initramfs whose `/init` prints the generation's marker, then `then`.
fn initrd(generation: u32, then: &str) -> Vec<u8> {
    let mut archive = Initramfs::new();
    archive
        .add_host_file("/bin/busybox", Path::new("/bin/busybox"), 0o755)
        .expect("busybox");
    archive
        .add_char_device("/dev/console", 5, 1, 0o600)
        .expect("console node");
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox echo '{}'\n{then}\n",
        marker(generation)
    );
    archive
        .add_file("/init", init.into_bytes(), 0o755)
        .expect("init");
    archive.to_bytes().expect("archive")
}

/// A raw GPT disk (nixdisk's efi layout) whose ESP holds systemd-boot and
/// one loader entry per generation, generation 2 the default.
fn efi_image(dir: &Path) -> PathBuf {
    let spec = nixdisk::spec::parse_spec(
        r#"{"partitionTableType": "efi", "diskSize": "96M", "bootSize": "64M", "format": "raw"}"#,
        "test",
    )
    .expect("spec");
    let disk_size = 96 << 20;
    let table = nixdisk::layout::plan(&spec, disk_size).expect("plan");
    let image = dir.join("disk.raw");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(disk_size))
        .expect("sparse disk");
    nixdisk::layout::write_table(&table, &image).expect("partition table");
    let esp = table.by_role(Role::Esp).expect("efi layout has an ESP");
    let img = image.to_str().expect("utf-8 path");
    run(
        "mkfs.vfat",
        &[
            &format!("--offset={}", esp.start / 512),
            "-n",
            "ESP",
            img,
            &(esp.size / 1024).to_string(),
        ],
    );
    let at = format!("{img}@@{}", esp.start);
    run(
        "mmd",
        &[
            "-i",
            &at,
            "::/EFI",
            "::/EFI/BOOT",
            "::/loader",
            "::/loader/entries",
        ],
    );
    let kernel = kernel().expect("checked by require_tools");
    let mut files: Vec<(PathBuf, String)> = vec![
        (SYSTEMD_BOOT.into(), "::/EFI/BOOT/BOOTX64.EFI".into()),
        (kernel, "::/vmlinuz".into()),
    ];
    let loader_conf = dir.join("loader.conf");
    std::fs::write(&loader_conf, "timeout 0\ndefault test-2.conf\n").expect("write");
    files.push((loader_conf, "::/loader/loader.conf".into()));
    for (generation, then) in ENTRIES {
        let initrd_path = dir.join(format!("initrd-{generation}"));
        std::fs::write(&initrd_path, initrd(generation, then)).expect("write");
        files.push((initrd_path, format!("::/initrd-{generation}")));
        let entry = dir.join(format!("test-{generation}.conf"));
        std::fs::write(
            &entry,
            format!(
                "title test generation {generation}\nlinux /vmlinuz\ninitrd /initrd-{generation}\n\
                 options console=ttyS0 panic=-1 loglevel=4\n"
            ),
        )
        .expect("write");
        files.push((entry, format!("::/loader/entries/test-{generation}.conf")));
    }
    for (source, target) in &files {
        run(
            "mcopy",
            &["-i", &at, source.to_str().expect("utf-8 path"), target],
        );
    }
    image
}

/// The image's sha256 (sha256sum: hashing in a debug build is slow).
fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned()
}

/// A TCG plan with a private parent for the run directory.
fn plan(image: &Path, expect: &str, runs: &Path) -> BootPlan {
    let mut plan = BootPlan::new(image, Regex::new(expect).expect("regex"));
    plan.accel = AccelChoice::Tcg;
    plan.timeout = Duration::from_secs(240);
    plan.memory_mib = 256;
    plan.run_dir_parent = Some(runs.to_owned());
    plan
}

/// Whether `runs` is empty again (the run directory was removed).
fn assert_cleaned(runs: &Path) {
    let left: Vec<_> = std::fs::read_dir(runs)
        .expect("runs dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "run directories left behind: {left:?}");
}

struct Setup {
    _lock: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    runs: PathBuf,
    image: PathBuf,
}

fn setup() -> Option<Setup> {
    if !require_tools() {
        return None;
    }
    let lock = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).expect("runs dir");
    let image = efi_image(dir.path());
    Some(Setup {
        _lock: lock,
        dir,
        runs,
        image,
    })
}

/// The image converted to `format` beside it.
fn converted(s: &Setup, format: &str) -> PathBuf {
    let out = s.dir.path().join(format!("disk.{format}"));
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            format,
            s.image.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
        ],
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_is_recognised_with_its_esp() {
    let Some(s) = setup() else { return };
    for format in ImageFormat::ALL {
        let image = match format {
            ImageFormat::Raw => s.image.clone(),
            other => converted(&s, other.as_str()),
        };
        let (found, partitions) = inspect(Path::new("qemu-img"), &image, &s.runs)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", format.as_str()));
        assert_eq!(found, format);
        assert!(
            partitions.esp && partitions.wants_uefi(),
            "{}",
            format.as_str()
        );
        assert!(!partitions.bios_boot);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_qcow2_and_vpc_images_boot_on_ovmf_to_the_marker_and_stay_unchanged() {
    let Some(s) = setup() else { return };
    for image in [
        s.image.clone(),
        converted(&s, "qcow2"),
        converted(&s, "vpc"),
    ] {
        let image = &image;
        let before = sha256(image);
        let outcome = boot_until(&plan(image, r"BOOT-TEST generation=\d", &s.runs))
            .await
            .unwrap_or_else(|e| panic!("{} did not boot: {e}", image.display()));
        assert_eq!(
            outcome.firmware,
            FirmwareKind::Uefi,
            "auto picks OVMF for an ESP"
        );
        assert!(
            outcome.line.contains(&marker(2)),
            "default entry: {}",
            outcome.line
        );
        assert_eq!(sha256(image), before, "{} changed", image.display());
        assert_cleaned(&s.runs);
        eprintln!(
            "{}: {} after {:.1} s",
            outcome.format.as_str(),
            outcome.line,
            outcome.elapsed.as_secs_f64()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_one_boots_the_older_generation_without_touching_the_image() {
    let Some(s) = setup() else { return };
    let before = sha256(&s.image);
    let mut plan = plan(&s.image, r"BOOT-TEST generation=\d", &s.runs);
    plan.firmware = FirmwareChoice::Ovmf;
    plan.entry = Some(1);
    let outcome = boot_until(&plan)
        .await
        .unwrap_or_else(|e| panic!("entry 1 did not boot: {e}"));
    assert!(outcome.line.contains(&marker(1)), "{}", outcome.line);
    assert_eq!(sha256(&s.image), before);
    assert_cleaned(&s.runs);

    plan.entry = Some(3);
    let error = boot_until(&plan).await.expect_err("there is no entry 3");
    assert!(
        matches!(error, BootError::Entry { entry: 3, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("test-1.conf, test-2.conf"),
        "{error}"
    );
    assert_cleaned(&s.runs);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_regex_fails_with_the_console_tail() {
    let Some(s) = setup() else { return };
    // Generation 2 powers off after its marker: QEMU exits first.
    let error = boot_until(&plan(&s.image, "never-printed", &s.runs))
        .await
        .expect_err("the regex cannot match");
    let BootError::QemuExited { ref tail, .. } = error else {
        panic!("expected QEMU to exit first, got: {error}");
    };
    eprintln!("{error}");
    assert!(tail.contains(&marker(2)), "tail: {tail}");
    assert!(error.to_string().contains("/never-printed/"), "{error}");
    assert_cleaned(&s.runs);

    // Generation 1 stays up: the deadline passes.
    // Also starting from a given EFI variables file, which stays unchanged.
    let ovmf = nixdisk_firmware::find_ovmf(
        &nixdisk_firmware::Search::system(None),
        &Default::default(),
        Default::default(),
    )
    .expect("OVMF is installed");
    let vars = s.dir.path().join("my-vars.fd");
    std::fs::copy(&ovmf.vars_template, &vars).expect("copy the vars template");
    let vars_before = sha256(&vars);
    let mut stays_up = plan(&s.image, "never-printed", &s.runs);
    stays_up.efi_vars = Some(vars.clone());
    stays_up.entry = Some(1);
    // Long enough for OVMF to print something even on a loaded machine.
    stays_up.timeout = Duration::from_secs(45);
    let error = boot_until(&stays_up)
        .await
        .expect_err("the regex cannot match");
    let BootError::Timeout {
        ref tail, seconds, ..
    } = error
    else {
        panic!("expected a timeout, got: {error}");
    };
    eprintln!("{error}");
    assert_eq!(seconds, 45);
    assert!(!tail.trim().is_empty(), "the console tail is empty");
    assert!(
        error.to_string().contains("hint: raise --timeout"),
        "{error}"
    );
    assert_eq!(sha256(&vars), vars_before, "the given vars file changed");
    assert_cleaned(&s.runs);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_nixdisk_does_not_write_are_refused() {
    let Some(s) = setup() else { return };
    let qed = s.dir.path().join("disk.qed");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "qed",
            s.image.to_str().expect("utf-8"),
            qed.to_str().expect("utf-8"),
        ],
    );
    let error = boot_until(&plan(&qed, "x", &s.runs))
        .await
        .expect_err("qed is not a nixdisk format");
    assert!(
        matches!(error, BootError::UnsupportedFormat { ref format, .. } if format == "qed"),
        "{error}"
    );
    let missing = boot_until(&plan(&s.dir.path().join("nope.img"), "x", &s.runs))
        .await
        .expect_err("no such image");
    assert!(matches!(missing, BootError::Image { .. }), "{missing}");
    let mut vars_on_bios = plan(&s.image, "x", &s.runs);
    vars_on_bios.firmware = FirmwareChoice::SeaBios;
    vars_on_bios.efi_vars = Some(s.image.clone());
    let error = boot_until(&vars_on_bios).await.expect_err("vars need UEFI");
    assert!(error.to_string().contains("--firmware ovmf"), "{error}");
    assert_cleaned(&s.runs);
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_boot_kills_qemu_and_removes_the_run_dir() {
    let Some(s) = setup() else { return };
    let plan = plan(&s.image, "never-printed", &s.runs);
    let runs = s.runs.to_str().expect("utf-8").to_owned();
    // What Ctrl-C does: the boot's future is dropped mid-boot.
    // Boxed, so that `drop` below really drops the future (a pinned
    // reference would leave it alive to the end of the scope).
    let mut boot = Box::pin(boot_until(&plan));
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                result = &mut boot => panic!("the boot ended early: {result:?}"),
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if processes_mentioning(&runs)
                .iter()
                .any(|c| c.contains("qemu-system"))
            {
                return;
            }
        }
    })
    .await;
    assert!(started.is_ok(), "QEMU did not start within 60 s");
    drop(boot);
    // SIGKILL was sent on drop; the kernel needs a moment to tear QEMU down.
    let mut left = processes_mentioning(&runs);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        left = processes_mentioning(&runs);
    }
    assert_eq!(left, Vec::<String>::new(), "QEMU outlived the dropped boot");
    assert_cleaned(&s.runs);
}
