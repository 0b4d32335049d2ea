//! Command-line parsing shared by `plyfs` and `plyfs-registry`: errors
//! are one line, as every error of plyfs is.

use std::process::ExitCode;

/// Parses the command line as `P`. Help and version are printed and end
/// the process with success; any other error is clap's first line,
/// without its "error: " prefix, pointing at `help`, and exit code 2.
pub fn parse<P: clap::Parser>(help: &str) -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let text = e.to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let mut first = lines.next().unwrap_or("invalid arguments").to_string();
        // "the following required arguments were not provided:" names
        // them on the next line.
        if first.ends_with(':')
            && let Some(next) = lines.next()
        {
            first = format!("{first} {next}");
        }
        eprintln!(
            "plyfs: {} (see {help})",
            first.trim_start_matches("error: ")
        );
        ExitCode::from(2)
    })
}
