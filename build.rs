//! Compiles ui/ into a GResource and po/*.po into message catalogs under OUT_DIR.

use std::path::Path;
use std::process::Command;

fn main() {
    glib_build_tools::compile_resources(&["ui"], "ui/hangar.gresource.xml", "hangar.gresource");

    let out = std::env::var("OUT_DIR").unwrap();
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
