//! The `qmesh` binary. Each subcommand lives in its own file under `cli/`.

mod cli;

use clap::Parser;

/// sled allocates and frees a node copy on most writes; glibc's allocator
/// spent a fifth of the engine's CPU on it under queue load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::Cli::parse().run()
}
