//! The `notification-reconciler` binary: parse the command line, call
//! [`cli::run`], and turn its result into one message and an exit code
//! (0 ok, 1 runtime failure, 2 usage or configuration error, 75 `once` found
//! the lock held). Nothing else happens here.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use notification_reconciler::cli::{self, Cli};

fn main() -> ExitCode {
    // A panic is a bug; say where in one line (a worker's panic is also
    // logged with its event id and the worker goes on).
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "error: internal error: {}",
            info.to_string().replace('\n', " ")
        );
    }));
    let parsed = match Cli::try_parse() {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{} (see --help)", cli::usage_error_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    match cli::run(parsed) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", cli::error_line(&err));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
