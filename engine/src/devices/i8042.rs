//! The i8042 keyboard controller with a PS/2 keyboard behind it: the reset line (command 0xfe,
//! or output-port bit 0 cleared), the command byte, self-tests, enabling and disabling the
//! keyboard port, and a keyboard speaking scan code set 2, translated to set 1 by the
//! controller when the command byte asks for it. Keyboard bytes raise IRQ 1 while the command
//! byte enables it. There is no mouse port: aux commands answer as for an absent mouse.

use std::collections::VecDeque;
use std::sync::Arc;

use super::scancode::{self, ScanCodeSet, Translator};
use super::{InterruptLine, MachineRequest, PioDevice};

/// Status: output buffer full.
const STATUS_OBF: u8 = 0x01;
/// Status: system flag, a copy of the command byte's bit.
const STATUS_SYSTEM: u8 = 0x04;
/// Status: the last write went to the command port.
const STATUS_COMMAND: u8 = 0x08;
/// Status: keyboard not locked by the key switch.
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte: raise IRQ 1 when a byte arrives.
const CONFIG_KBD_INT: u8 = 0x01;
/// Command byte: system flag (POST passed).
const CONFIG_SYSTEM: u8 = 0x04;
/// Command byte: keyboard port disabled.
const CONFIG_KBD_DISABLED: u8 = 0x10;
/// Command byte: aux (mouse) port disabled.
const CONFIG_AUX_DISABLED: u8 = 0x20;
/// Command byte: translate set 2 to set 1.
const CONFIG_TRANSLATE: u8 = 0x40;
/// The command byte as firmware leaves it: keyboard interrupt on, translation on, no mouse.
const CONFIG_AT_BOOT: u8 = CONFIG_KBD_INT | CONFIG_SYSTEM | CONFIG_AUX_DISABLED | CONFIG_TRANSLATE;

const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_RESET: u8 = 0xfe;
const SELF_TEST_OK: u8 = 0x55;
/// Aux interface test result: clock line stuck low, i.e. no mouse port.
const AUX_TEST_ABSENT: u8 = 0x01;

const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND_REPLY: u8 = 0xfe;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// MF2 keyboard id.
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// Bytes a keyboard buffers before it drops keys (a real one holds 16).
const KBD_QUEUE_LIMIT: usize = 64;

/// Offsets of the data port (0x60) and the status/command port (0x64) in the device's range.
const DATA_OFFSET: u16 = 0;
const COMMAND_OFFSET: u16 = 4;

/// The PS/2 keyboard on the controller's first port.
struct Ps2Keyboard {
    queue: VecDeque<u8>,
    scanning: bool,
    set: ScanCodeSet,
    /// A command waiting for its argument byte.
    awaiting: Option<u8>,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Ps2Keyboard {
            queue: VecDeque::new(),
            scanning: true,
            set: ScanCodeSet::Set2,
            awaiting: None,
        }
    }
}

impl Ps2Keyboard {
    fn push(&mut self, bytes: &[u8]) {
        if self.queue.len() + bytes.len() <= KBD_QUEUE_LIMIT {
            self.queue.extend(bytes);
        }
    }

    fn write(&mut self, byte: u8) {
        if let Some(command) = self.awaiting.take() {
            return self.argument(command, byte);
        }
        match byte {
            KBD_SET_LEDS | KBD_TYPEMATIC | KBD_SCANCODE_SET => {
                self.awaiting = Some(byte);
                self.queue.push_back(KBD_ACK);
            }
            KBD_ECHO => self.queue.push_back(KBD_ECHO),
            KBD_IDENTIFY => {
                self.queue.push_back(KBD_ACK);
                self.queue.extend(KBD_ID);
            }
            KBD_ENABLE => {
                self.scanning = true;
                self.queue.push_back(KBD_ACK);
            }
            KBD_DISABLE | KBD_DEFAULTS => {
                self.scanning = byte == KBD_DEFAULTS;
                self.set = ScanCodeSet::Set2;
                self.queue.clear();
                self.queue.push_back(KBD_ACK);
            }
            KBD_RESET => {
                *self = Ps2Keyboard::default();
                self.queue.extend([KBD_ACK, KBD_SELF_TEST_OK]);
            }
            // Set-3 key type commands (0xf7..0xfd) and resend: acknowledge, nothing to do.
            0xf7..=0xfd | KBD_RESEND => self.queue.push_back(KBD_ACK),
            _ => self.queue.push_back(KBD_RESEND_REPLY),
        }
    }

    fn argument(&mut self, command: u8, byte: u8) {
        if command == KBD_SCANCODE_SET {
            match byte {
                0 => {
                    self.queue.push_back(KBD_ACK);
                    self.queue.push_back(match self.set {
                        ScanCodeSet::Set1 => 1,
                        ScanCodeSet::Set2 => 2,
                    });
                    return;
                }
                1 => self.set = ScanCodeSet::Set1,
                // Set 3 is not offered; the keyboard stays in set 2, which Linux copes with.
                _ => self.set = ScanCodeSet::Set2,
            }
        }
        // LEDs and typematic rate: nothing to show, acknowledged.
        self.queue.push_back(KBD_ACK);
    }
}

/// The controller, on ports 0x60..=0x64.
pub struct I8042 {
    config: u8,
    /// The output buffer and whether its byte came from the keyboard.
    output: Option<u8>,
    /// Controller answers, delivered before keyboard bytes.
    replies: VecDeque<u8>,
    pending_command: Option<u8>,
    last_was_command: bool,
    keyboard: Ps2Keyboard,
    translator: Translator,
    irq: Option<Arc<dyn InterruptLine>>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            config: CONFIG_AT_BOOT,
            output: None,
            replies: VecDeque::new(),
            pending_command: None,
            last_was_command: false,
            keyboard: Ps2Keyboard::default(),
            translator: Translator::default(),
            irq: None,
        }
    }
}

impl I8042 {
    /// A controller that raises `irq` (ISA IRQ 1) for keyboard bytes.
    pub fn new(irq: Arc<dyn InterruptLine>) -> Self {
        I8042 {
            irq: Some(irq),
            ..Default::default()
        }
    }

    /// True while the guest has the keyboard scanning and its port enabled, so that typed
    /// keys reach it.
    pub fn accepts_keys(&self) -> bool {
        self.keyboard.scanning && self.config & CONFIG_KBD_DISABLED == 0
    }

    /// A key, by evdev code, went down or up. Dropped while the keyboard is not scanning.
    pub fn key(&mut self, evdev: u16, down: bool) {
        if !self.keyboard.scanning {
            return;
        }
        let bytes = scancode::scancode(evdev, down, self.keyboard.set);
        self.keyboard.push(&bytes);
        self.fill_output();
    }

    /// Moves the next byte into the empty output buffer and raises the interrupt for it.
    fn fill_output(&mut self) {
        if self.output.is_some() {
            return;
        }
        let next = match self.replies.pop_front() {
            Some(byte) => Some(byte),
            None if self.config & CONFIG_KBD_DISABLED == 0 => self.next_keyboard_byte(),
            None => None,
        };
        if let Some(byte) = next {
            self.output = Some(byte);
            if self.config & CONFIG_KBD_INT != 0 {
                if let Some(irq) = &self.irq {
                    irq.set_level(true);
                }
            }
        }
    }

    fn next_keyboard_byte(&mut self) -> Option<u8> {
        while let Some(byte) = self.keyboard.queue.pop_front() {
            if self.config & CONFIG_TRANSLATE == 0 {
                return Some(byte);
            }
            if let Some(translated) = self.translator.feed(byte) {
                return Some(translated);
            }
        }
        None
    }

    fn read_output(&mut self) -> u8 {
        let byte = self.output.take().unwrap_or(0);
        if let Some(irq) = &self.irq {
            irq.set_level(false);
        }
        self.fill_output();
        byte
    }

    fn reply(&mut self, byte: u8) {
        self.replies.push_back(byte);
        self.fill_output();
    }

    fn command(&mut self, command: u8) -> Option<MachineRequest> {
        self.last_was_command = true;
        match command {
            CMD_READ_CONFIG => self.reply(self.config),
            CMD_WRITE_CONFIG
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_OUTPUT
            | CMD_WRITE_AUX_OUTPUT
            | CMD_WRITE_AUX => self.pending_command = Some(command),
            CMD_AUX_DISABLE => self.config |= CONFIG_AUX_DISABLED,
            CMD_AUX_ENABLE => self.config &= !CONFIG_AUX_DISABLED,
            CMD_AUX_TEST => self.reply(AUX_TEST_ABSENT),
            CMD_SELF_TEST => {
                self.config |= CONFIG_SYSTEM;
                self.reply(SELF_TEST_OK);
            }
            CMD_KBD_TEST => self.reply(0),
            CMD_KBD_DISABLE => self.config |= CONFIG_KBD_DISABLED,
            CMD_KBD_ENABLE => {
                self.config &= !CONFIG_KBD_DISABLED;
                self.fill_output();
            }
            CMD_READ_INPUT_PORT => self.reply(0),
            // Bit 0: not in reset; bit 1: A20 on; bits 4/5: output buffers full.
            CMD_READ_OUTPUT_PORT => self.reply(0x03 | u8::from(self.output.is_some()) << 4),
            CMD_PULSE_RESET => return Some(MachineRequest::Reset),
            // 0xf0..=0xff pulse output lines; bit 0 clear pulses the reset line.
            0xf0..=0xfd if command & 1 == 0 => return Some(MachineRequest::Reset),
            _ => {}
        }
        None
    }

    fn data(&mut self, value: u8) -> Option<MachineRequest> {
        self.last_was_command = false;
        match self.pending_command.take() {
            Some(CMD_WRITE_CONFIG) => {
                self.config = value;
                self.fill_output();
            }
            // Output port bit 0 is the CPU reset line, active low.
            Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => return Some(MachineRequest::Reset),
            Some(CMD_WRITE_OUTPUT_PORT) => {}
            Some(CMD_WRITE_KBD_OUTPUT) => self.reply(value),
            // No mouse: bytes for it, and loop-back through its port, vanish.
            Some(CMD_WRITE_AUX_OUTPUT) | Some(CMD_WRITE_AUX) => {}
            Some(_) | None => {
                // A byte for the keyboard also re-enables its port, as on real controllers.
                self.config &= !CONFIG_KBD_DISABLED;
                self.keyboard.write(value);
                self.fill_output();
            }
        }
        None
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if self.output.is_some() {
            status |= STATUS_OBF;
        }
        if self.config & CONFIG_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            DATA_OFFSET => self.read_output(),
            COMMAND_OFFSET => self.status(),
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

impl super::input::Keyboard for I8042 {
    fn accepts_keys(&self) -> bool {
        I8042::accepts_keys(self)
    }

    fn key(&mut self, evdev: u16, down: bool) {
        I8042::key(self, evdev, down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct Line {
        high: AtomicBool,
        rises: AtomicUsize,
    }

    impl InterruptLine for Line {
        fn set_level(&self, high: bool) {
            if high && !self.high.swap(true, Ordering::SeqCst) {
                self.rises.fetch_add(1, Ordering::SeqCst);
            }
            if !high {
                self.high.store(false, Ordering::SeqCst);
            }
        }
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut data = [0u8];
        dev.read(4, &mut data);
        data[0]
    }

    /// Reads every byte the controller has, as a guest polling the status port would.
    fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        while status(dev) & STATUS_OBF != 0 {
            let mut data = [0u8];
            dev.read(0, &mut data);
            bytes.push(data[0]);
        }
        bytes
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
        assert_eq!(drain(&mut dev), vec![SELF_TEST_OK]);
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[0x47]);
        dev.write(4, &[CMD_READ_CONFIG]);
        assert_eq!(drain(&mut dev), vec![0x47]);
    }

    #[test]
    fn keys_arrive_translated_to_set_1_and_raise_irq_1() {
        let line = Arc::new(Line::default());
        let mut dev = I8042::new(line.clone());
        dev.key(30, true);
        assert!(line.high.load(Ordering::SeqCst));
        dev.key(30, false);
        dev.key(106, true);
        assert_eq!(drain(&mut dev), vec![0x1e, 0x9e, 0xe0, 0x4d]);
        assert!(!line.high.load(Ordering::SeqCst));
        // One rising edge per byte delivered.
        assert_eq!(line.rises.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn without_translation_the_guest_sees_set_2() {
        let mut dev = I8042::default();
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[CONFIG_KBD_INT | CONFIG_SYSTEM]);
        dev.key(30, true);
        dev.key(30, false);
        assert_eq!(drain(&mut dev), vec![0x1c, 0xf0, 0x1c]);
    }

    #[test]
    fn no_interrupt_while_the_command_byte_masks_it() {
        let line = Arc::new(Line::default());
        let mut dev = I8042::new(line.clone());
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[CONFIG_TRANSLATE]);
        dev.key(16, true);
        assert_eq!(line.rises.load(Ordering::SeqCst), 0);
        assert_eq!(drain(&mut dev), vec![0x10]);
    }

    #[test]
    fn a_disabled_port_holds_keys_until_enabled() {
        let mut dev = I8042::default();
        dev.write(4, &[CMD_KBD_DISABLE]);
        assert!(!dev.accepts_keys());
        dev.key(30, true);
        assert!(drain(&mut dev).is_empty());
        dev.write(4, &[CMD_KBD_ENABLE]);
        assert!(dev.accepts_keys());
        assert_eq!(drain(&mut dev), vec![0x1e]);
    }

    #[test]
    fn keyboard_commands_are_acknowledged_like_an_mf2_keyboard() {
        let mut dev = I8042::default();
        dev.write(0, &[KBD_RESET]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, KBD_SELF_TEST_OK]);
        // Identify, through translation: 0xab 0x41.
        dev.write(0, &[KBD_IDENTIFY]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, 0xab, 0x41]);
        dev.write(0, &[KBD_SET_LEDS]);
        dev.write(0, &[0x07]);
        dev.write(0, &[KBD_TYPEMATIC]);
        dev.write(0, &[0x20]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK; 4]);
        dev.write(0, &[KBD_SCANCODE_SET]);
        dev.write(0, &[0]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, KBD_ACK, 2]);
        dev.write(0, &[KBD_ECHO]);
        assert_eq!(drain(&mut dev), vec![KBD_ECHO]);
        dev.write(0, &[0x42]);
        assert_eq!(drain(&mut dev), vec![KBD_RESEND_REPLY]);
    }

    #[test]
    fn a_disabled_keyboard_drops_keys_and_set_1_is_sent_as_is() {
        let mut dev = I8042::default();
        dev.write(0, &[KBD_DISABLE]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK]);
        assert!(!dev.accepts_keys());
        dev.key(30, true);
        assert!(drain(&mut dev).is_empty());
        dev.write(0, &[KBD_ENABLE]);
        dev.write(4, &[CMD_WRITE_CONFIG]);
        dev.write(0, &[CONFIG_KBD_INT]);
        dev.write(0, &[KBD_SCANCODE_SET]);
        dev.write(0, &[1]);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, KBD_ACK, KBD_ACK]);
        dev.key(30, false);
        assert_eq!(drain(&mut dev), vec![0x9e]);
    }

    #[test]
    fn no_mouse_answers_as_absent() {
        let mut dev = I8042::default();
        dev.write(4, &[CMD_AUX_TEST]);
        assert_eq!(drain(&mut dev), vec![AUX_TEST_ABSENT]);
        dev.write(4, &[CMD_WRITE_AUX_OUTPUT]);
        dev.write(0, &[0x5a]);
        assert!(drain(&mut dev).is_empty());
    }
}
