//! The `calsync-operator` binary: a thin command-line layer over the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use calsync_operator::resources;

/// Kubernetes operator that provisions MyTimetable calendar synchronizations from
/// CalendarUser and CalendarSync resources.
#[derive(Parser, Debug)]
#[command(name = "calsync-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions of CalendarUser and CalendarSync as YAML.
    Crds {
        /// Write each CRD to DIR/<name>.yaml instead of printing both to standard output.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { output_dir } => print_crds(output_dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("calsync-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds(output_dir: Option<&Path>) -> anyhow::Result<()> {
    let mut documents = Vec::new();
    for crd in resources::crds() {
        let yaml = resources::crd_yaml(&crd).context("failed to render a CRD as YAML")?;
        match output_dir {
            Some(dir) => {
                let path = dir.join(resources::crd_file_name(&crd));
                std::fs::write(&path, yaml)
                    .with_context(|| format!("failed to write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            None => documents.push(yaml),
        }
    }
    if output_dir.is_none() {
        // One stream of YAML documents, so that `calsync-operator crds | kubectl apply -f -`
        // works.
        print!("{}", documents.join("---\n"));
    }
    Ok(())
}
