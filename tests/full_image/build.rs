//! Building images the way a user does: the example system from
//! `scripts/build-example-system`, then the real `nixdisk build` binary into a
//! temporary directory that is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Instant;

use super::vms::VmSlot;

/// Runs `cmd`, panicking with its output when it fails; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test with a clear message when the builder VM's agent is not
/// built: these tests never skip silently.
pub fn require_agent() {
    if let Err(e) = nixdisk::builder_vm::find_agent(None) {
        panic!(
            "the full-image tests need the static guest agent: run scripts/build-agent \
             (or set NIXDISK_AGENT)\n{e}"
        );
    }
}

/// The example system's toplevel for `args` of `scripts/build-example-system`.
pub fn example_system(args: &[&str]) -> PathBuf {
    // Builds share GC-root links: one at a time within this test binary.
    static BUILDS: Mutex<()> = Mutex::new(());
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-example-system");
    let out = run(Command::new(script).args(args));
    PathBuf::from(out.lines().next().expect("the script prints the toplevel"))
}

/// The store paths of the closure of `toplevel`, sorted.
pub fn closure_of(toplevel: &Path) -> Vec<String> {
    let mut paths: Vec<String> = run(Command::new("nix-store").arg("-qR").arg(toplevel))
        .lines()
        .map(str::to_owned)
        .collect();
    paths.sort();
    paths
}

/// A finished build: the output directory (inside a temporary directory
/// removed on drop) and the image in it.
pub struct Built {
    /// The output directory `--out`.
    pub out: PathBuf,
    /// The image file.
    pub image: PathBuf,
    /// Kept for its drop.
    _dir: tempfile::TempDir,
}

/// The result of a `nixdisk build` run, successful or not.
pub struct Attempt {
    /// The process's output.
    pub output: Output,
    /// The `--out` path given.
    pub out: PathBuf,
    /// Seconds the build took.
    pub seconds: f64,
    /// The temporary directory holding `out`.
    pub dir: tempfile::TempDir,
}

impl Attempt {
    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Runs `nixdisk build ARGS --out DIR/out` (quiet, small additional space and
/// builder memory unless `args` say otherwise) while holding a VM slot.
pub fn nixdisk_build(args: &[&str]) -> Attempt {
    require_agent();
    let dir = tempfile::Builder::new()
        .prefix("nixdisk-full-image-")
        .tempdir()
        .expect("a temporary directory");
    let out = dir.path().join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixdisk"));
    cmd.arg("build").arg("-q").args(args);
    if !args.contains(&"--additional-space") && !args.contains(&"--disk-size") {
        cmd.args(["--additional-space", "32M"]);
    }
    if !args.contains(&"--mem-size") {
        cmd.args(["--mem-size", "512"]);
    }
    cmd.arg("--out").arg(&out);
    let _slot = VmSlot::take();
    let started = Instant::now();
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("nixdisk build {args:?}: {seconds:.1} s");
    Attempt {
        output,
        out,
        seconds,
        dir,
    }
}

/// Builds and panics with nixdisk's stderr unless it succeeded; the image is
/// `nixos.<extension>` (`extension` from the format).
pub fn build_ok(args: &[&str], extension: &str) -> Built {
    let attempt = nixdisk_build(args);
    assert!(
        attempt.output.status.success(),
        "nixdisk build {args:?} failed ({}):\n{}",
        attempt.output.status,
        attempt.stderr()
    );
    let image = attempt.out.join(format!("nixos.{extension}"));
    assert!(image.is_file(), "{} was not written", image.display());
    Built {
        out: attempt.out,
        image,
        _dir: attempt.dir,
    }
}
