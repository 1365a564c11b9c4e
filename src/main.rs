//! The `qmesh` binary. Each subcommand lives in its own file under `cli/`.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::Cli::parse().run()
}
