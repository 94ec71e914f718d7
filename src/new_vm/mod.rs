//! The New VM assistant: five steps from nothing to a running VM, as virt-manager's "New VM"
//! does. 1. the install source (a kernel, an imported disk image, or the sample), 2. what that
//! source is, read from the files, 3. memory and CPUs within the host's, 4. storage, 5. name,
//! network and "customize before start". Every step explains what is wrong next to the field,
//! and Next waits until the step is right. Nothing is created before Create: Cancel leaves no
//! volume and no definition, and a Create that fails half-way removes the volumes it made.
//!
//! `plan` holds the choices and their rules, `source` reads the files; this module is the
//! window.

pub mod plan;
pub mod source;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use adw::prelude::*;
use gettextrs::gettext;
use hangar_engine::host::api::{ManagerProxy, VmProxy};
use relm4::prelude::*;
use zbus::Connection;

use crate::connection::describe;
use crate::stats_history::format_bytes;
use crate::widgets::field_error::FieldError;
use plan::{Draft, Facts, Field, ForwardDraft, HostLimits, NewVolume, Plan, Source, Step, Storage};
use source::{ImageInfo, KernelInfo, KernelKind};

pub struct NewVmInit {
    pub connection: Connection,
    pub limits: HostLimits,
    /// The VMs hangard has now; the manager sends changes with [`NewVmMsg::Names`].
    pub taken_names: Vec<String>,
}

#[derive(Debug)]
pub enum NewVmOutput {
    /// A VM was defined, and started unless it is to be customized first. `warning` says why
    /// a start that was asked for failed.
    Created {
        path: String,
        customize: bool,
        warning: Option<String>,
    },
}

#[derive(Debug)]
pub enum NewVmMsg {
    Source(Source),
    Storage(Storage),
    /// Something was typed or switched: read the widgets into the draft.
    Edited(Option<Field>),
    Choose(Field),
    Chosen(Field, PathBuf),
    AddForward,
    RemoveForward(usize),
    Names(Vec<String>),
    Back,
    Next,
    Cancel,
}

#[derive(Debug)]
pub enum NewVmCmd {
    Volumes(Vec<String>),
    Kernel(String, Result<KernelInfo, String>),
    Initrd(String, Result<u64, String>),
    Image(String, Result<ImageInfo, String>),
    Finished(Result<(String, Option<String>), (Option<Field>, String)>),
}

pub struct NewVmWizard {
    window: adw::Window,
    connection: Connection,
    limits: HostLimits,
    draft: Draft,
    facts: Facts,
    step: Step,
    /// Fields the user has typed in: their problems show as errors, the others as hints.
    touched: HashSet<Field>,
    /// The user typed a name: suggestions stop replacing it.
    name_edited: bool,
    busy: bool,
    /// The paths last sent to be read, so a late answer for an old path is dropped.
    reading: [String; 3],
    /// A native dialog lives only as long as its last reference.
    chooser: Option<gtk::FileChooserNative>,
    /// Set while widgets are filled from the draft, so that is not taken for typing.
    filling: Rc<Cell<bool>>,
    ui: Ui,
}

struct Ui {
    stack: gtk::Stack,
    title: adw::WindowTitle,
    back: gtk::Button,
    next: gtk::Button,
    cancel: gtk::Button,
    toasts: adw::ToastOverlay,
    source_kernel: gtk::CheckButton,
    source_import: gtk::CheckButton,
    source_sample: gtk::CheckButton,
    image: adw::EntryRow,
    kernel: adw::EntryRow,
    initrd: adw::EntryRow,
    cmdline: adw::EntryRow,
    review_kernel: adw::ActionRow,
    review_version: adw::ActionRow,
    review_initrd: adw::ActionRow,
    review_image: adw::ActionRow,
    review_image_size: adw::ActionRow,
    review_group_image: adw::PreferencesGroup,
    memory: gtk::SpinButton,
    memory_row: adw::ActionRow,
    vcpus: gtk::SpinButton,
    vcpus_row: adw::ActionRow,
    storage_group: adw::PreferencesGroup,
    storage_new: gtk::CheckButton,
    storage_existing: gtk::CheckButton,
    storage_none: gtk::CheckButton,
    disk_size: gtk::SpinButton,
    volumes: adw::ComboRow,
    volume_names: gtk::StringList,
    name: adw::EntryRow,
    network: gtk::Switch,
    forwards_group: adw::PreferencesGroup,
    forwards: Vec<ForwardRow>,
    customize: gtk::Switch,
    errors: HashMap<Field, FieldError>,
}

struct ForwardRow {
    row: adw::ActionRow,
    host: gtk::Entry,
    guest: gtk::Entry,
    udp: gtk::DropDown,
    error: FieldError,
}

impl Component for NewVmWizard {
    type CommandOutput = NewVmCmd;
    type Input = NewVmMsg;
    type Output = NewVmOutput;
    type Init = NewVmInit;
    type Root = adw::Window;
    type Widgets = ();

    fn init_root() -> Self::Root {
        adw::Window::builder()
            .title(gettext("New Virtual Machine"))
            .default_width(620)
            .default_height(640)
            .modal(true)
            .build()
    }

    fn init(
        init: Self::Init,
        window: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let filling = Rc::new(Cell::new(false));
        let ui = build_ui(&window, &sender, &init.limits, &filling);
        let input = sender.input_sender().clone();
        window.connect_close_request(move |_| {
            input.emit(NewVmMsg::Cancel);
            gtk::glib::Propagation::Stop
        });
        let mut model = NewVmWizard {
            window,
            connection: init.connection,
            draft: Draft::new(&init.limits),
            limits: init.limits,
            facts: Facts {
                taken_names: init.taken_names,
                ..Facts::default()
            },
            step: Step::Source,
            touched: HashSet::new(),
            name_edited: false,
            busy: false,
            reading: Default::default(),
            chooser: None,
            filling,
            ui,
        };
        model.fill_widgets();
        model.load_volumes(&sender);
        model.refresh(&sender);
        ComponentParts { model, widgets: () }
    }

    fn update(&mut self, message: Self::Input, sender: ComponentSender<Self>, _root: &Self::Root) {
        match message {
            NewVmMsg::Source(source) => {
                if source == self.draft.source {
                    return;
                }
                match source {
                    Source::Sample => self
                        .draft
                        .use_sample(&hangar_engine::host::inventory::guest_cache_dir()),
                    other => {
                        if self.draft.source == Source::Sample {
                            // The sample's files and sizes are no use for another source.
                            self.draft = Draft {
                                name: self.draft.name.clone(),
                                ..Draft::new(&self.limits)
                            };
                        }
                        self.draft.source = other;
                        // An imported image is the VM's disk; another one is rarely wanted.
                        self.draft.storage = if other == Source::Import {
                            Storage::None
                        } else {
                            Storage::New
                        };
                    }
                }
                self.fill_widgets();
            }
            NewVmMsg::Storage(storage) => self.draft.storage = storage,
            NewVmMsg::Edited(field) => {
                if let Some(field) = field {
                    self.touched.insert(field);
                    if field == Field::Name {
                        self.name_edited = true;
                    }
                }
                self.read_widgets();
            }
            NewVmMsg::Choose(field) => self.choose_file(&sender, field),
            NewVmMsg::Chosen(field, path) => {
                let text = path.display().to_string();
                self.touched.insert(field);
                let row = match field {
                    Field::Kernel => &self.ui.kernel,
                    Field::Initrd => &self.ui.initrd,
                    _ => &self.ui.image,
                };
                // Its change signal reads it into the draft.
                row.set_text(&text);
            }
            NewVmMsg::AddForward => {
                self.read_widgets();
                self.draft.forwards.push(ForwardDraft::default());
                self.rebuild_forwards(&sender);
            }
            NewVmMsg::RemoveForward(index) => {
                self.read_widgets();
                if index < self.draft.forwards.len() {
                    self.draft.forwards.remove(index);
                }
                self.rebuild_forwards(&sender);
            }
            NewVmMsg::Names(names) => self.facts.taken_names = names,
            NewVmMsg::Back => {
                if let Some(previous) = self.step.previous() {
                    self.step = previous;
                }
            }
            NewVmMsg::Next => {
                if self.busy || !self.step_problems().is_empty() {
                    return;
                }
                match self.step.next() {
                    Some(next) => {
                        self.step = next;
                        if next == Step::Finish && !self.name_edited {
                            self.draft.name = self.draft.suggested_name(&self.facts.taken_names);
                            self.fill_widgets();
                        }
                    }
                    None => self.finish(&sender),
                }
            }
            NewVmMsg::Cancel => {
                // Nothing exists until Create. While Create runs, it is too late to cancel: it
                // ends with a VM or with nothing (a failure removes the volumes it made).
                if !self.busy {
                    self.window.destroy();
                    return;
                }
            }
        }
        self.refresh(&sender);
    }

    fn update_cmd(
        &mut self,
        message: Self::CommandOutput,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            NewVmCmd::Volumes(volumes) => {
                self.facts.volumes = volumes;
                let filling = self.filling.replace(true);
                let names: Vec<&str> = self.facts.volumes.iter().map(String::as_str).collect();
                self.ui
                    .volume_names
                    .splice(0, self.ui.volume_names.n_items(), &names);
                self.filling.set(filling);
                self.read_widgets();
            }
            NewVmCmd::Kernel(path, info) if path == self.reading[0] => {
                self.facts.kernel = Some(info.map_err(|reason| {
                    if self.draft.source == Source::Sample {
                        gettext("The sample's kernel is not there yet: build the guest kit with tests/guests/build all (scripts/run does it).")
                    } else {
                        reason
                    }
                }));
            }
            NewVmCmd::Initrd(path, info) if path == self.reading[1] => {
                self.facts.initrd = Some(info)
            }
            NewVmCmd::Image(path, info) if path == self.reading[2] => self.facts.image = Some(info),
            NewVmCmd::Kernel(..) | NewVmCmd::Initrd(..) | NewVmCmd::Image(..) => {}
            NewVmCmd::Finished(Ok((path, warning))) => {
                let _ = sender.output(NewVmOutput::Created {
                    path,
                    customize: self.draft.customize,
                    warning,
                });
                self.window.destroy();
                return;
            }
            NewVmCmd::Finished(Err((field, message))) => {
                self.busy = false;
                match field {
                    Some(field) => {
                        // Show it where it belongs: go back to that field's step.
                        self.touched.insert(field);
                        self.step = step_of(field);
                        self.refresh(&sender);
                        if let Some(error) = self.error_row(field) {
                            error.show(Some(&message));
                        }
                        self.ui.next.set_sensitive(true);
                        return;
                    }
                    None => {
                        let toast = adw::Toast::new(&message);
                        toast.set_timeout(0);
                        self.ui.toasts.add_toast(toast);
                    }
                }
            }
        }
        self.refresh(&sender);
    }
}

/// The step whose page holds `field`.
fn step_of(field: Field) -> Step {
    match field {
        Field::Kernel | Field::Initrd | Field::Image | Field::Cmdline => Step::Source,
        Field::Memory | Field::Vcpus => Step::Resources,
        Field::NewDisk | Field::ExistingVolume => Step::Storage,
        Field::Name | Field::Forward(_) => Step::Finish,
    }
}

impl NewVmWizard {
    fn error_row(&self, field: Field) -> Option<&FieldError> {
        match field {
            Field::Forward(i) => self.ui.forwards.get(i).map(|row| &row.error),
            other => self.ui.errors.get(&other),
        }
    }

    fn step_problems(&self) -> Vec<plan::Problem> {
        plan::problems(self.step, &self.draft, &self.facts, &self.limits)
    }

    fn load_volumes(&self, sender: &ComponentSender<Self>) {
        let connection = self.connection.clone();
        sender.oneshot_command(async move {
            let volumes = match ManagerProxy::new(&connection).await {
                Ok(manager) => manager.list_volumes().await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            NewVmCmd::Volumes(volumes.into_iter().map(|v| v.name).collect())
        });
    }

    /// Puts the draft into the widgets (a new source, a suggested name).
    fn fill_widgets(&mut self) {
        let previous = self.filling.replace(true);
        let ui = &self.ui;
        let draft = &self.draft;
        ui.source_kernel.set_active(draft.source == Source::Kernel);
        ui.source_import.set_active(draft.source == Source::Import);
        ui.source_sample.set_active(draft.source == Source::Sample);
        for (row, text) in [
            (&ui.kernel, &draft.kernel),
            (&ui.initrd, &draft.initrd),
            (&ui.image, &draft.image),
            (&ui.cmdline, &draft.cmdline),
            (&ui.name, &draft.name),
        ] {
            if row.text() != *text {
                row.set_text(text);
            }
        }
        ui.memory.set_value(draft.memory_mib as f64);
        ui.vcpus.set_value(f64::from(draft.vcpus));
        ui.disk_size.set_value(draft.new_disk_gib as f64);
        ui.storage_new.set_active(draft.storage == Storage::New);
        ui.storage_existing
            .set_active(draft.storage == Storage::Existing);
        ui.storage_none.set_active(draft.storage == Storage::None);
        ui.network.set_active(draft.network);
        ui.customize.set_active(draft.customize);
        self.filling.set(previous);
    }

    /// Reads what the user typed and switched into the draft.
    fn read_widgets(&mut self) {
        let ui = &self.ui;
        let draft = &mut self.draft;
        draft.kernel = ui.kernel.text().to_string();
        draft.initrd = ui.initrd.text().to_string();
        draft.image = ui.image.text().to_string();
        draft.cmdline = ui.cmdline.text().to_string();
        draft.memory_mib = ui.memory.value_as_int().max(0) as u64;
        draft.vcpus = ui.vcpus.value_as_int().max(0) as u32;
        draft.new_disk_gib = ui.disk_size.value_as_int().max(0) as u64;
        draft.existing_volume = self
            .facts
            .volumes
            .get(ui.volumes.selected() as usize)
            .cloned();
        draft.name = ui.name.text().to_string();
        draft.network = ui.network.is_active();
        draft.customize = ui.customize.is_active();
        for (forward, row) in draft.forwards.iter_mut().zip(&ui.forwards) {
            forward.host = row.host.text().to_string();
            forward.guest = row.guest.text().to_string();
            forward.udp = row.udp.selected() == 1;
        }
    }

    /// Sends the files whose paths changed to be read, off the main loop.
    fn read_files(&mut self, sender: &ComponentSender<Self>) {
        let paths = [
            self.draft.kernel.trim().to_string(),
            self.draft.initrd.trim().to_string(),
            if self.draft.source == Source::Import {
                self.draft.image.trim().to_string()
            } else {
                String::new()
            },
        ];
        for (i, path) in paths.into_iter().enumerate() {
            if path == self.reading[i] {
                continue;
            }
            self.reading[i] = path.clone();
            match i {
                0 => self.facts.kernel = None,
                1 => self.facts.initrd = None,
                _ => self.facts.image = None,
            }
            if path.is_empty() {
                continue;
            }
            sender.spawn_oneshot_command(move || {
                let file = Path::new(&path);
                match i {
                    0 => {
                        let info = source::inspect_kernel(file);
                        NewVmCmd::Kernel(path, info)
                    }
                    1 => {
                        let info = source::inspect_initrd(file);
                        NewVmCmd::Initrd(path, info)
                    }
                    _ => {
                        let info = source::inspect_image(file);
                        NewVmCmd::Image(path, info)
                    }
                }
            });
        }
    }

    /// Shows the current step, its problems and what the files are.
    fn refresh(&mut self, sender: &ComponentSender<Self>) {
        self.read_files(sender);
        let ui = &self.ui;
        ui.stack.set_visible_child_name(self.step.name());
        ui.title.set_subtitle(
            &gettext("Step {n} of {total}: {title}")
                .replace("{n}", &(self.step.index() + 1).to_string())
                .replace("{total}", &Step::ALL.len().to_string())
                .replace("{title}", &step_title(self.step)),
        );
        ui.back.set_visible(self.step != Step::Source);
        ui.back.set_sensitive(!self.busy);
        let last = self.step.next().is_none();
        ui.next.set_label(&if !last {
            gettext("Next")
        } else if self.draft.customize {
            gettext("Create")
        } else {
            gettext("Create and Start")
        });
        ui.next.update_property(&[gtk::accessible::Property::Label(
            &ui.next.label().unwrap_or_default(),
        )]);

        let draft = &self.draft;
        let import = draft.source == Source::Import;
        ui.image.set_visible(import);
        ui.storage_group.set_title(&if import {
            gettext("Another disk besides the imported image")
        } else {
            gettext("Disk")
        });
        ui.disk_size.set_sensitive(draft.storage == Storage::New);
        ui.volumes
            .set_sensitive(draft.storage == Storage::Existing && !self.facts.volumes.is_empty());
        ui.forwards_group.set_visible(draft.network);
        ui.memory_row.set_subtitle(
            &gettext("This host has {memory}.")
                .replace("{memory}", &format_bytes(self.limits.memory as f64)),
        );
        ui.vcpus_row.set_subtitle(
            &gettext("This host has {n} CPUs.").replace("{n}", &self.limits.cpus.to_string()),
        );
        self.show_review();

        let problems = self.step_problems();
        let fields = ui
            .errors
            .keys()
            .copied()
            .chain((0..ui.forwards.len()).map(Field::Forward));
        for field in fields {
            let message = problems
                .iter()
                .find(|p| p.field == field)
                .map(|p| p.message.as_str());
            if let Some(error) = self.error_row(field) {
                error.show_as(message, self.touched.contains(&field));
            }
        }
        ui.next.set_sensitive(problems.is_empty() && !self.busy);
        ui.cancel.set_sensitive(!self.busy);
    }

    fn show_review(&self) {
        let ui = &self.ui;
        let none = gettext("None");
        let failed = |reason: &String| gettext("Not usable: {reason}").replace("{reason}", reason);
        let (kind, version) = match &self.facts.kernel {
            Some(Ok(info)) => (
                match info.kind {
                    KernelKind::BzImage => gettext("Linux bzImage, {size}"),
                    KernelKind::Elf => gettext("ELF vmlinux (PVH entry), {size}"),
                }
                .replace("{size}", &format_bytes(info.size as f64)),
                info.version
                    .clone()
                    .unwrap_or_else(|| gettext("Not recorded in the file")),
            ),
            Some(Err(reason)) => (failed(reason), none.clone()),
            None => (gettext("Reading…"), none.clone()),
        };
        ui.review_kernel.set_subtitle(&kind);
        ui.review_version.set_subtitle(&version);
        ui.review_initrd.set_subtitle(&match &self.facts.initrd {
            _ if self.draft.initrd.trim().is_empty() => none.clone(),
            Some(Ok(size)) => format_bytes(*size as f64),
            Some(Err(reason)) => failed(reason),
            None => gettext("Reading…"),
        });
        let import = self.draft.source == Source::Import;
        ui.review_group_image.set_visible(import);
        let (format, sizes) = match &self.facts.image {
            Some(Ok(info)) => (
                match &info.backing_file {
                    Some(backing) => gettext("{format}, on top of {backing}")
                        .replace("{format}", &info.format)
                        .replace("{backing}", backing),
                    None => info.format.clone(),
                },
                gettext("{virtual} for the guest, {actual} on the host")
                    .replace("{virtual}", &format_bytes(info.virtual_size as f64))
                    .replace("{actual}", &format_bytes(info.size as f64)),
            ),
            Some(Err(reason)) => (failed(reason), none.clone()),
            None => (gettext("Reading…"), none),
        };
        ui.review_image.set_subtitle(&format);
        ui.review_image_size.set_subtitle(&sizes);
    }

    fn rebuild_forwards(&mut self, sender: &ComponentSender<Self>) {
        for row in self.ui.forwards.drain(..) {
            self.ui.forwards_group.remove(&row.row);
            self.ui.forwards_group.remove(&row.error.row);
        }
        let previous = self.filling.replace(true);
        for (index, forward) in self.draft.forwards.iter().enumerate() {
            let row = forward_row(&self.ui.forwards_group, sender, &self.filling, index);
            row.host.set_text(&forward.host);
            row.guest.set_text(&forward.guest);
            row.udp.set_selected(u32::from(forward.udp));
            self.ui.forwards.push(row);
        }
        self.filling.set(previous);
    }

    fn choose_file(&mut self, sender: &ComponentSender<Self>, field: Field) {
        let title = match field {
            Field::Kernel => gettext("Choose a Linux Kernel"),
            Field::Initrd => gettext("Choose an Initial RAM Disk"),
            _ => gettext("Choose a Disk Image"),
        };
        let chooser = gtk::FileChooserNative::new(
            Some(&title),
            Some(&self.window),
            gtk::FileChooserAction::Open,
            Some(&gettext("Choose")),
            Some(&gettext("Cancel")),
        );
        if field == Field::Image {
            let filter = gtk::FileFilter::new();
            filter.set_name(Some(&gettext("Disk images (qcow2, raw)")));
            for pattern in ["*.qcow2", "*.img", "*.raw"] {
                filter.add_pattern(pattern);
            }
            chooser.add_filter(&filter);
            let all = gtk::FileFilter::new();
            all.set_name(Some(&gettext("All files")));
            all.add_pattern("*");
            chooser.add_filter(&all);
        } else if field == Field::Kernel {
            let _ = chooser.set_current_folder(Some(&gtk::gio::File::for_path("/boot")));
        }
        let input = sender.input_sender().clone();
        chooser.connect_response(move |chooser, response| {
            if response == gtk::ResponseType::Accept {
                if let Some(path) = chooser.file().and_then(|f| f.path()) {
                    input.emit(NewVmMsg::Chosen(field, path));
                }
            }
        });
        chooser.show();
        self.chooser = Some(chooser);
    }

    fn finish(&mut self, sender: &ComponentSender<Self>) {
        // Every step, not only the last: a file may have gone since its step was passed.
        let problems = plan::problems_through(Step::Finish, &self.draft, &self.facts, &self.limits);
        if let Some(problem) = problems.first() {
            self.step = step_of(problem.field);
            self.touched.insert(problem.field);
            return;
        }
        self.busy = true;
        let plan = plan::plan(&self.draft, &self.facts);
        let draft = self.draft.clone();
        let connection = self.connection.clone();
        sender.oneshot_command(async move {
            NewVmCmd::Finished(create(&connection, &draft, plan).await)
        });
    }
}

/// Creates the plan's volumes, defines the VM and starts it. On a failure, the volumes made so
/// far are deleted again and the error names the field it belongs to, if any.
async fn create(
    connection: &Connection,
    draft: &Draft,
    plan: Plan,
) -> Result<(String, Option<String>), (Option<Field>, String)> {
    let manager = ManagerProxy::new(connection)
        .await
        .map_err(|e| (None, describe(&e)))?;
    let mut made: Vec<String> = Vec::new();
    for volume in &plan.volumes {
        let result = match volume {
            NewVolume::Import {
                name,
                source,
                format,
            } => manager.import_volume(name, source, format).await,
            NewVolume::Create { name, size } => manager.create_volume(name, *size, "qcow2").await,
        };
        if let Err(err) = result {
            remove_volumes(&manager, &made).await;
            let field = match volume {
                NewVolume::Import { .. } => Field::Image,
                NewVolume::Create { .. } => Field::NewDisk,
            };
            return Err((Some(field), describe(&err)));
        }
        made.push(volume.name().to_string());
    }
    let path = match manager.define(&plan.definition.to_json()).await {
        Ok(path) => path,
        Err(err) => {
            remove_volumes(&manager, &made).await;
            let field = match &err {
                zbus::Error::MethodError(name, message, _) => {
                    plan::refused_field(draft, name.as_str(), message.as_deref().unwrap_or(""))
                }
                _ => None,
            };
            return Err((field, describe(&err)));
        }
    };
    let mut warning = None;
    if plan.start {
        let started = match VmProxy::builder(connection).path(path.as_str()) {
            Ok(builder) => match builder.build().await {
                Ok(vm) => vm.start().await,
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        warning = started.err().map(|e| describe(&e));
    }
    Ok((path.to_string(), warning))
}

async fn remove_volumes(manager: &ManagerProxy<'_>, names: &[String]) {
    for name in names {
        // A volume that cannot be removed now stays; it is in the pool for the user to see.
        let _ = manager.delete_volume(name).await;
    }
}

fn step_title(step: Step) -> String {
    match step {
        Step::Source => gettext("Install source"),
        Step::Review => gettext("What the source is"),
        Step::Resources => gettext("Memory and CPUs"),
        Step::Storage => gettext("Storage"),
        Step::Finish => gettext("Name and network"),
    }
}

/// Emits `Edited(field)` when the user changes `widget`, not when the code fills it in.
fn on_edit<W: IsA<gtk::Editable>>(
    widget: &W,
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    field: Option<Field>,
) {
    let edit = user_edit(sender, filling, move || NewVmMsg::Edited(field));
    widget.connect_changed(move |_| edit());
}

/// A callback that sends `message()` when the user changed a widget, and does nothing while
/// the code fills the widgets in from the draft.
fn user_edit(
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    message: impl Fn() -> NewVmMsg + 'static,
) -> impl Fn() + 'static {
    let input = sender.input_sender().clone();
    let filling = filling.clone();
    move || {
        if !filling.get() {
            input.emit(message());
        }
    }
}

/// A spin button's value changes when its text is committed (Enter, leaving it, the arrows),
/// not with every key: both count as edits.
fn on_spin_edit(
    spin: &gtk::SpinButton,
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    field: Field,
) {
    on_edit(spin, sender, filling, Some(field));
    let edit = user_edit(sender, filling, move || NewVmMsg::Edited(Some(field)));
    spin.connect_value_changed(move |_| edit());
}

fn error_for(errors: &mut HashMap<Field, FieldError>, group: &adw::PreferencesGroup, field: Field) {
    errors.insert(field, FieldError::below(group));
}

fn file_row(
    group: &adw::PreferencesGroup,
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    errors: &mut HashMap<Field, FieldError>,
    title: &str,
    field: Field,
) -> adw::EntryRow {
    let row = adw::EntryRow::builder().title(title).build();
    let choose = gtk::Button::builder()
        .icon_name("document-open-symbolic")
        .tooltip_text(gettext("Choose a File…"))
        .valign(gtk::Align::Center)
        .css_classes(["flat"])
        .build();
    choose.update_property(&[gtk::accessible::Property::Label(
        &gettext("Choose {what}…").replace("{what}", title),
    )]);
    let input = sender.input_sender().clone();
    choose.connect_clicked(move |_| input.emit(NewVmMsg::Choose(field)));
    row.add_suffix(&choose);
    on_edit(&row, sender, filling, Some(field));
    group.add(&row);
    error_for(errors, group, field);
    row
}

fn spin_row(
    group: &adw::PreferencesGroup,
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    title: &str,
    range: (f64, f64),
    step: f64,
    field: Field,
) -> (adw::ActionRow, gtk::SpinButton) {
    let spin = gtk::SpinButton::with_range(range.0, range.1, step);
    spin.set_valign(gtk::Align::Center);
    spin.set_numeric(true);
    spin.update_property(&[gtk::accessible::Property::Label(title)]);
    let row = adw::ActionRow::builder()
        .title(title)
        .activatable_widget(&spin)
        .build();
    row.add_suffix(&spin);
    on_spin_edit(&spin, sender, filling, field);
    group.add(&row);
    (row, spin)
}

/// A row of three choices' radio buttons: a check button as the prefix of an action row.
fn choice_row(
    group: &adw::PreferencesGroup,
    title: &str,
    subtitle: &str,
    leader: Option<&gtk::CheckButton>,
) -> (adw::ActionRow, gtk::CheckButton) {
    let check = gtk::CheckButton::builder()
        .valign(gtk::Align::Center)
        .build();
    check.set_group(leader);
    let row = adw::ActionRow::builder()
        .title(title)
        .subtitle(subtitle)
        .activatable_widget(&check)
        .build();
    row.add_prefix(&check);
    group.add(&row);
    (row, check)
}

fn switch_row(
    group: &adw::PreferencesGroup,
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    title: &str,
    subtitle: &str,
) -> gtk::Switch {
    let switch = gtk::Switch::builder().valign(gtk::Align::Center).build();
    let row = adw::ActionRow::builder()
        .title(title)
        .subtitle(subtitle)
        .activatable_widget(&switch)
        .build();
    row.add_suffix(&switch);
    group.add(&row);
    let edit = user_edit(sender, filling, || NewVmMsg::Edited(None));
    switch.connect_active_notify(move |_| edit());
    switch
}

fn forward_row(
    group: &adw::PreferencesGroup,
    sender: &ComponentSender<NewVmWizard>,
    filling: &Rc<Cell<bool>>,
    index: usize,
) -> ForwardRow {
    let port = |placeholder: &str| {
        let entry = gtk::Entry::builder()
            .placeholder_text(placeholder)
            .width_chars(6)
            .input_purpose(gtk::InputPurpose::Digits)
            .valign(gtk::Align::Center)
            .build();
        entry.update_property(&[gtk::accessible::Property::Label(
            &gettext("{port}, forward {n}")
                .replace("{port}", placeholder)
                .replace("{n}", &(index + 1).to_string()),
        )]);
        on_edit(&entry, sender, filling, Some(Field::Forward(index)));
        entry
    };
    let host = port(&gettext("Host port"));
    let guest = port(&gettext("Guest port"));
    let udp = gtk::DropDown::from_strings(&["TCP", "UDP"]);
    udp.set_valign(gtk::Align::Center);
    udp.update_property(&[gtk::accessible::Property::Label(
        &gettext("Protocol, forward {n}").replace("{n}", &(index + 1).to_string()),
    )]);
    let edit = user_edit(sender, filling, move || {
        NewVmMsg::Edited(Some(Field::Forward(index)))
    });
    udp.connect_selected_notify(move |_| edit());
    let remove = gtk::Button::builder()
        .icon_name("user-trash-symbolic")
        .valign(gtk::Align::Center)
        .css_classes(["flat"])
        .tooltip_text(gettext("Remove"))
        .build();
    remove.update_property(&[gtk::accessible::Property::Label(
        &gettext("Remove forward {n}").replace("{n}", &(index + 1).to_string()),
    )]);
    let input = sender.input_sender().clone();
    remove.connect_clicked(move |_| input.emit(NewVmMsg::RemoveForward(index)));
    let row = adw::ActionRow::builder()
        .title(gettext("Forward {n}").replace("{n}", &(index + 1).to_string()))
        .subtitle(gettext("localhost:host port reaches the guest port"))
        .build();
    row.add_suffix(&host);
    row.add_suffix(&gtk::Label::new(Some("→")));
    row.add_suffix(&guest);
    row.add_suffix(&udp);
    row.add_suffix(&remove);
    group.add(&row);
    let error = FieldError::below(group);
    ForwardRow {
        row,
        host,
        guest,
        udp,
        error,
    }
}

fn page(stack: &gtk::Stack, step: Step, groups: &[&adw::PreferencesGroup]) {
    let page = adw::PreferencesPage::new();
    for group in groups {
        page.add(*group);
    }
    stack.add_named(&page, Some(step.name()));
}

fn build_ui(
    window: &adw::Window,
    sender: &ComponentSender<NewVmWizard>,
    limits: &HostLimits,
    filling: &Rc<Cell<bool>>,
) -> Ui {
    let mut errors = HashMap::new();
    let stack = gtk::Stack::builder()
        .transition_type(gtk::StackTransitionType::SlideLeftRight)
        .vexpand(true)
        .build();

    // 1. Install source.
    let how = adw::PreferencesGroup::builder()
        .title(gettext("How will the VM boot?"))
        .build();
    let (_, source_kernel) = choice_row(
        &how,
        &gettext("Linux kernel"),
        &gettext("Boot a kernel and initial RAM disk directly, with a command line"),
        None,
    );
    let (_, source_import) = choice_row(
        &how,
        &gettext("Import a disk image"),
        &gettext("Use an existing raw or qcow2 disk, booted with a kernel"),
        Some(&source_kernel),
    );
    let (_, source_sample) = choice_row(
        &how,
        &gettext("Sample VM “debian-tiny”"),
        &gettext("A small Debian system with a shell, from Hangar's guest kit"),
        Some(&source_kernel),
    );
    for (check, source) in [
        (&source_kernel, Source::Kernel),
        (&source_import, Source::Import),
        (&source_sample, Source::Sample),
    ] {
        let choose = user_edit(sender, filling, move || NewVmMsg::Source(source));
        check.connect_toggled(move |check| {
            if check.is_active() {
                choose();
            }
        });
    }
    let files = adw::PreferencesGroup::builder()
        .title(gettext("Files"))
        .build();
    let image = file_row(
        &files,
        sender,
        filling,
        &mut errors,
        &gettext("Disk image"),
        Field::Image,
    );
    let kernel = file_row(
        &files,
        sender,
        filling,
        &mut errors,
        &gettext("Kernel"),
        Field::Kernel,
    );
    let initrd = file_row(
        &files,
        sender,
        filling,
        &mut errors,
        &gettext("Initial RAM disk (optional)"),
        Field::Initrd,
    );
    let cmdline = adw::EntryRow::builder()
        .title(gettext("Kernel command line"))
        .build();
    on_edit(&cmdline, sender, filling, Some(Field::Cmdline));
    files.add(&cmdline);
    error_for(&mut errors, &files, Field::Cmdline);
    page(&stack, Step::Source, &[&how, &files]);

    // 2. What the source is.
    let review = adw::PreferencesGroup::builder()
        .title(gettext("Kernel"))
        .description(gettext("Read from the files you chose."))
        .build();
    let info_row = |group: &adw::PreferencesGroup, title: &str| {
        let row = adw::ActionRow::builder().title(title).build();
        row.add_css_class("property");
        group.add(&row);
        row
    };
    let review_kernel = info_row(&review, &gettext("Kind"));
    let review_version = info_row(&review, &gettext("Version"));
    let review_initrd = info_row(&review, &gettext("Initial RAM disk"));
    let review_group_image = adw::PreferencesGroup::builder()
        .title(gettext("Disk image"))
        .build();
    let review_image = info_row(&review_group_image, &gettext("Format"));
    let review_image_size = info_row(&review_group_image, &gettext("Size"));
    page(&stack, Step::Review, &[&review, &review_group_image]);

    // 3. Memory and CPUs.
    let resources = adw::PreferencesGroup::builder()
        .title(gettext("Memory and CPUs"))
        .build();
    let (memory_row, memory) = spin_row(
        &resources,
        sender,
        filling,
        &gettext("Memory (MiB)"),
        (
            0.0,
            (limits.memory >> 20).max(plan::MIN_MEMORY_MIB) as f64 * 2.0,
        ),
        64.0,
        Field::Memory,
    );
    error_for(&mut errors, &resources, Field::Memory);
    let (vcpus_row, vcpus) = spin_row(
        &resources,
        sender,
        filling,
        &gettext("CPUs"),
        (0.0, f64::from(limits.max_vcpus() * 2)),
        1.0,
        Field::Vcpus,
    );
    error_for(&mut errors, &resources, Field::Vcpus);
    page(&stack, Step::Resources, &[&resources]);

    // 4. Storage.
    let storage_group = adw::PreferencesGroup::new();
    let (new_row, storage_new) = choice_row(
        &storage_group,
        &gettext("Create a new disk"),
        &gettext("A qcow2 volume in the default pool; it takes space only as the guest writes"),
        None,
    );
    let disk_size = gtk::SpinButton::with_range(0.0, plan::MAX_DISK_GIB as f64, 1.0);
    disk_size.set_valign(gtk::Align::Center);
    disk_size.set_numeric(true);
    disk_size.update_property(&[gtk::accessible::Property::Label(&gettext(
        "Disk size (GiB)",
    ))]);
    on_spin_edit(&disk_size, sender, filling, Field::NewDisk);
    new_row.add_suffix(&disk_size);
    new_row.add_suffix(&gtk::Label::new(Some(&gettext("GiB"))));
    error_for(&mut errors, &storage_group, Field::NewDisk);
    let (_, storage_existing) = choice_row(
        &storage_group,
        &gettext("Use an existing volume"),
        &gettext("A disk already in the storage pool"),
        Some(&storage_new),
    );
    let volume_names = gtk::StringList::new(&[]);
    let volumes = adw::ComboRow::builder()
        .title(gettext("Volume"))
        .model(&volume_names)
        .build();
    let edit = user_edit(sender, filling, || {
        NewVmMsg::Edited(Some(Field::ExistingVolume))
    });
    volumes.connect_selected_notify(move |_| edit());
    storage_group.add(&volumes);
    error_for(&mut errors, &storage_group, Field::ExistingVolume);
    let (_, storage_none) = choice_row(
        &storage_group,
        &gettext("No disk"),
        &gettext("The VM runs from its initial RAM disk only"),
        Some(&storage_new),
    );
    for (check, storage) in [
        (&storage_new, Storage::New),
        (&storage_existing, Storage::Existing),
        (&storage_none, Storage::None),
    ] {
        let choose = user_edit(sender, filling, move || NewVmMsg::Storage(storage));
        check.connect_toggled(move |check| {
            if check.is_active() {
                choose();
            }
        });
    }
    page(&stack, Step::Storage, &[&storage_group]);

    // 5. Name and network.
    let naming = adw::PreferencesGroup::builder()
        .title(gettext("Name"))
        .build();
    let name = adw::EntryRow::builder().title(gettext("Name")).build();
    on_edit(&name, sender, filling, Some(Field::Name));
    naming.add(&name);
    error_for(&mut errors, &naming, Field::Name);
    let networking = adw::PreferencesGroup::builder()
        .title(gettext("Network"))
        .build();
    let network = switch_row(
        &networking,
        sender,
        filling,
        &gettext("User-mode network"),
        &gettext("The VM reaches the network through passt; no root needed"),
    );
    let add_forward = gtk::Button::builder()
        .icon_name("list-add-symbolic")
        .css_classes(["flat"])
        .tooltip_text(gettext("Add Port Forward"))
        .build();
    add_forward.update_property(&[gtk::accessible::Property::Label(&gettext(
        "Add Port Forward",
    ))]);
    let input = sender.input_sender().clone();
    add_forward.connect_clicked(move |_| input.emit(NewVmMsg::AddForward));
    let forwards_group = adw::PreferencesGroup::builder()
        .title(gettext("Port forwards"))
        .description(gettext(
            "Reach a service in the guest from this host, e.g. host port 2222 to guest port 22 for SSH.",
        ))
        .header_suffix(&add_forward)
        .build();
    let before = adw::PreferencesGroup::new();
    let customize = switch_row(
        &before,
        sender,
        filling,
        &gettext("Customize before start"),
        &gettext("Define the VM and open its hardware details instead of starting it"),
    );
    page(
        &stack,
        Step::Finish,
        &[&naming, &networking, &forwards_group, &before],
    );

    // The header: Cancel, the step, Back and Next.
    let title = adw::WindowTitle::new(&gettext("New Virtual Machine"), "");
    let header = adw::HeaderBar::builder()
        .title_widget(&title)
        .show_end_title_buttons(false)
        .show_start_title_buttons(false)
        .build();
    let cancel = gtk::Button::with_label(&gettext("Cancel"));
    let input = sender.input_sender().clone();
    cancel.connect_clicked(move |_| input.emit(NewVmMsg::Cancel));
    header.pack_start(&cancel);
    let next = gtk::Button::builder()
        .label(gettext("Next"))
        .css_classes(["suggested-action"])
        .build();
    let input = sender.input_sender().clone();
    next.connect_clicked(move |_| input.emit(NewVmMsg::Next));
    let back = gtk::Button::with_label(&gettext("Back"));
    let input = sender.input_sender().clone();
    back.connect_clicked(move |_| input.emit(NewVmMsg::Back));
    header.pack_end(&next);
    header.pack_end(&back);
    window.set_default_widget(Some(&next));

    let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
    content.append(&header);
    content.append(&stack);
    let toasts = adw::ToastOverlay::new();
    toasts.set_child(Some(&content));
    window.set_content(Some(&toasts));
    let escape = gtk::ShortcutController::new();
    let input = sender.input_sender().clone();
    escape.add_shortcut(gtk::Shortcut::new(
        gtk::ShortcutTrigger::parse_string("Escape"),
        Some(gtk::CallbackAction::new(move |_, _| {
            input.emit(NewVmMsg::Cancel);
            gtk::glib::Propagation::Stop
        })),
    ));
    window.add_controller(escape);

    Ui {
        stack,
        title,
        back,
        next,
        cancel,
        toasts,
        source_kernel,
        source_import,
        source_sample,
        image,
        kernel,
        initrd,
        cmdline,
        review_kernel,
        review_version,
        review_initrd,
        review_image,
        review_image_size,
        review_group_image,
        memory,
        memory_row,
        vcpus,
        vcpus_row,
        storage_group,
        storage_new,
        storage_existing,
        storage_none,
        disk_size,
        volumes,
        volume_names,
        name,
        network,
        forwards_group,
        forwards: Vec::new(),
        customize,
        errors,
    }
}
