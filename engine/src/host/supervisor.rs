//! Supervision of `hangar-vmm` workers.
//!
//! Each running VM has a runtime directory `$XDG_RUNTIME_DIR/hangar/<uuid>/` holding the worker's
//! control and serial sockets, its pid and its log (stderr). Workers run in a session of their
//! own (setsid), so they outlive `hangard`; a restarted `hangard` finds them again through their
//! pid files and control sockets.
//!
//! A [`WorkerLink`] is one connection to a worker's control socket. A reader thread routes
//! replies to the requests waiting for them and hands events to a callback; when the worker goes
//! away it reports how the worker ended.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::disk::DiskSpec;
use crate::host::definition::{DisplayKind, NicMode, VmDefinition};
use crate::net::{NetMode, NetSpec};
use crate::protocol::{Event, RunState, Status, StopReason, PROTOCOL_VERSION};

/// Lines of the worker log kept with a crash report.
pub const LOG_TAIL_LINES: usize = 10;
/// How hangard's note before each worker start begins in the log.
const START_NOTE: &str = "hangard: starting ";

/// Errors of supervision.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot prepare runtime directory {path}: {source}")]
    RuntimeDir { path: PathBuf, source: io::Error },
    #[error("cannot start worker {vmm}: {source}; check the path or pass hangard --vmm PATH")]
    Spawn { vmm: PathBuf, source: io::Error },
    #[error("the worker exited during startup ({status})")]
    StartupFailed {
        status: String,
        /// It exited with status 0: the guest powered off before anyone connected.
        clean: bool,
    },
    #[error("the worker's control socket {path} did not answer within {timeout:?}: {reason}")]
    Connect {
        path: PathBuf,
        timeout: Duration,
        reason: String,
    },
    #[error(
        "the worker speaks protocol {0}, this hangard speaks {PROTOCOL_VERSION}; restart the VM"
    )]
    Version(Value),
    #[error("the worker refused {command:?}: {message}")]
    Refused { command: String, message: String },
    #[error("the worker did not answer {command:?} within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("the worker has gone away")]
    Gone,
}

/// Where a VM's worker keeps its sockets, pid and log.
#[derive(Clone, Debug)]
pub struct RuntimeDir {
    dir: PathBuf,
}

impl RuntimeDir {
    pub fn new(root: &Path, name: &str) -> RuntimeDir {
        RuntimeDir {
            dir: root.join(name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn serial(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    pub fn display(&self) -> PathBuf {
        self.dir.join("display.sock")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("worker.log")
    }

    /// Creates the directory (private to the user) and clears leftovers of an earlier worker.
    pub fn prepare(&self) -> Result<(), SupervisorError> {
        let err = |source| SupervisorError::RuntimeDir {
            path: self.dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(err)?;
        for path in [
            self.control(),
            self.serial(),
            self.display(),
            self.pid_file(),
        ] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn read_pid(&self) -> Option<u32> {
        fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Forgets a worker that ended: its pid and sockets go, its log stays for diagnosis.
    pub fn clear(&self) {
        for path in [
            self.control(),
            self.serial(),
            self.display(),
            self.pid_file(),
        ] {
            let _ = fs::remove_file(path);
        }
    }

    /// Removes the whole directory (the VM was undefined).
    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// The last `lines` lines the latest worker logged (since hangard's last "starting" note).
    pub fn log_tail(&self, lines: usize) -> Vec<String> {
        let text = fs::read_to_string(self.log()).unwrap_or_default();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let run_start = all
            .iter()
            .rposition(|l| l.starts_with(START_NOTE))
            .map_or(0, |i| i + 1);
        let run = &all[run_start..];
        run[run.len().saturating_sub(lines)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

/// The worker's command line for a definition. `disk_paths` are the files of the definition's
/// disks, in order (the pool resolves volume names).
pub fn worker_args(
    def: &VmDefinition,
    runtime: &RuntimeDir,
    disk_paths: &[PathBuf],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--kernel".into(), def.kernel.clone().into()];
    if let Some(initrd) = &def.initrd {
        args.extend(["--initrd".into(), initrd.clone().into()]);
    }
    args.extend([
        "--cmdline".into(),
        def.cmdline.clone().into(),
        "--memory".into(),
        def.memory.to_string().into(),
        "--cpus".into(),
        def.vcpus.to_string().into(),
        "--serial".into(),
    ]);
    let mut serial = OsString::from("unix:");
    serial.push(runtime.serial());
    args.push(serial);
    args.extend(["--control".into(), runtime.control().into()]);
    if def.display == DisplayKind::Framebuffer {
        args.extend([
            "--display".into(),
            def.resolution.to_string().into(),
            "--display-socket".into(),
            runtime.display().into(),
            "--input".into(),
            def.input.devices().to_string().into(),
        ]);
    }
    for (disk, path) in def.disks.iter().zip(disk_paths) {
        let spec = DiskSpec {
            path: path.clone(),
            format: None,
            readonly: disk.readonly,
            serial: None,
        };
        args.extend(["--disk".into(), spec.to_string().into()]);
    }
    // User-mode NICs reach the passt hangard started for them; a NIC with mode "none" gives
    // the guest no card.
    for (index, nic) in def.nics.iter().enumerate() {
        if nic.mode == NicMode::User {
            let spec = NetSpec {
                mode: NetMode::Unix(crate::host::network::nic_socket(runtime, index)),
                mac: Some(def.uuid.mac(index)),
            };
            args.extend(["--net".into(), spec.to_string().into()]);
        }
    }
    args
}

/// Starts a worker in a session of its own, stderr to its log, and records its pid.
pub fn spawn_worker(
    vmm: &Path,
    def: &VmDefinition,
    runtime: &RuntimeDir,
    disk_paths: &[PathBuf],
) -> Result<Child, SupervisorError> {
    runtime.prepare()?;
    let log_err = |source| SupervisorError::RuntimeDir {
        path: runtime.log(),
        source,
    };
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(runtime.log())
        .map_err(log_err)?;
    let _ = writeln!(
        log,
        "{START_NOTE}{} for VM {} ({})",
        vmm.display(),
        def.name,
        def.uuid
    );
    let mut command = Command::new(vmm);
    command
        .args(worker_args(def, runtime, disk_paths))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    // SAFETY: setsid(2) is async-signal-safe and touches no memory; it only detaches the child
    // from hangard's session so that the worker outlives hangard and its terminal.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| SupervisorError::Spawn {
        vmm: vmm.to_path_buf(),
        source,
    })?;
    crate::host::store::write_atomically(
        &runtime.pid_file(),
        format!("{}\n", child.id()).as_bytes(),
    )
    .map_err(|source| SupervisorError::RuntimeDir {
        path: runtime.pid_file(),
        source,
    })?;
    Ok(child)
}

/// Whether `pid` is a live (not zombie) `hangar-vmm` process.
pub fn worker_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .next()
                .is_some_and(|argv0| argv0.ends_with(b"hangar-vmm"))
        })
        .unwrap_or(false)
}

/// Resident memory of a process, in bytes.
pub fn resident_bytes(pid: u32) -> u64 {
    let pages = fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Human name of a signal.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

/// How an exit status reads in a report.
pub fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal} ({})", signal_name(signal)),
        _ => status.to_string(),
    }
}

/// How a worker ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerExit {
    /// It announced a shutdown and exited with status 0 (or, not being our child, vanished
    /// after announcing it).
    pub clean: bool,
    /// "exit status 0", "killed by signal 9 (SIGKILL)", ...
    pub description: String,
}

/// What a worker tells its supervisor.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkerEvent {
    State(RunState),
    Reset(StopReason),
    Shutdown(StopReason),
    GuestPanic { reason: String, vcpu: u8 },
    Exited(WorkerExit),
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Value>>>>;

/// A worker connected and asked for its status, its events not followed yet.
pub struct Attachment {
    pub link: Arc<WorkerLink>,
    pub status: Status,
    /// Why the guest crashed: from an event before the status reply, or from the status.
    pub panic: Option<(String, u8)>,
    reader: BufReader<UnixStream>,
    child: Option<Child>,
    announced_shutdown: bool,
}

impl Attachment {
    /// Follows the worker's events on a thread of its own until the worker goes away.
    pub fn follow(
        self,
        on_event: impl FnMut(WorkerEvent) + Send + 'static,
    ) -> Result<(), SupervisorError> {
        let pending = self.link.pending.clone();
        let pid = self.link.pid;
        let (reader, child, announced) = (self.reader, self.child, self.announced_shutdown);
        std::thread::Builder::new()
            .name(format!("worker-{pid}"))
            .spawn(move || read_worker(reader, pending, pid, child, announced, on_event))
            .map(drop)
            .map_err(|err| SupervisorError::Connect {
                path: PathBuf::new(),
                timeout: Duration::ZERO,
                reason: format!("cannot start the reader thread: {err}"),
            })
    }
}

/// A connection to one worker's control socket.
pub struct WorkerLink {
    writer: Mutex<UnixStream>,
    pending: Pending,
    next_id: AtomicU64,
    pub pid: u32,
}

impl WorkerLink {
    /// Connects to a worker, waits for its hello and asks for its status. `child` is the worker
    /// process when this hangard started it (its exit status is then known exactly). Events
    /// are not followed yet: the caller records the link and the status first, then calls
    /// [`Attachment::follow`], so no event can overtake the status.
    pub fn attach(
        control: &Path,
        pid: u32,
        mut child: Option<Child>,
        timeout: Duration,
    ) -> Result<Attachment, SupervisorError> {
        let deadline = Instant::now() + timeout;
        let connect_err = |reason: String| SupervisorError::Connect {
            path: control.to_path_buf(),
            timeout,
            reason,
        };
        let stream = loop {
            match UnixStream::connect(control) {
                Ok(stream) => break stream,
                Err(err) => {
                    if let Some(child) = child.as_mut() {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Err(SupervisorError::StartupFailed {
                                status: describe_status(&status),
                                clean: status.success(),
                            });
                        }
                    } else if !worker_alive(pid) {
                        return Err(connect_err(format!("worker {pid} is not running")));
                    }
                    if Instant::now() >= deadline {
                        return Err(connect_err(err.to_string()));
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        };
        let io_err = |err: io::Error| connect_err(err.to_string());
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io_err)?);
        let mut next_message = || -> Result<Value, SupervisorError> {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => Err(connect_err("the worker closed the connection".into())),
                Ok(_) => serde_json::from_str(&line)
                    .map_err(|err| connect_err(format!("the worker sent {line:?}: {err}"))),
                Err(err) => Err(io_err(err)),
            }
        };
        let hello = next_message()?;
        if hello["event"] != "hello" {
            return Err(connect_err(format!("expected a hello event, got {hello}")));
        }
        if hello["version"] != PROTOCOL_VERSION {
            return Err(SupervisorError::Version(hello["version"].clone()));
        }
        (&stream)
            .write_all(b"{\"cmd\":\"status\",\"id\":0}\n")
            .map_err(io_err)?;
        // Events before the reply are summed up by the status itself, except why a guest
        // crashed and whether the worker is shutting down.
        let mut panic = None;
        let mut announced_shutdown = false;
        let reply = loop {
            let message = next_message()?;
            match serde_json::from_value::<Event>(message.clone()) {
                Ok(Event::GuestPanic { reason, vcpu }) => panic = Some((reason, vcpu)),
                Ok(Event::Shutdown { .. }) => announced_shutdown = true,
                Ok(_) => {}
                Err(_) if message.get("event").is_some() => {}
                Err(_) => break message,
            }
        };
        if reply["ok"] != true {
            return Err(connect_err(format!("status failed: {reply}")));
        }
        let status: Status = serde_json::from_value(reply)
            .map_err(|err| connect_err(format!("unexpected status reply: {err}")))?;
        // A crash from before this connection (a guest that crashed at once, or a hangard that
        // re-attaches) is only in the status.
        let panic = panic.or_else(|| {
            status
                .crash
                .as_ref()
                .map(|crash| (crash.reason.clone(), crash.vcpu))
        });
        stream.set_read_timeout(None).map_err(io_err)?;

        let link = Arc::new(WorkerLink {
            writer: Mutex::new(stream),
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            pid,
        });
        Ok(Attachment {
            link,
            status,
            panic,
            reader,
            child,
            announced_shutdown,
        })
    }

    /// Sends a command and waits for its reply (the reply's fields, without "ok" and "id").
    pub fn request(&self, command: &str, timeout: Duration) -> Result<Value, SupervisorError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, tx);
        let line = format!("{}\n", serde_json::json!({"cmd": command, "id": id}));
        let written = lock(&self.writer).write_all(line.as_bytes());
        if written.is_err() {
            lock(&self.pending).remove(&id);
            return Err(SupervisorError::Gone);
        }
        let mut reply = match rx.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&id);
                return Err(SupervisorError::Timeout {
                    command: command.to_string(),
                    timeout,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(SupervisorError::Gone),
        };
        if reply["ok"] != true {
            return Err(SupervisorError::Refused {
                command: command.to_string(),
                message: reply["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            });
        }
        if let Value::Object(map) = &mut reply {
            map.remove("ok");
            map.remove("id");
        }
        Ok(reply)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The reader thread: replies to their waiters, events to the callback, and the end.
fn read_worker(
    mut reader: BufReader<UnixStream>,
    pending: Pending,
    pid: u32,
    child: Option<Child>,
    mut announced_shutdown: bool,
    mut on_event: impl FnMut(WorkerEvent),
) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if message.get("event").is_some() {
            let event = match serde_json::from_value::<Event>(message) {
                Ok(Event::State { state }) => WorkerEvent::State(state),
                Ok(Event::Reset { reason }) => WorkerEvent::Reset(reason),
                Ok(Event::Shutdown { reason }) => {
                    announced_shutdown = true;
                    WorkerEvent::Shutdown(reason)
                }
                Ok(Event::GuestPanic { reason, vcpu }) => WorkerEvent::GuestPanic { reason, vcpu },
                Ok(Event::Hello { .. }) | Err(_) => continue,
            };
            on_event(event);
        } else if let Some(id) = message["id"].as_u64() {
            if let Some(waiter) = lock(&pending).remove(&id) {
                let _ = waiter.send(message);
            }
        }
    }
    // Waiters get "gone" instead of waiting out their timeouts.
    lock(&pending).clear();
    let exit = match child {
        Some(mut child) => match child.wait() {
            Ok(status) => WorkerExit {
                clean: announced_shutdown && status.success(),
                description: describe_status(&status),
            },
            Err(err) => WorkerExit {
                clean: false,
                description: format!("exit status unknown: {err}"),
            },
        },
        None => {
            // Not our child (adopted after a hangard restart): its status is not ours to read.
            let deadline = Instant::now() + Duration::from_secs(5);
            while worker_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            WorkerExit {
                clean: announced_shutdown,
                description: if announced_shutdown {
                    "exited after shutting down".into()
                } else {
                    "vanished without shutting down (it was started by an earlier hangard, so \
                     its exit status is unknown)"
                        .into()
                },
            }
        }
    };
    on_event(WorkerEvent::Exited(exit));
}

/// Opens a log file for appending, for hangard's own notes about a VM.
pub fn append_log(runtime: &RuntimeDir, line: &str) {
    if let Ok(mut file) = OpenOptions::new().append(true).open(runtime.log()) {
        let _ = writeln!(file, "hangard: {line}");
    }
}

/// Reads a whole small file, for the `GetWorkerLog` method.
pub fn read_log(runtime: &RuntimeDir) -> String {
    let mut text = String::new();
    if let Ok(file) = File::open(runtime.log()) {
        let _ = io::Read::read_to_string(&mut io::Read::take(file, 1 << 20), &mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_command_line_follows_the_definition() {
        let def = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","initrd":"/i","cmdline":"console=ttyS0 x=1",
                "memory":"64M","vcpus":2}"#,
        )
        .unwrap();
        let runtime = RuntimeDir::new(Path::new("/run/user/1/hangar"), "u");
        let args: Vec<String> = worker_args(&def, &runtime, &[])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--kernel",
                "/k",
                "--initrd",
                "/i",
                "--cmdline",
                "console=ttyS0 x=1",
                "--memory",
                "64M",
                "--cpus",
                "2",
                "--serial",
                "unix:/run/user/1/hangar/u/serial.sock",
                "--control",
                "/run/user/1/hangar/u/control.sock",
                "--display",
                "1280x800",
                "--display-socket",
                "/run/user/1/hangar/u/display.sock",
                "--input",
                "keyboard,tablet"
            ]
        );
        // The screen's size and input devices follow the definition.
        let small = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","resolution":"1024x768","input":{"tablet":false}}"#,
        )
        .unwrap();
        let args: Vec<String> = worker_args(&small, &runtime, &[])
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].as_str()
        };
        assert_eq!(after("--display"), "1024x768");
        assert_eq!(after("--input"), "keyboard");
        let neither = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","input":{"keyboard":false,"tablet":false}}"#,
        )
        .unwrap();
        let args = worker_args(&neither, &runtime, &[]);
        let at = args.iter().position(|a| a == "--input").unwrap();
        assert_eq!(args[at + 1], "none");
        let headless = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","memory":"64M","vcpus":1,"display":"none"}"#,
        )
        .unwrap();
        let args = worker_args(&headless, &runtime, &[]);
        for flag in ["--display-socket", "--display", "--input"] {
            assert!(!args.iter().any(|a| a == flag), "{flag}: {args:?}");
        }

        let attached = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","display":"none",
                "disks":[{"volume":"root.qcow2"},{"volume":"iso","readonly":true}],
                "nics":[{"mode":"none"},{"mode":"user"}]}"#,
        )
        .unwrap();
        let paths = [
            PathBuf::from("/pool/root.qcow2"),
            PathBuf::from("/pool/iso"),
        ];
        let args: Vec<String> = worker_args(&attached, &runtime, &paths)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let tail = &args[args.len() - 6..];
        assert_eq!(
            tail,
            [
                "--disk",
                "path=/pool/root.qcow2",
                "--disk",
                "path=/pool/iso,readonly=on",
                "--net",
                "unix:/run/user/1/hangar/u/net1.sock,mac=52:54:00:00:00:01"
            ]
        );
    }

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(
            describe_status(&ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            describe_status(&ExitStatus::from_raw(3 << 8)),
            "exit status 3"
        );
    }

    #[test]
    fn this_process_is_not_a_worker() {
        assert!(!worker_alive(std::process::id()));
        assert!(!worker_alive(u32::MAX));
        assert!(resident_bytes(std::process::id()) > 0);
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let root = std::env::temp_dir().join(format!("hangar-rt-test-{}", std::process::id()));
        let runtime = RuntimeDir::new(&root, "vm");
        runtime.prepare().unwrap();
        let text: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        fs::write(runtime.log(), &text).unwrap();
        assert_eq!(runtime.log_tail(3), ["line 18", "line 19", "line 20"]);
        fs::write(runtime.log(), format!("{text}{START_NOTE}x\nonly this\n")).unwrap();
        assert_eq!(runtime.log_tail(3), ["only this"]);
        let _ = fs::remove_dir_all(root);
    }
}
