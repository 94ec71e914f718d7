//! A VM definition: what `hangard` stores for each defined VM, as JSON.
//!
//! A definition is validated once, when it is defined or updated; everything downstream trusts
//! it. Kernel and initrd files are checked separately ([`VmDefinition::check_files`]) because a
//! stored definition stays loadable when a file it names disappears later; starting it then fails
//! with a clear error instead.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{
    ByteSize, DisplaySize, InputDevices, DEFAULT_CMDLINE, MAX_MEMORY, MAX_VCPUS, MIN_MEMORY,
};

/// Version of the definition schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest VM name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Guest RAM when a definition gives none.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// Why a definition was refused. Each names the field at fault and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DefinitionError {
    #[error("not a valid VM definition: {0}")]
    Json(String),
    #[error("field \"{field}\": {reason}")]
    Field { field: String, reason: String },
}

impl DefinitionError {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> DefinitionError {
        DefinitionError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The field and reason of a refusal, read back from its message as it crosses D-Bus
/// (`field "memory": ...`), so that a client can show the reason beside that field.
pub fn refused_field(message: &str) -> Option<(&str, &str)> {
    message.strip_prefix("field \"")?.split_once("\": ")
}

/// A VM's identity, an RFC 4122 version 4 UUID. The nil UUID means "not assigned yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid([u8; 16]);

impl Uuid {
    pub const NIL: Uuid = Uuid([0; 16]);

    /// A fresh random UUID from the kernel's random pool.
    pub fn random() -> std::io::Result<Uuid> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Uuid(bytes))
    }

    pub fn is_nil(&self) -> bool {
        *self == Uuid::NIL
    }

    /// The MAC address of the VM's card number `index`: QEMU's locally administered 52:54:00
    /// prefix, then bytes of the UUID, so a guest sees the same card on every boot.
    pub fn mac(&self, index: usize) -> [u8; 6] {
        let tail = self.0[13] as usize + index;
        [0x52, 0x54, 0x00, self.0[11], self.0[12], tail as u8]
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{text:?} is not a UUID (expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        Ok(Uuid(bytes))
    }
}

crate::serde_via_string!(Uuid);

/// A disk: a volume of the default storage pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiskDefinition {
    /// Name of the volume in the storage pool (`hangarctl vol-list`).
    pub volume: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

/// How a network card reaches the outside.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NicMode {
    /// User-mode networking through a per-VM passt; no root needed.
    #[default]
    User,
    /// No network: the guest gets no card for this entry, as with a NIC removed in
    /// virt-manager.
    None,
}

impl NicMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NicMode::User => "user",
            NicMode::None => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host port forwarded to a guest port (user-mode networking only).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    #[serde(default)]
    pub protocol: Protocol,
    pub host: u16,
    pub guest: u16,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NicDefinition {
    #[serde(default)]
    pub mode: NicMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<PortForward>,
}

/// The VM's screen.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DisplayKind {
    /// A linear framebuffer the GUI shows.
    #[default]
    Framebuffer,
    /// Headless: serial console only.
    None,
}

impl DisplayKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DisplayKind::Framebuffer => "framebuffer",
            DisplayKind::None => "none",
        }
    }
}

/// The virtio-input devices of a VM with a screen. Both are on unless switched off; the PS/2
/// keyboard is always there. A headless VM has neither, whatever this says.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InputDefinition {
    #[serde(default = "yes")]
    pub keyboard: bool,
    #[serde(default = "yes")]
    pub tablet: bool,
}

impl Default for InputDefinition {
    fn default() -> InputDefinition {
        InputDefinition {
            keyboard: true,
            tablet: true,
        }
    }
}

impl InputDefinition {
    /// The worker's `--input` setting.
    pub fn devices(&self) -> InputDevices {
        InputDevices {
            keyboard: self.keyboard,
            tablet: self.tablet,
        }
    }
}

fn yes() -> bool {
    true
}
fn schema_version() -> u32 {
    SCHEMA_VERSION
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory() -> ByteSize {
    ByteSize(DEFAULT_MEMORY)
}
fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

/// One VM as `hangard` knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    #[serde(default = "schema_version")]
    pub schema_version: u32,
    pub name: String,
    /// Assigned on define when absent.
    #[serde(default, skip_serializing_if = "Uuid::is_nil")]
    pub uuid: Uuid,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskDefinition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicDefinition>,
    #[serde(default)]
    pub display: DisplayKind,
    /// The framebuffer's size, `WIDTHxHEIGHT`; kept, but unused, while `display` is none.
    #[serde(default)]
    pub resolution: DisplaySize,
    #[serde(default)]
    pub input: InputDefinition,
    #[serde(default)]
    pub autostart: bool,
    /// Bumped by every stored change; updates name the generation they were based on.
    #[serde(default)]
    pub generation: u64,
}

impl VmDefinition {
    /// Parses and validates a definition; files are not checked here.
    pub fn from_json(text: &str) -> Result<VmDefinition, DefinitionError> {
        let definition: VmDefinition =
            serde_json::from_str(text).map_err(|err| DefinitionError::Json(err.to_string()))?;
        definition.validate()?;
        Ok(definition)
    }

    pub fn to_json(&self) -> String {
        // A definition always serialises: every field is a plain value.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every field except the files.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(DefinitionError::field(
                "schema_version",
                format!(
                    "version {} is not supported; this hangard reads version {SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        validate_name(&self.name).map_err(|reason| DefinitionError::field("name", reason))?;
        if self.vcpus == 0 || self.vcpus > u32::from(MAX_VCPUS) {
            return Err(DefinitionError::field(
                "vcpus",
                format!("{} is out of range; give 1 to {MAX_VCPUS}", self.vcpus),
            ));
        }
        let memory = self.memory.0;
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&memory) {
            return Err(DefinitionError::field(
                "memory",
                format!(
                    "{} is out of range; give {} to {}, e.g. \"256M\"",
                    self.memory,
                    ByteSize(MIN_MEMORY),
                    ByteSize(MAX_MEMORY)
                ),
            ));
        }
        if !memory.is_multiple_of(4096) {
            return Err(DefinitionError::field(
                "memory",
                format!("{} is not a whole number of 4 KiB pages", self.memory),
            ));
        }
        if !self.kernel.is_absolute() {
            return Err(DefinitionError::field(
                "kernel",
                format!(
                    "{} is not an absolute path; hangard does not share your working directory",
                    self.kernel.display()
                ),
            ));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_absolute() {
                return Err(DefinitionError::field(
                    "initrd",
                    format!("{} is not an absolute path", initrd.display()),
                ));
            }
        }
        let cmdline_limit = crate::arch::x86_64::layout::CMDLINE_MAX_SIZE - 1;
        if self.cmdline.len() > cmdline_limit {
            return Err(DefinitionError::field(
                "cmdline",
                format!(
                    "{} bytes is longer than the {cmdline_limit} a kernel command line may have",
                    self.cmdline.len()
                ),
            ));
        }
        for (i, disk) in self.disks.iter().enumerate() {
            crate::host::storage::validate_volume_name(&disk.volume)
                .map_err(|reason| DefinitionError::field(format!("disks[{i}].volume"), reason))?;
            if self.disks[..i].iter().any(|d| d.volume == disk.volume) {
                return Err(DefinitionError::field(
                    format!("disks[{i}].volume"),
                    format!("volume {:?} is listed twice", disk.volume),
                ));
            }
        }
        self.resolution.check_bounds().map_err(|reason| {
            DefinitionError::field("resolution", format!("{}: {reason}", self.resolution))
        })?;
        let mut host_ports: Vec<(Protocol, u16)> = Vec::new();
        for (i, nic) in self.nics.iter().enumerate() {
            if nic.mode == NicMode::None && !nic.forwards.is_empty() {
                return Err(DefinitionError::field(
                    format!("nics[{i}].forwards"),
                    "port forwards need \"mode\": \"user\"",
                ));
            }
            for (j, forward) in nic.forwards.iter().enumerate() {
                let field = format!("nics[{i}].forwards[{j}]");
                if forward.host == 0 || forward.guest == 0 {
                    return Err(DefinitionError::field(field, "port 0 cannot be forwarded"));
                }
                if host_ports.contains(&(forward.protocol, forward.host)) {
                    return Err(DefinitionError::field(
                        field,
                        format!(
                            "host port {}/{} is forwarded twice",
                            forward.host,
                            forward.protocol.as_str()
                        ),
                    ));
                }
                host_ports.push((forward.protocol, forward.host));
            }
        }
        Ok(())
    }

    /// Checks that the kernel and initrd are readable files in places Hangar reads from
    /// (see [`crate::host::locations`]).
    pub fn check_files(&self) -> Result<(), DefinitionError> {
        let roots = crate::host::locations::allowed_roots();
        let check = |field: &str, path: &std::path::Path| {
            crate::config::check_readable_file(path)
                .and_then(|()| crate::host::locations::resolve_allowed(path, &roots).map(drop))
                .map_err(|reason| {
                    DefinitionError::field(field, format!("{}: {reason}", path.display()))
                })
        };
        check("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check("initrd", initrd)?;
        }
        Ok(())
    }

    /// Replaces the kernel and initrd paths by their canonical form (symbolic links and `..`
    /// resolved), so the definition says which file really boots. Paths that do not resolve
    /// are left for [`VmDefinition::check_files`] to explain.
    pub fn canonicalize_files(&mut self) {
        if let Ok(kernel) = std::fs::canonicalize(&self.kernel) {
            self.kernel = kernel;
        }
        if let Some(initrd) = &mut self.initrd {
            if let Ok(canonical) = std::fs::canonicalize(&*initrd) {
                *initrd = canonical;
            }
        }
    }
}

/// Checks a VM name: 1 to 64 characters of letters, digits and `-_.+@:`, not starting with
/// `-` or `.`, no `..`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty; give the VM a name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("{name:?} is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.+@:".contains(*c)))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; use letters, digits and - _ . + @ :"
        ));
    }
    if name.starts_with('-') || name.starts_with('.') {
        return Err(format!("{name:?} must not start with '-' or '.'"));
    }
    if name.contains("..") {
        return Err(format!("{name:?} must not contain \"..\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> &'static str {
        r#"{"name":"web","kernel":"/boot/vmlinuz"}"#
    }

    #[test]
    fn a_minimal_definition_gets_defaults() {
        let def = VmDefinition::from_json(minimal()).unwrap();
        assert_eq!(def.schema_version, SCHEMA_VERSION);
        assert_eq!(def.vcpus, 1);
        assert_eq!(def.memory, ByteSize(DEFAULT_MEMORY));
        assert_eq!(def.cmdline, DEFAULT_CMDLINE);
        assert_eq!(def.display, DisplayKind::Framebuffer);
        assert_eq!(def.resolution, crate::config::DEFAULT_DISPLAY);
        assert_eq!(def.input, InputDefinition::default());
        assert_eq!(def.input.devices(), InputDevices::ALL);
        assert!(def.uuid.is_nil());
        assert!(!def.autostart);
    }

    #[test]
    fn definitions_round_trip_through_json() {
        let text = r#"{"name":"db","kernel":"/k","memory":"1G","vcpus":2,
            "disks":[{"volume":"db.qcow2"}],
            "nics":[{"mode":"user","forwards":[{"host":2222,"guest":22}]}],
            "display":"none","autostart":true}"#;
        let mut def = VmDefinition::from_json(text).unwrap();
        def.uuid = Uuid::random().unwrap();
        def.generation = 3;
        let again = VmDefinition::from_json(&def.to_json()).unwrap();
        assert_eq!(again, def);
        assert_eq!(again.nics[0].forwards[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn definitions_stored_before_resolution_and_input_still_load() {
        // What a hangard of the first schema version wrote, field for field.
        let stored = r#"{
            "schema_version": 1,
            "name": "old",
            "uuid": "0b0e9f36-9a53-4f4e-8d1c-5a2b8d7c6e10",
            "vcpus": 1,
            "memory": "256M",
            "kernel": "/k",
            "cmdline": "console=ttyS0",
            "display": "framebuffer",
            "autostart": false,
            "generation": 4
        }"#;
        let def = VmDefinition::from_json(stored).unwrap();
        assert_eq!(def.resolution.to_string(), "1280x800");
        assert_eq!(def.input.devices(), InputDevices::ALL);
        assert_eq!(def.generation, 4);
        let again = VmDefinition::from_json(&def.to_json()).unwrap();
        assert_eq!(again, def);
        assert!(def.to_json().contains("\"resolution\": \"1280x800\""));
    }

    #[test]
    fn resolution_and_input_devices_are_read_and_checked() {
        let def = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","resolution":"1920x1080","input":{"tablet":false}}"#,
        )
        .unwrap();
        assert_eq!((def.resolution.width, def.resolution.height), (1920, 1080));
        assert!(def.input.keyboard && !def.input.tablet);
        assert_eq!(def.input.devices().to_string(), "keyboard");
        for bad in ["3848x2160", "320x200", "1283x800", "7680x4320"] {
            let text = format!(r#"{{"name":"a","kernel":"/k","resolution":"{bad}"}}"#);
            match VmDefinition::from_json(&text).unwrap_err() {
                DefinitionError::Field { field, reason } => {
                    assert_eq!(field, "resolution");
                    assert!(reason.contains(bad), "{reason}");
                }
                other => panic!("{bad}: expected a field error, got {other}"),
            }
        }
        // Text that is no size at all, and unknown input devices, name what is wrong.
        let err = VmDefinition::from_json(r#"{"name":"a","kernel":"/k","resolution":"big"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("WIDTHxHEIGHT"), "{err}");
        let err = VmDefinition::from_json(r#"{"name":"a","kernel":"/k","input":{"mouse":true}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mouse"), "{err}");
    }

    fn field_of(text: &str) -> String {
        match VmDefinition::from_json(text).unwrap_err() {
            DefinitionError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            field_of(r#"{"name":"a","kernel":"/k","memory":0}"#),
            "memory"
        );
        assert_eq!(
            field_of(r#"{"name":"a","kernel":"/k","memory":"16385K"}"#),
            "memory"
        );
        assert_eq!(field_of(r#"{"name":"a","kernel":"/k","vcpus":0}"#), "vcpus");
        assert_eq!(field_of(r#"{"name":"a","kernel":"k"}"#), "kernel");
        assert_eq!(field_of(r#"{"name":"a/b","kernel":"/k"}"#), "name");
        assert_eq!(
            field_of(r#"{"name":"a","kernel":"/k","schema_version":9}"#),
            "schema_version"
        );
        assert_eq!(
            field_of(r#"{"name":"a","kernel":"/k","disks":[{"volume":"../x"}]}"#),
            "disks[0].volume"
        );
        assert_eq!(
            field_of(
                r#"{"name":"a","kernel":"/k","nics":[{"forwards":[{"host":80,"guest":80},{"host":80,"guest":81}]}]}"#
            ),
            "nics[0].forwards[1]"
        );
    }

    #[test]
    fn clients_read_the_field_back_from_the_message() {
        let err = VmDefinition::from_json(
            r#"{"name":"a","kernel":"/k","nics":[{"forwards":[{"host":0,"guest":1}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            refused_field(&err),
            Some(("nics[0].forwards[0]", "port 0 cannot be forwarded"))
        );
        assert_eq!(refused_field("not a valid VM definition: eof"), None);
    }

    #[test]
    fn bad_json_and_unknown_fields_are_refused_by_name() {
        let err = VmDefinition::from_json("{\"name\":").unwrap_err();
        assert!(matches!(err, DefinitionError::Json(_)), "{err}");
        let err =
            VmDefinition::from_json(r#"{"name":"a","kernel":"/k","memroy":"1G"}"#).unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
        let err = VmDefinition::from_json(r#"{"name":"a"}"#).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
    }

    #[test]
    fn names_follow_the_rules() {
        for good in ["web", "debian-tiny", "a.b_c+d@e:1", "X"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "with space",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_files_are_named() {
        let def =
            VmDefinition::from_json(r#"{"name":"a","kernel":"/nonexistent/vmlinuz"}"#).unwrap();
        let err = def.check_files().unwrap_err().to_string();
        assert!(
            err.contains("kernel") && err.contains("/nonexistent/vmlinuz"),
            "{err}"
        );
    }

    #[test]
    fn uuids_print_and_parse() {
        let uuid = Uuid::random().unwrap();
        let text = uuid.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert_eq!(text.parse::<Uuid>().unwrap(), uuid);
        assert!("not-a-uuid".parse::<Uuid>().is_err());
        let mac = uuid.mac(0);
        assert_eq!(mac[..3], [0x52, 0x54, 0x00]);
        assert_eq!(
            mac,
            uuid.mac(0),
            "the same card gets the same MAC every time"
        );
        assert_ne!(mac, uuid.mac(1), "each card gets its own MAC");
        assert!("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"
            .parse::<Uuid>()
            .is_err());
    }
}
