//! The `nixdisk` command: parse, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = nixdisk::cli::parse();
    if let Err(error) = nixdisk::progress::init(cli.verbosity()) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    match nixdisk::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprint!("{}", error.report());
            ExitCode::from(error.exit_code())
        }
    }
}
