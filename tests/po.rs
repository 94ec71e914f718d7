//! Translations stay in step with the sources: every source file with translatable strings is
//! in po/POTFILES, every listed file exists, and po/ru.po translates every string that
//! po/update would extract now.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn potfiles() -> Vec<String> {
    std::fs::read_to_string(repo().join("po/POTFILES"))
        .expect("po/POTFILES")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn potfiles_lists_every_file_with_translatable_strings() {
    let listed = potfiles();
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    let mut missing = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let relative = file.strip_prefix(repo()).unwrap().display().to_string();
        if text.contains("gettext(\"") && !listed.contains(&relative) {
            missing.push(relative);
        }
    }
    assert!(
        missing.is_empty(),
        "po/POTFILES misses {missing:?}: add them, then run po/update and translate the new \
         strings in po/ru.po"
    );
    for file in &listed {
        assert!(
            repo().join(file).is_file(),
            "po/POTFILES lists {file}, which does not exist"
        );
    }
}

#[test]
fn russian_translation_is_complete() {
    let dir = std::env::temp_dir().join(format!("hangar-po-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pot = dir.join("hangar.pot");
    let status = Command::new("xgettext")
        .current_dir(repo())
        .args([
            "--language=C",
            "--from-code=UTF-8",
            "--keyword=gettext",
            "--keyword=gettext_noop",
            "--keyword=ngettext:1,2",
            "--files-from=po/POTFILES",
            "--output",
        ])
        .arg(&pot)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run xgettext (install gettext: scripts/install-deps)");
    assert!(status.success(), "xgettext failed");
    let output = Command::new("msgcmp")
        .arg(repo().join("po/ru.po"))
        .arg(&pot)
        .output()
        .expect("run msgcmp");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "po/ru.po lacks translations (run po/update, then translate):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
