//! Compiles ui/ into a GResource, the GSettings schema, and po/*.po into message catalogs under
//! OUT_DIR.

use std::path::Path;
use std::process::Command;

fn main() {
    glib_build_tools::compile_resources(&["ui"], "ui/hangar.gresource.xml", "hangar.gresource");

    let out = std::env::var("OUT_DIR").unwrap();

    // The preferences' schema, compiled for running from the source tree (src/settings.rs).
    println!("cargo:rerun-if-changed=data/dev.hangar.App.gschema.xml");
    let schemas = Path::new(&out).join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    std::fs::copy(
        "data/dev.hangar.App.gschema.xml",
        schemas.join("dev.hangar.App.gschema.xml"),
    )
    .unwrap();
    let status = Command::new("glib-compile-schemas")
        .arg("--strict")
        .arg(&schemas)
        .status()
        .expect("run glib-compile-schemas (install libglib2.0-bin: scripts/install-deps)");
    assert!(
        status.success(),
        "glib-compile-schemas refused data/dev.hangar.App.gschema.xml"
    );
    println!("cargo:rerun-if-changed=po/LINGUAS");
    let linguas = std::fs::read_to_string("po/LINGUAS").expect("po/LINGUAS");
    for lang in linguas
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let po = format!("po/{lang}.po");
        println!("cargo:rerun-if-changed={po}");
        let dir = Path::new(&out)
            .join("locale")
            .join(lang)
            .join("LC_MESSAGES");
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("msgfmt")
            .args(["--check", "-o"])
            .arg(dir.join("hangar.mo"))
            .arg(&po)
            .status()
            .expect("run msgfmt (install gettext: scripts/install-deps)");
        assert!(status.success(), "msgfmt refused {po}");
    }
}
