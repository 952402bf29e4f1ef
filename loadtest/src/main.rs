//! `wsload`: a thread-per-core WebSocket load generator and echo server.
//!
//! Arguments → options → workers; everything else lives in the modules.

mod cli;
mod client;
mod compare;
mod connect;
mod echo;
mod frame;
mod handshake;
mod idle;
mod mask;
mod net;
mod payload;
mod report;
mod run;
mod stats;
mod stream;
mod sync;
mod sys;
mod tls;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // `run` is the default subcommand: `wsload ws://…` means `wsload run ws://…`.
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(first) = args.get(1) {
        if !first.starts_with('-') && !cli::SUBCOMMANDS.contains(&first.as_str()) {
            args.insert(1, "run".into());
        }
    }
    let cli = cli::Cli::parse_from(args);
    let result = match cli.command {
        cli::Command::Run(a) => run::from_args(a).and_then(run::run).map(|_| ()),
        cli::Command::Echo(a) => echo::EchoOpts::from_args(a).and_then(echo::serve),
        cli::Command::Connect(a) => connect::from_args(a).and_then(connect::run).map(|_| ()),
        cli::Command::Idle(a) => idle::from_args(a).and_then(idle::run).map(|_| ()),
        cli::Command::Compare(a) => compare::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsload: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
