//! Address translation for viopath: the layers an IO's address passes through, from a
//! guest file down to sectors on the host's bottom block device.
//!
//! - [`guest`]: partition tables and ext4 inside the virtual disk (guest file ↔ guest LBA).
//! - [`qcow2`]: qcow2 images and backing chains (guest offset ↔ host file offset).
//! - [`host`]: FIEMAP extents and the block-device stack below a host file
//!   (host file offset → sectors on every device down to the bottom one).
//! - [`stack`]: all of the above composed into one answer.
//! - [`snapshot`]: what a trace stores of all of the above, so it joins offline;
//!   [`lenient`] reads such untrusted JSON back into its types.
//! - [`addr`]: one type per address space, so one cannot be passed for another.
//!
//! Everything here reads untrusted input (images and traces from the field): malformed
//! data gives an error naming the field and offset, never a panic, and no table is
//! allocated before its claimed size has been checked against the file.

pub mod addr;
pub mod guest;
pub mod host;
pub mod lenient;
pub mod qcow2;
pub mod snapshot;
pub mod source;
pub mod stack;

pub use addr::{DeviceSector, GuestLba, GuestOffset, HostFileOffset, SECTOR_SIZE};

/// An error and its causes as one line ("cannot read X: No such file or directory"):
/// errors here keep their cause as their source, so their own text leaves it out.
pub fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
