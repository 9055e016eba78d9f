//! `--flake REF#NAME` and `--system-expr EXPR`: the system to install, as
//! Nix evaluates and builds it, turned into a toplevel store path.
//!
//! Two steps, each one command of the installed Nix, so that their failures
//! read differently: `nix eval` finds the toplevel's derivation (a mistake
//! in the flake or expression: bad input), then `nix-store --realise` builds
//! it (a failed build). The commands are planned by pure functions
//! ([`eval_command`], [`realise_command`]) and their output read by
//! [`parse_eval_output`]; [`resolve`] runs them. Nix's progress on stderr is
//! logged line by line, and its last lines end up in the error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

/// The experimental features the commands need, enabled per command so that
/// nixdisk does not depend on the user's `nix.conf`.
const FEATURES: &str = "nix-command flakes";

/// How many of Nix's last stderr lines an error carries.
const STDERR_TAIL: usize = 25;

/// Takes the toplevel of a NixOS configuration (or a derivation as it is) and
/// returns its derivation and output paths. Shared by both sources, so a
/// flake output that is not a system is reported the same way. (The key is
/// not `outPath`: JSON would print a set with one as that string alone.)
const APPLY: &str = "value: \
let toplevel = if builtins.isAttrs value && value ? config.system.build.toplevel \
then value.config.system.build.toplevel else value; in \
if builtins.isAttrs toplevel && toplevel ? drvPath && toplevel ? outPath \
then { drvPath = toplevel.drvPath; toplevel = toplevel.outPath; } \
else throw \"nixdisk: this is neither a NixOS configuration (with config.system.build.toplevel) nor a derivation\"";

/// Where the system comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemSource {
    /// A flake's `nixosConfigurations.<name>`.
    Flake(FlakeRef),
    /// A Nix expression evaluating to a NixOS configuration (such as
    /// `import <nixpkgs/nixos> { configuration = ./configuration.nix; }`) or
    /// to a toplevel derivation.
    Expr(String),
}

/// `REF#NAME`: a flake reference and the name of one of its
/// `nixosConfigurations`, as `nixos-rebuild --flake` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakeRef {
    /// The flake reference: `.`, `path:/src/os`, `github:owner/repo`, ...
    pub reference: String,
    /// The configuration's name.
    pub name: String,
}

/// The toplevel's derivation and output path, as `nix eval` printed them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Toplevel {
    /// The `.drv` file.
    #[serde(rename = "drvPath")]
    pub drv_path: PathBuf,
    /// The toplevel store path the build produces.
    #[serde(rename = "toplevel")]
    pub out_path: PathBuf,
}

/// What went wrong finding or building the system.
#[derive(Debug, thiserror::Error)]
pub enum FlakeError {
    /// `--flake` without `#NAME`.
    #[error(
        "`--flake {value}` names no configuration: write REF#NAME, such as `{value}#my-host`\n  hint: NAME is an attribute of the flake's `nixosConfigurations`"
    )]
    MissingName {
        /// What was given.
        value: String,
    },
    /// A flake reference or name nixdisk cannot pass on.
    #[error("`--flake {value}` is not usable: {why}")]
    BadReference {
        /// What was given.
        value: String,
        /// What is wrong and what is allowed.
        why: &'static str,
    },
    /// An empty `--system-expr`.
    #[error(
        "`--system-expr` is empty: give a Nix expression that evaluates to a NixOS configuration or a toplevel"
    )]
    EmptyExpr,
    /// A Nix command could not be started.
    #[error(
        "cannot run `{program}`: {source}\n  hint: nixdisk evaluates and builds systems with the installed Nix; is it on PATH?"
    )]
    Spawn {
        /// The program.
        program: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// Evaluation failed: the flake, the name or the expression is wrong.
    #[error("cannot evaluate the system {what} (`{command}`):\n{stderr}\n  hint: {hint}")]
    Eval {
        /// `--flake ...` or `--system-expr ...`.
        what: String,
        /// The command line.
        command: String,
        /// Nix's last lines on stderr.
        stderr: String,
        /// What to try.
        hint: String,
    },
    /// Building the toplevel failed.
    #[error("building the system `{}` failed (`{command}`):\n{stderr}", drv.display())]
    Build {
        /// The toplevel's derivation.
        drv: PathBuf,
        /// The command line.
        command: String,
        /// Nix's last lines on stderr.
        stderr: String,
    },
    /// The temporary directory for the system's GC root could not be made.
    #[error(
        "cannot create a temporary directory for the system's GC root: {source}\n  hint: is $TMPDIR writable?"
    )]
    RootDir {
        /// Why.
        source: std::io::Error,
    },
    /// A command printed something nixdisk does not understand.
    #[error("`{command}` printed {output:?}, not {expected}")]
    UnexpectedOutput {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl FlakeError {
    /// Whether this is a failed build (exit code 1) rather than bad input (2).
    pub fn is_build_failure(&self) -> bool {
        matches!(self, FlakeError::Build { .. })
    }
}

impl FlakeRef {
    /// Reads `REF#NAME`. The name is a `nixosConfigurations` attribute; it
    /// may hold dots (it is quoted when passed on).
    pub fn parse(value: &str) -> Result<Self, FlakeError> {
        let Some((reference, name)) = value.split_once('#') else {
            return Err(FlakeError::MissingName {
                value: value.to_owned(),
            });
        };
        if name.is_empty() {
            return Err(FlakeError::MissingName {
                value: reference.to_owned(),
            });
        }
        let bad = |why| FlakeError::BadReference {
            value: value.to_owned(),
            why,
        };
        if reference.is_empty() {
            return Err(bad(
                "the flake reference before `#` is empty; write `.#NAME` for the flake in this directory",
            ));
        }
        if name.contains(['"', '\\', '$', '#']) || name.chars().any(char::is_control) {
            return Err(bad(
                "the configuration name may not hold quotes, backslashes, `$`, `#` or control characters",
            ));
        }
        Ok(FlakeRef {
            reference: reference.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The installable of the configuration's toplevel, as nixos-rebuild
    /// builds it.
    pub fn installable(&self) -> String {
        format!(
            "{}#nixosConfigurations.\"{}\".config.system.build.toplevel",
            self.reference, self.name
        )
    }
}

impl SystemSource {
    /// The source the flags name, if any: `--flake` or `--system-expr`.
    pub fn from_flags(
        flake: Option<&str>,
        system_expr: Option<&str>,
    ) -> Result<Option<Self>, FlakeError> {
        match (flake, system_expr) {
            (Some(flake), _) => FlakeRef::parse(flake).map(|r| Some(SystemSource::Flake(r))),
            (None, Some(expr)) if expr.trim().is_empty() => Err(FlakeError::EmptyExpr),
            (None, Some(expr)) => Ok(Some(SystemSource::Expr(expr.to_owned()))),
            (None, None) => Ok(None),
        }
    }

    /// What to try when evaluating the source failed.
    pub fn eval_hint(&self) -> String {
        match self {
            SystemSource::Flake(flake) => format!(
                "`nix flake show {}` lists the flake's nixosConfigurations; NAME must be one of them",
                flake.reference
            ),
            SystemSource::Expr(_) => "the expression must give a NixOS configuration \
                 (`import <nixpkgs/nixos> { configuration = ...; }`) or a toplevel derivation; \
                 relative paths are taken from the current directory"
                .to_owned(),
        }
    }

    /// How the source reads in messages.
    pub fn describe(&self) -> String {
        match self {
            SystemSource::Flake(flake) => format!("--flake {}#{}", flake.reference, flake.name),
            SystemSource::Expr(expr) => format!("--system-expr {expr}"),
        }
    }
}

/// The `nix eval` command that prints the toplevel's derivation and output
/// path as JSON. Expressions are evaluated impurely (they may use
/// `<nixpkgs>` and the environment, as `nix-build` would); flakes purely.
pub fn eval_command(source: &SystemSource) -> Vec<String> {
    let mut argv: Vec<String> = [
        "nix",
        "--extra-experimental-features",
        FEATURES,
        "eval",
        "--json",
    ]
    .map(str::to_owned)
    .to_vec();
    match source {
        SystemSource::Flake(flake) => argv.push(flake.installable()),
        SystemSource::Expr(expr) => {
            argv.extend(["--impure".to_owned(), "--expr".to_owned(), expr.clone()]);
        }
    }
    argv.extend(["--apply".to_owned(), APPLY.to_owned()]);
    argv
}

/// The command that builds the toplevel's derivation and links it from
/// `root`, a garbage-collector root while the link exists.
pub fn realise_command(drv: &Path, root: &Path) -> Vec<String> {
    vec![
        "nix-store".to_owned(),
        "--realise".to_owned(),
        drv.display().to_string(),
        "--add-root".to_owned(),
        root.display().to_string(),
        "--indirect".to_owned(),
    ]
}

/// Reads what the [`eval_command`] printed.
pub fn parse_eval_output(command: &str, stdout: &str) -> Result<Toplevel, FlakeError> {
    let unexpected = || FlakeError::UnexpectedOutput {
        command: command.to_owned(),
        output: stdout.trim().to_owned(),
        expected: "a JSON object with the toplevel's drvPath and output path",
    };
    let toplevel: Toplevel = serde_json::from_str(stdout.trim()).map_err(|_| unexpected())?;
    let in_store = |path: &Path| path.is_absolute() && path.components().count() >= 4;
    if !in_store(&toplevel.drv_path) || !in_store(&toplevel.out_path) {
        return Err(unexpected());
    }
    Ok(toplevel)
}

/// A built system's toplevel, kept from Nix's garbage collector while this
/// value lives: a GC root links to it from a temporary directory, so a
/// `nix-collect-garbage` during a long image build cannot remove it.
#[derive(Debug)]
pub struct BuiltSystem {
    /// The toplevel store path.
    pub toplevel: PathBuf,
    /// Holds the GC root; removing it (on drop) releases the toplevel.
    _root: tempfile::TempDir,
}

/// Evaluates and builds the system; returns its toplevel, rooted.
pub fn resolve(source: &SystemSource) -> Result<BuiltSystem, FlakeError> {
    let argv = eval_command(source);
    let command = shell_words(&argv);
    tracing::info!(%command, "evaluating the system");
    let (ok, stdout, stderr) = run(&argv)?;
    if !ok {
        return Err(FlakeError::Eval {
            what: source.describe(),
            command,
            stderr,
            hint: source.eval_hint(),
        });
    }
    let toplevel = parse_eval_output(&command, &stdout)?;
    tracing::debug!(?toplevel, "system evaluated");

    let root_dir = tempfile::Builder::new()
        .prefix("nixdisk-system-")
        .tempdir()
        .map_err(|source| FlakeError::RootDir { source })?;
    let root = root_dir.path().join("system");
    let argv = realise_command(&toplevel.drv_path, &root);
    let command = shell_words(&argv);
    tracing::info!(drv = %toplevel.drv_path.display(), "building the system");
    let (ok, stdout, stderr) = run(&argv)?;
    if !ok {
        return Err(FlakeError::Build {
            drv: toplevel.drv_path,
            command,
            stderr,
        });
    }
    // The root links to the toplevel's one output, `out`.
    let linked = std::fs::read_link(&root).ok();
    if linked.as_deref() != Some(toplevel.out_path.as_path()) || !toplevel.out_path.exists() {
        return Err(FlakeError::UnexpectedOutput {
            command,
            output: stdout.trim().to_owned(),
            expected: "the toplevel's output path, built and linked from the GC root",
        });
    }
    tracing::info!(system = %toplevel.out_path.display(), "system built");
    Ok(BuiltSystem {
        toplevel: toplevel.out_path,
        _root: root_dir,
    })
}

/// Runs `argv`, logging its stderr as it comes; returns success, stdout,
/// and the last lines of stderr.
fn run(argv: &[String]) -> Result<(bool, String, String), FlakeError> {
    let spawn_error = |source| FlakeError::Spawn {
        program: argv[0].clone(),
        source,
    };
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(STDERR_TAIL);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::info!(target: "nixdisk::nix", "{line}");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Vec::from(tail).join("\n")
        })
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).map_err(spawn_error)?;
    }
    let status = child.wait().map_err(spawn_error)?;
    let stderr = stderr
        .and_then(|thread| thread.join().ok())
        .unwrap_or_default();
    Ok((status.success(), stdout, stderr))
}

/// The command line as a user would type it, for messages; nixdisk's long
/// `--apply` function shows as `<toplevel selector>`.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|word| {
            if word == APPLY {
                "<toplevel selector>".to_owned()
            } else {
                crate::host_tool::quote(word)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_references_split_at_the_hash() {
        let flake = FlakeRef::parse("github:me/os?dir=hosts#web.example").unwrap();
        assert_eq!(flake.reference, "github:me/os?dir=hosts");
        assert_eq!(flake.name, "web.example");
        assert_eq!(
            flake.installable(),
            "github:me/os?dir=hosts#nixosConfigurations.\"web.example\".config.system.build.toplevel"
        );
    }

    #[test]
    fn flake_references_need_a_name_and_a_reference() {
        for value in [".", ".#", "path:/src"] {
            let error = FlakeRef::parse(value).unwrap_err();
            assert!(matches!(error, FlakeError::MissingName { .. }), "{value}");
            assert!(error.to_string().contains("REF#NAME"), "{error}");
        }
        assert!(matches!(
            FlakeRef::parse("#host"),
            Err(FlakeError::BadReference { .. })
        ));
        assert!(matches!(
            FlakeRef::parse(".#a\"b"),
            Err(FlakeError::BadReference { .. })
        ));
    }

    #[test]
    fn flags_pick_the_source() {
        assert_eq!(SystemSource::from_flags(None, None).unwrap(), None);
        assert_eq!(
            SystemSource::from_flags(None, Some("import ./system.nix")).unwrap(),
            Some(SystemSource::Expr("import ./system.nix".into()))
        );
        assert!(matches!(
            SystemSource::from_flags(None, Some("  ")),
            Err(FlakeError::EmptyExpr)
        ));
        let flake = SystemSource::from_flags(Some(".#x"), None)
            .unwrap()
            .unwrap();
        assert_eq!(flake.describe(), "--flake .#x");
    }

    #[test]
    fn eval_commands() {
        let flake = SystemSource::Flake(FlakeRef::parse("path:/src#x").unwrap());
        assert_eq!(
            eval_command(&flake),
            [
                "nix",
                "--extra-experimental-features",
                "nix-command flakes",
                "eval",
                "--json",
                "path:/src#nixosConfigurations.\"x\".config.system.build.toplevel",
                "--apply",
                APPLY,
            ]
        );
        let expr = SystemSource::Expr("import ./c.nix".into());
        assert_eq!(
            eval_command(&expr)[5..],
            ["--impure", "--expr", "import ./c.nix", "--apply", APPLY]
        );
        assert_eq!(
            realise_command(Path::new("/nix/store/a-x.drv"), Path::new("/tmp/r/system")),
            [
                "nix-store",
                "--realise",
                "/nix/store/a-x.drv",
                "--add-root",
                "/tmp/r/system",
                "--indirect"
            ]
        );
    }

    #[test]
    fn eval_output_is_read_and_checked() {
        let text = r#"{"drvPath":"/nix/store/abc-nixos-system-x.drv","toplevel":"/nix/store/def-nixos-system-x"}"#;
        assert_eq!(
            parse_eval_output("nix eval", &format!("{text}\n")).unwrap(),
            Toplevel {
                drv_path: "/nix/store/abc-nixos-system-x.drv".into(),
                out_path: "/nix/store/def-nixos-system-x".into(),
            }
        );
        for bad in ["", "\"/nix/store/x\"", r#"{"drvPath":"x","toplevel":"y"}"#] {
            assert!(
                matches!(
                    parse_eval_output("nix eval", bad),
                    Err(FlakeError::UnexpectedOutput { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn command_lines_quote_what_needs_it() {
        let argv = ["nix", "eval", "--expr", "import ./c.nix", "it's"].map(str::to_owned);
        assert_eq!(
            shell_words(&argv),
            r#"nix eval --expr 'import ./c.nix' 'it'\''s'"#
        );
    }

    #[test]
    fn only_builds_count_as_build_failures() {
        let build = FlakeError::Build {
            drv: "/nix/store/x.drv".into(),
            command: "nix-store --realise /nix/store/x.drv".into(),
            stderr: String::new(),
        };
        assert!(build.is_build_failure());
        assert!(!FlakeError::EmptyExpr.is_build_failure());
    }
}
