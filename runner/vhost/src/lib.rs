//! vhost-user transport: serves the `runner-devices` models to QEMU.
