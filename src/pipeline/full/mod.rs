//! Full images: nixdisk plans the disk and the image root on the host, then
//! the builder VM makes the file systems, copies the closure from the host's
//! store, runs the system's bootloader installation and powers off.
//!
//! Host side: closure -> install plan (Nix database, profile links, contents)
//! -> size -> partition table written into the raw image -> staging tree sent
//! as a tar. Guest side: the scripts of [`steps`], one per phase.

mod host_root;
pub(crate) mod steps;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::builder_vm::{self, BuilderVm, BuilderVmConfig};
use crate::closure::Closure;
use crate::install::{self, InstallError};
use crate::interrupt::{self, Interrupted, Phase};
use crate::layout::{self, LayoutError, PartitionTable};
use crate::qemu::{Disk, DiskFormat};
use crate::reproducible;
use crate::sizing::{self, FsSize, SizingError, TreeStats};
use crate::spec::{ByteSize, DiskSize, FsType, ImageSpec};

pub use host_root::makes_root_on_host;
pub use steps::{Step, StepInputs, plan_steps};

/// Bytes set aside per generation for kernels and initrds the bootloader
/// copies onto the root file system when /boot is not its own partition.
const BOOT_FILES_ALLOWANCE: u64 = 8 * 1024 * 1024;
/// Where the EFI variables are kept in the output's work directory until the
/// output takes them as `efi-vars.fd`.
const EFI_VARS_SCRATCH: &str = ".efi-vars.fd";
/// How long the builder VM may take to power off after the last step.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);
/// Environment variable naming the GRUB devices of the system (space
/// separated); the Nix wrapper sets it from the configuration.
pub const GRUB_DEVICES_ENV: &str = "NIXDISK_GRUB_DEVICES";

/// Why a full image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FullImageError {
    /// A system is not a store path of a NixOS toplevel.
    #[error(
        "`{}` is not a NixOS system: a full image needs the toplevel store path (with bin/switch-to-configuration)\nhint: pass the system's toplevel (config.system.build.toplevel), not a closureInfo directory",
        path.display()
    )]
    NotAToplevel {
        /// The path given.
        path: PathBuf,
    },
    /// The image root could not be planned.
    #[error("could not plan the image's root")]
    Install(#[from] InstallError),
    /// The image root could not be staged.
    #[error("could not stage the image's root")]
    Materialise(#[from] install::MaterialiseError),
    /// The root file system could not be made on the host.
    #[error(
        "could not make the root file system on the host (mke2fs -d of the closure and the image root, while the builder VM started)"
    )]
    RootFs(#[from] crate::store_image::StoreImageError),
    /// Sizing failed.
    #[error("could not size the root file system")]
    Sizing(#[from] SizingError),
    /// The layout could not be planned or written.
    #[error("could not lay out the disk")]
    Layout(#[from] LayoutError),
    /// The closure does not fit the fixed disk size.
    #[error(
        "the system does not fit: its root file system needs {} but diskSize {} leaves {} for it\nhint: use diskSize \"auto\", or at least {}",
        sizing::human(*needed), sizing::human(*disk_size), sizing::human(*available), sizing::human(*minimum_disk)
    )]
    DoesNotFit {
        /// Bytes the root file system needs.
        needed: u64,
        /// The disk size given.
        disk_size: u64,
        /// Bytes of the root partition at that disk size.
        available: u64,
        /// The smallest disk that fits.
        minimum_disk: u64,
    },
    /// A host-side file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Packing the staging tree failed.
    #[error("could not pack the image root with tar: {0}")]
    Tar(String),
    /// The builder VM failed.
    #[error("the builder VM failed while {during}")]
    Vm {
        /// What the build was doing in the VM.
        during: String,
        /// What went wrong.
        source: builder_vm::Error,
    },
    /// The fixed times of a deterministic ext4 root could not be set.
    #[error(transparent)]
    Times(#[from] crate::reproducible::TimesError),
    /// Ctrl-C or SIGTERM stopped the build.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    /// A file sent to the builder did not fit in its memory.
    #[error(
        "the builder VM ran out of memory receiving {file} ({}): it holds the file in memory, and memSize {mem_size} MiB leaves too little room\nhint: raise memSize to at least {suggested} (--mem-size {suggested})",
        sizing::human(*bytes)
    )]
    BuilderMemory {
        /// The file in the guest.
        file: &'static str,
        /// Its size.
        bytes: u64,
        /// The builder's memory in MiB.
        mem_size: u64,
        /// A memSize that holds it, in MiB.
        suggested: u64,
        /// What the agent reported.
        source: builder_vm::Error,
    },
    /// An install step failed in the builder VM.
    #[error(
        "install step `{step}` failed in the builder VM ({status})\n{output}{hint}\n--- guest console (last lines) ---\n{console}"
    )]
    Step {
        /// The step's name.
        step: &'static str,
        /// How it ended.
        status: String,
        /// The last lines of its output.
        output: String,
        /// What to try, from what the output says (empty when nothing fits).
        hint: String,
        /// The tail of the guest console.
        console: String,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FullImageError {
    let path = path.to_owned();
    move |source| FullImageError::Io { what, path, source }
}

/// Builds the full image into the raw image `raw`; `work` is a private
/// scratch directory. Returns the EFI variables file when `touchEFIVars`
/// asked for one.
pub fn build(
    spec: &ImageSpec,
    closure: &Closure,
    raw: &Path,
    work: &Path,
) -> Result<Option<PathBuf>, FullImageError> {
    interrupt::enter(Phase::Staging)?;
    let planned = Instant::now();
    let toplevels = toplevels(spec)?;
    let plan = install::plan_install(spec, &toplevels, closure)?;
    // Removed when this returns, whatever happens.
    let scratch = tempfile::Builder::new()
        .prefix(".nixdisk-work-")
        .tempdir_in(work)
        .map_err(io("could not create a scratch directory in", work))?;
    let efi_vars = spec.touch_efi_vars.then(|| work.join(EFI_VARS_SCRATCH));
    let work = scratch.path();
    let staging = work.join("image-root");
    install::materialise(&plan.root, &staging)?;
    interrupt::enter(Phase::Sizing)?;
    let size = size_root(spec, closure, &staging, &toplevels)?;
    let table = lay_out(spec, &size)?;
    create_disk(raw, &table)?;
    interrupt::enter(Phase::Staging)?;
    crate::timings::record("plan, stage and lay out", planned.elapsed(), None);
    let root_on_host = makes_root_on_host(spec.fs_type);
    let mut tar = None;
    let mut paths_file = None;
    if !root_on_host {
        let packed = work.join("image-root.tar");
        pack(&staging, &packed)?;
        let list = work.join("store-paths");
        std::fs::write(&list, closure.store_paths_text()).map_err(io("could not write", &list))?;
        tar = Some(packed);
        paths_file = Some(list);
    }
    let inputs = StepInputs {
        root_mkfs_options: size.mkfs_options.clone(),
        grub_devices: grub_devices(),
        chowns: plan.chowns.clone(),
        efi_vars: spec.touch_efi_vars,
        root_on_host,
    };
    let steps = plan_steps(spec, &table, &inputs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io("could not start the async runtime for", work))?;
    let vm_files = VmFiles {
        raw,
        tar: tar.as_deref(),
        paths_file: paths_file.as_deref(),
        efi_vars: efi_vars.as_deref(),
        closure_bytes: closure.total_nar_size(),
        boot_partition: table
            .partitions
            .iter()
            .any(|p| p.role != layout::Role::Root && p.mount_point.is_some())
            .then_some(spec.boot_size),
    };
    interrupt::enter(Phase::Vm)?;
    // The root file system is made while the builder VM boots: the guest
    // touches the root partition only when a step mounts it, after both. A
    // signal drops the VM at once (QEMU and the daemon are killed and the run
    // directory removed) and kills the host's mke2fs, before this returns.
    std::thread::scope(|scope| {
        let root = root_on_host.then(|| {
            host_root::RootJob::spawn(scope, || {
                let started = Instant::now();
                let made = host_root::make_root_fs(spec, closure, &staging, raw, &table, &size);
                crate::timings::record(
                    host_root::PHASE,
                    started.elapsed(),
                    Some(closure.total_nar_size()),
                );
                made
            })
        });
        runtime.block_on(async {
            tokio::select! {
                result = run_in_vm(spec, &vm_files, &steps, root) => result,
                signal = interrupt::cancelled() => Err(Interrupted { signal, phase: Phase::Vm }.into()),
            }
        })
    })?;
    interrupt::enter(Phase::FixTimes)?;
    let fixing = Instant::now();
    if spec.deterministic && matches!(spec.fs_type, FsType::Ext4 | FsType::Ext3 | FsType::Ext2) {
        let offset = match table.kind {
            layout::TableKind::None => 0,
            _ => table.root().start,
        };
        reproducible::ext4_root::fix_ext4_times(raw, offset, work)?;
    }
    if spec.deterministic {
        for partition in &table.partitions {
            if partition.role != layout::Role::Root && partition.fs_type == Some(FsType::Vfat) {
                reproducible::fat::fix_fat_times(raw, partition.start)?;
            }
        }
        crate::timings::record("fixed times", fixing.elapsed(), None);
    }
    Ok(efi_vars)
}

/// The systems to install, oldest first, each checked to be a toplevel.
fn toplevels(spec: &ImageSpec) -> Result<Vec<PathBuf>, FullImageError> {
    super::inputs::systems(spec)
        .into_iter()
        .map(|system| {
            let resolved = std::fs::canonicalize(&system).unwrap_or_else(|_| system.clone());
            if resolved.join("bin/switch-to-configuration").exists()
                || resolved.join("init").exists()
            {
                Ok(resolved)
            } else {
                Err(FullImageError::NotAToplevel { path: system })
            }
        })
        .collect()
}

pub(crate) fn grub_devices() -> Vec<PathBuf> {
    std::env::var(GRUB_DEVICES_ENV)
        .map(|text| text.split_whitespace().map(PathBuf::from).collect())
        .unwrap_or_default()
}

/// The root file system's size: the store, the staged root, room for the
/// bootloader's copies of kernels where /boot lives on root, plus
/// additionalSpace when the disk size is auto.
fn size_root(
    spec: &ImageSpec,
    closure: &Closure,
    staging: &Path,
    toplevels: &[PathBuf],
) -> Result<FsSize, FullImageError> {
    let paths: Vec<PathBuf> = closure.store_paths().map(Path::to_path_buf).collect();
    let stats = TreeStats::measure(&paths)?
        .nest_under(&["nix", "store"])
        .merge(TreeStats::measure_dir(staging)?);
    let boot_on_root = layout::plan(spec, layout::minimum_disk_size(spec))
        .map(|t| !t.partitions.iter().any(|p| p.mount_point == Some("/boot")))
        .unwrap_or(true);
    let boot_files = if boot_on_root && spec.install_boot_loader {
        toplevels.len() as u64 * BOOT_FILES_ALLOWANCE
            + toplevels.iter().map(|t| boot_files_size(t)).sum::<u64>()
    } else {
        0
    };
    let block = sizing::default_block_size(spec.fs_type);
    // additionalSpace is what auto adds; a fixed disk is checked against
    // what the root holds, as make-disk-image does.
    let additional = match spec.disk_size {
        DiskSize::Auto => spec.additional_space.bytes(),
        DiskSize::Fixed(_) => 0,
    };
    let extra = additional + boot_files;
    let size = sizing::fs_size(spec.fs_type, &stats, extra, block)?;
    tracing::info!("root file system size:\n{}", size.breakdown);
    Ok(size)
}

fn boot_files_size(toplevel: &Path) -> u64 {
    ["kernel", "initrd"]
        .iter()
        .filter_map(|f| std::fs::metadata(toplevel.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// The partition table: auto sized around the root file system, or the fixed
/// size checked to hold it before any VM starts.
fn lay_out(spec: &ImageSpec, size: &FsSize) -> Result<PartitionTable, FullImageError> {
    let needed_disk = layout::disk_size_for_root(spec, size.bytes);
    let disk_size = match spec.disk_size {
        DiskSize::Auto => needed_disk,
        DiskSize::Fixed(fixed) => fixed.bytes(),
    };
    let table = layout::plan(spec, disk_size)?;
    let available = table.root().size;
    if available < size.bytes {
        return Err(FullImageError::DoesNotFit {
            needed: size.bytes,
            disk_size,
            available,
            minimum_disk: needed_disk,
        });
    }
    Ok(table)
}

fn create_disk(raw: &Path, table: &PartitionTable) -> Result<(), FullImageError> {
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(raw)
        .map_err(io("could not create the image", raw))?;
    file.set_len(table.disk_size)
        .map_err(io("could not size the image", raw))?;
    drop(file);
    if table.kind != layout::TableKind::None {
        layout::write_table(table, raw)?;
    }
    Ok(())
}

fn pack(staging: &Path, tar: &Path) -> Result<(), FullImageError> {
    let output = interrupt::run_output(
        Command::new("tar")
            .arg("-C")
            .arg(staging)
            .args(["--numeric-owner", "-cf"])
            .arg(tar)
            .arg("."),
    )
    .map_err(io("could not run tar for", tar))?;
    if !output.status.success() {
        return Err(FullImageError::Tar(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

/// The host files of one builder VM run.
struct VmFiles<'a> {
    /// The target disk.
    raw: &'a Path,
    /// The staging tree's tar, when the guest copies the root's contents.
    tar: Option<&'a Path>,
    /// The list of store paths to copy, when the guest copies them.
    paths_file: Option<&'a Path>,
    /// Bytes of the closure (its NAR size), for the copy's rate.
    closure_bytes: u64,
    /// Where the OVMF variables go after the run (`touchEFIVars`).
    efi_vars: Option<&'a Path>,
    /// bootSize, when the bootloader copies kernels onto a boot partition
    /// of its own (an ESP, XBOOTLDR or /boot) rather than onto the root.
    boot_partition: Option<ByteSize>,
}

async fn run_in_vm(
    spec: &ImageSpec,
    files: &VmFiles<'_>,
    steps: &[Step],
    root: Option<host_root::RootJob<'_>>,
) -> Result<(), FullImageError> {
    let config = BuilderVmConfig {
        firmware: if spec.touch_efi_vars {
            nixdisk_firmware::FirmwareKind::Uefi
        } else {
            nixdisk_firmware::FirmwareKind::Bios
        },
        memory_mib: spec.mem_size,
        accel: builder_vm::AccelChoice::from_env(),
        // One vCPU for deterministic builds: ext4 allocates from per-CPU
        // groups, so a second CPU makes block placement depend on scheduling.
        smp: if spec.deterministic { 1 } else { 2 },
        root_fs: Some(spec.fs_type),
        disks: vec![Disk {
            path: files.raw.to_owned(),
            format: DiskFormat::Raw,
        }],
        stream_console: tracing::enabled!(tracing::Level::DEBUG),
        ..BuilderVmConfig::default()
    };
    let started = Instant::now();
    let spinner = crate::progress::spinner(if root.is_some() {
        "starting the builder VM; making the root file system"
    } else {
        "starting the builder VM"
    });
    let vm = host_root::start_alongside(&config, root).await;
    spinner.finish_and_clear();
    let mut vm = vm?;
    crate::timings::record("builder VM start", vm.startup_time(), None);
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        accel = ?vm.accel(),
        transport = ?vm.transport(),
        "builder VM ready"
    );
    let sent = Instant::now();
    for (file, guest) in [
        (files.paths_file, steps::PATHS_FILE),
        (files.tar, steps::STAGING_TAR),
    ] {
        let Some(file) = file else { continue };
        let source = tokio::fs::File::open(file)
            .await
            .map_err(io("could not open", file))?;
        let bytes = source.metadata().await.map(|m| m.len()).unwrap_or(0);
        vm.agent()
            .write_file(guest, 0o600, source)
            .await
            .map_err(|source| receive_error(guest, bytes, spec.mem_size, source))?;
    }
    if files.tar.is_some() {
        crate::timings::record("send the staging tar", sent.elapsed(), None);
    }
    let bar = crate::progress::steps_bar(steps.len() as u64, "installing");
    for step in steps {
        bar.set_message(step.name);
        let started = Instant::now();
        let space = match files.boot_partition {
            Some(boot) if step.name == steps::BOOTLOADER_STEP => steps::Space::Boot(boot),
            _ => steps::Space::Root(spec.disk_size),
        };
        let hint = |output: &str| steps::failure_hint(output, space);
        if let Err(error) = run_step(&mut vm, step, hint).await {
            bar.finish_and_clear();
            return Err(error);
        }
        let bytes = (step.name == steps::COPY_STEP).then_some(files.closure_bytes);
        crate::timings::record(step.name, started.elapsed(), bytes);
        bar.inc(1);
    }
    bar.finish_and_clear();
    crate::timings::record_qemu_peak(vm.qemu_pid());
    let stopping = Instant::now();
    match files.efi_vars {
        Some(keep) => vm.shutdown_and_keep_efi_vars(POWER_OFF_TIMEOUT, keep).await,
        None => vm.shutdown(POWER_OFF_TIMEOUT).await,
    }
    .map_err(vm_error("powering off"))?;
    crate::timings::record("builder VM power off", stopping.elapsed(), None);
    Ok(())
}

/// The error for a file the builder could not receive: out of memory when
/// its tmpfs (half of memSize) is full, else what the VM reported.
fn receive_error(
    file: &'static str,
    bytes: u64,
    mem_size: u64,
    source: builder_vm::Error,
) -> FullImageError {
    match &source {
        builder_vm::Error::Agent { message, .. } if message.contains("No space left") => {
            const MIB: u64 = 1024 * 1024;
            // The tmpfs gets half the memory; leave the same again for the
            // kernel, the agent and the tools.
            let suggested = (2 * bytes.div_ceil(MIB) + 256).next_multiple_of(256);
            FullImageError::BuilderMemory {
                file,
                bytes,
                mem_size,
                suggested,
                source,
            }
        }
        _ => FullImageError::Vm {
            during: format!("receiving {file} ({})", sizing::human(bytes)),
            source,
        },
    }
}

fn vm_error(during: &str) -> impl FnOnce(builder_vm::Error) -> FullImageError {
    let during = during.to_owned();
    move |source| FullImageError::Vm { during, source }
}

/// Runs one step's script in the builder VM, logging its output at debug
/// level; returns its standard output. A non-zero exit is
/// [`FullImageError::Step`] with the output's and the console's last lines,
/// and what `hint` makes of the output's tail.
pub(crate) async fn run_step(
    vm: &mut BuilderVm,
    step: &Step,
    hint: impl FnOnce(&str) -> String,
) -> Result<Vec<u8>, FullImageError> {
    tracing::debug!(step = step.name, "running install step");
    let started = Instant::now();
    let mut output = Vec::new();
    let mut stdout = Vec::new();
    let code = vm
        .agent()
        .run(&["/bin/sh", "-eu", "-c", &step.script], |stream, data| {
            output.extend_from_slice(data);
            if stream == builder_vm::OutputStream::Stdout {
                stdout.extend_from_slice(data);
            }
            for line in String::from_utf8_lossy(data).lines() {
                tracing::debug!(target: "nixdisk::guest", "{line}");
            }
        })
        .await
        .map_err(vm_error(&format!("running install step `{}`", step.name)))?;
    if code != 0 {
        let output = crate::host_tool::stderr_tail(&output, 20);
        return Err(FullImageError::Step {
            step: step.name,
            status: format!("exit status {code}"),
            hint: hint(&output),
            output,
            console: vm.console_tail(),
        });
    }
    tracing::info!(
        step = step.name,
        seconds = started.elapsed().as_secs_f64(),
        "done"
    );
    Ok(stdout)
}
