//! `vltava-node`: the vltava broker daemon, and its operator tools.
//!
//! Today it offers `dump-log`, which prints a segment file batch by batch; serving clients
//! arrives with the single-node broker.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vltava_storage::RealStorage;

/// The vltava broker.
#[derive(Debug, Parser)]
#[command(name = "vltava-node", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a segment file's batches (offsets, leader epoch, timestamps, record count, CRC
    /// check, file position), as kafka-dump-log does.
    DumpLog {
        /// A segment file (`<20-digit base offset>.log`) in a partition directory.
        path: PathBuf,
        /// Also print every record (key, value, headers), UTF-8 as text, other bytes as hex.
        #[arg(long)]
        records: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vltava-node: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::DumpLog { path, records }) => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let summary = vltava_storage::dump::dump_segment(&RealStorage, &path, records, &mut out)
                .with_context(|| format!("cannot dump {}", path.display()))?;
            out.flush().context("cannot write to stdout")?;
            // A damaged segment is worth a non-zero exit, so scripts notice.
            Ok(if summary.bad_batches > 0 { ExitCode::from(3) } else { ExitCode::SUCCESS })
        }
        None => anyhow::bail!("serving clients is not built yet; see README.md (available now: dump-log)"),
    }
}
