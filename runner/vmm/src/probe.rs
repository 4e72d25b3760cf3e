//! Host probe (filled in next).
