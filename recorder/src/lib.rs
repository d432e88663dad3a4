//! viopath's recorder: loads the probes (eBPF, from `viopath-probes`), attaches the
//! catalog to a QEMU process and the host kernel, streams events through one ring
//! buffer with batched wakeups into a trace file, and ends the trace with a snapshot of
//! the layouts (qcow2 maps, host extents, block topology) so it can be joined offline.

pub mod catalog;
pub mod elf;
pub mod libvirt;
pub mod module_btf;
pub mod qemu;
pub mod record;

pub use record::{KernelAttachMode, RecordError, RecordOptions, Summary, Target, record};
