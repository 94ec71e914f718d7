//! PCI bus 0: a host bridge, configuration access through ECAM (MMIO, announced in the MCFG) and
//! the legacy 0xCF8/0xCFC ports, and dispatch of BAR accesses to the devices.

pub mod config;
pub mod msix;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use self::config::{PciConfig, PciIdentity, CONFIG_SPACE_SIZE};
use crate::devices::{lock, MachineRequest, MmioDevice, PioDevice};

/// Slots on bus 0.
const SLOTS: usize = 32;
/// Red Hat, Inc., and its PCIe host bridge id, as used by other VMMs for a generic host bridge.
const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
const HOST_BRIDGE_DEVICE: u16 = 0x0008;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// A function plugged into a slot, shared by the bus and configuration access.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    fn config(&self) -> &PciConfig;
    fn config_mut(&mut self) -> &mut PciConfig;
    /// Called after the guest wrote configuration space (for capabilities with side effects,
    /// and to follow BAR moves).
    fn config_written(&mut self, _offset: usize, _len: usize) {}
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
}

struct HostBridge(PciConfig);

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.0
    }
    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.0
    }
    fn read_bar(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// Bus 0 and the 32-bit window its BARs are placed in.
pub struct PciBus {
    slots: Vec<Option<SharedPciDevice>>,
    next_bar: u64,
    bar_window_end: u64,
}

impl PciBus {
    /// A bus with its host bridge in slot 0, placing BARs in `[window_start, window_end)`.
    pub fn new(window_start: u64, window_end: u64) -> Self {
        let bridge = HostBridge(PciConfig::new(PciIdentity {
            vendor: HOST_BRIDGE_VENDOR,
            device: HOST_BRIDGE_DEVICE,
            revision: 0,
            class: CLASS_HOST_BRIDGE,
            subsystem_vendor: HOST_BRIDGE_VENDOR,
            subsystem: 0x1100,
        }));
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(bridge)));
        PciBus {
            slots,
            next_bar: window_start,
            bar_window_end: window_end,
        }
    }

    /// Reserves `size` bytes (a power of two) of BAR space, aligned to its size, as firmware
    /// does before the OS boots. None when the window is full.
    pub fn allocate_bar(&mut self, size: u64) -> Option<u64> {
        let address = self.next_bar.next_multiple_of(size);
        let end = address.checked_add(size)?;
        (end <= self.bar_window_end).then(|| {
            self.next_bar = end;
            address
        })
    }

    /// Plugs a device into the first free slot and returns the slot; None when the bus is full.
    pub fn add(&mut self, device: SharedPciDevice) -> Option<u8> {
        let slot = self.slots.iter().position(Option::is_none)?;
        self.slots[slot] = Some(device);
        Some(slot as u8)
    }

    fn function(&self, bus: u8, slot: u8, function: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// A configuration read; absent functions read as all ones, which is how the guest finds
    /// that a slot is empty.
    pub fn read_config(&self, address: ConfigAddress, data: &mut [u8]) {
        match self.function(address.bus, address.slot, address.function) {
            Some(device) => lock(device).config().read(address.offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write_config(&self, address: ConfigAddress, data: &[u8]) {
        if let Some(device) = self.function(address.bus, address.slot, address.function) {
            let mut device = lock(device);
            device.config_mut().write(address.offset, data);
            device.config_written(address.offset, data.len());
        }
    }

    /// Finds the device and BAR decoding `address`, with the offset into that BAR.
    fn bar_at(&self, address: u64) -> Option<(&SharedPciDevice, usize, u64)> {
        self.slots.iter().flatten().find_map(|device| {
            let guard = lock(device);
            let config = guard.config();
            let hit = config.bar_indices().find_map(|bar| {
                let (base, size) = config.bar_range(bar)?;
                (address >= base && address - base < size).then_some((bar, address - base))
            });
            hit.map(|(bar, offset)| (device, bar, offset))
        })
    }
}

/// A decoded configuration-space address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
    pub offset: usize,
}

impl ConfigAddress {
    /// From an ECAM offset: bus << 20 | slot << 15 | function << 12 | register.
    pub fn from_ecam(offset: u64) -> Self {
        ConfigAddress {
            bus: (offset >> 20) as u8,
            slot: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
            offset: (offset & 0xfff) as usize,
        }
    }

    /// From the 0xCF8 register plus the byte offset into 0xCFC; None while its enable bit is
    /// clear.
    fn from_cf8(value: u32, byte: u16) -> Option<Self> {
        (value & 0x8000_0000 != 0).then_some(ConfigAddress {
            bus: (value >> 16) as u8,
            slot: ((value >> 11) & 0x1f) as u8,
            function: ((value >> 8) & 0x7) as u8,
            offset: ((value & 0xfc) as usize) + usize::from(byte),
        })
    }
}

/// Configuration access through ECAM.
pub struct PciEcam(pub Arc<Mutex<PciBus>>);

impl MmioDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let address = ConfigAddress::from_ecam(offset);
        if address.offset + data.len() > CONFIG_SPACE_SIZE {
            data.fill(0xff);
            return;
        }
        lock(&self.0).read_config(address, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let address = ConfigAddress::from_ecam(offset);
        if address.offset + data.len() <= CONFIG_SPACE_SIZE {
            lock(&self.0).write_config(address, data);
        }
    }
}

/// The 0xCF8 configuration-address register of legacy configuration access. It only answers
/// dword accesses: byte accesses in 0xCF8..0xCFB belong to other registers (0xCF9 is the reset
/// control register).
pub struct PciConfigAddress(Arc<AtomicU32>);

/// The 0xCFC..0xCFF configuration-data window of legacy configuration access.
pub struct PciConfigData {
    bus: Arc<Mutex<PciBus>>,
    address: Arc<AtomicU32>,
}

/// The two halves of legacy configuration access, as older guests and early boot code use it.
pub fn config_ports(bus: Arc<Mutex<PciBus>>) -> (PciConfigAddress, PciConfigData) {
    let address = Arc::new(AtomicU32::new(0));
    (
        PciConfigAddress(address.clone()),
        PciConfigData { bus, address },
    )
}

impl PioDevice for PciConfigAddress {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        match data.len() {
            4 => data.copy_from_slice(&self.0.load(Ordering::SeqCst).to_le_bytes()),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<MachineRequest> {
        if let Ok(value) = data.try_into() {
            self.0.store(u32::from_le_bytes(value), Ordering::SeqCst);
        }
        None
    }
}

impl PioDevice for PciConfigData {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match ConfigAddress::from_cf8(self.address.load(Ordering::SeqCst), offset) {
            Some(address) => lock(&self.bus).read_config(address, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<MachineRequest> {
        if let Some(address) = ConfigAddress::from_cf8(self.address.load(Ordering::SeqCst), offset)
        {
            lock(&self.bus).write_config(address, data);
        }
        None
    }
}

/// The BAR window: accesses go to whichever device's BAR decodes the address now.
pub struct PciBarWindow {
    pub bus: Arc<Mutex<PciBus>>,
    pub base: u64,
}

impl MmioDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bus = lock(&self.bus);
        match bus.bar_at(self.base + offset) {
            Some((device, bar, offset)) => lock(device).read_bar(bar, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let bus = lock(&self.bus);
        if let Some((device, bar, offset)) = bus.bar_at(self.base + offset) {
            lock(device).write_bar(bar, offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecam_and_cf8_address_the_same_register() {
        let ecam = ConfigAddress::from_ecam((3 << 15) | 0x10);
        let cf8 = ConfigAddress::from_cf8(0x8000_0000 | (3 << 11) | 0x10, 0).unwrap();
        assert_eq!(ecam, cf8);
        assert_eq!(ConfigAddress::from_cf8(3 << 11, 0), None);
    }

    #[test]
    fn empty_slots_read_as_all_ones_and_the_host_bridge_is_in_slot_0() {
        let bus = Arc::new(Mutex::new(PciBus::new(0xe100_0000, 0xf000_0000)));
        let mut ecam = PciEcam(bus.clone());
        let mut id = [0u8; 4];
        ecam.read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
        ecam.read(5 << 15, &mut id);
        assert_eq!(id, [0xff; 4]);
        let (mut address, mut data) = config_ports(bus);
        address.write(0, &0x8000_0000u32.to_le_bytes());
        address.write(0, &[0x06]);
        let mut vendor = [0u8; 2];
        data.read(0, &mut vendor);
        assert_eq!(u16::from_le_bytes(vendor), 0x1b36);
    }

    #[test]
    fn bar_allocation_is_aligned_and_bounded() {
        let mut bus = PciBus::new(0xe100_0000, 0xe101_0000);
        assert_eq!(bus.allocate_bar(0x1000), Some(0xe100_0000));
        assert_eq!(bus.allocate_bar(0x8000), Some(0xe100_8000));
        assert_eq!(bus.allocate_bar(0x8000), None);
    }
}
