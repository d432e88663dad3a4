//! viopath's probes: the eBPF programs (C, in `bpf/`, compiled by clang and committed as
//! `bpf/viopath.bpf.o` so the workspace builds without clang), the event ABI the kernel
//! side, the recorder and the reporter share ([`abi`]), and the trace file format:
//! its binary chunks ([`trace`]) and the types of its JSON chunks ([`chunks`]).
//!
//! Regenerate the object with `cargo xtask probes`; `cargo xtask probes --check` (and a
//! test) fails when the committed object is stale.

pub mod abi;
pub mod chunks;
pub mod compile;
pub mod trace;

/// Bytes with the alignment ELF parsing wants.
#[repr(C, align(8))]
pub struct Aligned<B: ?Sized>(pub B);

static OBJECT_ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!("../bpf/viopath.bpf.o"));

/// The compiled eBPF object (all programs and maps).
pub fn object() -> &'static [u8] {
    &OBJECT_ALIGNED.0
}
