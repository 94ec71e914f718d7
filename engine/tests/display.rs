//! The display on real /dev/kvm with tiny guests (tests/guests/tiny): the framebuffer memfd and
//! damage on the display socket, keys through the i8042, stalled clients, screenshots, the
//! virtio-input devices `--input` asks for as the guest finds them on PCI, and display settings
//! refused with a clear message.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::display::DisplayClient;
use support::*;

const BOOT: Duration = Duration::from_secs(30);
/// The fb guests draw rows 100..164 of a 1024x768 screen.
const DRAWN: (u32, u32) = (100, 164);

/// Starts `guest` with a 1024x768 display; returns the worker and its display socket path.
fn start_with_display(guest: &str, extra: &[&str], dir: &TempDir) -> (Vmm, std::path::PathBuf) {
    require_kvm();
    let socket = dir.path("display.sock");
    let kernel = tiny_guest(guest).display().to_string();
    let socket_arg = socket.display().to_string();
    let shots = dir.path("").display().to_string();
    let mut args = vec![
        "--kernel",
        &kernel,
        "--memory",
        "32M",
        "--display",
        "1024x768",
        "--display-socket",
        &socket_arg,
        "--screenshot-dir",
        &shots,
    ];
    args.extend_from_slice(extra);
    (Vmm::start(&args, true), socket)
}

fn expected_pixel(row: u32, pass: u32) -> u32 {
    0x00ff_0000 | (row << 8) | pass
}

fn assert_pattern(client: &DisplayClient, pass: u32) {
    for row in DRAWN.0..DRAWN.1 {
        for x in [0, 1, 511, 1023] {
            assert_eq!(
                client.pixel(x, row),
                expected_pixel(row, pass),
                "pixel ({x}, {row}) after pass {pass}"
            );
        }
    }
    assert_eq!(client.pixel(0, DRAWN.0 - 1), 0);
    assert_eq!(client.pixel(1023, DRAWN.1), 0);
}

#[test]
fn damage_covers_exactly_the_drawn_rows_and_the_memfd_shows_the_pixels() {
    let dir = TempDir::new("fb");
    let (mut vmm, socket) = start_with_display("fbdraw", &[], &dir);
    let mut client = DisplayClient::connect(&socket);
    assert_eq!(client.info["version"], 1);
    assert_eq!(client.width(), 1024);
    assert_eq!(client.info["height"], 768);
    assert_eq!(client.stride(), 4096);
    vmm.expect("fb ready", BOOT);
    // Nothing drawn yet: a static screen sends nothing.
    let (rows, events) = client.damage_within(Duration::from_millis(500));
    assert!(rows.is_empty(), "damage before drawing: {events:?}");

    for pass in 1..=2 {
        vmm.type_serial(b"d");
        vmm.expect(&format!("drawn {pass}"), BOOT);
        // Damage trails the drawing by at most one 60 Hz tick; allow for a slow host.
        let (rows, events) = client.damage_within(Duration::from_millis(500));
        assert_eq!(rows, vec![DRAWN], "pass {pass}: {events:?}");
        assert_pattern(&client, pass);
    }

    // A second client sees the same memory at once.
    let second = DisplayClient::connect(&socket);
    assert_pattern(&second, 2);

    // Screenshots: a PNG of the same pixels, and clear errors for bad paths.
    let mut control = vmm.control();
    let shot = dir.path("shot.png");
    let reply = control.request(json!({"cmd": "screenshot", "path": shot}));
    assert_eq!(reply["ok"], true, "{reply}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((frame.width, frame.height), (1024, 768));
    let at = |x: usize, y: usize| &rgb[(y * 1024 + x) * 3..(y * 1024 + x) * 3 + 3];
    assert_eq!(at(7, 100), [0xff, 100, 2]);
    assert_eq!(at(7, 163), [0xff, 163, 2]);
    assert_eq!(at(7, 99), [0, 0, 0]);
    let reply = control.request(json!({"cmd": "screenshot", "path": "shot.png"}));
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("not absolute"),
        "{reply}"
    );
    // The sandbox keeps screenshots to the --screenshot-dir directories.
    let elsewhere = std::env::temp_dir().join("hangar-outside-the-sandbox.png");
    let reply = control.request(json!({"cmd": "screenshot", "path": elsewhere}));
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("sandbox")
            && reply["error"]
                .as_str()
                .unwrap()
                .contains("--screenshot-dir"),
        "{reply}"
    );
    assert!(!elsewhere.exists());
    let missing = dir.path("no-such-dir/shot.png");
    let reply = control.request(json!({"cmd": "screenshot", "path": missing}));
    assert!(
        reply["error"].as_str().unwrap().contains("no-such-dir"),
        "{reply}"
    );

    // After a reset the same memfd stays valid: the screen is cleared and a full-screen damage
    // tells clients to redraw.
    control.ok("reset");
    let (rows, events) = client.damage_within(Duration::from_millis(500));
    assert_eq!(rows, vec![(0, 768)], "{events:?}");
    vmm.expect("fb ready", BOOT);
    assert_eq!(client.pixel(0, DRAWN.0), 0);
    vmm.type_serial(b"d");
    vmm.expect("drawn 1", BOOT);
    let (rows, _) = client.damage_within(Duration::from_millis(500));
    assert_eq!(rows, vec![DRAWN]);
    assert_pattern(&client, 1);

    vmm.type_serial(b"q");
    vmm.expect("bye", BOOT);
    assert!(vmm.wait(BOOT).success());
}

#[test]
fn a_key_on_the_display_stream_reaches_the_guest_through_the_i8042() {
    let dir = TempDir::new("kbd");
    let (mut vmm, socket) = start_with_display("kbd", &[], &dir);
    let mut client = DisplayClient::connect(&socket);
    vmm.expect("kbd ready", BOOT);
    // KEY_A down and up, KEY_RIGHT (extended): the guest reads set 1, translated by the
    // controller from the keyboard's set 2.
    for (code, down) in [(30, true), (30, false), (106, true)] {
        client.send(&json!({"cmd": "key", "code": code, "down": down}));
    }
    vmm.expect("scancode=0x1e", BOOT);
    vmm.expect("scancode=0x9e", BOOT);
    vmm.expect("scancode=0xe0", BOOT);
    vmm.expect("scancode=0x4d", BOOT);

    // Bad lines get an error event; pointer input goes to the virtio tablet, which this guest
    // does not drive, so it is dropped without a word; the VM carries on.
    client.send_raw(b"{not json");
    let error = client.next_event(BOOT).expect("an error event");
    assert_eq!(error["event"], "error", "{error}");
    client.send(&json!({"cmd": "key", "code": 99999, "down": true}));
    let error = client.next_event(BOOT).expect("an error event");
    assert!(
        error["error"].as_str().unwrap().contains("99999"),
        "{error}"
    );
    client.send(&json!({"cmd": "pointer", "x": 100, "y": 200}));
    client.send(&json!({"cmd": "button", "button": "left", "down": true}));
    client.send(&json!({"cmd": "wheel", "delta": 1}));
    assert!(client.next_event(Duration::from_millis(300)).is_none());

    // KEY_Q ends the guest.
    client.send(&json!({"cmd": "key", "code": 16, "down": true}));
    vmm.expect("scancode=0x10", BOOT);
    vmm.expect("bye", BOOT);
    assert!(vmm.wait(BOOT).success());
}

/// A client without a display socket asks the control socket for a display stream: it gets
/// a connected socket over SCM_RIGHTS, and on it the framebuffer memfd and damage, and its keys
/// reach the guest. A headless VM refuses with a message saying why.
#[test]
fn open_display_on_the_control_socket_passes_a_working_display_stream() {
    require_kvm();
    let fbdraw = tiny_guest("fbdraw").display().to_string();
    let mut vmm = Vmm::start(
        &[
            "--kernel",
            &fbdraw,
            "--memory",
            "32M",
            "--display",
            "1024x768",
        ],
        true,
    );
    let mut control = vmm.control();
    let mut client = DisplayClient::from_stream(control.open_display());
    assert_eq!((client.width(), client.stride()), (1024, 4096));
    // The same connection carries on as a control connection.
    assert_eq!(control.ok("status")["state"], "running");
    vmm.expect("fb ready", BOOT);
    vmm.type_serial(b"d");
    vmm.expect("drawn 1", BOOT);
    let (rows, events) = client.damage_within(Duration::from_millis(500));
    assert_eq!(rows, vec![DRAWN], "{events:?}");
    assert_pattern(&client, 1);
    // A second stream from the same control connection is independent of the first.
    let second = DisplayClient::from_stream(control.open_display());
    assert_pattern(&second, 1);
    drop(second);
    client.send(&json!({"cmd": "key", "code": 99999, "down": true}));
    let error = client.next_event(BOOT).expect("an error event");
    assert!(
        error["error"].as_str().unwrap().contains("99999"),
        "{error}"
    );
    control.ok("kill");
    assert!(vmm.wait(BOOT).success());

    let mut headless = Vmm::start(
        &[
            "--kernel",
            &tiny_guest("ticker").display().to_string(),
            "--memory",
            "32M",
        ],
        true,
    );
    headless.expect("tick 1", BOOT);
    let reply = headless.control().request(json!({"cmd": "open-display"}));
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("no display"),
        "{reply}"
    );
    headless.control().ok("kill");
}

fn last_tick(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("tick ").and_then(|n| n.trim().parse().ok()))
}

#[test]
fn a_stalled_client_stops_neither_the_guest_nor_other_clients() {
    let dir = TempDir::new("stall");
    let (mut vmm, socket) = start_with_display("fbtick", &["--cmdline", "delay=2000"], &dir);
    // This client never reads, so its socket fills up.
    let stalled = DisplayClient::connect(&socket);
    let mut reader = DisplayClient::connect(&socket);
    vmm.expect("tick 1", BOOT);

    let start = Instant::now();
    let mut damage_events = 0;
    let mut ticks = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        let (_, events) = reader.damage_within(Duration::from_millis(500));
        damage_events += events.iter().filter(|e| e["event"] == "damage").count();
        let lines = vmm.lines_within(Duration::from_millis(10));
        if let Some(tick) = last_tick(&lines) {
            ticks.push((start.elapsed(), tick));
        }
    }
    // The guest kept ticking to the end, and the reading client kept getting damage.
    assert!(
        ticks.iter().any(|(at, _)| *at > Duration::from_secs(5)),
        "the guest stopped ticking: {ticks:?}"
    );
    assert!(
        damage_events > 60,
        "only {damage_events} damage events in 6 s"
    );

    // The stalled client now reads: what it missed is summed up by one resync.
    let mut stalled = stalled;
    let mut saw_resync = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !saw_resync {
        match stalled.next_event(Duration::from_secs(1)) {
            Some(event) => saw_resync = event["event"] == "resync",
            None => break,
        }
    }
    assert!(saw_resync, "the stalled client never got a resync");
    // ... and damage flows to it again afterwards.
    let (rows, _) = stalled.damage_within(Duration::from_millis(500));
    assert!(!rows.is_empty());

    vmm.control().ok("kill");
}

#[test]
fn bad_display_settings_are_refused_and_headless_vms_have_no_screenshot() {
    require_kvm();
    let hello = tiny_guest("hello").display().to_string();
    for (value, needle) in [
        ("big", "WIDTHxHEIGHT"),
        ("4000x3000", "3840x2160"),
        ("1281x800", "multiple of 8"),
    ] {
        let output = std::process::Command::new(vmm_binary())
            .args(["--kernel", &hello, "--display", value])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(value) && stderr.contains(needle),
            "{stderr}"
        );
    }

    let mut vmm = Vmm::start(
        &[
            "--kernel",
            &tiny_guest("ticker").display().to_string(),
            "--memory",
            "32M",
        ],
        true,
    );
    vmm.expect("tick 1", BOOT);
    let reply = vmm
        .control()
        .request(json!({"cmd": "screenshot", "path": "/tmp/never.png"}));
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("no display"),
        "{reply}"
    );
    vmm.control().ok("kill");
}

/// The PCI devices the `pcilist` guest finds, one `pci ...` line each (virtio-input ones with
/// their names), with `args` added to a 1024x768 display.
fn pci_devices(args: &[&str]) -> Vec<String> {
    require_kvm();
    let kernel = tiny_guest("pcilist").display().to_string();
    let mut all = vec!["--kernel", &kernel, "--memory", "32M"];
    all.extend_from_slice(args);
    let mut vmm = Vmm::start(&all, false);
    vmm.expect("pcilist start", BOOT);
    let mut lines = Vec::new();
    loop {
        let line = vmm.expect("pci ", BOOT);
        if line == "pci done" {
            break;
        }
        lines.push(line);
    }
    vmm.type_serial(b"q");
    vmm.expect("bye", BOOT);
    assert!(vmm.wait(BOOT).success());
    lines
}

fn input_names(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|line| line.split_once(" name=").map(|(_, name)| name))
        .collect()
}

#[test]
fn the_guest_finds_the_input_devices_the_input_setting_asks_for() {
    let display = ["--display", "1024x768"];
    let with = |input: &[&'static str]| {
        let mut args = display.to_vec();
        args.extend_from_slice(input);
        pci_devices(&args)
    };
    let both = with(&[]);
    assert_eq!(
        input_names(&both),
        ["Hangar Virtio Keyboard", "Hangar Virtio Tablet"],
        "{both:?}"
    );
    assert_eq!(
        with(&["--input", "keyboard,tablet"]),
        both,
        "the default is both"
    );
    let keyboard = with(&["--input", "keyboard"]);
    assert_eq!(
        input_names(&keyboard),
        ["Hangar Virtio Keyboard"],
        "{keyboard:?}"
    );
    let tablet = with(&["--input", "tablet"]);
    assert_eq!(input_names(&tablet), ["Hangar Virtio Tablet"], "{tablet:?}");
    let none = with(&["--input", "none"]);
    assert!(
        !none.iter().any(|line| line.contains("10521af4")),
        "no virtio-input device at all: {none:?}"
    );
    // The other devices stay where they were: only the input devices went.
    assert_eq!(none.len(), both.len() - 2, "{none:?} vs {both:?}");
    assert_eq!(none[..], both[..none.len()]);
    // Headless: no virtio-input either, and asking for one says what is missing.
    assert_eq!(pci_devices(&[]), none);
    let err = run_expecting_error(&[
        "--kernel",
        &tiny_guest("pcilist").display().to_string(),
        "--input",
        "tablet",
    ]);
    assert!(err.contains("--display"), "{err}");
    let output = std::process::Command::new(vmm_binary())
        .args(["--kernel", &tiny_guest("pcilist").display().to_string()])
        .args(["--display", "1024x768", "--input", "mouse"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"mouse\""), "{stderr}");
}
