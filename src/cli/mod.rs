//! Command-line interface: `serve` runs the engine; every other subcommand is
//! a client of a running engine (one file per family), sharing `remote.rs`
//! (`--url`, `--json`, `--timeout`, the connection), `output.rs` (tables or
//! JSON), `error.rs` (messages and exit codes) and `confirm.rs`.

mod bench;
mod call;
mod confirm;
mod dlq;
mod error;
mod inspect;
mod output;
mod queue;
mod remote;
mod serve;
mod token;
mod top;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "qmesh",
    version,
    about = "A WebSocket worker mesh with durable queues, compatible with the iii SDKs",
    after_help = error::EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine.
    Serve(serve::ServeArgs),
    /// Call a function and print its result.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Call(call::CallArgs),
    /// Put a call to a function on a durable queue; prints the receipt.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Enqueue(call::EnqueueArgs),
    /// List the functions workers provide.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Functions(inspect::FunctionsArgs),
    /// List connected workers.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Workers(inspect::WorkersArgs),
    /// List trigger types and registered triggers.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Triggers(inspect::TriggersArgs),
    /// List every queue with its job counts per state.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Queues(queue::QueuesArgs),
    /// Inspect or operate one queue.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Queue(queue::QueueArgs),
    /// Show one job: state, attempts with their history, and why it is not running.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Job(queue::JobArgs),
    /// List, redrive or discard a queue's dead letters.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Dlq(dlq::DlqArgs),
    /// Load-test an engine: throughput and latency percentiles.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Bench(bench::BenchArgs),
    /// A live view of queues (counts, rates, oldest ready job) and workers.
    #[command(after_help = error::EXIT_CODES_HELP)]
    Top(top::TopArgs),
    /// Make worker tokens for `[auth]` (the engine stores only their hash).
    Token(token::TokenArgs),
}

impl Cli {
    pub fn run(self) -> ExitCode {
        match self.command {
            Command::Serve(args) => serve::run(args),
            Command::Call(args) => call::call(args),
            Command::Enqueue(args) => call::enqueue(args),
            Command::Functions(args) => inspect::functions(args),
            Command::Workers(args) => inspect::workers(args),
            Command::Triggers(args) => inspect::triggers(args),
            Command::Queues(args) => queue::queues(args),
            Command::Queue(args) => queue::queue(args),
            Command::Job(args) => queue::job(args),
            Command::Dlq(args) => dlq::dlq(args),
            Command::Bench(args) => bench::bench(args),
            Command::Token(args) => token::token(args),
            Command::Top(args) => top::top(args),
        }
    }
}
