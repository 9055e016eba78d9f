//! The one way integration tests start a builder VM: [`VmScope`] serializes
//! the VMs of a test binary (CI has two cores), gives each its own parent
//! directory for run directories, starts the VM and waits for hello or a
//! console marker, and checks afterwards that no QEMU, daemon or run
//! directory is left. Dropping a [`TestVm`] kills everything it started.

#![allow(dead_code)] // each test binary uses a part of it

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nixdisk::builder_vm::{AccelChoice, BuilderVm, BuilderVmConfig, Error};
use nixdisk::transport::{TransportChoice, TransportKind};
use nixdisk_firmware::FirmwareKind;

static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether the machine can run these tests at all (QEMU and a static agent
/// build); tests skip loudly otherwise, never pass silently: they panic
/// unless `NIXDISK_SKIP_VM_TESTS` is set.
pub fn require_vm_tools() -> bool {
    let have_qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let have_agent = nixdisk::builder_vm::find_agent(None).is_ok();
    if have_qemu && have_agent {
        return true;
    }
    if std::env::var_os("NIXDISK_SKIP_VM_TESTS").is_some() {
        eprintln!("skipping: qemu {have_qemu}, static agent {have_agent}");
        return false;
    }
    panic!(
        "VM tests need qemu-system-x86_64 (found: {have_qemu}) and the static agent \
         built by scripts/build-agent (found: {have_agent}); set NIXDISK_SKIP_VM_TESTS=1 to skip"
    );
}

/// One test's VM environment: a lock held for the test, and a private
/// parent directory for run directories.
pub struct VmScope {
    _one_at_a_time: MutexGuard<'static, ()>,
    parent: tempfile::TempDir,
}

impl VmScope {
    /// Takes the VM lock and makes the parent directory.
    pub fn new() -> VmScope {
        let guard = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let parent = tempfile::Builder::new()
            .prefix("nixdisk-vm-test-")
            .tempdir()
            .expect("a temporary directory");
        VmScope {
            _one_at_a_time: guard,
            parent,
        }
    }

    /// The directory run directories are created in.
    pub fn parent(&self) -> &Path {
        self.parent.path()
    }

    /// A TCG builder VM config with `firmware` and `transport`.
    pub fn config(&self, firmware: FirmwareKind, transport: TransportKind) -> BuilderVmConfig {
        BuilderVmConfig {
            firmware,
            transport: TransportChoice::Only(transport),
            accel: AccelChoice::Tcg,
            run_dir_parent: Some(self.parent().to_owned()),
            ..BuilderVmConfig::default()
        }
    }

    /// Starts a VM and waits for the agent's hello.
    pub async fn start(&self, config: &BuilderVmConfig) -> Result<TestVm, Error> {
        let vm = BuilderVm::start(config).await?;
        Ok(TestVm {
            qemu_pid: vm.qemu_pid(),
            daemon_pid: vm.daemon_pid(),
            run_dir: vm.run_dir().to_owned(),
            vm: Some(vm),
        })
    }

    /// Asserts that nothing of any VM of this scope is left: no process
    /// whose command line names the scope's directory, nothing inside it.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = processes_mentioning(self.parent());
            let entries: Vec<PathBuf> = std::fs::read_dir(self.parent())
                .expect("the scope directory")
                .map(|e| e.expect("a directory entry").path())
                .collect();
            if procs.is_empty() && entries.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: processes {procs:?}, files {entries:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A started VM; dropping it kills QEMU and the daemon and removes the run dir.
#[derive(Debug)]
pub struct TestVm {
    /// The VM (taken by tests that shut it down themselves).
    pub vm: Option<BuilderVm>,
    /// QEMU's pid.
    pub qemu_pid: u32,
    /// The vsock daemon's pid.
    pub daemon_pid: Option<u32>,
    /// The run directory.
    pub run_dir: PathBuf,
}

impl TestVm {
    /// The VM.
    pub fn vm(&mut self) -> &mut BuilderVm {
        self.vm.as_mut().expect("the VM is still running")
    }

    /// Waits until `marker` appears anywhere in the console.
    pub async fn wait_for_console(&self, marker: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .vm
                .as_ref()
                .is_some_and(|vm| vm.console().contains(marker))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Drops the VM and checks its processes and run directory are gone.
    pub fn stop_and_assert_gone(&mut self) {
        drop(self.vm.take());
        assert_process_gone(self.qemu_pid);
        if let Some(pid) = self.daemon_pid {
            assert_process_gone(pid);
        }
        assert!(!self.run_dir.exists(), "{} is left", self.run_dir.display());
    }
}

/// Asserts that `pid` is gone (or a zombie about to be reaped) within 5 s.
pub fn assert_process_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Live processes whose command line mentions `path`.
pub fn processes_mentioning(path: &Path) -> Vec<(u32, String)> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && process_alive(pid) {
            found.push((pid, cmdline));
        }
    }
    found
}
