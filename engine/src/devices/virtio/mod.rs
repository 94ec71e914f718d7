//! virtio devices on the modern PCI transport. A device model implements [`VirtioDevice`]: its
//! features and configuration, and what to do with its queues once the driver is ready. The
//! transport ([`pci::VirtioPciDevice`]) does feature negotiation, queue set-up, notifications
//! (ioeventfd) and interrupts (MSI-X).

pub mod balloon;
pub mod block;
pub mod input;
pub mod net;
pub mod pci;
pub mod rng;
pub mod worker;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;
use crate::devices::pci::msix::MsixTable;

pub use virtio_queue::{DescriptorChain, Queue, QueueT};

/// Device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_INPUT: u32 = 18;

/// Feature bits every Hangar device offers.
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// MSI-X "no vector".
pub const NO_VECTOR: u16 = 0xffff;

/// Why a device stopped serving its queues. The device then asks the driver for a reset; the
/// worker and the guest keep running.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("malformed virtqueue {queue}: {reason}")]
    Queue { queue: usize, reason: String },
    #[error("malformed request on queue {queue}: {reason}")]
    Request { queue: usize, reason: String },
    #[error("device back-end failed: {0}")]
    Backend(String),
}

/// What a device model provides to the transport.
pub trait VirtioDevice: Send {
    /// Short name for thread names and logs ("virtio-blk").
    fn name(&self) -> &'static str;
    fn device_type(&self) -> u32;
    /// PCI class code (base class, subclass, interface).
    fn pci_class(&self) -> u32;
    fn features(&self) -> u64;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start serving. Returns the thread that serves the queues.
    fn activate(&mut self, context: ActivateContext) -> Result<worker::DeviceThread, VirtioError>;
}

/// One ready queue and the eventfd the guest kicks it with.
pub struct QueueWithKick {
    pub queue: Queue,
    pub kick: EventFd,
}

/// Everything a device needs to serve its queues.
pub struct ActivateContext {
    pub memory: GuestMemoryMmap,
    /// Queues in order; a queue the driver left disabled is `None`.
    pub queues: Vec<Option<QueueWithKick>>,
    pub interrupt: Interrupt,
    pub driver_features: u64,
}

/// Raises a device's interrupts. Cloned into the device's thread.
#[derive(Clone)]
pub struct Interrupt {
    msix: Arc<Mutex<MsixTable>>,
    queue_vectors: Vec<u16>,
    config_vector: Arc<Mutex<u16>>,
    isr: Arc<AtomicU8>,
    status: Arc<AtomicU8>,
}

/// ISR bits.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

impl Interrupt {
    /// Signals that queue `index` has used buffers.
    pub fn signal_queue(&self, index: usize) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::SeqCst);
        if let Some(&vector) = self.queue_vectors.get(index) {
            if vector != NO_VECTOR {
                lock(&self.msix).notify(vector);
            }
        }
    }

    /// Signals a configuration change.
    pub fn signal_config(&self) {
        self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
        let vector = *lock(&self.config_vector);
        if vector != NO_VECTOR {
            lock(&self.msix).notify(vector);
        }
    }

    /// Puts the device in the error state: the driver sees DEVICE_NEEDS_RESET on its next
    /// status read and through a configuration interrupt.
    pub fn needs_reset(&self) {
        self.status.fetch_or(STATUS_NEEDS_RESET, Ordering::SeqCst);
        self.signal_config();
    }
}

/// A chain popped from a queue, borrowing guest memory.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Serves every chain the driver made available on queue `index`: `serve` handles one chain and
/// returns how many bytes it wrote into it. Then interrupts the driver if the ring asks for it.
/// Notifications stay off while the queue is drained, as the event-index protocol intends.
pub fn drain_queue(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    index: usize,
    interrupt: &Interrupt,
    mut serve: impl FnMut(Chain<'_>) -> Result<u32, VirtioError>,
) -> Result<(), VirtioError> {
    let malformed = |err: virtio_queue::Error| VirtioError::Queue {
        queue: index,
        reason: err.to_string(),
    };
    let mut used_any = false;
    loop {
        queue.disable_notification(memory).map_err(malformed)?;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let written = serve(chain)?;
            queue.add_used(memory, head, written).map_err(malformed)?;
            used_any = true;
        }
        if !queue.enable_notification(memory).map_err(malformed)? {
            break;
        }
    }
    if used_any && queue.needs_notification(memory).map_err(malformed)? {
        interrupt.signal_queue(index);
    }
    Ok(())
}
