//! Where typed keys go. A machine may have several keyboards (the i8042's PS/2 keyboard now, a
//! virtio-input keyboard later); each key goes to the first one the guest has enabled, so early
//! boot uses PS/2 and a guest whose virtio-input driver is up gets keys there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lock;

/// A keyboard the host can type on.
pub trait Keyboard: Send {
    /// True while the guest listens to this keyboard.
    fn accepts_keys(&self) -> bool;
    /// A key, by Linux evdev code, went down (`true`) or up.
    fn key(&mut self, evdev: u16, down: bool);
}

/// The machine's keyboards in order of preference: the best device first, the i8042 last.
#[derive(Default, Clone)]
pub struct KeyboardRouter {
    keyboards: Vec<Arc<Mutex<dyn Keyboard>>>,
    /// Keys that are down, with the keyboard (index) that got the press: the release goes to
    /// the same one, so a key held while the guest's virtio-input driver comes up does not
    /// stay stuck on the i8042.
    held: Arc<Mutex<HashMap<u16, usize>>>,
}

impl KeyboardRouter {
    /// Adds a keyboard preferred over those added after it.
    pub fn add(&mut self, keyboard: Arc<Mutex<dyn Keyboard>>) {
        self.keyboards.push(keyboard);
    }

    /// Sends a key to the first keyboard the guest has enabled. If none is, the last one (the
    /// i8042) gets it, as a real keyboard would send it anyway. A release goes where the press
    /// went. Returns whether there was a keyboard.
    pub fn key(&self, evdev: u16, down: bool) -> bool {
        let pressed_on = {
            let mut held = lock(&self.held);
            if down {
                None
            } else {
                held.remove(&evdev)
            }
        };
        let target = pressed_on.or_else(|| {
            self.keyboards
                .iter()
                .position(|k| lock(k).accepts_keys())
                .or(self.keyboards.len().checked_sub(1))
        });
        let Some(index) = target else {
            return false;
        };
        if down {
            lock(&self.held).insert(evdev, index);
        }
        lock(&self.keyboards[index]).key(evdev, down);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        enabled: bool,
        keys: Vec<(u16, bool)>,
    }

    impl Keyboard for Fake {
        fn accepts_keys(&self) -> bool {
            self.enabled
        }
        fn key(&mut self, evdev: u16, down: bool) {
            self.keys.push((evdev, down));
        }
    }

    #[test]
    fn keys_go_to_the_first_enabled_keyboard() {
        let virtio = Arc::new(Mutex::new(Fake {
            enabled: false,
            keys: vec![],
        }));
        let ps2 = Arc::new(Mutex::new(Fake {
            enabled: true,
            keys: vec![],
        }));
        let mut router = KeyboardRouter::default();
        router.add(virtio.clone());
        router.add(ps2.clone());
        assert!(router.key(30, true));
        assert_eq!(ps2.lock().unwrap().keys, vec![(30, true)]);
        router.key(30, false);
        virtio.lock().unwrap().enabled = true;
        router.key(48, true);
        assert_eq!(virtio.lock().unwrap().keys, vec![(48, true)]);
        ps2.lock().unwrap().enabled = false;
        virtio.lock().unwrap().enabled = false;
        router.key(31, true);
        assert_eq!(
            ps2.lock().unwrap().keys,
            vec![(30, true), (30, false), (31, true)],
            "the i8042 is the fallback"
        );
        assert!(!KeyboardRouter::default().key(1, true));
    }

    #[test]
    fn a_release_goes_where_the_press_went() {
        let virtio = Arc::new(Mutex::new(Fake {
            enabled: false,
            keys: vec![],
        }));
        let ps2 = Arc::new(Mutex::new(Fake {
            enabled: true,
            keys: vec![],
        }));
        let mut router = KeyboardRouter::default();
        router.add(virtio.clone());
        router.add(ps2.clone());
        router.key(28, true); // Enter held while the guest's virtio-input driver starts
        virtio.lock().unwrap().enabled = true;
        router.key(30, true);
        router.key(28, false);
        router.key(30, false);
        router.key(28, false); // a stray release goes to the enabled keyboard
        assert_eq!(ps2.lock().unwrap().keys, vec![(28, true), (28, false)]);
        assert_eq!(
            virtio.lock().unwrap().keys,
            vec![(30, true), (30, false), (28, false)]
        );
    }
}
