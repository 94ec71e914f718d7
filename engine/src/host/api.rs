//! Hangar's D-Bus API, shared by `hangard` (the service) and its clients (`hangarctl`, the GUI):
//! names, paths, error names, the structs that travel, and client proxies.
//!
//! ```text
//! bus name   dev.hangar.Hangar
//! /dev/hangar                  org.freedesktop.DBus.ObjectManager (all VMs and properties)
//! /dev/hangar/Hangar           dev.hangar.Manager1   define, list, lookup, volumes, sample
//! /dev/hangar/vm/<uuid with _> dev.hangar.Vm1        one object per VM: lifecycle, streams, stats
//! errors     dev.hangar.Error.{InvalidDefinition,InvalidArgument,NameTaken,Conflict,NotFound,
//!                              InUse,InvalidState,Unsupported,Failed}
//! ```

use serde::{Deserialize, Serialize};
use zbus::zvariant::{OwnedFd, OwnedObjectPath, Type};

use crate::host::definition::Uuid;
use crate::host::inventory::{ErrorKind, HostError};
use crate::host::stats::Sample;

pub const BUS_NAME: &str = "dev.hangar.Hangar";
pub const MANAGER_PATH: &str = "/dev/hangar/Hangar";
/// Where `org.freedesktop.DBus.ObjectManager` lists every VM object with its properties.
pub const OBJECT_MANAGER_PATH: &str = "/dev/hangar";
pub const MANAGER_INTERFACE: &str = "dev.hangar.Manager1";
pub const VM_INTERFACE: &str = "dev.hangar.Vm1";
pub const VM_PATH_PREFIX: &str = "/dev/hangar/vm/";
pub const ERROR_PREFIX: &str = "dev.hangar.Error";
/// Version of this API; bumped on incompatible changes (the interfaces' names carry it too).
pub const API_VERSION: u32 = 1;

/// The object path of a VM: its UUID with `_` for `-`.
pub fn vm_path(uuid: &Uuid) -> OwnedObjectPath {
    let path = format!("{VM_PATH_PREFIX}{}", uuid.to_string().replace('-', "_"));
    OwnedObjectPath::try_from(path).expect("a UUID with '_' for '-' is a valid path element")
}

/// The UUID in a VM's object path.
pub fn uuid_of_path(path: &str) -> Option<Uuid> {
    path.strip_prefix(VM_PATH_PREFIX)?
        .replace('_', "-")
        .parse()
        .ok()
}

/// Errors on the bus: `dev.hangar.Error.<Kind>` with a message saying what is wrong and what
/// to do.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "dev.hangar.Error")]
pub enum HangarError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidDefinition(String),
    InvalidArgument(String),
    NameTaken(String),
    Conflict(String),
    NotFound(String),
    InUse(String),
    InvalidState(String),
    Unsupported(String),
    Failed(String),
}

impl From<HostError> for HangarError {
    fn from(err: HostError) -> HangarError {
        let message = err.to_string();
        match err.kind() {
            ErrorKind::InvalidDefinition => HangarError::InvalidDefinition(message),
            ErrorKind::InvalidArgument => HangarError::InvalidArgument(message),
            ErrorKind::NameTaken => HangarError::NameTaken(message),
            ErrorKind::Conflict => HangarError::Conflict(message),
            ErrorKind::NotFound => HangarError::NotFound(message),
            ErrorKind::InUse => HangarError::InUse(message),
            ErrorKind::InvalidState => HangarError::InvalidState(message),
            ErrorKind::Unsupported => HangarError::Unsupported(message),
            ErrorKind::Failed => HangarError::Failed(message),
        }
    }
}

/// One row of `ListVms`, the struct `(ossstuubt)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct VmListEntry {
    pub path: OwnedObjectPath,
    pub uuid: String,
    pub name: String,
    /// running, paused, shutoff or crashed
    pub state: String,
    pub vcpus: u32,
    pub memory: u64,
    pub autostart: bool,
    pub generation: u64,
}

/// One volume of the pool, the struct `(ssstt)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Type)]
pub struct VolumeEntry {
    pub name: String,
    pub path: String,
    pub format: String,
    pub virtual_size: u64,
    pub actual_size: u64,
}

impl From<crate::host::storage::Volume> for VolumeEntry {
    fn from(volume: crate::host::storage::Volume) -> VolumeEntry {
        VolumeEntry {
            name: volume.name,
            path: volume.path.display().to_string(),
            format: volume.format,
            virtual_size: volume.virtual_size,
            actual_size: volume.actual_size,
        }
    }
}

/// A port forward on the bus: (protocol, host port, guest port).
pub type ForwardEntry = (String, u16, u16);
/// A NIC on the bus: (mode, port forwards).
pub type NicEntry = (String, Vec<ForwardEntry>);

/// Client side of `dev.hangar.Manager1`.
#[zbus::proxy(
    interface = "dev.hangar.Manager1",
    default_service = "dev.hangar.Hangar",
    default_path = "/dev/hangar/Hangar"
)]
pub trait Manager {
    fn define(&self, json: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_vms(&self) -> zbus::Result<Vec<VmListEntry>>;
    fn lookup_by_name(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn create_volume(&self, name: &str, size: u64, format: &str) -> zbus::Result<VolumeEntry>;
    fn import_volume(&self, name: &str, source: &str, format: &str) -> zbus::Result<VolumeEntry>;
    fn resize_volume(&self, name: &str, size: u64) -> zbus::Result<VolumeEntry>;
    fn list_volumes(&self) -> zbus::Result<Vec<VolumeEntry>>;
    fn delete_volume(&self, name: &str) -> zbus::Result<()>;
    fn sample(&self, guest_cache: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn api_version(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn capabilities(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn stats_interval(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn set_stats_interval(&self, ms: u32) -> zbus::Result<()>;

    #[zbus(signal)]
    fn vm_added(&self, path: OwnedObjectPath) -> zbus::Result<()>;
    #[zbus(signal)]
    fn vm_removed(&self, path: OwnedObjectPath) -> zbus::Result<()>;
}

/// Client side of `dev.hangar.Vm1`.
#[zbus::proxy(interface = "dev.hangar.Vm1", default_service = "dev.hangar.Hangar")]
pub trait Vm {
    fn start(&self) -> zbus::Result<()>;
    fn shutdown(&self) -> zbus::Result<()>;
    fn destroy(&self) -> zbus::Result<()>;
    fn reboot(&self) -> zbus::Result<()>;
    fn suspend(&self) -> zbus::Result<()>;
    fn resume(&self) -> zbus::Result<()>;
    fn undefine(&self, remove_storage: bool) -> zbus::Result<()>;
    fn update_definition(&self, json: &str, expected_generation: u64) -> zbus::Result<u64>;
    fn get_definition(&self) -> zbus::Result<String>;
    fn open_serial(&self) -> zbus::Result<OwnedFd>;
    fn open_display(&self) -> zbus::Result<OwnedFd>;
    fn get_stats(&self) -> zbus::Result<Sample>;
    fn get_stats_history(&self) -> zbus::Result<Vec<Sample>>;
    fn get_worker_log(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state_reason(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn vcpus(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn memory(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn disks(&self) -> zbus::Result<Vec<(String, bool)>>;
    #[zbus(property)]
    fn nics(&self) -> zbus::Result<Vec<NicEntry>>;
    #[zbus(property)]
    fn display(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn autostart(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn generation(&self) -> zbus::Result<u64>;

    /// Named apart from the `State` property's own change stream.
    #[zbus(signal, name = "StateChanged")]
    fn vm_state_changed(&self, state: String, reason: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn definition_changed(&self, generation: u64) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_carry_the_uuid() {
        let uuid = Uuid::random().unwrap();
        let path = vm_path(&uuid);
        assert!(path.as_str().starts_with(VM_PATH_PREFIX));
        assert!(!path.as_str().contains('-'));
        assert_eq!(uuid_of_path(path.as_str()), Some(uuid));
        assert_eq!(uuid_of_path("/dev/hangar/vm/nope"), None);
    }

    #[test]
    fn errors_get_their_dbus_names() {
        let err: HangarError = HostError::NoSuchVm("x".into()).into();
        let name = zbus::DBusError::name(&err).to_string();
        assert_eq!(name, "dev.hangar.Error.NotFound");
    }
}
