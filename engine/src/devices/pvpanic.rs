//! The pvpanic device (QEMU's ISA interface, ACPI id QEMU0001): a guest kernel that panics
//! writes to it, so the panic shows up as an event instead of a silent hang or reboot loop.

use super::{MachineRequest, PioDevice};

/// The guest panicked.
const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest loaded a crash kernel and carries on; nothing to do.
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

#[derive(Default)]
pub struct PvPanic;

impl PioDevice for PvPanic {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        // The events this device understands.
        data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<MachineRequest> {
        (data[0] & PVPANIC_PANICKED != 0).then_some(MachineRequest::GuestPanic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_write_is_reported_and_crash_loaded_is_not() {
        let mut device = PvPanic;
        let mut data = [0u8];
        device.read(0, &mut data);
        assert_eq!(data[0], 0b11);
        assert_eq!(device.write(0, &[PVPANIC_CRASH_LOADED]), None);
        assert_eq!(
            device.write(0, &[PVPANIC_PANICKED]),
            Some(MachineRequest::GuestPanic)
        );
    }
}
