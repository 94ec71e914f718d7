//! The D-Bus face of the inventory: `dev.hangar.Manager1` and one `dev.hangar.Vm1` per VM.
//!
//! Methods that wait (for qemu-img, for a worker) run on the `blocking` thread pool so that the
//! bus keeps serving other clients meanwhile. Every method checks with the inventory, so a call
//! on an object whose VM just went away fails with `NotFound` rather than acting on stale data.

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedFd, OwnedObjectPath};
use zbus::{Connection, ObjectServer};

use crate::host::api::{
    vm_path, HangarError, NicEntry, VmListEntry, VolumeEntry, API_VERSION, MANAGER_PATH,
};
use crate::host::definition::Uuid;
use crate::host::inventory::{HostError, HostEvent, Inventory};
use crate::host::stats::Sample;

/// Runs `work` off the bus's executor and converts its error.
async fn off_bus<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HostError> + Send + 'static,
) -> Result<T, HangarError> {
    blocking::unblock(work).await.map_err(HangarError::from)
}

/// `dev.hangar.Manager1` at `/dev/hangar/Hangar`.
pub struct ManagerObject {
    inventory: Arc<Inventory>,
}

impl ManagerObject {
    pub fn new(inventory: Arc<Inventory>) -> ManagerObject {
        ManagerObject { inventory }
    }

    async fn announce(
        &self,
        server: &ObjectServer,
        emitter: &SignalEmitter<'_>,
        uuid: Uuid,
    ) -> Result<OwnedObjectPath, HangarError> {
        let path = vm_path(&uuid);
        server
            .at(&path, VmObject::new(uuid, self.inventory.clone()))
            .await?;
        Self::vm_added(emitter, path.as_ref()).await?;
        Ok(path)
    }
}

#[zbus::interface(name = "dev.hangar.Manager1")]
impl ManagerObject {
    /// Defines a VM from a JSON definition; returns its object path.
    async fn define(
        &self,
        json: String,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, HangarError> {
        let inventory = self.inventory.clone();
        let uuid = off_bus(move || inventory.define(&json)).await?;
        self.announce(server, &emitter, uuid).await
    }

    /// Every VM with the properties a list shows, in one call.
    fn list_vms(&self) -> Vec<VmListEntry> {
        self.inventory
            .list()
            .into_iter()
            .map(|vm| VmListEntry {
                path: vm_path(&vm.uuid),
                uuid: vm.uuid.to_string(),
                name: vm.name,
                state: vm.state.as_str().to_string(),
                vcpus: vm.vcpus,
                memory: vm.memory,
                autostart: vm.autostart,
                generation: vm.generation,
            })
            .collect()
    }

    fn lookup_by_name(&self, name: &str) -> Result<OwnedObjectPath, HangarError> {
        Ok(vm_path(&self.inventory.lookup(name)?))
    }

    /// Creates an empty volume of `size` bytes, format qcow2 or raw.
    async fn create_volume(
        &self,
        name: String,
        size: u64,
        format: String,
    ) -> Result<VolumeEntry, HangarError> {
        let inventory = self.inventory.clone();
        off_bus(move || inventory.create_volume(&name, size, &format))
            .await
            .map(VolumeEntry::from)
    }

    /// Copies an image file into the pool, converting it to `format`.
    async fn import_volume(
        &self,
        name: String,
        source: String,
        format: String,
    ) -> Result<VolumeEntry, HangarError> {
        let inventory = self.inventory.clone();
        off_bus(move || inventory.import_volume(&name, &PathBuf::from(source), &format))
            .await
            .map(VolumeEntry::from)
    }

    async fn resize_volume(&self, name: String, size: u64) -> Result<VolumeEntry, HangarError> {
        let inventory = self.inventory.clone();
        off_bus(move || inventory.resize_volume(&name, size))
            .await
            .map(VolumeEntry::from)
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeEntry>, HangarError> {
        let inventory = self.inventory.clone();
        let volumes = off_bus(move || inventory.volumes()).await?;
        Ok(volumes.into_iter().map(VolumeEntry::from).collect())
    }

    /// Deletes a volume that no defined VM uses.
    async fn delete_volume(&self, name: String) -> Result<(), HangarError> {
        let inventory = self.inventory.clone();
        off_bus(move || inventory.delete_volume(&name)).await
    }

    /// Defines the sample VM "debian-tiny" from the guest kit in `guest_cache`.
    async fn sample(
        &self,
        guest_cache: String,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<OwnedObjectPath, HangarError> {
        let inventory = self.inventory.clone();
        let uuid = off_bus(move || inventory.define_sample(&PathBuf::from(guest_cache))).await?;
        self.announce(server, &emitter, uuid).await
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn api_version(&self) -> u32 {
        API_VERSION
    }

    /// Host capabilities as JSON: kvm_usable, kvm_problem, acceleration (hardware, emulated,
    /// none), kvm_modules, host_cpus, host_memory_bytes, passt, qemu_img.
    #[zbus(property(emits_changed_signal = "const"))]
    fn capabilities(&self) -> String {
        self.inventory.capabilities().to_json()
    }

    /// Milliseconds between stats samples.
    #[zbus(property)]
    fn stats_interval(&self) -> u32 {
        self.inventory.stats_interval().as_millis() as u32
    }

    #[zbus(property)]
    fn set_stats_interval(&mut self, ms: u32) {
        self.inventory
            .set_stats_interval(std::time::Duration::from_millis(u64::from(ms)));
    }

    #[zbus(signal)]
    async fn vm_added(emitter: &SignalEmitter<'_>, path: ObjectPath<'_>) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn vm_removed(emitter: &SignalEmitter<'_>, path: ObjectPath<'_>) -> zbus::Result<()>;
}

/// `dev.hangar.Vm1` at `/dev/hangar/vm/<uuid with _>`.
pub struct VmObject {
    uuid: Uuid,
    inventory: Arc<Inventory>,
}

impl VmObject {
    pub fn new(uuid: Uuid, inventory: Arc<Inventory>) -> VmObject {
        VmObject { uuid, inventory }
    }

    async fn act(
        &self,
        action: impl FnOnce(&Inventory, &Uuid) -> Result<(), HostError> + Send + 'static,
    ) -> Result<(), HangarError> {
        let inventory = self.inventory.clone();
        let uuid = self.uuid;
        off_bus(move || action(&inventory, &uuid)).await
    }

    fn definition(&self) -> zbus::fdo::Result<crate::host::definition::VmDefinition> {
        self.inventory
            .definition(&self.uuid)
            .map_err(|err| zbus::fdo::Error::UnknownObject(err.to_string()))
    }
}

#[zbus::interface(name = "dev.hangar.Vm1")]
impl VmObject {
    /// Starts the VM; returns once its worker runs.
    async fn start(&self) -> Result<(), HangarError> {
        self.act(Inventory::start).await
    }

    /// Presses the ACPI power button; the guest shuts down in its own time.
    async fn shutdown(&self) -> Result<(), HangarError> {
        self.act(Inventory::shutdown).await
    }

    /// Stops the VM at once; returns once its worker is gone.
    async fn destroy(&self) -> Result<(), HangarError> {
        self.act(Inventory::destroy).await
    }

    /// Hard reset: the guest boots again.
    async fn reboot(&self) -> Result<(), HangarError> {
        self.act(Inventory::reboot).await
    }

    async fn suspend(&self) -> Result<(), HangarError> {
        self.act(Inventory::suspend).await
    }

    async fn resume(&self) -> Result<(), HangarError> {
        self.act(Inventory::resume).await
    }

    /// Forgets the VM; with `remove_storage` its volumes are deleted too.
    async fn undefine(
        &self,
        remove_storage: bool,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), HangarError> {
        self.act(move |inventory, uuid| inventory.undefine(uuid, remove_storage))
            .await?;
        let path = vm_path(&self.uuid);
        // Unregistering this object waits for its running calls, this one included: leave it
        // to a task of its own.
        let connection = connection.clone();
        let task_path = path.clone();
        let _ = std::thread::Builder::new()
            .name("unregister".into())
            .spawn(move || {
                zbus::block_on(async move {
                    let _ = connection
                        .object_server()
                        .remove::<VmObject, _>(&task_path)
                        .await;
                    if let Ok(emitter) = SignalEmitter::new(&connection, MANAGER_PATH) {
                        let _ = ManagerObject::vm_removed(&emitter, task_path.as_ref()).await;
                    }
                })
            });
        Ok(())
    }

    /// Replaces the definition if it is still at `expected_generation`; returns the new one.
    async fn update_definition(
        &self,
        json: String,
        expected_generation: u64,
    ) -> Result<u64, HangarError> {
        let inventory = self.inventory.clone();
        let uuid = self.uuid;
        off_bus(move || inventory.update(&uuid, &json, expected_generation)).await
    }

    /// The definition as JSON.
    fn get_definition(&self) -> Result<String, HangarError> {
        Ok(self.inventory.definition(&self.uuid)?.to_json())
    }

    /// A Unix socket connected straight to the worker's serial console: the backlog first, then
    /// live output; what is written goes to the guest's COM1.
    fn open_serial(&self) -> Result<OwnedFd, HangarError> {
        let stream = self.inventory.open_serial(&self.uuid)?;
        Ok(OwnedFd::from(std::os::fd::OwnedFd::from(stream)))
    }

    /// A Unix socket connected straight to the worker's display stream: a `framebuffer` line
    /// with the memfd attached, then `damage` lines; key and pointer lines go back (see the
    /// README's display protocol).
    fn open_display(&self) -> Result<OwnedFd, HangarError> {
        let stream = self.inventory.open_display(&self.uuid)?;
        Ok(OwnedFd::from(std::os::fd::OwnedFd::from(stream)))
    }

    /// The latest stats sample.
    fn get_stats(&self) -> Result<Sample, HangarError> {
        Ok(self.inventory.stats(&self.uuid)?)
    }

    /// Every kept sample, oldest first.
    fn get_stats_history(&self) -> Result<Vec<Sample>, HangarError> {
        Ok(self.inventory.stats_history(&self.uuid)?)
    }

    /// The worker's log (its stderr and hangard's notes), for diagnosing a crash.
    fn get_worker_log(&self) -> String {
        self.inventory.worker_log(&self.uuid)
    }

    #[zbus(property)]
    fn name(&self) -> zbus::fdo::Result<String> {
        Ok(self.definition()?.name)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn uuid(&self) -> String {
        self.uuid.to_string()
    }

    /// running, paused, shutoff or crashed.
    #[zbus(property)]
    fn state(&self) -> String {
        self.inventory.state(&self.uuid).0.as_str().to_string()
    }

    /// Why the VM is in its state; for `crashed`, what happened and the worker's last log lines.
    #[zbus(property)]
    fn state_reason(&self) -> String {
        self.inventory.state(&self.uuid).1
    }

    #[zbus(property)]
    fn vcpus(&self) -> zbus::fdo::Result<u32> {
        Ok(self.definition()?.vcpus)
    }

    /// Guest RAM in bytes.
    #[zbus(property)]
    fn memory(&self) -> zbus::fdo::Result<u64> {
        Ok(self.definition()?.memory.0)
    }

    /// (volume, readonly) per disk.
    #[zbus(property)]
    fn disks(&self) -> zbus::fdo::Result<Vec<(String, bool)>> {
        Ok(self
            .definition()?
            .disks
            .into_iter()
            .map(|d| (d.volume, d.readonly))
            .collect())
    }

    /// (mode, [(protocol, host port, guest port)]) per NIC.
    #[zbus(property)]
    fn nics(&self) -> zbus::fdo::Result<Vec<NicEntry>> {
        Ok(self
            .definition()?
            .nics
            .into_iter()
            .map(|nic| {
                let forwards = nic
                    .forwards
                    .iter()
                    .map(|f| (f.protocol.as_str().to_string(), f.host, f.guest))
                    .collect();
                (nic.mode.as_str().to_string(), forwards)
            })
            .collect())
    }

    /// framebuffer or none.
    #[zbus(property)]
    fn display(&self) -> zbus::fdo::Result<String> {
        Ok(self.definition()?.display.as_str().to_string())
    }

    #[zbus(property)]
    fn autostart(&self) -> zbus::fdo::Result<bool> {
        Ok(self.definition()?.autostart)
    }

    #[zbus(property)]
    fn generation(&self) -> zbus::fdo::Result<u64> {
        Ok(self.definition()?.generation)
    }

    #[zbus(signal, name = "StateChanged")]
    async fn vm_state_changed(
        emitter: &SignalEmitter<'_>,
        state: &str,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn definition_changed(emitter: &SignalEmitter<'_>, generation: u64) -> zbus::Result<()>;
}

/// Turns inventory events into signals and property notifications, until the inventory goes.
pub fn forward_events(connection: Connection, events: Receiver<HostEvent>) {
    for event in events {
        zbus::block_on(async {
            let _ = publish(&connection, event).await;
        });
    }
}

async fn publish(connection: &Connection, event: HostEvent) -> zbus::Result<()> {
    let uuid = match &event {
        HostEvent::StateChanged { uuid, .. } | HostEvent::DefinitionChanged { uuid, .. } => *uuid,
    };
    let iface = connection
        .object_server()
        .interface::<_, VmObject>(vm_path(&uuid))
        .await?;
    let emitter = iface.signal_emitter();
    let object = iface.get().await;
    match event {
        HostEvent::StateChanged { state, reason, .. } => {
            object.state_changed(emitter).await?;
            object.state_reason_changed(emitter).await?;
            VmObject::vm_state_changed(emitter, state.as_str(), &reason).await?;
        }
        HostEvent::DefinitionChanged { generation, .. } => {
            object.name_changed(emitter).await?;
            object.vcpus_changed(emitter).await?;
            object.memory_changed(emitter).await?;
            object.disks_changed(emitter).await?;
            object.nics_changed(emitter).await?;
            object.display_changed(emitter).await?;
            object.autostart_changed(emitter).await?;
            object.generation_changed(emitter).await?;
            VmObject::definition_changed(emitter, generation).await?;
        }
    }
    Ok(())
}
