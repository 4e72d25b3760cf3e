//! The two legacy devices every runner VM has: the COM1 8250 UART (guest
//! console) and the i8042 controller, whose "pulse reset line" command is
//! how Linux reboots (`reboot=k`) and so how a guest ends its VM.

use capped_log::CappedLog;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;

/// A vm-superio interrupt/reset line backed by an eventfd (an irqfd for
/// interrupts, an event-loop fd for reset).
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest console bytes go: a log file and/or stdout. Writes are
/// unbuffered so the log is complete even if the VMM is killed.
pub struct SerialOutput {
    log: Option<CappedLog>,
    console: bool,
    first_byte: Arc<OnceLock<Instant>>,
}

impl SerialOutput {
    pub fn new(log: Option<CappedLog>, console: bool) -> Self {
        SerialOutput {
            log,
            console,
            first_byte: Arc::new(OnceLock::new()),
        }
    }

    /// When the guest wrote its first byte (set once, shared).
    pub fn first_byte_time(&self) -> Arc<OnceLock<Instant>> {
        self.first_byte.clone()
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.first_byte.get_or_init(Instant::now);
        if let Some(log) = self.log.as_mut() {
            log.write_all(buf)?;
        }
        if self.console {
            // A closed stdout must not stop the guest; the log still works.
            let _ = io::stdout().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.console {
            let _ = io::stdout().flush();
        }
        Ok(())
    }
}

/// The 8250 UART on the PIO bus (8 registers).
pub struct SerialConsole(pub Serial<EventFdTrigger, vm_superio::serial::NoEvents, SerialOutput>);

impl SerialConsole {
    pub fn new(irq: EventFd, out: SerialOutput) -> Self {
        SerialConsole(Serial::new(EventFdTrigger(irq), out))
    }

    /// A UART with restored registers (a snapshot's).
    pub fn from_state(
        irq: EventFd,
        out: SerialOutput,
        state: &vm_superio::serial::SerialState,
    ) -> crate::error::Result<Self> {
        Serial::from_state(
            state,
            EventFdTrigger(irq),
            vm_superio::serial::NoEvents,
            out,
        )
        .map(SerialConsole)
        .map_err(|e| crate::error::Error::Snapshot(format!("restoring the serial port: {e:?}")))
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.0.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.0.write(off, *b) {
                tracing::warn!("serial write failed: {e}");
            }
        }
    }
}

/// The i8042 on ports 0x60-0x64. Only the CPU reset command does anything.
pub struct I8042(pub I8042Device<EventFdTrigger>);

impl I8042 {
    pub fn new(reset: EventFd) -> Self {
        I8042(I8042Device::new(EventFdTrigger(reset)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.0.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.0.write(off, *b) {
                tracing::warn!("i8042 reset event failed: {e}");
            }
        }
    }
}

/// Shared handle type for devices placed on a bus.
pub type Shared<T> = Arc<Mutex<T>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_writes_reach_the_log_and_raise_the_irq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let out = SerialOutput::new(Some(CappedLog::create(&path, None).unwrap()), false);
        let first = out.first_byte_time();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(irq.try_clone().unwrap(), out);
        // Enable the "transmitter holding register empty" interrupt (IER bit 1).
        serial.write(1, &[0x02]);
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hi\n");
        assert!(first.get().is_some());
        assert!(irq.read().unwrap() >= 1, "THR-empty interrupt raised");
        // LSR: transmitter empty, as Linux's 8250 driver polls for.
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn i8042_reset_command_fires_the_reset_event() {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut kbd = I8042::new(reset.try_clone().unwrap());
        kbd.write(0, &[0xfe]); // data port: ignored
        assert!(reset.read().is_err(), "no reset from a data write");
        kbd.write(4, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
    }
}
