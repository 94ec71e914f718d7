//! A type-0 PCI configuration space: the header, BARs and a capability list, with per-bit write
//! masks so that BAR sizing and read-only fields behave as on real hardware.

/// Size of a PCIe (ECAM) configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;

const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
/// First byte after the standard header, where capabilities go.
const CAPABILITIES_START: usize = 0x40;

/// Command register bits.
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
const STATUS_CAPABILITIES: u16 = 1 << 4;

const BAR_MEMORY_64: u32 = 0x4;

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciIdentity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass and programming interface.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A 64-bit memory BAR. Hangar's devices only need these.
#[derive(Clone, Copy, Debug)]
struct Bar {
    index: usize,
    size: u64,
}

/// Configuration space of one function.
pub struct PciConfig {
    bytes: Vec<u8>,
    writable: Vec<u8>,
    bars: Vec<Bar>,
    next_capability: usize,
    last_capability: Option<usize>,
}

impl PciConfig {
    pub fn new(id: PciIdentity) -> Self {
        let mut config = PciConfig {
            bytes: vec![0; CONFIG_SPACE_SIZE],
            writable: vec![0; CONFIG_SPACE_SIZE],
            bars: Vec::new(),
            next_capability: CAPABILITIES_START,
            last_capability: None,
        };
        config.set16(0x00, id.vendor);
        config.set16(0x02, id.device);
        config.bytes[0x08] = id.revision;
        config.bytes[0x09..0x0c].copy_from_slice(&id.class.to_le_bytes()[..3]);
        config.set16(SUBSYSTEM_VENDOR, id.subsystem_vendor);
        config.set16(SUBSYSTEM_VENDOR + 2, id.subsystem);
        let command_mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        config.writable[COMMAND..COMMAND + 2].copy_from_slice(&command_mask.to_le_bytes());
        config.writable[INTERRUPT_LINE] = 0xff;
        config
    }

    fn set16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn get32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes[offset..offset + 4].try_into().unwrap())
    }

    /// Declares BAR `index` (and `index + 1`, its upper half) as a 64-bit memory BAR of `size`
    /// bytes (a power of two), placed at `address` as firmware would place it.
    pub fn add_memory_bar(&mut self, index: usize, size: u64, address: u64) {
        assert!(size.is_power_of_two() && size >= 16 && index < 5);
        assert_eq!(address % size, 0, "BAR address must be aligned to its size");
        let offset = BAR0 + 4 * index;
        let low = (address as u32 & !0xf) | BAR_MEMORY_64;
        self.bytes[offset..offset + 4].copy_from_slice(&low.to_le_bytes());
        self.bytes[offset + 4..offset + 8].copy_from_slice(&((address >> 32) as u32).to_le_bytes());
        // The address bits below the size are hardwired to zero: that is how the guest sizes it.
        let mask = !(size - 1);
        self.writable[offset..offset + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        self.writable[offset + 4..offset + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        self.bars.push(Bar { index, size });
    }

    /// Where BAR `index` decodes now: `None` while memory decoding is off.
    pub fn bar_range(&self, index: usize) -> Option<(u64, u64)> {
        let bar = self.bars.iter().find(|b| b.index == index)?;
        if self.command() & COMMAND_MEMORY == 0 {
            return None;
        }
        let offset = BAR0 + 4 * index;
        let low = u64::from(self.get32(offset) & !0xf);
        let address = low | (u64::from(self.get32(offset + 4)) << 32);
        Some((address, bar.size))
    }

    /// Indices of the declared BARs.
    pub fn bar_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.bars.iter().map(|b| b.index)
    }

    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[COMMAND], self.bytes[COMMAND + 1]])
    }

    /// Appends a capability. `body` starts with the capability id; its second byte (the next
    /// pointer) is filled in here. `writable` masks the bytes the guest may change. Returns its
    /// offset in configuration space.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        assert!(body.len() >= 2 && writable.len() <= body.len());
        let offset = self.next_capability;
        let end = offset + body.len();
        assert!(
            end <= 0x100,
            "capabilities must fit the legacy configuration space"
        );
        self.bytes[offset..end].copy_from_slice(body);
        self.bytes[offset + 1] = 0;
        self.writable[offset..offset + writable.len()].copy_from_slice(writable);
        match self.last_capability {
            Some(previous) => self.bytes[previous + 1] = offset as u8,
            None => {
                self.bytes[CAPABILITIES_POINTER] = offset as u8;
                let status = u16::from_le_bytes([self.bytes[STATUS], self.bytes[STATUS + 1]]);
                self.set16(STATUS, status | STATUS_CAPABILITIES);
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = end.next_multiple_of(4);
        offset
    }

    /// Reads configuration space; out-of-range bytes read as all ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Writes configuration space through the write masks.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(mask) = self.writable.get(offset + i).copied() else {
                return;
            };
            let old = self.bytes[offset + i];
            self.bytes[offset + i] = (old & !mask) | (value & mask);
        }
    }

    /// The bytes of configuration space, for capabilities the device interprets itself.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PciConfig {
        PciConfig::new(PciIdentity {
            vendor: 0x1af4,
            device: 0x1044,
            revision: 1,
            class: 0x00ff00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    fn read32(config: &PciConfig, offset: usize) -> u32 {
        let mut data = [0; 4];
        config.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn identity_is_read_only() {
        let mut config = config();
        config.write(0, &[0, 0, 0, 0]);
        assert_eq!(read32(&config, 0), 0x1044_1af4);
        assert_eq!(read32(&config, 8) >> 8, 0x00ff00);
    }

    #[test]
    fn bar_sizing_reads_back_the_size_and_restoring_keeps_the_address() {
        let mut config = config();
        config.add_memory_bar(0, 0x8000, 0xe100_0000);
        assert_eq!(read32(&config, 0x10), 0xe100_0004);
        config.write(0x10, &u32::MAX.to_le_bytes());
        config.write(0x14, &u32::MAX.to_le_bytes());
        let size_low = read32(&config, 0x10) & !0xf;
        let size_high = read32(&config, 0x14);
        let size = !((u64::from(size_high) << 32) | u64::from(size_low)) + 1;
        assert_eq!(size, 0x8000);
        config.write(0x10, &0xe100_0000u32.to_le_bytes());
        config.write(0x14, &0u32.to_le_bytes());
        assert_eq!(config.bar_range(0), None, "memory decoding is still off");
        config.write(0x04, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(config.bar_range(0), Some((0xe100_0000, 0x8000)));
    }

    #[test]
    fn capabilities_form_a_chain_and_honour_their_masks() {
        let mut config = config();
        let first = config.add_capability(&[0x09, 0xff, 4, 1], &[]);
        let second = config.add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0]);
        assert_eq!(config.bytes()[0x34] as usize, first);
        assert_eq!(config.bytes()[first + 1] as usize, second);
        assert_eq!(config.bytes()[second + 1], 0);
        assert_ne!(config.bytes()[0x06] & 0x10, 0);
        config.write(second + 2, &[0xff, 0xff]);
        assert_eq!(&config.bytes()[second + 2..second + 4], &[0, 0xc0]);
    }

    #[test]
    fn reads_past_the_end_are_all_ones() {
        let config = config();
        let mut data = [0; 4];
        config.read(CONFIG_SPACE_SIZE - 2, &mut data);
        assert_eq!(data, [0, 0, 0xff, 0xff]);
    }
}
