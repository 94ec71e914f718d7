//! PC keyboard scan codes for Linux evdev key codes, and the i8042's translation from scan
//! code set 2 to set 1. Pure tables and logic.
//!
//! Evdev codes 1..=88 are the set-1 make codes themselves (Linux numbered its keys after the
//! PC/AT keyboard), and the extended keys carry an 0xe0 prefix in both sets.

/// One key: its evdev code, set-1 make code and set-2 make code. `extended` keys send 0xe0
/// first in both sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyCodes {
    pub evdev: u16,
    pub set1: u8,
    pub set2: u8,
    pub extended: bool,
}

const fn key(evdev: u16, set1: u8, set2: u8) -> KeyCodes {
    KeyCodes {
        evdev,
        set1,
        set2,
        extended: false,
    }
}

const fn ext(evdev: u16, set1: u8, set2: u8) -> KeyCodes {
    KeyCodes {
        evdev,
        set1,
        set2,
        extended: true,
    }
}

/// Evdev `KEY_PAUSE`: the one key with no break code, sent as its own sequence.
pub const KEY_PAUSE: u16 = 119;

/// The keys of a 105-key PC keyboard plus the common multimedia keys.
pub const KEYS: &[KeyCodes] = &[
    key(1, 0x01, 0x76),   // Esc
    key(2, 0x02, 0x16),   // 1
    key(3, 0x03, 0x1e),   // 2
    key(4, 0x04, 0x26),   // 3
    key(5, 0x05, 0x25),   // 4
    key(6, 0x06, 0x2e),   // 5
    key(7, 0x07, 0x36),   // 6
    key(8, 0x08, 0x3d),   // 7
    key(9, 0x09, 0x3e),   // 8
    key(10, 0x0a, 0x46),  // 9
    key(11, 0x0b, 0x45),  // 0
    key(12, 0x0c, 0x4e),  // -
    key(13, 0x0d, 0x55),  // =
    key(14, 0x0e, 0x66),  // Backspace
    key(15, 0x0f, 0x0d),  // Tab
    key(16, 0x10, 0x15),  // Q
    key(17, 0x11, 0x1d),  // W
    key(18, 0x12, 0x24),  // E
    key(19, 0x13, 0x2d),  // R
    key(20, 0x14, 0x2c),  // T
    key(21, 0x15, 0x35),  // Y
    key(22, 0x16, 0x3c),  // U
    key(23, 0x17, 0x43),  // I
    key(24, 0x18, 0x44),  // O
    key(25, 0x19, 0x4d),  // P
    key(26, 0x1a, 0x54),  // [
    key(27, 0x1b, 0x5b),  // ]
    key(28, 0x1c, 0x5a),  // Enter
    key(29, 0x1d, 0x14),  // Left Ctrl
    key(30, 0x1e, 0x1c),  // A
    key(31, 0x1f, 0x1b),  // S
    key(32, 0x20, 0x23),  // D
    key(33, 0x21, 0x2b),  // F
    key(34, 0x22, 0x34),  // G
    key(35, 0x23, 0x33),  // H
    key(36, 0x24, 0x3b),  // J
    key(37, 0x25, 0x42),  // K
    key(38, 0x26, 0x4b),  // L
    key(39, 0x27, 0x4c),  // ;
    key(40, 0x28, 0x52),  // '
    key(41, 0x29, 0x0e),  // `
    key(42, 0x2a, 0x12),  // Left Shift
    key(43, 0x2b, 0x5d),  // backslash
    key(44, 0x2c, 0x1a),  // Z
    key(45, 0x2d, 0x22),  // X
    key(46, 0x2e, 0x21),  // C
    key(47, 0x2f, 0x2a),  // V
    key(48, 0x30, 0x32),  // B
    key(49, 0x31, 0x31),  // N
    key(50, 0x32, 0x3a),  // M
    key(51, 0x33, 0x41),  // ,
    key(52, 0x34, 0x49),  // .
    key(53, 0x35, 0x4a),  // /
    key(54, 0x36, 0x59),  // Right Shift
    key(55, 0x37, 0x7c),  // Keypad *
    key(56, 0x38, 0x11),  // Left Alt
    key(57, 0x39, 0x29),  // Space
    key(58, 0x3a, 0x58),  // Caps Lock
    key(59, 0x3b, 0x05),  // F1
    key(60, 0x3c, 0x06),  // F2
    key(61, 0x3d, 0x04),  // F3
    key(62, 0x3e, 0x0c),  // F4
    key(63, 0x3f, 0x03),  // F5
    key(64, 0x40, 0x0b),  // F6
    key(65, 0x41, 0x83),  // F7
    key(66, 0x42, 0x0a),  // F8
    key(67, 0x43, 0x01),  // F9
    key(68, 0x44, 0x09),  // F10
    key(69, 0x45, 0x77),  // Num Lock
    key(70, 0x46, 0x7e),  // Scroll Lock
    key(71, 0x47, 0x6c),  // Keypad 7
    key(72, 0x48, 0x75),  // Keypad 8
    key(73, 0x49, 0x7d),  // Keypad 9
    key(74, 0x4a, 0x7b),  // Keypad -
    key(75, 0x4b, 0x6b),  // Keypad 4
    key(76, 0x4c, 0x73),  // Keypad 5
    key(77, 0x4d, 0x74),  // Keypad 6
    key(78, 0x4e, 0x79),  // Keypad +
    key(79, 0x4f, 0x69),  // Keypad 1
    key(80, 0x50, 0x72),  // Keypad 2
    key(81, 0x51, 0x7a),  // Keypad 3
    key(82, 0x52, 0x70),  // Keypad 0
    key(83, 0x53, 0x71),  // Keypad .
    key(86, 0x56, 0x61),  // 102nd key (< > on ISO keyboards)
    key(87, 0x57, 0x78),  // F11
    key(88, 0x58, 0x07),  // F12
    ext(96, 0x1c, 0x5a),  // Keypad Enter
    ext(97, 0x1d, 0x14),  // Right Ctrl
    ext(98, 0x35, 0x4a),  // Keypad /
    ext(99, 0x37, 0x7c),  // SysRq / Print Screen
    ext(100, 0x38, 0x11), // Right Alt (AltGr)
    ext(102, 0x47, 0x6c), // Home
    ext(103, 0x48, 0x75), // Up
    ext(104, 0x49, 0x7d), // Page Up
    ext(105, 0x4b, 0x6b), // Left
    ext(106, 0x4d, 0x74), // Right
    ext(107, 0x4f, 0x69), // End
    ext(108, 0x50, 0x72), // Down
    ext(109, 0x51, 0x7a), // Page Down
    ext(110, 0x52, 0x70), // Insert
    ext(111, 0x53, 0x71), // Delete
    ext(113, 0x20, 0x23), // Mute
    ext(114, 0x2e, 0x21), // Volume Down
    ext(115, 0x30, 0x32), // Volume Up
    ext(116, 0x5e, 0x37), // Power
    ext(125, 0x5b, 0x1f), // Left Meta
    ext(126, 0x5c, 0x27), // Right Meta
    ext(127, 0x5d, 0x2f), // Compose (Menu)
];

/// Which scan code set the keyboard sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanCodeSet {
    Set1,
    Set2,
}

fn find(evdev: u16) -> Option<&'static KeyCodes> {
    KEYS.iter().find(|k| k.evdev == evdev)
}

/// The bytes a keyboard in `set` sends for `evdev` going down or up; empty for keys it has
/// not got.
pub fn scancode(evdev: u16, down: bool, set: ScanCodeSet) -> Vec<u8> {
    if evdev == KEY_PAUSE {
        // Pause sends make and break at once on press, nothing on release.
        return match (down, set) {
            (false, _) => Vec::new(),
            (true, ScanCodeSet::Set1) => vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5],
            (true, ScanCodeSet::Set2) => vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77],
        };
    }
    let Some(key) = find(evdev) else {
        return Vec::new();
    };
    let mut bytes = Vec::with_capacity(3);
    if key.extended {
        bytes.push(0xe0);
    }
    match (set, down) {
        (ScanCodeSet::Set1, true) => bytes.push(key.set1),
        (ScanCodeSet::Set1, false) => bytes.push(key.set1 | 0x80),
        (ScanCodeSet::Set2, true) => bytes.push(key.set2),
        (ScanCodeSet::Set2, false) => bytes.extend_from_slice(&[0xf0, key.set2]),
    }
    bytes
}

/// The controller's set-2 to set-1 translation of one byte (without the break flag). Bytes
/// that are no key's code (acknowledgements, 0xe0/0xe1 prefixes) pass unchanged, as do the
/// keyboard's answers 0xfa, 0xaa, 0xee, 0xfe; F7's 0x83 becomes 0x41.
pub fn translate_byte(byte: u8) -> u8 {
    static TABLE: std::sync::OnceLock<[u8; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = [0u8; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            *slot = i as u8;
        }
        for key in KEYS {
            table[usize::from(key.set2)] = key.set1;
        }
        table
    })[usize::from(byte)]
}

/// The i8042's translation of a set-2 byte stream into set 1: 0xf0 is swallowed and sets the
/// break bit of the byte after it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Translator {
    release: bool,
}

impl Translator {
    /// Translates one byte; `None` for a 0xf0 prefix, which only marks the next byte.
    pub fn feed(&mut self, byte: u8) -> Option<u8> {
        if byte == 0xf0 {
            self.release = true;
            return None;
        }
        let translated = translate_byte(byte);
        Some(if std::mem::take(&mut self.release) {
            translated | 0x80
        } else {
            translated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(bytes: &[u8]) -> Vec<u8> {
        let mut translator = Translator::default();
        bytes.iter().filter_map(|&b| translator.feed(b)).collect()
    }

    #[test]
    fn letters_have_their_well_known_codes() {
        // KEY_A: set 1 0x1e, set 2 0x1c.
        assert_eq!(scancode(30, true, ScanCodeSet::Set1), vec![0x1e]);
        assert_eq!(scancode(30, false, ScanCodeSet::Set1), vec![0x9e]);
        assert_eq!(scancode(30, true, ScanCodeSet::Set2), vec![0x1c]);
        assert_eq!(scancode(30, false, ScanCodeSet::Set2), vec![0xf0, 0x1c]);
        // KEY_RIGHT is extended.
        assert_eq!(scancode(106, true, ScanCodeSet::Set2), vec![0xe0, 0x74]);
        assert_eq!(
            scancode(106, false, ScanCodeSet::Set2),
            vec![0xe0, 0xf0, 0x74]
        );
        assert_eq!(scancode(106, false, ScanCodeSet::Set1), vec![0xe0, 0xcd]);
        assert!(scancode(600, true, ScanCodeSet::Set2).is_empty());
    }

    #[test]
    fn the_basic_block_is_numbered_like_set_1() {
        for key in KEYS.iter().filter(|k| !k.extended && k.evdev <= 88) {
            assert_eq!(u16::from(key.set1), key.evdev, "{key:?}");
        }
    }

    #[test]
    fn codes_are_unique_within_each_set() {
        for (i, a) in KEYS.iter().enumerate() {
            for b in &KEYS[i + 1..] {
                assert_ne!(a.evdev, b.evdev);
                if a.extended == b.extended {
                    assert_ne!(a.set1, b.set1, "{a:?} {b:?}");
                    assert_ne!(a.set2, b.set2, "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn translating_set_2_gives_set_1_for_every_key_both_ways() {
        for key in KEYS {
            for down in [true, false] {
                assert_eq!(
                    translate(&scancode(key.evdev, down, ScanCodeSet::Set2)),
                    scancode(key.evdev, down, ScanCodeSet::Set1),
                    "key {} down={down}",
                    key.evdev
                );
            }
        }
        assert_eq!(
            translate(&scancode(KEY_PAUSE, true, ScanCodeSet::Set2)),
            scancode(KEY_PAUSE, true, ScanCodeSet::Set1)
        );
    }

    #[test]
    fn keyboard_answers_pass_translation_unchanged() {
        for byte in [0xfa, 0xaa, 0xee, 0xfe, 0xab] {
            assert_eq!(translate_byte(byte), byte);
        }
        // The keyboard id 0xab 0x83 reads as 0xab 0x41 through translation, as Linux expects.
        assert_eq!(translate(&[0xab, 0x83]), vec![0xab, 0x41]);
    }
}
