//! The desktop integration files: the launcher entry and the AppStream metainfo pass their
//! validators, and `scripts/install-user-data` installs them, the icons and the D-Bus service
//! for a user, pointing at the binaries.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err} (scripts/install-deps installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    text
}

#[test]
fn install_user_data_installs_valid_desktop_files() {
    let root = std::env::temp_dir().join(format!("hangar-desktop-{}", std::process::id()));
    let data = root.join("share");
    let bindir = root.join("bin");
    run(
        repo().join("scripts/install-user-data").to_str().unwrap(),
        &[bindir.to_str().unwrap(), data.to_str().unwrap()],
    );
    let file = |rel: &str| -> PathBuf {
        let path = data.join(rel);
        assert!(path.is_file(), "{} was not installed", path.display());
        path
    };
    let desktop = file("applications/dev.hangar.App.desktop");
    run("desktop-file-validate", &[desktop.to_str().unwrap()]);
    let entry = std::fs::read_to_string(&desktop).unwrap();
    assert!(
        entry.contains(&format!("Exec={}/hangar\n", bindir.display())),
        "{entry}"
    );
    assert!(entry.contains("Icon=dev.hangar.App\n"), "{entry}");
    assert!(
        entry.contains("Comment[ru]="),
        "the entry has no Russian comment"
    );

    let metainfo = file("metainfo/dev.hangar.App.metainfo.xml");
    let report = run(
        "appstreamcli",
        &["validate", "--no-net", metainfo.to_str().unwrap()],
    );
    assert!(report.contains("Validation was successful"), "{report}");

    let service =
        std::fs::read_to_string(file("dbus-1/services/dev.hangar.Hangar.service")).unwrap();
    assert!(
        service.contains(&format!("Exec={}/hangard", bindir.display())),
        "{service}"
    );
    for icon in [
        "icons/hicolor/scalable/apps/dev.hangar.App.svg",
        "icons/hicolor/symbolic/apps/dev.hangar.App-symbolic.svg",
    ] {
        let svg = std::fs::read_to_string(file(icon)).unwrap();
        assert!(
            svg.trim_start().starts_with("<?xml") && svg.contains("<svg"),
            "{icon}"
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{icon}");
    }
    // The preferences' schema is installed compiled, where GLib finds it: `gsettings` reads
    // the defaults from it.
    file("glib-2.0/schemas/dev.hangar.App.gschema.xml");
    file("glib-2.0/schemas/gschemas.compiled");
    let keys = Command::new("gsettings")
        .env("GSETTINGS_SCHEMA_DIR", data.join("glib-2.0/schemas"))
        .env("GSETTINGS_BACKEND", "memory")
        .args(["list-recursively", "dev.hangar.App"])
        .output()
        .expect("run gsettings (libglib2.0-bin)");
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(
        keys.contains("dev.hangar.App grab-key 'ctrl-alt'")
            && keys.contains("dev.hangar.App stats-interval uint32 1000"),
        "{keys}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
