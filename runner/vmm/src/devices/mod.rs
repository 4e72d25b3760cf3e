//! Devices the vCPU threads reach through port I/O and MMIO exits, and the
//! bus that routes an exit to the device owning the address.

pub mod bus;
pub mod legacy;

pub use bus::{Bus, BusDevice};
pub use legacy::{EventFdTrigger, SerialConsole, SerialOutput, I8042};
