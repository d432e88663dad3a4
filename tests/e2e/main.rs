//! The `viopath` binary's end-to-end tests, one module per area.
//!
//! They are one test binary, not one per file, because each binary links the reporter
//! (and polars): eleven of them took about 3 GiB of disk and eleven links in a debug
//! build, and one CI run failed when the linker ran out of disk. One binary also lets
//! `common::one_recorder` keep every recording test, whatever its module, one at a time.

mod common;
#[path = "../../src/vm.rs"]
mod vm;

mod attach_e2e;
mod cache_e2e;
mod cli;
mod compare_cli;
mod distro_e2e;
mod guest_ext4;
mod host_stack;
mod html;
mod lab_e2e;
mod libvirt_e2e;
mod load_checks;
mod load_e2e;
mod multi_vm_e2e;
mod perfetto;
mod qcow2_map;
mod record_e2e;
mod report_cli;
mod report_e2e;
mod shapes_e2e;
mod throttle_e2e;
mod vm_e2e;
