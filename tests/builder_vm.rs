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
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
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
    assert!(back == data, "the bytes read back differ from those written");
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

#[tokio::test(flavor = "multi_thread")]
async fn crashed_agent_is_reported_as_such() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    let mut vm = started(&scope).await;
    // Overwrite the agent's code with ud2 (via /proc/1/mem, as root may):
    // PID 1 dies of SIGILL, as it would of a real bug.
    let script = r#"
set -e
range=$(grep ' r-xp .*/init$' /proc/1/maps | head -n 1 | cut -d' ' -f1)
start=$((0x${range%-*}))
end=$((0x${range#*-}))
yes "$(printf '\017\013')" | tr -d '\n' | head -c $((end - start)) > /tmp/ud2
dd if=/tmp/ud2 of=/proc/1/mem bs=4096 seek=$((start / 4096)) conv=notrunc 2>/dev/null
echo "the agent's code is gone"
sleep 30
"#;
    let since = Instant::now();
    let error = vm
        .vm()
        .agent()
        .run(&["sh", "-c", script], |_, _| {})
        .await
        .expect_err("the agent crashes");
    assert!(matches!(error, Error::AgentCrashed { .. }), "{error:?}");
    assert_clear(&error, since, Duration::from_secs(15), "Attempted to kill init");
    vm.stop_and_assert_gone();
    scope.assert_clean();
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
    let error = scope.start(&config).await.expect_err("the share is missing");
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
    assert_clear(&error, since, Duration::from_secs(5), "/nonexistent/vmlinuz");
    scope.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_no_kernel_is_refused() {
    if !support::require_vm_tools() {
        return;
    }
    let scope = VmScope::new();
    // A real file that is no kernel.
    let bogus = scope.parent().join("..").join(format!("bogus-kernel-{}", std::process::id()));
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
