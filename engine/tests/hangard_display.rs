//! The display through hangard: OpenDisplay on the Vm1 D-Bus interface hands out a socket
//! connected straight to the worker's display stream (memfd, damage, keys), `hangarctl
//! screenshot` saves the screen, a definition's resolution and input devices reach the worker,
//! and a headless VM says it has no display. Real dbus-daemon,
//! real hangard, real workers with tiny guests on /dev/kvm.

#[path = "support/hangard.rs"]
mod hangard_env;
mod support;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use hangar_engine::host::api::{ManagerProxyBlocking, VmProxyBlocking};
use hangard_env::Host;
use serde_json::json;
use support::display::DisplayClient;
use support::{require_kvm, tiny_guest};

const BOOT: Duration = Duration::from_secs(30);

#[test]
fn open_display_streams_the_framebuffer_and_hangarctl_saves_screenshots() {
    require_kvm();
    let host = Host::new();
    // No size in the definition: the worker's default screen, 1280x800.
    let definition = json!({"name": "fb", "kernel": tiny_guest("fbdraw"), "memory": "32M"});
    let file = host.definition_file("fb", &definition);
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["start", "fb"]);

    let bus = host.bus().unwrap();
    let path = ManagerProxyBlocking::new(&bus)
        .unwrap()
        .lookup_by_name("fb")
        .unwrap();
    let vm = VmProxyBlocking::builder(&bus)
        .path(path)
        .unwrap()
        .build()
        .unwrap();
    let fd = vm.open_display().expect("OpenDisplay");
    let mut client = DisplayClient::from_stream(UnixStream::from(std::os::fd::OwnedFd::from(fd)));
    assert_eq!(client.width(), 1280);
    assert_eq!(client.info["height"], 800);
    assert_eq!(client.stride(), 5120);

    let mut console = host.console("fb");
    console.expect("fb ready", BOOT);
    console.type_text("d");
    console.expect("drawn 1", BOOT);
    // fbdraw writes bytes 100 * 4096 .. 164 * 4096: rows 80..131 of a 5120-byte stride.
    let (rows, events) = client.damage_within(Duration::from_millis(500));
    assert_eq!(rows, vec![(80, 132)], "{events:?}");
    assert_eq!(client.pixel(0, 80), 0x00ff_6401);

    let shot = host.runtime_dir().join("shot.png");
    let saved = host.ctl_json(&["screenshot", "fb", shot.to_str().unwrap()]);
    assert_eq!(saved["width"], 1280, "{saved}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut rgb = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut rgb).unwrap();
    assert_eq!((frame.width, frame.height), (1280, 800));
    let at = |x: usize, y: usize| rgb[(y * 1280 + x) * 3..(y * 1280 + x) * 3 + 3].to_vec();
    assert_eq!(at(0, 80), vec![0xff, 0x64, 0x01]);
    assert_eq!(at(0, 79), vec![0, 0, 0]);
    let err = host.ctl_err(&["screenshot", "fb", "/nonexistent-dir/s.png"]);
    assert!(err.1.contains("/nonexistent-dir/s.png"), "{err:?}");

    host.ctl_ok(&["destroy", "fb"]);
}

#[test]
fn a_headless_vm_has_no_display() {
    require_kvm();
    let host = Host::new();
    let definition = json!({
        "name": "headless",
        "kernel": tiny_guest("ticker"),
        "memory": "32M",
        "display": "none",
    });
    let file = host.definition_file("headless", &definition);
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    host.ctl_ok(&["start", "headless"]);
    let err = host.ctl_err(&["screenshot", "headless", "/tmp/never.png"]);
    assert_eq!(err.0, "dev.hangar.Error.Unsupported", "{err:?}");
    assert!(err.1.contains("no display"), "{err:?}");
    assert!(!std::path::Path::new("/tmp/never.png").exists());
    host.ctl_ok(&["destroy", "headless"]);
}

#[test]
fn the_definitions_resolution_and_input_devices_reach_the_worker() {
    require_kvm();
    let host = Host::new();
    let definition = json!({
        "name": "pci",
        "kernel": tiny_guest("pcilist"),
        "memory": "32M",
        "resolution": "1024x768",
        "input": {"tablet": false},
    });
    let file = host.definition_file("pci", &definition);
    host.ctl_ok(&["define", file.to_str().unwrap()]);
    let stored = host.ctl_json(&["dumpdef", "pci"]);
    assert_eq!(stored["resolution"], "1024x768", "{stored}");
    assert_eq!(stored["input"], json!({"keyboard": true, "tablet": false}));
    host.ctl_ok(&["start", "pci"]);

    // The guest lists what it finds on PCI: the keyboard, and no tablet.
    let mut console = host.console("pci");
    console.expect("pci done", BOOT);
    assert!(
        console.seen.contains("name=Hangar Virtio Keyboard"),
        "{}",
        console.seen
    );
    assert!(
        !console.seen.contains("Tablet"),
        "the tablet was switched off: {}",
        console.seen
    );
    let shot = host.runtime_dir().join("pci.png");
    let saved = host.ctl_json(&["screenshot", "pci", shot.to_str().unwrap()]);
    assert_eq!(
        (saved["width"].as_u64(), saved["height"].as_u64()),
        (Some(1024), Some(768)),
        "{saved}"
    );
    console.type_text("q");
    console.expect("bye", BOOT);
    host.wait_state("pci", "shutoff", BOOT);

    // A size the framebuffer cannot have is refused by field, and nothing changes.
    let mut bad = stored.clone();
    bad["resolution"] = json!("5000x5000");
    let file = host.definition_file("pci-bad", &bad);
    let generation = stored["generation"].to_string();
    let (error, message, _) = host.ctl_err(&[
        "update",
        "pci",
        file.to_str().unwrap(),
        "--generation",
        &generation,
    ]);
    assert_eq!(error, "dev.hangar.Error.InvalidDefinition", "{message}");
    assert!(message.starts_with("field \"resolution\""), "{message}");
    assert_eq!(host.ctl_json(&["dumpdef", "pci"]), stored);
}
