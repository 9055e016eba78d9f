//! The installation planned on the host, checked with the real Nix: a small
//! closure built by `nix-build` (busybox builder), copied into a chroot store,
//! with nixdisk's image root (database, profiles, channel, contents) staged
//! beside it. `nix store verify --no-trust --all` must pass and `nix
//! path-info --all` must list exactly the closure; the database must hold the
//! same rows as the one `nix-store --load-db` makes of the same registration;
//! equal inputs must stage byte-identical trees with canonical metadata.
//!
//! Needs Debian's nix-bin (working offline as root) and busybox-static.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nixdisk::closure::Closure;
use nixdisk::install::{
    Accounts, ChownOp, ImageRootPlan, MaterialiseError, closure_roots, materialise, plan_install,
    read_derivation_outputs, render_nix_db, resolve_contents,
};
use nixdisk::spec::{ContentEntry, ImageSpec, PartitionTableType};
use rusqlite::Connection;

/// Runs a command and returns its stdout; fails the test if it fails.
fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The test system: an `app` referring to a `lib` (which refers to itself)
/// and to the busybox tools; plus the derivation of `app`, so the closure
/// holds `.drv` files whose outputs Nix registers.
struct TestSystem {
    app: PathBuf,
    drv: PathBuf,
    channel: PathBuf,
}

fn test_system() -> &'static TestSystem {
    static SYSTEM: OnceLock<TestSystem> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let work = tempfile::tempdir().expect("a temporary directory");
        let tools = work.path().join("nixdisk-install-test-tools");
        std::fs::create_dir_all(tools.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", tools.join("bin/busybox")).expect("busybox-static installed");
        std::os::unix::fs::symlink("busybox", tools.join("bin/sh")).unwrap();
        let tools = run(Command::new("nix-store")
            .args(["--add-fixed", "--recursive", "sha256"])
            .arg(&tools));
        let channel = work.path().join("nixdisk-install-test-channel");
        std::fs::create_dir_all(channel.join("nixos")).unwrap();
        std::fs::write(channel.join("nixos/default.nix"), "{ }: { }\n").unwrap();
        let channel = run(Command::new("nix-store").arg("--add").arg(&channel));
        let expression = work.path().join("default.nix");
        std::fs::write(
            &expression,
            format!(
                r#"let
  tools = builtins.storePath "{tools}";
  build = name: script: derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "${{tools}}/bin/sh";
    args = [ "-c" script ];
  }};
  lib = build "nixdisk-install-test-lib" ''
    ${{tools}}/bin/busybox mkdir -p $out/share
    echo data > $out/share/data
    ${{tools}}/bin/busybox ln -s $out/share $out/self
  '';
in build "nixdisk-install-test-app" ''
  ${{tools}}/bin/busybox mkdir -p $out/bin
  echo "${{lib}}" > $out/bin/app
  ${{tools}}/bin/busybox ln -s ${{tools}}/bin/busybox $out/bin/busybox
''
"#,
                tools = tools.trim()
            ),
        )
        .unwrap();
        let drv = run(Command::new("nix-instantiate").arg(&expression));
        let app = run(Command::new("nix-build")
            .arg("--no-out-link")
            .arg(&expression));
        TestSystem {
            app: PathBuf::from(app.trim()),
            drv: PathBuf::from(drv.trim()),
            channel: PathBuf::from(channel.trim()),
        }
    })
}

/// The spec of the test image: the derivation as an additional path (so the
/// closure holds `.drv` files), the channel, a configuration file and one
/// `contents` entry owned by root.
fn spec(system: &TestSystem, host: &Path) -> ImageSpec {
    ImageSpec {
        system: Some(system.app.clone()),
        partition_table_type: PartitionTableType::Efi,
        copy_channel: true,
        channel_source: Some(system.channel.clone()),
        additional_paths: vec![system.drv.clone()],
        config_file: Some(host.join("configuration.nix")),
        contents: vec![ContentEntry {
            source: host.join("srv").display().to_string(),
            target: "/srv/data".into(),
            mode: Some("0640".into()),
            user: Some("root".into()),
            group: Some("root".into()),
        }],
        ..ImageSpec::default()
    }
}

/// Two generations of the test system's toplevel: the store path, then a
/// `result` link to it in `host` (as `nix-build` leaves one).
fn generations(system: &TestSystem, host: &Path) -> Vec<PathBuf> {
    let link = host.join("result");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(&system.app, &link).unwrap();
    }
    vec![system.app.clone(), link]
}

fn closure(system: &TestSystem, spec: &ImageSpec, host: &Path) -> Closure {
    let roots = closure_roots(spec, &generations(system, host)).expect("the closure roots");
    Closure::from_store_paths(&roots).expect("the closure of the test system")
}

/// Stages the image root of `spec` into `root`.
fn stage(system: &TestSystem, spec: &ImageSpec, closure: &Closure, host: &Path, root: &Path) {
    let generations = generations(system, host);
    let plan = plan_install(spec, &generations, closure).expect("the install plan");
    assert_eq!(
        plan.chowns,
        [ChownOp {
            index: 0,
            target: "/srv/data".into(),
            uid: 0,
            gid: 0
        }]
    );
    materialise(&plan.root, root).expect("the staged image root");
}

fn host_files() -> tempfile::TempDir {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("configuration.nix"), "{ }: { }\n").unwrap();
    std::fs::create_dir(host.path().join("srv")).unwrap();
    std::fs::write(host.path().join("srv/file"), "hello\n").unwrap();
    host
}

/// Copies every store path of `closure` into `root/nix/store`, as the guest does.
fn copy_store(closure: &Closure, root: &Path) {
    let store = root.join("nix/store");
    std::fs::create_dir_all(&store).unwrap();
    for path in closure.store_paths() {
        run(Command::new("cp").arg("-a").arg(path).arg(&store));
    }
}

fn local_store(root: &Path) -> String {
    format!("local?root={}", root.display())
}

#[test]
fn nix_verifies_the_installed_store_and_lists_exactly_the_closure() {
    let system = test_system();
    let host = host_files();
    let spec = spec(system, host.path());
    let closure = closure(system, &spec, host.path());
    let drvs = closure
        .store_paths()
        .filter(|p| p.extension().is_some_and(|e| e == "drv"));
    assert!(drvs.count() >= 2, "the closure holds the derivations");
    let root = tempfile::tempdir().unwrap();
    stage(system, &spec, &closure, host.path(), root.path());
    copy_store(&closure, root.path());
    let store = local_store(root.path());
    run(Command::new("nix").args(["store", "verify", "--no-trust", "--all", "--store", &store]));
    let listed: BTreeSet<PathBuf> =
        run(Command::new("nix").args(["path-info", "--all", "--store", &store]))
            .lines()
            .map(PathBuf::from)
            .collect();
    let expected: BTreeSet<PathBuf> = closure.store_paths().map(Path::to_owned).collect();
    assert_eq!(listed, expected);
    // The profile resolves to the toplevel inside the chroot store.
    let profile = root.path().join("nix/var/nix/profiles/system");
    assert_eq!(
        std::fs::read_link(&profile).unwrap(),
        Path::new("system-2-link")
    );
    let toplevel = std::fs::read_link(profile.with_file_name("system-2-link")).unwrap();
    assert_eq!(toplevel, system.app);
    let channels = root.path().join("root/.nix-defexpr/channels");
    assert!(std::fs::read_link(&channels).is_ok());
}

#[test]
fn the_database_holds_the_rows_nix_load_db_makes() {
    let system = test_system();
    let host = host_files();
    let closure = closure(system, &spec(system, host.path()), host.path());
    let outputs = read_derivation_outputs(&closure).unwrap();
    let ours_dir = tempfile::tempdir().unwrap();
    let ours = ours_dir.path().join("db.sqlite");
    std::fs::write(
        &ours,
        render_nix_db(&closure, &outputs, 1).unwrap().db_sqlite,
    )
    .unwrap();

    let nix_root = tempfile::tempdir().unwrap();
    // Nix reads each .drv from the chroot store while registering it.
    copy_store(&closure, nix_root.path());
    let mut load = Command::new("nix-store")
        .args(["--load-db", "--store", &local_store(nix_root.path())])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nix-store --load-db");
    use std::io::Write;
    load.stdin
        .take()
        .unwrap()
        .write_all(closure.registration_text().as_bytes())
        .unwrap();
    assert!(load.wait().unwrap().success());
    let theirs = nix_root.path().join("nix/var/nix/db/db.sqlite");

    let query = |db: &Path, sql: &str| -> Vec<Vec<String>> {
        let conn = Connection::open(db).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        let columns = statement.column_count();
        statement
            .query_map([], |row| {
                (0..columns)
                    .map(|i| {
                        let value: rusqlite::types::Value = row.get(i)?;
                        Ok(format!("{value:?}"))
                    })
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for sql in [
        "select id, path, hash, deriver, narSize, ultimate, sigs, ca from ValidPaths order by id",
        "select referrer, reference from Refs order by referrer, reference",
        "select drv, id, path from DerivationOutputs order by drv, id",
        "select type, name, tbl_name, sql from sqlite_master where name != 'sqlite_sequence' order by name",
    ] {
        let ours_rows = query(&ours, sql);
        assert!(!ours_rows.is_empty(), "{sql}");
        assert_eq!(ours_rows, query(&theirs, sql), "{sql}");
    }
    assert_eq!(
        std::fs::read(nix_root.path().join("nix/var/nix/db/schema")).unwrap(),
        b"10"
    );
}

/// (path, kind, mode, uid, gid, mtime, content or link target) of every
/// entry below `root`, sorted.
fn tree(root: &Path) -> Vec<(PathBuf, u32, u32, u32, i64, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for child in std::fs::read_dir(&dir).unwrap() {
            let path = child.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            let relative = path.strip_prefix(root).unwrap().to_owned();
            entries.push((
                relative,
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.mtime(),
                content,
            ));
        }
    }
    entries.sort();
    entries
}

#[test]
fn equal_inputs_stage_identical_trees_with_canonical_metadata() {
    let system = test_system();
    let host = host_files();
    let spec = spec(system, host.path());
    let closure = closure(system, &spec, host.path());
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    stage(system, &spec, &closure, host.path(), first.path());
    stage(system, &spec, &closure, host.path(), second.path());
    let staged = tree(first.path());
    assert_eq!(staged, tree(second.path()));
    let as_root = rustix::process::geteuid().is_root();
    for (path, _, uid, gid, mtime, _) in &staged {
        assert_eq!(*mtime, 1, "{}", path.display());
        if as_root {
            assert_eq!((*uid, *gid), (0, 0), "{}", path.display());
        }
    }
    let mode = |path: &str| {
        let entry = staged.iter().find(|e| e.0 == Path::new(path)).unwrap();
        entry.1 & 0o7777
    };
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("root"), 0o700);
    assert_eq!(mode("srv/data"), 0o640);
    assert_eq!(mode("srv/data/file"), 0o640);
    assert_eq!(mode("etc/nixos/configuration.nix"), 0o644);
    assert_eq!(mode("nix/var/nix/db/db.sqlite"), 0o644);
    let perms = std::fs::metadata(first.path().join("etc/NIXOS"))
        .unwrap()
        .permissions();
    assert_eq!(perms.mode() & 0o777, 0o644);
    // Staging refuses to write over a tree.
    let plan = plan_install(&spec, &generations(system, host.path()), &closure).unwrap();
    assert!(matches!(
        materialise(&plan.root, first.path()),
        Err(MaterialiseError::NotEmpty { .. })
    ));
}

/// A host tree for `contents`: a directory with modes, a subdirectory, a
/// relative link and a dot file; loose files; links to a file and a directory.
fn contents_host() -> tempfile::TempDir {
    let host = tempfile::tempdir().unwrap();
    let at = |p: &str| host.path().join(p);
    let file = |p: &str, mode: u32| {
        std::fs::write(at(p), p).unwrap();
        std::fs::set_permissions(at(p), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(at("dir/sub")).unwrap();
    file("dir/x", 0o640);
    file("dir/sub/y", 0o755);
    file("dir/.dot", 0o600);
    std::fs::set_permissions(at("dir/sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("x", at("dir/rel")).unwrap();
    file("f.txt", 0o600);
    file("g.txt", 0o644);
    std::os::unix::fs::symlink(at("f.txt"), at("to-file")).unwrap();
    std::os::unix::fs::symlink(at("dir/sub"), at("to-dir")).unwrap();
    host
}

/// make-disk-image's contents loop, run with the real rsync into `root`:
/// `(source, target, mode)` triples, mode "" when unset.
fn rsync_contents(entries: &[(String, &str, &str)], root: &Path) {
    let mut script = String::from("set -euo pipefail; umask 022; root=\"$1\"\n");
    for (source, target, mode) in entries {
        let chmod = if mode.is_empty() {
            String::new()
        } else {
            format!("--chmod={mode}")
        };
        let flags = format!("-a --no-o --no-g {chmod}");
        if source.contains('*') {
            script.push_str(&format!(
                "mkdir -p \"$root/{target}\"; for fn in {source}; do rsync {flags} \"$fn\" \"$root/{target}/\"; done\n"
            ));
        } else {
            script.push_str(&format!(
                "mkdir -p \"$(dirname \"$root/{target}\")\"\n\
                 if [ -e \"$root/{target}\" ]; then echo duplicate; exit 1\n\
                 elif [ -d '{source}' ]; then rsync {flags} '{source}/' \"$root/{target}\"\n\
                 else rsync {flags} '{source}' \"$root/{target}\"; fi\n"
            ));
        }
    }
    run(Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("rsync-contents")
        .arg(root));
}

/// (path, mode with type bits, content or link target) below `root`.
fn shape(root: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    tree(root)
        .into_iter()
        .map(|(path, mode, _, _, _, content)| (path, mode, content))
        .collect()
}

#[test]
fn contents_land_as_make_disk_images_rsync_loop_places_them() {
    let host = contents_host();
    let at = |p: &str| host.path().join(p).display().to_string();
    let entries = [
        (at("dir"), "/srv/a", ""),
        (at("*.txt"), "/drop", "0600"),
        (at("to-file"), "/etc/link", ""),
        (at("to-dir"), "/opt/sub", ""),
        (at("dir"), "/srv/b", "0750"),
        (at("dir/*"), "/g", "644"),
    ];
    let rsynced = tempfile::tempdir().unwrap();
    rsync_contents(&entries, rsynced.path());

    let spec_entries: Vec<ContentEntry> = entries
        .iter()
        .map(|(source, target, mode)| ContentEntry {
            source: source.clone(),
            target: (*target).to_owned(),
            mode: (!mode.is_empty()).then(|| (*mode).to_owned()),
            user: None,
            group: None,
        })
        .collect();
    let resolved = resolve_contents(&spec_entries, &Accounts::builtin()).unwrap();
    let mut plan = ImageRootPlan::default();
    resolved.add_to(&mut plan).unwrap();
    let staged = tempfile::tempdir().unwrap();
    materialise(&plan, staged.path()).unwrap();
    let ours = shape(staged.path());
    // 26 objects: every entry placed something, dot files and links included.
    assert_eq!(ours.len(), 26, "{ours:#?}");
    assert_eq!(ours, shape(rsynced.path()));
}
