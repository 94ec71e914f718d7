//! Device models and the port-I/O bus that dispatches vCPU exits to them.

pub mod i8042;
pub mod input;
pub mod pm;
pub mod pvpanic;
pub mod rtc;
pub mod scancode;
pub mod serial;

use std::sync::{Arc, Mutex};

/// What a device write can ask of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineRequest {
    /// The guest entered S5.
    Poweroff,
    /// The guest asked for a hard reset.
    Reset,
    /// The guest kernel panicked (pvpanic).
    GuestPanic,
}

/// A device on the port-I/O bus. Offsets are relative to the start of its range.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<MachineRequest>;
}

/// An interrupt line a device can raise and lower (level-triggered).
pub trait InterruptLine: Send + Sync {
    fn set_level(&self, high: bool);
}

struct PioRange {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

/// The port-I/O bus. Ports that no device claims read as all ones and ignore writes, as on real
/// hardware with nothing behind them.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<PioRange>,
}

impl PioBus {
    /// Claims `len` ports from `base` for `device`.
    ///
    /// # Panics
    /// If the range overlaps one already claimed: that is a bug in how the machine is built.
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) {
        let end = u32::from(base) + u32::from(len);
        assert!(
            self.ranges.iter().all(|r| {
                end <= u32::from(r.base) || u32::from(base) >= u32::from(r.base) + u32::from(r.len)
            }),
            "port range {base:#x}+{len} overlaps another device"
        );
        self.ranges.push(PioRange { base, len, device });
    }

    fn find(&self, port: u16) -> Option<(&PioRange, u16)> {
        self.ranges
            .iter()
            .find(|r| port >= r.base && u32::from(port) < u32::from(r.base) + u32::from(r.len))
            .map(|r| (r, port - r.base))
    }

    /// Handles an `in`. Returns false if no device claims the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Handles an `out`.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<MachineRequest> {
        let (range, offset) = self.find(port)?;
        lock(&range.device).write(offset, data)
    }
}

/// Locks a device, carrying on if a previous holder panicked: device state stays usable, and a
/// guest must never take the worker down through a poisoned lock.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);

    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u16, data: &[u8]) -> Option<MachineRequest> {
            self.0 = data[0];
            (data[0] == 0xfe).then_some(MachineRequest::Reset)
        }
    }

    #[test]
    fn dispatches_by_port_with_relative_offsets() {
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(0x10))));
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data[0], 0x12);
        assert_eq!(bus.write(0x3f8, &[0xfe]), Some(MachineRequest::Reset));
        assert!(!bus.read(0x400, &mut data));
        assert_eq!(data[0], 0xff);
        assert_eq!(bus.write(0x3f7, &[0xfe]), None);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn refuses_overlapping_ranges() {
        let mut bus = PioBus::default();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Echo(0))));
        bus.insert(0x5f, 2, Arc::new(Mutex::new(Echo(0))));
    }
}
