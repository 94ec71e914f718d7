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

/// Longest descriptor chain served, counting the descriptors of an indirect table. Linux
/// sends at most a queue's worth (256 here) in one request; virtio-queue alone would follow an
/// indirect table of up to 65535 descriptors, and a guest could make every request that long.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// The next available chain, or None when the driver has made no more available. virtio-queue
/// also answers None when it refuses the ring's next entry (a head index past the table, or an
/// available index more than a queue ahead); that is an error here, since the entry would stay
/// there and the caller would spin on it for ever.
pub fn pop_chain<'m>(
    queue: &mut Queue,
    memory: &'m GuestMemoryMmap,
    index: usize,
) -> Result<Option<Chain<'m>>, VirtioError> {
    if let Some(chain) = queue.pop_descriptor_chain(memory) {
        return Ok(Some(chain));
    }
    let available = queue
        .avail_idx(memory, std::sync::atomic::Ordering::Acquire)
        .map_err(|err| VirtioError::Queue {
            queue: index,
            reason: err.to_string(),
        })?;
    if available.0 == queue.next_avail() {
        return Ok(None);
    }
    // The driver publishes an entry before the index that covers it, so an entry the index
    // covers now is complete: asking once more settles whether it was only just published.
    match queue.pop_descriptor_chain(memory) {
        Some(chain) => Ok(Some(chain)),
        None => Err(VirtioError::Queue {
            queue: index,
            reason: format!(
                "the available ring (index {}, device at {}) names no usable descriptor chain",
                available.0,
                queue.next_avail()
            ),
        }),
    }
}

/// Refuses a chain longer than [`MAX_CHAIN_DESCRIPTORS`].
pub fn check_chain_length(chain: &Chain<'_>, queue: usize) -> Result<(), VirtioError> {
    if chain.clone().nth(MAX_CHAIN_DESCRIPTORS).is_some() {
        return Err(VirtioError::Queue {
            queue,
            reason: format!("a descriptor chain longer than {MAX_CHAIN_DESCRIPTORS} descriptors"),
        });
    }
    Ok(())
}

/// Serves every chain the driver made available on queue `index`: `serve` handles one chain and
/// returns how many bytes it wrote into it. Then interrupts the driver if the ring asks for it.
/// Notifications stay off while the queue is drained, as the event-index protocol intends.
pub fn drain_queue(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    index: usize,
    interrupt: &Interrupt,
    serve: impl FnMut(Chain<'_>) -> Result<u32, VirtioError>,
) -> Result<(), VirtioError> {
    if serve_available(queue, memory, index, serve)? {
        interrupt.signal_queue(index);
    }
    Ok(())
}

/// The part of [`drain_queue`] that needs no KVM: serves the available chains and returns
/// whether the driver should be interrupted. A chain longer than [`MAX_CHAIN_DESCRIPTORS`] is
/// malformed.
pub fn serve_available(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    index: usize,
    mut serve: impl FnMut(Chain<'_>) -> Result<u32, VirtioError>,
) -> Result<bool, VirtioError> {
    let malformed = |err: virtio_queue::Error| VirtioError::Queue {
        queue: index,
        reason: err.to_string(),
    };
    let mut used_any = false;
    loop {
        queue.disable_notification(memory).map_err(malformed)?;
        while let Some(chain) = pop_chain(queue, memory, index)? {
            let head = chain.head_index();
            check_chain_length(&chain, index)?;
            let written = serve(chain)?;
            queue.add_used(memory, head, written).map_err(malformed)?;
            used_any = true;
        }
        if !queue.enable_notification(memory).map_err(malformed)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(memory).map_err(malformed)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const TABLE: u64 = 0x1_0000;
    const DATA: u64 = 0x8_0000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A queue whose one chain is an indirect table of `len` 4-byte buffers.
    fn indirect_chain(memory: &GuestMemoryMmap, len: usize) -> Queue {
        for i in 0..len {
            let flags = if i + 1 < len {
                VRING_DESC_F_NEXT as u16
            } else {
                0
            };
            let desc = Descriptor::new(DATA + 4 * i as u64, 4, flags, (i + 1) as u16);
            memory
                .write_obj(
                    RawDescriptor::from(desc),
                    GuestAddress(TABLE + 16 * i as u64),
                )
                .unwrap();
        }
        let mock = MockSplitQueue::new(memory, 16);
        let head = Descriptor::new(TABLE, 16 * len as u32, VRING_DESC_F_INDIRECT as u16, 0);
        mock.add_desc_chains(&[RawDescriptor::from(head)], 0)
            .unwrap();
        mock.create_queue().unwrap()
    }

    #[test]
    fn chains_longer_than_the_cap_are_refused_unread() {
        let memory = memory();
        let mut queue = indirect_chain(&memory, MAX_CHAIN_DESCRIPTORS + 1);
        let mut served = 0;
        let result = serve_available(&mut queue, &memory, 0, |_| {
            served += 1;
            Ok(0)
        });
        assert!(
            matches!(&result, Err(VirtioError::Queue { reason, .. }) if reason.contains("longer than")),
            "{:?}",
            result.err()
        );
        assert_eq!(served, 0);
    }

    #[test]
    fn a_ring_naming_a_descriptor_past_the_table_is_an_error_not_a_hang() {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        mock.avail().ring().ref_at(0).unwrap().store(200);
        mock.avail().idx().store(1);
        let mut queue: Queue = mock.create_queue().unwrap();
        assert!(serve_available(&mut queue, &memory, 0, |_| Ok(0)).is_err());
    }

    /// Found by the virtio_blk fuzz target: a read request's writable buffer overlapped the
    /// rings, the data the device wrote left the available index more than a queue ahead,
    /// virtio-queue refused the ring without consuming it, and the drain loop spun for ever.
    #[test]
    fn an_available_index_a_queue_ahead_is_an_error_not_a_hang() {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        mock.avail().idx().store(1000);
        let mut queue: Queue = mock.create_queue().unwrap();
        assert!(serve_available(&mut queue, &memory, 0, |_| Ok(0)).is_err());
    }

    #[test]
    fn chains_up_to_the_cap_are_served() {
        let memory = memory();
        let mut queue = indirect_chain(&memory, MAX_CHAIN_DESCRIPTORS);
        let mut lengths = Vec::new();
        let result = serve_available(&mut queue, &memory, 0, |chain| {
            lengths.push(chain.count());
            Ok(0)
        });
        assert!(result.is_ok());
        assert_eq!(lengths, vec![MAX_CHAIN_DESCRIPTORS]);
    }
}
