//! The worker process: owns one machine and serves its control socket and serial console from
//! a single epoll loop. vCPU threads report to it through an event channel.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use kvm_ioctls::Kvm;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;
use vmm_sys_util::timerfd::TimerFd;

use crate::attachments::Attachments;
use crate::config::{SerialMode, VmConfig};
use crate::control::{ControlClient, Line};
use crate::devices::serial::{Console, ConsoleClients};
use crate::devices::{lock, MachineRequest};
use crate::display::screenshot::write_png;
use crate::display::stream::DisplayClient;
use crate::display::{damage_from_dirty_pages, DamageRect, Framebuffer, FramebufferError};
use crate::machine::{Machine, MachineError};
use crate::protocol::{
    Command, Crash, DisplayCommand, DisplayEvent, Event, Reply, Request, RequestError, RunState,
    SandboxStatus, Stats, Status, StopReason, PROTOCOL_VERSION,
};
use crate::sandbox::{SandboxError, SandboxPaths, SeccompMode};
use crate::vcpu::{install_kick_handler, EventSender, VcpuEvent};

/// Exit status when the guest crashed and no client could be told.
pub const EXIT_GUEST_CRASHED: i32 = 3;

/// Errors that stop the worker before or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error(transparent)]
    Attach(#[from] crate::attachments::AttachError),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("{0} is in use by another running worker; pick another path or stop that worker")]
    SocketInUse(PathBuf),
    #[error("event loop failed: {0}")]
    EventLoop(io::Error),
    #[error(transparent)]
    Framebuffer(#[from] FramebufferError),
    #[error("{0}; run with --no-sandbox only to debug this")]
    Sandbox(#[from] SandboxError),
}

const TOKEN_WAKE: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_CONTROL_LISTENER: u64 = 2;
const TOKEN_SERIAL_LISTENER: u64 = 3;
const TOKEN_STDIN: u64 = 4;
const TOKEN_DISPLAY_LISTENER: u64 = 5;
const TOKEN_DISPLAY_TIMER: u64 = 6;
const TOKEN_CONTROL_CLIENT: u64 = 1 << 32;
const TOKEN_SERIAL_CLIENT: u64 = 2 << 32;
const TOKEN_DISPLAY_CLIENT: u64 = 3 << 32;
const TOKEN_INDEX_MASK: u64 = (1 << 32) - 1;

/// How often the dirty log is read while display clients are connected: 60 Hz.
const DAMAGE_INTERVAL: std::time::Duration = std::time::Duration::from_nanos(16_666_667);

/// Ctrl-A, the escape key of the terminal console (as in QEMU): Ctrl-A x quits.
const ESCAPE: u8 = 0x01;

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(_: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` lives for the call.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

fn install_terminate_handlers(fd: &EventFd) -> io::Result<()> {
    SIGNAL_FD.store(fd.as_raw_fd(), Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler only calls write(2).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_terminate as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is initialised and outlives the call.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn crash_event(crash: &Crash) -> Event {
    Event::GuestPanic {
        reason: crash.reason.clone(),
        vcpu: crash.vcpu,
    }
}

/// Binds a Unix socket, replacing a stale socket file but never a live one.
fn bind_socket(path: &Path) -> Result<UnixListener, WorkerError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(WorkerError::SocketInUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| WorkerError::Listen {
        path: path.to_path_buf(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| WorkerError::Listen {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(listener)
}

/// Puts the terminal in raw mode for the console and restores it when dropped.
struct RawTerminal;

impl RawTerminal {
    fn enable() -> Option<RawTerminal> {
        let stdin = io::stdin();
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(stdin.as_raw_fd()) } != 1 {
            return None;
        }
        stdin.lock().set_raw_mode().ok().map(|_| RawTerminal)
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = io::stdin().lock().set_canon_mode();
    }
}

/// What the event loop decided.
enum Flow {
    Continue,
    Exit(i32),
}

/// The worker: one VM, its clients, and the loop that serves them.
pub struct Worker {
    config: VmConfig,
    kvm: Kvm,
    // Declared before the attachments, so the devices using them stop first.
    machine: Machine,
    attachments: Attachments,
    state: RunState,
    /// Why the guest crashed, kept for `status` and for clients that connect later.
    crash: Option<Crash>,
    console: Console,
    epoll: Epoll,
    wake: Arc<EventFd>,
    signal: EventFd,
    events_tx: EventSender,
    events_rx: Receiver<VcpuEvent>,
    control_listener: Option<UnixListener>,
    control_clients: Vec<Option<ControlClient>>,
    serial_listener: Option<UnixListener>,
    serial_clients: Vec<Option<UnixStream>>,
    console_clients: Option<Arc<Mutex<ConsoleClients>>>,
    stdin_open: bool,
    escape_pending: bool,
    raw_terminal: Option<RawTerminal>,
    socket_paths: Vec<PathBuf>,
    /// The screen; it outlives machine resets so clients keep their mapping.
    framebuffer: Option<Arc<Framebuffer>>,
    display_listener: Option<UnixListener>,
    display_clients: Vec<Option<DisplayClient>>,
    /// Ticks at [`DAMAGE_INTERVAL`] while a display client is connected, and is disarmed
    /// otherwise, so that a VM nobody watches costs nothing.
    damage_timer: TimerFd,
    /// What confines the worker, once it entered its sandbox.
    sandbox: SandboxStatus,
    damage_timer_armed: bool,
}

impl Worker {
    /// Sets up the sockets and builds the machine; nothing runs yet.
    pub fn new(config: VmConfig) -> Result<Worker, WorkerError> {
        let io_err = |source| WorkerError::EventLoop(source);
        install_kick_handler().map_err(io_err)?;
        let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
        let epoll = Epoll::new().map_err(io_err)?;
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io_err)?);
        let signal = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err)?;
        install_terminate_handlers(&signal).map_err(io_err)?;
        let (tx, events_rx) = mpsc::channel();
        let events_tx = EventSender::new(tx, wake.clone());

        let mut socket_paths = Vec::new();
        // Binds an optional socket and remembers its path, to remove it on exit.
        let mut listen = |path: &Option<PathBuf>| -> Result<Option<UnixListener>, WorkerError> {
            let Some(path) = path else { return Ok(None) };
            let listener = bind_socket(path)?;
            socket_paths.push(path.clone());
            Ok(Some(listener))
        };
        let control_listener = listen(&config.control)?;
        let mut console_clients = None;
        let mut serial_listener = None;
        let mut raw_terminal = None;
        let console = match &config.serial {
            SerialMode::Stdio => {
                raw_terminal = RawTerminal::enable();
                Console::Stdout
            }
            SerialMode::None => Console::Discard,
            SerialMode::Unix(path) => {
                serial_listener = listen(&Some(path.clone()))?;
                let clients = Arc::new(Mutex::new(ConsoleClients::default()));
                console_clients = Some(clients.clone());
                Console::Clients(clients)
            }
        };

        let attachments = Attachments::open(&config)?;
        let framebuffer = match config.display {
            Some(size) => Some(Arc::new(Framebuffer::new(size)?)),
            None => None,
        };
        let display_listener = listen(&config.display_socket)?;
        let damage_timer = TimerFd::new().map_err(|err| io_err(err.into()))?;

        let machine = Machine::build(
            &kvm,
            &config,
            console.clone(),
            &attachments,
            framebuffer.clone(),
        )?;
        let worker = Worker {
            stdin_open: config.serial == SerialMode::Stdio,
            config,
            kvm,
            machine,
            attachments,
            state: RunState::Running,
            crash: None,
            console,
            epoll,
            wake,
            signal,
            events_tx,
            events_rx,
            control_listener,
            control_clients: Vec::new(),
            serial_listener,
            serial_clients: Vec::new(),
            console_clients,
            escape_pending: false,
            raw_terminal,
            socket_paths,
            framebuffer,
            display_listener,
            display_clients: Vec::new(),
            damage_timer,
            damage_timer_armed: false,
            sandbox: SandboxStatus::off(),
        };
        worker.register_fds().map_err(io_err)?;
        Ok(worker)
    }

    fn add_fd(&self, fd: i32, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    fn register_fds(&self) -> io::Result<()> {
        self.add_fd(self.wake.as_raw_fd(), TOKEN_WAKE)?;
        self.add_fd(self.signal.as_raw_fd(), TOKEN_SIGNAL)?;
        if let Some(listener) = &self.control_listener {
            self.add_fd(listener.as_raw_fd(), TOKEN_CONTROL_LISTENER)?;
        }
        if let Some(listener) = &self.serial_listener {
            self.add_fd(listener.as_raw_fd(), TOKEN_SERIAL_LISTENER)?;
        }
        if let Some(listener) = &self.display_listener {
            self.add_fd(listener.as_raw_fd(), TOKEN_DISPLAY_LISTENER)?;
        }
        self.add_fd(self.damage_timer.as_raw_fd(), TOKEN_DISPLAY_TIMER)?;
        if self.stdin_open {
            // Fails for a regular file or /dev/null on stdin; then there is no console input.
            if self.add_fd(libc::STDIN_FILENO, TOKEN_STDIN).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Runs the machine until it powers off or is killed. Returns the process exit status.
    pub fn run(mut self) -> Result<i32, WorkerError> {
        if self.config.sandbox {
            self.enter_sandbox()?;
        }
        self.machine.start(&self.events_tx)?;
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(WorkerError::EventLoop(err)),
            };
            for event in &events[..count] {
                if let Flow::Exit(code) = self.dispatch(event.data(), event.event_set())? {
                    self.finish();
                    return Ok(code);
                }
            }
            self.reap_clients();
        }
    }

    fn dispatch(&mut self, token: u64, set: EventSet) -> Result<Flow, WorkerError> {
        match token {
            TOKEN_WAKE => {
                let _ = self.wake.read();
                while let Ok(event) = self.events_rx.try_recv() {
                    if let Flow::Exit(code) = self.on_vcpu_event(event)? {
                        return Ok(Flow::Exit(code));
                    }
                }
                Ok(Flow::Continue)
            }
            TOKEN_SIGNAL => {
                let _ = self.signal.read();
                self.broadcast(&Event::Shutdown {
                    reason: StopReason::Killed,
                });
                Ok(Flow::Exit(0))
            }
            TOKEN_CONTROL_LISTENER => {
                self.accept_control_clients();
                Ok(Flow::Continue)
            }
            TOKEN_SERIAL_LISTENER => {
                self.accept_serial_clients();
                Ok(Flow::Continue)
            }
            TOKEN_STDIN => Ok(self.read_stdin()),
            TOKEN_DISPLAY_LISTENER => {
                self.accept_display_clients();
                Ok(Flow::Continue)
            }
            TOKEN_DISPLAY_TIMER => {
                let _ = self.damage_timer.wait();
                self.send_damage();
                Ok(Flow::Continue)
            }
            _ if token & !TOKEN_INDEX_MASK == TOKEN_DISPLAY_CLIENT => {
                self.serve_display_client((token & TOKEN_INDEX_MASK) as usize, set);
                Ok(Flow::Continue)
            }
            _ if token & !TOKEN_INDEX_MASK == TOKEN_CONTROL_CLIENT => {
                let index = (token & TOKEN_INDEX_MASK) as usize;
                self.serve_control_client(index, set)
            }
            _ if token & !TOKEN_INDEX_MASK == TOKEN_SERIAL_CLIENT => {
                self.read_serial_client((token & TOKEN_INDEX_MASK) as usize);
                Ok(Flow::Continue)
            }
            _ => Ok(Flow::Continue),
        }
    }

    fn on_vcpu_event(&mut self, event: VcpuEvent) -> Result<Flow, WorkerError> {
        let (vcpu, reason) = match event {
            VcpuEvent::Request { request, vcpu } => match request {
                MachineRequest::Poweroff => {
                    self.stop_machine(StopReason::GuestPoweroff);
                    return Ok(Flow::Exit(0));
                }
                MachineRequest::Reset if self.config.no_reboot => {
                    self.stop_machine(StopReason::GuestReset);
                    return Ok(Flow::Exit(0));
                }
                MachineRequest::Reset => {
                    self.reset(StopReason::GuestReset)?;
                    return Ok(Flow::Continue);
                }
                MachineRequest::GuestPanic => (vcpu, "guest-panic".to_string()),
            },
            VcpuEvent::Crashed { vcpu, reason } => (vcpu, reason),
        };
        self.on_guest_crash(vcpu, reason)
    }

    /// Keeps a crashed guest as it is for inspection (libvirt's on_crash=preserve), and tells
    /// the clients. Without clients there is nobody to tell, so the worker exits.
    fn on_guest_crash(&mut self, vcpu: u8, reason: String) -> Result<Flow, WorkerError> {
        if self.state == RunState::Crashed {
            return Ok(Flow::Continue);
        }
        self.machine.pause();
        self.set_state(RunState::Crashed);
        let crash = Crash { reason, vcpu };
        self.broadcast(&crash_event(&crash));
        if self.control_listener.is_none() {
            eprintln!(
                "hangar-vmm: the guest crashed on vCPU {} ({}); stopping",
                crash.vcpu, crash.reason
            );
            return Ok(Flow::Exit(EXIT_GUEST_CRASHED));
        }
        self.crash = Some(crash);
        Ok(Flow::Continue)
    }

    fn stop_machine(&mut self, reason: StopReason) {
        self.machine.stop();
        self.set_state(RunState::Shutoff);
        self.broadcast(&Event::Shutdown { reason });
    }

    /// Replaces the machine with a fresh boot of the same configuration.
    fn reset(&mut self, reason: StopReason) -> Result<(), WorkerError> {
        self.machine.stop();
        // Drain events of the old machine so they cannot act on the new one.
        while self.events_rx.try_recv().is_ok() {}
        if let Some(framebuffer) = &self.framebuffer {
            framebuffer.clear();
        }
        self.machine = Machine::build(
            &self.kvm,
            &self.config,
            self.console.clone(),
            &self.attachments,
            self.framebuffer.clone(),
        )?;
        self.crash = None;
        self.machine.start(&self.events_tx)?;
        self.broadcast(&Event::Reset { reason });
        self.set_state(RunState::Running);
        // The new machine's dirty log starts clean; clients still show the old screen.
        if let Some(framebuffer) = &self.framebuffer {
            let full = vec![DamageRect {
                x: 0,
                y: 0,
                width: framebuffer.width,
                height: framebuffer.height,
            }];
            self.broadcast_damage(&DisplayEvent::Damage { rects: full });
        }
        Ok(())
    }

    fn set_state(&mut self, state: RunState) {
        if self.state != state {
            self.state = state;
            self.broadcast(&Event::State { state });
        }
    }

    fn broadcast(&mut self, event: &Event) {
        for client in self.control_clients.iter_mut().flatten() {
            client.send(event);
        }
    }

    fn accept_control_clients(&mut self) {
        let Some(listener) = &self.control_listener else {
            return;
        };
        let mut accepted = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            if let Ok(client) = ControlClient::new(stream) {
                accepted.push(client);
            }
        }
        for mut client in accepted {
            let slot = free_slot(&mut self.control_clients);
            let token = TOKEN_CONTROL_CLIENT | slot as u64;
            if self.add_fd(client.stream.as_raw_fd(), token).is_err() {
                continue;
            }
            client.send(&Event::Hello {
                version: PROTOCOL_VERSION,
                vmm: concat!("hangar-vmm ", env!("CARGO_PKG_VERSION")).to_string(),
            });
            // A client that connects after a crash still learns about it.
            if let Some(crash) = &self.crash {
                client.send(&crash_event(crash));
            }
            self.control_clients[slot] = Some(client);
        }
    }

    fn serve_control_client(&mut self, index: usize, set: EventSet) -> Result<Flow, WorkerError> {
        let Some(Some(client)) = self.control_clients.get_mut(index) else {
            return Ok(Flow::Continue);
        };
        if set.contains(EventSet::OUT) {
            client.flush();
        }
        let lines = client.read_lines();
        for line in lines {
            let (reply, flow) = match line {
                Line::TooLong => (Reply::error(None, RequestError::TooLong), Flow::Continue),
                Line::Complete(bytes) => match Request::parse(&bytes) {
                    Ok(Request {
                        id,
                        command: Command::OpenDisplay,
                    }) => {
                        let opened = self.open_display();
                        if let Some(Some(client)) = self.control_clients.get_mut(index) {
                            match opened {
                                Ok(fd) => {
                                    client.send_with_fd(&Reply::ok(id, serde_json::json!({})), fd)
                                }
                                Err(err) => client.send(&Reply::error(id, err)),
                            }
                        }
                        continue;
                    }
                    Ok(request) => self.execute(request)?,
                    Err((id, err)) => (Reply::error(id, err), Flow::Continue),
                },
            };
            if let Some(Some(client)) = self.control_clients.get_mut(index) {
                client.send(&reply);
            }
            if let Flow::Exit(code) = flow {
                return Ok(Flow::Exit(code));
            }
        }
        self.update_write_interest(index);
        Ok(Flow::Continue)
    }

    fn update_write_interest(&self, index: usize) {
        if let Some(Some(client)) = self.control_clients.get(index) {
            let mut set = EventSet::IN;
            if client.wants_write() {
                set |= EventSet::OUT;
            }
            let token = TOKEN_CONTROL_CLIENT | index as u64;
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                client.stream.as_raw_fd(),
                EpollEvent::new(set, token),
            );
        }
    }

    fn execute(&mut self, request: Request) -> Result<(Reply, Flow), WorkerError> {
        let id = request.id;
        let not_while_crashed = "the guest has crashed; reset or kill it";
        let reply = match request.command {
            Command::Status => Reply::ok(id, self.status()),
            Command::Stats => Reply::ok(
                id,
                Stats {
                    state: self.state,
                    memory_bytes: self.machine.memory_bytes(),
                    vcpus: self.machine.vcpu_stats(),
                    disks: self.attachments.disk_stats(),
                    nets: self.attachments.net_stats(),
                    balloon: self.machine.balloon_stats(),
                },
            ),
            Command::Pause => match self.state {
                RunState::Running if self.machine.pause() => {
                    self.set_state(RunState::Paused);
                    Reply::ok(id, serde_json::json!({"state": self.state}))
                }
                RunState::Running => {
                    self.machine.resume();
                    Reply::error(id, "a vCPU did not stop within 5 s; the VM keeps running")
                }
                RunState::Paused => Reply::ok(id, serde_json::json!({"state": self.state})),
                _ => Reply::error(id, not_while_crashed),
            },
            Command::Resume => match self.state {
                RunState::Paused => {
                    self.machine.resume();
                    self.set_state(RunState::Running);
                    Reply::ok(id, serde_json::json!({"state": self.state}))
                }
                RunState::Running => Reply::ok(id, serde_json::json!({"state": self.state})),
                _ => Reply::error(id, not_while_crashed),
            },
            Command::Powerdown => match self.state {
                RunState::Running => {
                    self.machine.press_power_button();
                    Reply::ok(id, serde_json::json!({}))
                }
                RunState::Paused => Reply::error(
                    id,
                    "the VM is paused and cannot react to the power button; resume it first",
                ),
                _ => Reply::error(id, not_while_crashed),
            },
            Command::Reset => {
                self.reset(StopReason::HostReset)?;
                Reply::ok(id, serde_json::json!({"state": self.state}))
            }
            Command::Kill => {
                self.stop_machine(StopReason::Killed);
                return Ok((Reply::ok(id, serde_json::json!({})), Flow::Exit(0)));
            }
            // Served by serve_control_client, which has the connection to pass the socket on.
            Command::OpenDisplay => Reply::error(id, "open-display needs a control connection"),
            Command::Screenshot { path } => match &self.framebuffer {
                None => Reply::error(
                    id,
                    "this VM has no display; start it with --display WIDTHxHEIGHT",
                ),
                Some(_) if path.is_absolute() && !self.may_write_screenshot(&path) => {
                    Reply::error(id, self.screenshot_refusal(&path))
                }
                Some(fb) => {
                    match write_png(&path, &fb.snapshot(), fb.width, fb.height, fb.stride) {
                        Ok(()) => Reply::ok(
                            id,
                            serde_json::json!({
                                "path": path,
                                "width": fb.width,
                                "height": fb.height
                            }),
                        ),
                        Err(err) => Reply::error(id, err),
                    }
                }
            },
        };
        Ok((reply, Flow::Continue))
    }

    /// Whether the sandbox lets `screenshot` write `path`.
    fn may_write_screenshot(&self, path: &Path) -> bool {
        self.sandbox.landlock == "off"
            || self.sandbox.landlock == "unsupported"
            || self
                .config
                .screenshot_dirs
                .iter()
                .any(|dir| path.starts_with(dir))
    }

    fn screenshot_refusal(&self, path: &Path) -> String {
        let dirs: Vec<String> = self
            .config
            .screenshot_dirs
            .iter()
            .map(|dir| dir.display().to_string())
            .collect();
        let allowed = if dirs.is_empty() {
            "nowhere (no --screenshot-dir was given)".to_string()
        } else {
            format!("only under {}", dirs.join(", "))
        };
        format!(
            "the worker's sandbox lets it write screenshots {allowed}, not {}; start it with \
             --screenshot-dir, or save from the display stream as `hangarctl screenshot` does",
            path.display()
        )
    }

    /// What the worker may still reach once the guest runs; see [`crate::sandbox`].
    fn sandbox_paths(&self) -> SandboxPaths {
        let mut paths = SandboxPaths::default();
        paths.read.push(self.config.kernel.clone());
        paths.read.extend(self.config.initrd.clone());
        // Per-vCPU CPU time for `stats`.
        paths.read.push(PathBuf::from("/proc/self/task"));
        self.attachments.sandbox_paths(&mut paths);
        // The sockets' directories: the sockets are removed at exit.
        paths.read_write.extend(
            self.socket_paths
                .iter()
                .filter_map(|path| path.parent().map(Path::to_path_buf)),
        );
        paths
            .read_write
            .extend(self.config.screenshot_dirs.iter().cloned());
        if let Some(cache) = crate::arch::x86_64::boot::KernelCache::default().dir() {
            // Landlock can only name what exists; without the directory the cache just stays
            // empty after a reboot.
            let _ = std::fs::create_dir_all(&cache);
            paths.read_write.push(cache);
        }
        paths
    }

    fn enter_sandbox(&mut self) -> Result<(), WorkerError> {
        let mode = match std::env::var("HANGAR_SANDBOX").as_deref() {
            Ok("log") => SeccompMode::Log,
            _ => SeccompMode::Enforce,
        };
        self.sandbox = crate::sandbox::enter(&self.sandbox_paths(), mode)?;
        if self.sandbox.landlock == "unsupported" {
            eprintln!(
                "hangar-vmm: sandbox: landlock is {} on this kernel, so files are not fully confined",
                self.sandbox.landlock
            );
        }
        // For the sandbox tests only: show from outside what the sandbox does to a call the
        // filter forbids (`socket`), or to opening a file (`open:PATH`).
        match std::env::var("HANGAR_SANDBOX_PROBE") {
            Ok(probe) if probe == "socket" => {
                // SAFETY: socket(2) with constant arguments; the filter stops the worker here.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            }
            Ok(probe) if probe.starts_with("open:") => {
                let path = &probe["open:".len()..];
                match std::fs::File::open(path) {
                    Ok(_) => eprintln!("hangar-vmm: sandbox probe: open {path}: ok"),
                    Err(err) => eprintln!("hangar-vmm: sandbox probe: open {path}: {err}"),
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn status(&self) -> Status {
        Status {
            version: PROTOCOL_VERSION,
            state: self.state,
            crash: self.crash.clone(),
            vcpus: self.config.vcpus,
            memory_bytes: self.config.memory,
            kernel: self.config.kernel.display().to_string(),
            uptime_ms: self.machine.uptime().as_millis() as u64,
            pid: std::process::id(),
            sandbox: Some(self.sandbox.clone()),
        }
    }

    fn accept_serial_clients(&mut self) {
        let (Some(listener), Some(clients)) = (&self.serial_listener, &self.console_clients) else {
            return;
        };
        let mut accepted = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            lock(clients).add(writer);
            accepted.push(stream);
        }
        for stream in accepted {
            let slot = free_slot(&mut self.serial_clients);
            if self
                .add_fd(stream.as_raw_fd(), TOKEN_SERIAL_CLIENT | slot as u64)
                .is_ok()
            {
                self.serial_clients[slot] = Some(stream);
            }
        }
    }

    fn read_serial_client(&mut self, index: usize) {
        let Some(Some(stream)) = self.serial_clients.get_mut(index) else {
            return;
        };
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    stream.as_raw_fd(),
                    EpollEvent::default(),
                );
                self.serial_clients[index] = None;
            }
            Ok(n) => self.machine.send_serial_input(&buf[..n]),
            Err(_) => {}
        }
    }

    fn read_stdin(&mut self) -> Flow {
        let mut buf = [0u8; 1024];
        let n = match io::stdin().lock().read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Flow::Continue,
            Err(_) => 0,
        };
        if n == 0 {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                libc::STDIN_FILENO,
                EpollEvent::default(),
            );
            self.stdin_open = false;
            return Flow::Continue;
        }
        if self.raw_terminal.is_none() {
            self.machine.send_serial_input(&buf[..n]);
            return Flow::Continue;
        }
        // On a terminal, Ctrl-A x quits and Ctrl-A Ctrl-A sends a literal Ctrl-A.
        let mut input = Vec::with_capacity(n);
        for &byte in &buf[..n] {
            if std::mem::take(&mut self.escape_pending) {
                match byte {
                    b'x' | b'X' => {
                        self.machine.send_serial_input(&input);
                        self.stop_machine(StopReason::Killed);
                        return Flow::Exit(0);
                    }
                    ESCAPE => input.push(ESCAPE),
                    _ => input.extend_from_slice(&[ESCAPE, byte]),
                }
            } else if byte == ESCAPE {
                self.escape_pending = true;
            } else {
                input.push(byte);
            }
        }
        self.machine.send_serial_input(&input);
        Flow::Continue
    }

    fn accept_display_clients(&mut self) {
        let (Some(listener), Some(framebuffer)) = (&self.display_listener, &self.framebuffer)
        else {
            return;
        };
        let mut accepted = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            // A client that cannot even take the first message is dropped at once.
            if let Ok(client) = DisplayClient::new(stream, framebuffer) {
                accepted.push(client);
            }
        }
        for client in accepted {
            self.add_display_client(client);
        }
    }

    /// Serves a new display client; false if the worker could not watch its socket.
    fn add_display_client(&mut self, client: DisplayClient) -> bool {
        let slot = free_slot(&mut self.display_clients);
        let added = self
            .add_fd(
                client.stream.as_raw_fd(),
                TOKEN_DISPLAY_CLIENT | slot as u64,
            )
            .is_ok();
        if added {
            self.display_clients[slot] = Some(client);
            self.update_display_write_interest(slot);
        }
        self.arm_damage_timer();
        added
    }

    /// `open-display`: a display stream on a fresh socket pair; the client gets the other end.
    fn open_display(&mut self) -> Result<OwnedFd, String> {
        let Some(framebuffer) = &self.framebuffer else {
            return Err("this VM has no display; start it with --display WIDTHxHEIGHT".into());
        };
        let (ours, theirs) = UnixStream::pair()
            .map_err(|err| format!("cannot create a display connection: {err}"))?;
        let client = DisplayClient::new(ours, framebuffer)
            .map_err(|err| format!("cannot start the display connection: {err}"))?;
        if !self.add_display_client(client) {
            return Err("the worker cannot watch another display connection".into());
        }
        Ok(OwnedFd::from(theirs))
    }

    /// Runs the damage timer exactly while someone watches.
    fn arm_damage_timer(&mut self) {
        let wanted = self.display_clients.iter().any(Option::is_some);
        if wanted == self.damage_timer_armed {
            return;
        }
        let result = if wanted {
            self.damage_timer
                .reset(DAMAGE_INTERVAL, Some(DAMAGE_INTERVAL))
        } else {
            self.damage_timer.clear()
        };
        if result.is_ok() {
            self.damage_timer_armed = wanted;
        }
    }

    /// Reads the dirty log and sends what changed to every display client.
    fn send_damage(&mut self) {
        let (Some(framebuffer), Some(dirty)) =
            (&self.framebuffer, self.machine.framebuffer_dirty_pages())
        else {
            return;
        };
        let rects = damage_from_dirty_pages(
            &dirty,
            4096,
            framebuffer.width,
            framebuffer.height,
            framebuffer.stride,
        );
        if !rects.is_empty() {
            self.broadcast_damage(&DisplayEvent::Damage { rects });
        }
    }

    fn broadcast_damage(&mut self, event: &DisplayEvent) {
        for index in 0..self.display_clients.len() {
            if let Some(client) = &mut self.display_clients[index] {
                client.send_damage(event);
                self.update_display_write_interest(index);
            }
        }
    }

    fn serve_display_client(&mut self, index: usize, set: EventSet) {
        let Some(Some(client)) = self.display_clients.get_mut(index) else {
            return;
        };
        if set.contains(EventSet::OUT) {
            client.flush();
        }
        for line in client.read_lines() {
            let command = match line {
                Line::TooLong => Err(RequestError::TooLong.to_string()),
                Line::Complete(bytes) => DisplayCommand::parse(&bytes),
            };
            match command {
                Ok(DisplayCommand::Key { code, down }) => self.machine.send_key(code, down),
                Ok(DisplayCommand::Pointer { x, y }) => self.machine.send_pointer(x, y),
                Ok(DisplayCommand::Button { button, down }) => {
                    self.machine.send_button(button, down)
                }
                Ok(DisplayCommand::Wheel { delta }) => self.machine.send_wheel(delta),
                Err(error) => {
                    if let Some(Some(client)) = self.display_clients.get_mut(index) {
                        client.send(&DisplayEvent::Error { error });
                    }
                }
            }
        }
        self.update_display_write_interest(index);
    }

    fn update_display_write_interest(&self, index: usize) {
        if let Some(Some(client)) = self.display_clients.get(index) {
            let mut set = EventSet::IN;
            if client.wants_write() {
                set |= EventSet::OUT;
            }
            let _ = self.epoll.ctl(
                ControlOperation::Modify,
                client.stream.as_raw_fd(),
                EpollEvent::new(set, TOKEN_DISPLAY_CLIENT | index as u64),
            );
        }
    }

    fn reap_clients(&mut self) {
        let mut display_closed = false;
        for slot in self.display_clients.iter_mut() {
            if slot.as_ref().is_some_and(|c| c.closed) {
                if let Some(client) = slot.take() {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        client.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    display_closed = true;
                }
            }
        }
        if display_closed {
            self.arm_damage_timer();
        }
        for slot in self.control_clients.iter_mut() {
            if slot.as_ref().is_some_and(|c| c.closed) {
                if let Some(client) = slot.take() {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        client.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
            }
        }
    }

    fn finish(&mut self) {
        self.machine.stop();
        for client in self.control_clients.iter_mut().flatten() {
            client.flush_before_exit();
        }
        for path in &self.socket_paths {
            let _ = std::fs::remove_file(path);
        }
    }
}
/// The index of the first free slot in a client table, growing it when all are taken.
fn free_slot<T>(slots: &mut Vec<Option<T>>) -> usize {
    slots.iter().position(Option::is_none).unwrap_or_else(|| {
        slots.push(None);
        slots.len() - 1
    })
}
