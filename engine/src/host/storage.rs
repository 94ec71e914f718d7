//! Storage: the default pool of disk volumes, `$XDG_DATA_HOME/hangar/images`.
//!
//! A volume is a file in the pool directory whose name is the volume's name. Images are made,
//! resized and inspected with `qemu-img`, so qcow2 and raw behave as they do everywhere else.
//! Whether a volume is in use is the caller's knowledge (the definitions), not the pool's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest volume name accepted, in bytes.
pub const MAX_VOLUME_NAME_LEN: usize = 128;

/// Errors of the storage pool.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("volume {0:?} already exists; pick another name or delete it first")]
    Exists(String),
    #[error("no volume {0:?} in the pool; see `hangarctl vol-list`")]
    NotFound(String),
    #[error("format {0:?} is not supported; use qcow2 or raw")]
    Format(String),
    #[error("size {0}: a volume needs at least 1 byte; write it like 10G")]
    Size(u64),
    #[error("qemu-img was not found in PATH; install qemu-utils (scripts/install-deps)")]
    NoQemuImg,
    #[error("qemu-img {action} {name:?} failed: {message}")]
    QemuImg {
        action: &'static str,
        name: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Outside { path: PathBuf, reason: String },
}

/// A disk image format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    #[default]
    Qcow2,
    Raw,
}

impl VolumeFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        }
    }
}

impl FromStr for VolumeFormat {
    type Err = StorageError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "qcow2" => Ok(VolumeFormat::Qcow2),
            "raw" => Ok(VolumeFormat::Raw),
            other => Err(StorageError::Format(other.to_string())),
        }
    }
}

/// A volume as `qemu-img info` sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
    pub format: String,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// Bytes the image occupies on the host.
    pub actual_size: u64,
}

/// The part of `qemu-img info --output=json` that a volume needs.
#[derive(Deserialize)]
struct ImageInfo {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    actual_size: u64,
}

/// Checks a volume name: a plain file name, no `/`, no `..`, not hidden.
pub fn validate_volume_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_VOLUME_NAME_LEN {
        return Err(format!("longer than {MAX_VOLUME_NAME_LEN} bytes"));
    }
    if name.contains('/') {
        return Err("contains '/'; a volume is a plain file name in the pool".into());
    }
    if name.contains("..") {
        return Err("contains \"..\"; a volume cannot point outside the pool".into());
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("must not start with '.' or '-'".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.+@:".contains(*c)))
    {
        return Err(format!(
            "contains {bad:?}; use letters, digits and - _ . + @ :"
        ));
    }
    Ok(())
}

/// Parses `qemu-img info --output=json` output.
fn parse_info(name: &str, path: &Path, json: &[u8]) -> Result<Volume, StorageError> {
    let info: ImageInfo = serde_json::from_slice(json).map_err(|err| StorageError::QemuImg {
        action: "info",
        name: name.to_string(),
        message: format!("unexpected output: {err}"),
    })?;
    Ok(Volume {
        name: name.to_string(),
        path: path.to_path_buf(),
        format: info.format,
        virtual_size: info.virtual_size,
        actual_size: info.actual_size,
    })
}

/// The default storage pool.
#[derive(Debug, Clone)]
pub struct StoragePool {
    dir: PathBuf,
}

impl StoragePool {
    /// Opens the pool in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<StoragePool, StorageError> {
        fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(StoragePool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of volume `name`, after checking the name.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, StorageError> {
        validate_volume_name(name).map_err(|reason| StorageError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        Ok(self.dir.join(name))
    }

    fn existing(&self, name: &str) -> Result<PathBuf, StorageError> {
        let path = self.path_of(name)?;
        if !path.is_file() {
            return Err(StorageError::NotFound(name.to_string()));
        }
        Ok(path)
    }

    /// Creates an empty volume of `size` bytes.
    pub fn create(
        &self,
        name: &str,
        size: u64,
        format: VolumeFormat,
    ) -> Result<Volume, StorageError> {
        let path = self.path_of(name)?;
        if size == 0 {
            return Err(StorageError::Size(size));
        }
        if path.exists() {
            return Err(StorageError::Exists(name.to_string()));
        }
        let mut command = qemu_img()?;
        command
            .args(["create", "-q", "-f", format.as_str()])
            .arg(&path)
            .arg(size.to_string());
        run(command, "create", name)?;
        self.info(name)
    }

    /// Copies an existing image into the pool as volume `name`, converting it to `format`.
    pub fn import(
        &self,
        name: &str,
        source: &Path,
        format: VolumeFormat,
    ) -> Result<Volume, StorageError> {
        let path = self.path_of(name)?;
        if path.exists() {
            return Err(StorageError::Exists(name.to_string()));
        }
        if !source.is_file() {
            return Err(StorageError::Io {
                path: source.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such image file"),
            });
        }
        // Convert into a hidden name first so a half-copied image never shows up in the pool.
        let partial = self.dir.join(format!(".{name}.importing"));
        let mut command = qemu_img()?;
        command
            .args(["convert", "-q", "-O", format.as_str()])
            .arg(source)
            .arg(&partial);
        if let Err(err) = run(command, "convert", name) {
            let _ = fs::remove_file(&partial);
            return Err(err);
        }
        fs::rename(&partial, &path).map_err(|source| StorageError::Io {
            path: path.clone(),
            source,
        })?;
        self.info(name)
    }

    /// Grows (or, for raw images, shrinks) a volume to `size` bytes.
    pub fn resize(&self, name: &str, size: u64) -> Result<Volume, StorageError> {
        let path = self.existing(name)?;
        if size == 0 {
            return Err(StorageError::Size(size));
        }
        let format = self.info(name)?.format;
        let mut command = qemu_img()?;
        command
            .args(["resize", "-q", "-f", &format])
            .arg(&path)
            .arg(size.to_string());
        run(command, "resize", name)?;
        self.info(name)
    }

    /// Inspects one volume.
    pub fn info(&self, name: &str) -> Result<Volume, StorageError> {
        let path = self.existing(name)?;
        let mut command = qemu_img()?;
        command.args(["info", "--output=json", "-U"]).arg(&path);
        let output = run(command, "info", name)?;
        parse_info(name, &path, &output)
    }

    /// Every volume in the pool, by name.
    pub fn list(&self) -> Result<Vec<Volume>, StorageError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StorageError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| validate_volume_name(name).is_ok())
            .collect();
        names.sort();
        names.iter().map(|name| self.info(name)).collect()
    }

    /// Deletes a volume's file. The caller checks first that no VM uses it.
    pub fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.existing(name)?;
        fs::remove_file(&path).map_err(|source| StorageError::Io { path, source })
    }
}

/// `qemu-img`, or a clear error if it is not installed.
fn qemu_img() -> Result<Command, StorageError> {
    find_in_path("qemu-img")
        .map(Command::new)
        .ok_or(StorageError::NoQemuImg)
}

/// Runs a `qemu-img` command; returns its stdout or its stderr as the error.
fn run(mut command: Command, action: &'static str, name: &str) -> Result<Vec<u8>, StorageError> {
    let output = command.output().map_err(|err| StorageError::QemuImg {
        action,
        name: name.to_string(),
        message: err.to_string(),
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(StorageError::QemuImg {
            action,
            name: name.to_string(),
            message: stderr.trim().trim_start_matches("qemu-img: ").to_string(),
        });
    }
    Ok(output.stdout)
}

/// The first executable called `program` in `$PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_stay_inside_the_pool() {
        for good in ["disk.qcow2", "debian-tiny.qcow2", "a", "x_1+2@3:4"] {
            assert!(validate_volume_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "/etc/passwd",
            "..",
            "../x",
            "x..y",
            ".hidden",
            "-f",
            "sp ace",
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn qemu_img_info_is_parsed() {
        let json = br#"{"virtual-size": 1073741824, "filename": "/p/d.qcow2",
            "cluster-size": 65536, "format": "qcow2", "actual-size": 200704,
            "dirty-flag": false}"#;
        let volume = parse_info("d.qcow2", Path::new("/p/d.qcow2"), json).unwrap();
        assert_eq!(volume.format, "qcow2");
        assert_eq!(volume.virtual_size, 1 << 30);
        assert_eq!(volume.actual_size, 200704);
        assert!(parse_info("x", Path::new("/x"), b"garbage").is_err());
    }

    #[test]
    fn formats_parse() {
        assert_eq!(
            "qcow2".parse::<VolumeFormat>().unwrap(),
            VolumeFormat::Qcow2
        );
        assert_eq!("raw".parse::<VolumeFormat>().unwrap(), VolumeFormat::Raw);
        assert!("vmdk".parse::<VolumeFormat>().is_err());
    }

    #[test]
    fn create_list_resize_delete_with_qemu_img() {
        if find_in_path("qemu-img").is_none() {
            // Installed by scripts/install-deps; the D-Bus tests cover the pool end to end.
            eprintln!("qemu-img missing; skipping the pool round trip");
            return;
        }
        let dir = std::env::temp_dir().join(format!("hangar-pool-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pool = StoragePool::open(&dir).unwrap();
        let volume = pool
            .create("a.qcow2", 1 << 20, VolumeFormat::Qcow2)
            .unwrap();
        assert_eq!(volume.format, "qcow2");
        assert_eq!(volume.virtual_size, 1 << 20);
        pool.create("b.raw", 2 << 20, VolumeFormat::Raw).unwrap();
        assert!(matches!(
            pool.create("a.qcow2", 1 << 20, VolumeFormat::Qcow2),
            Err(StorageError::Exists(_))
        ));
        let names: Vec<String> = pool.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["a.qcow2", "b.raw"]);
        assert_eq!(
            pool.resize("a.qcow2", 4 << 20).unwrap().virtual_size,
            4 << 20
        );
        let imported = pool
            .import("c.qcow2", &dir.join("b.raw"), VolumeFormat::Qcow2)
            .unwrap();
        assert_eq!(imported.virtual_size, 2 << 20);
        pool.delete("a.qcow2").unwrap();
        assert!(matches!(
            pool.delete("a.qcow2"),
            Err(StorageError::NotFound(_))
        ));
        assert!(matches!(
            pool.create("../x", 1, VolumeFormat::Raw),
            Err(StorageError::InvalidName { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
