//! `nixdisk add-generation`: the command-line side of [`crate::generation`].

use std::path::PathBuf;

use clap::Args;

use crate::builder_vm::AccelChoice;
use crate::cli::CliError;
use crate::cli::vm::AccelArg;
use crate::generation::{self, BuilderSettings, GenerationError, Request};
use crate::interrupt::InterruptError;

/// `nixdisk add-generation IMAGE [--system PATH] [--set-default N] [--remove N]...`.
#[derive(Debug, Args)]
pub struct AddGenerationArgs {
    /// The image to change (raw, qcow2, vdi, vpc, vmdk or vhdx, as `nixdisk
    /// build` wrote it). It is replaced only when every step succeeded.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// A NixOS toplevel to install as the next generation (system-N-link);
    /// it becomes the default unless --set-default says otherwise.
    #[arg(long, value_name = "PATH")]
    pub system: Option<PathBuf>,

    /// The generation to boot by default afterwards.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub set_default: Option<u32>,

    /// Remove generation N (repeatable), then collect the store paths no
    /// remaining GC root of the image needs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub remove: Vec<u32>,

    /// The builder VM's memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub mem_size: u64,

    /// How QEMU runs the builder VM; `auto` tries KVM for 20 s, then TCG.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    pub accel: AccelArg,
}

/// Runs `nixdisk add-generation` and prints what the image holds afterwards.
/// Ctrl-C and SIGTERM leave the image unchanged (exit 130 or 143).
pub fn run(args: &AddGenerationArgs) -> Result<(), CliError> {
    let request = Request {
        add: args.system.clone(),
        set_default: args.set_default,
        remove: args.remove.clone(),
    };
    let builder = BuilderSettings {
        memory_mib: args.mem_size,
        accel: match args.accel {
            AccelArg::Auto => AccelChoice::Auto,
            AccelArg::Kvm => AccelChoice::Kvm,
            AccelArg::Tcg => AccelChoice::Tcg,
        },
    };
    let image = args.image.clone();
    // Ctrl-C and SIGTERM stop the run in any phase, the image unchanged:
    // see crate::interrupt.
    let result =
        crate::interrupt::run_interruptible(move || generation::run(&image, &request, builder));
    let outcome = match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(GenerationError::Interrupted(interrupted)))
        | Err(InterruptError::Interrupted(interrupted)) => {
            return Err(CliError::interrupted(interrupted));
        }
        Ok(Err(error)) if is_bad_input(&error) => return Err(CliError::bad_input(error)),
        Ok(Err(error)) => return Err(CliError::build_failure(error)),
        Err(other) => return Err(CliError::build_failure(other)),
    };
    let list: Vec<String> = outcome.generations.iter().map(u32::to_string).collect();
    println!(
        "{}: generations {} (default {}); {} store paths added, {} collected",
        args.image.display(),
        list.join(" "),
        outcome.default,
        outcome.added_paths,
        outcome.removed_paths
    );
    Ok(())
}

/// Errors of the input (exit 2): the image and the image untouched.
fn is_bad_input(error: &GenerationError) -> bool {
    matches!(
        error,
        GenerationError::NotAnImage { .. }
            | GenerationError::NoNixosRoot { .. }
            | GenerationError::NoGenerations
            | GenerationError::NoSuchGeneration { .. }
            | GenerationError::RemovingDefault { .. }
            | GenerationError::NotAToplevel { .. }
            | GenerationError::NothingToDo
    )
}
