//! A private Hangar host for one test: its own session bus (a real dbus-daemon), its own XDG
//! directories, a real hangard and real hangarctl runs. Include it next to `support`:
//!
//! ```ignore
//! mod support;
//! #[path = "support/hangard.rs"]
//! mod hangard_env;
//! ```
//!
//! Workers run in sessions of their own and would outlive the test, so dropping a `Host` kills
//! the workers its hangard started (by the pids in its runtime directory), then hangard and the
//! bus.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::TempDir;

pub fn hangard_binary() -> &'static str {
    env!("CARGO_BIN_EXE_hangard")
}

pub fn hangarctl_binary() -> &'static str {
    env!("CARGO_BIN_EXE_hangarctl")
}

/// A session bus, XDG directories and (usually) a running hangard.
pub struct Host {
    pub dir: TempDir,
    pub bus_address: String,
    bus: Child,
    hangard: Option<Child>,
    /// Extra flags for every hangard start.
    pub hangard_args: Vec<String>,
}

impl Host {
    /// A bus and directories, no hangard yet.
    pub fn new_without_hangard() -> Host {
        let dir = TempDir::new("hd");
        for sub in ["config", "data", "run"] {
            std::fs::create_dir_all(dir.path(sub)).unwrap();
        }
        let bus_log = std::fs::File::create(dir.path("bus.log")).unwrap();
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--print-address=1", "--nofork", "--nopidfile"])
            .env("XDG_DATA_HOME", dir.path("data"))
            .env("XDG_CONFIG_HOME", dir.path("config"))
            .env("XDG_RUNTIME_DIR", dir.path("run"))
            .env("DBUS_VERBOSE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(bus_log))
            .spawn()
            .expect("start dbus-daemon (install dbus-daemon: scripts/install-deps)");
        let mut address = String::new();
        BufReader::new(bus.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_string();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        Host {
            dir,
            bus_address: address,
            bus,
            hangard: None,
            hangard_args: vec!["--stats-interval".into(), "200".into()],
        }
    }

    /// A bus, directories and a running hangard.
    pub fn new() -> Host {
        let mut host = Host::new_without_hangard();
        host.start_hangard();
        host
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path("config")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path("data")
    }
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path("run")
    }
    pub fn definitions_dir(&self) -> PathBuf {
        self.config_dir().join("hangar/vms")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir().join("hangar/images")
    }

    fn env(&self, command: &mut Command) {
        command
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env("XDG_DATA_HOME", self.data_dir())
            .env("XDG_RUNTIME_DIR", self.runtime_dir());
    }

    /// Starts hangard and waits until it owns its bus name.
    pub fn start_hangard(&mut self) {
        assert!(self.hangard.is_none(), "hangard is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path("hangard.log"))
            .unwrap();
        let mut command = Command::new(hangard_binary());
        command
            .args(&self.hangard_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        self.env(&mut command);
        self.hangard = Some(command.spawn().expect("start hangard"));
        self.wait_for_name(Duration::from_secs(20));
    }

    /// Waits until somebody owns dev.hangar.Hangar on this bus.
    pub fn wait_for_name(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.name_has_owner() {
                return;
            }
            if let Some(child) = self.hangard.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "hangard exited early ({status}); log:\n{}",
                        self.hangard_log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "hangard did not take its bus name within {timeout:?}; log:\n{}",
                self.hangard_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn name_has_owner(&self) -> bool {
        let Ok(connection) = self.bus() else {
            return false;
        };
        let Ok(proxy) = zbus::blocking::fdo::DBusProxy::new(&connection) else {
            return false;
        };
        proxy
            .name_has_owner("dev.hangar.Hangar".try_into().unwrap())
            .unwrap_or(false)
    }

    /// The pid of whoever owns dev.hangar.Hangar on this bus, if that is not our hangard.
    fn activated_hangard_pid(&self) -> Option<u32> {
        let connection = self.bus().ok()?;
        let proxy = zbus::blocking::fdo::DBusProxy::new(&connection).ok()?;
        let pid = proxy
            .get_connection_unix_process_id("dev.hangar.Hangar".try_into().ok()?)
            .ok()?;
        (Some(pid) != self.hangard.as_ref().map(Child::id)).then_some(pid)
    }

    /// A proxy for VM `name` on `bus` that reads properties afresh on every call.
    pub fn vm_proxy<'a>(
        bus: &zbus::blocking::Connection,
        name: &str,
    ) -> zbus::Result<hangar_engine::host::api::VmProxyBlocking<'a>> {
        let manager = hangar_engine::host::api::ManagerProxyBlocking::new(bus)?;
        let path = manager.lookup_by_name(name)?;
        hangar_engine::host::api::VmProxyBlocking::builder(bus)
            .path(path)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
    }

    /// A client connection to this host's bus.
    pub fn bus(&self) -> zbus::Result<zbus::blocking::Connection> {
        zbus::blocking::connection::Builder::address(self.bus_address.as_str())?.build()
    }

    pub fn hangard_pid(&self) -> u32 {
        self.hangard.as_ref().expect("hangard runs").id()
    }

    /// kill -9 hangard, and wait until the bus has noticed.
    pub fn kill_hangard(&mut self) {
        if let Some(mut child) = self.hangard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.name_has_owner() {
            assert!(Instant::now() < deadline, "the bus still lists hangard");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn hangard_log(&self) -> String {
        std::fs::read_to_string(self.dir.path("hangard.log")).unwrap_or_default()
    }

    /// A hangarctl command with this host's environment.
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(hangarctl_binary());
        command.args(args);
        self.env(&mut command);
        command
    }

    /// Runs hangarctl to the end.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run hangarctl")
    }

    /// Runs hangarctl and asserts success; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "hangarctl {args:?} failed: {}\nhangard log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.hangard_log()
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs `hangarctl --json ARGS` and parses what it prints.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ctl_ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("not JSON ({err}): {text:?}"))
    }

    /// Runs hangarctl expecting failure; returns (D-Bus error name, message, stderr).
    pub fn ctl_err(&self, args: &[&str]) -> (String, String, String) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.ctl(&all);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "hangarctl {args:?} should have failed; it printed {}",
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "a failure is one line on stderr: {stderr:?}"
        );
        let value: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|err| panic!("--json failure is not JSON ({err}): {stderr}"));
        (
            value["error"].as_str().unwrap_or_default().to_string(),
            value["message"].as_str().unwrap_or_default().to_string(),
            stderr,
        )
    }

    /// The VM's state as `hangarctl domstate --json` reports it: (state, reason).
    pub fn state(&self, vm: &str) -> (String, String) {
        let value = self.ctl_json(&["domstate", vm]);
        (
            value["state"].as_str().unwrap_or_default().to_string(),
            value["reason"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Polls until the VM is in `state`; returns the reason.
    pub fn wait_state(&self, vm: &str, state: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let (now, reason) = self.state(vm);
            if now == state {
                return reason;
            }
            assert!(
                Instant::now() < deadline,
                "VM {vm} is still {now} ({reason}) after {timeout:?}, expected {state}; hangard log:\n{}",
                self.hangard_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a definition file and returns its path.
    pub fn definition_file(&self, name: &str, json: &Value) -> PathBuf {
        let path = self.dir.path(&format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(json).unwrap()).unwrap();
        path
    }

    /// The pid of a VM's worker, from its runtime directory.
    pub fn worker_pid(&self, uuid: &str) -> Option<u32> {
        std::fs::read_to_string(self.runtime_dir().join("hangar").join(uuid).join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Files in a directory, sorted (empty when it does not exist).
    pub fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Opens `hangarctl console VM` with piped input and output.
    pub fn console(&self, vm: &str) -> Console {
        let mut child = self
            .ctl_command(&["console", vm])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run hangarctl console");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Console {
            stdin: child.stdin.take(),
            child,
            output: rx,
            seen: String::new(),
        }
    }
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
            !matches!(state.as_deref(), Some("Z") | Some("X") | None)
        })
        .unwrap_or(false)
}

impl Drop for Host {
    fn drop(&mut self) {
        // Workers first: they are in sessions of their own and would outlive the test.
        let root = self.runtime_dir().join("hangar");
        for vm in Host::files_in(&root) {
            if let Some(pid) = self.worker_pid(&vm) {
                if process_alive(pid) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        if let Some(mut child) = self.hangard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A hangard this test's bus activated is not our child; it goes too.
        if let Some(pid) = self.activated_hangard_pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

/// `hangarctl console` with its output collected.
pub struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Receiver<Vec<u8>>,
    pub seen: String,
}

impl Console {
    pub fn type_text(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits until `needle` has appeared in the console output.
    pub fn expect(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!(
                    "no {needle:?} on the console within {timeout:?}; got:\n{}",
                    self.seen
                ),
            }
        }
    }

    /// Waits for hangarctl to exit (the console closed).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "hangarctl console did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
