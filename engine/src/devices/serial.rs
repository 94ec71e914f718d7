//! COM1: a 16550 UART (vm-superio) whose output goes to a [`Console`], and whose input is
//! queued so that a fast sender never overruns the guest's 64-byte FIFO.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::{lock, MachineRequest, PioDevice};

/// Bytes of console output kept for clients that connect later.
pub const CONSOLE_BACKLOG: usize = 64 * 1024;
/// Input bytes held back while the guest's FIFO is full; more are dropped.
const MAX_PENDING_INPUT: usize = 1 << 20;

/// Raises the UART's interrupt through a KVM irqfd.
pub struct IrqFdTrigger(pub EventFd);

impl Trigger for IrqFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes.
#[derive(Clone)]
pub enum Console {
    /// The worker's stdout.
    Stdout,
    /// Nowhere.
    Discard,
    /// Every connected socket client, plus a backlog for late ones.
    Clients(Arc<Mutex<ConsoleClients>>),
}

/// Socket clients of the console, and the recent output.
#[derive(Default)]
pub struct ConsoleClients {
    clients: Vec<UnixStream>,
    backlog: VecDeque<u8>,
}

impl ConsoleClients {
    /// Adds a client and sends it the backlog first.
    pub fn add(&mut self, stream: UnixStream) {
        let (front, back) = self.backlog.as_slices();
        let mut client = stream;
        if write_nonblocking(&mut client, front) && write_nonblocking(&mut client, back) {
            self.clients.push(client);
        }
    }

    fn broadcast(&mut self, bytes: &[u8]) {
        self.backlog.extend(bytes);
        let excess = self.backlog.len().saturating_sub(CONSOLE_BACKLOG);
        self.backlog.drain(..excess);
        self.clients
            .retain_mut(|client| write_nonblocking(client, bytes));
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }
}

/// Writes without blocking. A client too slow to take console output loses the part that did
/// not fit (the guest must never wait on it); a client that hung up is dropped (returns false).
fn write_nonblocking(stream: &mut UnixStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

impl Write for Console {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Console::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()?;
            }
            Console::Discard => {}
            Console::Clients(clients) => lock(clients).broadcast(bytes),
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART with its input queue.
pub struct SerialPort {
    uart: Serial<IrqFdTrigger, NoEvents, Console>,
    pending: VecDeque<u8>,
}

impl SerialPort {
    pub fn new(interrupt: EventFd, console: Console) -> Self {
        SerialPort {
            uart: Serial::new(IrqFdTrigger(interrupt), console),
            pending: VecDeque::new(),
        }
    }

    /// Queues input for the guest; it enters the FIFO as the guest drains it.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        self.pending.extend(&bytes[..bytes.len().min(room)]);
        self.fill_fifo();
    }

    fn fill_fifo(&mut self) {
        let count = self.uart.fifo_capacity().min(self.pending.len());
        if count == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..count).collect();
        // Fails only if raising the interrupt fails; the bytes are in the FIFO either way.
        let _ = self.uart.enqueue_raw_bytes(&chunk);
    }
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = self.uart.read(offset as u8);
        if offset == 0 {
            self.fill_fifo();
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<MachineRequest> {
        // An error here means the console or the interrupt failed; the guest carries on.
        let _ = self.uart.write(offset as u8, data[0]);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RBR: u16 = 0;
    const LSR: u16 = 5;
    const LSR_DATA_READY: u8 = 1;

    fn read(port: &mut SerialPort, offset: u16) -> u8 {
        let mut data = [0u8];
        port.read(offset, &mut data);
        data[0]
    }

    #[test]
    fn input_larger_than_the_fifo_arrives_whole_and_in_order() {
        let mut port = SerialPort::new(EventFd::new(0).unwrap(), Console::Discard);
        let input: Vec<u8> = (0..200u8).collect();
        port.queue_input(&input);
        let mut received = Vec::new();
        while read(&mut port, LSR) & LSR_DATA_READY != 0 {
            received.push(read(&mut port, RBR));
        }
        assert_eq!(received, input);
    }

    #[test]
    fn late_clients_get_the_backlog_and_slow_ones_never_block() {
        let clients = Arc::new(Mutex::new(ConsoleClients::default()));
        let mut console = Console::Clients(clients.clone());
        console.write_all(b"early boot\n").unwrap();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        lock(&clients).add(ours);
        console.write_all(b"later\n").unwrap();
        let mut buf = [0u8; 64];
        let n = io::Read::read(&mut theirs, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"early boot\nlater\n");
        // Nobody reads now: writing far more than a socket buffer must still return.
        for _ in 0..64 {
            console.write_all(&[b'x'; 16 * 1024]).unwrap();
        }
        drop(theirs);
        console.write_all(b"after hangup").unwrap();
        assert_eq!(lock(&clients).client_count(), 0);
    }
}
