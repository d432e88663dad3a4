//! What the kernel says about the recording: each program's cost (BPF statistics), the
//! runs it skipped (recursion misses) and the events the rings had no room for.

use aya::Ebpf;
use aya::maps::PerCpuArray;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use viopath_probes::abi;
use viopath_probes::chunks::ProgramCost;

/// Run counts and times of the programs that ran (all zero unless statistics are on).
pub(super) fn program_costs(bpf: &Ebpf) -> Vec<ProgramCost> {
    let mut out: Vec<ProgramCost> = bpf
        .programs()
        .filter_map(|(name, prog)| {
            let info = prog.info().ok()?;
            let runs = info.run_count();
            let ns = info.run_time().as_nanos() as u64;
            (runs > 0).then(|| ProgramCost {
                program: name.to_owned(),
                runs,
                run_time_ns: ns,
                mean_ns: ns as f64 / runs as f64,
            })
        })
        .collect();
    out.sort_by(|a, b| a.program.cmp(&b.program));
    out
}

/// Per program, the runs the kernel skipped because that program was already running on
/// the CPU (nested in an interrupt): `recursion_misses` in the program's fdinfo, which
/// aya's `ProgramInfo` does not expose. Only non-zero counts.
pub(super) fn recursion_misses(bpf: &Ebpf) -> BTreeMap<String, u64> {
    use std::os::fd::AsFd;
    let mut out = BTreeMap::new();
    for (name, prog) in bpf.programs() {
        let Ok(fd) = prog.fd() else { continue };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let Ok(info) = std::fs::read_to_string(path) else {
            continue;
        };
        let n = info
            .lines()
            .find_map(|l| l.strip_prefix("recursion_misses:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            out.insert(name.to_owned(), n);
        }
    }
    out
}

/// The completion programs with a second program for the runs the kernel skips, in
/// the order of their slots in the `recovered` map (`VP_NEST_*` in viopath.bpf.c).
pub(super) const NESTED: [&str; 3] = ["rq_complete", "bio_complete", "dio_complete"];

/// Per program of [`NESTED`], the events its second program wrote for runs the kernel
/// skipped. Only non-zero counts.
pub(super) fn recovered(bpf: &Ebpf) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some(m) = bpf.map("recovered") else {
        return out;
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(m) else {
        return out;
    };
    for (slot, name) in NESTED.iter().enumerate() {
        if let Ok(vals) = arr.get(&(slot as u32), 0) {
            let n: u64 = vals.iter().sum();
            if n > 0 {
                out.insert((*name).to_owned(), n);
            }
        }
    }
    out
}

/// (event kind, cpu, lost) for every non-zero loss counter.
pub(super) fn read_losses(bpf: &Ebpf) -> Vec<(u8, u32, u64)> {
    let mut out = Vec::new();
    let Some(m) = bpf.map("lost") else { return out };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(m) else {
        return out;
    };
    for kind in 0..abi::MAX_TYPES {
        if let Ok(vals) = arr.get(&kind, 0) {
            for (cpu, v) in vals.iter().enumerate() {
                if *v > 0 {
                    out.push((kind as u8, cpu as u32, *v));
                }
            }
        }
    }
    out
}

/// Turn on the kernel's BPF run-time statistics while the returned fd is open.
pub(super) fn enable(log: &mut dyn FnMut(&str)) -> Option<std::os::fd::OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log(&format!("cannot turn on BPF statistics: {e}"));
            None
        }
    }
}
