//! The `baton` command line. The only place that reads files and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::dsl;
use crate::engine::Registry;
use crate::simulate::Simulation;

#[derive(Parser)]
#[command(name = "baton", version, about = "Process orchestration over Kafka")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check process definitions; prints every error with file, line and column.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a definition as a Mermaid flowchart.
    Graph { file: PathBuf },
    /// Run definitions in memory against a scenario (JSON Lines) on a virtual clock.
    Simulate {
        /// Definitions to deploy (the first is the one under test; add called processes).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The scenario: events, clock moves, operator actions and expectations.
        #[arg(long)]
        events: PathBuf,
        /// Print only the final state and the verdict.
        #[arg(long)]
        quiet: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Loads and validates definitions; prints every diagnostic and returns `None` if any failed.
fn load(files: &[PathBuf]) -> Result<Option<Registry>> {
    let mut registry = Registry::default();
    let mut failed = false;
    for f in files {
        let text = read(f)?;
        let name = f.display().to_string();
        match dsl::parse(&name, &text) {
            Ok(def) => {
                if let Err(e) = registry.deploy(def, &text) {
                    eprintln!("{name}: error: {e}");
                    failed = true;
                }
            }
            Err(diags) => {
                for d in &diags.0 {
                    eprintln!("{d}");
                }
                eprintln!(
                    "{name}: {} error{}",
                    diags.0.len(),
                    if diags.0.len() == 1 { "" } else { "s" }
                );
                failed = true;
            }
        }
    }
    Ok((!failed).then_some(registry))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Validate { files } => match load(&files)? {
            Some(_) => {
                for f in &files {
                    println!("{}: ok", f.display());
                }
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::from(1)),
        },
        Cmd::Graph { file } => {
            let text = read(&file)?;
            match dsl::parse(&file.display().to_string(), &text) {
                Ok(def) => {
                    print!("{}", crate::diagram::mermaid(&def));
                    Ok(ExitCode::SUCCESS)
                }
                Err(diags) => {
                    eprintln!("{diags}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Simulate {
            files,
            events,
            quiet,
        } => {
            let Some(registry) = load(&files)? else {
                return Ok(ExitCode::from(1));
            };
            let scenario = read(&events)?;
            let mut sim = Simulation::new(registry);
            let result = sim.run(&events.display().to_string(), &scenario);
            if !quiet {
                print!("{}", sim.render());
                println!();
            }
            println!("final state:");
            print!("{}", sim.summary());
            match result {
                Ok(()) => {
                    println!("scenario passed: {} commands", sim.commands.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("scenario failed: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
