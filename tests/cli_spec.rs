//! The `nixdisk` binary meets bad input as a new user writes it: each mistake
//! gives one clear error on stderr, exit code 2, and no output directory.
//! Also: the default spec round-trips through `spec --check`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A scratch directory with a stand-in system (an existing directory: the
/// spec checks only that the path exists) and a place for `--out`.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("system")).expect("system dir");
        Scratch { dir }
    }

    fn system(&self) -> PathBuf {
        self.dir.path().join("system")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Writes a spec file and returns its path.
    fn spec(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("spec.json");
        std::fs::write(&path, text).expect("write spec");
        path
    }

    /// `nixdisk build --out <out>` plus `args`, from inside the scratch dir.
    fn build(&self, args: &[&str]) -> Output {
        let out = self.out();
        let mut all = vec!["build", "--out", path_str(&out)];
        all.extend_from_slice(args);
        run(self.dir.path(), &all, None)
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn run(cwd: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .args(args)
        .current_dir(cwd)
        .env_remove("NIXDISK_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nixdisk");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for nixdisk")
}

/// Asserts a refusal: exit 2, nothing on stdout, exactly one `error:` line,
/// every `expected` text in stderr, and no output directory. Returns stderr.
#[track_caller]
fn refused(scratch: &Scratch, output: &Output, expected: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit code; stderr:\n{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let errors = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .count();
    assert_eq!(errors, 1, "one error line expected:\n{stderr}");
    for text in expected {
        assert!(stderr.contains(text), "missing {text:?} in:\n{stderr}");
    }
    assert!(!scratch.out().exists(), "the output directory was created");
    stderr
}

#[test]
fn wrong_type_names_the_field() {
    let s = Scratch::new();
    let spec = s.spec(r#"{"memSize": "lots"}"#);
    let system = s.system();
    let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
    refused(
        &s,
        &output,
        &["field `memSize`", "invalid type: string \"lots\""],
    );
}

#[test]
fn wrong_type_in_contents_names_the_entry() {
    let s = Scratch::new();
    let spec =
        s.spec(r#"{"contents": [{"source": "/etc/hosts", "target": "/etc/hosts", "mode": 644}]}"#);
    let system = s.system();
    let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
    refused(&s, &output, &["field `contents[0].mode`"]);
}

#[test]
fn unknown_field_suggests_the_right_name() {
    let s = Scratch::new();
    let spec = s.spec(r#"{"diskSzie": 4096}"#);
    let output = s.build(&["--spec", path_str(&spec)]);
    refused(
        &s,
        &output,
        &["unknown field `diskSzie`", "did you mean `diskSize`?"],
    );

    let spec = s.spec(r#"{"partition_table_type": "efi"}"#);
    let output = s.build(&["--spec", path_str(&spec)]);
    refused(&s, &output, &["did you mean `partitionTableType`?"]);
}

#[test]
fn negative_sizes_are_refused() {
    let s = Scratch::new();
    let system = s.system();
    let spec = s.spec(r#"{"additionalSpace": -512}"#);
    let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
    refused(&s, &output, &["field `additionalSpace`", "negative"]);

    let output = s.build(&["--system", path_str(&system), "--disk-size", "-5G"]);
    refused(&s, &output, &["--disk-size", "negative"]);
}

#[test]
fn contradicting_options_are_refused() {
    let s = Scratch::new();
    let system = s.system();
    let output = s.build(&[
        "--system",
        path_str(&system),
        "--touch-efi-vars",
        "--partition-table",
        "legacy",
    ]);
    refused(
        &s,
        &output,
        &[
            "`touchEFIVars` = true",
            "`partitionTableType` = \"legacy\"",
            "hint:",
        ],
    );

    let spec = s.spec(
        r#"{"onlyNixStore": true, "contents": [{"source": "/etc/hosts", "target": "/etc/hosts"}]}"#,
    );
    let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
    refused(&s, &output, &["field `contents`", "`onlyNixStore` = true"]);

    let spec = s.spec(r#"{"onlyNixStore": true, "installBootLoader": true}"#);
    let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
    refused(&s, &output, &["field `installBootLoader`"]);

    let spec = s.spec(
        r#"{"contents": [{"source": "/etc/hosts", "target": "/etc/hosts", "user": "root"}]}"#,
    );
    let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
    refused(&s, &output, &["field `contents[0].user`", "neither"]);

    let output = s.build(&["--system", path_str(&system), "--fs-type", "squashfs"]);
    refused(
        &s,
        &output,
        &["field `fsType`", "note: `fsType` was set by --fs-type"],
    );
}

#[test]
fn only_nix_store_turns_the_bootloader_off_by_default() {
    let s = Scratch::new();
    let spec = s.spec(r#"{"onlyNixStore": true, "fsType": "erofs"}"#);
    let system = s.system();
    let output = run(
        s.dir.path(),
        &[
            "spec",
            "--check",
            path_str(&spec),
            "--system",
            path_str(&system),
        ],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checked: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(checked["installBootLoader"], false);
}

#[test]
fn missing_system_path_is_refused() {
    let s = Scratch::new();
    let missing = s.dir.path().join("nix/store/0000-nixos-system-missing");
    let output = s.build(&["--system", path_str(&missing)]);
    refused(
        &s,
        &output,
        &[
            "field `system`",
            "does not exist",
            "0000-nixos-system-missing",
        ],
    );
}

#[test]
fn no_system_at_all_is_refused() {
    let s = Scratch::new();
    let output = s.build(&[]);
    refused(&s, &output, &["names no system", "--system"]);
}

#[test]
fn malformed_json_gives_its_line() {
    let s = Scratch::new();
    let spec = s.spec("{\n  \"memSize\": 1024,\n}\n");
    let output = s.build(&["--spec", path_str(&spec)]);
    refused(&s, &output, &["is not valid JSON", "line 3"]);

    let spec = s.spec("[\"efi\"]");
    let output = s.build(&["--spec", path_str(&spec)]);
    refused(&s, &output, &["must hold a JSON object", "found an array"]);
}

#[test]
fn missing_spec_file_is_refused() {
    let s = Scratch::new();
    let output = s.build(&["--spec", "no-such-spec.json"]);
    refused(
        &s,
        &output,
        &[
            "cannot read the spec file `no-such-spec.json`",
            "No such file",
        ],
    );
}

#[test]
fn a_used_output_directory_is_left_alone() {
    let s = Scratch::new();
    std::fs::create_dir(s.out()).expect("out dir");
    std::fs::write(s.out().join("keep.img"), b"old").expect("old file");
    let system = s.system();
    let output = s.build(&["--system", path_str(&system)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(s.out().join("keep.img")).expect("kept"),
        b"old"
    );
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new();
    let output = s.build(&["--format", "iso"]);
    refused(&s, &output, &["invalid value 'iso'", "qcow2"]);
    let output = run(s.dir.path(), &["spec"], None);
    assert_eq!(output.status.code(), Some(2));
    let output = run(
        s.dir.path(),
        &["spec", "--defaults", "--mem-size", "2048"],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_bad_log_filter_is_refused() {
    let s = Scratch::new();
    let output = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .args(["spec", "--defaults"])
        .env("NIXDISK_LOG", "nixdisk=loud")
        .current_dir(s.dir.path())
        .output()
        .expect("run nixdisk");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NIXDISK_LOG"));
}

#[test]
fn defaults_round_trip_through_check() {
    let s = Scratch::new();
    let defaults = run(s.dir.path(), &["spec", "--defaults"], None);
    assert_eq!(defaults.status.code(), Some(0));
    let defaults_text = String::from_utf8(defaults.stdout).expect("UTF-8");
    let mut expected: Value = serde_json::from_str(&defaults_text).expect("defaults are JSON");

    let system = s.system();
    let checked = run(
        s.dir.path(),
        &["spec", "--check", "-", "--system", path_str(&system)],
        Some(&defaults_text),
    );
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let checked: Value = serde_json::from_slice(&checked.stdout).expect("checked spec is JSON");
    expected["system"] = Value::from(path_str(&system));
    assert_eq!(checked, expected);
}

#[test]
fn flags_override_the_spec_file() {
    let s = Scratch::new();
    let spec = s.spec(r#"{"memSize": 2048, "format": "vdi", "diskSize": "8G"}"#);
    let system = s.system();
    let output = run(
        s.dir.path(),
        &[
            "spec",
            "--check",
            path_str(&spec),
            "--system",
            path_str(&system),
            "--mem-size",
            "4096",
            "--disk-size",
            "auto",
        ],
        None,
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let checked: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(checked["memSize"], 4096);
    assert_eq!(checked["diskSize"], "auto");
    assert_eq!(checked["format"], "vdi");
}

#[test]
fn help_shows_every_default() {
    let s = Scratch::new();
    let output = run(s.dir.path(), &["build", "--help"], None);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for shown in [
        "[spec additionalSpace; default: \"512M\"]",
        "[spec partitionTableType; default: \"legacy\"]",
        "[spec installBootLoader; default: true]",
        "[spec label; default: \"nixos\", \"nix-store\" with --only-nix-store]",
    ] {
        assert!(help.contains(shown), "{shown} missing in:\n{help}");
    }
}

#[test]
fn logs_go_to_stderr_and_follow_verbosity() {
    let s = Scratch::new();
    let spec = s.spec("{}");
    let system = s.system();
    let check = |extra: &[&str], log: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nixdisk"));
        command
            .args([
                "spec",
                "--check",
                path_str(&spec),
                "--system",
                path_str(&system),
            ])
            .args(extra)
            .current_dir(s.dir.path())
            .env_remove("NIXDISK_LOG");
        if let Some(filter) = log {
            command.env("NIXDISK_LOG", filter);
        }
        let output = command.output().expect("run nixdisk");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        // stdout stays pure JSON whatever the log level.
        serde_json::from_slice::<Value>(&output.stdout).expect("JSON on stdout");
        stderr
    };
    assert!(!check(&[], None).contains("spec checked"));
    assert!(check(&["-v"], None).contains("spec checked"));
    assert!(!check(&["-q"], None).contains("spec checked"));
    assert!(check(&["-q"], Some("nixdisk=debug")).contains("spec checked"));
}

/// Values that would put something outside the image or the output
/// directory are refused up front, naming the field and what is allowed.
#[test]
fn escaping_names_and_targets_are_refused_up_front() {
    let s = Scratch::new();
    let system = s.system();
    let target = r#"{"contents": [{"source": "/etc/hostname", "target": "../../x"}]}"#;
    let cases: [(&str, &[&str]); 4] = [
        (
            target,
            &["contents[0].target", "an absolute path inside the image"],
        ),
        (
            r#"{"baseName": "../escape"}"#,
            &["baseName", "a plain file name"],
        ),
        (r#"{"label": "a/b"}"#, &["label", "other than `/`"]),
        (
            r#"{"configFile": "/etc/x\ny"}"#,
            &["configFile", "without control characters"],
        ),
    ];
    for (text, expected) in cases {
        let spec = s.spec(text);
        let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&system)]);
        refused(&s, &output, expected);
    }
}

/// A closureInfo whose store paths are not plain store names (a blank, a
/// climb out of the store) is refused before anything is built, naming the
/// file and line.
#[test]
fn a_closure_info_with_a_bad_store_path_is_refused() {
    let hash = "0ysj00x31q08vxsznqd9pmvwa0rrzza8";
    for (name, why) in [
        ("a b", "its name has the character ' '"),
        ("x/../../../etc", "not directly in /nix/store"),
    ] {
        let s = Scratch::new();
        let info = s.dir.path().join("closure-info");
        std::fs::create_dir(&info).expect("closureInfo dir");
        let path = format!("/nix/store/{hash}-{name}");
        let registration = format!("{path}\nsha256:{}\n8\n\n0\n", "0".repeat(64));
        std::fs::write(info.join("registration"), registration).expect("registration");
        std::fs::write(info.join("store-paths"), format!("{path}\n")).expect("store-paths");
        let spec = s.spec(r#"{"onlyNixStore": true}"#);
        let output = s.build(&["--spec", path_str(&spec), "--system", path_str(&info)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("store-paths:1:") && stderr.contains(why),
            "{stderr}"
        );
        assert!(!s.out().exists(), "the output directory was created");
    }
}

/// `additionalPaths` may be relative or a link (`./result`), so Nix resolves
/// them; one that climbs out of the store is refused with Nix's reason.
#[test]
fn additional_paths_outside_the_store_are_refused() {
    let s = Scratch::new();
    let spec = s.spec(r#"{"onlyNixStore": true, "additionalPaths": ["/nix/store/../../etc"]}"#);
    let output = s.build(&["--spec", path_str(&spec)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("'/etc' is not in the Nix store"),
        "{stderr}"
    );
    assert!(!s.out().exists(), "the output directory was created");
}
