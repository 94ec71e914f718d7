//! Shared pieces of the engine's integration tests: building the guests, running a real
//! `hangar-vmm` worker, reading its serial console and talking to its control socket.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod display;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fails loudly when /dev/kvm cannot be used: these tests must run, not skip, on CI machines.
pub fn require_kvm() {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(
        usable,
        "/dev/kvm is not usable here; the engine's integration tests need KVM (load kvm_intel or kvm_amd, or kvm_pvm, and give this user access to /dev/kvm)"
    );
}

/// Builds the tiny guests once per test binary and returns the directory holding them.
pub fn tiny_guest(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let output = Command::new(repo_root().join("tests/guests/tiny/build"))
            .output()
            .expect("run tests/guests/tiny/build");
        assert!(
            output.status.success(),
            "building the tiny guests failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build prints the output directory")
                .trim(),
        )
    });
    let path = dir.join(format!("{name}.elf"));
    assert!(path.is_file(), "tiny guest {} is missing", path.display());
    path
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hangar-test-{}-{}-{tag}", std::process::id(), n));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running worker with its serial console on a pipe.
pub struct Vmm {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    pub control_path: Option<PathBuf>,
    stdin: Option<std::process::ChildStdin>,
    _dir: TempDir,
}

pub fn vmm_binary() -> &'static str {
    env!("CARGO_BIN_EXE_hangar-vmm")
}

impl Vmm {
    /// Starts `hangar-vmm` with `args`, serial on stdio, and a control socket unless
    /// `with_control` is false.
    pub fn start(args: &[&str], with_control: bool) -> Vmm {
        Vmm::start_wrapped(&[], args, with_control)
    }

    /// As [`Vmm::start`], with `wrapper` (a program and its arguments, such as `unshare ...`)
    /// running the worker: the worker's path and `args` follow the wrapper's own arguments.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], with_control: bool) -> Vmm {
        let dir = TempDir::new("vmm");
        let control_path = with_control.then(|| dir.path("control.sock"));
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(vmm_binary());
                command
            }
            None => Command::new(vmm_binary()),
        };
        command.args(args);
        if let Some(path) = &control_path {
            command.arg("--control").arg(path);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start hangar-vmm");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader
                .read_until(b'\n', &mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let stdin = child.stdin.take();
        Vmm {
            child,
            lines,
            seen: Vec::new(),
            control_path,
            stdin,
            _dir: dir,
        }
    }

    /// Waits for a serial line containing `needle`; returns it.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no serial line containing {needle:?} within {timeout:?}; console so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Serial lines that arrive within `window`.
    pub fn lines_within(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            lines.push(line);
        }
        lines
    }

    pub fn type_serial(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Connects a control client.
    pub fn control(&self) -> ControlClient {
        ControlClient::connect(
            self.control_path
                .as_ref()
                .expect("started with a control socket"),
        )
    }

    /// Every serial line not yet read, once the worker has gone (its stdout closed).
    pub fn rest_of_console(&mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut rest = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            rest.push(line);
        }
        rest
    }

    /// Waits for the worker to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "hangar-vmm did not exit within {timeout:?}; console:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control-socket client that separates replies from events.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pub events: Vec<Value>,
}

impl ControlClient {
    pub fn connect(path: &Path) -> ControlClient {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(err) => panic!("cannot connect to {}: {err}", path.display()),
            }
        };
        // The socket exists from early in the worker's set-up, but the hello only comes once
        // the machine is built, which includes unpacking a bzImage: slow in the nested lab.
        stream
            .set_read_timeout(Some(Duration::from_secs(150)))
            .unwrap();
        let mut client = ControlClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
        };
        let hello = client
            .next_message()
            .expect("no hello event within 150 s of connecting");
        assert_eq!(hello["event"], "hello", "{hello}");
        assert_eq!(hello["version"], 1);
        client
            .writer
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        client
    }

    fn next_message(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|err| {
                panic!("worker sent a line that is not JSON ({err}): {line:?}")
            })),
        }
    }

    /// Sends a raw line and returns the reply, keeping events aside.
    pub fn send_raw(&mut self, line: &[u8]) -> Value {
        self.writer.write_all(line).unwrap();
        self.writer.write_all(b"\n").unwrap();
        self.reply()
    }

    /// Reads until the next reply.
    pub fn reply(&mut self) -> Value {
        loop {
            let message = self
                .next_message()
                .expect("the worker closed the connection");
            if message.get("event").is_some() {
                self.events.push(message);
            } else {
                return message;
            }
        }
    }

    pub fn request(&mut self, request: Value) -> Value {
        self.send_raw(request.to_string().as_bytes())
    }

    /// Sends a command and asserts that it succeeded.
    pub fn ok(&mut self, cmd: &str) -> Value {
        let reply = self.request(serde_json::json!({ "cmd": cmd }));
        assert_eq!(reply["ok"], true, "{cmd} failed: {reply}");
        reply
    }

    /// Waits for an event with `event == name`, returning it.
    pub fn wait_event(&mut self, name: &str) -> Value {
        if let Some(pos) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(pos);
        }
        loop {
            let message = self.next_message().unwrap_or_else(|| {
                panic!(
                    "connection closed before a {name} event; got {:?}",
                    self.events
                )
            });
            if message["event"] == name {
                return message;
            }
            self.events.push(message);
        }
    }

    /// Reads whatever is left until the worker closes the connection.
    pub fn drain(&mut self) -> Vec<Value> {
        while let Some(message) = self.next_message() {
            self.events.push(message);
        }
        std::mem::take(&mut self.events)
    }

    /// `open-display`: returns the display connection passed with the reply (SCM_RIGHTS),
    /// read with recvmsg(2) since a plain read would drop the descriptor.
    pub fn open_display(&mut self) -> UnixStream {
        use vmm_sys_util::sock_ctrl_msg::ScmSocket;
        assert!(
            self.reader.buffer().is_empty(),
            "unread messages before open-display"
        );
        self.writer
            .write_all(b"{\"cmd\":\"open-display\"}\n")
            .unwrap();
        let mut text = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let (n, file) = self
                .writer
                .recv_with_fd(&mut buf)
                .expect("read the open-display reply");
            assert!(n > 0, "the worker closed the connection");
            text.extend_from_slice(&buf[..n]);
            let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            let (last, complete) = lines.split_last().unwrap();
            for line in complete {
                let message: Value = serde_json::from_slice(line).unwrap();
                if message.get("event").is_some() {
                    self.events.push(message);
                    continue;
                }
                assert_eq!(message["ok"], true, "open-display failed: {message}");
                assert!(last.is_empty(), "more after the reply: {last:?}");
                let file = file.expect("the open-display reply carries a descriptor");
                return UnixStream::from(std::os::fd::OwnedFd::from(file));
            }
            assert!(file.is_none(), "a descriptor came before the reply");
            text = last.to_vec();
        }
    }

    pub fn raw_stream(&mut self) -> &mut UnixStream {
        &mut self.writer
    }
}

/// Asserts that a guest's clock (seconds since the epoch) is within 5 s of the host's.
pub fn assert_clock_matches_host(guest: i64, what: &str) {
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (host - guest).abs() <= 5,
        "guest clock ({what}) is {} s off the host's",
        host - guest
    );
}

/// Reads everything from a stream until `needle` appears or the timeout passes.
pub fn read_until(stream: &mut UnixStream, needle: &str, timeout: Duration) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !text.contains(needle) {
        if let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(
        text.contains(needle),
        "no {needle:?} within {timeout:?}; got:\n{text}"
    );
    text
}

/// Runs the worker with `args`, expecting it to refuse them: exit code 1, no panic. Returns
/// its stderr.
pub fn run_expecting_error(args: &[&str]) -> String {
    let output = Command::new(vmm_binary()).args(args).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}
