//! virtio-blk (virtio 1.2, 5.2) over a [`Disk`]: reads, writes, flush, discard, write-zeroes and
//! the serial (GET_ID). Requests are served in order on the device's thread; a flush returns
//! only once the data is on the host's stable storage.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;

use super::worker::{DeviceThread, QueueHandler};
use super::{
    drain_queue, ActivateContext, Chain, Interrupt, Queue, VirtioDevice, VirtioError,
    F_RING_EVENT_IDX, F_VERSION_1, TYPE_BLOCK,
};
use crate::devices::lock;
use crate::disk::{Disk, MAX_SERIAL_LEN};
use crate::protocol::DiskStats;

const QUEUE_SIZE: u16 = 256;
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer served in one request, so that a guest cannot make the worker allocate
/// without bound; a larger request fails with an I/O error. Linux stays far below it (its
/// requests are at most a few MiB).
pub const MAX_TRANSFER: usize = 64 << 20;
/// Discard and write-zeroes ranges per request.
const MAX_DISCARD_SEGMENTS: u32 = 32;
/// Sectors per discard or write-zeroes range.
const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Counters `stats` reports for one disk.
#[derive(Default)]
pub struct BlockCounters {
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    read_requests: AtomicU64,
    write_requests: AtomicU64,
    flushes: AtomicU64,
    errors: AtomicU64,
}

impl BlockCounters {
    pub fn snapshot(&self, path: &std::path::Path) -> DiskStats {
        DiskStats {
            path: path.to_path_buf(),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            read_requests: self.read_requests.load(Ordering::Relaxed),
            write_requests: self.write_requests.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

pub struct Block {
    disk: Arc<Mutex<Disk>>,
    counters: Arc<BlockCounters>,
    config: [u8; 60],
    readonly: bool,
}

impl Block {
    pub fn new(disk: Arc<Mutex<Disk>>, counters: Arc<BlockCounters>) -> Self {
        let (size, readonly) = {
            let disk = lock(&disk);
            (disk.size(), disk.readonly)
        };
        let mut config = [0u8; 60];
        config[0..8].copy_from_slice(&(size / SECTOR_SIZE).to_le_bytes());
        config[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        config[34..36].copy_from_slice(&1u16.to_le_bytes());
        config[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        config[44..48].copy_from_slice(&1u32.to_le_bytes());
        config[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&MAX_DISCARD_SEGMENTS.to_le_bytes());
        config[56] = 1;
        Block {
            disk,
            counters,
            config,
            readonly,
        }
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn pci_class(&self) -> u32 {
        0x01_80_00
    }
    fn features(&self) -> u64 {
        let base = F_VERSION_1 | F_RING_EVENT_IDX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.readonly {
            base | F_RO
        } else {
            base | F_DISCARD | F_WRITE_ZEROES
        }
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, mut context: ActivateContext) -> Result<DeviceThread, VirtioError> {
        let Some(queue) = context.queues.first_mut().and_then(Option::take) else {
            return Err(VirtioError::Backend(
                "the driver did not enable the queue".into(),
            ));
        };
        let handler = BlockQueue {
            memory: context.memory,
            queue: queue.queue,
            interrupt: context.interrupt.clone(),
            disk: self.disk.clone(),
            counters: self.counters.clone(),
        };
        DeviceThread::spawn(
            self.name(),
            vec![(0, queue.kick)],
            handler,
            context.interrupt,
        )
    }
}

struct BlockQueue {
    memory: GuestMemoryMmap,
    queue: Queue,
    interrupt: Interrupt,
    disk: Arc<Mutex<Disk>>,
    counters: Arc<BlockCounters>,
}

/// A request's header: type and first sector.
struct RequestHeader {
    kind: u32,
    sector: u64,
}

impl QueueHandler for BlockQueue {
    fn queue_kicked(&mut self, index: usize) -> Result<(), VirtioError> {
        let BlockQueue {
            memory,
            queue,
            interrupt,
            disk,
            counters,
        } = self;
        drain_queue(queue, memory, index, interrupt, |chain| {
            serve_request(chain, memory, disk, counters)
        })
    }
}

fn malformed(reason: impl ToString) -> VirtioError {
    VirtioError::Request {
        queue: 0,
        reason: reason.to_string(),
    }
}

/// Serves one request; returns the bytes written into the chain (data plus the status byte).
/// A request that does not follow the protocol is an error; a failing disk, a range outside it
/// or a transfer over [`MAX_TRANSFER`] is an I/O status.
pub fn serve_request(
    chain: Chain<'_>,
    memory: &GuestMemoryMmap,
    disk: &Mutex<Disk>,
    counters: &BlockCounters,
) -> Result<u32, VirtioError> {
    let mut reader = chain.clone().reader(memory).map_err(malformed)?;
    let mut writer = chain.writer(memory).map_err(malformed)?;
    let mut header = [0u8; 16];
    reader
        .read_exact(&mut header)
        .map_err(|_| malformed("a request shorter than its 16-byte header"))?;
    let header = RequestHeader {
        kind: u32::from_le_bytes(header[0..4].try_into().unwrap()),
        sector: u64::from_le_bytes(header[8..16].try_into().unwrap()),
    };
    let data_len = writer
        .available_bytes()
        .checked_sub(1)
        .ok_or_else(|| malformed("a request with no room for its status byte"))?;
    let mut status_writer = writer.split_at(data_len).map_err(malformed)?;
    let mut disk = lock(disk);
    let (status, written) = match header.kind {
        T_IN => read(&header, &mut writer, data_len, &disk, counters)?,
        T_OUT => (write(&header, &mut reader, &disk, counters)?, 0),
        T_FLUSH => {
            counters.flushes.fetch_add(1, Ordering::Relaxed);
            (io_status(disk.flush(), counters), 0)
        }
        T_GET_ID => {
            let mut id = [0u8; MAX_SERIAL_LEN];
            if let Some(serial) = &disk.serial {
                id[..serial.len()].copy_from_slice(serial.as_bytes());
            }
            let n = data_len.min(MAX_SERIAL_LEN);
            writer.write_all(&id[..n]).map_err(malformed)?;
            (S_OK, n as u32)
        }
        T_DISCARD | T_WRITE_ZEROES if !disk.readonly => {
            (discard(&header, &mut reader, &mut disk, counters)?, 0)
        }
        _ => (S_UNSUPP, 0),
    };
    status_writer.write_all(&[status]).map_err(malformed)?;
    Ok(written + 1)
}

fn io_status(result: Result<(), crate::disk::DiskError>, counters: &BlockCounters) -> u8 {
    match result {
        Ok(()) => S_OK,
        Err(err) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("hangar-vmm: {err}");
            S_IOERR
        }
    }
}

/// The byte range a request covers, if it lies inside the disk.
fn byte_range(sector: u64, len: u64, disk: &Disk) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    (offset.checked_add(len)? <= disk.size()).then_some(offset)
}

fn read(
    header: &RequestHeader,
    writer: &mut virtio_queue::Writer<'_>,
    len: usize,
    disk: &Disk,
    counters: &BlockCounters,
) -> Result<(u8, u32), VirtioError> {
    if len > MAX_TRANSFER {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return Ok((S_IOERR, 0));
    }
    let Some(offset) = byte_range(header.sector, len as u64, disk) else {
        return Ok((S_IOERR, 0));
    };
    let mut buffer = vec![0u8; len];
    let status = io_status(disk.read_at(&mut buffer, offset), counters);
    if status != S_OK {
        return Ok((status, 0));
    }
    writer.write_all(&buffer).map_err(malformed)?;
    counters.read_requests.fetch_add(1, Ordering::Relaxed);
    counters.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
    Ok((S_OK, len as u32))
}

fn write(
    header: &RequestHeader,
    reader: &mut virtio_queue::Reader<'_>,
    disk: &Disk,
    counters: &BlockCounters,
) -> Result<u8, VirtioError> {
    let len = reader.available_bytes();
    if len > MAX_TRANSFER {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return Ok(S_IOERR);
    }
    if disk.readonly {
        return Ok(S_IOERR);
    }
    let Some(offset) = byte_range(header.sector, len as u64, disk) else {
        return Ok(S_IOERR);
    };
    let mut buffer = vec![0u8; len];
    reader.read_exact(&mut buffer).map_err(malformed)?;
    let status = io_status(disk.write_at(&buffer, offset), counters);
    if status == S_OK {
        counters.write_requests.fetch_add(1, Ordering::Relaxed);
        counters
            .write_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }
    Ok(status)
}

/// Discard and write-zeroes: a list of 16-byte ranges (sector, count, flags).
fn discard(
    header: &RequestHeader,
    reader: &mut virtio_queue::Reader<'_>,
    disk: &mut Disk,
    counters: &BlockCounters,
) -> Result<u8, VirtioError> {
    let segments = reader.available_bytes() / 16;
    if segments == 0 || segments > MAX_DISCARD_SEGMENTS as usize {
        return Ok(S_IOERR);
    }
    for _ in 0..segments {
        let mut segment = [0u8; 16];
        reader.read_exact(&mut segment).map_err(malformed)?;
        let sector = u64::from_le_bytes(segment[0..8].try_into().unwrap());
        let count = u32::from_le_bytes(segment[8..12].try_into().unwrap());
        if count > MAX_DISCARD_SECTORS {
            return Ok(S_IOERR);
        }
        let len = u64::from(count) * SECTOR_SIZE;
        let Some(offset) = byte_range(sector, len, disk) else {
            return Ok(S_IOERR);
        };
        let result = if header.kind == T_WRITE_ZEROES {
            disk.write_zeroes(offset, len)
        } else {
            disk.discard(offset, len)
        };
        let status = io_status(result, counters);
        if status != S_OK {
            return Ok(status);
        }
    }
    Ok(S_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::DiskSpec;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    struct Fixture {
        memory: GuestMemoryMmap,
        disk: Mutex<Disk>,
        counters: BlockCounters,
        _dir: std::path::PathBuf,
    }

    fn fixture(readonly: bool) -> Fixture {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hangar-blk-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let mut bytes = vec![0u8; 64 * 1024];
        bytes[512..517].copy_from_slice(b"HELLO");
        std::fs::write(&path, bytes).unwrap();
        let spec = DiskSpec {
            path,
            format: None,
            readonly,
            serial: Some("unit-serial".into()),
        };
        Fixture {
            memory: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap(),
            disk: Mutex::new(Disk::open(&spec).unwrap()),
            counters: BlockCounters::default(),
            _dir: dir,
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self._dir);
        }
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    impl Fixture {
        fn header(&self, kind: u32, sector: u64) {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&kind.to_le_bytes());
            header[8..16].copy_from_slice(&sector.to_le_bytes());
            self.memory
                .write_slice(&header, GuestAddress(HEADER))
                .unwrap();
        }

        /// Serves one request built from `descs`; returns the result and the status byte.
        fn serve(&self, descs: &[RawDescriptor]) -> (Result<u32, VirtioError>, u8) {
            self.memory.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let queue = MockSplitQueue::new(&self.memory, 16);
            let chain = queue.build_desc_chain(descs).unwrap();
            let result = serve_request(chain, &self.memory, &self.disk, &self.counters);
            (result, self.memory.read_obj(GuestAddress(STATUS)).unwrap())
        }
    }

    #[test]
    fn reads_land_in_guest_memory_with_a_status() {
        let f = fixture(false);
        f.header(T_IN, 1);
        let (result, status) = f.serve(&[
            desc(HEADER, 16, 0),
            desc(DATA, 512, WRITE),
            desc(STATUS, 1, WRITE),
        ]);
        assert_eq!((result.unwrap(), status), (513, S_OK));
        let mut data = [0u8; 5];
        f.memory.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert_eq!(&data, b"HELLO");
        assert_eq!(
            f.counters.snapshot(std::path::Path::new("")).read_bytes,
            512
        );
    }

    #[test]
    fn out_of_range_sectors_are_io_errors() {
        let f = fixture(false);
        f.header(T_IN, 127);
        let descs = [
            desc(HEADER, 16, 0),
            desc(DATA, 1024, WRITE),
            desc(STATUS, 1, WRITE),
        ];
        assert_eq!(f.serve(&descs).1, S_IOERR);
        f.header(T_IN, u64::MAX / 2);
        assert_eq!(f.serve(&descs).1, S_IOERR, "sector * 512 overflows");
    }

    #[test]
    fn writes_to_a_read_only_disk_fail_and_flush_and_get_id_work() {
        let f = fixture(true);
        f.header(T_OUT, 0);
        let (_, status) = f.serve(&[
            desc(HEADER, 16, 0),
            desc(DATA, 512, 0),
            desc(STATUS, 1, WRITE),
        ]);
        assert_eq!(status, S_IOERR);
        f.header(T_FLUSH, 0);
        assert_eq!(
            f.serve(&[desc(HEADER, 16, 0), desc(STATUS, 1, WRITE)]).1,
            S_OK
        );
        f.header(T_GET_ID, 0);
        let (result, status) = f.serve(&[
            desc(HEADER, 16, 0),
            desc(DATA, 20, WRITE),
            desc(STATUS, 1, WRITE),
        ]);
        assert_eq!((result.unwrap(), status), (21, S_OK));
        let mut id = [0u8; 11];
        f.memory.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"unit-serial");
        f.header(99, 0);
        assert_eq!(
            f.serve(&[desc(HEADER, 16, 0), desc(STATUS, 1, WRITE)]).1,
            S_UNSUPP
        );
    }

    #[test]
    fn malformed_chains_are_errors_not_panics() {
        let f = fixture(false);
        f.header(T_IN, 0);
        // No status byte.
        assert!(f.serve(&[desc(HEADER, 16, 0)]).0.is_err());
        // A header shorter than 16 bytes.
        assert!(f
            .serve(&[desc(HEADER, 8, 0), desc(STATUS, 1, WRITE)])
            .0
            .is_err());
        // A buffer outside guest memory.
        let outside = [
            desc(HEADER, 16, 0),
            desc(0x10_0000 - 8, 512, WRITE),
            desc(STATUS, 1, WRITE),
        ];
        assert!(f.serve(&outside).0.is_err());
        // Zero-length descriptors.
        let (result, _) = f.serve(&[
            desc(HEADER, 16, 0),
            desc(DATA, 0, WRITE),
            desc(STATUS, 1, WRITE),
        ]);
        assert_eq!(result.unwrap(), 1);
    }

    #[test]
    fn transfers_over_the_cap_are_io_errors_not_allocations() {
        let f = fixture(false);
        // Room for a transfer just over the cap; the mapping is never touched.
        let size = MAX_TRANSFER + (1 << 20);
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let len = (MAX_TRANSFER + 512) as u32;
        for (kind, data_flags) in [(T_IN, WRITE), (T_OUT, 0)] {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&kind.to_le_bytes());
            memory.write_slice(&header, GuestAddress(HEADER)).unwrap();
            memory.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let queue = MockSplitQueue::new(&memory, 16);
            let chain = queue
                .build_desc_chain(&[
                    desc(HEADER, 16, 0),
                    desc(DATA + 0x2_0000, len, data_flags),
                    desc(STATUS, 1, WRITE),
                ])
                .unwrap();
            let written = serve_request(chain, &memory, &f.disk, &f.counters).unwrap();
            let status: u8 = memory.read_obj(GuestAddress(STATUS)).unwrap();
            assert_eq!((written, status), (1, S_IOERR), "request type {kind}");
        }
        let stats = f.counters.snapshot(std::path::Path::new(""));
        assert_eq!(
            (stats.errors, stats.read_bytes, stats.write_bytes),
            (2, 0, 0)
        );
    }

    #[test]
    fn a_looping_chain_ends() {
        let f = fixture(false);
        f.header(T_IN, 0);
        let queue = MockSplitQueue::new(&f.memory, 16);
        // Descriptor 1 points back to itself.
        let looping = [
            RawDescriptor::from(SplitDescriptor::new(
                HEADER,
                16,
                VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                DATA,
                512,
                WRITE | VRING_DESC_F_NEXT as u16,
                1,
            )),
        ];
        let chain = queue.build_multiple_desc_chains(&looping).unwrap();
        // The chain iterator gives up after as many descriptors as the queue holds; serving it
        // must finish either way.
        let _ = serve_request(chain, &f.memory, &f.disk, &f.counters);
    }
}
