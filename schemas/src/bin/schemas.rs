//! `schemas`: tools around the Avro contract.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use context_schemas::reference;

/// Tools around the Avro contract in `schemas/avro/`.
///
/// The `.avsc` files are the single source of truth for the event shape. After
/// adding or changing a signal there, run `schemas docs --write` to refresh the
/// signal reference in docs/signals.md (a test fails while it is stale).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the signal reference (Markdown) generated from context_event.avsc.
    Docs {
        /// Write it to docs/signals.md under --root instead of printing it.
        #[arg(long)]
        write: bool,
        /// Repository root (default: the current directory).
        #[arg(long, default_value = ".")]
        root: PathBuf,
    },
    /// List every signal of the catalogue: name, group, type, unit.
    Signals,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Docs { write, root } => {
            let text = reference::render();
            if !write {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            let path = root.join(reference::REFERENCE_PATH);
            match std::fs::write(&path, text) {
                Ok(()) => {
                    eprintln!("wrote {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Signals => {
            for s in &context_schemas::catalog().signals {
                println!("{}\t{}\t{}\t{}", s.name, s.group, s.kind, s.unit);
            }
            ExitCode::SUCCESS
        }
    }
}
