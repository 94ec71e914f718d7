//! vCPU threads: each runs `KVM_RUN` in a loop, hands port I/O and MMIO to the buses, and reports what the
//! machine must act on. A shared [`RunControl`] pauses, resumes and stops them.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::{lock, Buses, MachineRequest};
use crate::protocol::{ExitCounts, VcpuStats};

/// Signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int) {}

/// Installs the no-op handler for [`kick_signal`], without SA_RESTART so `KVM_RUN` returns
/// EINTR. Call once per process before starting vCPUs.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value that we then fill in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = ignore_kick as *const () as usize;
    // SAFETY: `action` is fully initialised; the handler is async-signal-safe (it does nothing).
    let rc = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What a vCPU thread tells the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuEvent {
    /// A device on this vCPU's bus asked for power-off, reset, or reported a guest panic.
    Request { vcpu: u8, request: MachineRequest },
    /// The guest crashed on this vCPU: `guest-panic` (pvpanic), `triple-fault`,
    /// `internal-error`, `entry-failure`, or a KVM error.
    Crashed { vcpu: u8, reason: String },
}

/// Sends vCPU events to the worker's event loop and wakes it.
#[derive(Clone)]
pub struct EventSender {
    tx: Sender<VcpuEvent>,
    wake: Arc<EventFd>,
}

impl EventSender {
    pub fn new(tx: Sender<VcpuEvent>, wake: Arc<EventFd>) -> Self {
        EventSender { tx, wake }
    }

    fn send(&self, event: VcpuEvent) {
        // The receiver only goes away when the worker is exiting anyway.
        if self.tx.send(event).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Run,
    Pause,
    Stop,
}

struct RunShared {
    target: Target,
    /// vCPU threads currently waiting, not in `KVM_RUN`.
    parked: usize,
}

/// Pauses, resumes and stops the vCPU threads of one machine.
pub struct RunControl {
    shared: Mutex<RunShared>,
    changed: Condvar,
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            shared: Mutex::new(RunShared {
                target: Target::Run,
                parked: 0,
            }),
            changed: Condvar::new(),
        }
    }
}

impl RunControl {
    /// Blocks while paused. Returns false once the machine is stopping.
    fn wait_runnable(&self) -> bool {
        let mut shared = lock(&self.shared);
        while shared.target == Target::Pause {
            shared.parked += 1;
            self.changed.notify_all();
            shared = self.changed.wait(shared).unwrap_or_else(|p| p.into_inner());
            shared.parked -= 1;
        }
        shared.target == Target::Run
    }

    /// Parks a vCPU that must not run again (its guest crashed or powered off) until stop.
    fn park_until_stop(&self) {
        let mut shared = lock(&self.shared);
        shared.parked += 1;
        self.changed.notify_all();
        while shared.target != Target::Stop {
            shared = self.changed.wait(shared).unwrap_or_else(|p| p.into_inner());
        }
        shared.parked -= 1;
    }

    fn set(&self, target: Target) {
        lock(&self.shared).target = target;
        self.changed.notify_all();
    }

    fn is_stopping(&self) -> bool {
        lock(&self.shared).target == Target::Stop
    }

    /// Waits up to `timeout` for `count` vCPUs to be parked.
    fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let shared = lock(&self.shared);
        let (shared, _) = self
            .changed
            .wait_timeout_while(shared, timeout, |s| s.parked < count)
            .unwrap_or_else(|p| p.into_inner());
        shared.parked >= count
    }
}

/// Counters one vCPU thread keeps, read by `stats`.
#[derive(Default)]
pub struct VcpuCounters {
    tid: AtomicI32,
    io: AtomicU64,
    mmio: AtomicU64,
    hlt: AtomicU64,
    other: AtomicU64,
}

impl VcpuCounters {
    /// Host CPU time of the thread, from the scheduler's own accounting.
    fn cpu_time_ns(&self) -> u64 {
        let tid = self.tid.load(Ordering::Relaxed);
        if tid == 0 {
            return 0;
        }
        std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    pub fn snapshot(&self, id: u8) -> VcpuStats {
        VcpuStats {
            id,
            cpu_time_ns: self.cpu_time_ns(),
            exits: ExitCounts {
                io: self.io.load(Ordering::Relaxed),
                mmio: self.mmio.load(Ordering::Relaxed),
                hlt: self.hlt.load(Ordering::Relaxed),
                other: self.other.load(Ordering::Relaxed),
            },
        }
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    pub id: u8,
    pub counters: Arc<VcpuCounters>,
    handle: std::thread::JoinHandle<()>,
}

impl VcpuThread {
    /// Starts a thread running `vcpu`.
    pub fn spawn(
        id: u8,
        vcpu: VcpuFd,
        bus: Arc<Buses>,
        run: Arc<RunControl>,
        events: EventSender,
    ) -> std::io::Result<VcpuThread> {
        let counters = Arc::new(VcpuCounters::default());
        let thread_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                thread_counters
                    .tid
                    .store(unsafe { libc::gettid() }, Ordering::Relaxed);
                run_loop(id, vcpu, &bus, &run, &thread_counters, &events);
            })?;
        Ok(VcpuThread {
            id,
            counters,
            handle,
        })
    }

    fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        if !self.handle.is_finished() {
            // SAFETY: the pthread handle is valid while the JoinHandle lives, and the kick signal
            // has a handler installed, so delivery cannot terminate the process.
            unsafe { libc::pthread_kill(self.handle.as_pthread_t(), kick_signal()) };
        }
    }
}

/// The vCPU threads of one machine.
pub struct VcpuSet {
    threads: Vec<VcpuThread>,
    run: Arc<RunControl>,
}

/// How long pause and stop wait for vCPUs before giving up.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuSet {
    pub fn new(threads: Vec<VcpuThread>, run: Arc<RunControl>) -> Self {
        VcpuSet { threads, run }
    }

    /// Stops every vCPU outside `KVM_RUN`. Returns false if one did not stop in time.
    pub fn pause(&self) -> bool {
        self.run.set(Target::Pause);
        let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
        // A kick can land just before a thread enters KVM_RUN and be lost, so repeat it.
        while Instant::now() < deadline {
            self.threads.iter().for_each(VcpuThread::kick);
            if self
                .run
                .wait_parked(self.threads.len(), Duration::from_millis(5))
            {
                return true;
            }
        }
        false
    }

    pub fn resume(&self) {
        self.run.set(Target::Run);
    }

    /// Stops and joins every vCPU thread.
    pub fn stop(self) {
        self.run.set(Target::Stop);
        let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
        while Instant::now() < deadline && !self.threads.iter().all(|t| t.handle.is_finished()) {
            self.threads.iter().for_each(VcpuThread::kick);
            std::thread::sleep(Duration::from_millis(1));
        }
        for thread in self.threads {
            if thread.handle.is_finished() {
                let _ = thread.handle.join();
            }
            // A thread stuck in the kernel is left behind; the process exits or the VM is
            // rebuilt without it.
        }
    }

    pub fn stats(&self) -> Vec<VcpuStats> {
        self.threads
            .iter()
            .map(|t| t.counters.snapshot(t.id))
            .collect()
    }
}

fn run_loop(
    id: u8,
    mut vcpu: VcpuFd,
    bus: &Buses,
    run: &RunControl,
    counters: &VcpuCounters,
    events: &EventSender,
) {
    let crash = |reason: String| {
        events.send(VcpuEvent::Crashed { vcpu: id, reason });
        run.park_until_stop();
    };
    // Benchmarks ask when the guest first ran, on the same clock they started the worker by.
    let mut trace_first_run = id == 0 && std::env::var_os("HANGAR_TRACE_STARTUP").is_some();
    while run.wait_runnable() {
        if std::mem::take(&mut trace_first_run) {
            eprintln!(
                "hangar-vmm: first KVM_RUN at monotonic {} ns",
                monotonic_ns()
            );
        }
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                counters.io.fetch_add(1, Ordering::Relaxed);
                bus.pio.read(port, data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                counters.io.fetch_add(1, Ordering::Relaxed);
                if let Some(request) = bus.pio.write(port, data) {
                    events.send(VcpuEvent::Request { vcpu: id, request });
                    run.park_until_stop();
                    return;
                }
            }
            Ok(VcpuExit::MmioRead(address, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio.read(address, data);
            }
            Ok(VcpuExit::MmioWrite(address, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                bus.mmio.write(address, data);
            }
            Ok(VcpuExit::Hlt) => {
                counters.hlt.fetch_add(1, Ordering::Relaxed);
            }
            Ok(VcpuExit::Shutdown) => return crash("triple-fault".into()),
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let request = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => MachineRequest::Poweroff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => MachineRequest::Reset,
                    _ => return crash(format!("system-event-{kind}")),
                };
                events.send(VcpuEvent::Request { vcpu: id, request });
                run.park_until_stop();
                return;
            }
            Ok(VcpuExit::InternalError) => {
                // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member is the valid one.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return crash(format!(
                    "internal-error (suberror {suberror}, rip {rip:#x})"
                ));
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return crash(format!("entry-failure ({reason:#x})"))
            }
            Ok(VcpuExit::Intr) => {}
            Ok(_) => {
                counters.other.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) if err.errno() == libc::EINTR || err.errno() == libc::EAGAIN => {}
            Err(err) => {
                if run.is_stopping() {
                    return;
                }
                return crash(format!("KVM_RUN failed: {err}"));
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}
