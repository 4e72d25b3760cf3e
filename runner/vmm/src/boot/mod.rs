//! Everything written into guest memory before the first instruction:
//! the kernel, its command line, the boot protocol structures, the MP table.

pub mod loader;
pub mod mptable;
pub mod params;
