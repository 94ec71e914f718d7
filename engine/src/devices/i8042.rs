//! The i8042 keyboard controller, as far as the machine needs it today: its reset line
//! (command 0xfe, or output-port bit 0 cleared), a status register that reports an idle
//! controller, and prompt answers to the controller's own commands so that probing never waits.

use super::{MachineRequest, PioDevice};

/// Status: system flag (passed self-test), last write was a command, keyboard not inhibited.
const STATUS_IDLE: u8 = 0x14;
/// Status: output buffer full.
const STATUS_OBF: u8 = 0x01;
/// Status: the last write went to the command port.
const STATUS_COMMAND: u8 = 0x08;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0x55;

/// Offsets of the data port (0x60) and the status/command port (0x64) in the device's range.
const DATA_OFFSET: u16 = 0;
const COMMAND_OFFSET: u16 = 4;

/// The controller, on ports 0x60..=0x64.
#[derive(Default)]
pub struct I8042 {
    config: u8,
    output: Option<u8>,
    pending_command: Option<u8>,
    last_was_command: bool,
}

impl I8042 {
    fn command(&mut self, command: u8) -> Option<MachineRequest> {
        self.last_was_command = true;
        match command {
            CMD_READ_CONFIG => self.output = Some(self.config),
            CMD_WRITE_CONFIG | CMD_WRITE_OUTPUT_PORT => self.pending_command = Some(command),
            CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
            CMD_KBD_TEST => self.output = Some(0),
            CMD_PULSE_RESET => return Some(MachineRequest::Reset),
            _ => {}
        }
        None
    }

    fn data(&mut self, value: u8) -> Option<MachineRequest> {
        self.last_was_command = false;
        match self.pending_command.take() {
            Some(CMD_WRITE_CONFIG) => self.config = value,
            // Output port bit 0 is the CPU reset line, active low.
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => return Some(MachineRequest::Reset),
            _ => {}
        }
        None
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            DATA_OFFSET => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => {
                let mut status = STATUS_IDLE;
                if self.output.is_some() {
                    status |= STATUS_OBF;
                }
                if self.last_was_command {
                    status |= STATUS_COMMAND;
                }
                status
            }
            // Ports between the two belong to other chips (0x61 is the PIT's, in KVM).
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<MachineRequest> {
        match offset {
            DATA_OFFSET => self.data(data[0]),
            COMMAND_OFFSET => self.command(data[0]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(dev: &mut I8042) -> u8 {
        let mut data = [0u8];
        dev.read(4, &mut data);
        data[0]
    }

    #[test]
    fn pulse_reset_and_output_port_reset_the_machine() {
        let mut dev = I8042::default();
        assert_eq!(
            dev.write(4, &[CMD_PULSE_RESET]),
            Some(MachineRequest::Reset)
        );
        assert_eq!(dev.write(4, &[CMD_WRITE_OUTPUT_PORT]), None);
        assert_eq!(dev.write(0, &[0xfe]), Some(MachineRequest::Reset));
        assert_eq!(dev.write(4, &[CMD_WRITE_OUTPUT_PORT]), None);
        assert_eq!(dev.write(0, &[0x01]), None);
    }

    #[test]
    fn answers_self_test_and_keeps_the_config_byte() {
        let mut dev = I8042::default();
        assert_eq!(status(&mut dev) & STATUS_OBF, 0);
        dev.write(4, &[CMD_SELF_TEST]);
        assert_eq!(status(&mut dev) & STATUS_OBF, STATUS_OBF);
        let mut data = [0u8];
        dev.read(0, &mut data);
        assert_eq!(data[0], SELF_TEST_OK);
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[0x47]);
        dev.write(4, &[CMD_READ_CONFIG]);
        dev.read(0, &mut data);
        assert_eq!(data[0], 0x47);
    }
}
