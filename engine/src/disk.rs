//! Disk images: raw and qcow2 (through the `imago` crate), opened once per worker with an
//! advisory lock, so two VMs never write the same image, and checked before the guest sees
//! them: the format must be what the user says it is, and a qcow2 backing chain must end.

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use imago::file::File as ImagoFile;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{FormatAccess, FormatDriverBuilder, StorageOpenOptions};

/// The first bytes of every qcow2 image.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Longest backing chain accepted (QEMU's own limit is similar).
const MAX_BACKING_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("disk {path} is in use by another VM (it is locked); stop that VM first, or attach the disk with readonly=on if both only read it")]
    Locked { path: PathBuf },
    #[error("disk {path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Image formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl FromStr for DiskFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "raw" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(format!("unknown disk format {other:?}; use raw or qcow2")),
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        })
    }
}

/// One `--disk` option: `path=P[,format=raw|qcow2][,readonly=on][,serial=S]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// None: found from the file (qcow2 if it has the qcow2 magic, raw otherwise).
    pub format: Option<DiskFormat>,
    pub readonly: bool,
    /// What the guest sees as the disk's serial (virtio-blk GET_ID), at most 20 bytes.
    pub serial: Option<String>,
}

/// Longest serial virtio-blk can report.
pub const MAX_SERIAL_LEN: usize = 20;

/// Parses `key=value` pairs separated by commas, as `--disk` and `--net` take them.
pub fn parse_options(text: &str) -> Result<Vec<(&str, &str)>, String> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))
        })
        .collect()
}

fn parse_switch(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{key}={value}: use on or off")),
    }
}

impl FromStr for DiskSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut spec = DiskSpec {
            path: PathBuf::new(),
            format: None,
            readonly: false,
            serial: None,
        };
        for (key, value) in parse_options(text)? {
            match key {
                "path" => spec.path = PathBuf::from(value),
                "format" => spec.format = Some(value.parse()?),
                "readonly" => spec.readonly = parse_switch(key, value)?,
                "serial" if value.len() > MAX_SERIAL_LEN => {
                    return Err(format!(
                        "serial {value:?} is longer than {MAX_SERIAL_LEN} bytes"
                    ))
                }
                "serial" => spec.serial = Some(value.to_string()),
                other => {
                    return Err(format!(
                        "unknown disk option {other:?}; use path, format, readonly or serial"
                    ))
                }
            }
        }
        if spec.path.as_os_str().is_empty() {
            return Err(format!(
                "{text:?} has no path=; write it as path=disk.qcow2"
            ));
        }
        Ok(spec)
    }
}

impl fmt::Display for DiskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if let Some(format) = self.format {
            write!(f, ",format={format}")?;
        }
        if self.readonly {
            f.write_str(",readonly=on")?;
        }
        if let Some(serial) = &self.serial {
            write!(f, ",serial={serial}")?;
        }
        Ok(())
    }
}

crate::serde_via_string!(DiskSpec);

/// What a qcow2 header says about the image, as far as checking it goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub backing_file: Option<String>,
    pub size: u64,
}

/// Reads the fixed part of a qcow2 header; the reason names what is wrong.
pub fn parse_qcow2_header(bytes: &[u8], file_len: u64) -> Result<Qcow2Header, String> {
    if bytes.len() < 72 || file_len < 72 {
        return Err("truncated: shorter than a qcow2 header".into());
    }
    let be32 = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(bytes[o..o + 8].try_into().unwrap());
    if bytes[..4] != QCOW2_MAGIC {
        return Err("not a qcow2 image (no qcow2 magic)".into());
    }
    let version = be32(4);
    if version != 2 && version != 3 {
        return Err(format!(
            "qcow2 version {version} is not supported (2 or 3 are)"
        ));
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(format!("corrupt header: cluster size 2^{cluster_bits}"));
    }
    let l1_offset = be64(40);
    if l1_offset >= file_len || l1_offset % (1 << cluster_bits) != 0 {
        return Err("corrupt header: the L1 table lies outside the file; was it truncated?".into());
    }
    let backing_offset = be64(8) as usize;
    let backing_len = be32(16) as usize;
    let backing_file = if backing_offset == 0 {
        None
    } else {
        let name = backing_offset
            .checked_add(backing_len)
            .and_then(|end| bytes.get(backing_offset..end))
            .ok_or("corrupt header: the backing file name lies outside the header")?;
        Some(
            String::from_utf8(name.to_vec())
                .map_err(|_| "corrupt header: the backing file name is not UTF-8")?,
        )
    };
    Ok(Qcow2Header {
        version,
        backing_file,
        size: be64(24),
    })
}

/// Checks that every cluster the file already has is covered by a refcount block. imago, when it
/// first allocates a cluster in a range whose refcount block is missing, puts a new block at the
/// start of that range (over the header, for the first range) or recurses until the stack
/// overflows (found by the qcow2 fuzz target); QEMU calls such an image corrupt. Only writable
/// images need this: reading never allocates.
pub fn check_refcount_coverage(file: &File, head: &[u8], file_len: u64) -> Result<(), String> {
    const HINT: &str = "repair it with qemu-img check -r all";
    let be32 = |o: usize| u32::from_be_bytes(head[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(head[o..o + 8].try_into().unwrap());
    let cluster_bits = be32(20);
    let refcount_order = match be32(4) {
        2 => 4,
        _ if head.len() < 104 => return Err("truncated: shorter than a qcow2 v3 header".into()),
        _ => be32(96),
    };
    if refcount_order > 6 {
        return Err(format!(
            "corrupt header: {}-bit refcounts",
            1u64 << refcount_order.min(63)
        ));
    }
    let cluster_size = 1u64 << cluster_bits;
    let table_offset = be64(48);
    let table_entries = u64::from(be32(56)) * cluster_size / 8;
    // Each refcount block covers 2^block_bits clusters.
    let block_bits = cluster_bits + 3 - refcount_order;
    let clusters = file_len.div_ceil(cluster_size);
    let needed = clusters.div_ceil(1 << block_bits);
    if table_offset % cluster_size != 0
        || table_offset >= file_len
        || needed > table_entries
        || needed * 8 > file_len - table_offset
    {
        return Err(format!(
            "corrupt image: the refcount table does not cover the file; {HINT}"
        ));
    }
    let mut chunk = [0u8; 4096];
    let mut index = 0u64;
    while index < needed {
        let count = (needed - index).min(chunk.len() as u64 / 8) as usize;
        std::os::unix::fs::FileExt::read_exact_at(
            file,
            &mut chunk[..count * 8],
            table_offset + index * 8,
        )
        .map_err(|err| err.to_string())?;
        for entry in chunk[..count * 8].chunks_exact(8) {
            if u64::from_be_bytes(entry.try_into().unwrap()) == 0 {
                let first = index << block_bits;
                return Err(format!(
                    "corrupt image: no refcount block for clusters {first} to {}; {HINT}",
                    first + (1 << block_bits) - 1
                ));
            }
            index += 1;
        }
    }
    Ok(())
}

/// Largest L1 table read by [`check_metadata_refcounts`]; QEMU refuses larger ones too.
const MAX_L1_BYTES: u64 = 32 << 20;

/// Refcounts of a qcow2 image, read from its refcount table and blocks as they are needed.
struct Refcounts<'f> {
    file: &'f File,
    file_len: u64,
    cluster_bits: u32,
    refcount_bits: u64,
    block_bits: u32,
    table_offset: u64,
    table_entries: u64,
    blocks: std::collections::HashMap<u64, Vec<u8>>,
}

impl Refcounts<'_> {
    fn read(&self, buffer: &mut [u8], offset: u64) -> Result<(), String> {
        if offset.saturating_add(buffer.len() as u64) > self.file_len {
            return Err(format!(
                "corrupt image: metadata at offset {offset} lies past the end of the file"
            ));
        }
        std::os::unix::fs::FileExt::read_exact_at(self.file, buffer, offset)
            .map_err(|err| err.to_string())
    }

    /// Whether `cluster` has a refcount above zero.
    fn in_use(&mut self, cluster: u64) -> Result<bool, String> {
        let table_index = cluster >> self.block_bits;
        if table_index >= self.table_entries {
            return Ok(false);
        }
        let mut entry = [0u8; 8];
        self.read(&mut entry, self.table_offset + table_index * 8)?;
        let block = u64::from_be_bytes(entry) & !((1 << self.cluster_bits) - 1);
        if block == 0 {
            return Ok(false);
        }
        if !self.blocks.contains_key(&block) {
            let mut bytes = vec![0u8; 1 << self.cluster_bits];
            self.read(&mut bytes, block)?;
            self.blocks.insert(block, bytes);
        }
        let bytes = &self.blocks[&block];
        let index = cluster & ((1 << self.block_bits) - 1);
        let bit = index * self.refcount_bits;
        let byte = (bit / 8) as usize;
        Ok(if self.refcount_bits < 8 {
            (bytes[byte] >> (bit % 8)) & ((1u8 << self.refcount_bits) - 1) != 0
        } else {
            bytes[byte..byte + (self.refcount_bits / 8) as usize]
                .iter()
                .any(|&b| b != 0)
        })
    }

    /// Fails unless every cluster of `[offset, offset + len)` is in use.
    fn require(&mut self, what: &str, offset: u64, len: u64) -> Result<(), String> {
        let first = offset >> self.cluster_bits;
        let last = (offset + len.max(1) - 1) >> self.cluster_bits;
        for cluster in first..=last {
            if !self.in_use(cluster)? {
                return Err(format!(
                    "corrupt image: the {what} (cluster {cluster}) has a refcount of 0, so a write would overwrite it; repair it with qemu-img check -r all"
                ));
            }
        }
        Ok(())
    }
}

/// Checks that the image's metadata (header, refcount table and blocks, L1 and L2 tables) is
/// all counted as in use. imago allocates new clusters where the refcount is 0, so an image
/// whose refcounts miss its own metadata would have it overwritten by the first writes, and
/// the guest's data would be lost (found by the qcow2 fuzz target). QEMU guards against the
/// same with its overlap checks. Data clusters are not checked: that needs every L2 table.
pub fn check_metadata_refcounts(file: &File, head: &[u8], file_len: u64) -> Result<(), String> {
    check_refcount_coverage(file, head, file_len)?;
    let be32 = |o: usize| u32::from_be_bytes(head[o..o + 4].try_into().unwrap());
    let be64 = |o: usize| u64::from_be_bytes(head[o..o + 8].try_into().unwrap());
    let cluster_bits = be32(20);
    let refcount_order = if be32(4) == 2 { 4 } else { be32(96) };
    let cluster_size = 1u64 << cluster_bits;
    let mut refcounts = Refcounts {
        file,
        file_len,
        cluster_bits,
        refcount_bits: 1 << refcount_order,
        block_bits: cluster_bits + 3 - refcount_order,
        table_offset: be64(48),
        table_entries: u64::from(be32(56)) * cluster_size / 8,
        blocks: std::collections::HashMap::new(),
    };
    refcounts.require("header", 0, 1)?;
    refcounts.require(
        "refcount table",
        refcounts.table_offset,
        u64::from(be32(56)) * cluster_size,
    )?;
    let needed = file_len
        .div_ceil(cluster_size)
        .div_ceil(1 << refcounts.block_bits);
    for index in 0..needed {
        let mut entry = [0u8; 8];
        refcounts.read(&mut entry, refcounts.table_offset + index * 8)?;
        let block = u64::from_be_bytes(entry) & !(cluster_size - 1);
        refcounts.require("refcount block", block, 1)?;
    }
    let l1_offset = be64(40);
    let l1_bytes = u64::from(be32(36)) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(format!(
            "corrupt header: an L1 table of {l1_bytes} bytes (at most {MAX_L1_BYTES} are allowed)"
        ));
    }
    refcounts.require("L1 table", l1_offset, l1_bytes)?;
    let mut l1 = vec![0u8; l1_bytes as usize];
    refcounts.read(&mut l1, l1_offset)?;
    for entry in l1.chunks_exact(8) {
        let l2 = u64::from_be_bytes(entry.try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
        if l2 != 0 {
            refcounts.require("L2 table", l2, 1)?;
        }
    }
    Ok(())
}

/// Reads the start of a file (enough for a qcow2 header and its backing name).
fn read_head(path: &Path) -> Result<(Vec<u8>, u64), String> {
    let file = File::open(path).map_err(|err| open_reason(&err))?;
    let len = file.metadata().map_err(|err| err.to_string())?.len();
    let mut head = vec![0u8; 4096.min(len as usize)];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)
        .map_err(|err| err.to_string())?;
    Ok((head, len))
}

fn open_reason(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file; check the path".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied; check its mode".into(),
        _ => err.to_string(),
    }
}

/// Follows a qcow2 backing chain to its end, refusing loops, missing files and chains deeper
/// than [`MAX_BACKING_DEPTH`]. Returns the canonical paths, the image first.
pub fn backing_chain(path: &Path) -> Result<Vec<PathBuf>, String> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        let canonical = current
            .canonicalize()
            .map_err(|err| format!("backing file {}: {}", current.display(), open_reason(&err)))?;
        if chain.contains(&canonical) {
            return Err(format!(
                "the backing chain loops back to {}; fix it with qemu-img rebase",
                canonical.display()
            ));
        }
        if chain.len() == MAX_BACKING_DEPTH {
            return Err(format!(
                "the backing chain is deeper than {MAX_BACKING_DEPTH} images"
            ));
        }
        let (head, len) = read_head(&canonical)?;
        chain.push(canonical.clone());
        if head.len() < 4 || head[..4] != QCOW2_MAGIC {
            return Ok(chain);
        }
        let header = parse_qcow2_header(&head, len).map_err(|reason| {
            if chain.len() == 1 {
                reason
            } else {
                format!("backing file {}: {reason}", canonical.display())
            }
        })?;
        match header.backing_file {
            None => return Ok(chain),
            Some(name) => {
                let name = PathBuf::from(name);
                current = if name.is_absolute() {
                    name
                } else {
                    canonical.parent().unwrap_or(Path::new("/")).join(name)
                };
            }
        }
    }
}

/// Lets imago open the image itself as asked, and its backing files read-only and only those
/// [`backing_chain`] approved (the image first).
#[derive(Clone)]
struct BackingGate {
    chain: Vec<PathBuf>,
}

impl ImplicitOpenGate<ImagoFile> for BackingGate {
    fn open_format<F: FormatDriverBuilder<ImagoFile>>(
        &mut self,
        builder: F,
    ) -> std::io::Result<FormatAccess<ImagoFile>> {
        self.position(builder.get_image_path())?;
        Ok(FormatAccess::new(builder.write(false).open(self.clone())?))
    }

    fn open_storage(&mut self, options: StorageOpenOptions) -> std::io::Result<ImagoFile> {
        let position = self.position(options.get_filename().map(Path::to_path_buf))?;
        let options = if position == 0 {
            options
        } else {
            options.write(false)
        };
        imago::Storage::open(options)
    }
}

impl BackingGate {
    fn position(&self, path: Option<PathBuf>) -> std::io::Result<usize> {
        path.and_then(|p| p.canonicalize().ok())
            .and_then(|p| self.chain.iter().position(|c| *c == p))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "a backing or data file outside the checked backing chain",
                )
            })
    }
}

/// An open disk image.
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub readonly: bool,
    pub serial: Option<String>,
    image: FormatAccess<ImagoFile>,
    /// Holds the advisory lock for as long as the disk is open.
    _lock: File,
}

impl Disk {
    /// Opens and locks the image `spec` names.
    pub fn open(spec: &DiskSpec) -> Result<Disk, DiskError> {
        let path = &spec.path;
        let fail = |reason: String| DiskError::Open {
            path: path.clone(),
            reason,
        };
        let (head, len) = read_head(path).map_err(fail)?;
        let looks_qcow2 = head.len() >= 4 && head[..4] == QCOW2_MAGIC;
        let format = match (spec.format, looks_qcow2) {
            (None, true) | (Some(DiskFormat::Qcow2), _) => DiskFormat::Qcow2,
            (Some(DiskFormat::Raw), true) => {
                return Err(fail(
                    "it is a qcow2 image, not raw; use format=qcow2 (as raw, the guest would overwrite the qcow2 structure)".into(),
                ))
            }
            (None | Some(DiskFormat::Raw), false) => DiskFormat::Raw,
        };
        let lock = lock_image(path, spec.readonly)?;
        let options = StorageOpenOptions::new()
            .filename(path.clone())
            .write(!spec.readonly);
        let image = match format {
            DiskFormat::Qcow2 => {
                parse_qcow2_header(&head, len).map_err(fail)?;
                if !spec.readonly {
                    check_metadata_refcounts(&lock, &head, len).map_err(fail)?;
                }
                let chain = backing_chain(path).map_err(fail)?;
                let gate = BackingGate { chain };
                Qcow2::<ImagoFile>::builder_path(path)
                    .storage_open_options(options)
                    .write(!spec.readonly)
                    .open(gate)
                    .map(FormatAccess::new)
            }
            DiskFormat::Raw => {
                if len == 0 {
                    return Err(fail("the image is empty (0 bytes)".into()));
                }
                Raw::<ImagoFile>::builder_path(path)
                    .storage_open_options(options)
                    .write(!spec.readonly)
                    .open(BackingGate {
                        chain: vec![path.canonicalize().map_err(|e| fail(open_reason(&e)))?],
                    })
                    .map(FormatAccess::new)
            }
        }
        .map_err(|err| fail(format!("cannot open it as {format}: {err}")))?;
        Ok(Disk {
            path: path.clone(),
            format,
            readonly: spec.readonly,
            serial: spec.serial.clone(),
            image,
            _lock: lock,
        })
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.image.size()
    }

    fn io_error(&self, source: std::io::Error) -> DiskError {
        DiskError::Io {
            path: self.path.clone(),
            source,
        }
    }

    pub fn read_at(&self, buffer: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.image
            .read(buffer, offset)
            .map_err(|e| self.io_error(e))
    }

    pub fn write_at(&self, buffer: &[u8], offset: u64) -> Result<(), DiskError> {
        self.image
            .write(buffer, offset)
            .map_err(|e| self.io_error(e))
    }

    /// Writes cached metadata and asks the host to put everything on stable storage.
    pub fn flush(&self) -> Result<(), DiskError> {
        self.image.flush().map_err(|e| self.io_error(e))?;
        self.image.sync().map_err(|e| self.io_error(e))
    }

    /// Makes the range read as zeros.
    pub fn write_zeroes(&self, offset: u64, length: u64) -> Result<(), DiskError> {
        let result = self.image.write_zeroes(offset, length);
        result.map_err(|e| self.io_error(e))
    }

    /// Frees the range; it then reads as zeros or as the backing image.
    pub fn discard(&mut self, offset: u64, length: u64) -> Result<(), DiskError> {
        let result = self.image.discard_to_any(offset, length);
        result.map_err(|e| self.io_error(e))
    }
}

/// Takes an open-file-description lock on the whole image: shared for read-only disks,
/// exclusive for writable ones. QEMU locks the same files with OFD locks, so Hangar and QEMU
/// also keep out of each other's way.
fn lock_image(path: &Path, readonly: bool) -> Result<File, DiskError> {
    // A write lock needs a file opened for writing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .map_err(|err| DiskError::Open {
            path: path.to_path_buf(),
            reason: open_reason(&err),
        })?;
    let lock = libc::flock {
        l_type: if readonly {
            libc::F_RDLCK
        } else {
            libc::F_WRLCK
        } as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: F_OFD_SETLK reads one valid `flock` struct that outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(DiskError::Locked {
            path: path.to_path_buf(),
        }),
        _ => Err(DiskError::Open {
            path: path.to_path_buf(),
            reason: format!("cannot lock it: {err}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_options_parse_and_print_back() {
        let spec: DiskSpec = "path=/v/a.qcow2,format=qcow2,readonly=on,serial=abc"
            .parse()
            .unwrap();
        assert_eq!(spec.path, PathBuf::from("/v/a.qcow2"));
        assert_eq!(spec.format, Some(DiskFormat::Qcow2));
        assert!(spec.readonly);
        assert_eq!(spec.serial.as_deref(), Some("abc"));
        assert_eq!(spec.to_string().parse::<DiskSpec>().unwrap(), spec);
        assert!("format=raw"
            .parse::<DiskSpec>()
            .unwrap_err()
            .contains("no path"));
        assert!("path=a,formt=raw"
            .parse::<DiskSpec>()
            .unwrap_err()
            .contains("formt"));
        assert!("path=a,format=vmdk"
            .parse::<DiskSpec>()
            .unwrap_err()
            .contains("vmdk"));
        assert!("path=a,serial=123456789012345678901"
            .parse::<DiskSpec>()
            .unwrap_err()
            .contains("longer"));
    }

    fn header(backing: Option<&str>) -> Vec<u8> {
        let mut bytes = vec![0u8; 512];
        bytes[..4].copy_from_slice(&QCOW2_MAGIC);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&16u32.to_be_bytes());
        bytes[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        bytes[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        if let Some(name) = backing {
            bytes[8..16].copy_from_slice(&200u64.to_be_bytes());
            bytes[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            bytes[200..200 + name.len()].copy_from_slice(name.as_bytes());
        }
        bytes
    }

    #[test]
    fn qcow2_headers_are_checked() {
        let parsed = parse_qcow2_header(&header(Some("base.img")), 1 << 20).unwrap();
        assert_eq!(parsed.backing_file.as_deref(), Some("base.img"));
        assert_eq!(parsed.size, 1 << 30);
        assert!(parse_qcow2_header(&header(None)[..40], 40)
            .unwrap_err()
            .contains("truncated"));
        assert!(parse_qcow2_header(&header(None), 0x20000)
            .unwrap_err()
            .contains("L1 table"));
        let mut bad = header(None);
        bad[4..8].copy_from_slice(&7u32.to_be_bytes());
        assert!(parse_qcow2_header(&bad, 1 << 20)
            .unwrap_err()
            .contains("version 7"));
        let mut bad = header(Some("x"));
        bad[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_qcow2_header(&bad, 1 << 20)
            .unwrap_err()
            .contains("backing file name"));
        let mut bad = header(Some("x"));
        bad[16..20].copy_from_slice(&4000u32.to_be_bytes());
        assert!(parse_qcow2_header(&bad, 1 << 20)
            .unwrap_err()
            .contains("backing file name"));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hangar-disk-unit-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A qcow2 v3 image of four 512-byte clusters: header, refcount table (entry 0 is
    /// `refblock`), refcount block, L1 table.
    fn small_qcow2(refblock: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 4 * 512];
        bytes[..4].copy_from_slice(&QCOW2_MAGIC);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&9u32.to_be_bytes());
        bytes[24..32].copy_from_slice(&(64u64 << 10).to_be_bytes());
        bytes[36..40].copy_from_slice(&1u32.to_be_bytes());
        bytes[40..48].copy_from_slice(&0x600u64.to_be_bytes());
        bytes[48..56].copy_from_slice(&0x200u64.to_be_bytes());
        bytes[56..60].copy_from_slice(&1u32.to_be_bytes());
        bytes[96..100].copy_from_slice(&4u32.to_be_bytes());
        bytes[100..104].copy_from_slice(&104u32.to_be_bytes());
        bytes[0x200..0x208].copy_from_slice(&refblock.to_be_bytes());
        for cluster in 0..4 {
            bytes[0x400 + 2 * cluster] = 0;
            bytes[0x400 + 2 * cluster + 1] = 1;
        }
        bytes
    }

    #[test]
    fn refcount_tables_must_cover_the_file() {
        let dir = scratch("refcounts");
        let path = dir.join("small.qcow2");
        std::fs::write(&path, small_qcow2(0x400)).unwrap();
        let file = File::open(&path).unwrap();
        let (head, len) = read_head(&path).unwrap();
        assert_eq!(check_refcount_coverage(&file, &head, len), Ok(()));
        std::fs::write(&path, small_qcow2(0)).unwrap();
        let err = check_refcount_coverage(&file, &head, len).unwrap_err();
        assert!(
            err.contains("no refcount block for clusters 0 to 255"),
            "{err}"
        );
        let mut table_outside = small_qcow2(0x400);
        table_outside[48..56].copy_from_slice(&0x10000u64.to_be_bytes());
        std::fs::write(&path, &table_outside).unwrap();
        let err = check_refcount_coverage(&file, &table_outside, len).unwrap_err();
        assert!(err.contains("does not cover"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Found by the qcow2 fuzz target: a qemu-img image whose refcount table lost its first
    /// entry sent imago into endless recursion (a stack overflow) on the first write.
    #[test]
    fn an_image_without_a_refcount_block_opens_read_only_but_not_writable() {
        let dir = scratch("fuzz-refblock");
        let path = dir.join("image.qcow2");
        let image = include_bytes!("../tests/data/fuzz/qcow2-refcount-block-missing");
        // The fuzz input's last byte chose how to attach it; the rest is the image.
        std::fs::write(&path, &image[..image.len() - 1]).unwrap();
        let spec = |readonly| DiskSpec {
            path: path.clone(),
            format: None,
            readonly,
            serial: None,
        };
        let err = Disk::open(&spec(false)).err().expect("refused").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("qemu-img check -r all"), "{err}");
        let disk = Disk::open(&spec(true)).unwrap();
        let mut buffer = vec![0u8; 4096];
        disk.read_at(&mut buffer, 0).unwrap();
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn metadata_must_be_counted_in_use() {
        let dir = scratch("metadata-refcounts");
        let path = dir.join("small.qcow2");
        std::fs::write(&path, small_qcow2(0x400)).unwrap();
        let file = File::open(&path).unwrap();
        let (head, len) = read_head(&path).unwrap();
        assert_eq!(check_metadata_refcounts(&file, &head, len), Ok(()));
        for (cluster, what) in [
            (0, "header"),
            (1, "refcount table"),
            (2, "refcount block"),
            (3, "L1 table"),
        ] {
            let mut image = small_qcow2(0x400);
            image[0x400 + 2 * cluster + 1] = 0;
            std::fs::write(&path, &image).unwrap();
            let err = check_metadata_refcounts(&file, &head, len).unwrap_err();
            assert!(
                err.contains(&format!("the {what} (cluster {cluster})")),
                "{err}"
            );
        }
        // An L2 table the L1 table points to, not counted.
        let mut image = small_qcow2(0x400);
        image[0x600..0x608].copy_from_slice(&(0x8000_0000_0000_0000u64 | 0x800).to_be_bytes());
        image.resize(5 * 512, 0);
        std::fs::write(&path, &image).unwrap();
        let err = check_metadata_refcounts(&file, &head, image.len() as u64).unwrap_err();
        assert!(err.contains("the L2 table (cluster 4)"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Found by the qcow2 fuzz target: an image whose refcount block counts none of its own
    /// metadata opened writable, imago put new clusters over it, and a write the guest made
    /// read back as zeros.
    #[test]
    fn an_image_whose_metadata_has_no_refcount_is_not_opened_writable() {
        let dir = scratch("fuzz-metadata");
        let path = dir.join("image.qcow2");
        let image = include_bytes!("../tests/data/fuzz/qcow2-metadata-refcount-zero");
        std::fs::write(&path, &image[..image.len() - 1]).unwrap();
        let spec = DiskSpec {
            path: path.clone(),
            format: None,
            readonly: false,
            serial: None,
        };
        let err = Disk::open(&spec).err().expect("refused").to_string();
        assert!(
            err.contains("the header (cluster 0) has a refcount of 0"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
