//! runner: the host side.
