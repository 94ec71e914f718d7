//! Where hangard lets a client point it. Kernels, initrds and images to import must lie, once
//! symbolic links and `..` are resolved, under the user's own places or the system's places for
//! software and media. Any program on the session bus can call hangard, so without this it
//! could have hangard hand a file such as `/etc/shadow` or `/proc/kcore` to a guest as its
//! initrd.
//!
//! Allowed: `$HOME` and the XDG base directories, `/boot`, `/usr`, `/opt`, `/srv`, `/media`,
//! `/mnt`, `/run/media`, `/tmp` and `/var/tmp`, plus the directories listed in
//! `HANGAR_ALLOWED_PATHS` (colon-separated, as `PATH`).

use std::path::{Path, PathBuf};

/// System places any user's kernels and images may come from.
const SYSTEM_ROOTS: &[&str] = &[
    "/boot",
    "/usr",
    "/opt",
    "/srv",
    "/media",
    "/mnt",
    "/run/media",
    "/tmp",
    "/var/tmp",
];

/// The allowed roots for this process's user, canonical, from its environment.
pub fn allowed_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = SYSTEM_ROOTS.iter().map(PathBuf::from).collect();
    for var in [
        "HOME",
        "XDG_DATA_HOME",
        "XDG_CONFIG_HOME",
        "XDG_CACHE_HOME",
        "XDG_RUNTIME_DIR",
    ] {
        roots.extend(std::env::var_os(var).map(PathBuf::from));
    }
    if let Some(extra) = std::env::var_os("HANGAR_ALLOWED_PATHS") {
        roots.extend(std::env::split_paths(&extra));
    }
    roots
        .into_iter()
        .filter(|root| root.is_absolute() && root != Path::new("/"))
        .map(|root| std::fs::canonicalize(&root).unwrap_or(root))
        .collect()
}

/// Resolves `path` and checks that it lies under one of `roots`. Returns the canonical path, or
/// a reason that says what to do.
pub fn resolve_allowed(path: &Path, roots: &[PathBuf]) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => "no such file; check the path".to_string(),
        _ => err.to_string(),
    })?;
    if roots.iter().any(|root| canonical.starts_with(root)) {
        Ok(canonical)
    } else {
        let shown = if canonical != path {
            format!(" (it is {})", canonical.display())
        } else {
            String::new()
        };
        Err(format!(
            "is outside the places Hangar reads kernels and images from{shown}: your home, \
             /boot, /usr, /opt, /srv, /media, /mnt, /tmp; move it there, or add its directory \
             to HANGAR_ALLOWED_PATHS in hangard's environment"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_before_they_are_judged() {
        let dir = std::env::temp_dir().join(format!("hangar-locations-{}", std::process::id()));
        let allowed = dir.join("allowed");
        let outside = dir.join("outside");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(allowed.join("vmlinuz"), b"k").unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), allowed.join("link")).unwrap();
        let roots = vec![std::fs::canonicalize(&allowed).unwrap()];

        let kernel = resolve_allowed(&allowed.join("vmlinuz"), &roots).unwrap();
        assert_eq!(kernel, roots[0].join("vmlinuz"));
        // Through `..` and through a symbolic link, the real place is what counts.
        let dotdot = allowed.join("../outside/secret");
        assert!(resolve_allowed(&dotdot, &roots)
            .unwrap_err()
            .contains("outside the places"));
        let err = resolve_allowed(&allowed.join("link"), &roots).unwrap_err();
        assert!(err.contains("it is ") && err.contains("secret"), "{err}");
        assert!(resolve_allowed(Path::new("/proc/kcore"), &roots).is_err());
        assert!(resolve_allowed(&allowed.join("missing"), &roots)
            .unwrap_err()
            .contains("no such file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn etc_and_proc_are_never_allowed_by_default() {
        let roots = allowed_roots();
        assert!(!roots
            .iter()
            .any(|r| Path::new("/etc/shadow").starts_with(r)));
        assert!(!roots
            .iter()
            .any(|r| Path::new("/proc/kcore").starts_with(r)));
        assert!(roots
            .iter()
            .any(|r| Path::new("/boot/vmlinuz").starts_with(r)));
    }
}
