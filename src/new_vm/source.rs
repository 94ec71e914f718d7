//! What the assistant reads from the files a user picks, apart from GTK: whether a kernel is one
//! Hangar boots and which version it is (from the bzImage setup header), and an image's format,
//! virtual size and backing file. Each refusal is a sentence saying what is wrong and what to do.

use std::io::Read;
use std::path::Path;

use gettextrs::gettext;
use hangar_engine::arch::x86_64::bzimage;
use hangar_engine::disk::parse_qcow2_header;

/// How a kernel file boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    BzImage,
    /// An uncompressed ELF vmlinux, booted through its PVH entry.
    Elf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub kind: KernelKind,
    /// The version string of a bzImage, when it carries one.
    pub version: Option<String>,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// "qcow2" or "raw", as hangard's ImportVolume takes it.
    pub format: String,
    /// The disk size the guest sees.
    pub virtual_size: u64,
    /// The file's size on the host.
    pub size: u64,
    pub backing_file: Option<String>,
}

/// The first bytes of a file hold everything these checks read: the setup header and its
/// version string, a qcow2 header with its backing name, an ISO's volume descriptor.
const HEAD: u64 = 64 << 10;

/// Opens `path` as a regular, non-empty, readable file and reads its head.
fn head(path: &Path) -> Result<(Vec<u8>, u64), String> {
    if !path.is_absolute() {
        return Err(gettext("Give the full path, starting with /."));
    }
    let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => gettext("There is no such file."),
        std::io::ErrorKind::PermissionDenied => {
            gettext("Permission denied: you cannot read this file.")
        }
        _ => err.to_string(),
    })?;
    if !meta.is_file() {
        return Err(gettext("This is not a regular file."));
    }
    if meta.len() == 0 {
        return Err(gettext("The file is empty."));
    }
    let roots = hangar_engine::host::locations::allowed_roots();
    if hangar_engine::host::locations::resolve_allowed(path, &roots).is_err() {
        return Err(gettext(
            "Hangar only reads kernels and images from your home, /boot, /usr, /opt, /srv, /media, /mnt and /tmp: move the file there.",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(HEAD).read_to_end(&mut bytes))
        .map_err(|err| {
            gettext("Cannot read the file: {error}").replace("{error}", &err.to_string())
        })?;
    Ok((bytes, meta.len()))
}

pub fn inspect_kernel(path: &Path) -> Result<KernelInfo, String> {
    let (bytes, size) = head(path)?;
    if let Some(version) = bzimage::kernel_version(&bytes) {
        return Ok(KernelInfo {
            kind: KernelKind::BzImage,
            version: Some(version),
            size,
        });
    }
    if bytes.get(0x202..0x206) == Some(b"HdrS") {
        return Ok(KernelInfo {
            kind: KernelKind::BzImage,
            version: None,
            size,
        });
    }
    // 64-bit little-endian x86-64 ELF.
    if bytes.starts_with(b"\x7fELF\x02\x01") && bytes.get(18..20) == Some(&[0x3e, 0]) {
        return Ok(KernelInfo {
            kind: KernelKind::Elf,
            version: None,
            size,
        });
    }
    if looks_like_iso(&bytes) {
        return Err(gettext(
            "This is an ISO image, not a kernel. Installing from ISO images is not supported yet: choose a Linux kernel (for example /boot/vmlinuz-…).",
        ));
    }
    Err(gettext(
        "This is not a Linux kernel Hangar can boot: choose a bzImage (vmlinuz) or an x86-64 ELF vmlinux.",
    ))
}

pub fn inspect_initrd(path: &Path) -> Result<u64, String> {
    head(path).map(|(_, size)| size)
}

pub fn inspect_image(path: &Path) -> Result<ImageInfo, String> {
    let (bytes, size) = head(path)?;
    if bytes.starts_with(b"QFI\xfb") {
        let header = parse_qcow2_header(&bytes, size).map_err(|reason| {
            gettext("This qcow2 image is damaged ({reason}); check it with qemu-img check.")
                .replace("{reason}", &reason)
        })?;
        return Ok(ImageInfo {
            format: "qcow2".into(),
            virtual_size: header.size,
            size,
            backing_file: header.backing_file,
        });
    }
    if looks_like_iso(&bytes) {
        return Err(gettext(
            "This is an ISO installer image. Hangar boots Linux kernels directly and cannot install from ISO images yet: import a raw or qcow2 disk image.",
        ));
    }
    if bytes.starts_with(b"KDMV") || bytes.starts_with(b"conectix") || bytes.starts_with(b"<<< ") {
        return Err(gettext(
            "This is a VMDK, VHD or VDI image. Convert it first: qemu-img convert -O qcow2 IMAGE new.qcow2",
        ));
    }
    if size % 512 != 0 {
        return Err(gettext(
            "This file is not a whole number of 512-byte sectors, so it is no raw disk image.",
        ));
    }
    Ok(ImageInfo {
        format: "raw".into(),
        virtual_size: size,
        size,
        backing_file: None,
    })
}

/// An ISO 9660 volume descriptor at sector 16.
fn looks_like_iso(bytes: &[u8]) -> bool {
    bytes.get(0x8001..0x8006) == Some(b"CD001")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hangar-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn missing_empty_and_foreign_files_are_explained() {
        assert!(inspect_kernel(Path::new("relative/vmlinuz")).is_err());
        assert!(inspect_kernel(&scratch("absent")).is_err());
        let empty = scratch("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(inspect_kernel(&empty), Err(gettext("The file is empty.")));
        let text = scratch("notes.txt");
        std::fs::write(&text, b"hello, not a kernel\n").unwrap();
        assert!(inspect_kernel(&text)
            .unwrap_err()
            .contains("not a Linux kernel"));
        let dir = scratch("");
        assert!(inspect_kernel(&dir).is_err());
    }

    #[test]
    fn kernels_are_recognised() {
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
        bz[0x400..0x40c].copy_from_slice(b"6.1.0-test\0\0");
        let path = scratch("vmlinuz");
        std::fs::write(&path, &bz).unwrap();
        let info = inspect_kernel(&path).unwrap();
        assert_eq!(info.kind, KernelKind::BzImage);
        assert_eq!(info.version.as_deref(), Some("6.1.0-test"));
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18] = 0x3e;
        let path = scratch("vmlinux");
        std::fs::write(&path, &elf).unwrap();
        assert_eq!(inspect_kernel(&path).unwrap().kind, KernelKind::Elf);
    }

    #[test]
    fn images_say_what_they_are() {
        let raw = scratch("disk.img");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        let info = inspect_image(&raw).unwrap();
        assert_eq!((info.format.as_str(), info.virtual_size), ("raw", 1 << 20));
        let odd = scratch("odd.img");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        assert!(inspect_image(&odd).is_err());
        let mut iso = vec![0u8; 0x9000];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        let path = scratch("install.iso");
        std::fs::write(&path, &iso).unwrap();
        assert!(inspect_image(&path).unwrap_err().contains("ISO"));
        assert!(inspect_kernel(&path).unwrap_err().contains("ISO"));
    }

    #[test]
    fn qcow2_images_report_their_virtual_size() {
        let path = scratch("made-by-qemu-img.qcow2");
        let _ = std::fs::remove_file(&path);
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&path)
            .arg("3G")
            .status()
            .expect("qemu-img runs (scripts/install-deps installs qemu-utils)");
        assert!(made.success());
        let info = inspect_image(&path).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, 3 << 30);
        assert!(info.size < 1 << 20);
        // Cut short, it is refused with the reason.
        let cut = scratch("cut.qcow2");
        std::fs::write(&cut, &std::fs::read(&path).unwrap()[..100]).unwrap();
        assert!(inspect_image(&cut).unwrap_err().contains("qcow2"));
    }
}
