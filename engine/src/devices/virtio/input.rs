//! virtio-input (virtio 1.2, 5.8): a keyboard and an absolute-pointer tablet that hand the guest
//! Linux evdev events directly, so a guest with the driver gets every key and exact pointer
//! positions without PS/2 translation.
//!
//! The driver learns what a device is through the configuration space: it writes a `select`
//! and `subsel` byte and reads back `size` and up to 128 bytes of answer (name, serial, ids,
//! property and event-code bitmaps, axis ranges). Events travel on the event queue, one 8-byte
//! `virtio_input_event` per buffer the driver posted, each report closed by `SYN_REPORT`. The
//! status queue carries what the guest sets on the device (the keyboard LEDs); its buffers are
//! read and handed back.
//!
//! The host side ([`InputHandle`]) only appends to a bounded queue and wakes the device thread,
//! so neither the worker's event loop nor a vCPU ever waits for the guest to post buffers.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::{DeviceThread, QueueHandler};
use super::{
    drain_queue, ActivateContext, Interrupt, Queue, QueueT, VirtioDevice, VirtioError, F_VERSION_1,
    TYPE_INPUT,
};
use crate::devices::input::Keyboard;
use crate::devices::lock;

const QUEUE_SIZE: u16 = 64;
const EVENTQ: usize = 0;
const STATUSQ: usize = 1;

/// Configuration selectors (virtio 1.2, 5.8.4).
pub const CFG_UNSET: u8 = 0x00;
pub const CFG_ID_NAME: u8 = 0x01;
pub const CFG_ID_SERIAL: u8 = 0x02;
pub const CFG_ID_DEVIDS: u8 = 0x03;
pub const CFG_PROP_BITS: u8 = 0x10;
pub const CFG_EV_BITS: u8 = 0x11;
pub const CFG_ABS_INFO: u8 = 0x12;

/// The configuration layout: select, subsel, size, 5 reserved bytes, then the 128-byte answer.
const CFG_HEADER: usize = 8;
const CFG_PAYLOAD: usize = 128;

/// Linux evdev event types and codes (include/uapi/linux/input-event-codes.h).
pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_REL: u16 = 0x02;
pub const EV_ABS: u16 = 0x03;
pub const EV_LED: u16 = 0x11;
pub const EV_REP: u16 = 0x14;
pub const SYN_REPORT: u16 = 0;
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
pub const REL_WHEEL: u16 = 0x08;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_RIGHT: u16 = 0x111;
pub const BTN_MIDDLE: u16 = 0x112;
const LED_NUML: u16 = 0;
const LED_CAPSL: u16 = 1;
const LED_SCROLLL: u16 = 2;
const BUS_VIRTUAL: u16 = 0x06;

/// Keyboard keys the virtio keyboard reports: every key code below the button range, and the
/// extended keys after it up to the trigger-happy buttons. Buttons stay out so that the guest
/// does not take the keyboard for a mouse or joystick.
const KEYBOARD_KEYS: [std::ops::RangeInclusive<u16>; 2] = [1..=0xff, 0x160..=0x2bf];

/// How many events wait for the guest at most. A guest that posts no buffers (its driver
/// stalled, or it does not read its input) loses its oldest reports, never more memory.
pub const MAX_PENDING_EVENTS: usize = 256;

/// One `virtio_input_event`: an evdev (type, code, value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    pub const fn new(kind: u16, code: u16, value: i32) -> InputEvent {
        InputEvent { kind, code, value }
    }

    const SYN: InputEvent = InputEvent::new(EV_SYN, SYN_REPORT, 0);

    /// The little-endian wire form: le16 type, le16 code, le32 value.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0..2].copy_from_slice(&self.kind.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.code.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }

    pub fn from_bytes(bytes: [u8; 8]) -> InputEvent {
        InputEvent {
            kind: u16::from_le_bytes([bytes[0], bytes[1]]),
            code: u16::from_le_bytes([bytes[2], bytes[3]]),
            value: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }
}

/// An absolute axis' range, as `virtio_input_absinfo` carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbsInfo {
    pub min: u32,
    pub max: u32,
    pub fuzz: u32,
    pub flat: u32,
    pub res: u32,
}

/// Which of the two devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    Keyboard,
    Tablet,
}

/// Everything the configuration space tells the driver about one device.
#[derive(Clone, Debug)]
pub struct InputProfile {
    pub name: &'static str,
    pub serial: &'static str,
    /// bustype, vendor, product, version.
    pub ids: [u16; 4],
    /// INPUT_PROP_* bits.
    pub props: Vec<u16>,
    /// Per event type (EV_KEY, EV_REL, ...), the codes the device can send.
    pub events: Vec<(u16, Vec<u16>)>,
    pub axes: Vec<(u16, AbsInfo)>,
}

impl InputProfile {
    pub fn for_kind(kind: InputKind) -> InputProfile {
        match kind {
            InputKind::Keyboard => InputProfile {
                name: "Hangar Virtio Keyboard",
                serial: "hangar-keyboard",
                ids: [BUS_VIRTUAL, 0, 1, 1],
                props: vec![],
                events: vec![
                    (EV_KEY, KEYBOARD_KEYS.iter().cloned().flatten().collect()),
                    (EV_LED, vec![LED_NUML, LED_CAPSL, LED_SCROLLL]),
                    // The guest repeats held keys itself, as with a real keyboard; its driver
                    // only checks that the answer is not empty.
                    (EV_REP, vec![0]),
                ],
                axes: vec![],
            },
            // An absolute mouse, as QEMU's virtio-tablet is: no INPUT_PROP_DIRECT (that would
            // make it a touchscreen) and no INPUT_PROP_POINTER (a touchpad), so the guest
            // moves its cursor to where the host's pointer is.
            InputKind::Tablet => {
                let axis = AbsInfo {
                    min: 0,
                    max: crate::protocol::POINTER_MAX,
                    fuzz: 0,
                    flat: 0,
                    res: 0,
                };
                InputProfile {
                    name: "Hangar Virtio Tablet",
                    serial: "hangar-tablet",
                    ids: [BUS_VIRTUAL, 0, 2, 1],
                    props: vec![],
                    events: vec![
                        (EV_KEY, vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]),
                        (EV_REL, vec![REL_WHEEL]),
                        (EV_ABS, vec![ABS_X, ABS_Y]),
                    ],
                    axes: vec![(ABS_X, axis), (ABS_Y, axis)],
                }
            }
        }
    }

    /// True if the device advertises `code` for event type `kind`.
    pub fn sends(&self, kind: u16, code: u16) -> bool {
        self.events
            .iter()
            .any(|(k, codes)| *k == kind && codes.contains(&code))
    }

    /// The answer to (`select`, `subsel`): its size and the 128-byte payload. An unknown
    /// question gets size 0, which the driver reads as "not supported".
    pub fn answer(&self, select: u8, subsel: u8) -> (u8, [u8; CFG_PAYLOAD]) {
        let mut payload = [0u8; CFG_PAYLOAD];
        let size = match (select, subsel) {
            (CFG_ID_NAME, 0) => copy_string(&mut payload, self.name),
            (CFG_ID_SERIAL, 0) => copy_string(&mut payload, self.serial),
            (CFG_ID_DEVIDS, 0) => {
                for (i, id) in self.ids.iter().enumerate() {
                    payload[i * 2..i * 2 + 2].copy_from_slice(&id.to_le_bytes());
                }
                8
            }
            (CFG_PROP_BITS, 0) => bitmap(&mut payload, &self.props),
            (CFG_EV_BITS, kind) => match self.events.iter().find(|(k, _)| *k == u16::from(kind)) {
                Some((_, codes)) => bitmap(&mut payload, codes).max(1),
                None => 0,
            },
            (CFG_ABS_INFO, axis) => match self.axes.iter().find(|(a, _)| *a == u16::from(axis)) {
                Some((_, info)) => {
                    for (i, v) in [info.min, info.max, info.fuzz, info.flat, info.res]
                        .iter()
                        .enumerate()
                    {
                        payload[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
                    }
                    20
                }
                None => 0,
            },
            _ => 0,
        };
        (size, payload)
    }
}

fn copy_string(payload: &mut [u8; CFG_PAYLOAD], text: &str) -> u8 {
    let len = text.len().min(CFG_PAYLOAD);
    payload[..len].copy_from_slice(&text.as_bytes()[..len]);
    len as u8
}

/// Sets one bit per code; the size is the number of bytes up to the last one set.
fn bitmap(payload: &mut [u8; CFG_PAYLOAD], codes: &[u16]) -> u8 {
    let mut size = 0;
    for &code in codes {
        let byte = usize::from(code / 8);
        if byte < CFG_PAYLOAD {
            payload[byte] |= 1 << (code % 8);
            size = size.max(byte + 1);
        }
    }
    size as u8
}

/// Events waiting for eventq buffers, at most [`MAX_PENDING_EVENTS`]. Events go in as whole
/// reports (closed by SYN_REPORT); when full, whole reports are dropped from the front, so the
/// guest never sees half a report. Pointer moves that the guest has not taken yet are merged.
#[derive(Debug, Default)]
pub struct PendingEvents {
    events: VecDeque<InputEvent>,
    dropped_reports: u64,
}

impl PendingEvents {
    /// Appends `events` and a SYN_REPORT.
    pub fn push_report(&mut self, events: &[InputEvent]) {
        if self.merge_move(events) {
            return;
        }
        let needed = events.len() + 1;
        if needed > MAX_PENDING_EVENTS {
            return;
        }
        while self.events.len() + needed > MAX_PENDING_EVENTS {
            self.drop_oldest_report();
        }
        self.events.extend(events.iter().copied());
        self.events.push_back(InputEvent::SYN);
    }

    /// A pure pointer move (ABS_X, ABS_Y) right after another still-queued one replaces it:
    /// only the latest position matters.
    fn merge_move(&mut self, events: &[InputEvent]) -> bool {
        let is_move = |e: &[InputEvent]| {
            e.len() == 2
                && e[0].kind == EV_ABS
                && e[0].code == ABS_X
                && e[1].kind == EV_ABS
                && e[1].code == ABS_Y
        };
        let len = self.events.len();
        if !is_move(events) || len < 3 {
            return false;
        }
        let (x, y) = (self.events[len - 3], self.events[len - 2]);
        if !is_move(&[x, y]) || self.events[len - 1] != InputEvent::SYN {
            return false;
        }
        self.events[len - 3] = events[0];
        self.events[len - 2] = events[1];
        true
    }

    fn drop_oldest_report(&mut self) {
        while let Some(event) = self.events.pop_front() {
            if event == InputEvent::SYN {
                break;
            }
        }
        self.dropped_reports += 1;
    }

    pub fn pop(&mut self) -> Option<InputEvent> {
        self.events.pop_front()
    }

    fn unpop(&mut self, event: InputEvent) {
        self.events.push_front(event);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn clear(&mut self) {
        self.events.clear();
    }

    /// Reports dropped because the guest did not take them in time.
    pub fn dropped_reports(&self) -> u64 {
        self.dropped_reports
    }
}

/// What the host side and the device thread share.
#[derive(Debug, Default)]
struct SharedState {
    pending: PendingEvents,
    /// The driver set DRIVER_OK and the device thread runs.
    active: bool,
    /// The driver has posted event buffers since it was activated.
    listening: bool,
    /// LED bits the guest last set (bit n = LED n), keyboard only.
    leds: u16,
}

/// The host's side of one virtio-input device: where the worker sends input. Cheap to clone.
#[derive(Clone)]
pub struct InputHandle {
    kind: InputKind,
    profile: Arc<InputProfile>,
    state: Arc<Mutex<SharedState>>,
    /// Wakes the device thread when events were queued.
    wake: Arc<EventFd>,
}

impl InputHandle {
    pub fn new(kind: InputKind) -> std::io::Result<InputHandle> {
        Ok(InputHandle {
            kind,
            profile: Arc::new(InputProfile::for_kind(kind)),
            state: Arc::new(Mutex::new(SharedState::default())),
            wake: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        })
    }

    pub fn kind(&self) -> InputKind {
        self.kind
    }

    /// The device model to put on the PCI bus.
    pub fn device(&self) -> VirtioInput {
        VirtioInput {
            handle: self.clone(),
            select: CFG_UNSET,
            subsel: 0,
        }
    }

    /// True while the guest's driver is up and has posted buffers for events.
    pub fn listening(&self) -> bool {
        let state = lock(&self.state);
        state.active && state.listening
    }

    /// LED bits the guest set last (bit 0 Num Lock, 1 Caps Lock, 2 Scroll Lock).
    pub fn leds(&self) -> u16 {
        lock(&self.state).leds
    }

    /// Queues one report for the guest. Without an active driver the report is dropped, as a
    /// device nobody listens to would; codes the device does not advertise are left out.
    pub fn send(&self, events: &[InputEvent]) {
        let events: Vec<InputEvent> = events
            .iter()
            .copied()
            .filter(|e| self.profile.sends(e.kind, e.code))
            .collect();
        if events.is_empty() {
            return;
        }
        {
            let mut state = lock(&self.state);
            if !state.active {
                return;
            }
            state.pending.push_report(&events);
        }
        // Fails only if the counter would overflow, and then the thread is awake anyway.
        let _ = self.wake.write(1);
    }

    /// Tablet: the pointer is at (`x`, `y`), 0..=32767 on both axes.
    pub fn pointer(&self, x: u32, y: u32) {
        self.send(&[
            InputEvent::new(EV_ABS, ABS_X, x as i32),
            InputEvent::new(EV_ABS, ABS_Y, y as i32),
        ]);
    }

    /// Tablet: a button (BTN_LEFT, BTN_RIGHT, BTN_MIDDLE) went down or up.
    pub fn button(&self, code: u16, down: bool) {
        self.send(&[InputEvent::new(EV_KEY, code, i32::from(down))]);
    }

    /// Tablet: wheel steps, positive away from the user.
    pub fn wheel(&self, delta: i32) {
        if delta != 0 {
            self.send(&[InputEvent::new(EV_REL, REL_WHEEL, delta)]);
        }
    }
}

impl Keyboard for InputHandle {
    fn accepts_keys(&self) -> bool {
        self.kind == InputKind::Keyboard && self.listening()
    }

    fn key(&mut self, evdev: u16, down: bool) {
        self.send(&[InputEvent::new(EV_KEY, evdev, i32::from(down))]);
    }
}

/// The device model: configuration space and queues of one keyboard or tablet.
pub struct VirtioInput {
    handle: InputHandle,
    select: u8,
    subsel: u8,
}

impl VirtioInput {
    /// The configuration space as the driver sees it now.
    fn config_image(&self) -> [u8; CFG_HEADER + CFG_PAYLOAD] {
        let (size, payload) = self.handle.profile.answer(self.select, self.subsel);
        let mut image = [0u8; CFG_HEADER + CFG_PAYLOAD];
        image[0] = self.select;
        image[1] = self.subsel;
        image[2] = size;
        image[CFG_HEADER..].copy_from_slice(&payload);
        image
    }
}

impl VirtioDevice for VirtioInput {
    fn name(&self) -> &'static str {
        match self.handle.kind {
            InputKind::Keyboard => "virtio-input-kbd",
            InputKind::Tablet => "virtio-input-tab",
        }
    }
    fn device_type(&self) -> u32 {
        TYPE_INPUT
    }
    fn pci_class(&self) -> u32 {
        // Input device controller, other.
        0x09_80_00
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let image = self.config_image();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| image.get(o + i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only select and subsel are writable.
        for (i, &byte) in data.iter().enumerate() {
            match offset + i as u64 {
                0 => self.select = byte,
                1 => self.subsel = byte,
                _ => {}
            }
        }
    }
    fn activate(&mut self, context: ActivateContext) -> Result<DeviceThread, VirtioError> {
        let mut kicks = Vec::new();
        let mut queues = Vec::new();
        for (index, queue) in context.queues.into_iter().enumerate() {
            match queue {
                Some(q) => {
                    kicks.push((index, q.kick));
                    queues.push(Some(q.queue));
                }
                None => queues.push(None),
            }
        }
        {
            let mut state = lock(&self.handle.state);
            state.pending.clear();
            state.active = true;
            state.listening = false;
        }
        let handler = InputQueues {
            memory: context.memory,
            queues,
            interrupt: context.interrupt.clone(),
            handle: self.handle.clone(),
        };
        // If the thread cannot start, dropping the handler marks the device inactive again.
        DeviceThread::spawn(self.name(), kicks, handler, context.interrupt)
    }
}

/// The device thread's side.
struct InputQueues {
    memory: GuestMemoryMmap,
    queues: Vec<Option<Queue>>,
    interrupt: Interrupt,
    handle: InputHandle,
}

fn queue_error(queue: usize) -> impl Fn(virtio_queue::Error) -> VirtioError {
    move |err| VirtioError::Queue {
        queue,
        reason: err.to_string(),
    }
}

/// Moves pending events into the buffers the driver posted on the event queue, one event per
/// buffer. Returns whether any buffer was used. When buffers run out, notifications are turned
/// on so the driver's next buffer wakes the device.
pub fn deliver_events(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    pending: &mut PendingEvents,
) -> Result<bool, VirtioError> {
    let malformed = queue_error(EVENTQ);
    let mut used_any = false;
    loop {
        while !pending.is_empty() {
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let event = pending.pop().unwrap_or(InputEvent::SYN);
            let written = chain
                .writer(memory)
                .ok()
                .filter(|w| w.available_bytes() >= 8)
                .and_then(|mut w| w.write_all(&event.to_bytes()).ok());
            if written.is_none() {
                // The event stays for the next buffer; this one goes back unused.
                pending.unpop(event);
                queue.add_used(memory, head, 0).map_err(&malformed)?;
                return Err(VirtioError::Request {
                    queue: EVENTQ,
                    reason: "an event buffer is not 8 writable bytes".into(),
                });
            }
            queue.add_used(memory, head, 8).map_err(&malformed)?;
            used_any = true;
        }
        if pending.is_empty() || !queue.enable_notification(memory).map_err(&malformed)? {
            return Ok(used_any);
        }
    }
}

/// Reads the events the guest sent on the status queue; returns the LED bits they leave set.
pub fn apply_status(mut leds: u16, bytes: &[u8]) -> u16 {
    for record in bytes.chunks_exact(8) {
        let event = InputEvent::from_bytes(record.try_into().unwrap_or([0; 8]));
        if event.kind == EV_LED && event.code < 16 {
            if event.value != 0 {
                leds |= 1 << event.code;
            } else {
                leds &= !(1 << event.code);
            }
        }
    }
    leds
}

impl InputQueues {
    fn fill_eventq(&mut self) -> Result<(), VirtioError> {
        let Some(queue) = self.queues.get_mut(EVENTQ).and_then(Option::as_mut) else {
            return Ok(());
        };
        let mut state = lock(&self.handle.state);
        if !state.listening {
            let posted = queue
                .avail_idx(&self.memory, std::sync::atomic::Ordering::Acquire)
                .map_err(queue_error(EVENTQ))?;
            state.listening = posted.0 != queue.next_avail();
        }
        let used = deliver_events(queue, &self.memory, &mut state.pending)?;
        drop(state);
        if used
            && queue
                .needs_notification(&self.memory)
                .map_err(queue_error(EVENTQ))?
        {
            self.interrupt.signal_queue(EVENTQ);
        }
        Ok(())
    }

    fn read_statusq(&mut self) -> Result<(), VirtioError> {
        let Some(queue) = self.queues.get_mut(STATUSQ).and_then(Option::as_mut) else {
            return Ok(());
        };
        let state = &self.handle.state;
        drain_queue(queue, &self.memory, STATUSQ, &self.interrupt, |chain| {
            let mut reader = chain
                .reader(&self.memory)
                .map_err(|err| VirtioError::Request {
                    queue: STATUSQ,
                    reason: err.to_string(),
                })?;
            let mut bytes = vec![0u8; reader.available_bytes().min(4096)];
            reader
                .read_exact(&mut bytes)
                .map_err(|err| VirtioError::Request {
                    queue: STATUSQ,
                    reason: err.to_string(),
                })?;
            let mut state = lock(state);
            state.leds = apply_status(state.leds, &bytes);
            Ok(0)
        })
    }
}

impl InputQueues {
    /// The device stops serving (an error, a reset, the machine going away): keys go back to
    /// the i8042 and input for the device is dropped until a driver activates it again.
    fn deactivate(&self) {
        let mut state = lock(&self.handle.state);
        state.active = false;
        state.listening = false;
        state.pending.clear();
    }

    fn checked(&self, result: Result<(), VirtioError>) -> Result<(), VirtioError> {
        if result.is_err() {
            self.deactivate();
        }
        result
    }
}

impl QueueHandler for InputQueues {
    fn queue_kicked(&mut self, index: usize) -> Result<(), VirtioError> {
        let result = match index {
            EVENTQ => self.fill_eventq(),
            STATUSQ => self.read_statusq(),
            _ => Ok(()),
        };
        self.checked(result)
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.handle.wake.as_raw_fd()]
    }

    fn backend_ready(&mut self, _index: usize) -> Result<(), VirtioError> {
        let _ = self.handle.wake.read();
        let result = self.fill_eventq();
        self.checked(result)
    }
}

impl Drop for InputQueues {
    fn drop(&mut self) {
        self.deactivate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn ask(device: &mut VirtioInput, select: u8, subsel: u8) -> (u8, Vec<u8>) {
        device.write_config(0, &[select, subsel]);
        let mut image = vec![0u8; CFG_HEADER + CFG_PAYLOAD];
        device.read_config(0, &mut image);
        assert_eq!((image[0], image[1]), (select, subsel));
        let size = image[2];
        (
            size,
            image[CFG_HEADER..CFG_HEADER + usize::from(size)].to_vec(),
        )
    }

    fn bit(bitmap: &[u8], code: u16) -> bool {
        bitmap
            .get(usize::from(code / 8))
            .is_some_and(|b| b & (1 << (code % 8)) != 0)
    }

    #[test]
    fn keyboard_configuration_answers_each_question() {
        let mut kbd = InputHandle::new(InputKind::Keyboard).unwrap().device();
        assert_eq!(
            ask(&mut kbd, CFG_ID_NAME, 0),
            (22, b"Hangar Virtio Keyboard".to_vec())
        );
        assert_eq!(
            ask(&mut kbd, CFG_ID_SERIAL, 0),
            (15, b"hangar-keyboard".to_vec())
        );
        assert_eq!(
            ask(&mut kbd, CFG_ID_DEVIDS, 0),
            (8, vec![6, 0, 0, 0, 1, 0, 1, 0])
        );
        assert_eq!(ask(&mut kbd, CFG_PROP_BITS, 0).0, 0);
        let (size, keys) = ask(&mut kbd, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(size, 88, "keys up to 0x2bf");
        for code in [1, 30, 28, 0x7d, 0xff, 0x160, 0x2bf] {
            assert!(bit(&keys, code), "key {code:#x} missing");
        }
        for code in [0, BTN_LEFT, 0x100, 0x15f] {
            assert!(!bit(&keys, code), "{code:#x} must not be a keyboard key");
        }
        assert_eq!(ask(&mut kbd, CFG_EV_BITS, EV_LED as u8), (1, vec![0b111]));
        assert_eq!(ask(&mut kbd, CFG_EV_BITS, EV_REP as u8).0, 1);
        assert_eq!(ask(&mut kbd, CFG_EV_BITS, EV_ABS as u8).0, 0);
        assert_eq!(ask(&mut kbd, CFG_EV_BITS, EV_REL as u8).0, 0);
        assert_eq!(ask(&mut kbd, CFG_ABS_INFO, ABS_X as u8).0, 0);
        assert_eq!(ask(&mut kbd, CFG_UNSET, 0).0, 0);
        // A subsel where none belongs, and an unknown selector, get no answer.
        assert_eq!(ask(&mut kbd, CFG_ID_NAME, 1).0, 0);
        assert_eq!(ask(&mut kbd, 0x7f, 0).0, 0);
    }

    #[test]
    fn tablet_configuration_answers_each_question() {
        let mut tab = InputHandle::new(InputKind::Tablet).unwrap().device();
        assert_eq!(
            ask(&mut tab, CFG_ID_NAME, 0),
            (20, b"Hangar Virtio Tablet".to_vec())
        );
        assert_eq!(ask(&mut tab, CFG_ID_DEVIDS, 0).1[4], 2);
        assert_eq!(ask(&mut tab, CFG_PROP_BITS, 0).0, 0);
        let (size, buttons) = ask(&mut tab, CFG_EV_BITS, EV_KEY as u8);
        assert_eq!(size, 35);
        for code in 0..0x300 {
            let expected = [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE].contains(&code);
            assert_eq!(bit(&buttons, code), expected, "code {code:#x}");
        }
        assert_eq!(ask(&mut tab, CFG_EV_BITS, EV_REL as u8), (2, vec![0, 1]));
        assert_eq!(ask(&mut tab, CFG_EV_BITS, EV_ABS as u8), (1, vec![0b11]));
        assert_eq!(ask(&mut tab, CFG_EV_BITS, EV_LED as u8).0, 0);
        let mut absinfo = vec![0u8; 20];
        absinfo[4..8].copy_from_slice(&32767u32.to_le_bytes());
        assert_eq!(
            ask(&mut tab, CFG_ABS_INFO, ABS_X as u8),
            (20, absinfo.clone())
        );
        assert_eq!(ask(&mut tab, CFG_ABS_INFO, ABS_Y as u8), (20, absinfo));
        assert_eq!(ask(&mut tab, CFG_ABS_INFO, 2).0, 0, "no ABS_Z");
    }

    #[test]
    fn configuration_reads_at_any_offset_and_past_the_end() {
        let mut tab = InputHandle::new(InputKind::Tablet).unwrap().device();
        tab.write_config(0, &[CFG_ID_NAME]);
        tab.write_config(1, &[0]);
        let mut word = [0u8; 4];
        tab.read_config(CFG_HEADER as u64 + 7, &mut word);
        assert_eq!(&word, b"Virt");
        tab.read_config(2, &mut word[..1]);
        assert_eq!(word[0], 20);
        tab.read_config(0x400, &mut word);
        assert_eq!(word, [0; 4]);
        // Writes beyond select and subsel change nothing.
        tab.write_config(2, &[99]);
        tab.read_config(2, &mut word[..1]);
        assert_eq!(word[0], 20);
    }

    #[test]
    fn events_encode_as_virtio_input_events() {
        let event = InputEvent::new(EV_REL, REL_WHEEL, -1);
        assert_eq!(event.to_bytes(), [2, 0, 8, 0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(InputEvent::from_bytes(event.to_bytes()), event);
        assert_eq!(
            InputEvent::new(EV_ABS, ABS_Y, 32767).to_bytes(),
            [3, 0, 1, 0, 0xff, 0x7f, 0, 0]
        );
    }

    #[test]
    fn pending_events_stay_bounded_and_whole() {
        let mut pending = PendingEvents::default();
        let key = |code, down| [InputEvent::new(EV_KEY, code, down)];
        for i in 0..1000u16 {
            pending.push_report(&key(i % 200 + 1, i32::from(i % 2 == 0)));
            assert!(pending.len() <= MAX_PENDING_EVENTS);
        }
        assert_eq!(pending.len(), MAX_PENDING_EVENTS);
        assert_eq!(
            pending.dropped_reports(),
            1000 - MAX_PENDING_EVENTS as u64 / 2
        );
        // The oldest left is the start of a report, and the newest report is there.
        assert_eq!(pending.pop().unwrap().kind, EV_KEY);
        let last: Vec<InputEvent> = std::iter::from_fn(|| pending.pop()).collect();
        assert_eq!(
            &last[last.len() - 2..],
            &[InputEvent::new(EV_KEY, 999 % 200 + 1, 0), InputEvent::SYN]
        );
    }

    #[test]
    fn queued_pointer_moves_merge_into_the_latest() {
        let mut pending = PendingEvents::default();
        let mv = |x, y| {
            [
                InputEvent::new(EV_ABS, ABS_X, x),
                InputEvent::new(EV_ABS, ABS_Y, y),
            ]
        };
        pending.push_report(&mv(1, 2));
        pending.push_report(&mv(3, 4));
        assert_eq!(pending.len(), 3);
        pending.push_report(&[InputEvent::new(EV_KEY, BTN_LEFT, 1)]);
        pending.push_report(&mv(5, 6));
        let all: Vec<InputEvent> = std::iter::from_fn(|| pending.pop()).collect();
        assert_eq!(
            all,
            vec![
                InputEvent::new(EV_ABS, ABS_X, 3),
                InputEvent::new(EV_ABS, ABS_Y, 4),
                InputEvent::SYN,
                InputEvent::new(EV_KEY, BTN_LEFT, 1),
                InputEvent::SYN,
                InputEvent::new(EV_ABS, ABS_X, 5),
                InputEvent::new(EV_ABS, ABS_Y, 6),
                InputEvent::SYN,
            ]
        );
    }

    const BUFFERS: u64 = 0x1_0000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Posts `count` event buffers of `len` bytes each, one descriptor per chain.
    fn post(mock: &MockSplitQueue<GuestMemoryMmap>, count: u16, len: u32, offset: u16) {
        let descs: Vec<RawDescriptor> = (0..count)
            .map(|i| {
                RawDescriptor::from(SplitDescriptor::new(
                    BUFFERS + u64::from(offset + i) * 8,
                    len,
                    VRING_DESC_F_WRITE as u16,
                    0,
                ))
            })
            .collect();
        mock.add_desc_chains(&descs, offset).unwrap();
    }

    fn written(memory: &GuestMemoryMmap, index: u16) -> InputEvent {
        let mut bytes = [0u8; 8];
        memory
            .read_slice(&mut bytes, GuestAddress(BUFFERS + u64::from(index) * 8))
            .unwrap();
        InputEvent::from_bytes(bytes)
    }

    #[test]
    fn events_fill_posted_buffers_and_wait_for_more() {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut pending = PendingEvents::default();
        pending.push_report(&[
            InputEvent::new(EV_ABS, ABS_X, 100),
            InputEvent::new(EV_ABS, ABS_Y, 200),
        ]);
        pending.push_report(&[InputEvent::new(EV_KEY, BTN_LEFT, 1)]);
        // Nothing posted: nothing moves, nothing is lost.
        assert!(!deliver_events(&mut queue, &memory, &mut pending).unwrap());
        assert_eq!(pending.len(), 5);
        post(&mock, 4, 8, 0);
        assert!(deliver_events(&mut queue, &memory, &mut pending).unwrap());
        assert_eq!(pending.len(), 1, "four buffers take four events");
        assert_eq!(written(&memory, 0), InputEvent::new(EV_ABS, ABS_X, 100));
        assert_eq!(written(&memory, 1), InputEvent::new(EV_ABS, ABS_Y, 200));
        assert_eq!(written(&memory, 2), InputEvent::SYN);
        assert_eq!(written(&memory, 3), InputEvent::new(EV_KEY, BTN_LEFT, 1));
        post(&mock, 2, 8, 4);
        assert!(deliver_events(&mut queue, &memory, &mut pending).unwrap());
        assert_eq!(written(&memory, 4), InputEvent::SYN);
        assert!(pending.is_empty());
        assert_eq!(
            queue
                .used_idx(&memory, std::sync::atomic::Ordering::Acquire)
                .unwrap()
                .0,
            5,
            "the sixth buffer stays posted for the next event"
        );
    }

    #[test]
    fn a_too_small_event_buffer_is_an_error_and_keeps_the_event() {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        let mut queue: Queue = mock.create_queue().unwrap();
        let mut pending = PendingEvents::default();
        pending.push_report(&[InputEvent::new(EV_KEY, 30, 1)]);
        post(&mock, 1, 4, 0);
        assert!(deliver_events(&mut queue, &memory, &mut pending).is_err());
        assert_eq!(pending.pop(), Some(InputEvent::new(EV_KEY, 30, 1)));
    }

    #[test]
    fn status_events_set_and_clear_leds() {
        let mut bytes = Vec::new();
        for (code, value) in [(LED_CAPSL, 1), (LED_NUML, 1), (LED_NUML, 0)] {
            bytes.extend_from_slice(&InputEvent::new(EV_LED, code, value).to_bytes());
        }
        bytes.extend_from_slice(&InputEvent::new(EV_KEY, 3, 1).to_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(apply_status(0b100, &bytes), 0b110);
    }

    #[test]
    fn the_host_side_drops_input_until_a_driver_listens() {
        let handle = InputHandle::new(InputKind::Keyboard).unwrap();
        let mut keyboard = handle.clone();
        keyboard.key(30, true);
        assert!(lock(&handle.state).pending.is_empty());
        assert!(!keyboard.accepts_keys());
        {
            let mut state = lock(&handle.state);
            state.active = true;
        }
        assert!(!keyboard.accepts_keys(), "active but no buffers posted yet");
        keyboard.key(30, true);
        keyboard.key(BTN_LEFT, true); // not a keyboard key: left out
        assert_eq!(lock(&handle.state).pending.len(), 2);
        assert_eq!(handle.wake.read().unwrap(), 1);
        lock(&handle.state).listening = true;
        assert!(keyboard.accepts_keys());
        // A tablet never takes keys, whatever its driver does.
        let tablet = InputHandle::new(InputKind::Tablet).unwrap();
        {
            let mut state = lock(&tablet.state);
            state.active = true;
            state.listening = true;
        }
        assert!(!tablet.clone().accepts_keys());
        tablet.wheel(0);
        assert!(
            lock(&tablet.state).pending.is_empty(),
            "no empty wheel reports"
        );
        tablet.wheel(-2);
        tablet.button(BTN_RIGHT, true);
        assert_eq!(lock(&tablet.state).pending.len(), 4);
    }
}
