//! Device models, and the port-I/O and MMIO buses that dispatch vCPU exits to them.

pub mod i8042;
pub mod input;
pub mod pci;
pub mod pm;
pub mod pvpanic;
pub mod rtc;
pub mod scancode;
pub mod serial;
pub mod virtio;

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

/// A device on the MMIO bus. Offsets are relative to the start of its range.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Non-overlapping address ranges, each owned by one device.
struct RangeMap<D: ?Sized> {
    ranges: Vec<(u64, u64, Arc<Mutex<D>>)>,
}

impl<D: ?Sized> Default for RangeMap<D> {
    fn default() -> Self {
        RangeMap { ranges: Vec::new() }
    }
}

impl<D: ?Sized> RangeMap<D> {
    /// # Panics
    /// If the range overlaps one already claimed: that is a bug in how the machine is built.
    fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<D>>) {
        let end = base + len;
        assert!(
            self.ranges
                .iter()
                .all(|&(b, l, _)| end <= b || base >= b + l),
            "address range {base:#x}+{len:#x} overlaps another device"
        );
        self.ranges.push((base, len, device));
    }

    fn find(&self, address: u64) -> Option<(&Mutex<D>, u64)> {
        self.ranges
            .iter()
            .find(|&&(base, len, _)| address >= base && address - base < len)
            .map(|(base, _, device)| (&**device, address - base))
    }
}

/// The port-I/O bus. Ports that no device claims read as all ones and ignore writes, as on real
/// hardware with nothing behind them.
#[derive(Default)]
pub struct PioBus {
    ranges: RangeMap<dyn PioDevice>,
}

impl PioBus {
    /// Claims `len` ports from `base` for `device`.
    ///
    /// # Panics
    /// If the range overlaps one already claimed: that is a bug in how the machine is built.
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) {
        self.ranges.insert(base.into(), len.into(), device);
    }

    /// Handles an `in`. Returns false if no device claims the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.ranges.find(port.into()) {
            Some((device, offset)) => {
                lock(device).read(offset as u16, data);
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
        let (device, offset) = self.ranges.find(port.into())?;
        lock(device).write(offset as u16, data)
    }
}

/// The MMIO bus, for exits on guest-physical addresses that are not RAM. Unclaimed addresses
/// read as all ones and ignore writes.
#[derive(Default)]
pub struct MmioBus {
    ranges: RangeMap<dyn MmioDevice>,
}

impl MmioBus {
    /// Claims `len` bytes from `base` for `device`.
    ///
    /// # Panics
    /// If the range overlaps one already claimed.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn MmioDevice>>) {
        self.ranges.insert(base, len, device);
    }

    pub fn read(&self, address: u64, data: &mut [u8]) {
        match self.ranges.find(address) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, address: u64, data: &[u8]) {
        if let Some((device, offset)) = self.ranges.find(address) {
            lock(device).write(offset, data);
        }
    }
}

/// Both buses, as a vCPU thread sees them.
#[derive(Default)]
pub struct Buses {
    pub pio: PioBus,
    pub mmio: MmioBus,
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
