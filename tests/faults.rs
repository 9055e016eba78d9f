//! Faults injected into real `nixdisk build` runs of the example system,
//! each checked for how it ends: within seconds, with exactly one error that
//! names the cause and the phase (with the guest console's tail where there
//! is a guest), a non-zero exit, and nothing left behind (no output or
//! temporary directory, no QEMU, daemon or host tool, no mount, no loop
//! device). See RELIABILITY.md for the figures.
//!
//! Host phases are held in place by a shim of the tool they run (the real
//! tool runs after it), so a signal lands in the phase named; VM phases are
//! caught by nixdisk's own `-v` log lines. One build at a time.
//!
//! Full images take two paths: an ext root (the default) is made on the
//! host with `mke2fs -d` while the builder VM starts, a btrfs root is made
//! and filled in the guest. Faults of the guest's copy run on btrfs; faults
//! of the host's root hold `unshare` until the test has changed the store.

mod support;

#[path = "faults/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{
    Build, assert_gone, example_system, hold_tool, hold_tool_until_released, require_agent,
};
use rustix::process::Signal;

/// How long a host phase may take to begin.
const HOST: Duration = Duration::from_secs(60);
/// How long the builder VM may take to reach a step (TCG, a loaded host).
const VM: Duration = Duration::from_secs(300);

fn phase(name: &str) -> String {
    format!("build phase phase=\"{name}\"")
}

fn step(name: &str) -> String {
    format!("running install step step=\"{name}\"")
}

/// A store-only image of the example system.
fn store_only(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--system".to_owned(),
        example_system(),
        "--only-nix-store".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A full image of the example system, kept cheap: a bare root file system,
/// no bootloader, unless `extra` says otherwise.
fn full(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--system".to_owned(), example_system()];
    if !extra.contains(&"--partition-table") {
        args.extend(["--partition-table", "none", "--no-bootloader"].map(String::from));
    }
    args.extend(["--additional-space", "32M", "--mem-size", "512"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A full image whose root the builder VM still makes and fills (btrfs, the
/// cheaper of the two file systems without a host tool here): the closure
/// is copied in the guest and the staged image root sent as a tar.
fn guest_copy(extra: &[&str]) -> Vec<String> {
    let mut args = full(&["--fs-type", "btrfs"]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Holds `tools` in `held_phase` (reached after `count` phase lines), sends
/// `signal`, and checks the build ends as interrupted in that phase.
fn signal_in_host_phase(
    args: &[String],
    tools: &[&str],
    held_phase: &str,
    count: usize,
    signal: Signal,
) {
    let scope = Build::new_scope();
    for tool in tools {
        hold_tool(scope.path(), tool);
    }
    let mut build = Build::start_in(scope, &refs(args));
    build.wait_for_count(&phase(held_phase), count, HOST);
    // The shim is started right after the phase line; give it a moment so
    // the signal finds the tool running.
    std::thread::sleep(Duration::from_millis(300));
    build.signal(signal);
    let (code, name) = match signal {
        Signal::INT => (130, "SIGINT"),
        _ => (143, "SIGTERM"),
    };
    let ended = build.end();
    ended.assert_failed_cleanly(
        code,
        &[&format!(
            "interrupted by {name} during the {held_phase} phase"
        )],
    );
}

#[test]
fn ctrl_c_during_the_closure_read() {
    signal_in_host_phase(
        &store_only(&[]),
        &["nix-store"],
        "closure read",
        1,
        Signal::INT,
    );
}

#[test]
fn sigterm_during_the_closure_read() {
    signal_in_host_phase(
        &store_only(&[]),
        &["nix-store"],
        "closure read",
        1,
        Signal::TERM,
    );
}

#[test]
fn ctrl_c_during_staging() {
    // The second staging phase packs the image root with tar, for a root
    // the guest fills.
    signal_in_host_phase(&guest_copy(&[]), &["tar"], "staging", 2, Signal::INT);
}

#[test]
fn sigterm_during_staging() {
    signal_in_host_phase(&guest_copy(&[]), &["tar"], "staging", 2, Signal::TERM);
}

#[test]
fn ctrl_c_while_the_host_makes_the_root() {
    // An ext root is made on the host (unshare, then mke2fs -d) while the
    // builder VM starts: the signal takes down both.
    require_agent();
    let scope = Build::new_scope();
    let held = hold_tool_until_released(scope.path(), "unshare");
    let mut build = Build::start_in(scope, &refs(&full(&[])));
    held.wait(&mut build, VM);
    build.signal(Signal::INT);
    let ended = build.end();
    ended.assert_failed_cleanly(130, &["interrupted by SIGINT during the builder VM phase"]);
    if ended.stderr.contains("QEMU started pid=") {
        assert_gone(ended.build.logged_pid("QEMU started pid"), "QEMU");
    }
}

#[test]
fn ctrl_c_while_making_the_store_image() {
    signal_in_host_phase(
        &store_only(&[]),
        &["unshare", "mke2fs"],
        "store image",
        1,
        Signal::INT,
    );
}

#[test]
fn sigterm_while_making_the_store_image() {
    signal_in_host_phase(
        &store_only(&[]),
        &["unshare", "mke2fs"],
        "store image",
        1,
        Signal::TERM,
    );
}

#[test]
fn ctrl_c_during_conversion() {
    signal_in_host_phase(
        &store_only(&["--format", "qcow2"]),
        &["qemu-img"],
        "conversion",
        1,
        Signal::INT,
    );
}

#[test]
fn sigterm_during_conversion() {
    signal_in_host_phase(
        &store_only(&["--format", "qcow2"]),
        &["qemu-img"],
        "conversion",
        1,
        Signal::TERM,
    );
}

/// postVM starts a child that would run forever (naming the image, so a
/// survivor is seen): the signal must take it down too.
fn signal_during_post_vm(signal: Signal, code: i32, name: &str) {
    let args = store_only(&["--post-vm", "tail -f \"$diskImage\" & wait"]);
    let mut build = Build::start(&refs(&args));
    build.wait_for("running postVM", HOST);
    std::thread::sleep(Duration::from_millis(300));
    build.signal(signal);
    build.end().assert_failed_cleanly(
        code,
        &[&format!("interrupted by {name} during the postVM phase")],
    );
}

#[test]
fn ctrl_c_during_post_vm() {
    signal_during_post_vm(Signal::INT, 130, "SIGINT");
}

#[test]
fn sigterm_during_post_vm() {
    signal_during_post_vm(Signal::TERM, 143, "SIGTERM");
}

#[test]
fn a_failing_post_vm_publishes_nothing() {
    let args = store_only(&["--post-vm", "echo postvm-broke >&2; exit 3"]);
    let build = Build::start(&refs(&args));
    build
        .end()
        .assert_failed_cleanly(1, &["postVM failed (exit status: 3)", "postvm-broke"]);
}

#[test]
fn sigterm_while_the_builder_vm_starts() {
    require_agent();
    let mut build = Build::start(&refs(&full(&[])));
    build.wait_for("QEMU started", VM);
    let qemu = build.logged_pid("QEMU started pid");
    build.signal(Signal::TERM);
    let ended = build.end();
    ended.assert_failed_cleanly(143, &["interrupted by SIGTERM during the builder VM phase"]);
    assert_gone(qemu, "QEMU");
}

#[test]
fn ctrl_c_during_the_closure_copy() {
    require_agent();
    let mut build = Build::start(&refs(&guest_copy(&[])));
    build.wait_for(&step("copy the closure"), VM);
    let (qemu, daemon) = (build.logged_pid("qemu_pid"), build.logged_pid("daemon_pid"));
    build.signal(Signal::INT);
    let ended = build.end();
    ended.assert_failed_cleanly(130, &["interrupted by SIGINT during the builder VM phase"]);
    assert_gone(qemu, "QEMU");
    assert_gone(daemon, "vhost-device-vsock");
}

/// SIGKILLs QEMU once `trigger` is logged; the error must name `during`.
fn kill_qemu_at(args: &[String], trigger: &str, during: &str) {
    require_agent();
    let mut build = Build::start(&refs(args));
    build.wait_for(trigger, VM);
    let (qemu, daemon) = (build.logged_pid("qemu_pid"), build.logged_pid("daemon_pid"));
    harness_kill(qemu);
    let ended = build.end();
    ended.assert_failed_cleanly(
        1,
        &[
            &format!("the builder VM failed while {during}"),
            "qemu-system-x86_64 exited (signal: 9 (SIGKILL))",
            "--- last lines of the guest console ---",
        ],
    );
    assert_gone(daemon, "vhost-device-vsock");
}

fn harness_kill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, Signal::KILL).expect("the process is killed");
}

#[test]
fn qemu_killed_at_hello() {
    // Hello is followed at once by the two file transfers and the first
    // step: the error names whichever was under way.
    kill_qemu_at(&full(&[]), "the agent said hello", "");
}

#[test]
fn qemu_killed_during_the_closure_copy() {
    kill_qemu_at(
        &guest_copy(&[]),
        &step("copy the closure"),
        "running install step `copy the closure`",
    );
}

#[test]
fn qemu_killed_during_the_bootloader_installation() {
    kill_qemu_at(
        &full(&["--partition-table", "legacy"]),
        &step("install the bootloader"),
        "running install step `install the bootloader`",
    );
}

#[test]
fn the_vsock_daemon_dying_ends_the_build() {
    require_agent();
    let mut build = Build::start(&refs(&full(&[])));
    build.wait_for("the agent said hello", VM);
    let (qemu, daemon) = (build.logged_pid("qemu_pid"), build.logged_pid("daemon_pid"));
    harness_kill(daemon);
    let ended = build.end();
    ended.assert_failed_cleanly(
        1,
        &[
            "the builder VM failed while",
            "the vsock daemon stopped",
            "vhost-device-vsock exited (signal: 9 (SIGKILL))",
        ],
    );
    assert_gone(qemu, "QEMU");
}

#[test]
fn an_image_root_larger_than_the_builders_memory_fails_clearly() {
    require_agent();
    let scope = Build::new_scope();
    let big = scope.path().join("big");
    let file = std::fs::File::create(&big).expect("the big file");
    // 200 MiB of contents: the staged image root of a root made in the
    // guest travels through the builder's memory (a tmpfs), which 256 MiB
    // of memSize cannot hold.
    file.set_len(200 << 20).expect("sized");
    let spec = scope.path().join("spec.json");
    let json = serde_json::json!({
        "system": example_system(),
        "partitionTableType": "none",
        "installBootLoader": false,
        // An ext root is made on the host from the staged root; btrfs is
        // made in the guest, from the tar.
        "fsType": "btrfs",
        "memSize": 256,
        "additionalSpace": "32M",
        "contents": [{"source": big, "target": "/big"}],
    });
    std::fs::write(&spec, json.to_string()).expect("the spec");
    let spec = spec.display().to_string();
    let mut build = Build::start_in(scope, &["--spec", &spec]);
    build.wait_for("the agent said hello", VM);
    build.end().assert_failed_cleanly(
        1,
        &[
            "the builder VM ran out of memory receiving /mnt/image-root.tar (200.",
            "memSize 256 MiB leaves too little room",
            "hint: raise memSize to at least 768 (--mem-size 768)",
            "No space left on device",
        ],
    );
}

/// A store path of its own (added with `nix-store --add`), deleted from the
/// store on drop.
struct StorePath(PathBuf);

impl StorePath {
    fn add(scope: &Path, name: &str) -> StorePath {
        let dir = scope.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("the store path's source");
        std::fs::write(dir.join("data"), vec![7u8; 4096]).expect("its data");
        let out = Command::new("nix-store")
            .arg("--add")
            .arg(&dir)
            .output()
            .expect("nix-store");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        StorePath(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }

    fn delete(&self) {
        let _ = Command::new("nix-store")
            .arg("--delete")
            .arg(&self.0)
            .output();
    }
}

impl Drop for StorePath {
    fn drop(&mut self) {
        if self.0.exists() {
            self.delete();
        }
    }
}

#[test]
fn a_store_path_vanishing_before_the_guest_copy_fails_the_copy_step() {
    require_agent();
    let scope = Build::new_scope();
    let path = StorePath::add(scope.path(), "nixdisk-fault-vanish");
    let args = guest_copy(&["--additional-path", &path.arg()]);
    let mut build = Build::start_in(scope, &refs(&args));
    build.wait_for("the agent said hello", VM);
    path.delete();
    assert!(
        !path.0.exists(),
        "nix-store --delete removed {}",
        path.arg()
    );
    build.end().assert_failed_cleanly(
        1,
        &[
            "install step `copy the closure` failed in the builder VM",
            "No such file or directory",
            &path.arg(),
            "hint: a store path of the closure vanished from the host's store",
            "--- guest console (last lines) ---",
        ],
    );
}

/// An ext root is made on the host while the builder VM starts: `unshare`
/// (which bind-mounts the store paths for `mke2fs -d`) is held until the
/// test has changed the store, then the build must fail in that phase with
/// one error, the VM torn down and nothing left.
fn host_root_fails_after(args: &[String], change: impl FnOnce(), needles: &[&str]) -> String {
    require_agent();
    let scope = Build::new_scope();
    let held = hold_tool_until_released(scope.path(), "unshare");
    let mut build = Build::start_in(scope, &refs(args));
    held.wait(&mut build, VM);
    // Fail while the VM boots (before its agent says hello): the start
    // must be cut short and QEMU killed.
    build.wait_for("QEMU started", VM);
    let qemu = build.logged_pid("QEMU started pid");
    change();
    held.release();
    let ended = build.end();
    let mut all = vec![
        "could not make the root file system on the host",
        "caused by: `unshare ",
    ];
    all.extend(needles);
    ended.assert_failed_cleanly(1, &all);
    // The builder VM started alongside: it must be gone with its run
    // directory (in the scope's TMPDIR, checked above).
    assert_gone(qemu, "QEMU");
    ended.stderr.clone()
}

#[test]
fn a_store_path_vanishing_before_the_host_makes_the_root_fails_that_phase() {
    let scope = tempfile::tempdir().expect("a directory");
    let path = StorePath::add(scope.path(), "nixdisk-fault-vanish-host");
    let args = full(&["--additional-path", &path.arg()]);
    let stderr = host_root_fails_after(
        &args,
        || {
            path.delete();
            assert!(
                !path.0.exists(),
                "nix-store --delete removed {}",
                path.arg()
            );
        },
        &[
            "does not exist",
            &path.arg(),
            "hint: a store path of the closure vanished from the host's store",
        ],
    );
    // mount fails at once, long before the guest boots: the start is cut
    // short rather than waited out.
    assert!(
        !stderr.contains("the agent said hello"),
        "the start was cut short:\n{stderr}"
    );
}

/// The smallest fixed disk that fits the plan of `args`: from nixdisk's own
/// hint when given a disk of 1 MiB.
fn smallest_fixed_disk(args: &[String], scope: &Path) -> String {
    let mut args = args.to_vec();
    args.extend(["--disk-size", "1M"].map(String::from));
    let probe = Command::new(env!("CARGO_BIN_EXE_nixdisk"))
        .arg("build")
        .args(args)
        .arg("--out")
        .arg(scope.join("probe"))
        .output()
        .expect("nixdisk runs");
    let hint = String::from_utf8_lossy(&probe.stderr).into_owned();
    let at = hint
        .find("or at least ")
        .unwrap_or_else(|| panic!("a size hint in:\n{hint}"));
    let mib: f64 = hint[at + "or at least ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a size in MiB");
    format!("{}M", mib.ceil() as u64)
}

#[test]
fn a_fixed_disk_that_the_real_data_outgrows_fails_the_host_mke2fs() {
    let scope = tempfile::tempdir().expect("a directory");
    let path = StorePath::add(scope.path(), "nixdisk-fault-grow");
    let plan = full(&["--additional-path", &path.arg()]);
    let disk = smallest_fixed_disk(&plan, scope.path());
    let args = full(&["--additional-path", &path.arg(), "--disk-size", &disk]);
    let _ = host_root_fails_after(
        &args,
        || {
            // The data grows after planning: the disk fits the plan, not
            // the data.
            let mut grown = std::fs::OpenOptions::new()
                .append(true)
                .open(path.0.join("data"))
                .expect("the data");
            std::io::Write::write_all(&mut grown, &vec![1u8; 32 << 20]).expect("grown");
        },
        &[
            "mke2fs",
            "hint: the closure does not fit (did it change after planning?)",
        ],
    );
}

#[test]
fn a_boot_partition_too_small_for_the_kernels_fails_in_the_guest() {
    // The ESP ends at bootSize (8 MiB of it here); the bootloader copies the
    // example system's kernel and initrd (12 MiB) onto it. Nothing checks
    // that before the guest runs out of room.
    require_agent();
    let args = full(&["--partition-table", "efi", "--boot-size", "16M"]);
    let build = Build::start(&refs(&args));
    build.end_within(VM).assert_failed_cleanly(
        1,
        &[
            "install step `install the bootloader` failed in the builder VM",
            "No space left on device",
            "hint: the boot partition is full: bootSize 16",
            "--- guest console (last lines) ---",
        ],
    );
}

#[test]
fn sigkill_of_nixdisk_takes_qemu_and_the_daemon_along() {
    require_agent();
    let mut build = Build::start(&refs(&guest_copy(&[])));
    build.wait_for(&step("copy the closure"), VM);
    let (qemu, daemon) = (build.logged_pid("qemu_pid"), build.logged_pid("daemon_pid"));
    build.signal(Signal::KILL);
    let ended = build.end();
    assert_eq!(ended.code, None, "killed by SIGKILL");
    // The watchdogs in their process groups see nixdisk's pipe close.
    assert_gone(qemu, "QEMU");
    assert_gone(daemon, "vhost-device-vsock");
    assert!(
        support::processes_mentioning(ended.build.scope()).is_empty(),
        "no process of the build is left"
    );
    // Its directories stay (nothing ran to remove them); the scope goes.
}
