//! The address spaces an IO crosses, one type each, so a guest offset can never be
//! passed where a host offset is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Bytes in the sector unit used by virtio-blk, the Linux block layer and `DeviceSector`.
pub const SECTOR_SIZE: u64 = 512;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $unit:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", self.0, $unit)
            }
        }

        impl $name {
            /// `n` units further on in the same space, saturating at the end of it.
            #[inline]
            pub const fn saturating_add(self, n: u64) -> Self {
                Self(self.0.saturating_add(n))
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

address_type!(
    /// Byte offset in the virtual disk the guest sees (the qcow2 "guest offset").
    GuestOffset, ""
);
address_type!(
    /// 512-byte sector on the guest's virtual disk: what virtio-blk requests carry.
    GuestLba, "s"
);
address_type!(
    /// Byte offset inside one host file: a qcow2 image, a backing file or a data file.
    HostFileOffset, ""
);
address_type!(
    /// 512-byte sector on a host block device (partition, loop, device-mapper or disk).
    DeviceSector, "s"
);

impl GuestOffset {
    /// The guest sector holding this byte.
    pub fn lba(self) -> GuestLba {
        GuestLba(self.0 / SECTOR_SIZE)
    }
}

impl GuestLba {
    pub fn offset(self) -> GuestOffset {
        GuestOffset(self.0 * SECTOR_SIZE)
    }
}
