//! What the fuzz targets share: a guest's memory with a split virtqueue in it, built from fuzz
//! input the way a driver would lay it out (virtio-queue's mock queue, as the engine's unit
//! tests use it), and a cursor that takes typed values from the input.

use std::path::PathBuf;

use hangar_engine::devices::virtio::Queue;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory every target gets: enough for a 256-entry queue and its buffers.
pub const MEMORY_SIZE: usize = 1 << 20;
/// Where buffers start, past the rings of the largest queue.
pub const DATA_START: u64 = 0x1_0000;

/// Takes values from the fuzz input; past its end every value is zero.
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.bytes.len())
    }

    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
}

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEMORY_SIZE)]).expect("guest memory")
}

/// One buffer of a chain as the fuzzer describes it.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub len: u32,
    pub writable: bool,
    /// 12 to 15 put it somewhere odd: straddling the end of guest memory, past the end of the
    /// address space, on the rings, or outside guest memory.
    pub misplaced: Option<u8>,
}

/// Builds chains of buffers, placed one after another from [`DATA_START`], into a queue of
/// `size` entries at address 0, and returns the queue the device sees plus each buffer's
/// address. `indirect` puts each chain in an indirect table instead.
pub struct QueueBuilder<'m> {
    memory: &'m GuestMemoryMmap,
    size: u16,
    descs: Vec<RawDescriptor>,
    cursor: u64,
    indirect: bool,
    pub addresses: Vec<Vec<u64>>,
}

impl<'m> QueueBuilder<'m> {
    pub fn new(memory: &'m GuestMemoryMmap, size: u16, indirect: bool) -> Self {
        QueueBuilder {
            memory,
            size,
            descs: Vec::new(),
            cursor: DATA_START,
            indirect,
            addresses: Vec::new(),
        }
    }

    fn place(&mut self, buffer: &Buffer) -> u64 {
        match buffer.misplaced {
            None | Some(0..=11) => {
                let addr = self.cursor;
                self.cursor = (self.cursor + u64::from(buffer.len) + 15) & !15;
                addr
            }
            Some(12) => MEMORY_SIZE as u64 - 8,
            Some(13) => u64::MAX - 3,
            Some(14) => 0,
            Some(_) => (MEMORY_SIZE as u64) << 4,
        }
    }

    /// Adds a chain; returns false when the descriptor table is full.
    pub fn chain(&mut self, buffers: &[Buffer]) -> bool {
        if buffers.is_empty() {
            return true;
        }
        let addresses: Vec<u64> = buffers.iter().map(|b| self.place(b)).collect();
        let raw = |i: usize, next: u16, last: bool| {
            let b = &buffers[i];
            let mut flags = if b.writable {
                virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(Descriptor::new(addresses[i], b.len, flags, next))
        };
        if self.indirect {
            if self.descs.len() >= usize::from(self.size) {
                return false;
            }
            let table = self.cursor;
            let n = buffers.len();
            for i in 0..n {
                let desc = raw(i, (i + 1) as u16, i + 1 == n);
                if self
                    .memory
                    .write_obj(desc, GuestAddress(table + 16 * i as u64))
                    .is_err()
                {
                    return false;
                }
            }
            self.cursor += 16 * n as u64;
            self.descs.push(RawDescriptor::from(Descriptor::new(
                table,
                16 * n as u32,
                VRING_DESC_F_INDIRECT as u16,
                0,
            )));
        } else {
            if self.descs.len() + buffers.len() > usize::from(self.size) {
                return false;
            }
            let base = self.descs.len();
            for i in 0..buffers.len() {
                let desc = raw(i, (base + i + 1) as u16, i + 1 == buffers.len());
                self.descs.push(desc);
            }
        }
        self.addresses.push(addresses);
        true
    }

    /// Writes the descriptor table and available ring, and returns the device's queue.
    pub fn build(self, event_idx: bool) -> Option<Queue> {
        use hangar_engine::devices::virtio::QueueT;
        let mock = MockSplitQueue::new(self.memory, self.size);
        if !self.descs.is_empty() {
            mock.add_desc_chains(&self.descs, 0).ok()?;
        }
        let mut queue: Queue = mock.create_queue().ok()?;
        queue.set_event_idx(event_idx);
        Some(queue)
    }
}

/// A directory of its own for this fuzzer process, emptied at start.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hangar-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}
