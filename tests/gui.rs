//! The GUI end to end: the real `hangar` under Xvfb, driven through AT-SPI by the drivers in
//! tests/gui/ (harness.py is what they share), against a real hangard running real workers
//! with tiny guests on /dev/kvm, all on a session bus of their own (`dbus-run-session`). Each
//! driver prints a line per check; its test fails when any check fails or a tool is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// hangard and hangarctl are the engine's binaries, built beside ours by
/// `cargo test --workspace` (scripts/test).
fn engine_binary(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_hangar")).parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the engine first (`cargo build -p hangar-engine --bins`, or run \
         `cargo test --workspace` / scripts/test)",
        path.display()
    );
    path
}

fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is missing: install {package} (scripts/install-deps)"
    );
}

/// One driver at a time: each brings its own Xvfb, bus and hangard, and two at once on a
/// two-core machine would only make each other's waits time out.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the driver `tests/gui/<script>` in a session bus of its own, with everything it needs
/// checked first.
fn run_driver(script: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require("Xvfb", "xvfb");
    require("dbus-run-session", "dbus-bin");
    require("xwd", "x11-apps");
    require("xclip", "xclip");
    require("xdotool", "xdotool");
    assert!(
        Path::new("/usr/libexec/at-spi-bus-launcher").exists(),
        "AT-SPI is missing: install at-spi2-core (scripts/install-deps)"
    );
    let pyatspi = Command::new("/usr/bin/python3")
        .args(["-c", "import pyatspi"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(pyatspi, "python3-pyatspi is missing (scripts/install-deps)");
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "/dev/kvm is not usable: the GUI test boots tiny guests on KVM"
    );

    let tiny = Command::new(repo().join("tests/guests/tiny/build"))
        .output()
        .expect("run tests/guests/tiny/build");
    assert!(
        tiny.status.success(),
        "building the tiny guests failed:\n{}",
        String::from_utf8_lossy(&tiny.stderr)
    );
    let tiny_dir = String::from_utf8(tiny.stdout).unwrap().trim().to_string();

    // The AT-SPI bus of this session puts its socket in XDG_RUNTIME_DIR, or without one in the
    // shared ~/.cache/at-spi, where the next session's bus would replace it under our feet.
    let runtime = std::env::temp_dir().join(format!(
        "hangar-gui-{}-{}",
        std::process::id(),
        script.trim_end_matches(".py")
    ));
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let status = Command::new("timeout")
        .args(["600", "dbus-run-session", "--", "/usr/bin/python3"])
        .arg(repo().join("tests/gui").join(script))
        .env("HANGAR", env!("CARGO_BIN_EXE_hangar"))
        .env("HANGARD", engine_binary("hangard"))
        .env("HANGARCTL", engine_binary("hangarctl"))
        .env("TINY_GUESTS", tiny_dir)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env("XDG_RUNTIME_DIR", &runtime)
        .status()
        .expect("run dbus-run-session");
    let _ = std::fs::remove_dir_all(&runtime);
    assert!(
        status.success(),
        "the GUI checks of {script} failed (see the lines above)"
    );
}

#[test]
fn the_gui_manages_vms_under_xvfb_through_at_spi() {
    run_driver("manager.py");
}

#[test]
fn the_new_vm_assistant_creates_a_vm_and_cancel_leaves_nothing() {
    run_driver("wizard.py");
}

#[test]
fn preferences_take_effect_and_last_and_force_off_asks_first() {
    run_driver("preferences.py");
}

#[test]
fn the_hardware_editor_applies_edits_that_persist_and_shows_refusals_by_field() {
    run_driver("editor.py");
}
