//! The one effect of closure reading: asking the installed Nix.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ClosureError;

/// The store paths in the closure of `roots` (`nix-store -qR`).
pub(super) fn requisites(roots: &[PathBuf]) -> Result<Vec<PathBuf>, ClosureError> {
    let mut command = Command::new("nix-store");
    command.arg("--query").arg("--requisites").args(roots);
    let output = run(command)?;
    Ok(output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(PathBuf::from)
        .collect())
}

/// The database records of `paths` in registration format (`nix-store --dump-db`).
pub(super) fn dump_db(paths: &[PathBuf]) -> Result<String, ClosureError> {
    let mut command = Command::new("nix-store");
    command.arg("--dump-db").args(paths);
    run(command)
}

fn run(mut command: Command) -> Result<String, ClosureError> {
    let line = describe(&command);
    tracing::debug!(command = %line, "asking Nix");
    let output = crate::interrupt::run_output(&mut command).map_err(|source| {
        ClosureError::NixStoreSpawn {
            command: line.clone(),
            source,
        }
    })?;
    if !output.status.success() {
        return Err(ClosureError::NixStoreFailed {
            command: line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| ClosureError::Malformed {
        file: PathBuf::from(&line),
        line: 1,
        problem: "the output is not UTF-8".to_owned(),
    })
}

/// The command line, shortened after a few arguments (closures have thousands).
fn describe(command: &Command) -> String {
    const SHOWN: usize = 4;
    let args: Vec<_> = command.get_args().collect();
    let mut text = Path::new(command.get_program()).display().to_string();
    for arg in args.iter().take(SHOWN) {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    if args.len() > SHOWN {
        text.push_str(&format!(" ... ({} more)", args.len() - SHOWN));
    }
    text
}
