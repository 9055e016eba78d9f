//! Running the installed Nix from tests: a busybox toolbox in the store (the
//! builder of every stand-in derivation), evaluation, instantiation, builds,
//! and the stand-in pkgs of `tests/fixtures/nix`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the nixdisk binary under test.
pub fn nixdisk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .args(args)
        .env_remove("NIXDISK_LOG")
        .output()
        .expect("run nixdisk")
}

/// A store path holding `bin/busybox` and `bin/sh -> busybox`, added from
/// the host's static busybox. Content-addressed: every test gets the same path.
pub fn busybox_tools() -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("busybox-tools/bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let host = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("busybox-static is installed (scripts/setup)");
    std::fs::copy(host, bin.join("busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", bin.join("sh")).expect("sh link");
    let output = Command::new("nix-store")
        .args(["--add-fixed", "--recursive", "sha256"])
        .arg(dir.path().join("busybox-tools"))
        .output()
        .expect("run nix-store");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// `nix-instantiate --eval --json --strict -E EXPR`, which must succeed.
pub fn eval_json(expr: &str) -> Value {
    let output = eval_output(expr);
    assert!(
        output.status.success(),
        "evaluating {expr}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from nix-instantiate")
}

/// `nix-instantiate --eval --json --strict -E EXPR`, as it went. In
/// read-write mode, so that paths the evaluation copies are in the store.
pub fn eval_output(expr: &str) -> Output {
    Command::new("nix-instantiate")
        .args([
            "--eval",
            "--json",
            "--strict",
            "--read-write-mode",
            "--expr",
            expr,
        ])
        .output()
        .expect("run nix-instantiate")
}

/// The derivation path of EXPR (`nix-instantiate`).
pub fn instantiate(expr: &str) -> PathBuf {
    let output = Command::new("nix-instantiate")
        .args(["--expr", expr])
        .output()
        .expect("run nix-instantiate");
    assert!(
        output.status.success(),
        "instantiating {expr}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8").trim())
}

/// Builds EXPR with `nix-build --no-out-link`; returns its output path.
pub fn nix_build(expr: &str) -> PathBuf {
    let output = Command::new("nix-build")
        .args(["--no-out-link", "--expr", expr])
        .output()
        .expect("run nix-build");
    assert!(
        output.status.success(),
        "building {expr}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).expect("UTF-8").trim())
}

/// The one derivation `nix show-derivation DRV` prints.
pub fn show_derivation(drv: &Path) -> Value {
    let output = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-derivation",
        ])
        .arg(drv)
        .output()
        .expect("run nix show-derivation");
    assert!(output.status.success(), "{output:?}");
    let all: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    all.as_object()
        .and_then(|map| map.values().next())
        .cloned()
        .expect("one derivation")
}

/// The stand-in pkgs and the wrapper called through `image.nix`.
pub struct StandIn {
    busybox: String,
}

impl StandIn {
    /// Adds the busybox toolbox to the store.
    pub fn new() -> Self {
        StandIn {
            busybox: busybox_tools(),
        }
    }

    /// The busybox toolbox's store path.
    pub fn busybox(&self) -> &str {
        &self.busybox
    }

    /// The image derivation, make-disk-image called with ARGS (a Nix set).
    pub fn image(&self, args: &str) -> String {
        format!(
            "(import {}/tests/fixtures/nix/image.nix {{ busybox = \"{}\"; args = {args}; }})",
            repo().display(),
            self.busybox
        )
    }

    /// An attribute of the image derivation (its passthru, or the fixture's).
    pub fn image_attr(&self, args: &str, attr: &str) -> String {
        format!("({}).{attr}", self.image(args))
    }

    /// The spec the wrapper writes for ARGS.
    pub fn spec(&self, args: &str) -> Value {
        eval_json(&self.image_attr(args, "spec"))
    }

    /// The output path of an attribute of the default image.
    pub fn out_path(&self, attr: &str) -> Value {
        eval_json(&format!("{}.outPath", self.image_attr("{ }", attr)))
    }

    /// EXPR evaluated with `pkgs` bound to the stand-in pkgs.
    pub fn eval(&self, expr: &str) -> Value {
        eval_json(&format!(
            "let pkgs = import {}/tests/fixtures/nix/stand-in-pkgs.nix {{ busybox = \"{}\"; }}; in {expr}",
            repo().display(),
            self.busybox
        ))
    }
}

/// The example system as `scripts/build-example-system` builds it, with the
/// store paths the script added as its inputs.
pub struct ExampleSystem {
    /// The toplevel.
    pub toplevel: PathBuf,
    /// The arguments of `nix/example-system` (a Nix set), store paths and marker.
    pub args: String,
}

impl ExampleSystem {
    /// Runs the script with `--marker MARKER` (fast when built before).
    pub fn build(marker: &str) -> Self {
        let output = Command::new(repo().join("scripts/build-example-system"))
            .args(["--marker", marker])
            .output()
            .expect("run scripts/build-example-system");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("UTF-8");
        let toplevel = PathBuf::from(stdout.lines().next().expect("toplevel line"));
        // The inputs the script added, found in the toplevel's closure.
        let closure = Command::new("nix-store")
            .arg("-qR")
            .arg(&toplevel)
            .output()
            .expect("run nix-store -qR");
        assert!(closure.status.success(), "{closure:?}");
        let closure = String::from_utf8(closure.stdout).expect("UTF-8");
        let input = |suffix: &str| {
            closure
                .lines()
                .find(|path| path.contains(suffix))
                .unwrap_or_else(|| panic!("no {suffix} in the closure:\n{closure}"))
                .to_owned()
        };
        let args = format!(
            r#"{{ busybox = "{}"; kernel = "{}"; systemdBoot = "{}"; grub = "{}"; marker = "{marker}"; }}"#,
            input("-example-busybox"),
            input("-example-linux-"),
            input("-example-systemd-boot"),
            input("-example-grub-i386-pc"),
        );
        ExampleSystem { toplevel, args }
    }

    /// The expression of the example system (a set with `toplevel`).
    pub fn expr(&self) -> String {
        format!(
            "import {}/nix/example-system {}",
            repo().display(),
            self.args
        )
    }
}

/// The newest host kernel release with its modules: /boot/vmlinuz-<release>
/// and /lib/modules/<release>.
pub fn host_kernel_release() -> String {
    let mut releases: Vec<String> = std::fs::read_dir("/boot")
        .expect("read /boot")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            Path::new("/lib/modules")
                .join(&release)
                .join("modules.dep")
                .exists()
                .then_some(release)
        })
        .collect();
    releases.sort();
    releases
        .pop()
        .expect("a kernel in /boot with modules (linux-image-amd64)")
}
