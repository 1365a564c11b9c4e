//! `qmesh token new`: a fresh worker token and the `[[tokens]]` entry that
//! accepts it. The engine stores only the SHA-256, so the secret is shown
//! once, here.

use clap::{Args, Subcommand, ValueEnum};
use rand::RngCore;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a new random token and its config entry (for `[auth] tokens` or a tokens file).
    New {
        /// Who holds it: shown in logs; workers share function ids only with the same name.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "worker")]
        role: RoleArg,
    },
    /// Print the SHA-256 entry for a token you already have (read from stdin).
    Hash {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum, default_value = "worker")]
        role: RoleArg,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    /// Register, serve, call and enqueue.
    Worker,
    /// Everything, operator functions included.
    Operator,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Worker => "worker",
            RoleArg::Operator => "operator",
        }
    }
}

pub fn token(args: TokenArgs) -> ExitCode {
    match args.command {
        TokenCommand::New { name, role } => {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "# the token (give it to the worker as III_TOKEN; it is not stored anywhere):"
            );
            println!("# {token}");
            print_entry(&name, role, &token);
            ExitCode::SUCCESS
        }
        TokenCommand::Hash { name, role } => {
            let mut token = String::new();
            if std::io::stdin().read_line(&mut token).is_err() || token.trim().is_empty() {
                eprintln!("error: give the token on stdin");
                return ExitCode::from(2);
            }
            print_entry(&name, role, token.trim());
            ExitCode::SUCCESS
        }
    }
}

fn print_entry(name: &str, role: RoleArg, token: &str) {
    let entry = toml::toml! {
        name = name
        role = (role.as_str())
        sha256 = (qmesh::token_sha256(token))
    };
    println!("# in a tokens file (auth.tokens_file); in the engine's config write [[auth.tokens]]");
    println!("[[tokens]]\n{entry}");
}
