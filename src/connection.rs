//! The GUI's connection to hangard on the session bus: a snapshot of the VMs through the
//! ObjectManager, then live changes from signals (InterfacesAdded/Removed, PropertiesChanged,
//! NameOwnerChanged), never by polling the list. VM actions are async calls made off the main
//! loop by the components.

use std::collections::HashMap;

use futures_util::StreamExt;
use hangar_engine::host::api::{
    ManagerProxy, VmProxy, BUS_NAME, OBJECT_MANAGER_PATH, VM_INTERFACE, VM_PATH_PREFIX,
};
use hangar_engine::host::capabilities::HostCapabilities;
use hangar_engine::host::stats::Sample;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::Connection;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("cannot reach the session bus: {0}")]
    Bus(String),
    #[error("hangard is not running on the session bus; start it with `hangard` or `scripts/install-user-service`")]
    NotRunning,
}

/// A hangard error as a sentence for people: the error's own message, without the D-Bus name.
pub fn describe(err: &zbus::Error) -> String {
    match err {
        zbus::Error::MethodError(_, Some(message), _) => message.clone(),
        zbus::Error::MethodError(name, None, _) => name.to_string(),
        other => other.to_string(),
    }
}

/// What the GUI knows of one VM, from its `dev.hangar.Vm1` properties.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmInfo {
    pub path: String,
    pub name: String,
    pub uuid: String,
    pub state: String,
    pub state_reason: String,
    pub vcpus: u32,
    pub memory: u64,
    /// (volume, read-only)
    pub disks: Vec<(String, bool)>,
    pub nics: Vec<hangar_engine::host::api::NicEntry>,
    pub display: String,
    pub autostart: bool,
    /// Bumped by hangard on every change of the definition.
    pub generation: u64,
}

impl VmInfo {
    pub fn new(path: &str) -> VmInfo {
        VmInfo {
            path: path.to_string(),
            ..VmInfo::default()
        }
    }

    /// Takes the properties it knows from a property map; unknown or mistyped ones are left.
    pub fn apply(&mut self, properties: &HashMap<String, OwnedValue>) {
        for (key, value) in properties {
            let value = || value.try_clone().ok();
            match key.as_str() {
                "Name" => set(&mut self.name, value()),
                "Uuid" => set(&mut self.uuid, value()),
                "State" => set(&mut self.state, value()),
                "StateReason" => set(&mut self.state_reason, value()),
                "Vcpus" => set(&mut self.vcpus, value()),
                "Memory" => set(&mut self.memory, value()),
                "Disks" => set(&mut self.disks, value()),
                "Nics" => set(&mut self.nics, value()),
                "Display" => set(&mut self.display, value()),
                "Autostart" => set(&mut self.autostart, value()),
                "Generation" => set(&mut self.generation, value()),
                _ => {}
            }
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state.as_str(), "running" | "paused")
    }
}

fn set<T: TryFrom<OwnedValue>>(field: &mut T, value: Option<OwnedValue>) {
    if let Some(v) = value.and_then(|v| T::try_from(v).ok()) {
        *field = v;
    }
}

/// What the connection reports to the manager window.
#[derive(Debug)]
pub enum HostEvent {
    Connected {
        connection: Connection,
        capabilities: Option<HostCapabilities>,
        vms: Vec<VmInfo>,
    },
    Disconnected(String),
    VmAdded(VmInfo),
    VmRemoved(String),
    VmChanged {
        path: String,
        properties: HashMap<String, OwnedValue>,
    },
}

type Interfaces = HashMap<String, HashMap<String, OwnedValue>>;

/// The VMs hangard has now.
async fn snapshot(connection: &Connection) -> zbus::Result<Vec<VmInfo>> {
    let objects = zbus::fdo::ObjectManagerProxy::builder(connection)
        .destination(BUS_NAME)?
        .path(OBJECT_MANAGER_PATH)?
        .build()
        .await?
        .get_managed_objects()
        .await?;
    let mut vms: Vec<VmInfo> = objects
        .into_iter()
        .filter_map(|(path, interfaces)| {
            let properties = interfaces
                .into_iter()
                .find(|(name, _)| name.as_str() == VM_INTERFACE)?
                .1;
            let mut vm = VmInfo::new(path.as_str());
            vm.apply(&properties);
            Some(vm)
        })
        .collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(vms)
}

async fn capabilities(connection: &Connection) -> Option<HostCapabilities> {
    let json = ManagerProxy::new(connection)
        .await
        .ok()?
        .capabilities()
        .await
        .ok()?;
    serde_json::from_str(&json).ok()
}

/// Watches hangard until `events` is closed: reports the snapshot, every change, hangard
/// leaving the bus and coming back. Returns when the bus itself is lost.
pub async fn watch(events: relm4::Sender<HostEvent>) {
    let connection = match Connection::session().await {
        Ok(connection) => connection,
        Err(err) => {
            events.emit(HostEvent::Disconnected(
                ConnectionError::Bus(err.to_string()).to_string(),
            ));
            return;
        }
    };
    if let Err(err) = watch_on(&connection, &events).await {
        events.emit(HostEvent::Disconnected(
            ConnectionError::Bus(err.to_string()).to_string(),
        ));
    }
}

async fn watch_on(connection: &Connection, events: &relm4::Sender<HostEvent>) -> zbus::Result<()> {
    // Subscribe before the snapshot, so that nothing falls between the two.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .path_namespace(OBJECT_MANAGER_PATH)?
        .build();
    let signals = zbus::MessageStream::for_match_rule(rule, connection, None).await?;
    let dbus = zbus::fdo::DBusProxy::new(connection).await?;
    let owners = dbus
        .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
        .await?;

    enum Incoming {
        /// hangard took (true) or left (false) its bus name.
        Owner(bool),
        Signal(zbus::Message),
    }
    let owners = owners.filter_map(|change| {
        std::future::ready(
            change
                .args()
                .ok()
                .map(|args| Incoming::Owner(args.new_owner().is_some())),
        )
    });
    let signals = signals.filter_map(|m| std::future::ready(m.ok().map(Incoming::Signal)));
    let mut incoming = futures_util::stream::select(owners, signals);

    // Asking for the snapshot also starts hangard through D-Bus activation when it is
    // installed as a user service.
    let (mut connected, event) = announce(connection).await;
    events.emit(event);
    while let Some(item) = incoming.next().await {
        match item {
            Incoming::Owner(true) => {
                let (now, event) = announce(connection).await;
                connected = now;
                events.emit(event);
            }
            Incoming::Owner(false) => {
                if connected {
                    connected = false;
                    events.emit(HostEvent::Disconnected(
                        ConnectionError::NotRunning.to_string(),
                    ));
                }
            }
            Incoming::Signal(message) => {
                if let Some(event) = host_event(&message) {
                    if events.send(event).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The snapshot as an event, and whether hangard answered.
async fn announce(connection: &Connection) -> (bool, HostEvent) {
    match snapshot(connection).await {
        Ok(vms) => (
            true,
            HostEvent::Connected {
                connection: connection.clone(),
                capabilities: capabilities(connection).await,
                vms,
            },
        ),
        Err(err) => (
            false,
            HostEvent::Disconnected(match err {
                zbus::Error::MethodError(..) => ConnectionError::NotRunning.to_string(),
                other => other.to_string(),
            }),
        ),
    }
}

/// The VM change a signal from hangard means, if any.
fn host_event(message: &zbus::Message) -> Option<HostEvent> {
    let header = message.header();
    let member = header.member()?.as_str().to_string();
    let interface = header.interface()?.as_str().to_string();
    let path = header.path()?.as_str().to_string();
    match (interface.as_str(), member.as_str()) {
        ("org.freedesktop.DBus.ObjectManager", "InterfacesAdded") => {
            let (object, interfaces): (OwnedObjectPath, Interfaces) =
                message.body().deserialize().ok()?;
            let properties = interfaces.get(VM_INTERFACE)?;
            let mut vm = VmInfo::new(object.as_str());
            vm.apply(properties);
            Some(HostEvent::VmAdded(vm))
        }
        ("org.freedesktop.DBus.ObjectManager", "InterfacesRemoved") => {
            let (object, interfaces): (OwnedObjectPath, Vec<String>) =
                message.body().deserialize().ok()?;
            interfaces
                .iter()
                .any(|i| i == VM_INTERFACE)
                .then(|| HostEvent::VmRemoved(object.to_string()))
        }
        ("org.freedesktop.DBus.Properties", "PropertiesChanged")
            if path.starts_with(VM_PATH_PREFIX) =>
        {
            let (iface, properties, _invalidated): (
                String,
                HashMap<String, OwnedValue>,
                Vec<String>,
            ) = message.body().deserialize().ok()?;
            (iface == VM_INTERFACE).then_some(HostEvent::VmChanged { path, properties })
        }
        _ => None,
    }
}

/// The lifecycle actions of a VM, with libvirt's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Suspend,
    Resume,
    Shutdown,
    Reboot,
    Destroy,
}

async fn vm_proxy<'a>(connection: &Connection, path: &'a str) -> zbus::Result<VmProxy<'a>> {
    VmProxy::builder(connection).path(path)?.build().await
}

pub async fn vm_action(
    connection: Connection,
    path: String,
    action: VmAction,
) -> Result<(), String> {
    let vm = vm_proxy(&connection, &path)
        .await
        .map_err(|e| describe(&e))?;
    let result = match action {
        VmAction::Start => vm.start().await,
        VmAction::Suspend => vm.suspend().await,
        VmAction::Resume => vm.resume().await,
        VmAction::Shutdown => vm.shutdown().await,
        VmAction::Reboot => vm.reboot().await,
        VmAction::Destroy => vm.destroy().await,
    };
    result.map_err(|e| describe(&e))
}

/// Deletes a VM, and with it the volumes chosen (its disks that no other VM uses).
pub async fn delete_vm(
    connection: Connection,
    path: String,
    volumes: Vec<String>,
) -> Result<(), String> {
    let vm = vm_proxy(&connection, &path)
        .await
        .map_err(|e| describe(&e))?;
    vm.undefine(false).await.map_err(|e| describe(&e))?;
    let manager = ManagerProxy::new(&connection)
        .await
        .map_err(|e| describe(&e))?;
    let mut failures = Vec::new();
    for volume in volumes {
        if let Err(err) = manager.delete_volume(&volume).await {
            failures.push(format!("{volume}: {}", describe(&err)));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Defines the sample VM from the guest kit.
pub async fn add_sample(connection: Connection) -> Result<(), String> {
    let cache = hangar_engine::host::inventory::guest_cache_dir();
    let manager = ManagerProxy::new(&connection)
        .await
        .map_err(|e| describe(&e))?;
    manager
        .sample(&cache.display().to_string())
        .await
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Sets how often hangard samples running VMs.
pub async fn set_stats_interval(connection: &Connection, ms: u32) -> Result<(), String> {
    let manager = ManagerProxy::new(connection)
        .await
        .map_err(|e| describe(&e))?;
    manager
        .set_stats_interval(ms)
        .await
        .map_err(|e| describe(&e))
}

pub async fn stats_history(connection: &Connection, path: &str) -> Vec<Sample> {
    match vm_proxy(connection, path).await {
        Ok(vm) => vm.get_stats_history().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

pub async fn definition(connection: &Connection, path: &str) -> Result<String, String> {
    let vm = vm_proxy(connection, path).await.map_err(|e| describe(&e))?;
    vm.get_definition().await.map_err(|e| describe(&e))
}

pub async fn open_serial(
    connection: &Connection,
    path: &str,
) -> Result<std::os::fd::OwnedFd, String> {
    let vm = vm_proxy(connection, path).await.map_err(|e| describe(&e))?;
    vm.open_serial()
        .await
        .map(Into::into)
        .map_err(|e| describe(&e))
}

pub async fn open_display(
    connection: &Connection,
    path: &str,
) -> Result<std::os::fd::OwnedFd, String> {
    let vm = vm_proxy(connection, path).await.map_err(|e| describe(&e))?;
    vm.open_display()
        .await
        .map(Into::into)
        .map_err(|e| describe(&e))
}

/// The object path of the VM called `name`.
pub async fn lookup(connection: &Connection, name: &str) -> Result<String, String> {
    let manager = ManagerProxy::new(connection)
        .await
        .map_err(|e| describe(&e))?;
    manager
        .lookup_by_name(name)
        .await
        .map(|p| p.to_string())
        .map_err(|e| describe(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Value;

    fn owned(value: Value<'_>) -> OwnedValue {
        value.try_into_owned().unwrap()
    }

    #[test]
    fn properties_fill_the_vm() {
        let mut vm = VmInfo::new("/dev/hangar/vm/x");
        let mut properties = HashMap::new();
        properties.insert("Name".to_string(), owned(Value::from("alpine")));
        properties.insert("State".to_string(), owned(Value::from("running")));
        properties.insert("Vcpus".to_string(), owned(Value::from(2u32)));
        properties.insert("Memory".to_string(), owned(Value::from(64u64 << 20)));
        properties.insert(
            "Disks".to_string(),
            owned(Value::from(vec![("root".to_string(), false)])),
        );
        // Mistyped and unknown properties are left alone.
        properties.insert("Autostart".to_string(), owned(Value::from("yes")));
        properties.insert("Future".to_string(), owned(Value::from(1u8)));
        vm.apply(&properties);
        assert_eq!(vm.name, "alpine");
        assert_eq!(vm.state, "running");
        assert_eq!(vm.vcpus, 2);
        assert_eq!(vm.memory, 64 << 20);
        assert_eq!(vm.disks, [("root".to_string(), false)]);
        assert!(!vm.autostart);
        assert!(vm.is_active());
    }
}
