//! The modern virtio-pci transport (virtio 1.2, 4.1): vendor capabilities pointing into one
//! 64-bit memory BAR that holds the common configuration, ISR, device configuration,
//! notification area and the MSI-X table. Notifications arrive on ioeventfds, interrupts leave
//! through MSI-X irqfds, so a busy queue costs no vCPU exit to userspace.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::worker::DeviceThread;
use super::{
    ActivateContext, Interrupt, Queue, QueueT, QueueWithKick, VirtioDevice, F_VERSION_1, NO_VECTOR,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::devices::lock;
use crate::devices::pci::config::{PciConfig, PciIdentity};
use crate::devices::pci::msix::{MsiRouter, MsixError, MsixTable};
use crate::devices::pci::PciDevice;

const VIRTIO_VENDOR: u16 = 0x1af4;
const MODERN_DEVICE_BASE: u16 = 0x1040;

/// Layout of BAR 0.
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x0040;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x8000;

/// virtio PCI capability types.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_VENDOR: u8 = 0x09;

#[derive(Clone, Copy, Default)]
struct QueueSettings {
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// The queue size a driver may set: a power of two no larger than the device's maximum (split
/// virtqueues, virtio 1.2, 2.7). Anything else is ignored, so the ring the device walks is never
/// larger than the device allows, and the driver reads back the size in force.
pub fn accepted_queue_size(requested: u16, max: u16) -> Option<u16> {
    (requested.is_power_of_two() && requested <= max).then_some(requested)
}

/// A virtio device on PCI.
pub struct VirtioPciDevice {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    vm: Arc<VmFd>,
    memory: GuestMemoryMmap,
    msix: Arc<Mutex<MsixTable>>,
    msix_capability: usize,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: Arc<Mutex<u16>>,
    status: Arc<AtomicU8>,
    isr: Arc<AtomicU8>,
    queue_select: u16,
    queues: Vec<QueueSettings>,
    kicks: Vec<EventFd>,
    /// Where the notification ioeventfds are registered, if anywhere.
    notify_base: Option<u64>,
    thread: Option<DeviceThread>,
}

impl VirtioPciDevice {
    /// Wraps `device`, with BAR 0 placed at `bar_address`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        vm: Arc<VmFd>,
        memory: GuestMemoryMmap,
        router: Arc<Mutex<MsiRouter>>,
        bar_address: u64,
    ) -> Result<Self, MsixError> {
        let queue_count = device.queue_max_sizes().len();
        let mut config = PciConfig::new(PciIdentity {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + device.device_type() as u16,
            revision: 1,
            class: device.pci_class(),
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x40,
        });
        config.add_memory_bar(0, BAR_SIZE, bar_address);
        let vendor_cap = |kind: u8, offset: u64, len: u64, extra: &[u8]| {
            let mut body = vec![CAP_VENDOR, 0, 16 + extra.len() as u8, kind, 0, 0, 0, 0];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(len as u32).to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        config.add_capability(&vendor_cap(CAP_COMMON, COMMON_OFFSET, COMMON_LEN, &[]), &[]);
        config.add_capability(
            &vendor_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                u64::from(NOTIFY_MULTIPLIER) * queue_count as u64,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        );
        config.add_capability(&vendor_cap(CAP_ISR, ISR_OFFSET, 1, &[]), &[]);
        config.add_capability(&vendor_cap(CAP_DEVICE, DEVICE_OFFSET, DEVICE_LEN, &[]), &[]);
        // One vector per queue plus one for configuration changes.
        let msix = MsixTable::new(queue_count as u16 + 1, router)?;
        let msix_capability = config.add_capability(
            &msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32),
            &MsixTable::capability_mask(),
        );
        let mut kicks = Vec::new();
        for _ in 0..queue_count {
            kicks.push(EventFd::new(libc::EFD_NONBLOCK).map_err(MsixError::EventFd)?);
        }
        let mut transport = VirtioPciDevice {
            config,
            device,
            vm,
            memory,
            msix: Arc::new(Mutex::new(msix)),
            msix_capability,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: Arc::new(Mutex::new(NO_VECTOR)),
            status: Arc::new(AtomicU8::new(0)),
            isr: Arc::new(AtomicU8::new(0)),
            queue_select: 0,
            queues: Vec::new(),
            kicks,
            notify_base: None,
            thread: None,
        };
        transport.reset();
        Ok(transport)
    }

    fn reset(&mut self) {
        if let Some(mut thread) = self.thread.take() {
            thread.stop();
        }
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        *lock(&self.config_vector) = NO_VECTOR;
        self.status.store(0, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.queues = self
            .device
            .queue_max_sizes()
            .iter()
            .map(|&size| QueueSettings {
                size,
                vector: NO_VECTOR,
                ..Default::default()
            })
            .collect();
    }

    fn selected(&mut self) -> Option<&mut QueueSettings> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut image = [0u8; COMMON_LEN as usize];
        let features = self.device.features();
        let feature_word = match self.device_feature_select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let driver_word = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        let queue = self
            .queues
            .get(usize::from(self.queue_select))
            .copied()
            .unwrap_or_default();
        image[0x00..0x04].copy_from_slice(&self.device_feature_select.to_le_bytes());
        image[0x04..0x08].copy_from_slice(&feature_word.to_le_bytes());
        image[0x08..0x0c].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        image[0x0c..0x10].copy_from_slice(&driver_word.to_le_bytes());
        image[0x10..0x12].copy_from_slice(&lock(&self.config_vector).to_le_bytes());
        image[0x12..0x14].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        image[0x14] = self.status.load(Ordering::SeqCst);
        image[0x15] = 0; // configuration generation: device configuration never changes under us
        image[0x16..0x18].copy_from_slice(&self.queue_select.to_le_bytes());
        image[0x18..0x1a].copy_from_slice(&queue.size.to_le_bytes());
        image[0x1a..0x1c].copy_from_slice(&queue.vector.to_le_bytes());
        image[0x1c..0x1e].copy_from_slice(&u16::from(queue.enabled).to_le_bytes());
        image[0x1e..0x20].copy_from_slice(&self.queue_select.to_le_bytes()); // notify offset
        image[0x20..0x28].copy_from_slice(&queue.desc.to_le_bytes());
        image[0x28..0x30].copy_from_slice(&queue.driver.to_le_bytes());
        image[0x30..0x38].copy_from_slice(&queue.device.to_le_bytes());
        image
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut word = [0u8; 8];
        let len = data.len().min(8);
        word[..len].copy_from_slice(&data[..len]);
        let value = u64::from_le_bytes(word);
        let vectors = lock(&self.msix).len();
        let valid_vector = |v: u16| if v < vectors { v } else { NO_VECTOR };
        let status = self.status.load(Ordering::SeqCst);
        let features_open = status & STATUS_FEATURES_OK == 0;
        match offset {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0c if features_open => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features =
                    (self.driver_features & !mask) | (((value as u32) as u64) << shift);
            }
            0x10 => *lock(&self.config_vector) = valid_vector(value as u16),
            0x14 => self.write_status(value as u8),
            0x16 => self.queue_select = value as u16,
            0x18 => {
                let max = self
                    .device
                    .queue_max_sizes()
                    .get(usize::from(self.queue_select))
                    .copied()
                    .unwrap_or(0);
                if let (Some(queue), Some(size)) =
                    (self.selected(), accepted_queue_size(value as u16, max))
                {
                    queue.size = size;
                }
            }
            0x1a => {
                let vector = valid_vector(value as u16);
                if let Some(queue) = self.selected() {
                    queue.vector = vector;
                }
            }
            0x1c => {
                if let Some(queue) = self.selected() {
                    queue.enabled = value & 1 == 1;
                }
            }
            0x20..=0x37 => {
                let field = (offset - 0x20) / 8;
                let high = (offset - 0x20) % 8 >= 4;
                if let Some(queue) = self.selected() {
                    let target = match field {
                        0 => &mut queue.desc,
                        1 => &mut queue.driver,
                        _ => &mut queue.device,
                    };
                    *target = match (high, len) {
                        (false, 8) => value,
                        (false, _) => (*target & !0xffff_ffff) | (value & 0xffff_ffff),
                        (true, _) => (*target & 0xffff_ffff) | (value << 32),
                    };
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let old = self.status.load(Ordering::SeqCst);
        let mut status = status | (old & STATUS_NEEDS_RESET);
        if status & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                // The driver reads FEATURES_OK back and gives up on the device.
                status &= !STATUS_FEATURES_OK;
            }
        }
        self.status.store(status, Ordering::SeqCst);
        if status & STATUS_DRIVER_OK != 0
            && old & STATUS_DRIVER_OK == 0
            && status & STATUS_FAILED == 0
        {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let interrupt = Interrupt {
            msix: self.msix.clone(),
            queue_vectors: self.queues.iter().map(|q| q.vector).collect(),
            config_vector: self.config_vector.clone(),
            isr: self.isr.clone(),
            status: self.status.clone(),
        };
        let mut queues = Vec::new();
        for (index, settings) in self.queues.iter().enumerate() {
            if !settings.enabled {
                queues.push(None);
                continue;
            }
            let max = self.device.queue_max_sizes()[index];
            let Ok(mut queue) = Queue::new(max) else {
                return interrupt.needs_reset();
            };
            queue.set_size(settings.size);
            if queue.size() != settings.size {
                return interrupt.needs_reset();
            }
            queue.set_desc_table_address(
                Some(settings.desc as u32),
                Some((settings.desc >> 32) as u32),
            );
            queue.set_avail_ring_address(
                Some(settings.driver as u32),
                Some((settings.driver >> 32) as u32),
            );
            queue.set_used_ring_address(
                Some(settings.device as u32),
                Some((settings.device >> 32) as u32),
            );
            queue.set_event_idx(self.driver_features & super::F_RING_EVENT_IDX != 0);
            queue.set_ready(true);
            if !queue.is_valid(&self.memory) {
                eprintln!(
                    "hangar-vmm: {}: the driver set up queue {index} outside guest memory or with a bad size",
                    self.device.name()
                );
                return interrupt.needs_reset();
            }
            let Ok(kick) = self.kicks[index].try_clone() else {
                return interrupt.needs_reset();
            };
            queues.push(Some(QueueWithKick { queue, kick }));
        }
        let context = ActivateContext {
            memory: self.memory.clone(),
            queues,
            interrupt: interrupt.clone(),
            driver_features: self.driver_features,
        };
        match self.device.activate(context) {
            Ok(thread) => self.thread = Some(thread),
            Err(err) => {
                eprintln!("hangar-vmm: {} cannot start: {err}", self.device.name());
                interrupt.needs_reset();
            }
        }
    }

    /// Keeps the notification ioeventfds where BAR 0 decodes now.
    fn follow_bar(&mut self) {
        let base = self
            .config
            .bar_range(0)
            .map(|(base, _)| base + NOTIFY_OFFSET);
        if base == self.notify_base {
            return;
        }
        let address = |base: u64, queue: usize| {
            IoEventAddress::Mmio(base + queue as u64 * u64::from(NOTIFY_MULTIPLIER))
        };
        if let Some(old) = self.notify_base.take() {
            for (queue, kick) in self.kicks.iter().enumerate() {
                let _ = self
                    .vm
                    .unregister_ioevent(kick, &address(old, queue), NoDatamatch);
            }
        }
        if let Some(new) = base {
            for (queue, kick) in self.kicks.iter().enumerate() {
                if let Err(err) = self
                    .vm
                    .register_ioevent(kick, &address(new, queue), NoDatamatch)
                {
                    // Notifications still arrive as MMIO exits, only slower.
                    eprintln!(
                        "hangar-vmm: {}: no ioeventfd for queue {queue} (fd {}): {err}",
                        self.device.name(),
                        kick.as_raw_fd()
                    );
                }
            }
            self.notify_base = Some(new);
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        let control = self.msix_capability + 2;
        if offset < control + 2 && offset + len > control {
            let bytes = self.config.bytes();
            let value = u16::from_le_bytes([bytes[control], bytes[control + 1]]);
            lock(&self.msix).set_control(value);
        }
        self.follow_bar();
    }

    fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => {
                let image = self.common_image();
                let start = o as usize;
                let end = (start + data.len()).min(image.len());
                data[..end - start].copy_from_slice(&image[start..end]);
            }
            ISR_OFFSET => data[0] = self.isr.swap(0, Ordering::SeqCst),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                lock(&self.msix).read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => lock(&self.msix).read_pba(o - MSIX_PBA_OFFSET, data),
            _ => {}
        }
    }

    fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => self.write_common(o, data),
            o if (DEVICE_OFFSET..DEVICE_OFFSET + DEVICE_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Only reached while no ioeventfd covers the address.
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(kick) = self.kicks.get(queue) {
                    let _ = kick.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                if let Err(err) = lock(&self.msix).write_table(o - MSIX_TABLE_OFFSET, data) {
                    eprintln!("hangar-vmm: {}: {err}", self.device.name());
                }
            }
            _ => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if let Some(mut thread) = self.thread.take() {
            thread.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_sizes_are_capped_by_the_device() {
        assert_eq!(accepted_queue_size(256, 256), Some(256));
        assert_eq!(accepted_queue_size(64, 256), Some(64));
        assert_eq!(accepted_queue_size(512, 256), None);
        assert_eq!(accepted_queue_size(32768, 256), None);
        assert_eq!(accepted_queue_size(0, 256), None);
        assert_eq!(accepted_queue_size(100, 256), None);
        assert_eq!(accepted_queue_size(1, 0), None, "no such queue");
        // The queue the device builds refuses the same sizes.
        let mut queue = Queue::new(256).unwrap();
        queue.set_size(512);
        assert_eq!(queue.size(), 256);
    }
}
