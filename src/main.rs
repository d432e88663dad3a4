//! viopath: where the time goes for every IO a virtual machine makes.
//!
//! This binary is glue: argument parsing and presentation. The work is in the
//! workspace crates: `viopath-layouts` (address translation), `viopath-recorder`
//! (probes → trace), `viopath-reporter` (trace → joined IOs → report).

mod compare;
mod demo;
mod map;
mod record;
mod report;
mod ui;
mod units;
mod vm;

use clap::{Parser, Subcommand};
use std::io::{self, Write};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "viopath",
    version,
    about = "Where the time goes for every IO a virtual machine makes"
)]
struct Cli {
    /// No progress bars or notes on stderr (errors still go there)
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Tables as wide as their contents (default: fitted to 120 columns, the widest
    /// columns wrapped)
    #[arg(long, global = true)]
    wide: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Map a disk image: its extents down to host device sectors, or one address
    /// through every layer (guest file → guest disk → qcow2 → host file → devices)
    Map(map::MapArgs),
    /// Record QEMU and host-kernel IO events into a trace file (needs root)
    Record(record::RecordArgs),
    /// Join a trace and report per-layer latency for every guest IO
    Report(report::ReportArgs),
    /// Compare runs: per op and layer, how mean and quantiles moved, with confidence
    /// intervals; `--fail-on` thresholds for CI
    Compare(compare::CompareArgs),
    /// Run viopath on an embedded example disk image and show what it finds
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ui::set_quiet(cli.quiet);
    ui::set_wide(cli.wide);
    let mut out = io::stdout().lock();
    let result = match cli.cmd {
        Cmd::Map(args) => map::run(&args, &mut out),
        Cmd::Demo(args) => demo::run(&args, &mut out),
        Cmd::Record(args) => record::run(&args, &mut out),
        Cmd::Report(args) => report::run(&args, &mut out),
        Cmd::Compare(args) => compare::run(&args, &mut out),
    };
    let result = result.and_then(|()| out.flush().map_err(Into::into));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `viopath map big.qcow2 | head` is not an error.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        // A comparison that breaks a --fail-on threshold: distinct from an error.
        Err(e) if e.downcast_ref::<compare::Broken>().is_some() => {
            eprintln!("viopath: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("viopath: {e:#}");
            ExitCode::FAILURE
        }
    }
}
