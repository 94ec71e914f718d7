//! The console widget: the guest framebuffer as a grid of `gdk::MemoryTexture` tiles, each
//! rebuilt only when damage touches it, scaled to fit or shown 1:1; keyboard and absolute
//! pointer input sent back on the same stream.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};

use gtk::prelude::*;
use gtk::subclass::prelude::*;
use gtk::{cairo, gdk, glib, graphene, gsk};

use super::input::{self, GrabKey, ScaleMode};
use super::socket::{write_all, LineReader, SharedFramebuffer};
use super::stream::{parse_event, DisplayEvent, FramebufferInfo, InputCommand, MouseButton};
use super::tiles::{tile_bgr, tile_bgra, Tile, TileGrid};
use super::trace::{self, FrameTrace};
use crate::recording::FrameSource;

type Callback<T> = RefCell<Option<Box<dyn Fn(T)>>>;

mod imp {
    use super::*;

    pub struct Frame {
        pub info: FramebufferInfo,
        /// Kept for the recorder, which maps it for itself.
        pub memfd: OwnedFd,
        pub memory: SharedFramebuffer,
        pub grid: TileGrid,
        pub textures: Vec<Option<gdk::Texture>>,
        /// With GTK's cairo renderer: a cairo node per tile and the bounds it was drawn for.
        pub nodes: Vec<Option<(gsk::RenderNode, [f32; 4])>>,
        pub dirty: Vec<bool>,
    }

    pub struct DisplayWidget {
        pub socket: RefCell<Option<OwnedFd>>,
        pub watch: RefCell<Option<glib::SourceId>>,
        pub reader: RefCell<LineReader>,
        pub frame: RefCell<Option<Frame>>,
        pub mode: Cell<ScaleMode>,
        pub grabbed: Cell<bool>,
        pub grab_key: Cell<GrabKey>,
        pub on_grab: Callback<bool>,
        pub on_frame: Callback<(u32, u32)>,
        pub on_closed: Callback<String>,
        pub tiles_rebuilt: Cell<u64>,
        /// `HANGAR_DISPLAY_TRACE`: damage in, frames out (see `trace`).
        pub trace: RefCell<Option<FrameTrace>>,
        /// Damage and resync messages taken in so far.
        pub damage_seq: Cell<u64>,
        /// The damage the latest snapshot holds, the tiles it rebuilt and its scale, until the frame
        /// clock says the frame was painted.
        pub snapshot_seq: Cell<Option<(u64, u64, f64)>>,
        pub after_paint: RefCell<Option<(gdk::FrameClock, glib::SignalHandlerId)>>,
    }

    impl Default for DisplayWidget {
        fn default() -> Self {
            DisplayWidget {
                socket: RefCell::default(),
                watch: RefCell::default(),
                reader: RefCell::default(),
                frame: RefCell::default(),
                mode: Cell::new(ScaleMode::Fit),
                grabbed: Cell::new(false),
                grab_key: Cell::default(),
                on_grab: RefCell::default(),
                on_frame: RefCell::default(),
                on_closed: RefCell::default(),
                tiles_rebuilt: Cell::new(0),
                trace: RefCell::new(FrameTrace::from_env()),
                damage_seq: Cell::new(0),
                snapshot_seq: Cell::new(None),
                after_paint: RefCell::default(),
            }
        }
    }

    #[glib::object_subclass]
    impl ObjectSubclass for DisplayWidget {
        const NAME: &'static str = "HangarDisplay";
        type Type = super::DisplayWidget;
        type ParentType = gtk::Widget;

        fn class_init(klass: &mut Self::Class) {
            klass.set_css_name("display");
            klass.set_accessible_role(gtk::AccessibleRole::Img);
        }
    }

    impl ObjectImpl for DisplayWidget {
        fn constructed(&self) {
            self.parent_constructed();
            let widget = self.obj();
            widget.set_focusable(true);
            widget.set_hexpand(true);
            widget.set_vexpand(true);
            widget.install_input();
        }

        fn dispose(&self) {
            self.obj().detach();
        }
    }

    impl WidgetImpl for DisplayWidget {
        fn realize(&self) {
            self.parent_realize();
            if self.trace.borrow().is_none() {
                return;
            }
            let Some(clock) = self.obj().frame_clock() else {
                return;
            };
            let weak = self.obj().downgrade();
            let handler = clock.connect_after_paint(move |_| {
                if let Some(widget) = weak.upgrade() {
                    widget.imp().painted();
                }
            });
            *self.after_paint.borrow_mut() = Some((clock, handler));
        }

        fn unrealize(&self) {
            if let Some((clock, handler)) = self.after_paint.borrow_mut().take() {
                clock.disconnect(handler);
            }
            // The next renderer may be another kind: no tile is kept for the wrong one.
            if let Some(frame) = self.frame.borrow_mut().as_mut() {
                frame.textures.iter_mut().for_each(|t| *t = None);
                frame.nodes.iter_mut().for_each(|n| *n = None);
            }
            self.parent_unrealize();
        }

        fn measure(&self, orientation: gtk::Orientation, _for_size: i32) -> (i32, i32, i32, i32) {
            let natural = self
                .frame
                .borrow()
                .as_ref()
                .map_or(0, |f| match orientation {
                    gtk::Orientation::Horizontal => f.info.width as i32,
                    _ => f.info.height as i32,
                });
            (64, natural.max(64), -1, -1)
        }

        fn snapshot(&self, snapshot: &gtk::Snapshot) {
            let widget = self.obj();
            let (width, height) = (widget.width() as f32, widget.height() as f32);
            snapshot.append_color(
                &gdk::RGBA::BLACK,
                &graphene::Rect::new(0.0, 0.0, width, height),
            );
            let mut frame = self.frame.borrow_mut();
            let Some(frame) = frame.as_mut() else {
                return;
            };
            let view = input::view_rect(
                self.mode.get(),
                (width as f64, height as f64),
                (frame.info.width, frame.info.height),
            );
            let scale = view.width / frame.info.width as f64;
            snapshot.push_clip(&graphene::Rect::new(0.0, 0.0, width, height));
            let stride = frame.info.stride as usize;
            let mut rebuilt = 0;
            // GTK 4.8's cairo renderer turns every texture it draws into a cairo surface, each
            // time, through a float conversion per pixel: for the whole screen on every frame,
            // damaged or not. Cairo nodes kept per tile are drawn from cairo surfaces directly,
            // and the renderer's diff skips the tiles whose node did not change. The GL
            // renderer uploads a texture once and keeps it, so it gets textures.
            let cairo_renderer = widget
                .native()
                .and_then(|native| native.renderer())
                .is_some_and(|renderer| renderer.is::<gsk::CairoRenderer>());
            for tile in frame.grid.all().collect::<Vec<_>>() {
                let index = frame.grid.index(tile.column, tile.row);
                let bounds = graphene::Rect::new(
                    (view.x + tile.x as f64 * scale) as f32,
                    (view.y + tile.y as f64 * scale) as f32,
                    (tile.width as f64 * scale) as f32,
                    (tile.height as f64 * scale) as f32,
                );
                if cairo_renderer {
                    let key = [bounds.x(), bounds.y(), bounds.width(), bounds.height()];
                    let fresh = frame.nodes[index]
                        .as_ref()
                        .is_some_and(|(_, drawn)| *drawn == key);
                    if frame.dirty[index] || !fresh {
                        frame.nodes[index] =
                            tile_node(frame.memory.bytes(), stride, &tile, &bounds)
                                .map(|node| (node, key));
                        frame.dirty[index] = false;
                        rebuilt += 1;
                    }
                    if let Some((node, _)) = &frame.nodes[index] {
                        snapshot.append_node(node);
                    }
                    continue;
                }
                if frame.dirty[index] || frame.textures[index].is_none() {
                    let pixels = tile_bgra(frame.memory.bytes(), stride, &tile);
                    let texture = gdk::MemoryTexture::new(
                        tile.width as i32,
                        tile.height as i32,
                        gdk::MemoryFormat::B8g8r8a8Premultiplied,
                        &glib::Bytes::from_owned(pixels),
                        tile.width as usize * 4,
                    );
                    frame.textures[index] = Some(texture.upcast());
                    frame.dirty[index] = false;
                    rebuilt += 1;
                }
                snapshot.append_texture(frame.textures[index].as_ref().unwrap(), &bounds);
            }
            snapshot.pop();
            self.tiles_rebuilt.set(self.tiles_rebuilt.get() + rebuilt);
            if self.trace.borrow().is_some() {
                let tiles = self.snapshot_seq.get().map_or(0, |(_, t, _)| t);
                self.snapshot_seq
                    .set(Some((self.damage_seq.get(), tiles + rebuilt, scale)));
            }
        }
    }

    impl DisplayWidget {
        /// The frame clock finished painting: a snapshot taken for it is on screen now.
        fn painted(&self) {
            if let Some((seq, tiles, scale)) = self.snapshot_seq.take() {
                if let Some(trace) = self.trace.borrow_mut().as_mut() {
                    trace.write(&trace::frame_line(trace::monotonic_ns(), seq, tiles, scale));
                }
            }
        }
    }
}

glib::wrapper! {
    pub struct DisplayWidget(ObjectSubclass<imp::DisplayWidget>)
        @extends gtk::Widget,
        @implements gtk::Accessible, gtk::Buildable, gtk::ConstraintTarget;
}

impl Default for DisplayWidget {
    fn default() -> Self {
        glib::Object::new()
    }
}

impl DisplayWidget {
    pub fn new() -> DisplayWidget {
        DisplayWidget::default()
    }

    /// Starts showing the stream on `socket` (from hangard's `OpenDisplay`).
    pub fn attach(&self, socket: OwnedFd) {
        self.detach();
        let raw = socket.as_raw_fd();
        let weak = self.downgrade();
        let watch = glib::unix_fd_add_local(
            raw,
            glib::IOCondition::IN | glib::IOCondition::HUP | glib::IOCondition::ERR,
            move |_, _| match weak.upgrade() {
                Some(widget) => widget.read_stream(),
                None => glib::ControlFlow::Break,
            },
        );
        *self.imp().socket.borrow_mut() = Some(socket);
        *self.imp().watch.borrow_mut() = Some(watch);
    }

    pub fn detach(&self) {
        if let Some(watch) = self.imp().watch.borrow_mut().take() {
            watch.remove();
        }
        self.imp().socket.borrow_mut().take();
        *self.imp().reader.borrow_mut() = LineReader::default();
        self.set_grabbed(false);
    }

    pub fn is_attached(&self) -> bool {
        self.imp().socket.borrow().is_some()
    }

    fn closed(&self, why: String) -> glib::ControlFlow {
        // The source is removed by returning Break; forget its id first.
        self.imp().watch.borrow_mut().take();
        self.imp().socket.borrow_mut().take();
        self.set_grabbed(false);
        if let Some(callback) = self.imp().on_closed.borrow().as_ref() {
            callback(why);
        }
        glib::ControlFlow::Break
    }

    fn read_stream(&self) -> glib::ControlFlow {
        let Some(raw) = self.imp().socket.borrow().as_ref().map(AsRawFd::as_raw_fd) else {
            return glib::ControlFlow::Break;
        };
        let open = self.imp().reader.borrow_mut().fill(raw);
        loop {
            let line = self.imp().reader.borrow_mut().next_line();
            let Some(line) = line else { break };
            if let Err(why) = self.handle(&line) {
                return self.closed(why);
            }
        }
        match open {
            Ok(true) => glib::ControlFlow::Continue,
            Ok(false) => self.closed(gettextrs::gettext("The display stream ended.")),
            Err(err) => self.closed(err.to_string()),
        }
    }

    fn handle(&self, line: &str) -> Result<(), String> {
        let event = parse_event(line).map_err(|e| e.to_string())?;
        let imp = self.imp();
        match event {
            DisplayEvent::Framebuffer(info) => {
                let fd = imp
                    .reader
                    .borrow_mut()
                    .take_fd()
                    .ok_or_else(|| super::stream::StreamError::MissingFd.to_string())?;
                let memory =
                    SharedFramebuffer::map(&fd, info.size as usize).map_err(|e| e.to_string())?;
                let grid = TileGrid::new(info.width, info.height);
                *imp.frame.borrow_mut() = Some(imp::Frame {
                    info,
                    memfd: fd,
                    memory,
                    grid,
                    textures: vec![None; grid.len()],
                    nodes: vec![None; grid.len()],
                    dirty: vec![true; grid.len()],
                });
                self.queue_resize();
                if let Some(callback) = imp.on_frame.borrow().as_ref() {
                    callback((info.width, info.height));
                }
            }
            DisplayEvent::Damage(rects) => {
                let seq = imp.damage_seq.get() + 1;
                imp.damage_seq.set(seq);
                if let Some(trace) = imp.trace.borrow_mut().as_mut() {
                    trace.write(&trace::damage_line(seq, trace::monotonic_ns(), &rects));
                }
                if let Some(frame) = imp.frame.borrow_mut().as_mut() {
                    for rect in &rects {
                        for tile in frame.grid.touched(rect) {
                            let index = frame.grid.index(tile.column, tile.row);
                            frame.dirty[index] = true;
                        }
                    }
                }
            }
            DisplayEvent::Error(error) => {
                // Our own bad line: worth a trace, not the end of the console.
                eprintln!("hangar: the VM's display refused input: {error}");
                return Ok(());
            }
            DisplayEvent::Resync => {
                let seq = imp.damage_seq.get() + 1;
                imp.damage_seq.set(seq);
                if let Some(trace) = imp.trace.borrow_mut().as_mut() {
                    trace.write(&trace::resync_line(seq, trace::monotonic_ns()));
                }
                if let Some(frame) = imp.frame.borrow_mut().as_mut() {
                    frame.dirty.iter_mut().for_each(|d| *d = true);
                }
            }
        }
        self.queue_draw();
        Ok(())
    }

    fn send(&self, command: InputCommand) {
        let Some(raw) = self.imp().socket.borrow().as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        // A write error means the stream is gone; the reader notices and reports it.
        let _ = write_all(raw, command.to_line().as_bytes());
    }

    /// Presses the keys together and releases them (the send-key menu).
    pub fn send_keys(&self, keys: &[u32]) {
        for (code, down) in input::combo_events(keys) {
            self.send(InputCommand::Key { code, down });
        }
    }

    /// The keys that end a keyboard grab.
    pub fn set_grab_key(&self, key: GrabKey) {
        self.imp().grab_key.set(key);
    }

    pub fn grab_key(&self) -> GrabKey {
        self.imp().grab_key.get()
    }

    pub fn set_scale_mode(&self, mode: ScaleMode) {
        self.imp().mode.set(mode);
        self.queue_draw();
    }

    pub fn frame_size(&self) -> Option<(u32, u32)> {
        self.imp()
            .frame
            .borrow()
            .as_ref()
            .map(|f| (f.info.width, f.info.height))
    }

    /// Tiles turned into textures so far (a measure of how little damage costs).
    pub fn tiles_rebuilt(&self) -> u64 {
        self.imp().tiles_rebuilt.get()
    }

    /// The framebuffer for the recorder: a duplicate of its memfd and its layout.
    pub fn frame_source(&self) -> Option<FrameSource> {
        let frame = self.imp().frame.borrow();
        let frame = frame.as_ref()?;
        Some(FrameSource {
            memfd: frame.memfd.try_clone().ok()?,
            width: frame.info.width,
            height: frame.info.height,
            stride: frame.info.stride,
            size: frame.info.size as usize,
        })
    }

    /// The whole framebuffer as an opaque texture, for a screenshot.
    pub fn screenshot(&self) -> Option<gdk::Texture> {
        let frame = self.imp().frame.borrow();
        let frame = frame.as_ref()?;
        let whole = super::tiles::Tile {
            column: 0,
            row: 0,
            x: 0,
            y: 0,
            width: frame.info.width,
            height: frame.info.height,
        };
        let pixels = tile_bgr(frame.memory.bytes(), frame.info.stride as usize, &whole);
        Some(
            gdk::MemoryTexture::new(
                frame.info.width as i32,
                frame.info.height as i32,
                gdk::MemoryFormat::B8g8r8,
                &glib::Bytes::from_owned(pixels),
                frame.info.width as usize * 3,
            )
            .upcast(),
        )
    }

    pub fn connect_grab_changed(&self, callback: impl Fn(bool) + 'static) {
        *self.imp().on_grab.borrow_mut() = Some(Box::new(callback));
    }

    pub fn connect_frame_changed(&self, callback: impl Fn((u32, u32)) + 'static) {
        *self.imp().on_frame.borrow_mut() = Some(Box::new(callback));
    }

    pub fn connect_closed(&self, callback: impl Fn(String) + 'static) {
        *self.imp().on_closed.borrow_mut() = Some(Box::new(callback));
    }

    pub fn is_grabbed(&self) -> bool {
        self.imp().grabbed.get()
    }

    /// Grabbing sends every key to the guest, the desktop's shortcuts included.
    pub fn set_grabbed(&self, grabbed: bool) {
        if self.imp().grabbed.replace(grabbed) == grabbed {
            return;
        }
        if let Some(toplevel) = self
            .native()
            .and_then(|n| n.surface())
            .and_then(|s| s.downcast::<gdk::Toplevel>().ok())
        {
            if grabbed {
                toplevel.inhibit_system_shortcuts(None::<&gdk::Event>);
            } else {
                toplevel.restore_system_shortcuts();
            }
        }
        if let Some(callback) = self.imp().on_grab.borrow().as_ref() {
            callback(grabbed);
        }
    }

    fn tablet(&self, x: f64, y: f64) -> Option<(u32, u32)> {
        let size = self.frame_size()?;
        let view = input::view_rect(
            self.imp().mode.get(),
            (self.width() as f64, self.height() as f64),
            size,
        );
        Some(input::tablet_position(&view, x, y))
    }

    fn install_input(&self) {
        let keys = gtk::EventControllerKey::new();
        let weak = self.downgrade();
        keys.connect_key_pressed(move |_, _keyval, keycode, state| {
            let Some(widget) = weak.upgrade() else {
                return glib::Propagation::Proceed;
            };
            if !widget.is_grabbed() {
                return glib::Propagation::Proceed;
            }
            let Some(code) = input::evdev_code(keycode) else {
                return glib::Propagation::Stop;
            };
            let held = input::Modifiers {
                ctrl: state.contains(gdk::ModifierType::CONTROL_MASK),
                alt: state.contains(gdk::ModifierType::ALT_MASK),
                shift: state.contains(gdk::ModifierType::SHIFT_MASK),
            };
            let grab_key = widget.imp().grab_key.get();
            if grab_key.releases(held, code) {
                // Let go of the modifiers the guest saw pressed.
                for &code in grab_key.held_keys() {
                    widget.send(InputCommand::Key { code, down: false });
                }
                widget.set_grabbed(false);
                return glib::Propagation::Stop;
            }
            widget.send(InputCommand::Key { code, down: true });
            glib::Propagation::Stop
        });
        let weak = self.downgrade();
        keys.connect_key_released(move |_, _keyval, keycode, _state| {
            if let Some(widget) = weak.upgrade() {
                if widget.is_grabbed() {
                    if let Some(code) = input::evdev_code(keycode) {
                        widget.send(InputCommand::Key { code, down: false });
                    }
                }
            }
        });
        self.add_controller(keys);

        // Keys go where the focus is: a grab without the focus would be a lie.
        let focus = gtk::EventControllerFocus::new();
        let weak = self.downgrade();
        focus.connect_leave(move |_| {
            if let Some(widget) = weak.upgrade() {
                widget.set_grabbed(false);
            }
        });
        self.add_controller(focus);

        let motion = gtk::EventControllerMotion::new();
        let weak = self.downgrade();
        motion.connect_motion(move |_, x, y| {
            if let Some(widget) = weak.upgrade() {
                if let Some((x, y)) = widget.tablet(x, y) {
                    widget.send(InputCommand::Pointer { x, y });
                }
            }
        });
        self.add_controller(motion);

        let click = gtk::GestureClick::new();
        click.set_button(0);
        let weak = self.downgrade();
        click.connect_pressed(move |gesture, _, x, y| {
            let Some(widget) = weak.upgrade() else { return };
            widget.grab_focus();
            if !widget.is_grabbed() && widget.frame_size().is_some() {
                widget.set_grabbed(true);
            }
            if let (Some(button), Some((x, y))) =
                (mouse_button(gesture.current_button()), widget.tablet(x, y))
            {
                widget.send(InputCommand::Pointer { x, y });
                widget.send(InputCommand::Button { button, down: true });
            }
        });
        let weak = self.downgrade();
        click.connect_released(move |gesture, _, _, _| {
            let Some(widget) = weak.upgrade() else { return };
            if let Some(button) = mouse_button(gesture.current_button()) {
                widget.send(InputCommand::Button {
                    button,
                    down: false,
                });
            }
        });
        self.add_controller(click);

        let scroll = gtk::EventControllerScroll::new(
            gtk::EventControllerScrollFlags::VERTICAL | gtk::EventControllerScrollFlags::DISCRETE,
        );
        let weak = self.downgrade();
        scroll.connect_scroll(move |_, _dx, dy| {
            if let Some(widget) = weak.upgrade() {
                let delta = -dy.round() as i32;
                if delta != 0 {
                    widget.send(InputCommand::Wheel { delta });
                }
            }
            glib::Propagation::Stop
        });
        self.add_controller(scroll);
    }
}

/// A tile as a cairo node: its pixels copied into a cairo RGB24 surface (x8r8g8b8 is cairo's
/// own RGB24 layout, X byte ignored, so a plain row copy) and painted into `bounds`. `None`
/// when cairo cannot make the surface (out of memory): the tile stays black, nothing panics.
fn tile_node(
    frame: &[u8],
    stride: usize,
    tile: &Tile,
    bounds: &graphene::Rect,
) -> Option<gsk::RenderNode> {
    let mut surface =
        cairo::ImageSurface::create(cairo::Format::Rgb24, tile.width as i32, tile.height as i32)
            .ok()?;
    let to_stride = surface.stride() as usize;
    {
        let mut data = surface.data().ok()?;
        let row_bytes = tile.width as usize * 4;
        for y in 0..tile.height as usize {
            let from = (tile.y as usize + y) * stride + tile.x as usize * 4;
            data[y * to_stride..y * to_stride + row_bytes]
                .copy_from_slice(&frame[from..from + row_bytes]);
        }
    }
    let node = gsk::CairoNode::new(bounds);
    let cr = node.draw_context();
    cr.translate(bounds.x() as f64, bounds.y() as f64);
    let (sx, sy) = (
        bounds.width() as f64 / tile.width as f64,
        bounds.height() as f64 / tile.height as f64,
    );
    cr.scale(sx, sy);
    cr.set_source_surface(&surface, 0.0, 0.0).ok()?;
    let source = cr.source();
    // Neighbouring tiles meet without dark seams when scaled; 1:1 is a plain copy.
    source.set_extend(cairo::Extend::Pad);
    source.set_filter(if sx == 1.0 && sy == 1.0 {
        cairo::Filter::Fast
    } else {
        cairo::Filter::Bilinear
    });
    cr.rectangle(0.0, 0.0, tile.width as f64, tile.height as f64);
    cr.fill().ok()?;
    drop(cr);
    Some(node.upcast())
}

fn mouse_button(button: u32) -> Option<MouseButton> {
    match button {
        gdk::BUTTON_PRIMARY => Some(MouseButton::Left),
        gdk::BUTTON_MIDDLE => Some(MouseButton::Middle),
        gdk::BUTTON_SECONDARY => Some(MouseButton::Right),
        _ => None,
    }
}
