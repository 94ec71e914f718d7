//! The thread that serves one active virtio device: it waits on the device's queue kicks
//! (ioeventfds) and back-end fds, and hands each to the device's [`QueueHandler`].

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioError};

/// What a device does when the guest kicks a queue or a back-end fd becomes readable.
pub trait QueueHandler: Send + 'static {
    /// The guest made buffers available on queue `index`.
    fn queue_kicked(&mut self, index: usize) -> Result<(), VirtioError>;
    /// Back-end fds to wait on besides the kicks (sockets, timers).
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Back-end fd number `index` (in [`QueueHandler::backend_fds`] order) became readable.
    /// Back-end fds are edge-triggered: read until they would block, or resume on a kick.
    fn backend_ready(&mut self, _index: usize) -> Result<(), VirtioError> {
        Ok(())
    }
}

const STOP_TOKEN: u64 = u64::MAX;
const BACKEND_TOKEN_BASE: u64 = 1 << 32;

/// A running device thread; dropping it stops and joins the thread.
pub struct DeviceThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts serving: `kicks` pairs each queue index with its kick eventfd.
    pub fn spawn<H: QueueHandler>(
        name: &'static str,
        kicks: Vec<(usize, EventFd)>,
        handler: H,
        interrupt: Interrupt,
    ) -> Result<DeviceThread, VirtioError> {
        let backend = |err: std::io::Error| VirtioError::Backend(format!("{name}: {err}"));
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(backend)?;
        let epoll = Epoll::new().map_err(backend)?;
        let add = |fd: RawFd, token: u64| {
            // Back-ends are edge-triggered: a handler may leave data unread while the guest has
            // no buffers, and resumes when the guest kicks the queue.
            let events = if token >= BACKEND_TOKEN_BASE {
                EventSet::IN | EventSet::EDGE_TRIGGERED
            } else {
                EventSet::IN
            };
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        };
        add(stop.as_raw_fd(), STOP_TOKEN).map_err(backend)?;
        for (queue, kick) in &kicks {
            add(kick.as_raw_fd(), *queue as u64).map_err(backend)?;
        }
        for (i, fd) in handler.backend_fds().into_iter().enumerate() {
            add(fd, BACKEND_TOKEN_BASE + i as u64).map_err(backend)?;
        }
        let thread_stop = stop.try_clone().map_err(backend)?;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(name, epoll, kicks, handler, interrupt, thread_stop))
            .map_err(backend)?;
        Ok(DeviceThread {
            stop,
            handle: Some(handle),
        })
    }
}

fn serve<H: QueueHandler>(
    name: &str,
    epoll: Epoll,
    kicks: Vec<(usize, EventFd)>,
    mut handler: H,
    interrupt: Interrupt,
    stop: EventFd,
) {
    // Buffers the driver queued before it set DRIVER_OK are served at once.
    let mut failed = kicks
        .iter()
        .find_map(|(queue, _)| handler.queue_kicked(*queue).err());
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        if let Some(err) = failed.take() {
            eprintln!("hangar-vmm: {name} stopped: {err}. The guest must reset the device.");
            interrupt.needs_reset();
            // Serve nothing more; only wait to be stopped.
            let _ = epoll.ctl(
                ControlOperation::Delete,
                stop.as_raw_fd(),
                EpollEvent::default(),
            );
            wait_readable(stop.as_raw_fd());
            return;
        }
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                failed = Some(VirtioError::Backend(format!("epoll: {err}")));
                continue;
            }
        };
        for event in &events[..count] {
            let token = event.data();
            let result = if token == STOP_TOKEN {
                return;
            } else if token >= BACKEND_TOKEN_BASE {
                handler.backend_ready((token - BACKEND_TOKEN_BASE) as usize)
            } else {
                let queue = token as usize;
                if let Some((_, kick)) = kicks.iter().find(|(q, _)| *q == queue) {
                    let _ = kick.read();
                }
                handler.queue_kicked(queue)
            };
            if let Err(err) = result {
                failed = Some(err);
                break;
            }
        }
    }
}

fn wait_readable(fd: RawFd) {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` is one valid pollfd for the duration of the call.
    while unsafe { libc::poll(&mut poll, 1, -1) } < 0 {}
}

impl DeviceThread {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop();
    }
}
