//! `loadtest`: see the crate documentation and README.md.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = loadtest::cli::Args::parse();
    match loadtest::cli::main(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
