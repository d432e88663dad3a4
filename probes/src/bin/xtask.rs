//! `cargo xtask probes [--check]`: regenerate (or check) the committed eBPF object.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["probes"] => match viopath_probes::compile::compile(
            &viopath_probes::compile::bpf_dir().join("viopath.bpf.o"),
        ) {
            Ok(()) => {
                println!("wrote probes/bpf/viopath.bpf.o");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        },
        ["probes", "--check"] => match viopath_probes::compile::committed_is_fresh() {
            Ok(true) => {
                println!("probes/bpf/viopath.bpf.o is fresh");
                ExitCode::SUCCESS
            }
            Ok(false) => {
                eprintln!("xtask: probes/bpf/viopath.bpf.o is stale: run `cargo xtask probes`");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo xtask probes [--check]");
            ExitCode::from(2)
        }
    }
}
