//! The worker's configuration: a plain struct, validated once at the edge.
//!
//! Settings come from a JSON file (`--config`) and command-line flags; flags win. Everything
//! downstream of [`VmConfig::validate`] trusts the values it gets.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::disk::DiskSpec;
use crate::net::NetSpec;

/// Smallest guest RAM accepted: below this not even a tiny kernel fits.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Largest guest RAM accepted.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Most vCPUs a machine may have (APIC ids stay below the IOAPIC's id).
pub const MAX_VCPUS: u8 = 64;
/// Command line used when none is given: the serial console, so a user sees the boot.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";

/// Errors in a VM configuration. Each names the setting at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid: {source}")]
    ParseFile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no kernel given: pass --kernel PATH or set \"kernel\" in the configuration")]
    MissingKernel,
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("initrd {path}: {reason}")]
    Initrd { path: PathBuf, reason: String },
    #[error("memory {0}: {1}")]
    Memory(String, String),
    #[error("cpus {0}: must be between 1 and {MAX_VCPUS}")]
    Cpus(u32),
    #[error("command line is {0} bytes; the limit is {1}")]
    CmdlineTooLong(usize, usize),
    #[error("serial {0:?}: expected stdio, none or unix:PATH")]
    Serial(String),
    #[error("control socket path {0}: {1}")]
    Control(PathBuf, String),
    #[error("display {0:?}: {1}")]
    Display(String, String),
    #[error("display socket path {0}: {1}")]
    DisplaySocket(PathBuf, String),
    #[error("input {0:?}: {1}")]
    Input(String, String),
}

/// Screen size used when a display is wanted but no size given.
pub const DEFAULT_DISPLAY: DisplaySize = DisplaySize {
    width: 1280,
    height: 800,
};
/// Largest screen accepted (4K UHD).
pub const MAX_DISPLAY: DisplaySize = DisplaySize {
    width: 3840,
    height: 2160,
};
/// Smallest screen accepted: an 80x25 text console in an 8x16 font.
pub const MIN_DISPLAY: DisplaySize = DisplaySize {
    width: 640,
    height: 400,
};

/// The size of the guest's screen in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DisplaySize {
    pub width: u32,
    pub height: u32,
}

impl DisplaySize {
    /// Checks the size against what the framebuffer supports; the reason says what would be
    /// accepted.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.width < MIN_DISPLAY.width
            || self.height < MIN_DISPLAY.height
            || self.width > MAX_DISPLAY.width
            || self.height > MAX_DISPLAY.height
        {
            return Err(format!("must be between {MIN_DISPLAY} and {MAX_DISPLAY}"));
        }
        if !self.width.is_multiple_of(8) {
            return Err("the width must be a multiple of 8".into());
        }
        Ok(())
    }
}

/// The screen a display gets when no size is given.
impl Default for DisplaySize {
    fn default() -> DisplaySize {
        DEFAULT_DISPLAY
    }
}

/// `WIDTHxHEIGHT`, any numbers: [`DisplaySize::check_bounds`] says whether they fit.
impl FromStr for DisplaySize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (w, h) = text
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{text:?}: expected WIDTHxHEIGHT such as 1280x800"))?;
        let parse = |part: &str| {
            part.trim().parse::<u32>().map_err(|_| {
                format!("{text:?}: width and height must be whole numbers, as in 1280x800")
            })
        };
        Ok(DisplaySize {
            width: parse(w)?,
            height: parse(h)?,
        })
    }
}

impl fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

crate::serde_via_string!(DisplaySize);

/// The `display` setting: a size such as `1280x800`, or `none` for a headless machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplaySetting {
    None,
    Size(DisplaySize),
}

impl FromStr for DisplaySetting {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ConfigError::Display(text.to_string(), reason);
        if text == "none" {
            return Ok(DisplaySetting::None);
        }
        let size: DisplaySize = text.parse().map_err(|_| {
            bad(if text.contains(['x', 'X']) {
                "width and height must be whole numbers, as in 1280x800".into()
            } else {
                "expected WIDTHxHEIGHT such as 1280x800, or none".into()
            })
        })?;
        size.check_bounds().map_err(bad)?;
        Ok(DisplaySetting::Size(size))
    }
}

impl fmt::Display for DisplaySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisplaySetting::None => f.write_str("none"),
            DisplaySetting::Size(size) => size.fmt(f),
        }
    }
}

crate::serde_via_string!(DisplaySetting);

/// The virtio-input devices a machine with a screen gets. The i8042's PS/2 keyboard is always
/// there, screen or not: early boot and guests without virtio_input type on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputDevices {
    /// "Hangar Virtio Keyboard".
    pub keyboard: bool,
    /// "Hangar Virtio Tablet", the absolute pointer.
    pub tablet: bool,
}

impl InputDevices {
    pub const ALL: InputDevices = InputDevices {
        keyboard: true,
        tablet: true,
    };
    pub const NONE: InputDevices = InputDevices {
        keyboard: false,
        tablet: false,
    };
}

impl Default for InputDevices {
    fn default() -> InputDevices {
        InputDevices::ALL
    }
}

/// `keyboard`, `tablet`, `keyboard,tablet` (either order) or `none`.
impl FromStr for InputDevices {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ConfigError::Input(text.to_string(), reason);
        if text == "none" {
            return Ok(InputDevices::NONE);
        }
        let mut devices = InputDevices::NONE;
        for name in text.split(',') {
            let slot = match name.trim() {
                "keyboard" => &mut devices.keyboard,
                "tablet" => &mut devices.tablet,
                "" => {
                    return Err(bad(
                        "expected keyboard, tablet, keyboard,tablet or none".into()
                    ))
                }
                other => {
                    return Err(bad(format!(
                        "unknown input device {other:?}; use keyboard, tablet or none"
                    )))
                }
            };
            if *slot {
                return Err(bad(format!("{:?} is listed twice", name.trim())));
            }
            *slot = true;
        }
        Ok(devices)
    }
}

impl fmt::Display for InputDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.keyboard, self.tablet) {
            (true, true) => f.write_str("keyboard,tablet"),
            (true, false) => f.write_str("keyboard"),
            (false, true) => f.write_str("tablet"),
            (false, false) => f.write_str("none"),
        }
    }
}

crate::serde_via_string!(InputDevices);

/// A size in bytes that reads and writes as `256M`, `2G`, `4096K` or a plain byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, suffix) = text.split_at(split);
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write it like 256M or 2G"))?;
        let shift = match suffix.trim() {
            "" | "B" => 0,
            "K" | "k" | "KiB" => 10,
            "M" | "m" | "MiB" => 20,
            "G" | "g" | "GiB" => 30,
            "T" | "t" | "TiB" => 40,
            other => return Err(format!("unknown size suffix {other:?}; use K, M, G or T")),
        };
        value
            .checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            if self.0 != 0 && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(bytes) => Ok(ByteSize(bytes)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Where the guest's first serial port goes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SerialMode {
    /// The worker's own stdin and stdout.
    #[default]
    Stdio,
    /// Nowhere: output dropped, no input.
    None,
    /// A Unix stream socket that clients connect to; output goes to every client.
    Unix(PathBuf),
}

impl FromStr for SerialMode {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stdio" => Ok(SerialMode::Stdio),
            "none" => Ok(SerialMode::None),
            _ => match text.strip_prefix("unix:") {
                Some(path) if !path.is_empty() => Ok(SerialMode::Unix(PathBuf::from(path))),
                _ => Err(ConfigError::Serial(text.to_string())),
            },
        }
    }
}

impl fmt::Display for SerialMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialMode::Stdio => f.write_str("stdio"),
            SerialMode::None => f.write_str("none"),
            SerialMode::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

crate::serde_via_string!(SerialMode);

/// Settings as they arrive from a file or flags: everything optional, nothing checked yet.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_reboot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<NetSpec>>,
    /// Screen size, or `none`. Without it the machine has a display only if a display socket
    /// is given, at [`DEFAULT_DISPLAY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplaySetting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_socket: Option<PathBuf>,
    /// The virtio-input devices of a machine with a screen [default: keyboard and tablet].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputDevices>,
    /// `false` runs the worker without its sandbox (landlock and seccomp); for debugging only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<bool>,
    /// Directories the `screenshot` control command may write to (the sandbox allows no
    /// other place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screenshot_dirs: Option<Vec<PathBuf>>,
}

impl VmSettings {
    /// Reads settings from a JSON file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Lays `overrides` over `self`: every setting present in `overrides` wins.
    pub fn merge(self, overrides: VmSettings) -> VmSettings {
        VmSettings {
            kernel: overrides.kernel.or(self.kernel),
            initrd: overrides.initrd.or(self.initrd),
            cmdline: overrides.cmdline.or(self.cmdline),
            memory: overrides.memory.or(self.memory),
            cpus: overrides.cpus.or(self.cpus),
            serial: overrides.serial.or(self.serial),
            control: overrides.control.or(self.control),
            no_reboot: overrides.no_reboot.or(self.no_reboot),
            disks: overrides.disks.or(self.disks),
            nics: overrides.nics.or(self.nics),
            display: overrides.display.or(self.display),
            display_socket: overrides.display_socket.or(self.display_socket),
            input: overrides.input.or(self.input),
            sandbox: overrides.sandbox.or(self.sandbox),
            screenshot_dirs: overrides.screenshot_dirs.or(self.screenshot_dirs),
        }
    }

    /// Checks every setting and fills in defaults.
    pub fn validate(self) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.ok_or(ConfigError::MissingKernel)?;
        check_readable_file(&kernel).map_err(|reason| ConfigError::Kernel {
            path: kernel.clone(),
            reason,
        })?;
        if let Some(initrd) = &self.initrd {
            check_readable_file(initrd).map_err(|reason| ConfigError::Initrd {
                path: initrd.clone(),
                reason,
            })?;
        }

        let memory = self.memory.unwrap_or(ByteSize(256 << 20));
        if memory.0 < MIN_MEMORY || memory.0 > MAX_MEMORY {
            return Err(ConfigError::Memory(
                memory.to_string(),
                format!(
                    "must be between {} and {}",
                    ByteSize(MIN_MEMORY),
                    ByteSize(MAX_MEMORY)
                ),
            ));
        }
        if !memory.0.is_multiple_of(4096) {
            return Err(ConfigError::Memory(
                memory.to_string(),
                "must be a whole number of 4 KiB pages".into(),
            ));
        }

        let cpus = self.cpus.unwrap_or(1);
        if cpus == 0 || cpus > u32::from(MAX_VCPUS) {
            return Err(ConfigError::Cpus(cpus));
        }

        let cmdline = self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        let cmdline_limit = crate::arch::x86_64::layout::CMDLINE_MAX_SIZE - 1;
        if cmdline.len() > cmdline_limit {
            return Err(ConfigError::CmdlineTooLong(cmdline.len(), cmdline_limit));
        }

        if let Some(control) = &self.control {
            check_socket_path(control)
                .map_err(|reason| ConfigError::Control(control.clone(), reason))?;
        }

        if let Some(socket) = &self.display_socket {
            check_socket_path(socket)
                .map_err(|reason| ConfigError::DisplaySocket(socket.clone(), reason))?;
        }
        let display = match (self.display, &self.display_socket) {
            (Some(DisplaySetting::Size(size)), _) => Some(size),
            (Some(DisplaySetting::None), Some(socket)) => {
                return Err(ConfigError::DisplaySocket(
                    socket.clone(),
                    "given with display none; drop one of the two".into(),
                ))
            }
            (Some(DisplaySetting::None), None) | (None, None) => None,
            (None, Some(_)) => Some(DEFAULT_DISPLAY),
        };
        // Asking for input devices on a headless machine is a mistake worth saying; `none`
        // there is harmless.
        let input = match (self.input, display) {
            (Some(devices), None) if devices != InputDevices::NONE => {
                return Err(ConfigError::Input(
                    devices.to_string(),
                    "virtio-input devices come with a display; give --display WxH or drop --input"
                        .into(),
                ))
            }
            (Some(devices), Some(_)) => devices,
            (_, None) => InputDevices::NONE,
            (None, Some(_)) => InputDevices::ALL,
        };

        Ok(VmConfig {
            kernel,
            initrd: self.initrd,
            cmdline,
            memory: memory.0,
            vcpus: cpus as u8,
            serial: self.serial.unwrap_or_default(),
            control: self.control,
            no_reboot: self.no_reboot.unwrap_or(false),
            disks: self.disks.unwrap_or_default(),
            nics: self.nics.unwrap_or_default(),
            display,
            display_socket: self.display_socket,
            input,
            sandbox: self.sandbox.unwrap_or(true),
            screenshot_dirs: self.screenshot_dirs.unwrap_or_default(),
        })
    }
}

/// A validated machine configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// Guest RAM in bytes, a multiple of 4 KiB.
    pub memory: u64,
    pub vcpus: u8,
    pub serial: SerialMode,
    pub control: Option<PathBuf>,
    /// Exit instead of resetting when the guest reboots.
    pub no_reboot: bool,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskSpec>,
    /// virtio-net NICs, in order (eth0, eth1, ...).
    pub nics: Vec<NetSpec>,
    /// The framebuffer's size; `None` for a headless machine.
    pub display: Option<DisplaySize>,
    /// Where display clients connect.
    pub display_socket: Option<PathBuf>,
    /// The virtio-input devices; both off on a headless machine.
    pub input: InputDevices,
    /// Whether the worker enters its sandbox (landlock and seccomp) once set up.
    pub sandbox: bool,
    /// Where `screenshot` may write, besides nowhere.
    pub screenshot_dirs: Vec<PathBuf>,
}

/// Checks that `path` is a non-empty regular file this process can open; the reason says what
/// to do. The worker and hangard check kernels and initrds with it.
pub fn check_readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => "no such file; check the path".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied; check its mode".to_string(),
        _ => err.to_string(),
    })?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("the file is empty".into());
    }
    std::fs::File::open(path).map_err(|err| format!("cannot open it: {err}"))?;
    Ok(())
}

fn check_socket_path(path: &Path) -> Result<(), String> {
    // sun_path holds 108 bytes including the NUL.
    if path.as_os_str().len() > 107 {
        return Err("longer than the 107 bytes a Unix socket path may have".into());
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(format!("directory {} does not exist", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!("256M".parse::<ByteSize>().unwrap(), ByteSize(256 << 20));
        assert_eq!("2G".parse::<ByteSize>().unwrap(), ByteSize(2 << 30));
        assert_eq!("4096K".parse::<ByteSize>().unwrap(), ByteSize(4 << 20));
        assert_eq!("12345".parse::<ByteSize>().unwrap(), ByteSize(12345));
        assert_eq!("1GiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 30));
        assert!("12X".parse::<ByteSize>().is_err());
        assert!("M".parse::<ByteSize>().is_err());
        assert!("99999999999999T".parse::<ByteSize>().is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256M");
        assert_eq!(ByteSize(3 << 30).to_string(), "3G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn json_accepts_sizes_as_text_or_bytes() {
        let settings: VmSettings =
            serde_json::from_str(r#"{"memory":"512M","cpus":2,"serial":"unix:/tmp/s"}"#).unwrap();
        assert_eq!(settings.memory, Some(ByteSize(512 << 20)));
        assert_eq!(settings.serial, Some(SerialMode::Unix("/tmp/s".into())));
        let settings: VmSettings = serde_json::from_str(r#"{"memory":1048576}"#).unwrap();
        assert_eq!(settings.memory, Some(ByteSize(1 << 20)));
    }

    #[test]
    fn json_rejects_unknown_fields_by_name() {
        let err = serde_json::from_str::<VmSettings>(r#"{"memroy":"1G"}"#).unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = VmSettings {
            memory: Some(ByteSize(1 << 30)),
            cpus: Some(4),
            cmdline: Some("quiet".into()),
            ..Default::default()
        };
        let flags = VmSettings {
            cpus: Some(2),
            ..Default::default()
        };
        let merged = file.merge(flags);
        assert_eq!(merged.cpus, Some(2));
        assert_eq!(merged.memory, Some(ByteSize(1 << 30)));
        assert_eq!(merged.cmdline.as_deref(), Some("quiet"));
    }

    fn with_kernel(settings: VmSettings) -> VmSettings {
        VmSettings {
            kernel: Some(std::env::current_exe().unwrap()),
            ..settings
        }
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let err = VmSettings::default().validate().unwrap_err();
        assert!(matches!(err, ConfigError::MissingKernel));

        let err = VmSettings {
            kernel: Some("/nonexistent/vmlinuz".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinuz"), "{err}");
        assert!(err.to_string().contains("no such file"), "{err}");

        let err = with_kernel(VmSettings {
            memory: Some(ByteSize(0)),
            ..Default::default()
        })
        .validate()
        .unwrap_err();
        assert!(err.to_string().starts_with("memory 0"), "{err}");

        let err = with_kernel(VmSettings {
            cpus: Some(0),
            ..Default::default()
        })
        .validate()
        .unwrap_err();
        assert!(matches!(err, ConfigError::Cpus(0)));

        let err = with_kernel(VmSettings {
            control: Some("/nonexistent-dir/ctl.sock".into()),
            ..Default::default()
        })
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn validation_fills_defaults() {
        let config = with_kernel(VmSettings::default()).validate().unwrap();
        assert_eq!(config.memory, 256 << 20);
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
        assert_eq!(config.serial, SerialMode::Stdio);
        assert!(!config.no_reboot);
    }

    #[test]
    fn display_sizes_parse_and_are_bounded() {
        assert_eq!(
            "1920x1080".parse::<DisplaySetting>().unwrap(),
            DisplaySetting::Size(DisplaySize {
                width: 1920,
                height: 1080
            })
        );
        assert_eq!(
            "none".parse::<DisplaySetting>().unwrap(),
            DisplaySetting::None
        );
        for bad in ["1280", "axb", "3848x2160", "320x200", "1283x800", "1280x-1"] {
            let err = bad.parse::<DisplaySetting>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn a_display_socket_brings_the_default_display() {
        let config = with_kernel(VmSettings {
            display_socket: Some("/tmp/d.sock".into()),
            ..Default::default()
        })
        .validate()
        .unwrap();
        assert_eq!(config.display, Some(DEFAULT_DISPLAY));
        let config = with_kernel(VmSettings::default()).validate().unwrap();
        assert_eq!(config.display, None);
        let err = with_kernel(VmSettings {
            display: Some(DisplaySetting::None),
            display_socket: Some("/tmp/d.sock".into()),
            ..Default::default()
        })
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("display none"), "{err}");
        let settings: VmSettings = serde_json::from_str(r#"{"display":"1024x768"}"#).unwrap();
        assert_eq!(
            settings.display,
            Some(DisplaySetting::Size(DisplaySize {
                width: 1024,
                height: 768
            }))
        );
    }

    #[test]
    fn input_devices_parse_and_print() {
        for (text, keyboard, tablet) in [
            ("keyboard,tablet", true, true),
            ("tablet,keyboard", true, true),
            ("keyboard", true, false),
            ("tablet", false, true),
            ("none", false, false),
        ] {
            let devices: InputDevices = text.parse().unwrap();
            assert_eq!(
                (devices.keyboard, devices.tablet),
                (keyboard, tablet),
                "{text}"
            );
            assert_eq!(
                devices.to_string().parse::<InputDevices>().unwrap(),
                devices
            );
        }
        for bad in ["", "mouse", "keyboard,keyboard", "keyboard,", "none,tablet"] {
            let err = bad.parse::<InputDevices>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("input {bad:?}")), "{err}");
        }
    }

    #[test]
    fn input_devices_come_with_the_display() {
        let screen = |input: Option<InputDevices>| VmSettings {
            display: Some(DisplaySetting::Size(DEFAULT_DISPLAY)),
            input,
            ..Default::default()
        };
        let config = with_kernel(screen(None)).validate().unwrap();
        assert_eq!(config.input, InputDevices::ALL);
        let keyboard_only = InputDevices {
            keyboard: true,
            tablet: false,
        };
        let config = with_kernel(screen(Some(keyboard_only))).validate().unwrap();
        assert_eq!(config.input, keyboard_only);
        // Headless: no virtio-input, and asking for some is refused by name.
        let config = with_kernel(VmSettings::default()).validate().unwrap();
        assert_eq!(config.input, InputDevices::NONE);
        let config = with_kernel(VmSettings {
            input: Some(InputDevices::NONE),
            ..Default::default()
        })
        .validate()
        .unwrap();
        assert_eq!(config.input, InputDevices::NONE);
        let err = with_kernel(VmSettings {
            input: Some(keyboard_only),
            ..Default::default()
        })
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("--display"), "{err}");
        let settings: VmSettings = serde_json::from_str(r#"{"input":"tablet"}"#).unwrap();
        assert_eq!(
            settings.input,
            Some(InputDevices {
                keyboard: false,
                tablet: true
            })
        );
    }

    #[test]
    fn serial_modes_parse() {
        assert_eq!("stdio".parse::<SerialMode>().unwrap(), SerialMode::Stdio);
        assert_eq!("none".parse::<SerialMode>().unwrap(), SerialMode::None);
        assert!("unix:".parse::<SerialMode>().is_err());
        assert!("tcp:1234".parse::<SerialMode>().is_err());
    }
}
