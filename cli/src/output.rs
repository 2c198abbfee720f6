//! What commands print and how they end: one output format flag, and
//! errors as one sentence on stderr with a failing exit code.

use std::process::ExitCode;

use clap::ValueEnum;

/// Output format of the commands that take `-o`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

/// Prints `error` as the one sentence a failed command ends with.
pub(crate) fn failed(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("fleetnet: {error}");
    ExitCode::FAILURE
}

/// Prints what a command got, or why it failed as one sentence.
pub(crate) fn finish<T, E: std::fmt::Display>(
    result: Result<T, E>,
    print: impl FnOnce(T),
) -> ExitCode {
    match result {
        Ok(value) => {
            print(value);
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}

/// A document as indented JSON.
pub(crate) fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("fleet documents always serialize")
}
