//! The hardware editor's widgets: the Details page of a VM's window. The rows edit a draft of
//! the definition while the VM is shut off (or crashed); Apply sends it to hangard with the
//! generation it was loaded from, Revert loads the definition again. hangard's refusals are
//! shown under the row of the field they name.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use adw::prelude::*;
use gettextrs::gettext;
use hangar_engine::config::DisplaySize;
use hangar_engine::host::api::VolumeEntry;
use hangar_engine::host::definition::{DisplayKind, NicMode, PortForward, Protocol};
use relm4::prelude::*;
use zbus::Connection;

use crate::connection::VmInfo;
use crate::hardware::hangard::{self, ApplyError, Refusal, Snapshot};
use crate::hardware::model::{
    format_size, offered_vcpus, refusal_target, DiskOrigin, Editor, FieldKey, HostLimits,
    ModelError, RESOLUTION_PRESETS,
};
use crate::widgets::field_error::FieldError;

pub struct HardwareInit {
    pub connection: Option<Connection>,
    pub info: VmInfo,
    /// The window's own rows (name, UUID, state), shown first on the page.
    pub general: adw::PreferencesGroup,
}

/// Which file a chooser picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootFile {
    Kernel,
    Initrd,
}

#[derive(Debug)]
pub enum HardwareMsg {
    Info(VmInfo),
    Connection(Option<Connection>),
    Vcpus(u32),
    Memory(String),
    Kernel(String),
    Initrd(String),
    Cmdline(String),
    Choose(BootFile),
    Display(DisplayKind),
    Resolution(u32),
    Keyboard(bool),
    Tablet(bool),
    ShowAddDisk,
    AddNewDisk { name: String, size: String },
    AddExistingDisk(String),
    ShowGrow(usize),
    GrowDisk(usize, String),
    RemoveDisk(usize),
    AddNic,
    RemoveNic(usize),
    AddForward(usize),
    Forward(usize, usize, PortForward),
    RemoveForward(usize, usize),
    Apply,
    Revert,
}

#[derive(Debug)]
pub enum HardwareCmd {
    Loaded(Result<Snapshot, Refusal>),
    Applied(Result<u64, ApplyError>),
}

/// The line above the rows: a failure that belongs to no row, or a conflict.
struct Notice {
    text: String,
    /// Someone else changed the VM: the line offers Revert.
    conflict: bool,
}

pub struct HardwarePage {
    connection: Option<Connection>,
    info: VmInfo,
    editor: Editor,
    pool: Vec<VolumeEntry>,
    host: Option<HostLimits>,
    /// A load or an Apply is under way.
    busy: bool,
    /// hangard's refusals, by the row they belong to.
    errors: BTreeMap<FieldKey, String>,
    /// Refusals to show once the reload after an Apply has rebuilt the rows.
    pending_errors: BTreeMap<FieldKey, String>,
    notice: Option<Notice>,
    /// Kept while it is open: a native dialog lives only as long as its last reference.
    chooser: Option<gtk::FileChooserNative>,
    /// For the rows built later (disks, NICs, forwards) to send their edits.
    input: relm4::Sender<HardwareMsg>,
    ui: Ui,
}

/// The rows a list (disks, NICs) is rebuilt into, and their error lines by field.
#[derive(Default)]
struct ListRows {
    rows: Vec<gtk::Widget>,
    errors: Vec<(FieldKey, FieldError)>,
}

impl ListRows {
    fn clear(&mut self, group: &adw::PreferencesGroup) {
        for row in self.rows.drain(..) {
            group.remove(&row);
        }
        self.errors.clear();
    }
}

struct Ui {
    root: gtk::Box,
    notice: adw::ActionRow,
    notice_group: adw::PreferencesGroup,
    notice_revert: gtk::Button,
    editable: Vec<adw::PreferencesGroup>,
    hardware: adw::PreferencesGroup,
    vcpus: gtk::SpinButton,
    memory: adw::EntryRow,
    kernel: adw::EntryRow,
    initrd: adw::EntryRow,
    cmdline: adw::EntryRow,
    disks: adw::PreferencesGroup,
    disk_rows: ListRows,
    network: adw::PreferencesGroup,
    nic_rows: ListRows,
    display: adw::ComboRow,
    resolution: adw::ComboRow,
    /// The sizes the resolution row lists, in order: the presets, and the VM's own size when
    /// it is none of them.
    resolutions: Vec<DisplaySize>,
    keyboard: gtk::Switch,
    tablet: gtk::Switch,
    errors: Vec<(FieldKey, FieldError)>,
    apply: gtk::Button,
    revert: gtk::Button,
    /// Set while the page writes the draft into its widgets, so that their change signals
    /// are not taken for edits.
    syncing: Rc<Cell<bool>>,
}

impl Component for HardwarePage {
    type CommandOutput = HardwareCmd;
    type Input = HardwareMsg;
    type Output = ();
    type Init = HardwareInit;
    type Root = gtk::Box;
    type Widgets = ();

    fn init_root() -> Self::Root {
        gtk::Box::new(gtk::Orientation::Vertical, 0)
    }

    fn init(
        init: Self::Init,
        root: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let ui = build_ui(&root, &init.general, &sender);
        let mut model = HardwarePage {
            connection: init.connection,
            info: init.info,
            editor: Editor::default(),
            pool: Vec::new(),
            host: None,
            busy: false,
            errors: BTreeMap::new(),
            pending_errors: BTreeMap::new(),
            notice: None,
            chooser: None,
            input: sender.input_sender().clone(),
            ui,
        };
        model.load(&sender);
        model.refresh();
        ComponentParts { model, widgets: () }
    }

    fn update(&mut self, message: Self::Input, sender: ComponentSender<Self>, _root: &Self::Root) {
        match message {
            HardwareMsg::Info(info) => {
                let newer = self
                    .editor
                    .generation()
                    .is_some_and(|loaded| info.generation > loaded);
                self.info = info;
                if newer && !self.busy {
                    if self.editor.has_changes() {
                        self.notice = Some(Notice {
                            text: gettext(
                                "Someone else changed this VM's definition while you were editing it. Revert to load their version.",
                            ),
                            conflict: true,
                        });
                    } else {
                        self.load(&sender);
                    }
                }
            }
            HardwareMsg::Connection(connection) => {
                let back = connection.is_some();
                self.connection = connection;
                if back && !self.editor.has_changes() {
                    self.load(&sender);
                }
            }
            HardwareMsg::Vcpus(vcpus) => {
                self.edit(FieldKey::Vcpus, |e| e.edit(|d| d.vcpus = vcpus))
            }
            HardwareMsg::Memory(text) => {
                let host = self.host;
                self.edit(FieldKey::Memory, |e| e.set_memory_text(&text, host));
            }
            HardwareMsg::Kernel(text) => {
                self.edit(FieldKey::Kernel, |e| e.edit(|d| d.kernel = text))
            }
            HardwareMsg::Initrd(text) => {
                self.edit(FieldKey::Initrd, |e| e.edit(|d| d.initrd = text))
            }
            HardwareMsg::Cmdline(text) => {
                self.edit(FieldKey::Cmdline, |e| e.edit(|d| d.cmdline = text))
            }
            HardwareMsg::Choose(file) => self.choose(file),
            HardwareMsg::Display(kind) => {
                self.edit(FieldKey::Display, |e| e.edit(|d| d.display = kind))
            }
            HardwareMsg::Resolution(index) => {
                if let Some(size) = self.ui.resolutions.get(index as usize).copied() {
                    self.edit(FieldKey::Resolution, |e| e.edit(|d| d.resolution = size));
                }
            }
            HardwareMsg::Keyboard(on) => {
                self.edit(FieldKey::Input, |e| e.edit(|d| d.keyboard = on))
            }
            HardwareMsg::Tablet(on) => self.edit(FieldKey::Input, |e| e.edit(|d| d.tablet = on)),
            HardwareMsg::ShowAddDisk => self.show_add_disk(&sender),
            HardwareMsg::AddNewDisk { name, size } => {
                let pool = self.pool.clone();
                self.structural(|e| e.add_new_disk(&name, &size, &pool));
            }
            HardwareMsg::AddExistingDisk(name) => {
                if let Some(volume) = self.pool.iter().find(|v| v.name == name).cloned() {
                    self.structural(|e| e.add_existing_disk(&volume));
                }
            }
            HardwareMsg::ShowGrow(index) => self.show_grow(&sender, index),
            HardwareMsg::GrowDisk(index, size) => self.structural(|e| e.grow_disk(index, &size)),
            HardwareMsg::RemoveDisk(index) => self.structural(|e| {
                e.remove_disk(index);
                Ok(())
            }),
            HardwareMsg::AddNic => self.structural(|e| {
                e.add_nic();
                Ok(())
            }),
            HardwareMsg::RemoveNic(index) => self.structural(|e| {
                e.remove_nic(index);
                Ok(())
            }),
            HardwareMsg::AddForward(nic) => self.structural(|e| {
                e.add_forward(nic);
                Ok(())
            }),
            HardwareMsg::RemoveForward(nic, index) => self.structural(|e| {
                e.remove_forward(nic, index);
                Ok(())
            }),
            HardwareMsg::Forward(nic, index, forward) => self
                .edit(FieldKey::Forward(nic, index), |e| {
                    e.set_forward(nic, index, forward)
                }),
            HardwareMsg::Apply => self.apply(&sender),
            HardwareMsg::Revert => {
                // The draft goes at once; the definition is read again, since someone else
                // may have changed it.
                self.editor.revert();
                self.errors.clear();
                self.notice = None;
                self.sync_widgets();
                self.load(&sender);
            }
        }
        self.refresh();
    }

    fn update_cmd(
        &mut self,
        message: Self::CommandOutput,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            HardwareCmd::Loaded(Ok(snapshot)) => {
                self.busy = false;
                self.pool = snapshot.volumes;
                self.host = snapshot.host;
                match self.editor.load(&snapshot.definition, &self.pool) {
                    Ok(()) => {
                        if self.notice.as_ref().is_some_and(|n| n.conflict) {
                            self.notice = None;
                        }
                    }
                    Err(err) => {
                        self.notice = Some(Notice {
                            text: err.to_string(),
                            conflict: false,
                        })
                    }
                }
                self.errors = std::mem::take(&mut self.pending_errors);
                self.sync_widgets();
            }
            HardwareCmd::Loaded(Err(refusal)) => {
                self.busy = false;
                self.notice = Some(Notice {
                    text: gettext("Could not read the VM's definition: {error}")
                        .replace("{error}", &refusal.message),
                    conflict: false,
                });
            }
            HardwareCmd::Applied(result) => {
                self.busy = false;
                self.applied(result, &sender);
            }
        }
        self.refresh();
    }
}

impl HardwarePage {
    /// Whether the rows take edits now.
    fn editable(&self) -> bool {
        matches!(self.info.state.as_str(), "shutoff" | "crashed")
            && self.connection.is_some()
            && self.editor.is_loaded()
            && !self.busy
    }

    fn load(&mut self, sender: &ComponentSender<Self>) {
        let Some(connection) = self.connection.clone() else {
            return;
        };
        self.busy = true;
        let path = self.info.path.clone();
        sender.oneshot_command(async move {
            HardwareCmd::Loaded(hangard::load(&connection, &path).await)
        });
    }

    /// An edit of one field: its old refusal no longer applies.
    fn edit(&mut self, field: FieldKey, change: impl FnOnce(&mut Editor)) {
        change(&mut self.editor);
        self.errors.remove(&field);
    }

    /// An edit that adds or removes rows: the lists are rebuilt, and refusals by index no
    /// longer point at the same rows.
    fn structural(&mut self, change: impl FnOnce(&mut Editor) -> Result<(), ModelError>) {
        if let Err(err) = change(&mut self.editor) {
            self.notice = Some(Notice {
                text: err.to_string(),
                conflict: false,
            });
        }
        self.errors.retain(|key, _| {
            !matches!(
                key,
                FieldKey::Disk(_) | FieldKey::Nic(_) | FieldKey::Forward(..)
            )
        });
        self.rebuild_disks();
        self.rebuild_nics();
    }

    fn apply(&mut self, sender: &ComponentSender<Self>) {
        let (Some(connection), true) = (self.connection.clone(), self.editable()) else {
            return;
        };
        let plan = match self.editor.plan() {
            Ok(plan) => plan,
            Err(err) => {
                self.notice = Some(Notice {
                    text: err.to_string(),
                    conflict: false,
                });
                return;
            }
        };
        self.busy = true;
        self.errors.clear();
        self.notice = None;
        let path = self.info.path.clone();
        sender.oneshot_command(async move {
            HardwareCmd::Applied(hangard::apply(&connection, &path, plan).await)
        });
    }

    fn applied(&mut self, result: Result<u64, ApplyError>, sender: &ComponentSender<Self>) {
        match result {
            Ok(_) => self.load(sender),
            Err(ApplyError::Connect { refusal }) => {
                self.notice = Some(Notice {
                    text: refusal.message,
                    conflict: false,
                })
            }
            Err(ApplyError::Create { index, refusal }) => {
                self.errors.insert(
                    FieldKey::Disk(index),
                    gettext("Could not create this volume: {error}")
                        .replace("{error}", &refusal.message),
                );
            }
            Err(ApplyError::Update { refusal, leftovers }) => {
                if refusal.is_conflict() {
                    self.notice = Some(Notice {
                        text: gettext(
                            "Someone else changed this VM's definition since it was loaded, so nothing was changed. Revert to load their version.",
                        ),
                        conflict: true,
                    });
                } else {
                    let (field, reason) = refusal_target(&refusal.message);
                    if field == FieldKey::General {
                        self.notice = Some(Notice {
                            text: reason,
                            conflict: false,
                        });
                    } else {
                        self.errors.insert(field, reason);
                    }
                }
                if !leftovers.is_empty() {
                    let text = gettext("Could not delete the new volumes again: {volumes}")
                        .replace("{volumes}", &leftovers.join("; "));
                    self.notice = Some(Notice {
                        text: match self.notice.take() {
                            Some(notice) => format!("{}\n{text}", notice.text),
                            None => text,
                        },
                        conflict: false,
                    });
                }
            }
            Err(ApplyError::Grow { index, refusal, .. }) => {
                // The definition is stored: show it, with the disk that did not grow.
                self.pending_errors.insert(
                    FieldKey::Disk(index),
                    gettext("The changes were saved, but this volume could not grow: {error}")
                        .replace("{error}", &refusal.message),
                );
                self.load(sender);
            }
        }
    }

    /// Sensitivity, the error lines and the notice, from the state of things.
    fn refresh(&self) {
        let editable = self.editable();
        let active = matches!(self.info.state.as_str(), "running" | "paused");
        for group in &self.ui.editable {
            group.set_sensitive(editable);
        }
        self.ui.hardware.set_description(Some(&if active {
            gettext("Shut the VM down to change its hardware.")
        } else if self.connection.is_none() {
            gettext("Not connected to hangard.")
        } else {
            String::new()
        }));
        self.ui
            .apply
            .set_sensitive(editable && self.editor.can_apply());
        self.ui
            .revert
            .set_sensitive(!self.busy && self.editor.has_changes());
        let problem = |key: &FieldKey| {
            self.errors
                .get(key)
                .or_else(|| self.editor.invalid().get(key))
        };
        for (key, slot) in self
            .ui
            .errors
            .iter()
            .chain(&self.ui.disk_rows.errors)
            .chain(&self.ui.nic_rows.errors)
        {
            slot.show(problem(key).map(String::as_str));
        }
        match &self.notice {
            Some(notice) => {
                self.ui.notice.set_title(&notice.text);
                self.ui.notice_revert.set_visible(notice.conflict);
                self.ui.notice_group.set_visible(true);
            }
            None => self.ui.notice_group.set_visible(false),
        }
        let framebuffer = self
            .editor
            .draft()
            .is_none_or(|d| d.display == DisplayKind::Framebuffer);
        self.ui.resolution.set_sensitive(framebuffer);
        self.ui.keyboard.set_sensitive(framebuffer);
        self.ui.tablet.set_sensitive(framebuffer);
    }

    /// Writes the draft into every widget.
    fn sync_widgets(&mut self) {
        let Some(draft) = self.editor.draft().cloned() else {
            return;
        };
        let ui = &mut self.ui;
        ui.syncing.set(true);
        let max = self
            .host
            .map_or(u32::from(hangar_engine::config::MAX_VCPUS), |h| {
                offered_vcpus(&h, draft.vcpus)
            });
        ui.vcpus.set_range(1.0, f64::from(max));
        ui.vcpus.set_value(f64::from(draft.vcpus));
        ui.memory.set_text(&format_size(draft.memory));
        ui.kernel.set_text(&draft.kernel);
        ui.initrd.set_text(&draft.initrd);
        ui.cmdline.set_text(&draft.cmdline);
        ui.display.set_selected(match draft.display {
            DisplayKind::Framebuffer => 0,
            DisplayKind::None => 1,
        });
        let mut sizes = RESOLUTION_PRESETS.to_vec();
        if !sizes.contains(&draft.resolution) {
            sizes.push(draft.resolution);
        }
        if sizes != ui.resolutions {
            let names: Vec<String> = sizes.iter().map(ToString::to_string).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            ui.resolution.set_model(Some(&gtk::StringList::new(&names)));
            ui.resolutions = sizes;
        }
        let selected = ui
            .resolutions
            .iter()
            .position(|s| *s == draft.resolution)
            .unwrap_or(0);
        ui.resolution.set_selected(selected as u32);
        ui.keyboard.set_active(draft.keyboard);
        ui.tablet.set_active(draft.tablet);
        ui.syncing.set(false);
        self.rebuild_disks();
        self.rebuild_nics();
    }

    fn rebuild_disks(&mut self) {
        let input = self.input.clone();
        let group = self.ui.disks.clone();
        self.ui.disk_rows.clear(&group);
        let disks = self
            .editor
            .draft()
            .map(|d| d.disks.clone())
            .unwrap_or_default();
        if disks.is_empty() {
            let row = adw::ActionRow::builder()
                .title(gettext("No disks"))
                .css_classes(["dim-label"])
                .build();
            group.add(&row);
            self.ui.disk_rows.rows.push(row.upcast());
        }
        for (index, disk) in disks.iter().enumerate() {
            let mut facts = Vec::new();
            if let Some(format) = &disk.format {
                facts.push(format.clone());
            }
            if let Some(size) = disk.size {
                facts.push(format_size(size));
            }
            if disk.readonly {
                facts.push(gettext("read-only"));
            }
            match disk.origin {
                DiskOrigin::New => facts.push(gettext("new volume, created on Apply")),
                DiskOrigin::Existing => facts.push(gettext("added on Apply")),
                DiskOrigin::Attached => {}
            }
            if let Some(size) = disk.grow_to {
                facts.push(
                    gettext("grows to {size} on Apply").replace("{size}", &format_size(size)),
                );
            }
            let row = adw::ActionRow::builder()
                .title(&disk.volume)
                .subtitle(facts.join(" · "))
                .build();
            let grow = gtk::Button::builder()
                .label(gettext("Grow…"))
                .valign(gtk::Align::Center)
                .tooltip_text(gettext("Make this volume larger"))
                .build();
            grow.update_property(&[gtk::accessible::Property::Label(
                &gettext("Grow {volume}").replace("{volume}", &disk.volume),
            )]);
            {
                let input = input.clone();
                grow.connect_clicked(move |_| input.emit(HardwareMsg::ShowGrow(index)));
            }
            let remove = remove_button(
                &gettext("Remove disk {volume} (the volume stays in the pool)")
                    .replace("{volume}", &disk.volume),
            );
            {
                let input = input.clone();
                remove.connect_clicked(move |_| input.emit(HardwareMsg::RemoveDisk(index)));
            }
            row.add_suffix(&grow);
            row.add_suffix(&remove);
            group.add(&row);
            let slot = FieldError::new();
            group.add(&slot.row);
            self.ui.disk_rows.rows.push(row.upcast());
            self.ui.disk_rows.rows.push(slot.row.clone().upcast());
            self.ui.disk_rows.errors.push((FieldKey::Disk(index), slot));
        }
    }

    fn rebuild_nics(&mut self) {
        let input = self.input.clone();
        let group = self.ui.network.clone();
        self.ui.nic_rows.clear(&group);
        let nics = self
            .editor
            .draft()
            .map(|d| d.nics.clone())
            .unwrap_or_default();
        if nics.is_empty() {
            let row = adw::ActionRow::builder()
                .title(gettext("No network cards"))
                .css_classes(["dim-label"])
                .build();
            group.add(&row);
            self.ui.nic_rows.rows.push(row.upcast());
        }
        let syncing = self.ui.syncing.clone();
        for (nic_index, nic) in nics.iter().enumerate() {
            let title = gettext("Network card {n}").replace("{n}", &(nic_index + 1).to_string());
            let expander = adw::ExpanderRow::builder()
                .title(&title)
                .subtitle(match nic.mode {
                    NicMode::User => gettext("User-mode networking (passt)"),
                    NicMode::None => gettext("Not connected"),
                })
                .expanded(true)
                .build();
            let remove = remove_button(&gettext("Remove {nic}").replace("{nic}", &title));
            {
                let input = input.clone();
                remove.connect_clicked(move |_| input.emit(HardwareMsg::RemoveNic(nic_index)));
            }
            expander.add_action(&remove);
            let forwards_row = adw::ActionRow::builder()
                .title(gettext("Port forwards"))
                .subtitle(gettext(
                    "Ports of this computer (127.0.0.1) that lead into the guest",
                ))
                .build();
            if nic.mode == NicMode::User {
                let add = gtk::Button::builder()
                    .icon_name("list-add-symbolic")
                    .valign(gtk::Align::Center)
                    .tooltip_text(gettext("Add Port Forward"))
                    .css_classes(["flat"])
                    .build();
                add.update_property(&[gtk::accessible::Property::Label(&gettext(
                    "Add Port Forward",
                ))]);
                let input = input.clone();
                add.connect_clicked(move |_| input.emit(HardwareMsg::AddForward(nic_index)));
                forwards_row.add_suffix(&add);
            }
            expander.add_row(&forwards_row);
            for (index, forward) in nic.forwards.iter().enumerate() {
                let row = forward_row(&input, &syncing, nic_index, index, *forward);
                expander.add_row(&row);
                let slot = FieldError::new();
                expander.add_row(&slot.row);
                self.ui
                    .nic_rows
                    .errors
                    .push((FieldKey::Forward(nic_index, index), slot));
            }
            group.add(&expander);
            let slot = FieldError::new();
            group.add(&slot.row);
            self.ui.nic_rows.rows.push(expander.upcast());
            self.ui.nic_rows.rows.push(slot.row.clone().upcast());
            self.ui
                .nic_rows
                .errors
                .push((FieldKey::Nic(nic_index), slot));
        }
    }

    fn window(&self) -> Option<gtk::Window> {
        self.ui.root.root().and_downcast::<gtk::Window>()
    }

    fn choose(&mut self, file: BootFile) {
        let title = match file {
            BootFile::Kernel => gettext("Choose a Kernel"),
            BootFile::Initrd => gettext("Choose an Initial RAM Disk"),
        };
        let chooser = gtk::FileChooserNative::new(
            Some(&title),
            self.window().as_ref(),
            gtk::FileChooserAction::Open,
            Some(&gettext("Choose")),
            Some(&gettext("Cancel")),
        );
        let row = match file {
            BootFile::Kernel => self.ui.kernel.clone(),
            BootFile::Initrd => self.ui.initrd.clone(),
        };
        let current = std::path::PathBuf::from(row.text().as_str());
        if let Some(dir) = current.parent().filter(|d| d.is_dir()) {
            let _ = chooser.set_current_folder(Some(&gtk::gio::File::for_path(dir)));
        }
        chooser.connect_response(move |chooser, response| {
            if response == gtk::ResponseType::Accept {
                if let Some(path) = chooser.file().and_then(|f| f.path()) {
                    // The row's change signal takes it into the draft.
                    row.set_text(&path.display().to_string());
                }
            }
        });
        chooser.show();
        self.chooser = Some(chooser);
    }

    fn show_add_disk(&self, sender: &ComponentSender<Self>) {
        let check = self.editor.new_disk_check(&self.pool);
        let attachable: Vec<VolumeEntry> = self
            .editor
            .attachable(&self.pool)
            .into_iter()
            .cloned()
            .collect();
        let dialog = adw::MessageDialog::builder()
            .heading(gettext("Add Disk"))
            .title(gettext("Add Disk"))
            .body(gettext(
                "A new qcow2 volume in the storage pool, or a volume the pool has. Nothing is created or attached before Apply.",
            ))
            .modal(true)
            .build();
        if let Some(window) = self.window() {
            dialog.set_transient_for(Some(&window));
        }
        dialog.add_response("cancel", &gettext("Cancel"));
        dialog.add_response("add", &gettext("Add"));
        dialog.set_response_appearance("add", adw::ResponseAppearance::Suggested);
        dialog.set_default_response(Some("add"));
        dialog.set_close_response("cancel");

        let new_volume = gtk::ToggleButton::with_label(&gettext("New Volume"));
        let existing_volume = gtk::ToggleButton::with_label(&gettext("Existing Volume"));
        existing_volume.set_group(Some(&new_volume));
        new_volume.set_active(true);
        existing_volume.set_sensitive(!attachable.is_empty());
        if attachable.is_empty() {
            existing_volume.set_tooltip_text(Some(&gettext(
                "Every volume of the pool is a disk of this VM already",
            )));
        }
        let modes = gtk::Box::builder()
            .css_classes(["linked"])
            .halign(gtk::Align::Center)
            .build();
        modes.append(&new_volume);
        modes.append(&existing_volume);

        let list = gtk::ListBox::builder()
            .css_classes(["boxed-list"])
            .selection_mode(gtk::SelectionMode::None)
            .build();
        let name = adw::EntryRow::builder()
            .title(gettext("Volume name"))
            .build();
        name.set_text(&self.free_volume_name());
        let size = adw::EntryRow::builder().title(gettext("Size")).build();
        size.set_text("1 GiB");
        let names: Vec<String> = attachable
            .iter()
            .map(|v| format!("{} ({})", v.name, format_size(v.virtual_size)))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let existing = adw::ComboRow::builder()
            .title(gettext("Volume"))
            .model(&gtk::StringList::new(&names))
            .visible(false)
            .build();
        list.append(&name);
        list.append(&size);
        list.append(&existing);
        let problem = gtk::Label::builder()
            .xalign(0.0)
            .wrap(true)
            .css_classes(["error", "caption"])
            .build();
        let content = gtk::Box::new(gtk::Orientation::Vertical, 12);
        content.append(&modes);
        content.append(&list);
        content.append(&problem);
        dialog.set_extra_child(Some(&content));

        let validate = {
            let (dialog, name, size, new_volume, problem) = (
                dialog.clone(),
                name.clone(),
                size.clone(),
                new_volume.clone(),
                problem.clone(),
            );
            Rc::new(move || {
                let result = if new_volume.is_active() {
                    check.check(&name.text(), &size.text()).map(drop)
                } else {
                    Ok(())
                };
                problem.set_label(
                    &result
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                );
                problem.set_visible(result.is_err());
                dialog.set_response_enabled("add", result.is_ok());
            })
        };
        {
            let (validate, name, size, existing) = (
                validate.clone(),
                name.clone(),
                size.clone(),
                existing.clone(),
            );
            new_volume.connect_toggled(move |button| {
                name.set_visible(button.is_active());
                size.set_visible(button.is_active());
                existing.set_visible(!button.is_active());
                validate();
            });
        }
        for row in [&name, &size] {
            let validate = validate.clone();
            row.connect_changed(move |_| validate());
        }
        validate();

        let input = sender.input_sender().clone();
        dialog.connect_response(None, move |_, response| {
            if response != "add" {
                return;
            }
            if new_volume.is_active() {
                input.emit(HardwareMsg::AddNewDisk {
                    name: name.text().to_string(),
                    size: size.text().to_string(),
                });
            } else if let Some(volume) = attachable.get(existing.selected() as usize) {
                input.emit(HardwareMsg::AddExistingDisk(volume.name.clone()));
            }
        });
        dialog.present();
    }

    /// `<vm>-disk<N>.qcow2` with the first N that names no volume of the pool or the draft.
    fn free_volume_name(&self) -> String {
        let taken = |name: &str| {
            self.pool.iter().any(|v| v.name == name)
                || self
                    .editor
                    .draft()
                    .is_some_and(|d| d.disks.iter().any(|disk| disk.volume == name))
        };
        (1..)
            .map(|n| format!("{}-disk{n}.qcow2", self.info.name))
            .find(|name| !taken(name))
            .unwrap_or_default()
    }

    fn show_grow(&self, sender: &ComponentSender<Self>, index: usize) {
        let (Some(check), Some(disk)) = (
            self.editor.grow_check(index),
            self.editor
                .draft()
                .and_then(|d| d.disks.get(index))
                .cloned(),
        ) else {
            return;
        };
        let heading = gettext("Grow {volume}").replace("{volume}", &disk.volume);
        let dialog = adw::MessageDialog::builder()
            .heading(&heading)
            .title(&heading)
            .body(match check.current() {
                Some(size) => gettext(
                    "It is {size} now. The guest sees the new size at its next start; partitions and file systems inside are not grown for it.",
                )
                .replace("{size}", &format_size(size)),
                None => gettext("Its size is not known: the pool did not say."),
            })
            .modal(true)
            .build();
        if let Some(window) = self.window() {
            dialog.set_transient_for(Some(&window));
        }
        dialog.add_response("cancel", &gettext("Cancel"));
        dialog.add_response("grow", &gettext("Grow"));
        dialog.set_response_appearance("grow", adw::ResponseAppearance::Suggested);
        dialog.set_default_response(Some("grow"));
        dialog.set_close_response("cancel");
        let list = gtk::ListBox::builder()
            .css_classes(["boxed-list"])
            .selection_mode(gtk::SelectionMode::None)
            .build();
        let size = adw::EntryRow::builder().title(gettext("New size")).build();
        size.set_text(&format_size(disk.grow_to.or(disk.size).unwrap_or(1 << 30)));
        list.append(&size);
        let problem = gtk::Label::builder()
            .xalign(0.0)
            .wrap(true)
            .css_classes(["error", "caption"])
            .build();
        let content = gtk::Box::new(gtk::Orientation::Vertical, 12);
        content.append(&list);
        content.append(&problem);
        dialog.set_extra_child(Some(&content));
        let validate = {
            let (dialog, problem) = (dialog.clone(), problem.clone());
            move |text: &str| {
                let result = check.check(text);
                problem.set_label(
                    &result
                        .as_ref()
                        .err()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                );
                problem.set_visible(result.is_err());
                dialog.set_response_enabled("grow", result.is_ok());
            }
        };
        validate(&size.text());
        size.connect_changed(move |row| validate(&row.text()));
        let input = sender.input_sender().clone();
        dialog.connect_response(None, move |_, response| {
            if response == "grow" {
                input.emit(HardwareMsg::GrowDisk(index, size.text().to_string()));
            }
        });
        dialog.present();
    }
}

fn remove_button(label: &str) -> gtk::Button {
    let button = gtk::Button::builder()
        .icon_name("user-trash-symbolic")
        .valign(gtk::Align::Center)
        .tooltip_text(label)
        .css_classes(["flat"])
        .build();
    button.update_property(&[gtk::accessible::Property::Label(label)]);
    button
}

fn port_spin(value: u16, label: &str) -> gtk::SpinButton {
    let spin = gtk::SpinButton::with_range(1.0, 65535.0, 1.0);
    spin.set_value(f64::from(value));
    spin.set_valign(gtk::Align::Center);
    spin.set_numeric(true);
    spin.update_property(&[gtk::accessible::Property::Label(label)]);
    spin
}

/// One port forward: protocol, host port → guest port, and a remove button.
fn forward_row(
    input: &relm4::Sender<HardwareMsg>,
    syncing: &Rc<Cell<bool>>,
    nic: usize,
    index: usize,
    forward: PortForward,
) -> adw::ActionRow {
    let row = adw::ActionRow::builder()
        .title(gettext("Forward {n}").replace("{n}", &(index + 1).to_string()))
        .build();
    let protocol = gtk::DropDown::from_strings(&["TCP", "UDP"]);
    protocol.set_valign(gtk::Align::Center);
    protocol.set_selected(match forward.protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    });
    protocol.update_property(&[gtk::accessible::Property::Label(&gettext("Protocol"))]);
    let host = port_spin(forward.host, &gettext("Host port"));
    let arrow = gtk::Label::new(Some("→"));
    let guest = port_spin(forward.guest, &gettext("Guest port"));
    let read = {
        let (protocol, host, guest) = (protocol.clone(), host.clone(), guest.clone());
        move || PortForward {
            protocol: if protocol.selected() == 1 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            host: host.value() as u16,
            guest: guest.value() as u16,
        }
    };
    let send = {
        let (input, syncing) = (input.clone(), syncing.clone());
        Rc::new(move || {
            if !syncing.get() {
                input.emit(HardwareMsg::Forward(nic, index, read()));
            }
        })
    };
    {
        let send = send.clone();
        protocol.connect_selected_notify(move |_| send());
    }
    for spin in [&host, &guest] {
        let send = send.clone();
        spin.connect_value_changed(move |_| send());
    }
    let remove =
        remove_button(&gettext("Remove forward {n}").replace("{n}", &(index + 1).to_string()));
    {
        let input = input.clone();
        remove.connect_clicked(move |_| input.emit(HardwareMsg::RemoveForward(nic, index)));
    }
    row.add_suffix(&protocol);
    row.add_suffix(&host);
    row.add_suffix(&arrow);
    row.add_suffix(&guest);
    row.add_suffix(&remove);
    row
}

/// An entry row whose text goes to the draft as it is typed.
fn entry_row(
    group: &adw::PreferencesGroup,
    title: &str,
    input: &relm4::Sender<HardwareMsg>,
    syncing: &Rc<Cell<bool>>,
    message: fn(String) -> HardwareMsg,
) -> adw::EntryRow {
    // The row's title names its text for assistive technologies.
    let row = adw::EntryRow::builder().title(title).build();
    let (input, syncing) = (input.clone(), syncing.clone());
    row.connect_changed(move |row| {
        if !syncing.get() {
            input.emit(message(row.text().to_string()));
        }
    });
    group.add(&row);
    row
}

fn build_ui(
    root: &gtk::Box,
    general: &adw::PreferencesGroup,
    sender: &ComponentSender<HardwarePage>,
) -> Ui {
    let input = sender.input_sender().clone();
    let syncing = Rc::new(Cell::new(false));
    let mut errors = Vec::new();
    let mut slot = |group: &adw::PreferencesGroup, key: FieldKey| {
        let slot = FieldError::new();
        group.add(&slot.row);
        errors.push((key, slot));
    };
    let page = adw::PreferencesPage::new();
    page.set_vexpand(true);
    page.add(general);

    let notice_group = adw::PreferencesGroup::new();
    let notice = adw::ActionRow::builder().css_classes(["warning"]).build();
    notice.set_title_lines(0);
    let notice_revert = gtk::Button::builder()
        .label(gettext("Revert"))
        .valign(gtk::Align::Center)
        .build();
    {
        let input = input.clone();
        notice_revert.connect_clicked(move |_| input.emit(HardwareMsg::Revert));
    }
    notice.add_suffix(&notice_revert);
    notice_group.add(&notice);
    notice_group.set_visible(false);
    page.add(&notice_group);

    // Processor and memory.
    let hardware = adw::PreferencesGroup::builder()
        .title(gettext("Hardware"))
        .build();
    let vcpus_row = adw::ActionRow::builder()
        .title(gettext("Virtual CPUs"))
        .build();
    let vcpus = gtk::SpinButton::with_range(1.0, 64.0, 1.0);
    vcpus.set_valign(gtk::Align::Center);
    vcpus.set_numeric(true);
    {
        let (input, syncing) = (input.clone(), syncing.clone());
        vcpus.connect_value_changed(move |spin| {
            if !syncing.get() {
                input.emit(HardwareMsg::Vcpus(spin.value() as u32));
            }
        });
    }
    vcpus_row.add_suffix(&vcpus);
    vcpus_row.set_activatable_widget(Some(&vcpus));
    hardware.add(&vcpus_row);
    slot(&hardware, FieldKey::Vcpus);
    let memory = entry_row(
        &hardware,
        &gettext("Memory"),
        &input,
        &syncing,
        HardwareMsg::Memory,
    );
    slot(&hardware, FieldKey::Memory);

    // Boot.
    let boot = adw::PreferencesGroup::builder()
        .title(gettext("Boot"))
        .build();
    let chooser_button = |row: &adw::EntryRow, file: BootFile, label: &str| {
        let button = gtk::Button::builder()
            .icon_name("document-open-symbolic")
            .valign(gtk::Align::Center)
            .tooltip_text(label)
            .css_classes(["flat"])
            .build();
        button.update_property(&[gtk::accessible::Property::Label(label)]);
        let input = input.clone();
        button.connect_clicked(move |_| input.emit(HardwareMsg::Choose(file)));
        row.add_suffix(&button);
    };
    let kernel = entry_row(
        &boot,
        &gettext("Kernel"),
        &input,
        &syncing,
        HardwareMsg::Kernel,
    );
    chooser_button(&kernel, BootFile::Kernel, &gettext("Choose a Kernel"));
    slot(&boot, FieldKey::Kernel);
    let initrd = entry_row(
        &boot,
        &gettext("Initial RAM disk"),
        &input,
        &syncing,
        HardwareMsg::Initrd,
    );
    chooser_button(
        &initrd,
        BootFile::Initrd,
        &gettext("Choose an Initial RAM Disk"),
    );
    {
        let clear = gtk::Button::builder()
            .icon_name("edit-clear-symbolic")
            .valign(gtk::Align::Center)
            .tooltip_text(gettext("No initial RAM disk"))
            .css_classes(["flat"])
            .build();
        clear.update_property(&[gtk::accessible::Property::Label(&gettext(
            "No initial RAM disk",
        ))]);
        let row = initrd.clone();
        clear.connect_clicked(move |_| row.set_text(""));
        initrd.add_suffix(&clear);
    }
    slot(&boot, FieldKey::Initrd);
    let cmdline = entry_row(
        &boot,
        &gettext("Kernel command line"),
        &input,
        &syncing,
        HardwareMsg::Cmdline,
    );
    slot(&boot, FieldKey::Cmdline);

    // Disks and network cards: rebuilt from the draft.
    let header_button = |label: &str, message: fn() -> HardwareMsg| {
        let button = gtk::Button::builder()
            .icon_name("list-add-symbolic")
            .tooltip_text(label)
            .css_classes(["flat"])
            .build();
        button.update_property(&[gtk::accessible::Property::Label(label)]);
        let input = input.clone();
        button.connect_clicked(move |_| input.emit(message()));
        button
    };
    let disks = adw::PreferencesGroup::builder()
        .title(gettext("Disks"))
        .header_suffix(&header_button(&gettext("Add Disk"), || {
            HardwareMsg::ShowAddDisk
        }))
        .build();
    let network = adw::PreferencesGroup::builder()
        .title(gettext("Network"))
        .header_suffix(&header_button(&gettext("Add Network Card"), || {
            HardwareMsg::AddNic
        }))
        .build();

    // Display and input devices.
    let screen = adw::PreferencesGroup::builder()
        .title(gettext("Display"))
        .build();
    let display = adw::ComboRow::builder()
        .title(gettext("Display"))
        .model(&gtk::StringList::new(&[
            &gettext("Framebuffer"),
            &gettext("None (serial console only)"),
        ]))
        .build();
    {
        let (input, syncing) = (input.clone(), syncing.clone());
        display.connect_selected_notify(move |row| {
            if !syncing.get() {
                input.emit(HardwareMsg::Display(if row.selected() == 1 {
                    DisplayKind::None
                } else {
                    DisplayKind::Framebuffer
                }));
            }
        });
    }
    screen.add(&display);
    slot(&screen, FieldKey::Display);
    let resolution = adw::ComboRow::builder()
        .title(gettext("Resolution"))
        .build();
    {
        let (input, syncing) = (input.clone(), syncing.clone());
        resolution.connect_selected_notify(move |row| {
            if !syncing.get() {
                input.emit(HardwareMsg::Resolution(row.selected()));
            }
        });
    }
    screen.add(&resolution);
    slot(&screen, FieldKey::Resolution);
    let switch_row = |title: &str, subtitle: &str, message: fn(bool) -> HardwareMsg| {
        let row = adw::ActionRow::builder()
            .title(title)
            .subtitle(subtitle)
            .build();
        let switch = gtk::Switch::builder().valign(gtk::Align::Center).build();
        let (input, syncing) = (input.clone(), syncing.clone());
        switch.connect_active_notify(move |switch| {
            if !syncing.get() {
                input.emit(message(switch.is_active()));
            }
        });
        row.add_suffix(&switch);
        row.set_activatable_widget(Some(&switch));
        screen.add(&row);
        switch
    };
    let keyboard = switch_row(
        &gettext("Virtio keyboard"),
        &gettext("Keys reach the guest through virtio-input once its driver is loaded; the PS/2 keyboard is always there"),
        HardwareMsg::Keyboard,
    );
    let tablet = switch_row(
        &gettext("Virtio tablet"),
        &gettext("An absolute pointer: the guest's mouse follows the console's"),
        HardwareMsg::Tablet,
    );
    slot(&screen, FieldKey::Input);

    for group in [&hardware, &boot, &disks, &network, &screen] {
        page.add(group);
    }

    let apply = gtk::Button::builder()
        .label(gettext("Apply"))
        .css_classes(["suggested-action"])
        .sensitive(false)
        .build();
    {
        let input = input.clone();
        apply.connect_clicked(move |_| input.emit(HardwareMsg::Apply));
    }
    let revert = gtk::Button::builder()
        .label(gettext("Revert"))
        .sensitive(false)
        .build();
    {
        let input = input.clone();
        revert.connect_clicked(move |_| input.emit(HardwareMsg::Revert));
    }
    let bar = gtk::ActionBar::new();
    bar.pack_end(&apply);
    bar.pack_end(&revert);
    root.append(&page);
    root.append(&bar);

    Ui {
        root: root.clone(),
        notice,
        notice_group,
        notice_revert,
        editable: vec![
            hardware.clone(),
            boot.clone(),
            disks.clone(),
            network.clone(),
            screen.clone(),
        ],
        hardware,
        vcpus,
        memory,
        kernel,
        initrd,
        cmdline,
        disks,
        disk_rows: ListRows::default(),
        network,
        nic_rows: ListRows::default(),
        display,
        resolution,
        resolutions: Vec::new(),
        keyboard,
        tablet,
        errors,
        apply,
        revert,
        syncing,
    }
}
