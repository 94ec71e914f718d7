//! A VM's window: its graphical console, serial console, hardware details and performance
//! graphs, with the lifecycle actions in the header bar.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

use adw::prelude::*;
use gettextrs::gettext;
use gtk::{gio, glib};
use hangar_engine::host::stats::Sample;
use relm4::prelude::*;
use vte4::prelude::*;
use zbus::Connection;

use crate::connection::{self, VmAction, VmInfo};
use crate::force_off_dialog;
use crate::hardware::page::{HardwareInit, HardwareMsg, HardwarePage};
use crate::manager::series_title;
use crate::recording::{naming, pacing::format_elapsed, Recording};
use crate::serial_text::LineEndings;
use crate::settings;
use crate::stats_history::{format_bytes, Series, StatsHistory, HISTORY_LEN};
use crate::vm_list;
use crate::widgets::display::input::{send_key_combos, GrabKey, ScaleMode};
use crate::widgets::display::socket::write_all;
use crate::widgets::display::DisplayWidget;
use crate::widgets::graph::Graph;

pub struct VmWindowInit {
    pub connection: Connection,
    pub info: VmInfo,
    /// The page to show first (console, serial, details, performance).
    pub page: Option<String>,
}

pub struct VmWindow {
    window: adw::Window,
    connection: Option<Connection>,
    info: VmInfo,
    history: StatsHistory,
    actions: Vec<(VmAction, gio::SimpleAction)>,
    serial: Rc<RefCell<Option<SerialStream>>>,
    /// Kept while it is open: a native dialog lives only as long as its last reference.
    screenshot_chooser: Option<gtk::FileChooserNative>,
    settings: Option<gio::Settings>,
    /// Samples across a Performance graph (a preference).
    graph_slots: usize,
    recorder: Recorder,
    /// The Details page: the hardware editor.
    hardware: Controller<HardwarePage>,
    ui: Ui,
}

/// The console recording: at most one at a time, then its file being finished.
#[derive(Default)]
struct Recorder {
    active: Option<ActiveRecording>,
    /// Stopped, and the muxer is still finishing the file.
    finishing: bool,
    /// The window was closed while the file was being finished: it says it closed (and the
    /// application may quit) only once the file is done, and the application stays up till then.
    close_when_done: Option<gio::ApplicationHoldGuard>,
    action: Option<gio::SimpleAction>,
}

struct ActiveRecording {
    recording: Recording,
    started: Instant,
    clock: glib::SourceId,
}

/// The serial socket and its watch on the main loop.
struct SerialStream {
    socket: OwnedFd,
    watch: Option<glib::SourceId>,
}

impl Drop for SerialStream {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.remove();
        }
    }
}

struct Ui {
    toasts: adw::ToastOverlay,
    grab_hint: gtk::Label,
    pages: adw::ViewStack,
    display: DisplayWidget,
    console_stack: gtk::Stack,
    console_message: adw::StatusPage,
    terminal: vte4::Terminal,
    serial_status: gtk::Label,
    details: DetailRows,
    graphs: Vec<(Series, Graph, gtk::Label)>,
    state_label: gtk::Label,
    record_status: gtk::Label,
}

/// The General rows of the Details page; the hardware editor shows them first.
struct DetailRows {
    group: adw::PreferencesGroup,
    /// Where the hardware editor goes.
    page: gtk::Box,
    name: adw::ActionRow,
    uuid: adw::ActionRow,
    state: adw::ActionRow,
}

#[derive(Debug)]
pub enum VmWindowMsg {
    Info(VmInfo),
    Sample(Sample),
    Reconnected(Connection),
    Removed,
    Act(VmAction),
    TogglePause,
    Scale(ScaleMode),
    ResizeToVm,
    Fullscreen,
    SendKeys(usize),
    Screenshot,
    ShowPage(String),
    SettingsChanged,
    ForceOffConfirmed,
    ToggleRecording,
    RecordingTick,
    /// The recording's file is finished (its path) or failed.
    RecordingEnded(Result<std::path::PathBuf, String>),
    Closed,
}

#[derive(Debug)]
pub enum VmWindowOutput {
    Closed(String),
}

#[derive(Debug)]
pub enum VmWindowCmd {
    Display(Result<OwnedFd, String>),
    Serial(Result<OwnedFd, String>),
    History(Vec<Sample>),
    Done(Result<(), String>),
}

impl Component for VmWindow {
    type CommandOutput = VmWindowCmd;
    type Input = VmWindowMsg;
    type Output = VmWindowOutput;
    type Init = VmWindowInit;
    type Root = adw::Window;
    type Widgets = ();

    fn init_root() -> Self::Root {
        adw::Window::builder()
            .default_width(900)
            .default_height(680)
            .build()
    }

    fn init(
        init: Self::Init,
        window: Self::Root,
        sender: ComponentSender<Self>,
    ) -> ComponentParts<Self> {
        let ui = build_ui(&window, &sender);
        let input = sender.input_sender().clone();
        window.connect_close_request(move |_| {
            input.emit(VmWindowMsg::Closed);
            glib::Propagation::Proceed
        });
        let hardware = HardwarePage::builder()
            .launch(HardwareInit {
                connection: Some(init.connection.clone()),
                info: init.info.clone(),
                general: ui.details.group.clone(),
            })
            .detach();
        ui.details.page.append(hardware.widget());
        let mut model = VmWindow {
            window: window.clone(),
            connection: Some(init.connection),
            info: init.info,
            history: StatsHistory::new(HISTORY_LEN),
            actions: Vec::new(),
            serial: Rc::default(),
            screenshot_chooser: None,
            settings: settings::settings(),
            graph_slots: 0,
            recorder: Recorder::default(),
            hardware,
            ui,
        };
        model.apply_settings();
        if let Some(settings) = &model.settings {
            model
                .ui
                .display
                .set_scale_mode(settings::scale_mode(Some(settings)));
            let input = sender.input_sender().clone();
            settings.connect_changed(None, move |_, _| input.emit(VmWindowMsg::SettingsChanged));
        }
        model.install_actions(&sender);
        let serial = model.serial.clone();
        model.ui.terminal.connect_commit(move |_, text, _| {
            if let Some(stream) = serial.borrow().as_ref() {
                // A closed console just drops the typing; the status line says it closed.
                let _ = write_all(stream.socket.as_raw_fd(), text.as_bytes());
            }
        });
        model.show_info();
        if let Some(page) = &init.page {
            model.ui.pages.set_visible_child_name(page);
        }
        model.open_streams(&sender);
        if let Some(connection) = model.connection.clone() {
            let path = model.info.path.clone();
            sender.oneshot_command(async move {
                VmWindowCmd::History(connection::stats_history(&connection, &path).await)
            });
        }
        ComponentParts { model, widgets: () }
    }

    fn update(&mut self, message: Self::Input, sender: ComponentSender<Self>, _root: &Self::Root) {
        match message {
            VmWindowMsg::Info(info) => {
                let was_active = self.info.is_active();
                let reopen = info.state == "running" && !was_active;
                self.info = info;
                self.show_info();
                if reopen {
                    self.history.clear();
                    self.open_streams(&sender);
                } else if was_active && !self.info.is_active() {
                    // What was recorded until the VM stopped is kept.
                    self.stop_recording();
                    self.ui.display.detach();
                    self.show_not_running();
                }
                self.update_record_action();
            }
            VmWindowMsg::Sample(sample) => {
                self.history.push(sample);
                self.show_graphs();
            }
            VmWindowMsg::Reconnected(connection) => {
                self.hardware
                    .emit(HardwareMsg::Connection(Some(connection.clone())));
                self.connection = Some(connection);
                self.open_streams(&sender);
            }
            VmWindowMsg::Removed => {
                self.toast(&gettext("This VM was deleted."));
                self.connection = None;
                self.hardware.emit(HardwareMsg::Connection(None));
                self.update_actions();
            }
            VmWindowMsg::Act(VmAction::Destroy)
                if settings::confirm(self.settings.as_ref(), "confirm-force-off") =>
            {
                let input = sender.input_sender().clone();
                force_off_dialog::ask(&self.window, &self.info.name, move || {
                    input.emit(VmWindowMsg::ForceOffConfirmed)
                });
            }
            VmWindowMsg::ForceOffConfirmed => self.act(&sender, VmAction::Destroy),
            VmWindowMsg::SettingsChanged => self.apply_settings(),
            VmWindowMsg::Act(action) => self.act(&sender, action),
            VmWindowMsg::TogglePause => {
                let action = if self.info.state == "paused" {
                    VmAction::Resume
                } else {
                    VmAction::Suspend
                };
                self.act(&sender, action);
            }
            VmWindowMsg::Scale(mode) => self.ui.display.set_scale_mode(mode),
            VmWindowMsg::ResizeToVm => {
                if let Some((width, height)) = self.ui.display.frame_size() {
                    // The window's chrome is what it has beyond the display widget.
                    let extra_w = (self.window.width() - self.ui.display.width()).max(0);
                    let extra_h = (self.window.height() - self.ui.display.height()).max(0);
                    self.window.unmaximize();
                    self.window
                        .set_default_size(width as i32 + extra_w, height as i32 + extra_h);
                    self.ui.display.set_scale_mode(ScaleMode::OneToOne);
                }
            }
            VmWindowMsg::Fullscreen => {
                if self.window.is_fullscreen() {
                    self.window.unfullscreen();
                } else {
                    self.window.fullscreen();
                }
            }
            VmWindowMsg::SendKeys(index) => {
                if let Some((_, keys)) = send_key_combos().get(index) {
                    self.ui.display.send_keys(keys);
                }
            }
            VmWindowMsg::Screenshot => self.screenshot(),
            VmWindowMsg::ShowPage(page) => self.ui.pages.set_visible_child_name(&page),
            VmWindowMsg::ToggleRecording => {
                if self.recorder.active.is_some() {
                    self.stop_recording();
                } else {
                    self.start_recording(&sender);
                }
            }
            VmWindowMsg::RecordingTick => self.show_recording_time(),
            VmWindowMsg::RecordingEnded(result) => {
                self.recorder.finishing = false;
                self.ui.record_status.set_visible(false);
                self.update_record_action();
                let message = match result {
                    Ok(path) => gettext("Recording saved to {path}")
                        .replace("{path}", &path.display().to_string()),
                    Err(error) => {
                        gettext("Could not record the console: {error}").replace("{error}", &error)
                    }
                };
                if self.recorder.close_when_done.take().is_some() {
                    eprintln!("hangar: {message}");
                    let _ = sender.output(VmWindowOutput::Closed(self.info.path.clone()));
                } else {
                    self.toast(&message);
                }
            }
            VmWindowMsg::Closed => {
                self.stop_recording();
                self.ui.display.detach();
                self.serial.borrow_mut().take();
                if self.recorder.finishing {
                    self.recorder.close_when_done = Some(relm4::main_application().hold());
                } else {
                    let _ = sender.output(VmWindowOutput::Closed(self.info.path.clone()));
                }
            }
        }
    }

    fn update_cmd(
        &mut self,
        message: Self::CommandOutput,
        _sender: ComponentSender<Self>,
        _root: &Self::Root,
    ) {
        match message {
            VmWindowCmd::Display(Ok(fd)) => {
                self.ui.display.attach(fd);
                self.ui.console_stack.set_visible_child_name("display");
            }
            VmWindowCmd::Display(Err(message)) => {
                self.ui.console_message.set_title(&gettext("No Display"));
                self.ui.console_message.set_description(Some(&message));
                self.ui.console_stack.set_visible_child_name("message");
            }
            VmWindowCmd::Serial(Ok(fd)) => self.attach_serial(fd),
            VmWindowCmd::Serial(Err(message)) => self.ui.serial_status.set_label(&message),
            VmWindowCmd::History(samples) => {
                self.history.extend(samples);
                self.show_graphs();
            }
            VmWindowCmd::Done(Ok(())) => {}
            VmWindowCmd::Done(Err(message)) => self.toast(&message),
        }
    }
}

impl VmWindow {
    /// Takes the graph length and the grab keys from the preferences (the console's scaling is
    /// only where a window starts: the user changes it per window).
    fn apply_settings(&mut self) {
        let settings = self.settings.as_ref();
        self.graph_slots = settings::graph_history(settings);
        for (_, graph, _) in &self.ui.graphs {
            graph.set_slots(self.graph_slots);
        }
        self.show_graphs();
        let key = settings::grab_key(settings);
        self.ui.display.set_grab_key(key);
        self.ui
            .grab_hint
            .set_label(&grab_hint(self.ui.display.is_grabbed(), key));
    }

    fn toast(&self, message: &str) {
        let toast = adw::Toast::new(message);
        toast.set_timeout(6);
        self.ui.toasts.add_toast(toast);
    }

    fn act(&self, sender: &ComponentSender<Self>, action: VmAction) {
        let Some(connection) = self.connection.clone() else {
            return;
        };
        let path = self.info.path.clone();
        sender.oneshot_command(async move {
            VmWindowCmd::Done(connection::vm_action(connection, path, action).await)
        });
    }

    /// Opens the display and serial streams; a VM that is not running has none, and the pages
    /// say so.
    fn open_streams(&self, sender: &ComponentSender<Self>) {
        let Some(connection) = self.connection.clone() else {
            return;
        };
        let path = self.info.path.clone();
        if !self.info.is_active() {
            self.show_not_running();
            return;
        }
        {
            let (connection, path) = (connection.clone(), path.clone());
            sender.oneshot_command(async move {
                VmWindowCmd::Serial(connection::open_serial(&connection, &path).await)
            });
        }
        sender.oneshot_command(async move {
            VmWindowCmd::Display(connection::open_display(&connection, &path).await)
        });
    }

    fn show_not_running(&self) {
        self.ui
            .console_message
            .set_title(&gettext("The VM Is Not Running"));
        self.ui
            .console_message
            .set_description(Some(&gettext("Run it to see its display.")));
        self.ui.console_stack.set_visible_child_name("message");
        self.ui
            .serial_status
            .set_label(&gettext("The VM is not running."));
    }

    fn attach_serial(&mut self, socket: OwnedFd) {
        let raw = socket.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        self.ui.terminal.reset(true, true);
        self.ui
            .serial_status
            .set_label(&gettext("Connected to the serial console."));
        let terminal = self.ui.terminal.clone();
        let status = self.ui.serial_status.clone();
        let mut endings = LineEndings::default();
        let serial = Rc::downgrade(&self.serial);
        let watch = glib::unix_fd_add_local(
            raw,
            glib::IOCondition::IN | glib::IOCondition::HUP | glib::IOCondition::ERR,
            move |fd, _| {
                let mut buffer = [0u8; 8192];
                loop {
                    // SAFETY: reading into a local buffer from the socket this watch is for.
                    let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
                    if n > 0 {
                        terminal.feed(&endings.convert(&buffer[..n as usize]));
                        continue;
                    }
                    let err = std::io::Error::last_os_error();
                    if n < 0 && err.kind() == std::io::ErrorKind::WouldBlock {
                        return glib::ControlFlow::Continue;
                    }
                    if n < 0 && err.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    status.set_label(&gettext("The serial console closed."));
                    if let Some(serial) = serial.upgrade() {
                        if let Some(stream) = serial.borrow_mut().as_mut() {
                            // Returning Break removes the source.
                            stream.watch.take();
                        }
                    }
                    return glib::ControlFlow::Break;
                }
            },
        );
        *self.serial.borrow_mut() = Some(SerialStream {
            socket,
            watch: Some(watch),
        });
    }

    fn show_info(&mut self) {
        let info = &self.info;
        self.window.set_title(Some(
            &gettext("{name} – Hangar").replace("{name}", &info.name),
        ));
        self.ui
            .state_label
            .set_label(&vm_list::state_label(&info.state));
        let rows = &self.ui.details;
        rows.name.set_subtitle(&info.name);
        rows.uuid.set_subtitle(&info.uuid);
        rows.state.set_subtitle(&vm_list::state_label(&info.state));
        self.hardware.emit(HardwareMsg::Info(info.clone()));
        self.update_actions();
    }

    fn show_graphs(&self) {
        for (series, graph, value) in &self.ui.graphs {
            graph.set_values(
                self.history.values(*series, self.graph_slots),
                self.history.scale_max(*series, self.graph_slots),
            );
            let now = self.history.last().map(|s| series.value(s));
            value.set_label(&match (series, now) {
                (_, None) => "–".to_string(),
                (Series::Cpu, Some(v)) => format!("{v:.1} %"),
                (Series::Memory, Some(v)) => format_bytes(v),
                (_, Some(v)) => format!("{}/s", format_bytes(v)),
            });
        }
    }

    fn install_actions(&mut self, sender: &ComponentSender<Self>) {
        let group = gio::SimpleActionGroup::new();
        let lifecycle = [
            ("run", VmAction::Start),
            ("shutdown", VmAction::Shutdown),
            ("reboot", VmAction::Reboot),
            ("force-off", VmAction::Destroy),
            ("pause", VmAction::Suspend),
        ];
        for (name, action) in lifecycle {
            let simple = gio::SimpleAction::new(name, None);
            let input = sender.input_sender().clone();
            simple.connect_activate(move |_, _| {
                input.emit(if action == VmAction::Suspend {
                    VmWindowMsg::TogglePause
                } else {
                    VmWindowMsg::Act(action)
                })
            });
            group.add_action(&simple);
            self.actions.push((action, simple));
        }
        let simple = |name: &str, message: fn() -> VmWindowMsg| {
            let action = gio::SimpleAction::new(name, None);
            let input = sender.input_sender().clone();
            action.connect_activate(move |_, _| input.emit(message()));
            group.add_action(&action);
        };
        simple("resize-to-vm", || VmWindowMsg::ResizeToVm);
        simple("fullscreen", || VmWindowMsg::Fullscreen);
        simple("screenshot", || VmWindowMsg::Screenshot);
        // Stateful, so that the Record toggle shows whether a recording runs.
        let record = gio::SimpleAction::new_stateful("record", None, &false.to_variant());
        let input = sender.input_sender().clone();
        record.connect_activate(move |_, _| input.emit(VmWindowMsg::ToggleRecording));
        group.add_action(&record);
        self.recorder.action = Some(record);
        self.update_record_action();
        let scale = gio::SimpleAction::new_stateful(
            "scale",
            Some(glib::VariantTy::STRING),
            &match settings::scale_mode(self.settings.as_ref()) {
                ScaleMode::OneToOne => "1:1",
                ScaleMode::Fit => "fit",
            }
            .to_variant(),
        );
        let input = sender.input_sender().clone();
        scale.connect_activate(move |action, parameter| {
            let Some(mode) = parameter.and_then(|p| p.get::<String>()) else {
                return;
            };
            action.set_state(&mode.to_variant());
            input.emit(VmWindowMsg::Scale(if mode == "1:1" {
                ScaleMode::OneToOne
            } else {
                ScaleMode::Fit
            }));
        });
        group.add_action(&scale);
        let send_key = gio::SimpleAction::new("send-key", Some(glib::VariantTy::UINT32));
        let input = sender.input_sender().clone();
        send_key.connect_activate(move |_, parameter| {
            if let Some(index) = parameter.and_then(|p| p.get::<u32>()) {
                input.emit(VmWindowMsg::SendKeys(index as usize));
            }
        });
        group.add_action(&send_key);
        let terminal = self.ui.terminal.clone();
        let terminal_action = |name: &str, run: fn(&vte4::Terminal)| {
            let action = gio::SimpleAction::new(name, None);
            let terminal = terminal.clone();
            action.connect_activate(move |_, _| run(&terminal));
            group.add_action(&action);
        };
        terminal_action("copy", |t| t.copy_clipboard_format(vte4::Format::Text));
        terminal_action("copy-all", |t| {
            t.select_all();
            t.copy_clipboard_format(vte4::Format::Text);
        });
        terminal_action("paste", |t| t.paste_clipboard());
        terminal_action("select-all", |t| t.select_all());
        terminal_action("zoom-in", |t| {
            t.set_font_scale((t.font_scale() * 1.1).min(4.0))
        });
        terminal_action("zoom-out", |t| {
            t.set_font_scale((t.font_scale() / 1.1).max(0.3))
        });
        terminal_action("zoom-reset", |t| t.set_font_scale(1.0));
        self.window.insert_action_group("vm", Some(&group));

        let shortcuts = gtk::ShortcutController::new();
        shortcuts.set_scope(gtk::ShortcutScope::Managed);
        for (accel, action) in [
            ("<Control><Shift>c", "vm.copy"),
            ("<Control><Shift>v", "vm.paste"),
            ("<Control>plus", "vm.zoom-in"),
            ("<Control>equal", "vm.zoom-in"),
            ("<Control>minus", "vm.zoom-out"),
            ("<Control>0", "vm.zoom-reset"),
        ] {
            shortcuts.add_shortcut(gtk::Shortcut::new(
                gtk::ShortcutTrigger::parse_string(accel),
                Some(gtk::NamedAction::new(action)),
            ));
        }
        self.ui.terminal.add_controller(shortcuts);
        // F11 reaches the guest while the console holds the keyboard, the window otherwise.
        let window_keys = gtk::ShortcutController::new();
        window_keys.add_shortcut(gtk::Shortcut::new(
            gtk::ShortcutTrigger::parse_string("F11"),
            Some(gtk::NamedAction::new("vm.fullscreen")),
        ));
        self.window.add_controller(window_keys);
    }

    fn update_actions(&self) {
        let connected = self.connection.is_some();
        for (action, simple) in &self.actions {
            let on = match action {
                VmAction::Suspend => {
                    vm_list::allows(&self.info.state, VmAction::Suspend)
                        || vm_list::allows(&self.info.state, VmAction::Resume)
                }
                other => vm_list::allows(&self.info.state, *other),
            };
            simple.set_enabled(connected && on);
        }
    }

    fn update_record_action(&self) {
        if let Some(action) = &self.recorder.action {
            let recording = self.recorder.active.is_some();
            action.set_state(&recording.to_variant());
            action.set_enabled((recording || self.info.is_active()) && !self.recorder.finishing);
        }
    }

    /// Records the console into the videos folder, named after the VM and the moment.
    fn start_recording(&mut self, sender: &ComponentSender<Self>) {
        let Some(source) = self.ui.display.frame_source() else {
            self.toast(&gettext("There is no picture to record yet."));
            return;
        };
        let dir = naming::videos_dir(
            glib::user_special_dir(glib::UserDirectory::Videos),
            &glib::home_dir(),
        );
        let stamp = glib::DateTime::now_local()
            .and_then(|t| t.format("%Y-%m-%d-%H%M%S"))
            .map(|s| s.to_string())
            .unwrap_or_default();
        let name = naming::file_name(&self.info.name, &stamp);
        let path = naming::free_path(&dir, &name, |p| {
            p.exists() || naming::partial_path(p).exists()
        });
        let input = sender.input_sender().clone();
        let started = Recording::start(source, path, move |result| {
            let result = result.map(|saved| saved.path).map_err(|e| e.to_string());
            // Said on the main loop, where the window lives.
            glib::idle_add_once(move || input.emit(VmWindowMsg::RecordingEnded(result)));
        });
        match started {
            Ok(recording) => {
                let input = sender.input_sender().clone();
                let clock =
                    glib::timeout_add_local(std::time::Duration::from_millis(250), move || {
                        input.emit(VmWindowMsg::RecordingTick);
                        glib::ControlFlow::Continue
                    });
                self.recorder.active = Some(ActiveRecording {
                    recording,
                    started: Instant::now(),
                    clock,
                });
                self.ui.record_status.set_visible(true);
                self.show_recording_time();
            }
            Err(error) => self.toast(
                &gettext("Could not record the console: {error}")
                    .replace("{error}", &error.to_string()),
            ),
        }
        self.update_record_action();
    }

    /// Ends the recording; the file is finished on the recording's thread, and
    /// `RecordingEnded` follows.
    fn stop_recording(&mut self) {
        let Some(active) = self.recorder.active.take() else {
            return;
        };
        active.clock.remove();
        active.recording.stop();
        self.recorder.finishing = true;
        self.ui.record_status.set_label(&gettext("Saving…"));
        self.update_record_action();
    }

    fn show_recording_time(&self) {
        if let Some(active) = &self.recorder.active {
            self.ui
                .record_status
                .set_label(&format!("● {}", format_elapsed(active.started.elapsed())));
        }
    }

    fn screenshot(&mut self) {
        let Some(texture) = self.ui.display.screenshot() else {
            self.toast(&gettext("There is no picture to save yet."));
            return;
        };
        let chooser = gtk::FileChooserNative::new(
            Some(&gettext("Save Screenshot")),
            Some(&self.window),
            gtk::FileChooserAction::Save,
            Some(&gettext("Save")),
            Some(&gettext("Cancel")),
        );
        let stamp = glib::DateTime::now_local()
            .and_then(|t| t.format("%Y-%m-%d-%H%M%S"))
            .map(|s| s.to_string())
            .unwrap_or_default();
        chooser.set_current_name(&format!("{}-{stamp}.png", self.info.name));
        let toasts = self.ui.toasts.clone();
        chooser.connect_response(move |chooser, response| {
            if response == gtk::ResponseType::Accept {
                if let Some(path) = chooser.file().and_then(|f| f.path()) {
                    let message = match texture.save_to_png(&path) {
                        Ok(()) => gettext("Screenshot saved to {path}")
                            .replace("{path}", &path.display().to_string()),
                        Err(err) => gettext("Could not save the screenshot: {error}")
                            .replace("{error}", &err.to_string()),
                    };
                    toasts.add_toast(adw::Toast::new(&message));
                }
            }
        });
        chooser.show();
        self.screenshot_chooser = Some(chooser);
    }
}

/// The console's line about the keyboard: how to grab it, or how to let it go.
fn grab_hint(grabbed: bool, key: GrabKey) -> String {
    if grabbed {
        gettext("Keyboard grabbed: press {keys} to release").replace("{keys}", &key.label())
    } else {
        gettext("Click the display to send the keyboard to the VM")
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

fn menu_button(icon: &str, label: &str, menu: &gio::Menu) -> gtk::MenuButton {
    let button = gtk::MenuButton::builder()
        .icon_name(icon)
        .tooltip_text(label)
        .menu_model(menu)
        .build();
    button.update_property(&[gtk::accessible::Property::Label(label)]);
    button
}

fn build_ui(window: &adw::Window, sender: &ComponentSender<VmWindow>) -> Ui {
    let stack = adw::ViewStack::new();
    let switcher = adw::ViewSwitcherTitle::builder().stack(&stack).build();
    let header = adw::HeaderBar::builder().title_widget(&switcher).build();
    header.pack_start(&icon_button(
        "media-playback-start-symbolic",
        &gettext("Run"),
        "vm.run",
    ));
    header.pack_start(&icon_button(
        "media-playback-pause-symbolic",
        &gettext("Pause"),
        "vm.pause",
    ));
    let power = gio::Menu::new();
    power.append(Some(&gettext("Shut Down")), Some("vm.shutdown"));
    power.append(Some(&gettext("Reboot")), Some("vm.reboot"));
    power.append(Some(&gettext("Force Off")), Some("vm.force-off"));
    header.pack_start(&menu_button(
        "system-shutdown-symbolic",
        &gettext("Shut Down"),
        &power,
    ));
    let state_label = gtk::Label::builder().css_classes(["dim-label"]).build();
    header.pack_end(&state_label);

    // Console page: the display, a floating toolbar, and a message when there is no picture.
    let display = DisplayWidget::new();
    display.update_property(&[gtk::accessible::Property::Label(&gettext("VM display"))]);
    let grab_hint = gtk::Label::builder()
        .label(gettext("Click the display to send the keyboard to the VM"))
        .css_classes(["dim-label"])
        .build();
    let hint = grab_hint.clone();
    let widget = display.downgrade();
    display.connect_grab_changed(move |grabbed| {
        if let Some(display) = widget.upgrade() {
            hint.set_label(&crate::vm_window::grab_hint(grabbed, display.grab_key()));
        }
    });
    let toolbar = gtk::Box::new(gtk::Orientation::Horizontal, 4);
    toolbar.add_css_class("console-toolbar");
    toolbar.set_halign(gtk::Align::Center);
    toolbar.set_valign(gtk::Align::Start);
    let scale_menu = gio::Menu::new();
    scale_menu.append(Some(&gettext("Scale to Fit")), Some("vm.scale::fit"));
    scale_menu.append(Some(&gettext("Actual Size (1:1)")), Some("vm.scale::1:1"));
    scale_menu.append(
        Some(&gettext("Resize Window to VM")),
        Some("vm.resize-to-vm"),
    );
    toolbar.append(&menu_button(
        "zoom-fit-best-symbolic",
        &gettext("Scaling"),
        &scale_menu,
    ));
    let keys_menu = gio::Menu::new();
    for (index, (label, _)) in send_key_combos().iter().enumerate() {
        let item = gio::MenuItem::new(Some(label), None);
        item.set_action_and_target_value(Some("vm.send-key"), Some(&(index as u32).to_variant()));
        keys_menu.append_item(&item);
    }
    toolbar.append(&menu_button(
        "input-keyboard-symbolic",
        &gettext("Send Key"),
        &keys_menu,
    ));
    toolbar.append(&icon_button(
        "camera-photo-symbolic",
        &gettext("Take Screenshot"),
        "vm.screenshot",
    ));
    let record = gtk::ToggleButton::builder()
        .icon_name("media-record-symbolic")
        .tooltip_text(gettext("Record Video"))
        .action_name("vm.record")
        .build();
    record.update_property(&[gtk::accessible::Property::Label(&gettext("Record"))]);
    toolbar.append(&record);
    let record_status = gtk::Label::builder()
        .css_classes(["numeric", "recording-time"])
        .visible(false)
        .build();
    toolbar.append(&record_status);
    toolbar.append(&icon_button(
        "view-fullscreen-symbolic",
        &gettext("Fullscreen"),
        "vm.fullscreen",
    ));
    toolbar.append(&grab_hint);
    let overlay = gtk::Overlay::new();
    overlay.set_child(Some(&display));
    overlay.add_overlay(&toolbar);
    let console_message = adw::StatusPage::builder()
        .icon_name("video-display-symbolic")
        .title(gettext("The VM Is Not Running"))
        .build();
    let console_stack = gtk::Stack::new();
    console_stack.add_named(&overlay, Some("display"));
    console_stack.add_named(&console_message, Some("message"));
    console_stack.set_visible_child_name("message");
    {
        let (stack, message) = (console_stack.clone(), console_message.clone());
        display.connect_closed(move |why| {
            message.set_title(&gettext("No Display"));
            message.set_description(Some(&why));
            stack.set_visible_child_name("message");
        });
    }
    let console_page = stack.add_titled(&console_stack, Some("console"), &gettext("Console"));
    console_page.set_icon_name(Some("video-display-symbolic"));

    // Serial page.
    let terminal = vte4::Terminal::new();
    terminal.set_scrollback_lines(10_000);
    terminal.set_hexpand(true);
    terminal.set_vexpand(true);
    terminal.add_css_class("serial-terminal");
    terminal.update_property(&[gtk::accessible::Property::Label(&gettext("Serial console"))]);
    let serial_status = gtk::Label::builder()
        .xalign(0.0)
        .hexpand(true)
        .css_classes(["dim-label"])
        .build();
    let serial_bar = gtk::Box::new(gtk::Orientation::Horizontal, 4);
    serial_bar.set_margin_start(8);
    serial_bar.set_margin_end(8);
    serial_bar.set_margin_top(4);
    serial_bar.set_margin_bottom(4);
    serial_bar.append(&serial_status);
    serial_bar.append(&icon_button(
        "edit-copy-symbolic",
        &gettext("Copy"),
        "vm.copy",
    ));
    serial_bar.append(&icon_button(
        "edit-paste-symbolic",
        &gettext("Paste"),
        "vm.paste",
    ));
    serial_bar.append(&icon_button(
        "edit-select-all-symbolic",
        &gettext("Copy All Output"),
        "vm.copy-all",
    ));
    serial_bar.append(&icon_button(
        "zoom-out-symbolic",
        &gettext("Smaller Text"),
        "vm.zoom-out",
    ));
    serial_bar.append(&icon_button(
        "zoom-in-symbolic",
        &gettext("Larger Text"),
        "vm.zoom-in",
    ));
    let serial_box = gtk::Box::new(gtk::Orientation::Vertical, 0);
    serial_box.append(&serial_bar);
    serial_box.append(
        &gtk::ScrolledWindow::builder()
            .child(&terminal)
            .vexpand(true)
            .build(),
    );
    let serial_page = stack.add_titled(&serial_box, Some("serial"), &gettext("Serial"));
    serial_page.set_icon_name(Some("utilities-terminal-symbolic"));

    // Details page: the General rows here, the hardware editor below them (see init).
    let general = adw::PreferencesGroup::builder()
        .title(gettext("General"))
        .build();
    let row = |title: &str| {
        let row = adw::ActionRow::builder().title(title).build();
        row.add_css_class("property");
        general.add(&row);
        row
    };
    let details = DetailRows {
        name: row(&gettext("Name")),
        uuid: row(&gettext("UUID")),
        state: row(&gettext("State")),
        group: general.clone(),
        page: gtk::Box::new(gtk::Orientation::Vertical, 0),
    };
    let details_stack_page = stack.add_titled(&details.page, Some("details"), &gettext("Details"));
    details_stack_page.set_icon_name(Some("document-properties-symbolic"));

    // Performance page.
    let grid = gtk::Grid::builder()
        .row_spacing(6)
        .column_spacing(18)
        .margin_start(18)
        .margin_end(18)
        .margin_top(18)
        .margin_bottom(18)
        .build();
    let mut graphs = Vec::new();
    for (i, series) in [Series::Cpu, Series::Memory, Series::Disk, Series::Network]
        .into_iter()
        .enumerate()
    {
        let title = gtk::Label::builder()
            .label(series_title(series))
            .xalign(0.0)
            .css_classes(["heading"])
            .hexpand(true)
            .build();
        let value = gtk::Label::builder()
            .label("–")
            .xalign(1.0)
            .css_classes(["numeric"])
            .build();
        let graph = Graph::new(settings::graph_history(None), false);
        graph.set_hexpand(true);
        graph.set_vexpand(true);
        graph.update_property(&[gtk::accessible::Property::Label(&series_title(series))]);
        let (column, row) = ((i % 2) as i32 * 2, (i / 2) as i32 * 2);
        grid.attach(&title, column, row, 1, 1);
        grid.attach(&value, column + 1, row, 1, 1);
        grid.attach(&graph, column, row + 1, 2, 1);
        graphs.push((series, graph, value));
    }
    let performance_page = stack.add_titled(&grid, Some("performance"), &gettext("Performance"));
    performance_page.set_icon_name(Some("utilities-system-monitor-symbolic"));

    let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
    content.append(&header);
    content.append(&stack);
    let switcher_bar = adw::ViewSwitcherBar::builder().stack(&stack).build();
    switcher
        .bind_property("title-visible", &switcher_bar, "reveal")
        .build();
    content.append(&switcher_bar);
    let toasts = adw::ToastOverlay::new();
    toasts.set_child(Some(&content));
    window.set_content(Some(&toasts));
    let _ = sender;

    Ui {
        toasts,
        grab_hint,
        pages: stack,
        display,
        console_stack,
        console_message,
        terminal,
        serial_status,
        details,
        graphs,
        state_label,
        record_status,
    }
}
