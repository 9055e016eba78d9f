//! The builder VM session that changes the working copy: mount, read the
//! links and the database, plan, then copy, relink, rewrite the database,
//! collect, reinstall the bootloader and unmount.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::image::WorkingCopy;
use super::plan::{self, Request};
use super::store_db::ImageDb;
use super::{BuilderSettings, GenerationError, Outcome, scripts};
use crate::builder_vm::{BuilderVm, BuilderVmConfig};
use crate::closure::Closure;
use crate::layout::PartitionTable;
use crate::pipeline::{FullImageError, run_step, steps::Step};
use crate::qemu::{Disk, DiskFormat};

/// How long the builder VM may take to power off after the last step.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the whole change of `copy` (the working copy of `image`) in one
/// builder VM.
pub async fn change(
    image: &Path,
    copy: &WorkingCopy,
    table: &PartitionTable,
    request: &Request,
    builder: BuilderSettings,
) -> Result<Outcome, GenerationError> {
    let config = BuilderVmConfig {
        firmware: nixdisk_firmware::FirmwareKind::Bios,
        memory_mib: builder.memory_mib,
        accel: builder.accel,
        smp: 2,
        disks: vec![Disk {
            path: copy.raw().to_owned(),
            format: DiskFormat::Raw,
        }],
        stream_console: tracing::enabled!(tracing::Level::DEBUG),
        ..BuilderVmConfig::default()
    };
    let started = Instant::now();
    let spinner = crate::progress::spinner("starting the builder VM");
    let vm = BuilderVm::start(&config).await;
    spinner.finish_and_clear();
    let mut vm = vm?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        accel = ?vm.accel(),
        "builder VM ready"
    );
    match run_step(&mut vm, &scripts::mount(table), no_hint).await {
        Err(FullImageError::Step { status, output, .. })
            if status == format!("exit status {}", scripts::NO_NIXOS_ROOT) =>
        {
            return Err(GenerationError::NoNixosRoot {
                path: image.to_owned(),
                detail: output,
            });
        }
        other => other?,
    };
    let listing =
        String::from_utf8_lossy(&run_step(&mut vm, &scripts::list_links(), no_hint).await?)
            .into_owned();
    let links = plan::parse_links(&listing);
    let change = plan::plan_change(&links, request)?;
    let db_path = copy.dir().join("db.sqlite");
    read_guest_file(&mut vm, scripts::IMAGE_DB, &db_path).await?;
    if listing.lines().any(|l| l == "WAL") {
        let wal = copy.dir().join("db.sqlite-wal");
        read_guest_file(&mut vm, &format!("{}-wal", scripts::IMAGE_DB), &wal).await?;
    }

    let mut db = ImageDb::open(&db_path)?;
    let mut new_paths = Vec::new();
    if let Some((_, toplevel)) = &change.added {
        let closure = Closure::from_system(toplevel)?;
        let graph = db.graph()?;
        let fresh: Vec<_> = closure
            .paths
            .iter()
            .filter(|info| !graph.contains_key(&info.path))
            .collect();
        let fresh_set: BTreeSet<&Path> = fresh.iter().map(|i| i.path.as_path()).collect();
        let outputs: Vec<_> = crate::install::read_derivation_outputs(&closure)?
            .into_iter()
            .filter(|o| fresh_set.contains(o.drv.as_path()))
            .collect();
        db.add(&fresh, &outputs, crate::install::registration_time(false))?;
        new_paths = fresh.iter().map(|i| i.path.clone()).collect();
    }
    let mut dead = BTreeSet::new();
    if !change.removed.is_empty() {
        dead = plan::dead_paths(&db.graph()?, &plan::roots(&change.links));
        if let Some(path) = dead.iter().find(|p| !plan::is_plain_store_path(p)) {
            return Err(GenerationError::UnsafePath { path: path.clone() });
        }
        db.remove(&dead)?;
    }
    db.close()?;
    tracing::info!(
        added = new_paths.len(),
        collected = dead.len(),
        default = change.default,
        "planned the change"
    );

    let mut steps: Vec<Step> = Vec::new();
    if !new_paths.is_empty() {
        send_text(
            &mut vm,
            copy.dir(),
            scripts::NEW_PATHS_FILE,
            &scripts::paths_file(new_paths.iter().map(PathBuf::as_path)),
        )
        .await?;
        steps.push(scripts::copy_paths());
    }
    steps.push(scripts::update_links(&change));
    send_file(&mut vm, &db_path, scripts::DB_FILE).await?;
    steps.push(scripts::replace_db());
    if !dead.is_empty() {
        send_text(
            &mut vm,
            copy.dir(),
            scripts::DEAD_PATHS_FILE,
            &scripts::paths_file(dead.iter().map(PathBuf::as_path)),
        )
        .await?;
        steps.push(scripts::collect_garbage());
    }
    steps.push(scripts::install_bootloader(crate::pipeline::grub_devices()));
    steps.push(scripts::unmount());

    let bar = crate::progress::steps_bar(steps.len() as u64, "changing generations");
    for step in &steps {
        bar.set_message(step.name);
        if let Err(error) = run_step(&mut vm, step, space_hint).await {
            bar.finish_and_clear();
            return Err(error.into());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    vm.shutdown(POWER_OFF_TIMEOUT).await?;
    Ok(Outcome {
        generations: plan::generations(&change.links).into_keys().collect(),
        default: change.default,
        added_paths: new_paths.len(),
        removed_paths: dead.len(),
    })
}

async fn read_guest_file(
    vm: &mut BuilderVm,
    guest: &str,
    host: &Path,
) -> Result<(), GenerationError> {
    let file = tokio::fs::File::create(host)
        .await
        .map_err(|source| GenerationError::Io {
            what: "could not create",
            path: host.to_owned(),
            source,
        })?;
    vm.agent().read_file(guest, file).await?;
    Ok(())
}

async fn send_file(vm: &mut BuilderVm, host: &Path, guest: &str) -> Result<(), GenerationError> {
    let file = tokio::fs::File::open(host)
        .await
        .map_err(|source| GenerationError::Io {
            what: "could not open",
            path: host.to_owned(),
            source,
        })?;
    vm.agent().write_file(guest, 0o600, file).await?;
    Ok(())
}

async fn send_text(
    vm: &mut BuilderVm,
    dir: &Path,
    guest: &str,
    text: &str,
) -> Result<(), GenerationError> {
    let host = dir.join(Path::new(guest).file_name().unwrap_or_default());
    std::fs::write(&host, text).map_err(|source| GenerationError::Io {
        what: "could not write",
        path: host.clone(),
        source,
    })?;
    send_file(vm, &host, guest).await
}

fn no_hint(_: &str) -> String {
    String::new()
}

/// What to try when a step ran out of room on the image's root.
fn space_hint(output: &str) -> String {
    if output.contains("No space left on device") {
        "\nhint: the image's root file system is full: grow the image (qemu-img resize, then the partition and resize2fs), or remove a generation first (--remove N)".to_owned()
    } else {
        String::new()
    }
}
