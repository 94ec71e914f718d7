//! The control protocol between a `hangar-vmm` worker and its clients (`hangard`, tests).
//!
//! Newline-delimited JSON over a Unix stream socket. A client sends one request object per line,
//! with a `"cmd"` field and optionally `"id"` (echoed back) and `"version"`. The worker answers
//! each request with exactly one reply line, `{"ok":true,...}` or `{"ok":false,"error":"..."}`,
//! in order. Between replies it may send event lines, which carry an `"event"` field instead of
//! `"ok"`. On connect the worker first sends a `hello` event naming the protocol version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of this protocol. Requests naming another version are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line accepted, in bytes.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// A request, as the `"cmd"` field names it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Stop every vCPU; the reply comes once they have all stopped.
    Pause,
    /// Let the vCPUs run again.
    Resume,
    /// Press the ACPI power button, asking the guest to shut down.
    Powerdown,
    /// Hard reset: the machine restarts from its kernel.
    Reset,
    /// Stop the machine at once and exit the worker.
    Kill,
    /// The machine's state and shape.
    Status,
    /// Counters: per-vCPU CPU time and exits, guest memory.
    Stats,
    /// Write the screen as a PNG to `path` (absolute), atomically.
    Screenshot { path: std::path::PathBuf },
    /// Open a display stream without a display socket: the reply line `{"ok":true}` carries,
    /// as SCM_RIGHTS ancillary data on its first byte, one end of a new Unix stream connection
    /// that speaks the display protocol exactly as a connection to `--display-socket` does.
    /// Read the reply with recvmsg(2), or the descriptor is lost.
    OpenDisplay,
}

impl Command {
    /// Every command name, for error messages.
    pub const NAMES: &'static [&'static str] = &[
        "pause",
        "resume",
        "powerdown",
        "reset",
        "kill",
        "status",
        "stats",
        "screenshot",
        "open-display",
    ];
}

/// A request line, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub command: Command,
}

/// Why a request line could not be understood. The message is sent back to the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("a request must be a JSON object with a \"cmd\" field")]
    NotAnObject,
    #[error("missing \"cmd\" field; known commands: {known}", known = Command::NAMES.join(", "))]
    MissingCommand,
    #[error("unknown command {0:?}; known commands: {known}", known = Command::NAMES.join(", "))]
    UnknownCommand(String),
    #[error(
        "protocol version {0} is not supported; this worker speaks version {PROTOCOL_VERSION}"
    )]
    Version(Value),
    #[error("invalid arguments for {0:?}: {1}")]
    Arguments(String, String),
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    TooLong,
}

impl Request {
    /// Parses one request line. On failure returns the error and, if it could be read, the id.
    pub fn parse(line: &[u8]) -> Result<Request, (Option<Value>, RequestError)> {
        let value: Value = serde_json::from_slice(line)
            .map_err(|err| (None, RequestError::Malformed(err.to_string())))?;
        let Value::Object(mut object) = value else {
            return Err((None, RequestError::NotAnObject));
        };
        let id = object.remove("id");
        let fail = |err| (id.clone(), err);
        if let Some(version) = object.remove("version") {
            if version.as_u64() != Some(u64::from(PROTOCOL_VERSION)) {
                return Err(fail(RequestError::Version(version)));
            }
        }
        let name = match object.get("cmd") {
            None => return Err(fail(RequestError::MissingCommand)),
            Some(Value::String(name)) => name.clone(),
            Some(other) => return Err(fail(RequestError::UnknownCommand(other.to_string()))),
        };
        if !Command::NAMES.contains(&name.as_str()) {
            return Err(fail(RequestError::UnknownCommand(name)));
        }
        let command: Command = serde_json::from_value(Value::Object(object.clone()))
            .map_err(|err| fail(RequestError::Arguments(name.clone(), err.to_string())))?;
        // serde ignores unknown fields of internally tagged unit variants; a field the command
        // does not serialise back is one it does not know.
        if let Ok(Value::Object(known)) = serde_json::to_value(&command) {
            if let Some(field) = object.keys().find(|key| !known.contains_key(*key)) {
                let message = format!("unknown field {field:?}");
                return Err(fail(RequestError::Arguments(name, message)));
            }
        }
        Ok(Request { id, command })
    }
}

/// A reply line.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Command-specific fields, flattened into the reply object.
    #[serde(flatten)]
    pub data: Map<String, Value>,
}

impl Reply {
    pub fn ok(id: Option<Value>, data: impl Serialize) -> Reply {
        let data = match serde_json::to_value(data) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Reply {
            ok: true,
            id,
            error: None,
            data,
        }
    }

    pub fn error(id: Option<Value>, message: impl ToString) -> Reply {
        Reply {
            ok: false,
            id,
            error: Some(message.to_string()),
            data: Map::new(),
        }
    }
}

/// The machine's run state.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    /// The guest crashed (triple fault, failed entry); vCPUs are stopped until `reset` or `kill`.
    Crashed,
    /// The machine stopped; the worker is about to exit.
    Shutoff,
}

/// Why a machine stopped or restarted.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The guest entered ACPI S5.
    GuestPoweroff,
    /// The guest asked for a reset (keyboard controller, reset register, or KVM).
    GuestReset,
    /// A client sent `reset`.
    HostReset,
    /// A client sent `kill`, or the worker got SIGTERM/SIGINT.
    Killed,
}

/// An event line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// First line on every connection.
    Hello { version: u32, vmm: String },
    /// The run state changed.
    State { state: RunState },
    /// The machine restarted from its kernel.
    Reset { reason: StopReason },
    /// The machine stopped for good; the worker exits next.
    Shutdown { reason: StopReason },
    /// The guest crashed. `reason` is `guest-panic` (the kernel said so through pvpanic),
    /// `triple-fault`, `internal-error` or `entry-failure`.
    GuestPanic { reason: String, vcpu: u8 },
}

/// Reply data of `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: u32,
    pub state: RunState,
    /// Why the guest crashed, while it is in state `crashed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash: Option<Crash>,
    pub vcpus: u8,
    pub memory_bytes: u64,
    pub kernel: String,
    pub uptime_ms: u64,
    pub pid: u32,
    /// What confines the worker (absent from workers older than the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxStatus>,
}

/// What the sandbox could enforce on this kernel, for `status` and the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// `enforced`, `partial` (an older landlock: some rights are not restricted) or
    /// `unsupported` (the kernel has no landlock), or `off`.
    pub landlock: String,
    /// `enforced`, `log` or `off`.
    pub seccomp: String,
}

impl SandboxStatus {
    pub fn off() -> SandboxStatus {
        SandboxStatus {
            landlock: "off".into(),
            seccomp: "off".into(),
        }
    }
}

/// A guest crash, as the `guest-panic` event reported it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Crash {
    pub reason: String,
    pub vcpu: u8,
}

/// Exit counts of one vCPU, by kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ExitCounts {
    pub io: u64,
    pub mmio: u64,
    pub hlt: u64,
    pub other: u64,
}

/// Counters of one vCPU.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VcpuStats {
    pub id: u8,
    /// Host CPU time the vCPU thread has used, in nanoseconds.
    pub cpu_time_ns: u64,
    pub exits: ExitCounts,
}

/// Reply data of `stats`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub state: RunState,
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuStats>,
    /// One entry per disk, in `--disk` order.
    #[serde(default)]
    pub disks: Vec<DiskStats>,
    /// One entry per NIC, in `--net` order.
    #[serde(default)]
    pub nets: Vec<NetStats>,
    /// What the guest last reported through virtio-balloon; absent until its driver runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonStats>,
}

/// Guest memory as the guest sees it, from the balloon's statistics queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub cached_bytes: u64,
    /// When the guest sent these figures (Unix time in milliseconds).
    pub updated_unix_ms: u64,
}

/// Counters of one virtio-net NIC since the worker started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Frames dropped: no or too small a guest buffer (rx), a stalled back-end (tx).
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// Counters of one virtio-blk disk since the worker started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    pub path: std::path::PathBuf,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_requests: u64,
    pub write_requests: u64,
    pub flushes: u64,
    /// Requests that failed on the host (I/O errors).
    pub errors: u64,
}

/// Version of the display stream protocol, sent in the `framebuffer` event.
pub const DISPLAY_PROTOCOL_VERSION: u32 = 1;

/// What the worker sends on a display connection (newline-delimited JSON).
///
/// The first line is always `framebuffer`, with the framebuffer's memfd attached as
/// SCM_RIGHTS; clients map it `PROT_READ`, `MAP_SHARED`. Then `damage` lines follow whenever
/// the guest draws. A client that fell behind gets `resync` once it reads again: damage was
/// dropped for it, and it must redraw everything. After a guest reset the memfd stays valid
/// and a full-screen damage follows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum DisplayEvent {
    /// The framebuffer: pixel (x, y) is the little-endian u32 at `y * stride + x * 4` of the
    /// attached memfd (`x8r8g8b8`: blue in the low byte). `size` is the memfd's length.
    Framebuffer {
        version: u32,
        width: u32,
        height: u32,
        stride: u32,
        format: String,
        size: u64,
    },
    /// These areas changed since the last damage event.
    Damage {
        rects: Vec<crate::display::DamageRect>,
    },
    /// Damage was dropped for this client; redraw the whole screen.
    Resync,
    /// A line from the client could not be understood; the connection carries on.
    Error { error: String },
}

/// A mouse button, as the display protocol names it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PointerButton {
    Left,
    Middle,
    Right,
}

/// Largest absolute pointer coordinate, on both axes (the tablet's range).
pub const POINTER_MAX: u32 = 32767;
/// Largest Linux evdev key code (KEY_MAX).
pub const KEY_CODE_MAX: u16 = 0x2ff;

/// Input a display client sends. The worker does not reply to input; a bad line gets an
/// `error` event.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DisplayCommand {
    /// A key, by Linux evdev code (GTK hardware keycode - 8), pressed or released. It goes to
    /// whichever keyboard the guest has enabled: the virtio-input keyboard once the guest's
    /// driver listens on it, the i8042 (as a PS/2 scancode) before that.
    Key { code: u16, down: bool },
    /// Absolute pointer position, 0..=32767 on both axes, for the virtio-input tablet (ABS_X,
    /// ABS_Y). Moves the guest has not taken yet merge into the latest one.
    Pointer { x: u32, y: u32 },
    /// A mouse button on the tablet (BTN_LEFT, BTN_MIDDLE, BTN_RIGHT).
    Button { button: PointerButton, down: bool },
    /// Wheel steps on the tablet (REL_WHEEL), positive away from the user.
    Wheel { delta: i32 },
}

impl DisplayCommand {
    /// Parses and checks one client line; the error is the message for the client.
    pub fn parse(line: &[u8]) -> Result<DisplayCommand, String> {
        let command: DisplayCommand =
            serde_json::from_slice(line).map_err(|err| format!("bad display command: {err}"))?;
        match command {
            DisplayCommand::Key { code, .. } if code > KEY_CODE_MAX => Err(format!(
                "key code {code} is not a Linux evdev code (0..={KEY_CODE_MAX})"
            )),
            DisplayCommand::Pointer { x, y } if x > POINTER_MAX || y > POINTER_MAX => Err(format!(
                "pointer position ({x}, {y}) is outside 0..={POINTER_MAX}"
            )),
            _ => Ok(command),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_commands_parse_and_bad_ones_say_why() {
        assert_eq!(
            DisplayCommand::parse(br#"{"cmd":"key","code":30,"down":true}"#),
            Ok(DisplayCommand::Key {
                code: 30,
                down: true
            })
        );
        assert_eq!(
            DisplayCommand::parse(br#"{"cmd":"button","button":"middle","down":false}"#),
            Ok(DisplayCommand::Button {
                button: PointerButton::Middle,
                down: false
            })
        );
        assert!(DisplayCommand::parse(br#"{"cmd":"wheel","delta":-2}"#).is_ok());
        let err = DisplayCommand::parse(br#"{"cmd":"key","code":4000,"down":true}"#).unwrap_err();
        assert!(err.contains("4000"), "{err}");
        let err = DisplayCommand::parse(br#"{"cmd":"pointer","x":40000,"y":0}"#).unwrap_err();
        assert!(err.contains("40000"), "{err}");
        let err = DisplayCommand::parse(br#"{"cmd":"key","code":30}"#).unwrap_err();
        assert!(err.contains("down"), "{err}");
        assert!(DisplayCommand::parse(b"nonsense").is_err());
    }

    #[test]
    fn display_events_match_the_documented_lines() {
        let line = serde_json::to_string(&DisplayEvent::Damage {
            rects: vec![crate::display::DamageRect {
                x: 0,
                y: 2,
                width: 3,
                height: 4,
            }],
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"damage","rects":[{"x":0,"y":2,"width":3,"height":4}]}"#
        );
        assert_eq!(
            serde_json::to_string(&DisplayEvent::Resync).unwrap(),
            r#"{"event":"resync"}"#
        );
    }

    #[test]
    fn screenshot_takes_a_path() {
        let req = Request::parse(br#"{"cmd":"screenshot","path":"/tmp/a.png"}"#).unwrap();
        assert_eq!(
            req.command,
            Command::Screenshot {
                path: "/tmp/a.png".into()
            }
        );
        let (_, err) = Request::parse(br#"{"cmd":"screenshot"}"#).unwrap_err();
        assert!(err.to_string().contains("path"), "{err}");
    }

    #[test]
    fn parses_a_plain_command() {
        let req = Request::parse(br#"{"cmd":"stats"}"#).unwrap();
        assert_eq!(req.command, Command::Stats);
        assert_eq!(req.id, None);
    }

    #[test]
    fn keeps_the_id_and_accepts_the_version() {
        let req = Request::parse(br#"{"cmd":"pause","id":7,"version":1}"#).unwrap();
        assert_eq!(req.command, Command::Pause);
        assert_eq!(req.id, Some(Value::from(7)));
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        let (_, err) = Request::parse(b"{not json").unwrap_err();
        assert!(matches!(err, RequestError::Malformed(_)));
        let (_, err) = Request::parse(b"[1,2]").unwrap_err();
        assert_eq!(err, RequestError::NotAnObject);
        let (id, err) = Request::parse(br#"{"id":"a"}"#).unwrap_err();
        assert_eq!(err, RequestError::MissingCommand);
        assert_eq!(id, Some(Value::from("a")));
        let (_, err) = Request::parse(br#"{"cmd":"explode"}"#).unwrap_err();
        assert_eq!(err, RequestError::UnknownCommand("explode".into()));
        assert!(err.to_string().contains("pause"));
        let (_, err) = Request::parse(br#"{"cmd":"pause","version":2}"#).unwrap_err();
        assert!(matches!(err, RequestError::Version(_)));
        let (_, err) = Request::parse(br#"{"cmd":"pause","force":true}"#).unwrap_err();
        assert!(matches!(err, RequestError::Arguments(..)), "{err:?}");
        let (_, err) = Request::parse(br#"{"cmd":5}"#).unwrap_err();
        assert!(matches!(err, RequestError::UnknownCommand(_)));
    }

    #[test]
    fn replies_serialise_flat() {
        let reply = Reply::ok(Some(Value::from(1)), serde_json::json!({"state":"running"}));
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"ok":true,"id":1,"state":"running"}"#
        );
        let reply = Reply::error(None, "nope");
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"ok":false,"error":"nope"}"#
        );
    }

    #[test]
    fn events_carry_their_name() {
        let line = serde_json::to_string(&Event::GuestPanic {
            reason: "triple-fault".into(),
            vcpu: 0,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"guest-panic","reason":"triple-fault","vcpu":0}"#
        );
        let line = serde_json::to_string(&Event::State {
            state: RunState::Paused,
        })
        .unwrap();
        assert_eq!(line, r#"{"event":"state","state":"paused"}"#);
    }
}
