//! The inventory: every VM this host knows, its definition and what it is doing now, and the
//! operations on it (libvirt's domain driver). `hangard` puts it on D-Bus; nothing here knows
//! about D-Bus.
//!
//! Locking: one mutex guards the definitions, the pool and the runtime states. It is never held
//! while waiting for a worker, because the worker's reader thread takes it to report events.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::ByteSize;
use crate::host::capabilities::HostCapabilities;
use crate::host::definition::{DefinitionError, DiskDefinition, NicDefinition, Uuid, VmDefinition};
use crate::host::network::{self, NetworkError};
use crate::host::stats::{Counters, Sample, StatsHistory, DEFAULT_HISTORY_LEN};
use crate::host::storage::{StorageError, StoragePool, Volume, VolumeFormat};
use crate::host::store::{DefinitionStore, SkippedFile, StoreError};
use crate::host::supervisor::{
    self, RuntimeDir, SupervisorError, WorkerEvent, WorkerExit, WorkerLink, LOG_TAIL_LINES,
};
use crate::protocol::{RunState, Stats};

/// How long a worker gets to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker gets to answer a command.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `destroy` waits for the worker to exit before killing it outright.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// Name of the sample VM that `hangarctl sample` defines.
pub const SAMPLE_NAME: &str = "debian-tiny";
pub const SAMPLE_VOLUME: &str = "debian-tiny.qcow2";
pub const SAMPLE_KERNEL: &str = "vmlinuz-cloud-amd64";
pub const SAMPLE_INITRD: &str = "initrd-cloud-amd64.img";
pub const SAMPLE_CMDLINE: &str = "console=ttyS0 hangar.test=shell";

/// Where the guest kit (`tests/guests/build`) keeps the sample's kernel and initramfs, as a
/// client sees it: `HANGAR_GUEST_CACHE`, else `~/.cache/hangar/guests`.
pub fn guest_cache_dir() -> PathBuf {
    std::env::var_os("HANGAR_GUEST_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hangar/guests")))
        .unwrap_or_default()
}

/// What a VM is doing, in libvirt's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Shutoff,
    Running,
    Paused,
    Crashed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Shutoff => "shutoff",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Crashed => "crashed",
        }
    }
}

impl From<RunState> for VmState {
    fn from(state: RunState) -> VmState {
        match state {
            RunState::Running => VmState::Running,
            RunState::Paused => VmState::Paused,
            RunState::Crashed => VmState::Crashed,
            RunState::Shutoff => VmState::Shutoff,
        }
    }
}

/// The family an error belongs to; clients see it as the D-Bus error name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidDefinition,
    InvalidArgument,
    NameTaken,
    Conflict,
    NotFound,
    InUse,
    InvalidState,
    Unsupported,
    Failed,
}

/// Errors of the inventory's operations.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("no VM named {0:?}; see `hangarctl list --all`")]
    NoSuchVm(String),
    #[error(
        "volume {volume:?} is used by {users}; detach it or undefine {users} with --remove-storage"
    )]
    InUse { volume: String, users: String },
    #[error("VM {vm:?} is {state}; {hint}")]
    InvalidState {
        vm: String,
        state: &'static str,
        hint: &'static str,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("VM {vm:?}: {source}")]
    Worker { vm: String, source: SupervisorError },
    #[error("VM {vm:?}: {source}")]
    Network { vm: String, source: NetworkError },
    #[error("VM {vm:?} did not start: {reason}")]
    StartFailed { vm: String, reason: String },
    #[error("sample VM: {0}")]
    Sample(String),
}

impl HostError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HostError::Definition(_) => ErrorKind::InvalidDefinition,
            HostError::Store(err) => match err {
                StoreError::Invalid(_) | StoreError::UuidMismatch { .. } => {
                    ErrorKind::InvalidDefinition
                }
                StoreError::NameTaken { .. } | StoreError::UuidTaken(_) => ErrorKind::NameTaken,
                StoreError::NotFound(_) => ErrorKind::NotFound,
                StoreError::Conflict { .. } => ErrorKind::Conflict,
                StoreError::Write { .. } | StoreError::Read { .. } => ErrorKind::Failed,
            },
            HostError::Storage(err) => match err {
                StorageError::InvalidName { .. }
                | StorageError::Format(_)
                | StorageError::Size(_)
                | StorageError::Outside { .. } => ErrorKind::InvalidArgument,
                StorageError::Exists(_) => ErrorKind::NameTaken,
                StorageError::NotFound(_) => ErrorKind::NotFound,
                StorageError::NoQemuImg => ErrorKind::Unsupported,
                StorageError::QemuImg { .. } | StorageError::Io { .. } => ErrorKind::Failed,
            },
            HostError::NoSuchVm(_) => ErrorKind::NotFound,
            HostError::Network {
                source: NetworkError::NoPasst { .. },
                ..
            } => ErrorKind::Unsupported,
            HostError::Network { .. } => ErrorKind::Failed,
            HostError::InUse { .. } => ErrorKind::InUse,
            HostError::InvalidState { .. } => ErrorKind::InvalidState,
            HostError::Unsupported(_) => ErrorKind::Unsupported,
            HostError::Worker { .. } | HostError::StartFailed { .. } | HostError::Sample(_) => {
                ErrorKind::Failed
            }
        }
    }
}

/// Something clients should hear about. VMs appearing and disappearing are announced by the
/// caller of `define`/`undefine`, which knows when its object exists.
#[derive(Clone, Debug, PartialEq)]
pub enum HostEvent {
    StateChanged {
        uuid: Uuid,
        state: VmState,
        reason: String,
    },
    DefinitionChanged {
        uuid: Uuid,
        generation: u64,
    },
}

/// One row of `list`.
#[derive(Clone, Debug, PartialEq)]
pub struct VmSummary {
    pub uuid: Uuid,
    pub name: String,
    pub state: VmState,
    pub vcpus: u32,
    pub memory: u64,
    pub autostart: bool,
    pub generation: u64,
}

/// Where the inventory keeps things, and how it runs workers.
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// `$XDG_CONFIG_HOME/hangar/vms`
    pub definitions: PathBuf,
    /// `$XDG_DATA_HOME/hangar/images`
    pub images: PathBuf,
    /// `$XDG_RUNTIME_DIR/hangar`
    pub runtime: PathBuf,
}

impl HostPaths {
    /// The XDG locations of this user. `XDG_RUNTIME_DIR` must be set: per-user runtime state
    /// does not belong in a shared directory.
    pub fn from_environment() -> Result<HostPaths, String> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let xdg = |var: &str, fallback: &str| -> Result<PathBuf, String> {
            match std::env::var_os(var).filter(|v| !v.is_empty()) {
                Some(dir) => Ok(PathBuf::from(dir)),
                None => home
                    .as_ref()
                    .map(|home| home.join(fallback))
                    .ok_or_else(|| format!("neither {var} nor HOME is set; set one of them")),
            }
        };
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                "XDG_RUNTIME_DIR is not set; log in through a session manager (systemd-logind) \
                 or set it to a private directory"
                    .to_string()
            })?;
        Ok(HostPaths {
            definitions: xdg("XDG_CONFIG_HOME", ".config")?.join("hangar/vms"),
            images: xdg("XDG_DATA_HOME", ".local/share")?.join("hangar/images"),
            runtime: runtime.join("hangar"),
        })
    }
}

struct VmRuntime {
    state: VmState,
    reason: String,
    link: Option<Arc<WorkerLink>>,
    starting: bool,
    history: StatsHistory,
}

impl VmRuntime {
    fn new() -> VmRuntime {
        VmRuntime {
            state: VmState::Shutoff,
            reason: String::new(),
            link: None,
            starting: false,
            history: StatsHistory::new(DEFAULT_HISTORY_LEN),
        }
    }
}

struct Inner {
    store: DefinitionStore,
    pool: StoragePool,
    runtime: HashMap<Uuid, VmRuntime>,
}

/// What [`Inventory::open`] gives: the inventory, its events, the definition files it skipped.
pub type OpenedInventory = (Arc<Inventory>, Receiver<HostEvent>, Vec<SkippedFile>);

/// Every VM on this host.
pub struct Inventory {
    inner: Mutex<Inner>,
    paths: HostPaths,
    vmm: PathBuf,
    capabilities: HostCapabilities,
    events: Mutex<Sender<HostEvent>>,
    stats_interval_ms: AtomicU64,
    me: Weak<Inventory>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Inventory {
    /// Loads the definitions and the pool. Returns the inventory, the stream of events for
    /// clients, and the definition files that could not be loaded.
    pub fn open(
        paths: HostPaths,
        vmm: PathBuf,
        capabilities: HostCapabilities,
    ) -> Result<OpenedInventory, HostError> {
        let (store, skipped) = DefinitionStore::open(&paths.definitions)?;
        let pool = StoragePool::open(&paths.images)?;
        let runtime = store
            .iter()
            .map(|def| (def.uuid, VmRuntime::new()))
            .collect();
        let (tx, rx) = mpsc::channel();
        let inventory = Arc::new_cyclic(|me| Inventory {
            inner: Mutex::new(Inner {
                store,
                pool,
                runtime,
            }),
            paths,
            vmm,
            capabilities,
            events: Mutex::new(tx),
            stats_interval_ms: AtomicU64::new(1000),
            me: me.clone(),
        });
        Ok((inventory, rx, skipped))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: HostEvent) {
        let _ = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(event);
    }

    pub fn capabilities(&self) -> &HostCapabilities {
        &self.capabilities
    }

    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    fn runtime_dir(&self, uuid: &Uuid) -> RuntimeDir {
        RuntimeDir::new(&self.paths.runtime, &uuid.to_string())
    }

    // ---- queries ----

    pub fn uuids(&self) -> Vec<Uuid> {
        self.lock().store.iter().map(|d| d.uuid).collect()
    }

    pub fn list(&self) -> Vec<VmSummary> {
        let inner = self.lock();
        inner
            .store
            .iter()
            .map(|def| VmSummary {
                uuid: def.uuid,
                name: def.name.clone(),
                state: inner
                    .runtime
                    .get(&def.uuid)
                    .map_or(VmState::Shutoff, |r| r.state),
                vcpus: def.vcpus,
                memory: def.memory.0,
                autostart: def.autostart,
                generation: def.generation,
            })
            .collect()
    }

    pub fn lookup(&self, name: &str) -> Result<Uuid, HostError> {
        self.lock()
            .store
            .by_name(name)
            .map(|d| d.uuid)
            .ok_or_else(|| HostError::NoSuchVm(name.to_string()))
    }

    pub fn definition(&self, uuid: &Uuid) -> Result<VmDefinition, HostError> {
        self.lock()
            .store
            .get(uuid)
            .cloned()
            .ok_or_else(|| HostError::NoSuchVm(uuid.to_string()))
    }

    /// The state and, for `crashed`, why.
    pub fn state(&self, uuid: &Uuid) -> (VmState, String) {
        self.lock()
            .runtime
            .get(uuid)
            .map_or((VmState::Shutoff, String::new()), |r| {
                (r.state, r.reason.clone())
            })
    }

    pub fn worker_log(&self, uuid: &Uuid) -> String {
        supervisor::read_log(&self.runtime_dir(uuid))
    }

    // ---- definitions ----

    /// Defines a VM from JSON. Nothing is written unless every check passes.
    pub fn define(&self, json: &str) -> Result<Uuid, HostError> {
        let mut def = VmDefinition::from_json(json)?;
        def.canonicalize_files();
        def.check_files()?;
        let mut inner = self.lock();
        check_volumes(&inner.pool, &def)?;
        let uuid = inner.store.define(def)?.uuid;
        inner.runtime.insert(uuid, VmRuntime::new());
        Ok(uuid)
    }

    /// Replaces a definition if nobody changed it since `expected_generation`. A running VM
    /// picks the change up at its next start.
    pub fn update(
        &self,
        uuid: &Uuid,
        json: &str,
        expected_generation: u64,
    ) -> Result<u64, HostError> {
        let mut def = VmDefinition::from_json(json)?;
        def.canonicalize_files();
        def.check_files()?;
        let generation = {
            let mut inner = self.lock();
            check_volumes(&inner.pool, &def)?;
            inner
                .store
                .update(uuid, def, expected_generation)?
                .generation
        };
        self.emit(HostEvent::DefinitionChanged {
            uuid: *uuid,
            generation,
        });
        Ok(generation)
    }

    /// Forgets a shut-off VM, and with `remove_storage` deletes its volumes too.
    pub fn undefine(&self, uuid: &Uuid, remove_storage: bool) -> Result<(), HostError> {
        let mut inner = self.lock();
        let def = inner
            .store
            .get(uuid)
            .cloned()
            .ok_or_else(|| HostError::NoSuchVm(uuid.to_string()))?;
        let runtime = inner.runtime.get(uuid);
        if runtime.is_some_and(|r| r.link.is_some() || r.starting) {
            return Err(HostError::InvalidState {
                vm: def.name,
                state: runtime.map_or("running", |r| r.state.as_str()),
                hint: "destroy or shut it down first",
            });
        }
        if remove_storage {
            // Volumes shared with another VM stay: removing them would break that VM.
            for disk in &def.disks {
                let users = users_of(&inner.store, &disk.volume, Some(uuid));
                if !users.is_empty() {
                    return Err(HostError::InUse {
                        volume: disk.volume.clone(),
                        users,
                    });
                }
            }
        }
        inner.store.remove(uuid)?;
        inner.runtime.remove(uuid);
        if remove_storage {
            for disk in &def.disks {
                match inner.pool.delete(&disk.volume) {
                    Ok(()) | Err(StorageError::NotFound(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        drop(inner);
        network::stop_networks(&self.runtime_dir(uuid));
        self.runtime_dir(uuid).remove();
        Ok(())
    }

    // ---- lifecycle ----

    fn name_of(&self, uuid: &Uuid) -> String {
        self.lock()
            .store
            .get(uuid)
            .map_or_else(|| uuid.to_string(), |d| d.name.clone())
    }

    fn set_state(&self, uuid: &Uuid, state: VmState, reason: String) {
        let changed = {
            let mut inner = self.lock();
            match inner.runtime.get_mut(uuid) {
                Some(runtime) if runtime.state != state || runtime.reason != reason => {
                    runtime.state = state;
                    runtime.reason = reason.clone();
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.emit(HostEvent::StateChanged {
                uuid: *uuid,
                state,
                reason,
            });
        }
    }

    /// The worker link of an active VM, or why there is none.
    fn link(&self, uuid: &Uuid, hint: &'static str) -> Result<Arc<WorkerLink>, HostError> {
        let inner = self.lock();
        let def = inner
            .store
            .get(uuid)
            .ok_or_else(|| HostError::NoSuchVm(uuid.to_string()))?;
        let runtime = inner.runtime.get(uuid);
        runtime
            .and_then(|r| r.link.clone())
            .ok_or_else(|| HostError::InvalidState {
                vm: def.name.clone(),
                state: runtime.map_or("shutoff", |r| r.state.as_str()),
                hint,
            })
    }

    fn command(
        &self,
        uuid: &Uuid,
        command: &str,
        hint: &'static str,
    ) -> Result<serde_json::Value, HostError> {
        let link = self.link(uuid, hint)?;
        link.request(command, REQUEST_TIMEOUT)
            .map_err(|source| HostError::Worker {
                vm: self.name_of(uuid),
                source,
            })
    }

    /// Starts a VM's worker and waits until it runs.
    pub fn start(&self, uuid: &Uuid) -> Result<(), HostError> {
        if !self.capabilities.kvm_usable {
            return Err(HostError::Unsupported(format!(
                "cannot start VMs on this host: {}",
                self.capabilities.kvm_problem
            )));
        }
        let def = {
            let mut inner = self.lock();
            let def = inner
                .store
                .get(uuid)
                .cloned()
                .ok_or_else(|| HostError::NoSuchVm(uuid.to_string()))?;
            let runtime = inner.runtime.entry(*uuid).or_insert_with(VmRuntime::new);
            if runtime.link.is_some() || runtime.starting {
                return Err(HostError::InvalidState {
                    vm: def.name,
                    state: runtime.state.as_str(),
                    hint: "it is already active",
                });
            }
            runtime.starting = true;
            def
        };
        let result = self.launch(&def);
        let mut inner = self.lock();
        if let Some(runtime) = inner.runtime.get_mut(uuid) {
            runtime.starting = false;
        }
        result
    }

    fn launch(&self, def: &VmDefinition) -> Result<(), HostError> {
        def.check_files()?;
        let runtime_dir = self.runtime_dir(&def.uuid);
        let worker_err = |source| HostError::Worker {
            vm: def.name.clone(),
            source,
        };
        runtime_dir.prepare().map_err(worker_err)?;
        let disk_paths = {
            let inner = self.lock();
            def.disks
                .iter()
                .map(|disk| inner.pool.path_of(&disk.volume))
                .collect::<Result<Vec<_>, _>>()?
        };
        network::start_networks(def, &runtime_dir, self.capabilities.passt.as_deref()).map_err(
            |source| HostError::Network {
                vm: def.name.clone(),
                source,
            },
        )?;
        let child = match supervisor::spawn_worker(&self.vmm, def, &runtime_dir, &disk_paths) {
            Ok(child) => child,
            Err(err) => {
                network::stop_networks(&runtime_dir);
                return Err(worker_err(err));
            }
        };
        let pid = child.id();
        let Err(err) = self.attach(&def.uuid, pid, Some(child)) else {
            return Ok(());
        };
        let exited_cleanly = match &err {
            SupervisorError::StartupFailed { clean, .. } => *clean,
            _ => reap_failed_worker(pid),
        };
        runtime_dir.clear();
        network::stop_networks(&runtime_dir);
        if exited_cleanly {
            // A guest quick enough to power off before hangard connected: it ran, and is off.
            supervisor::append_log(
                &runtime_dir,
                "the guest powered off before hangard connected",
            );
            return Ok(());
        }
        let tail = runtime_dir.log_tail(LOG_TAIL_LINES).join(" | ");
        Err(HostError::StartFailed {
            vm: def.name.clone(),
            reason: format!("{err}; worker log: {tail}"),
        })
    }

    /// Connects to a worker, records its state, then follows its events.
    fn attach(&self, uuid: &Uuid, pid: u32, child: Option<Child>) -> Result<(), SupervisorError> {
        let runtime_dir = self.runtime_dir(uuid);
        let attachment = WorkerLink::attach(&runtime_dir.control(), pid, child, START_TIMEOUT)?;
        let state = VmState::from(attachment.status.state);
        let reason = match (&attachment.panic, state) {
            (Some((reason, vcpu)), VmState::Crashed) => crash_reason(reason, *vcpu),
            // Only a worker older than the status' crash field says nothing about why.
            (None, VmState::Crashed) => {
                "the guest crashed before hangard connected; destroy or reboot it".to_string()
            }
            _ => String::new(),
        };
        {
            let mut inner = self.lock();
            let runtime = inner.runtime.entry(*uuid).or_insert_with(VmRuntime::new);
            runtime.link = Some(attachment.link.clone());
            runtime.history.restart();
        }
        self.set_state(uuid, state, reason);
        let me = self.me.clone();
        let id = *uuid;
        let followed = attachment.follow(move |event| {
            if let Some(inventory) = me.upgrade() {
                inventory.on_worker_event(&id, event);
            }
        });
        if let Err(err) = &followed {
            if let Some(runtime) = self.lock().runtime.get_mut(uuid) {
                runtime.link = None;
            }
            let reason = format!("hangard cannot follow the worker ({err}); destroy it");
            self.set_state(uuid, VmState::Crashed, reason);
        }
        followed
    }

    fn on_worker_event(&self, uuid: &Uuid, event: WorkerEvent) {
        match event {
            WorkerEvent::State(RunState::Shutoff) => {}
            WorkerEvent::State(state) => {
                let reason = if state == RunState::Crashed {
                    self.state(uuid).1
                } else {
                    String::new()
                };
                self.set_state(uuid, state.into(), reason);
            }
            WorkerEvent::GuestPanic { reason, vcpu } => {
                self.set_state(uuid, VmState::Crashed, crash_reason(&reason, vcpu));
            }
            WorkerEvent::Reset(_) | WorkerEvent::Shutdown(_) => {}
            WorkerEvent::Exited(exit) => self.on_worker_exit(uuid, exit),
        }
    }

    fn on_worker_exit(&self, uuid: &Uuid, exit: WorkerExit) {
        let runtime_dir = self.runtime_dir(uuid);
        {
            let mut inner = self.lock();
            if let Some(runtime) = inner.runtime.get_mut(uuid) {
                runtime.link = None;
                runtime.history.restart();
            }
        }
        network::stop_networks(&runtime_dir);
        if exit.clean {
            runtime_dir.clear();
            self.set_state(uuid, VmState::Shutoff, String::new());
        } else {
            let tail = runtime_dir.log_tail(LOG_TAIL_LINES);
            supervisor::append_log(&runtime_dir, &format!("worker {}", exit.description));
            let _ = std::fs::remove_file(runtime_dir.pid_file());
            self.set_state(
                uuid,
                VmState::Crashed,
                if tail.is_empty() {
                    format!("the worker ended: {}; it logged nothing", exit.description)
                } else {
                    format!(
                        "the worker ended: {}; its last log lines: {}",
                        exit.description,
                        tail.join(" | ")
                    )
                },
            );
        }
    }

    /// Finds the workers that outlived an earlier hangard and follows them again.
    pub fn reattach_all(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for uuid in self.uuids() {
            let runtime_dir = self.runtime_dir(&uuid);
            let Some(pid) = runtime_dir.read_pid() else {
                continue;
            };
            let name = self.name_of(&uuid);
            if supervisor::worker_alive(pid) {
                match self.attach(&uuid, pid, None) {
                    Ok(()) => notes.push(format!("re-attached VM {name:?} (worker {pid})")),
                    Err(err) => {
                        self.set_state(
                            &uuid,
                            VmState::Crashed,
                            format!("worker {pid} is alive but does not answer: {err}; destroy it"),
                        );
                        notes.push(format!("VM {name:?}: worker {pid} does not answer: {err}"));
                    }
                }
            } else if runtime_dir.control().exists() {
                // A clean exit removes the sockets; a leftover one means the worker died.
                let tail = runtime_dir.log_tail(LOG_TAIL_LINES);
                runtime_dir.clear();
                network::stop_networks(&runtime_dir);
                self.set_state(
                    &uuid,
                    VmState::Crashed,
                    format!(
                        "the worker died while hangard was not running; last log lines: {}",
                        tail.join(" | ")
                    ),
                );
                notes.push(format!(
                    "VM {name:?}: worker {pid} died while hangard was away"
                ));
            } else {
                runtime_dir.clear();
                network::stop_networks(&runtime_dir);
            }
        }
        notes
    }

    /// Starts every shut-off autostart VM. Returns one note per VM.
    pub fn autostart_all(&self) -> Vec<String> {
        let autostart: Vec<(Uuid, String)> = {
            let inner = self.lock();
            inner
                .store
                .iter()
                .filter(|d| d.autostart)
                .filter(|d| inner.runtime.get(&d.uuid).is_none_or(|r| r.link.is_none()))
                .map(|d| (d.uuid, d.name.clone()))
                .collect()
        };
        autostart
            .into_iter()
            .map(|(uuid, name)| match self.start(&uuid) {
                Ok(()) => format!("autostarted VM {name:?}"),
                Err(err) => format!("autostart of VM {name:?} failed: {err}"),
            })
            .collect()
    }

    /// ACPI power button: the guest decides when to power off.
    pub fn shutdown(&self, uuid: &Uuid) -> Result<(), HostError> {
        self.command(uuid, "powerdown", "it is not running")
            .map(drop)
    }

    /// Stops a VM at once, like pulling the plug. Waits until the worker is gone.
    pub fn destroy(&self, uuid: &Uuid) -> Result<(), HostError> {
        let link = match self.link(uuid, "it is not running") {
            Ok(link) => link,
            Err(err) => {
                // A crashed VM whose worker is gone: destroying just acknowledges it.
                if self.state(uuid).0 == VmState::Crashed {
                    // A worker that lives on but stopped answering goes now.
                    if let Some(pid) = self.runtime_dir(uuid).read_pid() {
                        if supervisor::worker_alive(pid) {
                            // SAFETY: kill(2) on a pid checked just now to be a live
                            // hangar-vmm worker, recorded in this VM's runtime directory.
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        }
                    }
                    self.runtime_dir(uuid).clear();
                    network::stop_networks(&self.runtime_dir(uuid));
                    self.set_state(uuid, VmState::Shutoff, String::new());
                    return Ok(());
                }
                return Err(err);
            }
        };
        if link.request("kill", REQUEST_TIMEOUT).is_err() && supervisor::worker_alive(link.pid) {
            // SAFETY: kill(2) on a pid verified just now to be a live hangar-vmm worker.
            unsafe { libc::kill(link.pid as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + DESTROY_TIMEOUT;
        while self
            .lock()
            .runtime
            .get(uuid)
            .is_some_and(|r| r.link.is_some())
        {
            if Instant::now() > deadline {
                return Err(HostError::Worker {
                    vm: self.name_of(uuid),
                    source: SupervisorError::Timeout {
                        command: "kill".into(),
                        timeout: DESTROY_TIMEOUT,
                    },
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Hard reset: the guest boots again from its kernel.
    pub fn reboot(&self, uuid: &Uuid) -> Result<(), HostError> {
        self.command(uuid, "reset", "start it instead").map(drop)
    }

    pub fn suspend(&self, uuid: &Uuid) -> Result<(), HostError> {
        self.command(uuid, "pause", "it is not running").map(drop)?;
        self.set_state(uuid, VmState::Paused, String::new());
        Ok(())
    }

    pub fn resume(&self, uuid: &Uuid) -> Result<(), HostError> {
        self.command(uuid, "resume", "it is not running")
            .map(drop)?;
        self.set_state(uuid, VmState::Running, String::new());
        Ok(())
    }

    /// A connection to the VM's serial console, straight to the worker.
    pub fn open_serial(&self, uuid: &Uuid) -> Result<UnixStream, HostError> {
        self.link(uuid, "start it first")?;
        let path = self.runtime_dir(uuid).serial();
        UnixStream::connect(&path).map_err(|err| HostError::Worker {
            vm: self.name_of(uuid),
            source: SupervisorError::Connect {
                path,
                timeout: Duration::ZERO,
                reason: err.to_string(),
            },
        })
    }

    /// A connection to the VM's display stream, straight to the worker: the framebuffer memfd
    /// first, then damage; input goes back on it.
    pub fn open_display(&self, uuid: &Uuid) -> Result<UnixStream, HostError> {
        self.link(uuid, "start it first")?;
        if self.definition(uuid)?.display == crate::host::definition::DisplayKind::None {
            return Err(HostError::Unsupported(format!(
                "VM {:?} has no display (\"display\": \"none\"); set \"display\": \"framebuffer\" \
                 and restart it, or use its serial console",
                self.name_of(uuid)
            )));
        }
        let path = self.runtime_dir(uuid).display();
        UnixStream::connect(&path).map_err(|err| HostError::Worker {
            vm: self.name_of(uuid),
            source: SupervisorError::Connect {
                path,
                timeout: Duration::ZERO,
                reason: err.to_string(),
            },
        })
    }

    // ---- stats ----

    pub fn set_stats_interval(&self, interval: Duration) {
        let ms = interval.as_millis().clamp(50, 3_600_000) as u64;
        self.stats_interval_ms.store(ms, Ordering::Relaxed);
    }

    pub fn stats_interval(&self) -> Duration {
        Duration::from_millis(self.stats_interval_ms.load(Ordering::Relaxed))
    }

    /// Reads every active worker's counters once.
    pub fn sample_all(&self) {
        let active: Vec<(Uuid, Arc<WorkerLink>)> = self
            .lock()
            .runtime
            .iter()
            .filter_map(|(uuid, r)| r.link.clone().map(|l| (*uuid, l)))
            .collect();
        for (uuid, link) in active {
            let Ok(reply) = link.request("stats", Duration::from_secs(2)) else {
                continue;
            };
            let Ok(stats) = serde_json::from_value::<Stats>(reply) else {
                continue;
            };
            let counters =
                Counters::from_worker(&stats, monotonic_ns(), supervisor::resident_bytes(link.pid));
            if let Some(runtime) = self.lock().runtime.get_mut(&uuid) {
                runtime.history.record(counters, now_ms());
            }
        }
    }

    /// Samples at the stats interval, forever, on a thread of its own.
    pub fn spawn_sampler(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || loop {
                let Some(inventory) = me.upgrade() else {
                    return;
                };
                let interval = inventory.stats_interval();
                inventory.sample_all();
                drop(inventory);
                std::thread::sleep(interval);
            });
    }

    /// The latest sample of an active VM.
    pub fn stats(&self, uuid: &Uuid) -> Result<Sample, HostError> {
        let inner = self.lock();
        let def = inner
            .store
            .get(uuid)
            .ok_or_else(|| HostError::NoSuchVm(uuid.to_string()))?;
        let runtime = inner.runtime.get(uuid);
        match runtime {
            Some(r) if r.link.is_some() => Ok(r.history.latest().copied().unwrap_or(Sample {
                time_ms: now_ms(),
                memory_bytes: def.memory.0,
                ..Default::default()
            })),
            _ => Err(HostError::InvalidState {
                vm: def.name.clone(),
                state: runtime.map_or("shutoff", |r| r.state.as_str()),
                hint: "start it to see live stats; GetStatsHistory keeps earlier samples",
            }),
        }
    }

    pub fn stats_history(&self, uuid: &Uuid) -> Result<Vec<Sample>, HostError> {
        let inner = self.lock();
        if inner.store.get(uuid).is_none() {
            return Err(HostError::NoSuchVm(uuid.to_string()));
        }
        Ok(inner
            .runtime
            .get(uuid)
            .map(|r| r.history.samples().copied().collect())
            .unwrap_or_default())
    }

    // ---- storage ----

    pub fn volumes(&self) -> Result<Vec<Volume>, HostError> {
        let pool = self.lock().pool.clone();
        Ok(pool.list()?)
    }

    pub fn create_volume(&self, name: &str, size: u64, format: &str) -> Result<Volume, HostError> {
        let format: VolumeFormat = format.parse()?;
        let pool = self.lock().pool.clone();
        Ok(pool.create(name, size, format)?)
    }

    pub fn import_volume(
        &self,
        name: &str,
        source: &Path,
        format: &str,
    ) -> Result<Volume, HostError> {
        let format: VolumeFormat = format.parse()?;
        let roots = crate::host::locations::allowed_roots();
        let source = crate::host::locations::resolve_allowed(source, &roots).map_err(|reason| {
            StorageError::Outside {
                path: source.to_path_buf(),
                reason,
            }
        })?;
        let pool = self.lock().pool.clone();
        Ok(pool.import(name, &source, format)?)
    }

    pub fn resize_volume(&self, name: &str, size: u64) -> Result<Volume, HostError> {
        let pool = self.lock().pool.clone();
        Ok(pool.resize(name, size)?)
    }

    /// Deletes a volume no defined VM uses.
    pub fn delete_volume(&self, name: &str) -> Result<(), HostError> {
        let inner = self.lock();
        inner.pool.path_of(name)?;
        let users = users_of(&inner.store, name, None);
        if !users.is_empty() {
            return Err(HostError::InUse {
                volume: name.to_string(),
                users,
            });
        }
        Ok(inner.pool.delete(name)?)
    }

    // ---- sample VM ----

    /// Defines the sample VM from the guest kit in `cache` (`tests/guests/build all`).
    pub fn define_sample(&self, cache: &Path) -> Result<Uuid, HostError> {
        if let Some(def) = self.lock().store.by_name(SAMPLE_NAME) {
            return Err(StoreError::NameTaken {
                name: SAMPLE_NAME.into(),
                uuid: def.uuid,
            }
            .into());
        }
        let kernel = cache.join(SAMPLE_KERNEL);
        let initrd = cache.join(SAMPLE_INITRD);
        for file in [&kernel, &initrd] {
            if !file.is_file() {
                return Err(HostError::Sample(format!(
                    "{} is missing; build the guest kit first with `tests/guests/build all` \
                     (or set HANGAR_GUEST_CACHE)",
                    file.display()
                )));
            }
        }
        let pool = self.lock().pool.clone();
        if pool.info(SAMPLE_VOLUME).is_err() {
            pool.create(SAMPLE_VOLUME, 1 << 30, VolumeFormat::Qcow2)?;
        }
        let def = VmDefinition {
            schema_version: crate::host::definition::SCHEMA_VERSION,
            name: SAMPLE_NAME.into(),
            uuid: Uuid::NIL,
            vcpus: 1,
            memory: ByteSize(256 << 20),
            kernel,
            initrd: Some(initrd),
            cmdline: SAMPLE_CMDLINE.into(),
            disks: vec![DiskDefinition {
                volume: SAMPLE_VOLUME.into(),
                readonly: false,
            }],
            nics: vec![NicDefinition::default()],
            display: Default::default(),
            resolution: Default::default(),
            input: Default::default(),
            autostart: false,
            generation: 0,
        };
        self.define(&def.to_json())
    }
}

/// Ends a worker this hangard spawned but could not attach to. A worker whose guest powered off
/// at once may close the connection before hangard got its status; it is given a moment to exit
/// by itself. Returns whether it exited with status 0 (its guest powered off).
fn reap_failed_worker(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut status = 0;
    loop {
        // SAFETY: waitpid on the child this hangard spawned (its Child handle was dropped
        // unreaped); `status` outlives the call.
        let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        if reaped == pid as i32 {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if reaped != 0 {
            return false;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on that same child, still running and unreaped.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // SAFETY: as above; reaps it so no zombie is left.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    false
}

fn crash_reason(reason: &str, vcpu: u8) -> String {
    format!("the guest crashed ({reason} on vCPU {vcpu}); destroy or reboot it")
}

/// Names of the VMs (other than `except`) whose disks include `volume`.
/// Checks that every disk of `def` names a volume the pool has, so that a definition never
/// points at storage that is not there (a typo, or a volume deleted meanwhile).
fn check_volumes(pool: &StoragePool, def: &VmDefinition) -> Result<(), DefinitionError> {
    for (i, disk) in def.disks.iter().enumerate() {
        let present = pool.path_of(&disk.volume).is_ok_and(|path| path.is_file());
        if !present {
            return Err(DefinitionError::Field {
                field: format!("disks[{i}].volume"),
                reason: format!(
                    "there is no volume {:?} in the pool; create it (hangarctl vol-create) or \
                     pick one of hangarctl vol-list",
                    disk.volume
                ),
            });
        }
    }
    Ok(())
}

fn users_of(store: &DefinitionStore, volume: &str, except: Option<&Uuid>) -> String {
    store
        .iter()
        .filter(|d| Some(&d.uuid) != except)
        .filter(|d| d.disks.iter().any(|disk| disk.volume == volume))
        .map(|d| format!("{:?}", d.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::capabilities::Acceleration;

    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn inventory(tag: &str, kvm_usable: bool) -> (Arc<Inventory>, Receiver<HostEvent>, Scratch) {
        let root = std::env::temp_dir().join(format!("hangar-inv-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = HostPaths {
            definitions: root.join("vms"),
            images: root.join("images"),
            runtime: root.join("run"),
        };
        let capabilities = HostCapabilities {
            kvm_usable,
            kvm_problem: if kvm_usable {
                String::new()
            } else {
                "/dev/kvm does not exist; enable virtualization".into()
            },
            acceleration: Acceleration::None,
            kvm_modules: Vec::new(),
            host_cpus: 1,
            host_memory_bytes: 1 << 30,
            passt: None,
            qemu_img: None,
        };
        let (inventory, events, skipped) = Inventory::open(
            paths,
            PathBuf::from("/nonexistent/hangar-vmm"),
            capabilities,
        )
        .unwrap();
        assert!(skipped.is_empty());
        (inventory, events, Scratch(root))
    }

    /// A readable file in a place definitions may name (the temp directory), standing in for
    /// a kernel: these tests never boot it.
    fn test_kernel() -> PathBuf {
        static KERNEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        KERNEL
            .get_or_init(|| {
                let path =
                    std::env::temp_dir().join(format!("hangar-unit-kernel-{}", std::process::id()));
                std::fs::write(&path, b"not really a kernel").unwrap();
                path
            })
            .clone()
    }

    fn definition(name: &str) -> String {
        let kernel = test_kernel();
        format!(
            r#"{{"name":"{name}","kernel":{:?}}}"#,
            kernel.display().to_string()
        )
    }

    #[test]
    fn without_kvm_start_is_refused_with_the_reason() {
        let (inventory, _events, _scratch) = inventory("nokvm", false);
        let uuid = inventory.define(&definition("a")).unwrap();
        let err = inventory.start(&uuid).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("/dev/kvm does not exist"), "{err}");
        assert_eq!(inventory.state(&uuid).0, VmState::Shutoff);
    }

    #[test]
    fn a_missing_worker_binary_fails_the_start_cleanly() {
        let (inventory, _events, _scratch) = inventory("novmm", true);
        let uuid = inventory.define(&definition("a")).unwrap();
        let err = inventory.start(&uuid).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Failed);
        assert!(err.to_string().contains("--vmm"), "{err}");
        // Nothing is left half-started: a second try fails the same way, not "already active".
        assert_eq!(
            inventory.start(&uuid).unwrap_err().kind(),
            ErrorKind::Failed
        );
    }

    #[test]
    fn lifecycle_calls_on_a_shut_off_vm_say_what_to_do() {
        let (inventory, _events, _scratch) = inventory("state", true);
        let uuid = inventory.define(&definition("idle")).unwrap();
        for err in [
            inventory.shutdown(&uuid).unwrap_err(),
            inventory.suspend(&uuid).unwrap_err(),
            inventory.destroy(&uuid).unwrap_err(),
            inventory.stats(&uuid).unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::InvalidState, "{err}");
            assert!(err.to_string().contains("\"idle\" is shutoff"), "{err}");
        }
        assert!(inventory.open_serial(&uuid).is_err());
        assert!(inventory.stats_history(&uuid).unwrap().is_empty());
    }

    #[test]
    fn updates_are_announced_and_lookups_follow_renames() {
        let (inventory, events, _scratch) = inventory("update", true);
        let uuid = inventory.define(&definition("old")).unwrap();
        assert_eq!(inventory.update(&uuid, &definition("new"), 1).unwrap(), 2);
        assert_eq!(
            events.try_recv().unwrap(),
            HostEvent::DefinitionChanged {
                uuid,
                generation: 2
            }
        );
        assert_eq!(inventory.lookup("new").unwrap(), uuid);
        assert_eq!(
            inventory.lookup("old").unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let err = inventory
            .update(&uuid, &definition("newer"), 1)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(inventory.list()[0].name, "new");
    }

    #[test]
    fn shared_volumes_are_kept_when_one_vm_goes_with_its_storage() {
        let (inventory, _events, _scratch) = inventory("shared", true);
        let kernel = test_kernel().display().to_string();
        let pool = inventory.lock().pool.dir().to_path_buf();
        std::fs::write(pool.join("shared.img"), vec![0u8; 4096]).unwrap();
        let with_disk = |name: &str| {
            format!(
                r#"{{"name":"{name}","kernel":{kernel:?},"disks":[{{"volume":"shared.img"}}]}}"#
            )
        };
        let a = inventory.define(&with_disk("a")).unwrap();
        inventory.define(&with_disk("b")).unwrap();
        let err = inventory.undefine(&a, true).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InUse);
        assert!(err.to_string().contains("\"b\""), "{err}");
        assert_eq!(inventory.list().len(), 2, "nothing was undefined");
        let err = inventory.delete_volume("shared.img").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InUse);
        inventory.undefine(&a, false).unwrap();
        assert_eq!(inventory.list().len(), 1);
    }
}
