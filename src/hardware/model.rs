//! The hardware editor's model, free of GTK: the definition as loaded from hangard, the draft
//! the Details page edits, whether they differ, the definition JSON that Apply sends, the
//! volumes Apply creates and grows, and which row a refusal of hangard's belongs to.
//!
//! The draft only knows the fields the page edits. Apply writes them over the JSON that was
//! loaded, so whatever else the definition holds (its name, UUID, autostart, generation) goes
//! back as it came.

use std::collections::BTreeMap;

use gettextrs::gettext;
use hangar_engine::config::{ByteSize, DisplaySize};
use hangar_engine::host::api::VolumeEntry;
use hangar_engine::host::definition::{
    refused_field, DiskDefinition, DisplayKind, InputDefinition, NicDefinition, NicMode,
    PortForward, Protocol, VmDefinition,
};
use hangar_engine::host::storage::validate_volume_name;
use serde_json::Value;

pub use crate::host_limits::HostLimits;

/// Screen sizes the page offers, smallest first.
pub const RESOLUTION_PRESETS: [DisplaySize; 6] = [
    DisplaySize {
        width: 1024,
        height: 768,
    },
    DisplaySize {
        width: 1280,
        height: 800,
    },
    DisplaySize {
        width: 1280,
        height: 1024,
    },
    DisplaySize {
        width: 1920,
        height: 1080,
    },
    DisplaySize {
        width: 2560,
        height: 1440,
    },
    DisplaySize {
        width: 3840,
        height: 2160,
    },
];

/// Host port the first port forward a user adds gets (then the next free one), to guest 22.
const FIRST_FORWARD: (u16, u16) = (2222, 22);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// What the model refuses, each saying what to do instead.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    #[error("{}", describe(self))]
    Definition(String),
    #[error("{}", describe(self))]
    NotASize,
    #[error("{}", describe(self))]
    Fraction,
    #[error("{}", describe(self))]
    TooLarge,
    #[error("{}", describe(self))]
    AboveHost(u64),
    #[error("{}", describe(self))]
    Shrink { current: u64, requested: u64 },
    #[error("{}", describe(self))]
    VolumeName(String),
    #[error("{}", describe(self))]
    VolumeExists(String),
    #[error("{}", describe(self))]
    AlreadyAttached(String),
    #[error("{}", describe(self))]
    TooSmall,
    #[error("{}", describe(self))]
    NotLoaded,
}

/// The message of a refusal, in the user's language. (Apart from the enum because xgettext
/// reads Rust as C and skips attribute lines as preprocessor directives.)
fn describe(err: &ModelError) -> String {
    match err {
        ModelError::Definition(reason) => {
            gettext("hangard sent a definition this Hangar cannot read: {reason}")
                .replace("{reason}", reason)
        }
        ModelError::NotASize => gettext("Give a size such as 512 MiB or 2 GiB"),
        ModelError::Fraction => gettext("Give a whole number of KiB"),
        ModelError::TooLarge => gettext("That is too large"),
        ModelError::AboveHost(memory) => {
            gettext("More than this host's {size}").replace("{size}", &format_size(*memory))
        }
        ModelError::Shrink { current, requested } => gettext("Volumes can only grow: {size} is not larger than its current {current}. Shrinking would cut off data the guest may have written there.")
            .replace("{size}", &format_size(*requested))
            .replace("{current}", &format_size(*current)),
        ModelError::VolumeName(reason) => {
            gettext("Volume name: {reason}").replace("{reason}", reason)
        }
        ModelError::VolumeExists(name) => gettext("The pool already has a volume called {name}; pick another name or add that volume as an existing one")
            .replace("{name}", name),
        ModelError::AlreadyAttached(name) => {
            gettext("{name} is already one of this VM's disks").replace("{name}", name)
        }
        ModelError::TooSmall => gettext("A new volume needs a size of at least 1 MiB"),
        ModelError::NotLoaded => gettext("Nothing was loaded to edit yet"),
    }
}

/// Where on the page a problem is shown: the row of that field, or the page's own message
/// area when it belongs to no row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldKey {
    General,
    Vcpus,
    Memory,
    Kernel,
    Initrd,
    Cmdline,
    /// A disk, by its place in the draft (and in the JSON sent, which follows the draft).
    Disk(usize),
    Nic(usize),
    /// Port forward `.1` of NIC `.0`.
    Forward(usize, usize),
    Display,
    Resolution,
    Input,
}

/// The row a refusal of hangard's belongs to, and its reason: hangard words every invalid
/// field as `field "disks[1].volume": reason`. Anything else belongs to the page as a whole.
pub fn refusal_target(message: &str) -> (FieldKey, String) {
    let Some((field, reason)) = refused_field(message) else {
        return (FieldKey::General, message.to_string());
    };
    (field_key(field), reason.to_string())
}

fn field_key(field: &str) -> FieldKey {
    /// "[2].rest" -> (2, ".rest")
    fn index(text: &str) -> Option<(usize, &str)> {
        let (index, rest) = text.strip_prefix('[')?.split_once(']')?;
        Some((index.parse().ok()?, rest))
    }
    let key = match field {
        "vcpus" => FieldKey::Vcpus,
        "memory" => FieldKey::Memory,
        "kernel" => FieldKey::Kernel,
        "initrd" => FieldKey::Initrd,
        "cmdline" => FieldKey::Cmdline,
        "display" => FieldKey::Display,
        "resolution" => FieldKey::Resolution,
        "input" => FieldKey::Input,
        _ => FieldKey::General,
    };
    if key != FieldKey::General {
        return key;
    }
    if let Some((i, _)) = field.strip_prefix("disks").and_then(index) {
        return FieldKey::Disk(i);
    }
    if let Some((i, rest)) = field.strip_prefix("nics").and_then(index) {
        return match rest.strip_prefix(".forwards").and_then(index) {
            Some((j, _)) => FieldKey::Forward(i, j),
            None => FieldKey::Nic(i),
        };
    }
    FieldKey::General
}

/// Reads a size as people write it: `512 MiB`, `2 GiB`, `1.5G`, `2048M`, `64 KiB`; a bare
/// number is MiB. IEC units (powers of 1024) whatever the spelling, as the rest of Hangar.
pub fn parse_size(text: &str) -> Result<u64, ModelError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "k" | "kb" | "kib" => KIB,
        "t" | "tb" | "tib" => TIB,
        "b" => 1,
        _ => return Err(ModelError::NotASize),
    };
    let number = number.replace(',', ".");
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(ModelError::NotASize);
    }
    let digits = |part: &str| -> Result<u128, ModelError> {
        if part.is_empty() {
            Ok(0)
        } else {
            part.parse::<u128>().map_err(|_| ModelError::TooLarge)
        }
    };
    if fraction.len() > 12 {
        return Err(ModelError::Fraction);
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let total = (digits(whole)? * scale + digits(fraction)?) * u128::from(unit);
    if !total.is_multiple_of(scale) {
        return Err(ModelError::Fraction);
    }
    let bytes = total / scale;
    if unit > 1 && !bytes.is_multiple_of(u128::from(KIB)) {
        return Err(ModelError::Fraction);
    }
    u64::try_from(bytes).map_err(|_| ModelError::TooLarge)
}

/// A size in the largest IEC unit that states it exactly (`256 MiB`, `2 GiB`, `1536 MiB`), so
/// that [`parse_size`] reads back the same number.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} B")
}

/// Where a disk of the draft comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOrigin {
    /// In the definition as loaded.
    Attached,
    /// A volume of the pool, added in this edit.
    Existing,
    /// A new qcow2 volume that Apply creates.
    New,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub volume: String,
    pub readonly: bool,
    pub origin: DiskOrigin,
    /// Its virtual size: in the pool now, or the size to create.
    pub size: Option<u64>,
    /// Its format in the pool (`qcow2`, `raw`), if known.
    pub format: Option<String>,
    /// A larger size Apply grows it to.
    pub grow_to: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub mode: NicMode,
    pub forwards: Vec<PortForward>,
}

/// The hardware the Details page edits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hardware {
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory: u64,
    pub kernel: String,
    /// Empty for none.
    pub initrd: String,
    pub cmdline: String,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub display: DisplayKind,
    pub resolution: DisplaySize,
    pub keyboard: bool,
    pub tablet: bool,
}

impl Hardware {
    fn from_definition(def: &VmDefinition, volumes: &[VolumeEntry]) -> Hardware {
        Hardware {
            vcpus: def.vcpus,
            memory: def.memory.0,
            kernel: def.kernel.display().to_string(),
            initrd: def
                .initrd
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            cmdline: def.cmdline.clone(),
            disks: def
                .disks
                .iter()
                .map(|disk| {
                    let volume = volumes.iter().find(|v| v.name == disk.volume);
                    Disk {
                        volume: disk.volume.clone(),
                        readonly: disk.readonly,
                        origin: DiskOrigin::Attached,
                        size: volume.map(|v| v.virtual_size),
                        format: volume.map(|v| v.format.clone()),
                        grow_to: None,
                    }
                })
                .collect(),
            nics: def
                .nics
                .iter()
                .map(|nic| Nic {
                    mode: nic.mode,
                    forwards: nic.forwards.clone(),
                })
                .collect(),
            display: def.display,
            resolution: def.resolution,
            keyboard: def.input.keyboard,
            tablet: def.input.tablet,
        }
    }
}

/// Which parts of the draft differ from what was loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    pub processor: bool,
    pub memory: bool,
    pub boot: bool,
    pub disks: bool,
    pub network: bool,
    pub display: bool,
}

impl Dirty {
    pub fn any(&self) -> bool {
        self.processor || self.memory || self.boot || self.disks || self.network || self.display
    }
}

/// The rules for a new volume's name and size, apart from the editor so that a dialog can
/// check them as the user types.
#[derive(Clone, Debug)]
pub struct NewDiskCheck {
    pool: Vec<String>,
    attached: Vec<String>,
}

impl NewDiskCheck {
    /// The volume name and size in bytes, or what is wrong with them.
    pub fn check(&self, name: &str, size: &str) -> Result<(String, u64), ModelError> {
        let name = name.trim();
        validate_volume_name(name).map_err(ModelError::VolumeName)?;
        if self.pool.iter().any(|v| v == name) {
            return Err(ModelError::VolumeExists(name.to_string()));
        }
        if self.attached.iter().any(|v| v == name) {
            return Err(ModelError::AlreadyAttached(name.to_string()));
        }
        let size = parse_size(size)?;
        if size < MIB {
            return Err(ModelError::TooSmall);
        }
        Ok((name.to_string(), size))
    }
}

/// The rule for growing one disk: larger than it is now.
#[derive(Clone, Copy, Debug)]
pub struct GrowCheck {
    /// A disk Apply creates: any size of at least 1 MiB will do.
    new: bool,
    current: Option<u64>,
}

impl GrowCheck {
    pub fn current(&self) -> Option<u64> {
        self.current
    }

    pub fn check(&self, size: &str) -> Result<u64, ModelError> {
        let size = parse_size(size)?;
        match self.current {
            _ if self.new && size < MIB => Err(ModelError::TooSmall),
            Some(current) if !self.new && size <= current => Err(ModelError::Shrink {
                current,
                requested: size,
            }),
            _ => Ok(size),
        }
    }
}

/// The most vCPUs the page offers: the host's CPUs, and at least what the VM has already.
pub fn offered_vcpus(host: &HostLimits, current: u32) -> u32 {
    host.max_vcpus().max(current)
}

/// What Apply does, in this order: create the new volumes, update the definition, grow the
/// volumes. Growing comes last because it cannot be undone: a refused definition leaves every
/// volume as it was, and the new ones are deleted again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyPlan {
    pub json: String,
    pub generation: u64,
    /// (disk index, volume, size)
    pub create: Vec<(usize, String, u64)>,
    /// (disk index, volume, new size)
    pub grow: Vec<(usize, String, u64)>,
}

struct Loaded {
    json: Value,
    hardware: Hardware,
    generation: u64,
}

/// The definition as loaded and the draft being edited.
#[derive(Default)]
pub struct Editor {
    loaded: Option<Loaded>,
    draft: Option<Hardware>,
    /// Text the page could not take (a memory that is not a size), by field: Apply waits
    /// until it is fixed.
    invalid: BTreeMap<FieldKey, String>,
}

impl Editor {
    /// Takes the definition hangard sent (`GetDefinition`) and the pool's volumes; the draft
    /// starts as a copy.
    pub fn load(&mut self, json: &str, volumes: &[VolumeEntry]) -> Result<(), ModelError> {
        let value: Value =
            serde_json::from_str(json).map_err(|e| ModelError::Definition(e.to_string()))?;
        let def =
            VmDefinition::from_json(json).map_err(|e| ModelError::Definition(e.to_string()))?;
        let hardware = Hardware::from_definition(&def, volumes);
        self.draft = Some(hardware.clone());
        self.loaded = Some(Loaded {
            json: value,
            hardware,
            generation: def.generation,
        });
        self.invalid.clear();
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// The generation the draft was loaded from: Apply names it, so that hangard refuses the
    /// update if someone else changed the VM meanwhile.
    pub fn generation(&self) -> Option<u64> {
        self.loaded.as_ref().map(|l| l.generation)
    }

    pub fn draft(&self) -> Option<&Hardware> {
        self.draft.as_ref()
    }

    pub fn loaded(&self) -> Option<&Hardware> {
        self.loaded.as_ref().map(|l| &l.hardware)
    }

    /// Edits the draft; nothing happens before a definition was loaded.
    pub fn edit(&mut self, change: impl FnOnce(&mut Hardware)) {
        if let Some(draft) = &mut self.draft {
            change(draft);
        }
    }

    /// Drops the draft's changes and the text the page could not take.
    pub fn revert(&mut self) {
        self.draft = self.loaded.as_ref().map(|l| l.hardware.clone());
        self.invalid.clear();
    }

    pub fn dirty(&self) -> Dirty {
        let (Some(loaded), Some(draft)) = (self.loaded(), self.draft()) else {
            return Dirty::default();
        };
        Dirty {
            processor: loaded.vcpus != draft.vcpus,
            memory: loaded.memory != draft.memory,
            boot: (&loaded.kernel, &loaded.initrd, &loaded.cmdline)
                != (&draft.kernel, &draft.initrd, &draft.cmdline),
            disks: loaded.disks != draft.disks,
            network: loaded.nics != draft.nics,
            display: (
                loaded.display,
                loaded.resolution,
                loaded.keyboard,
                loaded.tablet,
            ) != (
                draft.display,
                draft.resolution,
                draft.keyboard,
                draft.tablet,
            ),
        }
    }

    /// Whether there is anything to revert: changes, or text not taken.
    pub fn has_changes(&self) -> bool {
        self.dirty().any() || !self.invalid.is_empty()
    }

    /// Whether Apply can go: something changed and everything the page holds could be read.
    pub fn can_apply(&self) -> bool {
        self.dirty().any() && self.invalid.is_empty()
    }

    /// Notes that the text of `field` could not be taken (or, with `None`, that it now is).
    pub fn set_invalid(&mut self, field: FieldKey, problem: Option<String>) {
        match problem {
            Some(problem) => {
                self.invalid.insert(field, problem);
            }
            None => {
                self.invalid.remove(&field);
            }
        }
    }

    pub fn invalid(&self) -> &BTreeMap<FieldKey, String> {
        &self.invalid
    }

    /// Takes the memory as typed; on the host's limits too, when known.
    pub fn set_memory_text(&mut self, text: &str, host: Option<HostLimits>) {
        let parsed = parse_size(text).and_then(|bytes| match host {
            Some(host) if host.memory > 0 && bytes > host.memory => {
                Err(ModelError::AboveHost(host.memory))
            }
            _ => Ok(bytes),
        });
        match parsed {
            Ok(bytes) => {
                self.edit(|d| d.memory = bytes);
                self.set_invalid(FieldKey::Memory, None);
            }
            Err(err) => self.set_invalid(FieldKey::Memory, Some(err.to_string())),
        }
    }

    /// What a new volume may be called and how big it may be, for the Add Disk dialog to
    /// check as the user types; `pool` is the pool's volumes now.
    pub fn new_disk_check(&self, pool: &[VolumeEntry]) -> NewDiskCheck {
        NewDiskCheck {
            pool: pool.iter().map(|v| v.name.clone()).collect(),
            attached: self
                .draft()
                .map(|d| d.disks.iter().map(|disk| disk.volume.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Adds a new qcow2 volume as the last disk, created on Apply: `name` and `size` as typed.
    pub fn add_new_disk(
        &mut self,
        name: &str,
        size: &str,
        pool: &[VolumeEntry],
    ) -> Result<(), ModelError> {
        let (volume, size) = self.new_disk_check(pool).check(name, size)?;
        self.edit(|d| {
            d.disks.push(Disk {
                volume,
                readonly: false,
                origin: DiskOrigin::New,
                size: Some(size),
                format: Some("qcow2".into()),
                grow_to: None,
            })
        });
        Ok(())
    }

    /// Adds a volume of the pool as the last disk.
    pub fn add_existing_disk(&mut self, volume: &VolumeEntry) -> Result<(), ModelError> {
        self.check_not_attached(&volume.name)?;
        // A disk taken off and put back is the same disk again.
        let was_attached = self
            .loaded()
            .is_some_and(|l| l.disks.iter().any(|d| d.volume == volume.name));
        self.edit(|d| {
            d.disks.push(Disk {
                volume: volume.name.clone(),
                readonly: false,
                origin: if was_attached {
                    DiskOrigin::Attached
                } else {
                    DiskOrigin::Existing
                },
                size: Some(volume.virtual_size),
                format: Some(volume.format.clone()),
                grow_to: None,
            })
        });
        Ok(())
    }

    fn check_not_attached(&self, volume: &str) -> Result<(), ModelError> {
        if self
            .draft()
            .is_some_and(|d| d.disks.iter().any(|disk| disk.volume == volume))
        {
            return Err(ModelError::AlreadyAttached(volume.to_string()));
        }
        Ok(())
    }

    /// Pool volumes a disk could be added from: those not already disks of the draft.
    pub fn attachable<'a>(&self, pool: &'a [VolumeEntry]) -> Vec<&'a VolumeEntry> {
        pool.iter()
            .filter(|v| self.check_not_attached(&v.name).is_ok())
            .collect()
    }

    /// What disk `index` may grow to, for the Grow dialog to check as the user types.
    pub fn grow_check(&self, index: usize) -> Option<GrowCheck> {
        let disk = self.draft()?.disks.get(index)?;
        Some(GrowCheck {
            new: disk.origin == DiskOrigin::New,
            current: disk.size,
        })
    }

    /// Grows disk `index` on Apply to `size` as typed (a new disk is simply created that
    /// big). Refuses anything not larger than the volume is now.
    pub fn grow_disk(&mut self, index: usize, size: &str) -> Result<(), ModelError> {
        let check = self.grow_check(index).ok_or(ModelError::NotLoaded)?;
        let size = check.check(size)?;
        self.edit(|d| {
            let disk = &mut d.disks[index];
            if check.new {
                disk.size = Some(size);
            } else {
                disk.grow_to = Some(size);
            }
        });
        Ok(())
    }

    pub fn remove_disk(&mut self, index: usize) {
        self.edit(|d| {
            if index < d.disks.len() {
                d.disks.remove(index);
            }
        });
    }

    /// Adds a user-mode NIC with no port forwards.
    pub fn add_nic(&mut self) {
        self.edit(|d| {
            d.nics.push(Nic {
                mode: NicMode::User,
                forwards: Vec::new(),
            })
        });
    }

    pub fn remove_nic(&mut self, index: usize) {
        self.edit(|d| {
            if index < d.nics.len() {
                d.nics.remove(index);
            }
        });
    }

    /// Adds a TCP forward to NIC `nic`: the first host port from 2222 up that no forward of
    /// the VM uses yet, to the guest's SSH port.
    pub fn add_forward(&mut self, nic: usize) {
        self.edit(|d| {
            let used: Vec<u16> = d
                .nics
                .iter()
                .flat_map(|n| n.forwards.iter())
                .filter(|f| f.protocol == Protocol::Tcp)
                .map(|f| f.host)
                .collect();
            let host = (FIRST_FORWARD.0..=u16::MAX)
                .find(|p| !used.contains(p))
                .unwrap_or(FIRST_FORWARD.0);
            if let Some(n) = d.nics.get_mut(nic) {
                n.forwards.push(PortForward {
                    protocol: Protocol::Tcp,
                    host,
                    guest: FIRST_FORWARD.1,
                });
            }
        });
    }

    pub fn set_forward(&mut self, nic: usize, index: usize, forward: PortForward) {
        self.edit(|d| {
            if let Some(slot) = d.nics.get_mut(nic).and_then(|n| n.forwards.get_mut(index)) {
                *slot = forward;
            }
        });
    }

    pub fn remove_forward(&mut self, nic: usize, index: usize) {
        self.edit(|d| {
            if let Some(n) = d.nics.get_mut(nic) {
                if index < n.forwards.len() {
                    n.forwards.remove(index);
                }
            }
        });
    }

    /// The definition to send: the JSON as loaded with the draft's fields written over it.
    pub fn definition_json(&self) -> Result<String, ModelError> {
        let (Some(loaded), Some(draft)) = (&self.loaded, &self.draft) else {
            return Err(ModelError::NotLoaded);
        };
        let mut json = loaded.json.clone();
        let Some(object) = json.as_object_mut() else {
            return Err(ModelError::Definition("not a JSON object".into()));
        };
        object.insert("vcpus".into(), Value::from(draft.vcpus));
        object.insert("memory".into(), to_value(&ByteSize(draft.memory)));
        object.insert("kernel".into(), Value::from(draft.kernel.trim()));
        if draft.initrd.trim().is_empty() {
            object.remove("initrd");
        } else {
            object.insert("initrd".into(), Value::from(draft.initrd.trim()));
        }
        object.insert("cmdline".into(), Value::from(draft.cmdline.as_str()));
        let disks: Vec<DiskDefinition> = draft
            .disks
            .iter()
            .map(|d| DiskDefinition {
                volume: d.volume.clone(),
                readonly: d.readonly,
            })
            .collect();
        object.insert("disks".into(), to_value(&disks));
        let nics: Vec<NicDefinition> = draft
            .nics
            .iter()
            .map(|n| NicDefinition {
                mode: n.mode,
                forwards: n.forwards.clone(),
            })
            .collect();
        object.insert("nics".into(), to_value(&nics));
        object.insert("display".into(), to_value(&draft.display));
        object.insert("resolution".into(), to_value(&draft.resolution));
        let input = InputDefinition {
            keyboard: draft.keyboard,
            tablet: draft.tablet,
        };
        object.insert("input".into(), to_value(&input));
        Ok(serde_json::to_string_pretty(&json).unwrap_or_default())
    }

    /// What Apply will do, or the first reason it cannot.
    pub fn plan(&self) -> Result<ApplyPlan, ModelError> {
        let draft = self.draft().ok_or(ModelError::NotLoaded)?;
        let generation = self.generation().ok_or(ModelError::NotLoaded)?;
        let create = draft
            .disks
            .iter()
            .enumerate()
            .filter(|(_, d)| d.origin == DiskOrigin::New)
            .map(|(i, d)| (i, d.volume.clone(), d.size.unwrap_or(GIB)))
            .collect();
        let grow = draft
            .disks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.grow_to.map(|size| (i, d.volume.clone(), size)))
            .collect();
        Ok(ApplyPlan {
            json: self.definition_json()?,
            generation,
            create,
            grow,
        })
    }
}

/// A part of a definition as JSON; definition parts are plain values and always serialise.
fn to_value<T: serde::Serialize>(part: &T) -> Value {
    serde_json::to_value(part).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, size: u64) -> VolumeEntry {
        VolumeEntry {
            name: name.into(),
            path: format!("/pool/{name}"),
            format: "qcow2".into(),
            virtual_size: size,
            actual_size: 4096,
        }
    }

    fn def_json() -> String {
        serde_json::json!({
            "schema_version": 1, "name": "web", "uuid": "0b0e9f36-9a53-4f4e-8d1c-5a2b8d7c6e10",
            "vcpus": 1, "memory": "256M", "kernel": "/k", "initrd": "/i",
            "cmdline": "console=ttyS0", "disks": [{"volume": "root.qcow2"}],
            "nics": [{"mode": "user", "forwards": [{"protocol": "tcp", "host": 8080, "guest": 80}]}],
            "display": "framebuffer", "autostart": true, "generation": 7
        })
        .to_string()
    }

    fn editor() -> Editor {
        let mut editor = Editor::default();
        editor
            .load(
                &def_json(),
                &[volume("root.qcow2", GIB), volume("spare.img", 64 * MIB)],
            )
            .unwrap();
        editor
    }

    fn sent(editor: &Editor) -> Value {
        serde_json::from_str(&editor.definition_json().unwrap()).unwrap()
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_size("512 MiB"), Ok(512 * MIB));
        assert_eq!(parse_size("512"), Ok(512 * MIB));
        assert_eq!(parse_size("2 GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size(" 1.5 gib "), Ok(1536 * MIB));
        assert_eq!(parse_size("1,5 GiB"), Ok(1536 * MIB));
        assert_eq!(parse_size("64 KiB"), Ok(64 * KIB));
        assert_eq!(parse_size("1 TiB"), Ok(TIB));
        assert_eq!(parse_size("4096 B"), Ok(4096));
        assert_eq!(parse_size(".5G"), Ok(512 * MIB));
        for bad in ["", "lots", "2 PiB", "1.2.3 G", "G", "-1 G", "."] {
            assert_eq!(parse_size(bad), Err(ModelError::NotASize), "{bad:?}");
        }
        assert_eq!(parse_size("0.0001 K"), Err(ModelError::Fraction));
        assert_eq!(parse_size("1.0000001 M"), Err(ModelError::Fraction));
        assert_eq!(
            parse_size("99999999999999999999 T"),
            Err(ModelError::TooLarge)
        );
    }

    #[test]
    fn sizes_print_exactly_and_read_back() {
        for (bytes, text) in [
            (256 * MIB, "256 MiB"),
            (2 * GIB, "2 GiB"),
            (1536 * MIB, "1536 MiB"),
            (100 * KIB, "100 KiB"),
            (3 * TIB, "3 TiB"),
            (1000, "1000 B"),
            (0, "0 B"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn the_draft_starts_as_loaded_and_tracks_what_changed() {
        let mut editor = editor();
        assert_eq!(editor.generation(), Some(7));
        let draft = editor.draft().unwrap().clone();
        assert_eq!((draft.vcpus, draft.memory), (1, 256 * MIB));
        assert_eq!(draft.resolution.to_string(), "1280x800");
        assert!(draft.keyboard && draft.tablet);
        assert_eq!(draft.disks[0].size, Some(GIB));
        assert_eq!(draft.disks[0].origin, DiskOrigin::Attached);
        assert!(!editor.dirty().any() && !editor.can_apply() && !editor.has_changes());

        editor.edit(|d| d.vcpus = 2);
        assert_eq!(
            editor.dirty(),
            Dirty {
                processor: true,
                ..Dirty::default()
            }
        );
        editor.edit(|d| d.cmdline.push_str(" quiet"));
        editor.edit(|d| d.tablet = false);
        let dirty = editor.dirty();
        assert!(dirty.processor && dirty.boot && dirty.display && !dirty.disks && !dirty.memory);
        assert!(editor.can_apply());
        // Changing a value back is no change.
        editor.edit(|d| d.vcpus = 1);
        assert!(!editor.dirty().processor);
        editor.revert();
        assert!(!editor.has_changes());
        assert_eq!(editor.draft(), editor.loaded());
    }

    #[test]
    fn memory_text_that_cannot_be_taken_holds_apply_back() {
        let mut editor = editor();
        let host = Some(HostLimits {
            cpus: 2,
            memory: 4 * GIB,
        });
        editor.set_memory_text("1 GiB", host);
        assert_eq!(editor.draft().unwrap().memory, GIB);
        assert!(editor.can_apply());
        editor.set_memory_text("1 gallon", host);
        assert!(!editor.can_apply() && editor.has_changes());
        assert_eq!(
            editor.invalid().get(&FieldKey::Memory),
            Some(&ModelError::NotASize.to_string())
        );
        editor.set_memory_text("8 GiB", host);
        assert_eq!(
            editor.invalid().get(&FieldKey::Memory),
            Some(&ModelError::AboveHost(4 * GIB).to_string())
        );
        assert!(editor.invalid()[&FieldKey::Memory].contains("4 GiB"));
        editor.set_memory_text("256 MiB", host);
        assert!(!editor.has_changes(), "back where it started");
    }

    #[test]
    fn the_json_sent_is_the_loaded_one_with_the_draft_written_over_it() {
        let mut editor = editor();
        editor.edit(|d| {
            d.vcpus = 2;
            d.memory = 512 * MIB;
            d.initrd.clear();
            d.cmdline = "console=ttyS0 quiet".into();
            d.resolution = RESOLUTION_PRESETS[3];
            d.keyboard = false;
        });
        let json = sent(&editor);
        assert_eq!(json["vcpus"], 2);
        assert_eq!(json["memory"], "512M");
        assert!(json.get("initrd").is_none(), "no initrd means no key");
        assert_eq!(json["cmdline"], "console=ttyS0 quiet");
        assert_eq!(json["resolution"], "1920x1080");
        assert_eq!(
            json["input"],
            serde_json::json!({"keyboard": false, "tablet": true})
        );
        // What the page does not edit goes back as it came.
        assert_eq!(json["name"], "web");
        assert_eq!(json["uuid"], "0b0e9f36-9a53-4f4e-8d1c-5a2b8d7c6e10");
        assert_eq!(json["autostart"], true);
        assert_eq!(json["generation"], 7);
        // And hangard reads it.
        let def = VmDefinition::from_json(&editor.definition_json().unwrap()).unwrap();
        assert_eq!(def.vcpus, 2);
        assert_eq!(def.nics[0].forwards[0].host, 8080);
    }

    #[test]
    fn a_definition_hangard_would_not_take_is_not_loaded() {
        let mut editor = Editor::default();
        for bad in ["{", "[1]", r#"{"name": "x"}"#] {
            assert!(
                matches!(editor.load(bad, &[]), Err(ModelError::Definition(_))),
                "{bad}"
            );
        }
        assert!(!editor.is_loaded());
        assert_eq!(editor.definition_json(), Err(ModelError::NotLoaded));
    }

    #[test]
    fn disks_are_added_created_grown_and_removed() {
        let pool = [volume("root.qcow2", GIB), volume("spare.img", 64 * MIB)];
        let mut editor = editor();
        assert_eq!(
            editor
                .attachable(&pool)
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>(),
            ["spare.img"]
        );
        editor.add_existing_disk(&pool[1]).unwrap();
        assert_eq!(
            editor.add_existing_disk(&pool[1]),
            Err(ModelError::AlreadyAttached("spare.img".into()))
        );
        assert_eq!(
            editor.new_disk_check(&[]).check("spare.img", "1 GiB"),
            Err(ModelError::AlreadyAttached("spare.img".into()))
        );
        editor.add_new_disk("data.qcow2", "2 GiB", &pool).unwrap();
        assert_eq!(
            editor.add_new_disk("spare.img", "1 GiB", &pool),
            Err(ModelError::VolumeExists("spare.img".into()))
        );
        assert!(matches!(
            editor.add_new_disk("../x", "1 GiB", &pool),
            Err(ModelError::VolumeName(_))
        ));
        assert_eq!(
            editor.add_new_disk("tiny", "1000 B", &pool),
            Err(ModelError::TooSmall)
        );
        // Growing: only larger than now; a shrink says why not.
        assert_eq!(
            editor.grow_disk(0, "512 MiB"),
            Err(ModelError::Shrink {
                current: GIB,
                requested: 512 * MIB
            })
        );
        assert!(ModelError::Shrink {
            current: GIB,
            requested: GIB
        }
        .to_string()
        .contains("1 GiB"));
        editor.grow_disk(0, "4 GiB").unwrap();
        editor.grow_disk(2, "3 GiB").unwrap();
        assert_eq!(editor.grow_disk(2, "10 KiB"), Err(ModelError::TooSmall));
        assert_eq!(editor.grow_disk(0, "much"), Err(ModelError::NotASize));
        assert_eq!(editor.grow_check(0).unwrap().current(), Some(GIB));
        assert!(editor.grow_check(9).is_none());
        let plan = editor.plan().unwrap();
        assert_eq!(plan.generation, 7);
        assert_eq!(plan.create, [(2, "data.qcow2".to_string(), 3 * GIB)]);
        assert_eq!(plan.grow, [(0, "root.qcow2".to_string(), 4 * GIB)]);
        let json = sent(&editor);
        assert_eq!(
            json["disks"],
            serde_json::json!([{"volume": "root.qcow2"}, {"volume": "spare.img"},
                               {"volume": "data.qcow2"}])
        );
        editor.remove_disk(1);
        assert_eq!(sent(&editor)["disks"][1]["volume"], "data.qcow2");
        // Removing the new disk and the grow leaves only the removal of nothing: clean.
        editor.remove_disk(1);
        editor.edit(|d| d.disks[0].grow_to = None);
        assert!(!editor.dirty().disks);
        // A disk taken off and put back is the same disk, not a change.
        editor.remove_disk(0);
        assert!(editor.dirty().disks);
        editor.add_existing_disk(&pool[0]).unwrap();
        assert!(!editor.dirty().disks);
    }

    #[test]
    fn nics_and_port_forwards_are_added_and_removed() {
        let mut editor = editor();
        editor.add_forward(0);
        let draft = editor.draft().unwrap();
        assert_eq!(
            draft.nics[0].forwards[1],
            PortForward {
                protocol: Protocol::Tcp,
                host: 2222,
                guest: 22
            }
        );
        editor.add_nic();
        editor.add_forward(1);
        assert_eq!(editor.draft().unwrap().nics[1].forwards[0].host, 2223);
        editor.set_forward(
            1,
            0,
            PortForward {
                protocol: Protocol::Udp,
                host: 5353,
                guest: 53,
            },
        );
        let json = sent(&editor);
        assert_eq!(json["nics"][1]["mode"], "user");
        assert_eq!(
            json["nics"][1]["forwards"][0],
            serde_json::json!({"protocol": "udp", "host": 5353, "guest": 53})
        );
        editor.remove_forward(0, 1);
        editor.remove_nic(1);
        assert!(!editor.dirty().network);
        editor.remove_nic(0);
        assert!(sent(&editor)["nics"].as_array().unwrap().is_empty());
    }

    #[test]
    fn refusals_land_on_their_rows() {
        for (message, key, reason) in [
            (
                "field \"memory\": 0 is out of range",
                FieldKey::Memory,
                "0 is out of range",
            ),
            (
                "field \"vcpus\": 99 is out of range",
                FieldKey::Vcpus,
                "99 is out of range",
            ),
            (
                "field \"kernel\": /nope: no such file; check the path",
                FieldKey::Kernel,
                "/nope: no such file; check the path",
            ),
            ("field \"initrd\": x", FieldKey::Initrd, "x"),
            ("field \"cmdline\": too long", FieldKey::Cmdline, "too long"),
            (
                "field \"disks[1].volume\": listed twice",
                FieldKey::Disk(1),
                "listed twice",
            ),
            (
                "field \"nics[0].forwards[2]\": host port 80/tcp is forwarded twice",
                FieldKey::Forward(0, 2),
                "host port 80/tcp is forwarded twice",
            ),
            (
                "field \"nics[3].forwards\": need user",
                FieldKey::Nic(3),
                "need user",
            ),
            (
                "field \"resolution\": too big",
                FieldKey::Resolution,
                "too big",
            ),
            ("field \"name\": taken", FieldKey::General, "taken"),
            (
                "not a valid VM definition: eof",
                FieldKey::General,
                "not a valid VM definition: eof",
            ),
            ("field \"disks[x].volume\": odd", FieldKey::General, "odd"),
        ] {
            assert_eq!(
                refusal_target(message),
                (key, reason.to_string()),
                "{message}"
            );
        }
    }

    #[test]
    fn the_host_bounds_the_cpus_offered() {
        let host = HostLimits {
            cpus: 2,
            memory: GIB,
        };
        assert_eq!(offered_vcpus(&host, 1), 2);
        assert_eq!(
            offered_vcpus(&host, 4),
            4,
            "a VM that has more keeps them offered"
        );
        let big = HostLimits {
            cpus: 256,
            memory: GIB,
        };
        assert_eq!(offered_vcpus(&big, 1), 64);
    }
}
