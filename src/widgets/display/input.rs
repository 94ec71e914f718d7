//! Console geometry and keyboard: where the framebuffer is drawn in the widget, how pointer
//! positions become tablet coordinates, and which evdev codes a key or a send-key entry means.

use crate::widgets::display::stream::POINTER_MAX;

/// How the framebuffer is fitted into the widget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleMode {
    /// As large as fits, aspect ratio kept.
    Fit,
    /// One guest pixel per widget pixel, centred (clipped when the widget is smaller).
    OneToOne,
}

/// Where the framebuffer lands in the widget, in widget pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewRect {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

pub fn view_rect(mode: ScaleMode, widget: (f64, f64), frame: (u32, u32)) -> ViewRect {
    let (fw, fh) = (f64::from(frame.0.max(1)), f64::from(frame.1.max(1)));
    let scale = match mode {
        ScaleMode::OneToOne => 1.0,
        ScaleMode::Fit => (widget.0 / fw).min(widget.1 / fh).max(0.0),
    };
    let (width, height) = (fw * scale, fh * scale);
    ViewRect {
        x: ((widget.0 - width) / 2.0).round(),
        y: ((widget.1 - height) / 2.0).round(),
        width,
        height,
    }
}

/// A widget position as absolute tablet coordinates (0..=32767), clamped to the framebuffer's
/// edges so that a pointer leaving the picture stops at its border.
pub fn tablet_position(view: &ViewRect, x: f64, y: f64) -> (u32, u32) {
    let scale = |pos: f64, start: f64, len: f64| {
        if len <= 0.0 {
            return 0;
        }
        let fraction = ((pos - start) / len).clamp(0.0, 1.0);
        (fraction * f64::from(POINTER_MAX)).round() as u32
    };
    (scale(x, view.x, view.width), scale(y, view.y, view.height))
}

/// The evdev code of an X/xkb hardware keycode (evdev codes are offset by 8 there).
pub fn evdev_code(hardware_keycode: u32) -> Option<u32> {
    hardware_keycode.checked_sub(8).filter(|code| *code > 0)
}

pub const KEY_LEFTCTRL: u32 = 29;
pub const KEY_LEFTALT: u32 = 56;
pub const KEY_BACKSPACE: u32 = 14;
pub const KEY_DELETE: u32 = 111;
pub const KEY_SYSRQ: u32 = 99;

/// evdev code of F1..F12.
pub fn function_key(n: u32) -> Option<u32> {
    match n {
        1..=10 => Some(58 + n),
        11 => Some(87),
        12 => Some(88),
        _ => None,
    }
}

/// The entries of the send-key menu: a label and the keys pressed together.
pub fn send_key_combos() -> Vec<(String, Vec<u32>)> {
    let mut combos = vec![
        (
            "Ctrl+Alt+Del".to_string(),
            vec![KEY_LEFTCTRL, KEY_LEFTALT, KEY_DELETE],
        ),
        (
            "Ctrl+Alt+Backspace".to_string(),
            vec![KEY_LEFTCTRL, KEY_LEFTALT, KEY_BACKSPACE],
        ),
    ];
    for n in 1..=12 {
        combos.push((
            format!("Ctrl+Alt+F{n}"),
            vec![KEY_LEFTCTRL, KEY_LEFTALT, function_key(n).unwrap()],
        ));
    }
    combos.push(("PrintScreen".to_string(), vec![KEY_SYSRQ]));
    combos
}

/// Presses in order, then releases in reverse, as fingers on a keyboard would.
pub fn combo_events(keys: &[u32]) -> Vec<(u32, bool)> {
    keys.iter()
        .map(|k| (*k, true))
        .chain(keys.iter().rev().map(|k| (*k, false)))
        .collect()
}

/// The keys that give the keyboard back to the host while a console holds it (a preference).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GrabKey {
    /// Ctrl+Alt, either side, as in virt-manager.
    #[default]
    CtrlAlt,
    /// Ctrl+Alt+Shift, for guests that need Ctrl+Alt combinations themselves.
    CtrlAltShift,
    /// The right Ctrl key alone, VirtualBox's host key.
    RightCtrl,
}

/// The modifiers held when a key goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modifiers {
    pub ctrl: bool,
    pub alt: bool,
    pub shift: bool,
}

pub const KEY_RIGHTCTRL: u32 = 97;
pub const KEY_LEFTSHIFT: u32 = 42;
const CTRL_KEYS: [u32; 2] = [KEY_LEFTCTRL, KEY_RIGHTCTRL];
const ALT_KEYS: [u32; 2] = [KEY_LEFTALT, 100];
const SHIFT_KEYS: [u32; 2] = [KEY_LEFTSHIFT, 54];

impl GrabKey {
    /// From its GSettings nick; an unknown one is the default.
    pub fn from_nick(nick: &str) -> GrabKey {
        match nick {
            "ctrl-alt-shift" => GrabKey::CtrlAltShift,
            "right-ctrl" => GrabKey::RightCtrl,
            _ => GrabKey::CtrlAlt,
        }
    }

    pub const ALL: [GrabKey; 3] = [GrabKey::CtrlAlt, GrabKey::CtrlAltShift, GrabKey::RightCtrl];

    pub fn nick(self) -> &'static str {
        match self {
            GrabKey::CtrlAlt => "ctrl-alt",
            GrabKey::CtrlAltShift => "ctrl-alt-shift",
            GrabKey::RightCtrl => "right-ctrl",
        }
    }

    /// As the user reads it.
    pub fn label(self) -> String {
        match self {
            GrabKey::CtrlAlt => "Ctrl+Alt".to_string(),
            GrabKey::CtrlAltShift => "Ctrl+Alt+Shift".to_string(),
            GrabKey::RightCtrl => gettextrs::gettext("Right Ctrl"),
        }
    }

    /// Whether pressing `evdev` while `held` are down completes the combination.
    pub fn releases(self, held: Modifiers, evdev: u32) -> bool {
        let (ctrl, alt, shift) = (
            CTRL_KEYS.contains(&evdev),
            ALT_KEYS.contains(&evdev),
            SHIFT_KEYS.contains(&evdev),
        );
        match self {
            GrabKey::CtrlAlt => (held.ctrl && alt) || (held.alt && ctrl),
            GrabKey::CtrlAltShift => {
                (held.ctrl && held.alt && shift)
                    || (held.ctrl && held.shift && alt)
                    || (held.alt && held.shift && ctrl)
            }
            GrabKey::RightCtrl => evdev == KEY_RIGHTCTRL && !held.alt && !held.shift,
        }
    }

    /// The keys the guest saw go down on the way to the combination, to let go of in it.
    pub fn held_keys(self) -> &'static [u32] {
        match self {
            GrabKey::CtrlAlt => &[KEY_LEFTCTRL, KEY_LEFTALT],
            GrabKey::CtrlAltShift => &[KEY_LEFTCTRL, KEY_LEFTALT, KEY_LEFTSHIFT],
            GrabKey::RightCtrl => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_ratio_and_centres() {
        let v = view_rect(ScaleMode::Fit, (1000.0, 500.0), (640, 480));
        assert!((v.height - 500.0).abs() < 1e-9);
        assert!((v.width - 666.666).abs() < 0.01);
        assert_eq!(v.y, 0.0);
        assert_eq!(v.x, 167.0);
        let one = view_rect(ScaleMode::OneToOne, (1000.0, 500.0), (640, 480));
        assert_eq!(
            (one.x, one.y, one.width, one.height),
            (180.0, 10.0, 640.0, 480.0)
        );
    }

    #[test]
    fn pointer_maps_to_the_tablet_range_and_clamps() {
        let v = ViewRect {
            x: 100.0,
            y: 0.0,
            width: 200.0,
            height: 100.0,
        };
        assert_eq!(tablet_position(&v, 100.0, 0.0), (0, 0));
        assert_eq!(tablet_position(&v, 300.0, 100.0), (32767, 32767));
        assert_eq!(tablet_position(&v, 200.0, 50.0), (16384, 16384));
        assert_eq!(tablet_position(&v, -5.0, 900.0), (0, 32767));
        let empty = ViewRect {
            x: 0.0,
            y: 0.0,
            width: 0.0,
            height: 0.0,
        };
        assert_eq!(tablet_position(&empty, 3.0, 3.0), (0, 0));
    }

    #[test]
    fn keys_map_to_evdev() {
        assert_eq!(evdev_code(38), Some(30)); // 'a' under xkb
        assert_eq!(evdev_code(8), None);
        assert_eq!(evdev_code(3), None);
        assert_eq!(function_key(1), Some(59));
        assert_eq!(function_key(10), Some(68));
        assert_eq!(function_key(12), Some(88));
        assert_eq!(function_key(13), None);
    }

    #[test]
    fn send_keys_press_then_release_in_reverse() {
        let combos = send_key_combos();
        assert_eq!(combos.len(), 15);
        assert_eq!(combos[0].1, [29, 56, 111]);
        assert_eq!(
            combo_events(&combos[0].1),
            [
                (29, true),
                (56, true),
                (111, true),
                (111, false),
                (56, false),
                (29, false)
            ]
        );
        assert_eq!(combos.last().unwrap().1, [KEY_SYSRQ]);
    }

    #[test]
    fn the_grab_key_releases_the_grab() {
        let ctrl = Modifiers {
            ctrl: true,
            ..Modifiers::default()
        };
        let alt = Modifiers {
            alt: true,
            ..Modifiers::default()
        };
        let none = Modifiers::default();
        assert!(GrabKey::CtrlAlt.releases(ctrl, KEY_LEFTALT));
        assert!(GrabKey::CtrlAlt.releases(alt, KEY_RIGHTCTRL));
        assert!(!GrabKey::CtrlAlt.releases(ctrl, 30));
        assert!(!GrabKey::CtrlAlt.releases(none, KEY_LEFTALT));
        // Ctrl+Alt reaches the guest when the release needs Shift too.
        assert!(!GrabKey::CtrlAltShift.releases(ctrl, KEY_LEFTALT));
        let ctrl_alt = Modifiers {
            ctrl: true,
            alt: true,
            shift: false,
        };
        assert!(GrabKey::CtrlAltShift.releases(ctrl_alt, KEY_LEFTSHIFT));
        assert!(GrabKey::RightCtrl.releases(none, KEY_RIGHTCTRL));
        assert!(!GrabKey::RightCtrl.releases(none, KEY_LEFTCTRL));
        assert!(!GrabKey::RightCtrl.releases(alt, KEY_RIGHTCTRL));
        for key in GrabKey::ALL {
            assert_eq!(GrabKey::from_nick(key.nick()), key);
        }
        assert_eq!(GrabKey::from_nick("nonsense"), GrabKey::CtrlAlt);
    }
}
