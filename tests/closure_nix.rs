//! Closure input checked against the real Nix (Debian's nix-bin, offline, as root).
//!
//! A tiny closure of three paths that refer to each other is built with a
//! busybox builder; nixdisk must read it from the store with the right paths,
//! hashes and references, write registration text that a fresh store loads
//! and verifies, and read the same closure from a closureInfo directory as
//! nixpkgs would write it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nixdisk::closure::{Closure, ClosureError};
use sha2::{Digest, Sha256};

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The expression: `top` refers to `mid` and `leaf`, `mid` to `leaf`.
const EXPRESSION: &str = r#"
let
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
  };
  leaf = mk "nixdisk-test-leaf" "${bb}/bin/busybox mkdir $out && echo leaf > $out/data";
  mid = mk "nixdisk-test-mid" "${bb}/bin/busybox mkdir $out && echo ${leaf} > $out/ref";
in
mk "nixdisk-test-top" "${bb}/bin/busybox mkdir $out && echo ${mid} ${leaf} > $out/refs && ${bb}/bin/busybox ln -s ${mid} $out/link"
"#;

/// Builds the test closure; returns the top path and all three paths by name.
fn build_closure(work: &Path) -> (PathBuf, Vec<PathBuf>) {
    // busybox picks its applet from argv[0]: give it a directory with `sh`.
    let bb = work.join("bb");
    fs::create_dir_all(bb.join("bin")).unwrap();
    fs::copy("/bin/busybox", bb.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", bb.join("bin/sh")).unwrap();
    let expression = format!("let bb = {}; in {EXPRESSION}", bb.display());
    let top = PathBuf::from(
        run(Command::new("nix-build")
            .arg("--no-out-link")
            .arg("-E")
            .arg(&expression))
        .trim(),
    );
    let all = run(Command::new("nix-store").arg("-qR").arg(&top))
        .lines()
        .map(PathBuf::from)
        .collect();
    (top, all)
}

fn named<'a>(paths: &'a [PathBuf], suffix: &str) -> &'a PathBuf {
    paths
        .iter()
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no path ending in {suffix} in {paths:?}"))
}

/// The NAR hash and size of `path`, computed here from `nix-store --dump`.
fn nar_of(path: &Path) -> (String, u64) {
    let output = Command::new("nix-store")
        .arg("--dump")
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let digest = Sha256::digest(&output.stdout);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    (format!("sha256:{hex}"), output.stdout.len() as u64)
}

#[test]
fn a_store_path_gives_its_closure_with_hashes_and_references() {
    let work = tempfile::tempdir().unwrap();
    let (top, paths) = build_closure(work.path());
    let (leaf, mid) = (named(&paths, "-leaf"), named(&paths, "-mid"));

    let closure = Closure::from_store_path(&top).unwrap();
    assert_eq!(Closure::from_system(&top).unwrap(), closure);
    let mut expected = paths.clone();
    expected.sort();
    assert_eq!(
        closure
            .store_paths()
            .map(Path::to_owned)
            .collect::<Vec<_>>(),
        expected
    );
    for info in &closure.paths {
        assert_eq!(
            (info.nar_hash.clone(), info.nar_size),
            nar_of(&info.path),
            "{}",
            info.path.display()
        );
        let deriver = info.deriver.as_ref().expect("built paths have a deriver");
        assert!(deriver.to_string_lossy().ends_with(".drv"));
    }
    let refs = |path: &Path| closure.get(path).unwrap().references.clone();
    let mut top_refs = vec![leaf.clone(), mid.clone()];
    top_refs.sort();
    assert_eq!(refs(&top), top_refs);
    assert_eq!(refs(mid), vec![leaf.clone()]);
    assert!(refs(leaf).is_empty());
}

#[test]
fn registration_text_loads_into_a_fresh_store_that_verifies() {
    let work = tempfile::tempdir().unwrap();
    let (top, paths) = build_closure(work.path());
    let closure = Closure::from_store_path(&top).unwrap();

    let root = work.path().join("root");
    fs::create_dir_all(root.join("nix/store")).unwrap();
    for path in &paths {
        run(Command::new("cp")
            .arg("-a")
            .arg(path)
            .arg(root.join("nix/store")));
    }
    let store = format!("local?root={}", root.display());
    let registration = work.path().join("nix-path-registration");
    fs::write(&registration, closure.registration_text()).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg(r#"nix-store --load-db --store "$1" < "$2""#)
        .arg("sh")
        .arg(&store)
        .arg(&registration));
    run(Command::new("nix").args(["store", "verify", "--no-trust", "--all", "--store", &store]));
    let listed = run(Command::new("nix").args(["path-info", "--all", "--store", &store]));
    let mut listed: Vec<PathBuf> = listed.lines().map(PathBuf::from).collect();
    listed.sort();
    assert_eq!(
        listed,
        closure
            .store_paths()
            .map(Path::to_owned)
            .collect::<Vec<_>>()
    );
    // The loaded store knows the same references and hashes: dump it back.
    let dumped = run(Command::new("nix-store")
        .args(["--dump-db", "--store", &store])
        .args(&paths));
    let reread =
        Closure::new(nixdisk::closure::parse_registration(&dumped, Path::new("dump")).unwrap())
            .unwrap();
    assert_eq!(reread, closure);

    // The check can fail: change a file and verification must catch it.
    let data = root
        .join("nix/store")
        .join(named(&paths, "-leaf").file_name().unwrap())
        .join("data");
    run(Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(data.parent().unwrap()));
    fs::write(&data, "tampered\n").unwrap();
    let status = Command::new("nix")
        .args(["store", "verify", "--no-trust", "--all", "--store", &store])
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "a modified path must fail verification");
}

/// Writes a closureInfo directory as nixpkgs' closureInfo does: store-paths in
/// closure order, registration with `sha256:<base32>` hashes and no derivers.
fn write_closure_info(dir: &Path, closure: &Closure, order: &[PathBuf]) {
    fs::create_dir_all(dir).unwrap();
    let mut store_paths = String::new();
    let mut registration = String::new();
    for path in order {
        let info = closure.get(path).unwrap();
        let hex = info.nar_hash.strip_prefix("sha256:").unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        store_paths.push_str(&format!("{}\n", path.display()));
        registration.push_str(&format!(
            "{}\nsha256:{}\n{}\n\n{}\n",
            path.display(),
            nix_base32::to_nix_base32(&bytes),
            info.nar_size,
            info.references.len()
        ));
        for reference in &info.references {
            registration.push_str(&format!("{}\n", reference.display()));
        }
    }
    fs::write(dir.join("store-paths"), store_paths).unwrap();
    fs::write(dir.join("registration"), registration).unwrap();
}

#[test]
fn a_closure_info_directory_reads_as_the_store_path_does() {
    let work = tempfile::tempdir().unwrap();
    let (top, paths) = build_closure(work.path());
    let from_store = Closure::from_store_path(&top).unwrap();
    let info_dir = work.path().join("closure-info");
    write_closure_info(&info_dir, &from_store, &paths);

    let from_info = Closure::from_closure_info(&info_dir).unwrap();
    let mut without_derivers = from_store.clone();
    for info in &mut without_derivers.paths {
        info.deriver = None;
    }
    assert_eq!(from_info, without_derivers);

    // Merging the two readings with another closure keeps each path once.
    let merged = Closure::merge([from_info.clone(), from_store.clone(), from_info]).unwrap();
    assert_eq!(merged.paths.len(), paths.len());

    // A closureInfo missing a path one of its paths refers to is refused.
    let partial = work.path().join("partial");
    let without_leaf: Vec<PathBuf> = paths
        .iter()
        .filter(|p| !p.to_string_lossy().ends_with("-leaf"))
        .cloned()
        .collect();
    write_closure_info(&partial, &from_store, &without_leaf);
    assert!(matches!(
        Closure::from_closure_info(&partial),
        Err(ClosureError::DanglingReference { .. })
    ));
}

#[test]
fn a_path_outside_the_store_is_a_clear_error() {
    let err = Closure::from_store_path(Path::new("/nonexistent/nixdisk-system")).unwrap_err();
    assert!(
        matches!(err, ClosureError::NixStoreFailed { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nix-store"), "{err}");
}
