//! Loading a kernel and describing the machine to it: Linux's zero page (64-bit boot protocol)
//! or a PVH `hvm_start_info`, with the e820 memory map, initrd and command line.
//!
//! An ELF with a PVH note boots through PVH (32-bit entry, no paging); other ELF kernels and
//! bzImages boot through the Linux 64-bit protocol. Firmware boot would be a third
//! [`EntryPoint`].

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, screen_info, setup_header, VIDEO_TYPE_EFI,
};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, Error as ElfError, PvhBootCapability};
use linux_loader::loader::{BzImage, Error as LoaderError, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// `HdrS`, the Linux setup header magic.
const LINUX_HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot flag at the end of the Linux setup sector.
const LINUX_BOOT_FLAG: u16 = 0xaa55;
/// "Undefined" boot loader id: we are not a registered boot loader.
const LINUX_LOADER_ID: u8 = 0xff;
/// Alignment a relocatable ELF kernel expects when it has no setup header.
const LINUX_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The 64-bit entry of a bzImage sits this far past its protected-mode load address.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Magic of `hvm_start_info`.
const PVH_MAGIC: u32 = 0x336e_c578;

/// Errors loading a kernel, an initrd or boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel {path} is neither an ELF vmlinux nor a bzImage ({reason}); pass a Linux kernel image such as /boot/vmlinuz-*")]
    UnknownKernelFormat { path: String, reason: String },
    #[error("kernel {path} could not be loaded: {reason}")]
    KernelLoad { path: String, reason: String },
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM below {limit:#x} after the kernel; give the VM more memory")]
    InitrdTooLarge { path: String, size: u64, limit: u64 },
    #[error("cannot read initrd {path}: {reason}")]
    InitrdRead { path: String, reason: String },
    #[error("cannot write {what} into guest memory: {reason}")]
    GuestWrite { what: &'static str, reason: String },
}

/// How the bootstrap processor enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// Linux 64-bit boot protocol: long mode, identity paging, RSI = zero page.
    Linux64(GuestAddress),
    /// PVH: 32-bit protected mode, no paging, EBX = `hvm_start_info`.
    Pvh(GuestAddress),
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// The bzImage's setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
    /// First guest address past the kernel image.
    pub end: u64,
}

/// Where the initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub address: u64,
    pub size: u64,
}

/// Loads `path` into guest memory: ELF first, bzImage if it is not an ELF.
///
/// A bzImage whose payload Hangar can unpack boots as the ELF inside it, through PVH: the guest
/// skips its own decompression. The unpacked kernel is cached (see [`KernelCache`]).
///
/// With `needs_boot_params` (the machine has a framebuffer), a bzImage boots through its own
/// 64-bit entry with a zero page instead: a PVH-booted Linux builds its `boot_params` from
/// `hvm_start_info`, which has no `screen_info`, so it would never find the framebuffer.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    needs_boot_params: bool,
) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open {
        path: name.clone(),
        source,
    })?;
    match load_elf(mem, &mut file) {
        Ok(kernel) => Ok(kernel),
        Err(LoaderError::Elf(ElfError::InvalidElfMagicNumber)) => {
            // HANGAR_BOOT_BZIMAGE=1 keeps the guest's own decompressor, to compare the two.
            let unpack = !needs_boot_params && std::env::var_os("HANGAR_BOOT_BZIMAGE").is_none();
            if let Some(kernel) = unpack
                .then(KernelCache::default)
                .and_then(|cache| cache.vmlinux(&mut file))
                .and_then(|mut vmlinux| load_elf(mem, &mut vmlinux).ok())
                .filter(|kernel| matches!(kernel.entry, EntryPoint::Pvh(_)))
            {
                return Ok(kernel);
            }
            load_bzimage(mem, &mut file, &name)
        }
        Err(err) => Err(BootError::KernelLoad {
            path: name,
            reason: err.to_string(),
        }),
    }
}

fn load_elf<F: std::io::Read + vm_memory::ReadVolatile + std::io::Seek>(
    mem: &GuestMemoryMmap,
    image: &mut F,
) -> Result<LoadedKernel, LoaderError> {
    let result = Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START)))?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr),
        _ => EntryPoint::Linux64(result.kernel_load),
    };
    Ok(LoadedKernel {
        entry,
        setup_header: None,
        end: result.kernel_end,
    })
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    file: &mut File,
    name: &str,
) -> Result<LoadedKernel, BootError> {
    let result = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(
        |err| match err {
            LoaderError::Bzimage(_) => BootError::UnknownKernelFormat {
                path: name.to_string(),
                reason: err.to_string(),
            },
            other => BootError::KernelLoad {
                path: name.to_string(),
                reason: other.to_string(),
            },
        },
    )?;
    Ok(LoadedKernel {
        entry: EntryPoint::Linux64(result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)),
        setup_header: result.setup_header,
        end: result.kernel_end,
    })
}

/// Unpacked kernels, kept under `$XDG_CACHE_HOME/hangar/kernels` so a bzImage is unpacked once,
/// not at every boot. Entries are named by the image's device, inode, size and mtime; a
/// replaced kernel file gets a new entry, and only the newest few are kept.
pub struct KernelCache {
    dir: Option<std::path::PathBuf>,
}

/// Entries kept in the kernel cache.
const KERNEL_CACHE_ENTRIES: usize = 4;

impl Default for KernelCache {
    fn default() -> Self {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")));
        KernelCache {
            dir: base.map(|base| base.join("hangar/kernels")),
        }
    }
}

impl KernelCache {
    /// The cache's directory, if there is a home to put it in.
    pub fn dir(&self) -> Option<std::path::PathBuf> {
        self.dir.clone()
    }

    /// The ELF inside the bzImage `image`, from the cache or freshly unpacked; `None` if the
    /// payload cannot be unpacked. Cache trouble (read-only home, full disk) only costs speed.
    pub fn vmlinux(&self, image: &mut File) -> Option<std::io::Cursor<Vec<u8>>> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::MetadataExt;
        let meta = image.metadata().ok()?;
        let key = format!(
            "{:x}-{:x}-{}-{}.vmlinux",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as i128 * 1_000_000_000 + i128::from(meta.mtime_nsec())
        );
        let entry = self.dir.as_ref().map(|dir| dir.join(&key));
        if let Some(cached) = entry.as_ref().and_then(|entry| std::fs::read(entry).ok()) {
            return Some(std::io::Cursor::new(cached));
        }
        let mut bytes = Vec::with_capacity(meta.size() as usize);
        image.seek(std::io::SeekFrom::Start(0)).ok()?;
        image.read_to_end(&mut bytes).ok()?;
        let vmlinux = super::bzimage::extract_vmlinux(&bytes).ok()?;
        drop(bytes);
        if let (Some(dir), Some(entry)) = (&self.dir, &entry) {
            // Best effort: a failure here only means the next boot unpacks again.
            let _ = store_atomically(dir, entry, &vmlinux);
            prune(dir, KERNEL_CACHE_ENTRIES);
        }
        Some(std::io::Cursor::new(vmlinux))
    }
}

/// Writes `bytes` to `path` through a temporary file, so readers never see half an entry.
fn store_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|_| file.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keeps the `keep` most recently modified entries of `dir`.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|ext| ext == "vmlinux"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|file| std::cmp::Reverse(file.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
}

/// Picks the initrd's address: as high as allowed in RAM below 4 GiB, page aligned.
pub fn initrd_address(
    ram_below_gap: u64,
    addr_max: Option<u64>,
    kernel_end: u64,
    size: u64,
) -> Option<u64> {
    let top = match addr_max {
        Some(max) => ram_below_gap.min(max.saturating_add(1)),
        None => ram_below_gap,
    };
    let address = top.checked_sub(size)? & !0xfff;
    (address >= kernel_end.max(HIMEM_START)).then_some(address)
}

/// Loads the initrd at the top of low RAM.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, BootError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open {
        path: name.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|err| BootError::InitrdRead {
            path: name.clone(),
            reason: err.to_string(),
        })?
        .len();
    let low_ram_end = mem
        .find_region(GuestAddress(0))
        .map(|region| region.len())
        .unwrap_or(0);
    let addr_max = kernel
        .setup_header
        .map(|hdr| u64::from(hdr.initrd_addr_max))
        .filter(|&max| max != 0);
    let address = initrd_address(low_ram_end, addr_max, kernel.end, size).ok_or(
        BootError::InitrdTooLarge {
            path: name.clone(),
            size,
            limit: low_ram_end,
        },
    )?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, size as usize)
        .map_err(|err| BootError::InitrdRead {
            path: name,
            reason: err.to_string(),
        })?;
    Ok(LoadedInitrd { address, size })
}

/// One entry of the machine's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub start: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of a machine with `memory` bytes of RAM.
pub fn memory_map(memory: u64) -> Vec<MemoryMapEntry> {
    let entry = |start, end: u64, kind| MemoryMapEntry {
        start,
        size: end - start,
        kind,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START, E820_RESERVED),
    ];
    let low_end = memory.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(entry(HIMEM_START, low_end, E820_RAM));
    }
    // Linux only trusts the MCFG's ECAM area if the firmware reserved it.
    map.push(entry(
        PCI_ECAM_START,
        PCI_ECAM_START + PCI_ECAM_SIZE,
        E820_RESERVED,
    ));
    if memory > MMIO_GAP_START {
        map.push(entry(
            MMIO_GAP_END,
            MMIO_GAP_END + memory - MMIO_GAP_START,
            E820_RAM,
        ));
    }
    map
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    value: T,
    address: u64,
    what: &'static str,
) -> Result<(), BootError> {
    mem.write_obj(value, GuestAddress(address))
        .map_err(|err| BootError::GuestWrite {
            what,
            reason: err.to_string(),
        })
}

/// Writes the NUL-terminated command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|err| BootError::GuestWrite {
            what: "the command line",
            reason: err.to_string(),
        })
}

/// A linear framebuffer to announce to the guest, outside its RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearFramebuffer {
    pub base: u64,
    pub width: u32,
    pub height: u32,
    /// Bytes per row.
    pub stride: u32,
    /// Bytes of framebuffer memory.
    pub size: u64,
}

/// `screen_info` for a 32-bit x8r8g8b8 framebuffer, announced as an EFI GOP framebuffer.
///
/// EFI is the one video type both Debian kernels drive: `amd64` has FB_EFI, FB_VESA and
/// FB_SIMPLE, `cloud-amd64` only FB_EFI (neither has SYSFB_SIMPLEFB or DRM_SIMPLEDRM). sysfb
/// turns VIDEO_TYPE_EFI into an `efi-framebuffer` device whether or not the machine booted
/// through EFI, and vgacon leaves the VGA ports alone for it. For EFI, `lfb_size` is in bytes
/// (for VESA it would be in 64 KiB units).
pub fn screen_info_for(fb: &LinearFramebuffer) -> screen_info {
    screen_info {
        orig_video_isVGA: VIDEO_TYPE_EFI,
        lfb_width: fb.width as u16,
        lfb_height: fb.height as u16,
        lfb_depth: 32,
        lfb_base: fb.base as u32,
        ext_lfb_base: (fb.base >> 32) as u32,
        lfb_size: fb.size as u32,
        lfb_linelength: fb.stride as u16,
        red_size: 8,
        red_pos: 16,
        green_size: 8,
        green_pos: 8,
        blue_size: 8,
        blue_pos: 0,
        rsvd_size: 8,
        rsvd_pos: 24,
        pages: 1,
        ..Default::default()
    }
}

/// Fills and writes Linux's zero page.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
    memory: u64,
    framebuffer: Option<&LinearFramebuffer>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    match kernel.setup_header {
        Some(hdr) => params.hdr = hdr,
        None => params.hdr.kernel_alignment = LINUX_KERNEL_ALIGNMENT,
    }
    params.hdr.type_of_loader = LINUX_LOADER_ID;
    params.hdr.boot_flag = LINUX_BOOT_FLAG;
    params.hdr.header = LINUX_HDRS_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.address as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = ACPI_START;
    if let Some(fb) = framebuffer {
        params.screen_info = screen_info_for(fb);
    }
    let map = memory_map(memory);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.start,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    write(mem, params, ZERO_PAGE_START, "the Linux zero page")
}

/// Fills and writes the PVH start info, its memory map and module list.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<LoadedInitrd>,
    memory: u64,
) -> Result<(), BootError> {
    let map = memory_map(memory);
    for (index, entry) in map.iter().enumerate() {
        let table_entry = hvm_memmap_table_entry {
            addr: entry.start,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        let address = PVH_MEMMAP_START + (index * std::mem::size_of_val(&table_entry)) as u64;
        write(mem, table_entry, address, "the PVH memory map")?;
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: ACPI_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.address,
            size: initrd.size,
            ..Default::default()
        };
        write(mem, module, PVH_MODLIST_START, "the PVH module list")?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    write(mem, info, PVH_INFO_START, "the PVH start info")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_map_leaves_the_legacy_hole_and_the_mmio_gap() {
        let map = memory_map(256 << 20);
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[0],
            MemoryMapEntry {
                start: 0,
                size: EBDA_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].start, HIMEM_START);
        assert_eq!(map[2].start + map[2].size, 256 << 20);
        assert_eq!(
            map[3],
            MemoryMapEntry {
                start: PCI_ECAM_START,
                size: PCI_ECAM_SIZE,
                kind: E820_RESERVED
            }
        );

        let map = memory_map(4 << 30);
        assert_eq!(map.len(), 5);
        assert_eq!(map[2].start + map[2].size, MMIO_GAP_START);
        assert_eq!(map[4].start, MMIO_GAP_END);
        assert!(map.windows(2).all(|w| w[0].start + w[0].size <= w[1].start));
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn screen_info_describes_an_efi_xrgb_framebuffer_outside_ram() {
        let fb = LinearFramebuffer {
            base: FRAMEBUFFER_START,
            width: 1280,
            height: 800,
            stride: 5120,
            size: 5120 * 800,
        };
        let info = screen_info_for(&fb);
        assert_eq!(info.orig_video_isVGA, 0x70);
        assert_eq!({ info.lfb_base }, 0xd000_0000);
        assert_eq!({ info.ext_lfb_base }, 0);
        assert_eq!({ info.lfb_linelength }, 5120);
        assert_eq!({ info.lfb_size }, 5120 * 800);
        assert_eq!((info.red_pos, info.green_pos, info.blue_pos), (16, 8, 0));
        // The framebuffer is never RAM in the memory map.
        for memory in [256 << 20, 8u64 << 30] {
            for entry in memory_map(memory) {
                let end = entry.start + entry.size;
                assert!(
                    end <= FRAMEBUFFER_START || entry.start >= FRAMEBUFFER_START + fb.size,
                    "{entry:?}"
                );
            }
        }
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let top = 256 << 20;
        assert_eq!(
            initrd_address(top, None, 0x200_0000, 0x10_0800),
            Some((top - 0x10_0800) & !0xfff)
        );
        // Honours the kernel's initrd_addr_max.
        assert_eq!(
            initrd_address(3 << 30, Some(0x7fff_ffff), 0x200_0000, 0x1000),
            Some(0x8000_0000 - 0x1000)
        );
        // Refuses to overlap the kernel.
        assert_eq!(initrd_address(top, None, top - 0x1000, 0x2000), None);
        assert_eq!(initrd_address(top, None, 0, top + 1), None);
    }
}
