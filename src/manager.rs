//! The manager window, "Hangar": the connection to hangard on this host, a warning when KVM
//! cannot run guests at full speed, and the list of VMs with their state and usage sparklines,
//! kept current from hangard's signals.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use adw::prelude::*;
use gettextrs::gettext;
use gtk::gio;
use hangar_engine::host::capabilities::{Acceleration, HostCapabilities};
use hangar_engine::host::stats::Sample;
use relm4::prelude::*;
use zbus::Connection;

use crate::connection::{self, HostEvent, VmAction, VmInfo};
use crate::delete_dialog;
use crate::force_off_dialog;
use crate::new_vm::{plan::HostLimits, NewVmInit, NewVmMsg, NewVmOutput, NewVmWizard};
use crate::settings::{self, COLUMN_KEYS};
use crate::stats_history::{Series, StatsHistory};
use crate::vm_list;
use crate::vm_window::{VmWindow, VmWindowInit, VmWindowMsg, VmWindowOutput};
use crate::widgets::graph::Graph;

/// Samples shown in a sparkline.
const SPARK_SLOTS: usize = 40;

pub struct ManagerInit {
    pub show_vm: Option<String>,
}

/// One VM's row and what it shows.
struct VmRow {
    info: VmInfo,
    history: StatsHistory,
    row: gtk::ListBoxRow,
    icon: gtk::Image,
    name: gtk::Label,
    state: gtk::Label,
    graphs: [(Series, Graph); 4],
}

pub struct ManagerWindow {
    window: adw::ApplicationWindow,
    connection: Option<Connection>,
    /// Paths of active VMs, read by the stats thread.
    active: Arc<Mutex<Vec<String>>>,
    rows: HashMap<String, VmRow>,
    selected: Option<String>,
    search: String,
    columns: HashMap<&'static str, bool>,
    settings: Option<gio::Settings>,
    /// Milliseconds between stats samples, read by the stats thread.
    interval: Arc<AtomicU64>,
    vm_windows: HashMap<String, Controller<VmWindow>>,
    capabilities: Option<HostCapabilities>,
    wizard: Option<Controller<NewVmWizard>>,
    /// A VM the assistant just created, to open once its row is there: (path, page).
    pending_open: Option<(String, &'static str)>,
    /// `--show-vm`: the VM to open once connected; the manager stays hidden.
    show_vm: Option<String>,
    hidden: bool,
    actions: HashMap<&'static str, gio::SimpleAction>,
    /// VM names by object path, for sorting the list.
    names: Rc<RefCell<HashMap<String, String>>>,
    ui: Ui,
}

struct Ui {
    toasts: adw::ToastOverlay,
    status: gtk::Label,
    reconnect: gtk::Button,
    warning: gtk::Box,
    warning_title: gtk::Label,
    warning_text: gtk::Label,
    list: gtk::ListBox,
    stack: gtk::Stack,
    disconnected_page: adw::StatusPage,
    search_bar: gtk::SearchBar,
    context_menu: gtk::PopoverMenu,
}

#[derive(Debug)]
pub enum ManagerMsg {
    Reconnect,
    Selected(Option<String>),
    Act(VmAction),
    TogglePause,
    Open,
    OpenPath(String),
    Delete,
    DeleteConfirmed(String, Vec<String>),
    NewVm,
    Created {
        path: String,
        customize: bool,
        warning: Option<String>,
    },
    AddSample,
    Search(String),
    Column(&'static str, bool),
    SettingsChanged(String),
    ForceOffConfirmed(String),
    Preferences,
    Shortcuts,
    About,
    ContextMenu(f64, f64),
    VmWindowClosed(String),
}

#[derive(Debug)]
pub enum ManagerCmd {
    Host(HostEvent),
    Done(Result<(), String>),
    Stats(Vec<(String, Sample)>),
    History(String, Vec<Sample>),
    Found(Result<String, String>),
}

/// Which series each graph column of the list shows, in `settings::COLUMN_KEYS` order.
const COLUMN_SERIES: [Series; 4] = [Series::Cpu, Series::Memory, Series::Disk, Series::Network];

impl Component for ManagerWindow {
    type CommandOutput = ManagerCmd;
    type Input = ManagerMsg;
    type Output = ();
    type Init = ManagerInit;
    type Root = adw::ApplicationWindow;
    type Widgets = ();

    fn init_root() -> Self::Root {
        adw::ApplicationWindow::builder()
            .title(gettext("Hangar"))
            .default_width(720)
            .default_height(520)
            .build()
    }

    fn init(
        init: Self::Init,
        window: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let names = Rc::default();
        let ui = build_ui(&window, &sender, &names);
        let mut model = ManagerWindow {
            window: window.clone(),
            connection: None,
            active: Arc::default(),
            rows: HashMap::new(),
            selected: None,
            search: String::new(),
            columns: HashMap::new(),
            interval: Arc::new(AtomicU64::new(1000)),
            settings: settings::settings(),
            vm_windows: HashMap::new(),
            capabilities: None,
            wizard: None,
            pending_open: None,
            hidden: init.show_vm.is_some(),
            show_vm: init.show_vm,
            actions: HashMap::new(),
            names,
            ui,
        };
        model.read_settings();
        model.install_actions(&sender);
        model.update_actions();
        model.watch(&sender);
        model.sample_stats(&sender);
        ComponentParts { model, widgets: () }
    }

    fn update(&mut self, message: Self::Input, sender: ComponentSender<Self>, _root: &Self::Root) {
        match message {
            ManagerMsg::Reconnect => {
                self.ui.status.set_label(&gettext("Connecting…"));
                self.watch(&sender);
            }
            ManagerMsg::Selected(path) => {
                self.selected = path;
                self.update_actions();
            }
            ManagerMsg::Act(VmAction::Destroy)
                if settings::confirm(self.settings.as_ref(), "confirm-force-off") =>
            {
                if let Some(vm) = self.selected_vm() {
                    let path = vm.path.clone();
                    let input = sender.input_sender().clone();
                    force_off_dialog::ask(&self.window, &vm.name, move || {
                        input.emit(ManagerMsg::ForceOffConfirmed(path.clone()));
                    });
                }
            }
            ManagerMsg::Act(action) => {
                if let Some(path) = self.selected.clone() {
                    self.act(&sender, path, action);
                }
            }
            ManagerMsg::ForceOffConfirmed(path) => self.act(&sender, path, VmAction::Destroy),
            ManagerMsg::TogglePause => {
                if let Some(vm) = self.selected_vm() {
                    let action = if vm.state == "paused" {
                        VmAction::Resume
                    } else {
                        VmAction::Suspend
                    };
                    let path = vm.path.clone();
                    self.act(&sender, path, action);
                }
            }
            ManagerMsg::Open => {
                if let Some(path) = self.selected.clone() {
                    self.open_vm(&sender, &path);
                }
            }
            ManagerMsg::OpenPath(path) => self.open_vm(&sender, &path),
            ManagerMsg::Delete if !settings::confirm(self.settings.as_ref(), "confirm-delete") => {
                if let Some(vm) = self.selected_vm() {
                    // Without asking, nothing that cannot be recreated goes: the volumes stay.
                    let (path, name) = (vm.path.clone(), vm.name.clone());
                    sender.input(ManagerMsg::DeleteConfirmed(path, Vec::new()));
                    if !vm.disks.is_empty() {
                        self.toast(
                            &gettext("Deleted {name}; its volumes are kept in the pool.")
                                .replace("{name}", &name),
                        );
                    }
                }
            }
            ManagerMsg::Delete => {
                if let Some(vm) = self.selected_vm() {
                    let vm = vm.clone();
                    let path = vm.path.clone();
                    let input = sender.input_sender().clone();
                    delete_dialog::ask(&self.window, &vm, move |volumes| {
                        input.emit(ManagerMsg::DeleteConfirmed(path.clone(), volumes));
                    });
                }
            }
            ManagerMsg::DeleteConfirmed(path, volumes) => {
                if let Some(connection) = self.connection.clone() {
                    sender.oneshot_command(async move {
                        ManagerCmd::Done(connection::delete_vm(connection, path, volumes).await)
                    });
                }
            }
            ManagerMsg::NewVm => self.new_vm(&sender),
            ManagerMsg::Created {
                path,
                customize,
                warning,
            } => {
                if let Some(why) = warning {
                    self.toast(
                        &gettext("The VM was created but did not start: {reason}")
                            .replace("{reason}", &why),
                    );
                }
                let page = if customize { "details" } else { "console" };
                self.pending_open = Some((path, page));
                self.open_pending(&sender);
            }
            ManagerMsg::AddSample => {
                if let Some(connection) = self.connection.clone() {
                    sender.oneshot_command(async move {
                        ManagerCmd::Done(connection::add_sample(connection).await)
                    });
                }
            }
            ManagerMsg::Search(text) => {
                self.search = text;
                self.apply_search();
            }
            ManagerMsg::Column(key, shown) => {
                self.columns.insert(key, shown);
                self.show_columns();
            }
            ManagerMsg::SettingsChanged(key) => {
                self.read_settings();
                self.show_columns();
                if key == "stats-interval" {
                    self.push_stats_interval(&sender);
                }
            }
            ManagerMsg::Preferences => {
                crate::preferences::show(&self.window, self.settings.as_ref())
            }
            ManagerMsg::Shortcuts => crate::shortcuts::show(&self.window),
            ManagerMsg::About => crate::about::show(&self.window),
            ManagerMsg::ContextMenu(x, y) => {
                if let Some(row) = self.ui.list.row_at_y(y as i32) {
                    self.ui.list.select_row(Some(&row));
                    self.ui
                        .context_menu
                        .set_pointing_to(Some(&gtk::gdk::Rectangle::new(x as i32, y as i32, 1, 1)));
                    self.ui.context_menu.popup();
                }
            }
            ManagerMsg::VmWindowClosed(path) => {
                self.vm_windows.remove(&path);
                if self.hidden && self.vm_windows.is_empty() {
                    self.window.close();
                    relm4::main_application().quit();
                }
            }
        }
    }

    fn update_cmd(
        &mut self,
        message: Self::CommandOutput,
        sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            ManagerCmd::Host(event) => self.host_event(&sender, event),
            ManagerCmd::Done(Ok(())) => {}
            ManagerCmd::Done(Err(message)) => self.toast(&message),
            ManagerCmd::Stats(samples) => {
                for (path, sample) in samples {
                    if let Some(row) = self.rows.get_mut(&path) {
                        row.history.push(sample);
                        refresh_graphs(row);
                    }
                    if let Some(window) = self.vm_windows.get(&path) {
                        window.emit(VmWindowMsg::Sample(sample));
                    }
                }
            }
            ManagerCmd::History(path, samples) => {
                if let Some(row) = self.rows.get_mut(&path) {
                    row.history.extend(samples);
                    refresh_graphs(row);
                }
            }
            ManagerCmd::Found(Ok(path)) => self.open_vm(&sender, &path),
            ManagerCmd::Found(Err(message)) => {
                // The VM asked for is not there: show the manager rather than nothing.
                self.hidden = false;
                self.window.present();
                self.toast(&message);
            }
        }
    }
}

impl ManagerWindow {
    fn watch(&self, sender: &ComponentSender<Self>) {
        sender.command(|out, shutdown| {
            shutdown
                .register(async move {
                    let (events, receiver) = relm4::channel::<HostEvent>();
                    let forward = async {
                        while let Some(event) = receiver.recv().await {
                            if out.send(ManagerCmd::Host(event)).is_err() {
                                break;
                            }
                        }
                    };
                    futures_util::future::join(connection::watch(events), forward).await;
                })
                .drop_on_shutdown()
        });
    }

    /// Samples the active VMs' stats on a thread of its own, at hangard's stats interval.
    /// This polls stats, not the list: the list changes only through signals.
    fn sample_stats(&self, sender: &ComponentSender<Self>) {
        let active = self.active.clone();
        let interval = self.interval.clone();
        let out = sender.command_sender().clone();
        std::thread::spawn(move || {
            let mut bus: Option<zbus::blocking::Connection> = None;
            loop {
                let ms = interval.load(Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let paths = active.lock().unwrap().clone();
                if !paths.is_empty() && bus.is_none() {
                    bus = zbus::blocking::Connection::session().ok();
                }
                let samples: Vec<(String, Sample)> = match &bus {
                    Some(bus) => paths
                        .into_iter()
                        .filter_map(|path| {
                            let sample = hangar_engine::host::api::VmProxyBlocking::builder(bus)
                                .path(path.as_str())
                                .ok()?
                                .build()
                                .ok()?
                                .get_stats()
                                .ok()?;
                            Some((path, sample))
                        })
                        .collect(),
                    None => Vec::new(),
                };
                // Sending also tells whether the window is still there.
                if out.send(ManagerCmd::Stats(samples)).is_err() {
                    return;
                }
            }
        });
    }

    fn host_event(&mut self, sender: &ComponentSender<Self>, event: HostEvent) {
        match event {
            HostEvent::Connected {
                connection,
                capabilities,
                vms,
            } => {
                self.connection = Some(connection.clone());
                self.ui.status.set_label(&gettext("Connected"));
                self.ui.reconnect.set_visible(false);
                self.show_capabilities(capabilities.as_ref());
                self.capabilities = capabilities;
                self.push_stats_interval(sender);
                let gone: Vec<String> = self
                    .rows
                    .keys()
                    .filter(|p| !vms.iter().any(|vm| &vm.path == *p))
                    .cloned()
                    .collect();
                for path in gone {
                    self.remove_vm(&path);
                }
                for vm in vms {
                    self.upsert_vm(sender, vm);
                }
                for window in self.vm_windows.values() {
                    window.emit(VmWindowMsg::Reconnected(connection.clone()));
                }
                if let Some(name) = self.show_vm.take() {
                    sender.oneshot_command(async move {
                        ManagerCmd::Found(connection::lookup(&connection, &name).await)
                    });
                }
            }
            HostEvent::Disconnected(why) => {
                self.connection = None;
                self.ui.status.set_label(&gettext("Not connected"));
                self.ui.reconnect.set_visible(true);
                self.ui.disconnected_page.set_description(Some(&why));
                if self.hidden && self.show_vm.is_some() {
                    self.hidden = false;
                    self.window.present();
                }
            }
            HostEvent::VmAdded(vm) => {
                self.upsert_vm(sender, vm);
                self.open_pending(sender);
                self.tell_wizard_names();
            }
            HostEvent::VmRemoved(path) => {
                self.remove_vm(&path);
                self.tell_wizard_names();
            }
            HostEvent::VmChanged { path, properties } => {
                if let Some(row) = self.rows.get_mut(&path) {
                    let before = row.info.state.clone();
                    row.info.apply(&properties);
                    let info = row.info.clone();
                    if info.state != before && info.state == "running" {
                        row.history.clear();
                    }
                    self.show_row(&path);
                    self.ui.list.invalidate_sort();
                    if let Some(window) = self.vm_windows.get(&path) {
                        window.emit(VmWindowMsg::Info(info));
                    }
                }
            }
        }
        self.update_actions();
        self.update_stack();
    }

    fn tell_wizard_names(&self) {
        if let Some(wizard) = &self.wizard {
            wizard.emit(NewVmMsg::Names(self.vm_names()));
        }
    }

    fn show_capabilities(&self, capabilities: Option<&HostCapabilities>) {
        let Some(caps) = capabilities else {
            self.ui.warning.set_visible(false);
            return;
        };
        let (title, text) = match caps.acceleration {
            Acceleration::Hardware => {
                self.ui.warning.set_visible(false);
                return;
            }
            Acceleration::Emulated => (
                gettext("Guests are emulated"),
                gettext(
                    "KVM on this host has no hardware virtualization underneath (kvm_pvm): guests run under instruction emulation, orders of magnitude slower than normal. Small test guests work; for real guests, use a machine with VT-x or AMD-V enabled in its firmware (kvm_intel or kvm_amd).",
                ),
            ),
            Acceleration::None => (
                gettext("KVM is not available"),
                format!(
                    "{}\n{}",
                    gettext("Virtual machines cannot start on this host."),
                    caps.kvm_problem
                ),
            ),
        };
        self.ui.warning_title.set_label(&title);
        self.ui.warning_text.set_label(&text);
        self.ui.warning.set_visible(true);
    }

    fn upsert_vm(&mut self, sender: &ComponentSender<Self>, vm: VmInfo) {
        let path = vm.path.clone();
        if let Some(row) = self.rows.get_mut(&path) {
            row.info = vm;
        } else {
            let row = self.new_row(sender, vm);
            self.ui.list.append(&row.row);
            self.rows.insert(path.clone(), row);
            // Graphs start full when the VM has been running a while.
            if let Some(connection) = self.connection.clone() {
                let p = path.clone();
                sender.oneshot_command(async move {
                    let history = connection::stats_history(&connection, &p).await;
                    ManagerCmd::History(p, history)
                });
            }
        }
        self.show_row(&path);
        self.ui.list.invalidate_sort();
    }

    fn remove_vm(&mut self, path: &str) {
        if let Some(row) = self.rows.remove(path) {
            self.ui.list.remove(&row.row);
        }
        self.names.borrow_mut().remove(path);
        if self.selected.as_deref() == Some(path) {
            self.selected = None;
        }
        if let Some(window) = self.vm_windows.get(path) {
            window.emit(VmWindowMsg::Removed);
        }
        self.refresh_active();
    }

    fn new_row(&self, sender: &ComponentSender<Self>, info: VmInfo) -> VmRow {
        let icon = gtk::Image::new();
        icon.set_pixel_size(16);
        let name = gtk::Label::builder()
            .xalign(0.0)
            .css_classes(["heading"])
            .ellipsize(gtk::pango::EllipsizeMode::End)
            .build();
        let state = gtk::Label::builder()
            .xalign(0.0)
            .css_classes(["dim-label", "caption"])
            .build();
        let names = gtk::Box::new(gtk::Orientation::Vertical, 2);
        names.set_hexpand(true);
        names.append(&name);
        names.append(&state);
        let line = gtk::Box::new(gtk::Orientation::Horizontal, 12);
        line.set_margin_top(6);
        line.set_margin_bottom(6);
        line.set_margin_start(12);
        line.set_margin_end(12);
        line.append(&icon);
        line.append(&names);
        let graphs = COLUMN_SERIES.map(|series| {
            let graph = Graph::new(SPARK_SLOTS, true);
            graph.set_size_request(80, 24);
            graph.set_valign(gtk::Align::Center);
            graph.set_visible(self.column_shown(series));
            graph.update_property(&[gtk::accessible::Property::Label(&series_title(series))]);
            line.append(&graph);
            (series, graph)
        });
        let row = gtk::ListBoxRow::builder()
            .child(&line)
            .name(info.path.as_str())
            .build();
        let input = sender.input_sender().clone();
        let path = info.path.clone();
        row.connect_activate(move |_| input.emit(ManagerMsg::OpenPath(path.clone())));
        VmRow {
            info,
            history: StatsHistory::default(),
            row,
            icon,
            name,
            state,
            graphs,
        }
    }

    fn show_row(&mut self, path: &str) {
        let Some(row) = self.rows.get(path) else {
            return;
        };
        let info = &row.info;
        self.names
            .borrow_mut()
            .insert(info.path.clone(), info.name.clone());
        row.name.set_label(&info.name);
        row.state.set_label(&vm_list::state_label(&info.state));
        row.icon
            .set_icon_name(Some(vm_list::state_icon(&info.state)));
        for state in ["running", "paused", "crashed"] {
            row.icon.remove_css_class(&format!("vm-state-{state}"));
        }
        row.icon.add_css_class(&format!("vm-state-{}", info.state));
        row.icon
            .update_property(&[gtk::accessible::Property::Label(&vm_list::state_label(
                &info.state,
            ))]);
        row.row
            .set_visible(vm_list::matches_search(&info.name, &self.search));
        row.row
            .update_property(&[gtk::accessible::Property::Label(&format!(
                "{} ({})",
                info.name,
                vm_list::state_label(&info.state)
            ))]);
        self.refresh_active();
    }

    fn refresh_active(&self) {
        *self.active.lock().unwrap() = self
            .rows
            .values()
            .filter(|r| r.info.is_active())
            .map(|r| r.info.path.clone())
            .collect();
    }

    fn apply_search(&self) {
        for row in self.rows.values() {
            row.row
                .set_visible(vm_list::matches_search(&row.info.name, &self.search));
        }
    }

    fn column_shown(&self, series: Series) -> bool {
        COLUMN_SERIES
            .iter()
            .position(|s| *s == series)
            .and_then(|i| self.columns.get(COLUMN_KEYS[i]).copied())
            .unwrap_or(series == Series::Cpu)
    }

    fn show_columns(&self) {
        for row in self.rows.values() {
            for (series, graph) in &row.graphs {
                graph.set_visible(self.column_shown(*series));
            }
        }
    }

    /// Takes the columns and the stats interval from the preferences.
    fn read_settings(&mut self) {
        let Some(settings) = &self.settings else {
            return;
        };
        for key in COLUMN_KEYS {
            self.columns.insert(key, settings.boolean(key));
        }
        self.interval.store(
            u64::from(settings.uint("stats-interval")),
            Ordering::Relaxed,
        );
    }

    /// hangard samples at the interval the preferences ask for.
    fn push_stats_interval(&self, sender: &ComponentSender<Self>) {
        let (Some(connection), Some(settings)) = (self.connection.clone(), &self.settings) else {
            return;
        };
        let ms = settings.uint("stats-interval");
        sender.oneshot_command(async move {
            ManagerCmd::Done(connection::set_stats_interval(&connection, ms).await)
        });
    }

    fn selected_vm(&self) -> Option<&VmInfo> {
        self.rows.get(self.selected.as_ref()?).map(|r| &r.info)
    }

    fn act(&self, sender: &ComponentSender<Self>, path: String, action: VmAction) {
        let Some(connection) = self.connection.clone() else {
            self.toast(&gettext("Not connected to hangard."));
            return;
        };
        sender.oneshot_command(async move {
            ManagerCmd::Done(connection::vm_action(connection, path, action).await)
        });
    }

    fn open_vm(&mut self, sender: &ComponentSender<Self>, path: &str) {
        self.open_vm_at(sender, path, None);
    }

    /// Opens the VM window, on `page` (console, serial, details, performance) if given.
    fn open_vm_at(&mut self, sender: &ComponentSender<Self>, path: &str, page: Option<&str>) {
        if let Some(window) = self.vm_windows.get(path) {
            if let Some(page) = page {
                window.emit(VmWindowMsg::ShowPage(page.to_string()));
            }
            window.widget().present();
            return;
        }
        let (Some(connection), Some(row)) = (self.connection.clone(), self.rows.get(path)) else {
            return;
        };
        let controller = VmWindow::builder()
            .launch(VmWindowInit {
                connection,
                info: row.info.clone(),
                page: page.map(str::to_string),
            })
            .forward(sender.input_sender(), |output| match output {
                VmWindowOutput::Closed(path) => ManagerMsg::VmWindowClosed(path),
            });
        relm4::main_application().add_window(controller.widget());
        controller.widget().present();
        self.vm_windows.insert(path.to_string(), controller);
    }

    /// Opens the New VM assistant, or brings back the one already open.
    fn new_vm(&mut self, sender: &ComponentSender<Self>) {
        let Some(connection) = self.connection.clone() else {
            self.toast(&gettext("Not connected to hangard."));
            return;
        };
        if let Some(wizard) = &self.wizard {
            if wizard.widget().is_visible() {
                wizard.widget().present();
                return;
            }
        }
        let limits = match &self.capabilities {
            Some(caps) => HostLimits::from_capabilities(caps),
            None => HostLimits {
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                memory: 1 << 30,
            },
        };
        let wizard = NewVmWizard::builder()
            .transient_for(&self.window)
            .launch(NewVmInit {
                connection,
                limits,
                taken_names: self.vm_names(),
            })
            .forward(sender.input_sender(), |output| match output {
                NewVmOutput::Created {
                    path,
                    customize,
                    warning,
                } => ManagerMsg::Created {
                    path,
                    customize,
                    warning,
                },
            });
        wizard.widget().present();
        self.wizard = Some(wizard);
    }

    fn vm_names(&self) -> Vec<String> {
        self.rows
            .values()
            .map(|row| row.info.name.clone())
            .collect()
    }

    /// Opens the VM the assistant created once hangard has announced it.
    fn open_pending(&mut self, sender: &ComponentSender<Self>) {
        let Some((path, page)) = self.pending_open.clone() else {
            return;
        };
        if self.rows.contains_key(&path) {
            self.pending_open = None;
            self.open_vm_at(sender, &path, Some(page));
        }
    }

    fn toast(&self, message: &str) {
        let toast = adw::Toast::new(message);
        toast.set_timeout(6);
        self.ui.toasts.add_toast(toast);
        if self.hidden {
            eprintln!("hangar: {message}");
        }
    }

    fn update_stack(&self) {
        let page = if self.connection.is_none() {
            "disconnected"
        } else if self.rows.is_empty() {
            "empty"
        } else {
            "list"
        };
        self.ui.stack.set_visible_child_name(page);
    }

    fn install_actions(&mut self, sender: &ComponentSender<Self>) {
        let entries: [(&'static str, ManagerMsgFactory); 13] = [
            ("vm-open", || ManagerMsg::Open),
            ("vm-run", || ManagerMsg::Act(VmAction::Start)),
            ("vm-pause", || ManagerMsg::TogglePause),
            ("vm-shutdown", || ManagerMsg::Act(VmAction::Shutdown)),
            ("vm-reboot", || ManagerMsg::Act(VmAction::Reboot)),
            ("vm-force-off", || ManagerMsg::Act(VmAction::Destroy)),
            ("vm-delete", || ManagerMsg::Delete),
            ("new-vm", || ManagerMsg::NewVm),
            ("add-sample", || ManagerMsg::AddSample),
            ("reconnect", || ManagerMsg::Reconnect),
            ("preferences", || ManagerMsg::Preferences),
            ("shortcuts", || ManagerMsg::Shortcuts),
            ("about", || ManagerMsg::About),
        ];
        for (name, message) in entries {
            let action = gio::SimpleAction::new(name, None);
            let input = sender.input_sender().clone();
            action.connect_activate(move |_, _| input.emit(message()));
            self.window.add_action(&action);
            self.actions.insert(name, action);
        }
        // Pure view actions, no model change.
        let search = gio::SimpleAction::new("search", None);
        let search_bar = self.ui.search_bar.clone();
        search
            .connect_activate(move |_, _| search_bar.set_search_mode(!search_bar.is_search_mode()));
        self.window.add_action(&search);
        let quit = gio::SimpleAction::new("quit", None);
        let window = self.window.clone();
        quit.connect_activate(move |_, _| window.close());
        self.window.add_action(&quit);
        // The list's graph columns: the preferences' keys when there are preferences.
        for key in COLUMN_KEYS {
            let action = match &self.settings {
                Some(settings) => settings.create_action(key),
                None => {
                    let shown = self
                        .columns
                        .get(key)
                        .copied()
                        .unwrap_or(key == COLUMN_KEYS[0]);
                    let action = gio::SimpleAction::new_stateful(key, None, &shown.to_variant());
                    let input = sender.input_sender().clone();
                    action.connect_change_state(move |action, state| {
                        if let Some(state) = state {
                            action.set_state(state);
                            input.emit(ManagerMsg::Column(
                                key,
                                state.get::<bool>().unwrap_or(false),
                            ));
                        }
                    });
                    action.upcast()
                }
            };
            self.window.add_action(&action);
        }
        if let Some(settings) = &self.settings {
            let input = sender.input_sender().clone();
            settings.connect_changed(None, move |_, key| {
                input.emit(ManagerMsg::SettingsChanged(key.to_string()));
            });
        }
        let app = relm4::main_application();
        app.set_accels_for_action("win.search", &["<Control>f"]);
        app.set_accels_for_action("win.vm-open", &["<Control>o"]);
        app.set_accels_for_action("win.vm-delete", &["Delete"]);
        app.set_accels_for_action("win.quit", &["<Control>q"]);
        app.set_accels_for_action("win.new-vm", &["<Control>n"]);
        app.set_accels_for_action("win.preferences", &["<Control>comma"]);
        app.set_accels_for_action("win.shortcuts", &["<Control>question"]);
    }

    fn update_actions(&self) {
        let state = self.selected_vm().map(|vm| vm.state.clone());
        let connected = self.connection.is_some();
        let can = |action: VmAction| {
            connected && state.as_deref().is_some_and(|s| vm_list::allows(s, action))
        };
        let enable = |name: &str, on: bool| {
            if let Some(action) = self.actions.get(name) {
                action.set_enabled(on);
            }
        };
        enable("vm-open", connected && state.is_some());
        enable("vm-run", can(VmAction::Start));
        enable("vm-pause", can(VmAction::Suspend) || can(VmAction::Resume));
        enable("vm-shutdown", can(VmAction::Shutdown));
        enable("vm-reboot", can(VmAction::Reboot));
        enable("vm-force-off", can(VmAction::Destroy));
        enable(
            "vm-delete",
            connected
                && state
                    .as_deref()
                    .is_some_and(|s| s == "shutoff" || s == "crashed"),
        );
        enable("add-sample", connected);
    }
}

type ManagerMsgFactory = fn() -> ManagerMsg;

pub fn series_title(series: Series) -> String {
    match series {
        Series::Cpu => gettext("CPU usage"),
        Series::Memory => gettext("Memory usage"),
        Series::Disk => gettext("Disk I/O"),
        Series::Network => gettext("Network I/O"),
    }
}

fn refresh_graphs(row: &VmRow) {
    for (series, graph) in &row.graphs {
        graph.set_values(
            row.history.values(*series, SPARK_SLOTS),
            row.history.scale_max(*series, SPARK_SLOTS),
        );
    }
}

fn icon_button(icon: &str, label: &str, action: &str) -> gtk::Button {
    let button = gtk::Button::builder()
        .icon_name(icon)
        .tooltip_text(label)
        .action_name(action)
        .build();
    button.update_property(&[gtk::accessible::Property::Label(label)]);
    button
}

fn build_ui(
    window: &adw::ApplicationWindow,
    sender: &ComponentSender<ManagerWindow>,
    names: &Rc<RefCell<HashMap<String, String>>>,
) -> Ui {
    let header = adw::HeaderBar::new();
    let new_vm = icon_button("list-add-symbolic", &gettext("New VM"), "win.new-vm");
    header.pack_start(&new_vm);
    header.pack_start(&icon_button(
        "document-open-symbolic",
        &gettext("Open"),
        "win.vm-open",
    ));
    header.pack_start(&icon_button(
        "media-playback-start-symbolic",
        &gettext("Run"),
        "win.vm-run",
    ));
    header.pack_start(&icon_button(
        "media-playback-pause-symbolic",
        &gettext("Pause"),
        "win.vm-pause",
    ));
    let shutdown_menu = gio::Menu::new();
    shutdown_menu.append(Some(&gettext("Shut Down")), Some("win.vm-shutdown"));
    shutdown_menu.append(Some(&gettext("Reboot")), Some("win.vm-reboot"));
    shutdown_menu.append(Some(&gettext("Force Off")), Some("win.vm-force-off"));
    let shutdown = adw::SplitButton::builder()
        .icon_name("system-shutdown-symbolic")
        .tooltip_text(gettext("Shut Down"))
        .action_name("win.vm-shutdown")
        .menu_model(&shutdown_menu)
        .build();
    shutdown.update_property(&[gtk::accessible::Property::Label(&gettext("Shut Down"))]);
    header.pack_start(&shutdown);

    let view_menu = gio::Menu::new();
    let columns = gio::Menu::new();
    for (key, series) in COLUMN_KEYS.iter().zip(COLUMN_SERIES) {
        columns.append(Some(&series_title(series)), Some(&format!("win.{key}")));
    }
    view_menu.append_section(Some(&gettext("Graphs in the list")), &columns);
    let other = gio::Menu::new();
    other.append(Some(&gettext("Add Sample VM")), Some("win.add-sample"));
    other.append(Some(&gettext("Delete VM")), Some("win.vm-delete"));
    other.append(Some(&gettext("Preferences")), Some("win.preferences"));
    other.append(Some(&gettext("Keyboard Shortcuts")), Some("win.shortcuts"));
    other.append(Some(&gettext("About Hangar")), Some("win.about"));
    other.append(Some(&gettext("Quit")), Some("win.quit"));
    view_menu.append_section(None, &other);
    let menu_button = gtk::MenuButton::builder()
        .icon_name("open-menu-symbolic")
        .menu_model(&view_menu)
        .tooltip_text(gettext("Main Menu"))
        .build();
    menu_button.update_property(&[gtk::accessible::Property::Label(&gettext("Main Menu"))]);
    header.pack_end(&menu_button);
    let search_button = gtk::ToggleButton::builder()
        .icon_name("system-search-symbolic")
        .tooltip_text(gettext("Search"))
        .build();
    search_button.update_property(&[gtk::accessible::Property::Label(&gettext("Search"))]);
    header.pack_end(&search_button);

    let search_entry = gtk::SearchEntry::new();
    search_entry.set_placeholder_text(Some(&gettext("Search by name")));
    search_entry.update_property(&[gtk::accessible::Property::Label(&gettext("Search by name"))]);
    let search_bar = gtk::SearchBar::builder().child(&search_entry).build();
    search_bar.connect_entry(&search_entry);
    search_bar.set_key_capture_widget(Some(window));
    search_button
        .bind_property("active", &search_bar, "search-mode-enabled")
        .bidirectional()
        .build();
    let input = sender.input_sender().clone();
    search_entry.connect_search_changed(move |entry| {
        input.emit(ManagerMsg::Search(entry.text().to_string()))
    });

    // The connection row.
    let host_icon = gtk::Image::from_icon_name("computer-symbolic");
    let host = gtk::Label::builder()
        .label(gettext("localhost (KVM)"))
        .xalign(0.0)
        .css_classes(["heading"])
        .hexpand(true)
        .build();
    let status = gtk::Label::builder()
        .label(gettext("Connecting…"))
        .css_classes(["dim-label"])
        .build();
    let reconnect = gtk::Button::builder()
        .label(gettext("Reconnect"))
        .action_name("win.reconnect")
        .visible(false)
        .build();
    let connection_row = gtk::Box::new(gtk::Orientation::Horizontal, 8);
    connection_row.set_margin_start(12);
    connection_row.set_margin_end(12);
    connection_row.set_margin_top(8);
    connection_row.set_margin_bottom(4);
    connection_row.append(&host_icon);
    connection_row.append(&host);
    connection_row.append(&status);
    connection_row.append(&reconnect);

    let warning_title = gtk::Label::builder()
        .xalign(0.0)
        .css_classes(["heading"])
        .build();
    let warning_text = gtk::Label::builder().xalign(0.0).wrap(true).build();
    let warning_icon = gtk::Image::from_icon_name("dialog-warning-symbolic");
    warning_icon.set_valign(gtk::Align::Start);
    let warning_words = gtk::Box::new(gtk::Orientation::Vertical, 4);
    warning_words.append(&warning_title);
    warning_words.append(&warning_text);
    let warning = gtk::Box::new(gtk::Orientation::Horizontal, 12);
    warning.add_css_class("host-warning");
    warning.set_margin_start(12);
    warning.set_margin_end(12);
    warning.set_margin_bottom(6);
    warning.append(&warning_icon);
    warning.append(&warning_words);
    warning.set_visible(false);

    let list = gtk::ListBox::new();
    list.add_css_class("boxed-list");
    list.set_selection_mode(gtk::SelectionMode::Single);
    list.update_property(&[gtk::accessible::Property::Label(&gettext(
        "Virtual machines",
    ))]);
    let sort_names = names.clone();
    list.set_sort_func(move |a, b| {
        let names = sort_names.borrow();
        let name = |row: &gtk::ListBoxRow| names.get(row.widget_name().as_str()).cloned();
        name(a).cmp(&name(b)).into()
    });
    let input = sender.input_sender().clone();
    list.connect_row_selected(move |_, row| {
        // Each row is named by its VM's object path.
        let path = row.map(|row| row.widget_name().to_string());
        input.emit(ManagerMsg::Selected(path));
    });
    let context_menu_model = gio::Menu::new();
    let open_section = gio::Menu::new();
    open_section.append(Some(&gettext("Open")), Some("win.vm-open"));
    context_menu_model.append_section(None, &open_section);
    let life = gio::Menu::new();
    life.append(Some(&gettext("Run")), Some("win.vm-run"));
    life.append(Some(&gettext("Pause/Resume")), Some("win.vm-pause"));
    life.append(Some(&gettext("Shut Down")), Some("win.vm-shutdown"));
    life.append(Some(&gettext("Reboot")), Some("win.vm-reboot"));
    life.append(Some(&gettext("Force Off")), Some("win.vm-force-off"));
    context_menu_model.append_section(None, &life);
    let delete = gio::Menu::new();
    delete.append(Some(&gettext("Delete…")), Some("win.vm-delete"));
    context_menu_model.append_section(None, &delete);
    let context_menu = gtk::PopoverMenu::from_model(Some(&context_menu_model));
    context_menu.set_parent(&list);
    context_menu.set_has_arrow(false);
    let right_click = gtk::GestureClick::new();
    right_click.set_button(gtk::gdk::BUTTON_SECONDARY);
    let input = sender.input_sender().clone();
    right_click.connect_pressed(move |_, _, x, y| input.emit(ManagerMsg::ContextMenu(x, y)));
    list.add_controller(right_click);

    let list_page = gtk::ScrolledWindow::builder()
        .hscrollbar_policy(gtk::PolicyType::Never)
        .vexpand(true)
        .child(&{
            let clamp = gtk::Box::new(gtk::Orientation::Vertical, 0);
            clamp.set_margin_start(12);
            clamp.set_margin_end(12);
            clamp.set_margin_top(6);
            clamp.set_margin_bottom(12);
            clamp.append(&list);
            clamp
        })
        .build();

    let empty_buttons = gtk::Box::new(gtk::Orientation::Horizontal, 12);
    empty_buttons.set_halign(gtk::Align::Center);
    let empty_new = gtk::Button::builder()
        .label(gettext("New VM"))
        .action_name("win.new-vm")
        .css_classes(["pill"])
        .build();
    let empty_sample = gtk::Button::builder()
        .label(gettext("Add Sample VM"))
        .action_name("win.add-sample")
        .css_classes(["pill", "suggested-action"])
        .build();
    empty_buttons.append(&empty_new);
    empty_buttons.append(&empty_sample);
    let empty_page = adw::StatusPage::builder()
        .icon_name("computer-symbolic")
        .title(gettext("No Virtual Machines"))
        .description(gettext(
            "Create a VM, or add the sample VM: a small Debian system that boots in seconds.",
        ))
        .child(&empty_buttons)
        .build();
    let disconnected_page = adw::StatusPage::builder()
        .icon_name("network-offline-symbolic")
        .title(gettext("Not Connected"))
        .child(
            &gtk::Button::builder()
                .label(gettext("Reconnect"))
                .action_name("win.reconnect")
                .css_classes(["pill"])
                .halign(gtk::Align::Center)
                .build(),
        )
        .build();
    let stack = gtk::Stack::new();
    stack.add_named(&list_page, Some("list"));
    stack.add_named(&empty_page, Some("empty"));
    stack.add_named(&disconnected_page, Some("disconnected"));
    stack.set_visible_child_name("disconnected");

    let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
    content.append(&header);
    content.append(&search_bar);
    content.append(&connection_row);
    content.append(&warning);
    content.append(&stack);
    let toasts = adw::ToastOverlay::new();
    toasts.set_child(Some(&content));
    window.set_content(Some(&toasts));

    Ui {
        toasts,
        status,
        reconnect,
        warning,
        warning_title,
        warning_text,
        list,
        stack,
        disconnected_page,
        search_bar,
        context_menu,
    }
}
