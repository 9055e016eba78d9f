//! `--flake REF#NAME` and `--system-expr EXPR` against a local flake with no
//! inputs whose configurations build offline (a busybox builder): the
//! toplevel is evaluated, built, and becomes the spec's `system`; mistakes
//! in the flake, the name or the expression are bad input (exit 2), a
//! failing build is a failed build (exit 1).

mod nix_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A flake in a temporary directory: `nixosConfigurations` shaped as NixOS
/// has them (`config.system.build.toplevel`), one printing a marker unique
/// to this test run, so the toplevel is built here and now.
struct TestFlake {
    dir: tempfile::TempDir,
    marker: String,
}

impl TestFlake {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("flake");
        let bin = root.join("tools/bin");
        std::fs::create_dir_all(&bin).expect("tools dir");
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("busybox-static is installed (scripts/setup)");
        std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
        // busybox takes its applet from argv[0].
        std::os::unix::fs::symlink("busybox", bin.join("sh")).expect("sh link");
        let marker = format!(
            "flake-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        std::fs::write(
            root.join("system.nix"),
            format!(
                r#"# A NixOS-shaped configuration: config.system.build.toplevel.
{{ script ? "$tools/bin/busybox mkdir -p $out && echo {marker} > $out/nixos-version" }}:
{{
  config.system.build.toplevel = derivation {{
    name = "nixos-system-flake-test";
    system = "x86_64-linux";
    tools = ./tools;
    builder = "${{./tools}}/bin/sh";
    args = [ "-c" script ];
  }};
}}
"#
            ),
        )
        .expect("write system.nix");
        std::fs::write(
            root.join("flake.nix"),
            r#"{
  outputs = { self }: {
    nixosConfigurations = {
      x = import ./system.nix { };
      "with.dot" = import ./system.nix { };
      broken = import ./system.nix { script = "echo the build breaks >&2; exit 3"; };
      notASystem = { config.system.build = { }; };
    };
  };
}
"#,
        )
        .expect("write flake.nix");
        TestFlake { dir, marker }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("flake")
    }

    /// `path:` keeps Nix from asking for a git repository.
    fn reference(&self, name: &str) -> String {
        format!("path:{}#{name}", self.root().display())
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

/// Runs nixdisk with `stdin` as its standard input.
fn nixdisk(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .args(args)
        .env_remove("NIXDISK_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nixdisk");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait for nixdisk")
}

/// `nixdisk spec --check -` (spec `{}`) with `args`; must succeed. Returns
/// the checked spec's `system`, which must exist.
fn checked_system(args: &[&str]) -> PathBuf {
    let mut all = vec!["spec", "--check", "-"];
    all.extend_from_slice(args);
    let output = nixdisk(&all, "{}");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let spec: Value = serde_json::from_slice(&output.stdout).expect("spec JSON");
    let system = PathBuf::from(spec["system"].as_str().expect("system is set"));
    assert!(system.starts_with("/nix/store"), "{}", system.display());
    system
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_flake_configuration_becomes_the_system() {
    let flake = TestFlake::new();
    let system = checked_system(&["--flake", &flake.reference("x")]);
    let version = std::fs::read_to_string(system.join("nixos-version")).expect("built toplevel");
    assert_eq!(version.trim(), flake.marker);
    // A name with a dot is one attribute, not a path.
    assert_eq!(
        checked_system(&["--flake", &flake.reference("with.dot")]),
        system
    );
}

#[test]
fn an_expression_becomes_the_system() {
    let flake = TestFlake::new();
    let file = flake.root().join("system.nix");
    let from_config =
        checked_system(&["--system-expr", &format!("import {} {{ }}", file.display())]);
    // A toplevel derivation given directly is taken as it is.
    let from_toplevel = checked_system(&[
        "--system-expr",
        &format!(
            "(import {} {{ }}).config.system.build.toplevel",
            file.display()
        ),
    ]);
    assert_eq!(from_config, from_toplevel);
    // The flake and the expression describe the same derivation.
    assert_eq!(
        checked_system(&["--flake", &flake.reference("x")]),
        from_config
    );
}

#[test]
fn evaluation_mistakes_are_bad_input_and_leave_nothing() {
    let flake = TestFlake::new();
    let out = flake.out();
    let out = out.to_str().expect("UTF-8 path");
    let cases = [
        (flake.reference("missing"), "nix flake show"),
        (flake.reference("notASystem"), "does not provide attribute"),
        (format!("path:{}", flake.root().display()), "REF#NAME"),
    ];
    for (reference, message) in cases {
        let output = nixdisk(&["build", "--out", out, "--flake", &reference], "");
        assert_eq!(
            output.status.code(),
            Some(2),
            "{reference}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{reference}: {}",
            stderr(&output)
        );
        assert!(!flake.out().exists());
    }
    let output = nixdisk(
        &["build", "--out", out, "--system-expr", "{ config = 1; }"],
        "",
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("cannot evaluate the system"), "{text}");
    assert!(text.contains("neither a NixOS configuration"), "{text}");
}

#[test]
fn a_failing_system_build_is_a_failed_build() {
    let flake = TestFlake::new();
    let out = flake.out();
    let output = nixdisk(
        &[
            "build",
            "--out",
            out.to_str().expect("UTF-8 path"),
            "--flake",
            &flake.reference("broken"),
        ],
        "",
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("building the system"), "{text}");
    // Nix's own last lines say why.
    assert!(text.contains("the build breaks"), "{text}");
    assert!(!out.exists());
}

#[test]
fn the_spec_is_checked_before_nix_evaluates() {
    // The flake does not exist: had Nix run, the error would be Nix's.
    let output = nixdisk(
        &[
            "spec",
            "--check",
            "-",
            "--flake",
            "path:/nonexistent/flake#x",
        ],
        r#"{"fsTyp": "ext4"}"#,
    );
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(text.contains("fsTyp") && text.contains("fsType"), "{text}");
    assert!(!text.contains("nonexistent"), "{text}");
}

#[test]
fn flake_and_system_do_not_mix() {
    let output = nixdisk(
        &[
            "spec",
            "--check",
            "-",
            "--flake",
            ".#x",
            "--system",
            "/nix/store",
        ],
        "{}",
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot be used with"),
        "{}",
        stderr(&output)
    );
}

/// The example system (`nix/example-system`, built offline from the host's
/// Debian packages) through `--system-expr`: the same expression
/// `scripts/build-example-system` builds gives the same toplevel.
#[test]
fn the_example_system_through_system_expr() {
    let example = nix_support::ExampleSystem::build("nix-wrapper-expr");
    let expr = format!("({}).toplevel", example.expr());
    assert_eq!(checked_system(&["--system-expr", &expr]), example.toplevel);
}

/// The built toplevel stays a GC root while nixdisk holds it, and not after.
#[test]
fn the_built_system_is_a_gc_root_while_held() {
    let flake = TestFlake::new();
    let reference = flake.reference("x");
    let source = nixdisk::flake::SystemSource::from_flags(Some(&reference), None)
        .expect("flake reference")
        .expect("a source");
    let system = nixdisk::flake::resolve(&source).expect("resolve the flake");
    let toplevel = system.toplevel.clone();
    assert!(rooted_by_nixdisk(&toplevel));
    drop(system);
    assert!(!rooted_by_nixdisk(&toplevel));
}

/// Whether `nix-store --gc --print-roots` lists a nixdisk root of `path`.
fn rooted_by_nixdisk(path: &Path) -> bool {
    let output = Command::new("nix-store")
        .args(["--gc", "--print-roots"])
        .output()
        .expect("run nix-store --gc --print-roots");
    assert!(output.status.success(), "{}", stderr(&output));
    let path = path.to_string_lossy();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|line| line.contains("/nixdisk-system-") && line.ends_with(&*path))
}
