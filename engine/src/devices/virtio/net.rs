//! virtio-net (virtio 1.2, 5.1): one receive and one transmit queue over a [`NetBackend`]. The
//! device offers passt's 65520-byte MTU, so Linux posts big receive buffers and moves large
//! frames with few exits.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::worker::{DeviceThread, QueueHandler};
use super::{
    drain_queue, ActivateContext, Interrupt, Queue, QueueT, VirtioDevice, VirtioError,
    F_RING_EVENT_IDX, F_VERSION_1, TYPE_NET,
};
use crate::devices::lock;
use crate::net::{NetBackend, MAX_FRAME};
use crate::protocol::NetStats;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// virtio_net_hdr_v1: flags, gso type, header length, gso size, checksum start and offset,
/// number of buffers.
pub const HEADER_LEN: usize = 12;
const MTU: u16 = (MAX_FRAME - 16) as u16;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const STATUS_LINK_UP: u16 = 1;

/// Counters `stats` reports for one NIC.
#[derive(Default)]
pub struct NetCounters {
    rx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    rx_dropped: AtomicU64,
    tx_dropped: AtomicU64,
}

impl NetCounters {
    pub fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_bytes: get(&self.rx_bytes),
            rx_packets: get(&self.rx_packets),
            tx_bytes: get(&self.tx_bytes),
            tx_packets: get(&self.tx_packets),
            rx_dropped: get(&self.rx_dropped),
            tx_dropped: get(&self.tx_dropped),
        }
    }
}

pub struct Net {
    backend: Arc<Mutex<NetBackend>>,
    counters: Arc<NetCounters>,
    config: [u8; 12],
}

impl Net {
    pub fn new(backend: Arc<Mutex<NetBackend>>, counters: Arc<NetCounters>, mac: [u8; 6]) -> Net {
        let mut config = [0u8; 12];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&MTU.to_le_bytes());
        Net {
            backend,
            counters,
            config,
        }
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "virtio-net"
    }
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn pci_class(&self) -> u32 {
        0x02_00_00
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_RING_EVENT_IDX | F_MAC | F_STATUS | F_MTU
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, mut context: ActivateContext) -> Result<DeviceThread, VirtioError> {
        let mut take = |index: usize| {
            context
                .queues
                .get_mut(index)
                .and_then(Option::take)
                .ok_or_else(|| VirtioError::Backend(format!("the driver left queue {index} off")))
        };
        let (rx, tx) = (take(RX)?, take(TX)?);
        let handler = NetQueues {
            memory: context.memory,
            rx: rx.queue,
            tx: tx.queue,
            interrupt: context.interrupt.clone(),
            backend: self.backend.clone(),
            backend_fd: lock(&self.backend).fd(),
            counters: self.counters.clone(),
            pending: None,
            dead: false,
        };
        DeviceThread::spawn(
            self.name(),
            vec![(RX, rx.kick), (TX, tx.kick)],
            handler,
            context.interrupt,
        )
    }
}

struct NetQueues {
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Interrupt,
    backend: Arc<Mutex<NetBackend>>,
    backend_fd: std::os::fd::RawFd,
    counters: Arc<NetCounters>,
    /// A frame that arrived while the guest had no receive buffer.
    pending: Option<Vec<u8>>,
    /// The back-end failed (passt went away); the NIC stays, silent, until the VM restarts.
    dead: bool,
}

fn malformed(queue: usize) -> impl Fn(virtio_queue::Error) -> VirtioError {
    move |err| VirtioError::Queue {
        queue,
        reason: err.to_string(),
    }
}

/// The guest's next receive buffer. When there is none, asks the driver (through the event
/// index) to kick the queue once it posts more.
fn receive_buffer<'m>(
    rx: &mut Queue,
    memory: &'m GuestMemoryMmap,
) -> Result<Option<super::Chain<'m>>, VirtioError> {
    if let Some(chain) = super::pop_chain(rx, memory, RX)? {
        return Ok(Some(chain));
    }
    if rx.enable_notification(memory).map_err(malformed(RX))? {
        return super::pop_chain(rx, memory, RX);
    }
    Ok(None)
}

impl NetQueues {
    fn next_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(frame) = self.pending.take() {
            return Some(frame);
        }
        if self.dead {
            return None;
        }
        match lock(&self.backend).receive() {
            Ok(frame) => frame,
            Err(err) => {
                eprintln!("hangar-vmm: virtio-net: {err}; the NIC is down until the VM restarts");
                self.dead = true;
                None
            }
        }
    }

    /// Moves frames from the back-end into the guest's receive buffers, until either runs out.
    fn receive(&mut self) -> Result<(), VirtioError> {
        let mut used_any = false;
        while let Some(frame) = self.next_frame() {
            let Some(chain) = receive_buffer(&mut self.rx, &self.memory)? else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let written = receive_into(chain, &self.memory, &frame, &self.counters)?;
            self.rx
                .add_used(&self.memory, head, written)
                .map_err(malformed(RX))?;
            used_any = true;
        }
        if used_any
            && self
                .rx
                .needs_notification(&self.memory)
                .map_err(malformed(RX))?
        {
            self.interrupt.signal_queue(RX);
        }
        Ok(())
    }

    fn transmit(&mut self) -> Result<(), VirtioError> {
        let NetQueues {
            memory,
            tx,
            interrupt,
            backend,
            counters,
            dead,
            ..
        } = self;
        drain_queue(tx, memory, TX, interrupt, |chain| {
            transmit_chain(chain, memory, counters, |frame| {
                !*dead && lock(backend).send(frame).is_ok()
            })
        })
    }
}

/// Puts one frame, behind its virtio-net header, into one receive buffer; returns the bytes
/// written. A buffer too small for the frame drops it, as a NIC does.
pub fn receive_into(
    chain: super::Chain<'_>,
    memory: &GuestMemoryMmap,
    frame: &[u8],
    counters: &NetCounters,
) -> Result<u32, VirtioError> {
    let request = |err: virtio_queue::Error| VirtioError::Request {
        queue: RX,
        reason: err.to_string(),
    };
    super::check_chain_length(&chain, RX)?;
    let mut writer = chain.writer(memory).map_err(request)?;
    if frame.len() > MAX_FRAME || writer.available_bytes() < HEADER_LEN + frame.len() {
        counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
        return Ok(0);
    }
    let mut header = [0u8; HEADER_LEN];
    header[10..12].copy_from_slice(&1u16.to_le_bytes());
    writer
        .write_all(&header)
        .and_then(|()| writer.write_all(frame))
        .map_err(|err| VirtioError::Request {
            queue: RX,
            reason: err.to_string(),
        })?;
    counters.rx_packets.fetch_add(1, Ordering::Relaxed);
    counters
        .rx_bytes
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    Ok((HEADER_LEN + frame.len()) as u32)
}

/// Takes one frame the guest sent (a virtio-net header, then the frame) and hands it to `send`,
/// which says whether the back-end took it. A chain shorter than the header or longer than
/// the header plus [`MAX_FRAME`] is dropped without reading it, so a frame never takes more
/// memory than that.
pub fn transmit_chain(
    chain: super::Chain<'_>,
    memory: &GuestMemoryMmap,
    counters: &NetCounters,
    send: impl FnOnce(&[u8]) -> bool,
) -> Result<u32, VirtioError> {
    let request = |err: std::io::Error| VirtioError::Request {
        queue: TX,
        reason: err.to_string(),
    };
    let mut reader = chain.reader(memory).map_err(|err| VirtioError::Request {
        queue: TX,
        reason: err.to_string(),
    })?;
    let len = reader.available_bytes();
    if !(HEADER_LEN..=HEADER_LEN + MAX_FRAME).contains(&len) {
        counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
        return Ok(0);
    }
    let mut packet = vec![0u8; len];
    reader.read_exact(&mut packet).map_err(request)?;
    let frame = &packet[HEADER_LEN..];
    if send(frame) {
        counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        counters
            .tx_bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    } else {
        counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
    }
    Ok(0)
}

impl QueueHandler for NetQueues {
    fn queue_kicked(&mut self, index: usize) -> Result<(), VirtioError> {
        match index {
            RX => self.receive(),
            _ => self.transmit(),
        }
    }

    fn backend_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.backend_fd]
    }

    fn backend_ready(&mut self, _index: usize) -> Result<(), VirtioError> {
        self.receive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    #[test]
    fn transmit_sends_the_frame_behind_the_header() {
        let memory = memory();
        memory.write_slice(b"frame", GuestAddress(DATA)).unwrap();
        let queue = MockSplitQueue::new(&memory, 16);
        let chain = queue
            .build_desc_chain(&[desc(HEADER, HEADER_LEN as u32, 0), desc(DATA, 5, 0)])
            .unwrap();
        let counters = NetCounters::default();
        let mut sent = Vec::new();
        transmit_chain(chain, &memory, &counters, |frame| {
            sent.push(frame.to_vec());
            true
        })
        .unwrap();
        assert_eq!(sent, vec![b"frame".to_vec()]);
        assert_eq!(counters.snapshot().tx_bytes, 5);
    }

    #[test]
    fn transmitted_frames_over_the_cap_are_dropped_unread() {
        let memory = memory();
        let queue = MockSplitQueue::new(&memory, 16);
        let chain = queue
            .build_desc_chain(&[
                desc(HEADER, HEADER_LEN as u32, 0),
                desc(DATA, MAX_FRAME as u32 + 1, 0),
            ])
            .unwrap();
        let counters = NetCounters::default();
        let written = transmit_chain(chain, &memory, &counters, |_| panic!("sent")).unwrap();
        assert_eq!(written, 0);
        assert_eq!(counters.snapshot().tx_dropped, 1);
    }

    #[test]
    fn received_frames_get_a_header_or_are_dropped_when_they_do_not_fit() {
        let memory = memory();
        let counters = NetCounters::default();
        let queue = MockSplitQueue::new(&memory, 16);
        let chain = queue.build_desc_chain(&[desc(DATA, 1526, WRITE)]).unwrap();
        let written = receive_into(chain, &memory, b"hello", &counters).unwrap();
        assert_eq!(written as usize, HEADER_LEN + 5);
        let mut bytes = [0u8; HEADER_LEN + 5];
        memory.read_slice(&mut bytes, GuestAddress(DATA)).unwrap();
        assert_eq!(&bytes[10..12], &1u16.to_le_bytes(), "num_buffers");
        assert_eq!(&bytes[HEADER_LEN..], b"hello");
        // A buffer too small, and a frame over the cap however big the buffer.
        let chain = queue.build_desc_chain(&[desc(DATA, 16, WRITE)]).unwrap();
        assert_eq!(
            receive_into(chain, &memory, b"hello", &counters).unwrap(),
            0
        );
        let chain = queue
            .build_desc_chain(&[desc(DATA, 0x10_0000, WRITE)])
            .unwrap();
        let too_big = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            receive_into(chain, &memory, &too_big, &counters).unwrap(),
            0
        );
        assert_eq!(counters.snapshot().rx_dropped, 2);
    }
}
