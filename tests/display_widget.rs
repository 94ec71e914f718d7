//! The console widget against a fake display server, under Xvfb.
//!
//! The fake server stands in for the worker until hangar-vmm's display stream lands on main: it
//! speaks the same protocol (a framebuffer message with the memfd attached as SCM_RIGHTS, then
//! damage), serves a memfd with a test pattern, and reads the input commands the widget sends.
//! The widget under test is the real one, in a real GTK window, drawn by GTK's renderer.
//!
//! Runs itself again under `xvfb-run` (harness = false: GTK wants the main thread).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use gtk::prelude::*;
use gtk::{gdk, glib};
use hangar::widgets::display::input::{view_rect, ScaleMode};
use hangar::widgets::display::DisplayWidget;

const WIDTH: u32 = 320;
const HEIGHT: u32 = 200;
const STRIDE: u32 = WIDTH * 4;
const SIZE: usize = (STRIDE * HEIGHT) as usize;

/// The guest side: the memfd and its writable mapping.
struct FakeFramebuffer {
    fd: OwnedFd,
    pixels: *mut u8,
}

impl FakeFramebuffer {
    fn new() -> FakeFramebuffer {
        // SAFETY: creating an anonymous memory file with a static name.
        let raw = unsafe { libc::memfd_create(c"fake-framebuffer".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0, "memfd_create failed");
        // SAFETY: raw is a fresh descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sizing the file we own.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), SIZE as i64) }, 0);
        // SAFETY: a shared read-write mapping of the whole file.
        let pixels = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(pixels, libc::MAP_FAILED);
        FakeFramebuffer {
            fd,
            pixels: pixels.cast(),
        }
    }

    /// Fills a rectangle with (r, g, b); the X byte is left 0, as the worker may leave it.
    fn fill(&self, x0: u32, y0: u32, w: u32, h: u32, (r, g, b): (u8, u8, u8)) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let at = (y * STRIDE + x * 4) as usize;
                // SAFETY: inside the SIZE-byte mapping (x < WIDTH, y < HEIGHT).
                unsafe {
                    *self.pixels.add(at) = b;
                    *self.pixels.add(at + 1) = g;
                    *self.pixels.add(at + 2) = r;
                    *self.pixels.add(at + 3) = 0;
                }
            }
        }
    }
}

/// Sends one line with a descriptor attached, as the worker sends the framebuffer message.
fn send_with_fd(socket: &UnixStream, line: &str, fd: &OwnedFd) {
    let mut iov = libc::iovec {
        iov_base: line.as_ptr() as *mut libc::c_void,
        iov_len: line.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain old data.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = space;
    // SAFETY: filling the one control message the buffer was sized for, then sending from live
    // buffers.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        libc::CMSG_DATA(cmsg)
            .cast::<libc::c_int>()
            .write_unaligned(fd.as_raw_fd());
        assert_eq!(
            libc::sendmsg(socket.as_raw_fd(), &header, 0),
            line.len() as isize
        );
    }
}

fn send(socket: &UnixStream, line: &str) {
    use std::io::Write;
    (&*socket).write_all(line.as_bytes()).unwrap();
}

/// Runs the main loop until `done` or the deadline.
fn spin_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let context = glib::MainContext::default();
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        context.iteration(true);
    }
}

/// The widget as GTK renders it, in B8G8R8A8 (premultiplied; everything here is opaque).
fn render(widget: &DisplayWidget) -> (Vec<u8>, usize, i32, i32) {
    let (w, h) = (widget.width(), widget.height());
    // What GTK drew in its last frame: wait for a frame after any change first.
    let paintable = gtk::WidgetPaintable::new(Some(widget));
    let snapshot = gtk::Snapshot::new();
    paintable.snapshot(&snapshot, w as f64, h as f64);
    let node = snapshot.to_node().expect("the widget drew something");
    let renderer = widget.native().unwrap().renderer().unwrap();
    let texture = renderer.render_texture(
        &node,
        Some(&gtk::graphene::Rect::new(0.0, 0.0, w as f32, h as f32)),
    );
    let stride = texture.width() as usize * 4;
    let mut pixels = vec![0u8; stride * texture.height() as usize];
    texture.download(&mut pixels, stride);
    (pixels, stride, w, h)
}

/// The colour the widget shows at framebuffer position (fx, fy), as (r, g, b).
fn colour_at(widget: &DisplayWidget, fx: u32, fy: u32) -> (u8, u8, u8) {
    let (pixels, stride, w, h) = render(widget);
    let view = view_rect(ScaleMode::Fit, (w as f64, h as f64), (WIDTH, HEIGHT));
    let scale = view.width / WIDTH as f64;
    let x = (view.x + (fx as f64 + 0.5) * scale) as usize;
    let y = (view.y + (fy as f64 + 0.5) * scale) as usize;
    let at = y * stride + x * 4;
    (pixels[at + 2], pixels[at + 1], pixels[at])
}

fn close(a: (u8, u8, u8), b: (u8, u8, u8)) -> bool {
    let near = |x: u8, y: u8| x.abs_diff(y) <= 8;
    near(a.0, b.0) && near(a.1, b.1) && near(a.2, b.2)
}

fn run_under_x() {
    gtk::init().expect("GTK initialises on the Xvfb display");
    let framebuffer = FakeFramebuffer::new();
    const RED: (u8, u8, u8) = (230, 20, 20);
    const BLUE: (u8, u8, u8) = (20, 20, 230);
    const GREEN: (u8, u8, u8) = (20, 200, 20);
    framebuffer.fill(0, 0, WIDTH / 2, HEIGHT, RED);
    framebuffer.fill(WIDTH / 2, 0, WIDTH / 2, HEIGHT, BLUE);

    let (server, client) = UnixStream::pair().unwrap();
    client.set_nonblocking(true).unwrap();
    let widget = DisplayWidget::new();
    let window = gtk::Window::builder()
        .default_width(WIDTH as i32)
        .default_height(HEIGHT as i32)
        .child(&widget)
        .build();
    window.present();
    widget.attach(OwnedFd::from(client));
    spin_until("the window to map", || {
        widget.is_mapped() && widget.width() > 0
    });

    send_with_fd(
        &server,
        &format!(
            "{{\"event\":\"framebuffer\",\"version\":1,\"width\":{WIDTH},\"height\":{HEIGHT},\"stride\":{STRIDE},\"format\":\"x8r8g8b8\",\"size\":{SIZE}}}\n"
        ),
        &framebuffer.fd,
    );
    spin_until("the first frame", || widget.tiles_rebuilt() > 0);
    assert_eq!(widget.frame_size(), Some((WIDTH, HEIGHT)));

    let left = colour_at(&widget, 40, 100);
    let right = colour_at(&widget, 280, 100);
    assert!(
        close(left, RED),
        "left half shows {left:?}, expected {RED:?}"
    );
    assert!(
        close(right, BLUE),
        "right half shows {right:?}, expected {BLUE:?}"
    );
    // 320×200 is 3×2 tiles of 128×128, each built once.
    let built = widget.tiles_rebuilt();
    assert_eq!(built, 6, "first frame built {built} tiles");
    println!("ok   the pattern shows, opaque (X byte 0), from 6 tiles");

    // A small change in one tile: only that tile is rebuilt.
    framebuffer.fill(200, 150, 10, 10, GREEN);
    assert!(
        close(colour_at(&widget, 205, 155), BLUE),
        "no damage, no change yet"
    );
    send(
        &server,
        "{\"event\":\"damage\",\"rects\":[{\"x\":200,\"y\":150,\"width\":10,\"height\":10}]}\n",
    );
    let before = widget.tiles_rebuilt();
    spin_until("the damage to be drawn", || widget.tiles_rebuilt() > before);
    let after = colour_at(&widget, 205, 155);
    assert!(
        close(after, GREEN),
        "damaged area shows {after:?}, expected {GREEN:?}"
    );
    assert_eq!(
        widget.tiles_rebuilt() - before,
        1,
        "one damaged tile, one rebuilt"
    );
    println!("ok   damage rebuilds only the tile it touches");

    // Resync redraws everything.
    let before = widget.tiles_rebuilt();
    send(&server, "{\"event\":\"resync\"}\n");
    spin_until("the resync", || widget.tiles_rebuilt() - before == 6);
    println!("ok   resync rebuilds every tile");

    // Input goes back to the worker as the protocol says.
    widget.send_keys(&[29, 56, 111]);
    let mut reader = BufReader::new(server.try_clone().unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let lines: Vec<String> = (0..6)
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line.trim().to_string()
        })
        .collect();
    assert_eq!(
        lines,
        [
            r#"{"cmd":"key","code":29,"down":true}"#,
            r#"{"cmd":"key","code":56,"down":true}"#,
            r#"{"cmd":"key","code":111,"down":true}"#,
            r#"{"cmd":"key","code":111,"down":false}"#,
            r#"{"cmd":"key","code":56,"down":false}"#,
            r#"{"cmd":"key","code":29,"down":false}"#,
        ]
    );
    println!("ok   send-key presses in order and releases in reverse");

    // The screenshot is the framebuffer itself.
    let shot = widget.screenshot().expect("a screenshot");
    let path = std::env::temp_dir().join(format!("hangar-shot-{}.png", std::process::id()));
    shot.save_to_png(&path).unwrap();
    let loaded = gdk::Texture::from_filename(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        (loaded.width(), loaded.height()),
        (WIDTH as i32, HEIGHT as i32)
    );
    println!("ok   screenshot saved as a {WIDTH}x{HEIGHT} PNG");

    // The worker going away is reported, not a crash.
    let closed = std::rc::Rc::new(std::cell::Cell::new(false));
    let flag = closed.clone();
    widget.connect_closed(move |_| flag.set(true));
    drop(reader);
    drop(server);
    spin_until("the end of the stream", || closed.get());
    assert!(!widget.is_attached());
    println!("ok   the end of the stream is noticed");
    println!("6 passed, 0 failed");
}

fn main() {
    if std::env::var_os("HANGAR_DISPLAY_TEST_UNDER_X").is_some() {
        run_under_x();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 800x600x24"])
        .arg(exe)
        .env("HANGAR_DISPLAY_TEST_UNDER_X", "1")
        .env("GSK_RENDERER", "cairo")
        .env("GDK_BACKEND", "x11")
        .env_remove("WAYLAND_DISPLAY")
        .status()
        .expect("run xvfb-run (install xvfb: scripts/install-deps)");
    assert!(
        status.success(),
        "the display widget test failed under Xvfb"
    );
}
