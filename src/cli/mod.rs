//! Command-line definitions (clap): each subcommand and flag, mapped onto the image spec.
//!
//! The commands here only gather a spec (file, then flags), check it, and hand
//! it to the library. Errors leave as a [`CliError`] that knows its exit code:
//! 2 for bad input or usage, 1 for a build that failed.

pub mod add_generation;
pub mod boot;
mod flags;
pub mod vm;

pub use flags::{FLAG_FIELDS, SpecFlags, SystemSourceFlags, flag_for_field, with_defaults};

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::flake::BuiltSystem;
use crate::progress::Verbosity;
use crate::spec::{self, ImageSpec, SpecError};

/// Examples, exit codes and environment, shown after the top-level help.
const AFTER_HELP: &str = "\
Examples:
  nixdisk spec --defaults > image.json
  nixdisk spec --check image.json --system /nix/store/...-nixos-system-...
  nixdisk build --spec image.json --out result
  nixdisk build --system /nix/store/...-nixos-system-... --partition-table efi --out result

Exit status: 0 built; 1 the build failed; 2 bad input (spec, flags or paths), nothing done;
130 / 143 stopped by Ctrl-C / SIGTERM (everything started was killed, nothing left).

Environment: NIXDISK_LOG=<filter> sets the log filter (e.g. `nixdisk=debug`), over -v and -q.";

/// nixdisk builds disk images of NixOS systems: make-disk-image.nix, faster,
/// exactly sized and reproducible.
#[derive(Debug, Parser)]
#[command(name = "nixdisk", version, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// Say more: -v for debug logs, -vv for nixdisk's trace logs, -vvv for
    /// every crate's.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print errors only: no progress bars, no info logs.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a disk image from a spec and/or flags into a new directory.
    ///
    /// The spec is a JSON object whose fields are make-disk-image's arguments
    /// (see `nixdisk spec --defaults`); flags replace the fields they name.
    /// Everything is checked before any work starts, and DIR appears only
    /// when the build succeeded.
    Build(BuildArgs),
    /// Print the default spec, or check a spec and print it merged and complete.
    Spec(SpecArgs),
    /// Boot the builder VM, run a command in it through the agent (in a
    /// chroot of the host's root, shared read-only), and exit with its status.
    ///
    /// Shows what the builder sees: `nixdisk vm -- ls /dev`, `nixdisk vm
    /// --firmware ovmf -- ls /sys/firmware/efi`.
    Vm(crate::cli::vm::VmArgs),
    /// Boot a disk image (any format nixdisk writes) and succeed when the
    /// console shows a text: the tool for bootloader tests.
    ///
    /// The image is never changed: the VM writes to a throwaway overlay.
    Boot(crate::cli::boot::BootArgs),
    /// Change the generations of an image: add a system as the next one,
    /// choose the default, remove generations and collect their store paths.
    ///
    /// Works on a copy beside the image in one builder VM run (the system's
    /// own bootloader installation runs again) and renames it over the image
    /// only when everything succeeded.
    AddGeneration(crate::cli::add_generation::AddGenerationArgs),
}

/// `nixdisk build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file (JSON); `-` reads standard input. Optional when flags
    /// name everything needed (at least --system).
    #[arg(long, value_name = "SPEC.json")]
    pub spec: Option<PathBuf>,

    /// Directory to create with the image in it; must not exist yet (an
    /// empty directory is accepted).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Write where the build's time went as JSON: each phase with its
    /// seconds (and bytes and MiB/s where it copies), and peak memory of
    /// nixdisk and of the builder VM. Written when the image is ready.
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,

    /// Overrides of spec fields.
    #[command(flatten)]
    pub flags: SpecFlags,

    /// The system from a flake or a Nix expression.
    #[command(flatten)]
    pub system_source: SystemSourceFlags,
}

/// `nixdisk spec`.
#[derive(Debug, Args)]
#[group(id = "spec_action", required = true, multiple = false, args = ["defaults", "check"])]
pub struct SpecArgs {
    /// Print the full default spec as JSON: a starting point for your own.
    #[arg(long, conflicts_with_all = ["SpecFlags", "SystemSourceFlags"])]
    pub defaults: bool,

    /// Check a spec file (`-` for standard input) with the flags laid over
    /// it: every rule, and that the paths it names exist. Prints the result
    /// as complete JSON.
    #[arg(long, value_name = "SPEC.json")]
    pub check: Option<PathBuf>,

    /// Overrides of spec fields.
    #[command(flatten)]
    pub flags: SpecFlags,

    /// The system from a flake or a Nix expression.
    #[command(flatten)]
    pub system_source: SystemSourceFlags,
}

impl Cli {
    /// What `-v` and `-q` asked for.
    pub fn verbosity(&self) -> Verbosity {
        Verbosity {
            verbose: self.verbose,
            quiet: self.quiet,
        }
    }
}

/// The clap command, with each override flag's default in its help.
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("build", with_defaults)
        .mut_subcommand("spec", with_defaults)
}

/// Parses the process arguments; prints help or a usage error and exits (2)
/// when they do not parse.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// How a command failed, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The spec, a flag or a path was wrong: nothing was done. Exit code 2.
    BadInput,
    /// The build itself failed. Exit code 1.
    Build,
    /// Ctrl-C or SIGTERM stopped the build. Exit code 130 or 143.
    Interrupted(crate::interrupt::Signal),
}

/// A failed command: the error with its causes, and what kind of failure.
#[derive(Debug)]
pub struct CliError {
    /// The kind of failure.
    pub failure: Failure,
    /// The error and its causes.
    pub error: anyhow::Error,
    /// Which flag set the field in question, when a flag did.
    pub note: Option<String>,
}

impl CliError {
    /// A failure of the input: the spec, a flag or a path (exit code 2).
    pub fn bad_input(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            failure: Failure::BadInput,
            error: error.into(),
            note: None,
        }
    }

    /// A failure of the build itself (exit code 1).
    pub fn build_failure(error: impl Into<anyhow::Error>) -> Self {
        CliError {
            failure: Failure::Build,
            error: error.into(),
            note: None,
        }
    }

    /// A build stopped by a signal (exit code 130 or 143).
    pub fn interrupted(interrupted: crate::interrupt::Interrupted) -> Self {
        CliError {
            failure: Failure::Interrupted(interrupted.signal),
            error: interrupted.into(),
            note: None,
        }
    }

    /// The process exit code: 2 for bad input, 1 for a failed build, 128 +
    /// the signal's number for a build stopped by a signal.
    pub fn exit_code(&self) -> u8 {
        match self.failure {
            Failure::BadInput => 2,
            Failure::Build => 1,
            Failure::Interrupted(signal) => u8::try_from(signal.exit_code()).unwrap_or(1),
        }
    }

    /// The message for stderr: `error: ...`, then each cause, then the note.
    pub fn report(&self) -> String {
        let mut text = format!("error: {}\n", self.error);
        for cause in self.error.chain().skip(1) {
            let _ = writeln!(text, "  caused by: {cause}");
        }
        if let Some(note) = &self.note {
            let _ = writeln!(text, "  note: {note}");
        }
        text
    }
}

/// Runs the parsed command; returns the exit code of a successful run (the
/// command's own status for `nixdisk vm`).
pub fn run(cli: Cli) -> Result<u8, CliError> {
    let verbose = cli.verbose > 0;
    match cli.command {
        Command::Build(args) => build(&args).map(|()| 0),
        Command::Spec(args) => spec_command(&args).map(|()| 0),
        Command::Vm(args) => crate::cli::vm::run(crate::cli::vm::VmArgs { verbose, ..args })
            // Exit statuses are 0-255; a signal death is already 128 + n.
            .map(|code| u8::try_from(code).unwrap_or(1))
            .map_err(CliError::build_failure),
        Command::Boot(args) => {
            crate::cli::boot::run(crate::cli::boot::BootArgs { verbose, ..args })
                .map(|code| u8::try_from(code).unwrap_or(1))
                .map_err(CliError::build_failure)
        }
        Command::AddGeneration(args) => crate::cli::add_generation::run(&args).map(|()| 0),
    }
}

fn build(args: &BuildArgs) -> Result<(), CliError> {
    // `_system` keeps a system built from --flake or --system-expr alive
    // (a GC root) until the image is built.
    let (spec, _system) =
        load_spec_with_source(args.spec.as_deref(), &args.flags, &args.system_source)?;
    check_out_dir(&args.out).map_err(CliError::bad_input)?;
    tracing::info!(name = %spec.name, out = %args.out.display(), "building");
    let out = args.out.clone();
    let started = std::time::Instant::now();
    // Ctrl-C and SIGTERM stop the build in any phase: see crate::interrupt.
    match crate::interrupt::run_interruptible(move || crate::pipeline::run(&spec, &out)) {
        Ok(result) => result.map(|_| ()).map_err(CliError::build_failure)?,
        Err(crate::interrupt::InterruptError::Interrupted(interrupted)) => {
            return Err(CliError::interrupted(interrupted));
        }
        Err(other) => return Err(CliError::build_failure(other)),
    }
    if let Some(file) = &args.timings {
        let report = crate::timings::take(started.elapsed());
        let text = serde_json::to_string_pretty(&report)
            .context("cannot render the timings")
            .map_err(CliError::build_failure)?;
        std::fs::write(file, text + "\n")
            .with_context(|| format!("cannot write the timings to {}", file.display()))
            .map_err(CliError::build_failure)?;
    }
    Ok(())
}

fn spec_command(args: &SpecArgs) -> Result<(), CliError> {
    let spec = match &args.check {
        Some(path) => load_spec_with_source(Some(path), &args.flags, &args.system_source)?.0,
        None => ImageSpec::default(),
    };
    let text = serde_json::to_string_pretty(&spec)
        .context("cannot render the spec as JSON")
        .map_err(CliError::bad_input)?;
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{text}") {
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(CliError::bad_input(
            anyhow::Error::new(error).context("cannot write to standard output"),
        )),
        _ => Ok(()),
    }
}

/// Reads the spec file (if any, `-` for stdin), lays the flags over it, then
/// parses, validates and checks its paths: everything that can be known
/// before work. Every subcommand that takes a spec goes through here.
pub fn load_spec(path: Option<&Path>, flags: &SpecFlags) -> Result<ImageSpec, CliError> {
    check_spec(read_spec_object(path)?, flags)
}

/// [`load_spec`], with the system from `--flake` or `--system-expr` when one
/// is given: the spec file is parsed first (a typo fails before a long
/// evaluation), then Nix evaluates and builds the system, whose toplevel
/// becomes `system` as if given with `--system`. The [`BuiltSystem`] keeps
/// that toplevel from Nix's garbage collector while it lives.
pub fn load_spec_with_source(
    path: Option<&Path>,
    flags: &SpecFlags,
    source: &SystemSourceFlags,
) -> Result<(ImageSpec, Option<BuiltSystem>), CliError> {
    let Some(source) = source.source().map_err(CliError::bad_input)? else {
        return load_spec(path, flags).map(|spec| (spec, None));
    };
    let base = read_spec_object(path)?;
    spec::spec_from_object(base.clone()).map_err(CliError::bad_input)?;
    let system = crate::flake::resolve(&source).map_err(|error| {
        if error.is_build_failure() {
            CliError::build_failure(error)
        } else {
            CliError::bad_input(error)
        }
    })?;
    let flags = SpecFlags {
        system: vec![system.toplevel.clone()],
        ..flags.clone()
    };
    Ok((check_spec(base, &flags)?, Some(system)))
}

/// The spec file's JSON object; empty without a file.
fn read_spec_object(path: Option<&Path>) -> Result<Map<String, Value>, CliError> {
    match path {
        Some(path) => {
            let (text, origin) = read_spec_text(path).map_err(CliError::bad_input)?;
            spec::parse_object(&text, &origin).map_err(CliError::bad_input)
        }
        None => Ok(Map::new()),
    }
}

/// Lays the flags over `base`, then parses, validates and checks paths.
fn check_spec(base: Map<String, Value>, flags: &SpecFlags) -> Result<ImageSpec, CliError> {
    let overrides = flags
        .overrides()
        .context("cannot turn the flags into spec values")
        .map_err(CliError::bad_input)?;
    let flagged: Vec<String> = overrides.keys().cloned().collect();
    let with_note = |error: SpecError| {
        let field = error.field().map(str::to_owned);
        let mut failure = CliError::bad_input(error);
        if let Some(field) = field {
            let top = field.split(['.', '[']).next().unwrap_or(&field);
            if flagged.iter().any(|key| key == top) {
                failure.note =
                    flag_for_field(&field).map(|flag| format!("`{field}` was set by {flag}"));
            }
        }
        failure
    };
    let spec = spec::spec_from_object(spec::merge(base, overrides)).map_err(&with_note)?;
    spec::validate(&spec).map_err(&with_note)?;
    spec::check_paths(&spec).map_err(&with_note)?;
    tracing::debug!(?spec, "spec checked");
    Ok(spec)
}

fn read_spec_text(path: &Path) -> Result<(String, String), SpecError> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| SpecError::Read {
                path: path.to_owned(),
                source,
            })?;
        return Ok((text, "the spec on standard input".to_owned()));
    }
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok((text, format!("the spec file `{}`", path.display())))
}

/// The output directory must not hold anything yet: a build never mixes its
/// files with older ones.
fn check_out_dir(out: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(out) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(anyhow::Error::new(error)).with_context(|| {
            format!(
                "`--out {}` exists and is not a readable directory\n  hint: choose a new path for --out",
                out.display()
            )
        }),
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => anyhow::bail!(
                "`--out {}` already exists and is not empty\n  hint: remove it, or choose a new path for --out",
                out.display()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn help_shows_spec_defaults() {
        let mut build = command()
            .find_subcommand("build")
            .cloned()
            .expect("build subcommand");
        // Join the wrapped lines so a default split by wrapping still matches.
        let help = build.render_long_help().to_string();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains("[spec diskSize; default: \"auto\"]"),
            "{help}"
        );
        assert!(help.contains("[spec memSize; default: 1024]"), "{help}");
        assert!(
            help.contains("[spec bootSize; default: \"256M\"]"),
            "{help}"
        );
        assert!(
            help.contains("[spec rootGPUID; default: \"F222513B-DED1-49FA-B591-20CE86A2FE7F\"]"),
            "{help}"
        );
    }

    #[test]
    fn every_spec_flag_is_in_the_defaults_table() {
        let build = command()
            .find_subcommand("build")
            .cloned()
            .expect("build subcommand");
        let own = [
            "spec",
            "out",
            "timings",
            "flake",
            "system_expr",
            "verbose",
            "quiet",
            "help",
            "version",
        ];
        for arg in build.get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                own.contains(&id) || FLAG_FIELDS.iter().any(|(flag, _, _)| *flag == id),
                "flag {id} lacks a FLAG_FIELDS row"
            );
        }
    }

    #[test]
    fn existing_out_dirs_must_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        check_out_dir(&dir.path().join("new")).unwrap();
        check_out_dir(dir.path()).unwrap();
        std::fs::write(dir.path().join("old.img"), b"x").unwrap();
        assert!(check_out_dir(dir.path()).is_err());
        assert!(check_out_dir(&dir.path().join("old.img")).is_err());
    }

    #[test]
    fn exit_codes_and_reports() {
        let error = CliError::bad_input(anyhow::anyhow!("x"));
        assert_eq!(error.exit_code(), 2);
        assert_eq!(error.report(), "error: x\n");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let mut error = CliError::build_failure(anyhow::Error::new(io).context("cannot copy"));
        error.note = Some("see above".into());
        assert_eq!(error.exit_code(), 1);
        assert_eq!(
            error.report(),
            "error: cannot copy\n  caused by: gone\n  note: see above\n"
        );
    }
}
