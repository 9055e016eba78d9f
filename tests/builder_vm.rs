//! The builder VM end to end: QEMU under TCG with each firmware and each
//! transport this kind of machine can run, the agent's hello, commands,
//! bulk streams both ways, and the faults that must end quickly, clearly
//! and without leftovers.

mod support;

use std::time::{Duration, Instant};

use nixdisk::builder_vm::{BuilderVmConfig, Error};
use nixdisk::transport::TransportKind;
use nixdisk_firmware::FirmwareKind;
use sha2::{Digest, Sha256};
use support::{TestVm, VmScope};

const MIB: usize = 1024 * 1024;

/// Deterministic, incompressible-looking test data.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `argv` and returns (exit code, stdout, stderr).
async fn run(vm: &mut TestVm, argv: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = vm
        .vm()
        .agent()
        .run(argv, |stream, bytes| match stream {
            nixdisk::builder_vm::OutputStream::Stdout => out.extend_from_slice(bytes),
            nixdisk::builder_vm::OutputStream::Stderr => err.extend_from_slice(bytes),
        })
        .await
        .unwrap_or_else(|e| panic!("running {argv:?} failed: {e}"));
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Hello, a command in the chroot of the host share, and `mib` MiB each way
/// through the agent with matching checksums; then a clean shutdown.
async fn boot_run_and_stream(firmware: FirmwareKind, transport: TransportKind, mib: usize) {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let config = scope.config(firmware, transport);
    let mut vm = scope.start(&config).await.expect("the builder VM starts");
    assert_eq!(vm.vm().transport(), transport);
    let release = vm.vm().agent().hello().kernel_release.clone();
    eprintln!("hello after {:?} ({release})", vm.vm().startup_time());

    let (code, stdout, _) = run(&mut vm, &["uname", "-r"]).await;
    assert_eq!((code, stdout.trim()), (0, release.as_str()));
    // The chroot is the host's root: a host file reads the same inside.
    let host_os = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    let (code, stdout, _) = run(&mut vm, &["cat", "/etc/os-release"]).await;
    assert_eq!((code, stdout.as_str()), (0, host_os.as_str()));
    let (code, _, stderr) = run(&mut vm, &["sh", "-c", "echo oops >&2; exit 3"]).await;
    assert_eq!((code, stderr.as_str()), (3, "oops\n"));

    let data = pattern(mib * MIB, mib as u64);
    eprintln!("commands done after {:?}", vm.vm().startup_time());
    let started = Instant::now();
    let sent = vm
        .vm()
        .agent()
        .write_file("/mnt/stream", 0o600, &data[..])
        .await
        .expect("writing into the guest");
    let up = started.elapsed();
    assert_eq!(sent.bytes, data.len() as u64);
    assert_eq!(sent.sha256, sha256_hex(&data));
    // The guest's own tool agrees on what arrived (the agent's /mnt is
    // also /mnt in the chroot).
    let (code, stdout, _) = run(&mut vm, &["sha256sum", "/mnt/stream"]).await;
    assert_eq!(code, 0);
    assert_eq!(stdout.split_whitespace().next(), Some(sent.sha256.as_str()));

    let mut back = Vec::with_capacity(data.len());
    let started = Instant::now();
    let received = vm
        .vm()
        .agent()
        .read_file("/mnt/stream", &mut back)
        .await
        .expect("reading from the guest");
    let down = started.elapsed();
    assert_eq!(received, sent);
    assert!(
        back == data,
        "the bytes read back differ from those written"
    );
    eprintln!(
        "{mib} MiB: to the guest {:.0} MiB/s, from the guest {:.0} MiB/s",
        mib as f64 / up.as_secs_f64(),
        mib as f64 / down.as_secs_f64()
    );

    let taken = vm.vm.take().expect("the VM");
    taken
        .shutdown(Duration::from_secs(20))
        .await
        .expect("a clean power-off");
    support::assert_process_gone(vm.qemu_pid);
    vm.stop_and_assert_gone();
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn seabios_virtio_serial_streams_256_mib_each_way() {
    boot_run_and_stream(FirmwareKind::Bios, TransportKind::VirtioSerial, 256).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn seabios_vhost_user_vsock_streams_256_mib_each_way() {
    boot_run_and_stream(FirmwareKind::Bios, TransportKind::VhostUserVsock, 256).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ovmf_vhost_user_vsock_boots_and_streams() {
    boot_run_and_stream(FirmwareKind::Uefi, TransportKind::VhostUserVsock, 16).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ovmf_virtio_serial_boots_and_streams() {
    boot_run_and_stream(FirmwareKind::Uefi, TransportKind::VirtioSerial, 16).await;
}

/// Starts a SeaBIOS VM over vhost-user vsock (the transport with a daemon to
/// clean up too).
async fn started(scope: &VmScope) -> TestVm {
    let config = scope.config(FirmwareKind::Bios, TransportKind::VhostUserVsock);
    scope.start(&config).await.expect("the builder VM starts")
}

/// Asserts the error came within `limit` of `since` and names `what` and
/// the console.
fn assert_clear(error: &Error, since: Instant, limit: Duration, what: &str) {
    let text = error.to_string();
    eprintln!("error after {:?}:\n{text}", since.elapsed());
    assert!(since.elapsed() < limit, "took {:?}", since.elapsed());
    assert!(text.contains(what), "expected {what:?} in:\n{text}");
}

/// The guest sees the host only read-only: a write into a host directory
/// fails, also after remounting the share read-write (QEMU's `readonly=on`
/// refuses writes on the host side), and nothing appears on the host.
#[tokio::test(flavor = "multi_thread")]
async fn the_guest_cannot_write_the_host_share() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let mut vm = started(&scope).await;
    // Outside /tmp: the guest has a /tmp of its own.
    let host_dir = tempfile::Builder::new()
        .prefix("nixdisk-share-probe-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a host directory");
    let probe = host_dir.path().join("written-by-the-guest");
    let probe_text = probe.to_str().expect("a UTF-8 path");
    let (code, _, stderr) = run(&mut vm, &["sh", "-c", &format!("echo x > {probe_text}")]).await;
    assert_ne!(code, 0, "the write succeeded");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    let remount = format!("mount -o remount,rw / ; echo x > {probe_text} || exit 1; sync");
    let (code, _, stderr) = run(&mut vm, &["sh", "-c", &remount]).await;
    assert_ne!(code, 0, "the write after a remount succeeded: {stderr}");
    let (code, _, _) = run(&mut vm, &["touch", "/etc/nixdisk-share-probe"]).await;
    assert_ne!(code, 0, "touching the host's /etc succeeded");
    assert!(!probe.exists(), "the guest wrote {}", probe.display());
    assert!(!std::path::Path::new("/etc/nixdisk-share-probe").exists());
    vm.stop_and_assert_gone();
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_panic_ends_the_run_with_the_console_tail() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let mut vm = started(&scope).await;
    let since = Instant::now();
    let error = vm
        .vm()
        .agent()
        .run(&["sh", "-c", "echo c > /proc/sysrq-trigger"], |_, _| {})
        .await
        .expect_err("the guest panics");
    assert!(matches!(error, Error::GuestPanicked { .. }), "{error:?}");
    assert_clear(&error, since, Duration::from_secs(15), "sysrq");
    vm.stop_and_assert_gone();
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_qemu_ends_the_run() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let mut vm = started(&scope).await;
    let pid = vm.qemu_pid;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // SAFETY-free: a plain kill(2) of the QEMU this test started.
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill runs");
    });
    let since = Instant::now();
    let error = vm
        .vm()
        .agent()
        .run(&["sleep", "60"], |_, _| {})
        .await
        .expect_err("QEMU was killed");
    killer.await.expect("the killer task");
    assert!(matches!(error, Error::VmStopped { .. }), "{error:?}");
    assert_clear(&error, since, Duration::from_secs(10), "signal: 9");
    vm.stop_and_assert_gone();
    scope.assert_clean();
}

/// Starts a VM whose agent fails on purpose right after hello
/// (`nixdisk.fault=`) and checks the error that ends it (from the start
/// itself, or from the first request) names the crash and `expected`.
async fn crash_agent(fault: &str, expected: &str) {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let config = BuilderVmConfig {
        extra_kernel_args: vec![format!("nixdisk.fault={fault}")],
        ..scope.config(FirmwareKind::Bios, TransportKind::VhostUserVsock)
    };
    let since = Instant::now();
    let error = match scope.start(&config).await {
        Err(e) => e,
        Ok(mut vm) => {
            let error = vm
                .vm()
                .agent()
                .run(&["true"], |_, _| {})
                .await
                .expect_err("the agent is gone");
            vm.stop_and_assert_gone();
            error
        }
    };
    assert!(matches!(error, Error::AgentCrashed { .. }), "{error:?}");
    assert_clear(&error, since, Duration::from_secs(120), expected);
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_exiting_as_pid_1_is_reported_as_a_crash() {
    crash_agent("exit", "Attempted to kill init").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_panicking_is_reported_as_a_crash() {
    crash_agent("panic", "fault injected by nixdisk.fault=panic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_host_share_fails_the_start_with_the_agents_reason() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let config = BuilderVmConfig {
        extra_kernel_args: vec!["nixdisk.share=9p:no-such-tag".into()],
        ..scope.config(FirmwareKind::Bios, TransportKind::VirtioSerial)
    };
    let since = Instant::now();
    let error = match scope.start(&config).await {
        Err(e) => e,
        // A report that came late surfaces at the first request.
        Ok(mut vm) => {
            let error = vm
                .vm()
                .agent()
                .run(&["true"], |_, _| {})
                .await
                .expect_err("the agent failed at startup");
            vm.stop_and_assert_gone();
            error
        }
    };
    assert!(matches!(error, Error::AgentFailed { .. }), "{error:?}");
    // Boot plus the agent's 5 s of mount retries.
    assert_clear(&error, since, Duration::from_secs(90), "no-such-tag");
    assert!(error.to_string().contains("guest console"), "{error}");
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_kernel_path_fails_before_qemu_starts() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let config = BuilderVmConfig {
        kernel: Some("/nonexistent/vmlinuz".into()),
        ..scope.config(FirmwareKind::Bios, TransportKind::VirtioSerial)
    };
    let since = Instant::now();
    let error = scope.start(&config).await.expect_err("no such kernel");
    assert_clear(
        &error,
        since,
        Duration::from_secs(5),
        "/nonexistent/vmlinuz",
    );
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_no_kernel_is_refused() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    // A real file that is no kernel.
    let bogus = scope
        .parent()
        .join("..")
        .join(format!("bogus-kernel-{}", std::process::id()));
    std::fs::write(&bogus, b"not a kernel").expect("write");
    let config = BuilderVmConfig {
        kernel: Some(bogus.clone()),
        ..scope.config(FirmwareKind::Bios, TransportKind::VirtioSerial)
    };
    let since = Instant::now();
    let error = scope.start(&config).await.expect_err("not a kernel");
    std::fs::remove_file(&bogus).expect("remove");
    assert_clear(&error, since, Duration::from_secs(10), "bogus-kernel");
    scope.assert_clean();
}

/// The environment variable that turns [`vm_command_child`] into a
/// `nixdisk vm` process: the arguments, separated by newlines.
const CHILD_ARGS: &str = "NIXDISK_TEST_VM_COMMAND_ARGS";

/// Not a check on its own: when [`CHILD_ARGS`] is set, this test process
/// becomes `nixdisk vm ARGS` (the Ctrl-C test below starts it that way,
/// since the CLI's binary is wired elsewhere) and exits with its status.
#[test]
fn vm_command_child() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: nixdisk::cli::vm::VmArgs,
    }
    let Ok(args) = std::env::var(CHILD_ARGS) else {
        return;
    };
    let cli = Cli::parse_from(std::iter::once("nixdisk-vm").chain(args.lines()));
    let code = match nixdisk::cli::vm::run(cli.args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nixdisk vm: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

#[test]
fn ctrl_c_stops_the_vm_and_leaves_nothing() {
    interrupt_nixdisk_vm(rustix::process::Signal::INT, 130);
}

#[test]
fn sigterm_stops_the_vm_and_leaves_nothing() {
    interrupt_nixdisk_vm(rustix::process::Signal::TERM, 143);
}

/// Starts `nixdisk vm -- sh -c 'echo ready; sleep 100'` as a child process,
/// sends `signal` once the command runs, and checks the exit status and that
/// nothing is left.
fn interrupt_nixdisk_vm(signal: rustix::process::Signal, expected: i32) {
    use std::io::BufRead;
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let args = [
        "--accel",
        "tcg",
        "--transport",
        "vhost-user-vsock",
        "--",
        "sh",
        "-c",
        "echo ready; sleep 100",
    ]
    .join("\n");
    let mut child = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "vm_command_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ARGS, args)
        .env("TMPDIR", scope.parent())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints its "test ... " prefix without a newline.
            if line.trim_end().ends_with("ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(300));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    if ready.is_err() {
        let _ = child.kill();
        panic!("the command never ran in the VM");
    }
    assert!(
        !support::processes_mentioning(scope.parent()).is_empty(),
        "QEMU runs with its run directory in the scope"
    );
    let since = Instant::now();
    rustix::process::kill_process(pid, signal).expect("the signal is sent");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if since.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("the child did not exit within 15 s of {signal:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("exited {status} after {:?}", since.elapsed());
    assert_eq!(status.code(), Some(expected));
    scope.assert_clean();
}
