//! Where a recording goes: the user's videos folder, a file named after the VM and the moment,
//! never over an existing file.

use std::path::{Path, PathBuf};

/// The folder for recordings: the XDG videos directory when the user has one, else ~/Videos.
pub fn videos_dir(xdg_videos: Option<PathBuf>, home: &Path) -> PathBuf {
    xdg_videos
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| home.join("Videos"))
}

/// `<vm>-<stamp>.webm`, with anything in the VM's name that cannot be part of a file name
/// (a slash, a control character, a leading dot that would hide it) replaced.
pub fn file_name(vm: &str, stamp: &str) -> String {
    let mut name: String = vm
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    if name.is_empty() {
        name.push_str("vm");
    }
    format!("{name}-{stamp}.webm")
}

/// `dir/name`, or `dir/<stem>-2.webm`, `-3`… when a file of that name is already there.
pub fn free_path(dir: &Path, name: &str, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let first = dir.join(name);
    if !exists(&first) {
        return first;
    }
    let (stem, extension) = match name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => (stem, format!(".{extension}")),
        _ => (name, String::new()),
    };
    (2..)
        .map(|n| dir.join(format!("{stem}-{n}{extension}")))
        .find(|path| !exists(path))
        .expect("an unbounded range finds a free name")
}

/// The name the file has while it is being written; renamed once the muxer has finished it.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videos_go_to_the_xdg_folder_or_home() {
        let home = Path::new("/home/u");
        assert_eq!(
            videos_dir(Some("/data/Clips".into()), home),
            Path::new("/data/Clips")
        );
        assert_eq!(videos_dir(None, home), Path::new("/home/u/Videos"));
        assert_eq!(
            videos_dir(Some("relative".into()), home),
            Path::new("/home/u/Videos")
        );
    }

    #[test]
    fn names_carry_the_vm_and_the_moment() {
        assert_eq!(
            file_name("debian-tiny", "2026-11-23-101500"),
            "debian-tiny-2026-11-23-101500.webm"
        );
        assert_eq!(file_name("a/b\nc", "t"), "a_b_c-t.webm");
        assert_eq!(file_name(".hidden", "t"), "_hidden-t.webm");
        assert_eq!(file_name("", "t"), "vm-t.webm");
        assert_eq!(file_name("Машина", "t"), "Машина-t.webm");
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = Path::new("/v");
        let taken = [Path::new("/v/a.webm"), Path::new("/v/a-2.webm")];
        let exists = |p: &Path| taken.contains(&p);
        assert_eq!(free_path(dir, "b.webm", exists), Path::new("/v/b.webm"));
        assert_eq!(free_path(dir, "a.webm", exists), Path::new("/v/a-3.webm"));
        assert_eq!(
            free_path(dir, "noext", |p| p == Path::new("/v/noext")),
            Path::new("/v/noext-2")
        );
    }

    #[test]
    fn the_partial_file_sits_beside_the_final_one() {
        assert_eq!(
            partial_path(Path::new("/v/a.webm")),
            Path::new("/v/a.webm.part")
        );
    }
}
