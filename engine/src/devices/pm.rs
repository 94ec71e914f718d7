//! ACPI fixed hardware: the PM1a event block (power button), the PM1a control block (sleep
//! states), and the reset control register at 0xcf9.

use std::sync::Arc;

use super::{InterruptLine, MachineRequest, PioDevice};
use crate::arch::x86_64::layout::S5_SLEEP_TYPE;

/// PM1 status and enable: power button.
pub const PWRBTN: u16 = 1 << 8;
/// PM1 status: wake.
const WAK_STS: u16 = 1 << 15;
/// PM1 control: SCI enabled (ACPI mode), sleep type, sleep enable.
const SCI_EN: u16 = 1 << 0;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
/// Reset control register: reset the CPU.
const RST_CPU: u8 = 1 << 2;

/// PM1a event (status at 0, enable at 2) and control (at 4) registers, as one 6-port device.
pub struct PowerManagement {
    status: u16,
    enable: u16,
    control: u16,
    sci: Arc<dyn InterruptLine>,
}

impl PowerManagement {
    pub fn new(sci: Arc<dyn InterruptLine>) -> Self {
        PowerManagement {
            status: 0,
            enable: 0,
            // Already in ACPI mode: there is no SMI command port to switch.
            control: SCI_EN,
            sci,
        }
    }

    /// Presses the power button.
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    fn update_sci(&self) {
        self.sci.set_level(self.status & self.enable != 0);
    }

    fn register(&mut self, offset: u16) -> Option<&mut u16> {
        match offset / 2 {
            0 => Some(&mut self.status),
            1 => Some(&mut self.enable),
            2 => Some(&mut self.control),
            _ => None,
        }
    }
}

/// Merges a byte or word access at `offset` into a 16-bit register.
fn merge(old: u16, offset: u16, data: &[u8]) -> (u16, u16) {
    let shift = (offset % 2) * 8;
    let mut value = 0u16;
    let mut mask = 0u16;
    for (index, byte) in data.iter().take(2 - (offset % 2) as usize).enumerate() {
        value |= u16::from(*byte) << (shift + 8 * index as u16);
        mask |= 0xff << (shift + 8 * index as u16);
    }
    ((old & !mask) | value, value & mask)
}

impl PioDevice for PowerManagement {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let shift = (offset % 2) * 8;
        let value = self.register(offset).map(|r| *r).unwrap_or(0);
        for (index, byte) in data.iter_mut().enumerate() {
            let bit = shift + 8 * index as u16;
            *byte = if bit < 16 { (value >> bit) as u8 } else { 0 };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<MachineRequest> {
        match offset / 2 {
            0 => {
                // Write one to clear.
                let (_, written) = merge(0, offset, data);
                self.status &= !written;
                self.update_sci();
                None
            }
            1 => {
                self.enable = merge(self.enable, offset, data).0;
                self.update_sci();
                None
            }
            2 => {
                let value = merge(self.control, offset, data).0;
                if value & SLP_EN != 0 {
                    let sleep_type = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
                    self.control = value & !SLP_EN;
                    if sleep_type == S5_SLEEP_TYPE {
                        return Some(MachineRequest::Poweroff);
                    }
                    // Other sleep states are not offered; the guest wakes at once.
                    self.status |= WAK_STS;
                    return None;
                }
                self.control = value | SCI_EN;
                None
            }
            _ => None,
        }
    }
}

/// The reset control register (port 0xcf9), also the FADT's reset register.
#[derive(Default)]
pub struct ResetControl {
    value: u8,
}

impl PioDevice for ResetControl {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.value;
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> Option<MachineRequest> {
        self.value = data[0] & !RST_CPU;
        (data[0] & RST_CPU != 0).then_some(MachineRequest::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Line(AtomicBool);

    impl InterruptLine for Line {
        fn set_level(&self, high: bool) {
            self.0.store(high, Ordering::SeqCst);
        }
    }

    fn read16(pm: &mut PowerManagement, offset: u16) -> u16 {
        let mut data = [0u8; 2];
        pm.read(offset, &mut data);
        u16::from_le_bytes(data)
    }

    #[test]
    fn power_button_raises_sci_only_when_enabled_and_clears_on_write() {
        let line = Arc::new(Line::default());
        let mut pm = PowerManagement::new(line.clone());
        pm.press_power_button();
        assert!(!line.0.load(Ordering::SeqCst));
        assert_eq!(read16(&mut pm, 0) & PWRBTN, PWRBTN);
        pm.write(2, &PWRBTN.to_le_bytes());
        assert!(line.0.load(Ordering::SeqCst));
        pm.write(0, &PWRBTN.to_le_bytes());
        assert_eq!(read16(&mut pm, 0) & PWRBTN, 0);
        assert!(!line.0.load(Ordering::SeqCst));
    }

    #[test]
    fn s5_powers_off_and_other_states_do_not() {
        let mut pm = PowerManagement::new(Arc::new(Line::default()));
        assert_eq!(read16(&mut pm, 4) & SCI_EN, SCI_EN);
        let s3 = (3 << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(pm.write(4, &s3.to_le_bytes()), None);
        let s5 = (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(
            pm.write(4, &s5.to_le_bytes()),
            Some(MachineRequest::Poweroff)
        );
        // A byte write to the high half works too.
        assert_eq!(
            pm.write(5, &[(s5 >> 8) as u8]),
            Some(MachineRequest::Poweroff)
        );
    }

    #[test]
    fn reset_register_resets_on_rst_cpu() {
        let mut reset = ResetControl::default();
        assert_eq!(reset.write(0, &[0x02]), None);
        assert_eq!(reset.write(0, &[0x06]), Some(MachineRequest::Reset));
    }
}
