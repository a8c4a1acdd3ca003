use std::process::ExitCode;

use clap::Parser;
use ecs_capacity_agent::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match ecs_capacity_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecs-capacity-agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
