//! Guest network back-ends: user-mode networking through `passt` (no root needed: the worker
//! starts passt, or connects to one hangard started), or a tap device the user already has.
//! passt's Unix-socket protocol frames each Ethernet frame with its length, 4 bytes big-endian.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::disk::parse_options;

/// Largest frame accepted from a back-end: passt's 65520-byte MTU plus the Ethernet header.
pub const MAX_FRAME: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network {spec}: passt is not installed; install it (scripts/install-deps) or use --net none")]
    NoPasst { spec: String },
    #[error("network {spec}: {reason}")]
    Start { spec: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `hostfwd=tcp:[ADDR]:HOSTPORT-:GUESTPORT`, as QEMU writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub protocol: Protocol,
    pub address: Option<IpAddr>,
    pub host: u16,
    pub guest: u16,
}

impl FromStr for HostForward {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("hostfwd={text}: write it as tcp:127.0.0.1:8080-:80");
        let (protocol, rest) = text.split_once(':').ok_or_else(bad)?;
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad()),
        };
        let (host_part, guest_part) = rest.split_once('-').ok_or_else(bad)?;
        let (address, host) = host_part.rsplit_once(':').ok_or_else(bad)?;
        let guest = guest_part.strip_prefix(':').ok_or_else(bad)?;
        let address = match address {
            "" => None,
            a => Some(a.parse().map_err(|_| bad())?),
        };
        Ok(HostForward {
            protocol,
            address,
            host: host.parse().map_err(|_| bad())?,
            guest: guest.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for HostForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let address = self.address.map(|a| a.to_string()).unwrap_or_default();
        write!(f, "{protocol}:{address}:{}-:{}", self.host, self.guest)
    }
}

impl HostForward {
    /// passt's port spec: `[ADDR/]HOST:GUEST`.
    pub fn passt_spec(&self) -> String {
        match self.address {
            Some(address) => format!("{address}/{}:{}", self.host, self.guest),
            None => format!("{}:{}", self.host, self.guest),
        }
    }
}

/// Where a NIC's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// The worker starts its own passt.
    User { forwards: Vec<HostForward> },
    /// A passt already listening on this socket (hangard starts one per NIC).
    Unix(PathBuf),
    /// An existing tap device.
    Tap(String),
}

/// One `--net` option: `user[,hostfwd=...]`, `unix:PATH` or `tap=NAME`, each with an optional
/// `mac=52:54:00:12:34:56`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub mode: NetMode,
    pub mac: Option<[u8; 6]>,
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("mac={text}: write it as 52:54:00:12:34:56"))?;
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| format!("mac={text}: a MAC address has six bytes"))?;
    if mac[0] & 1 != 0 {
        return Err(format!(
            "mac={text} is a multicast address; pick one with an even first byte"
        ));
    }
    Ok(mac)
}

impl FromStr for NetSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (head, rest) = text.split_once(',').unwrap_or((text, ""));
        let mut mode = if head == "user" {
            NetMode::User {
                forwards: Vec::new(),
            }
        } else if let Some(path) = head.strip_prefix("unix:") {
            NetMode::Unix(PathBuf::from(path))
        } else if let Some(name) = head.strip_prefix("tap=") {
            NetMode::Tap(name.to_string())
        } else {
            return Err(format!(
                "network {text:?}: start it with user, unix:PATH or tap=NAME"
            ));
        };
        let mut mac = None;
        for (key, value) in parse_options(rest)? {
            match (key, &mut mode) {
                ("mac", _) => mac = Some(parse_mac(value)?),
                ("hostfwd", NetMode::User { forwards }) => forwards.push(value.parse()?),
                ("hostfwd", _) => return Err("hostfwd= needs user networking".into()),
                (other, _) => {
                    return Err(format!(
                        "unknown network option {other:?}; use hostfwd or mac"
                    ))
                }
            }
        }
        Ok(NetSpec { mode, mac })
    }
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            NetMode::User { forwards } => {
                f.write_str("user")?;
                for forward in forwards {
                    write!(f, ",hostfwd={forward}")?;
                }
            }
            NetMode::Unix(path) => write!(f, "unix:{}", path.display())?,
            NetMode::Tap(name) => write!(f, "tap={name}")?,
        }
        if let Some(mac) = self.mac {
            let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
            write!(f, ",mac={}", text.join(":"))?;
        }
        Ok(())
    }
}

crate::serde_via_string!(NetSpec);

/// passt's command line: listen on `socket`, write its pid, forward `forwards`, and quit when
/// its one client goes. `runas` keeps passt from switching to `nobody` when run as root.
pub fn passt_args(
    socket: &Path,
    pid_file: &Path,
    runas: (u32, u32),
    forwards: &[HostForward],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--quiet".into(),
        "--one-off".into(),
        "--runas".into(),
        format!("{}:{}", runas.0, runas.1).into(),
        "--socket".into(),
        socket.into(),
        "--pid".into(),
        pid_file.into(),
    ];
    for (flag, protocol) in [
        ("--tcp-ports", Protocol::Tcp),
        ("--udp-ports", Protocol::Udp),
    ] {
        let ports: Vec<String> = forwards
            .iter()
            .filter(|f| f.protocol == protocol)
            .map(HostForward::passt_spec)
            .collect();
        args.push(flag.into());
        args.push(if ports.is_empty() {
            "none".into()
        } else {
            ports.join(",").into()
        });
    }
    args
}

/// One frame as passt's stream carries it: its length, 4 bytes big-endian, then the frame.
pub fn stream_frame(frame: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(4 + frame.len());
    framed.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    framed.extend_from_slice(frame);
    framed
}

/// Splits passt's byte stream into frames.
#[derive(Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. A length beyond [`MAX_FRAME`] means the stream
    /// is out of step: an error.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buffer[..4].try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "passt sent a {len}-byte frame; the stream is corrupt"
            ));
        }
        if self.buffer.len() < 4 + len {
            return Ok(None);
        }
        let frame = self.buffer[4..4 + len].to_vec();
        self.buffer.drain(..4 + len);
        Ok(Some(frame))
    }
}

/// A passt this worker started; stopped when dropped.
struct PasstProcess {
    pid_file: PathBuf,
    dir: PathBuf,
}

impl Drop for PasstProcess {
    fn drop(&mut self) {
        // passt quits by itself once its client is gone (--one-off); this is for the case where
        // it is still starting.
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            // SAFETY: kill only sends a signal to the pid passt itself wrote.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An open back-end.
pub struct NetBackend {
    kind: BackendKind,
    frames: FrameReader,
    _passt: Option<PasstProcess>,
}

enum BackendKind {
    Stream(UnixStream),
    Tap(File),
}

impl NetBackend {
    /// Opens the back-end `spec` names; `index` tells NICs apart.
    pub fn open(spec: &NetSpec, index: usize) -> Result<NetBackend, NetError> {
        let fail = |reason: String| NetError::Start {
            spec: spec.to_string(),
            reason,
        };
        let (kind, passt) = match &spec.mode {
            NetMode::User { forwards } => {
                let (socket, passt) = start_passt(spec, index, forwards)?;
                let stream = connect(&socket).map_err(fail)?;
                (BackendKind::Stream(stream), Some(passt))
            }
            NetMode::Unix(path) => (BackendKind::Stream(connect(path).map_err(fail)?), None),
            NetMode::Tap(name) => (BackendKind::Tap(open_tap(name).map_err(fail)?), None),
        };
        let fd = match &kind {
            BackendKind::Stream(s) => s.as_raw_fd(),
            BackendKind::Tap(f) => f.as_raw_fd(),
        };
        set_nonblocking(fd).map_err(|e| fail(e.to_string()))?;
        Ok(NetBackend {
            kind,
            frames: FrameReader::default(),
            _passt: passt,
        })
    }

    /// The directory of the passt this worker started for the NIC, if it did; the worker
    /// removes it at exit.
    pub fn private_dir(&self) -> Option<&Path> {
        self._passt.as_ref().map(|passt| passt.dir.as_path())
    }

    pub fn fd(&self) -> RawFd {
        match &self.kind {
            BackendKind::Stream(s) => s.as_raw_fd(),
            BackendKind::Tap(f) => f.as_raw_fd(),
        }
    }

    /// The next frame from the back-end, or None when there is nothing more for now.
    pub fn receive(&mut self) -> io::Result<Option<Vec<u8>>> {
        match &mut self.kind {
            BackendKind::Tap(file) => {
                let mut frame = vec![0u8; MAX_FRAME];
                match file.read(&mut frame) {
                    Ok(n) => {
                        frame.truncate(n);
                        Ok(Some(frame))
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(err) => Err(err),
                }
            }
            BackendKind::Stream(stream) => loop {
                if let Some(frame) = self.frames.next_frame().map_err(io::Error::other)? {
                    return Ok(Some(frame));
                }
                let mut chunk = [0u8; 65536];
                match stream.read(&mut chunk) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "passt closed the connection",
                        ))
                    }
                    Ok(n) => self.frames.push(&chunk[..n]),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(err) => return Err(err),
                }
            },
        }
    }

    /// Sends one frame. Waits a little if the back-end is busy, then drops the frame, as a
    /// congested network would.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.kind {
            BackendKind::Tap(file) => write_waiting(file, frame),
            BackendKind::Stream(stream) => write_waiting(stream, &stream_frame(frame)),
        }
    }
}

/// Writes all of `bytes` to a non-blocking fd, waiting up to a second for room.
fn write_waiting<W: Write + AsRawFd>(writer: &mut W, mut bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !bytes.is_empty() {
        match writer.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "back-end stalled"));
                }
                let mut poll = libc::pollfd {
                    fd: writer.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut poll, 1, 100) };
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn connect(path: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(path).map_err(|err| {
        format!(
            "cannot connect to passt at {}: {err}; is it running?",
            path.display()
        )
    })
}

fn find_passt() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/sbin"])
        .map(|dir| Path::new(dir).join("passt"))
        .find(|p| p.is_file())
}

fn start_passt(
    spec: &NetSpec,
    index: usize,
    forwards: &[HostForward],
) -> Result<(PathBuf, PasstProcess), NetError> {
    let passt = find_passt().ok_or_else(|| NetError::NoPasst {
        spec: spec.to_string(),
    })?;
    let fail = |reason: String| NetError::Start {
        spec: spec.to_string(),
        reason,
    };
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hangar-vmm-{}-net{index}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let socket = dir.join("passt.sock");
    let pid_file = dir.join("passt.pid");
    let guard = PasstProcess {
        pid_file: pid_file.clone(),
        dir,
    };
    // SAFETY: geteuid and getegid only read the process's credentials.
    let runas = unsafe { (libc::geteuid(), libc::getegid()) };
    // passt forks into the background once it listens; its parent's status says whether it
    // got that far.
    let output = Command::new(passt)
        .args(passt_args(&socket, &pid_file, runas, forwards))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| fail(format!("cannot run passt: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(fail(format!("passt failed: {}", stderr.trim())));
    }
    Ok((socket, guard))
}

/// Opens an existing tap device (it must exist and belong to this user: no root here).
fn open_tap(name: &str) -> Result<File, String> {
    const IFF_TAP: i16 = 0x0002;
    const IFF_NO_PI: i16 = 0x1000;
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("tap device name {name:?} is not valid"));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes one ifreq that lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(format!(
            "cannot attach to tap device {name}: {}; create it for your user first (ip tuntap add {name} mode tap user $USER)",
            io::Error::last_os_error()
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_options_parse_and_print_back() {
        let spec: NetSpec =
            "user,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp::5353-:53,mac=02:00:00:00:00:01"
                .parse()
                .unwrap();
        let NetMode::User { forwards } = &spec.mode else {
            panic!("{spec:?}")
        };
        assert_eq!(forwards[0].passt_spec(), "127.0.0.1/2222:22");
        assert_eq!(forwards[1].passt_spec(), "5353:53");
        assert_eq!(spec.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(spec.to_string().parse::<NetSpec>().unwrap(), spec);
        assert_eq!(
            "unix:/run/n.sock".parse::<NetSpec>().unwrap().mode,
            NetMode::Unix("/run/n.sock".into())
        );
        assert!("tap=t0,hostfwd=tcp::1-:2".parse::<NetSpec>().is_err());
        assert!("user,mac=01:00:00:00:00:00"
            .parse::<NetSpec>()
            .unwrap_err()
            .contains("multicast"));
        assert!("bridge".parse::<NetSpec>().is_err());
        assert!("user,hostfwd=tcp:80:80".parse::<NetSpec>().is_err());
    }

    #[test]
    fn passt_gets_its_port_specs() {
        let forwards = vec!["tcp:127.0.0.1:8080-:80".parse().unwrap()];
        let args = passt_args(Path::new("/s"), Path::new("/p"), (1, 2), &forwards);
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        let tcp = args.iter().position(|a| a == "--tcp-ports").unwrap();
        assert_eq!(args[tcp + 1], "127.0.0.1/8080:80");
        let udp = args.iter().position(|a| a == "--udp-ports").unwrap();
        assert_eq!(args[udp + 1], "none");
    }

    #[test]
    fn frames_are_split_across_reads() {
        let mut reader = FrameReader::default();
        reader.push(&[0, 0, 0, 3, b'a']);
        assert_eq!(reader.next_frame().unwrap(), None);
        reader.push(&[b'b', b'c', 0, 0]);
        assert_eq!(reader.next_frame().unwrap(), Some(b"abc".to_vec()));
        assert_eq!(reader.next_frame().unwrap(), None);
        reader.push(&[0, 1, b'z']);
        assert_eq!(reader.next_frame().unwrap(), Some(b"z".to_vec()));
        reader.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(reader.next_frame().is_err());
    }

    #[test]
    fn frames_over_the_cap_are_refused_before_they_are_buffered() {
        let mut reader = FrameReader::default();
        reader.push(&stream_frame(&vec![7u8; MAX_FRAME]));
        assert_eq!(
            reader.next_frame().unwrap().map(|f| f.len()),
            Some(MAX_FRAME)
        );
        reader.push(&((MAX_FRAME + 1) as u32).to_be_bytes());
        assert!(reader.next_frame().unwrap_err().contains("corrupt"));
    }
}
