//! The kernel inside a bzImage: finding its compressed payload and unpacking it to the ELF
//! vmlinux it is, so the guest does not spend its first seconds decompressing itself.
//!
//! Only formats a well-kept pure-Rust crate reads are unpacked (LZ4, Debian's choice); any other
//! bzImage boots the usual way, through its own decompressor.

use lz4_flex::block::decompress_into;

/// `HdrS` at 0x202: a Linux setup header.
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// Boot protocol 2.08 added `payload_offset` and `payload_length`.
const MIN_PROTOCOL_WITH_PAYLOAD: u16 = 0x208;
/// The legacy LZ4 frame the kernel build writes (`lz4 -l`).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Each legacy LZ4 block unpacks to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// No kernel is larger than this; a bigger size field means a corrupt image.
const MAX_VMLINUX: usize = 1 << 30;

/// Why a payload was not unpacked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("not a bzImage with a payload (boot protocol 2.08 or later)")]
    NoPayload,
    #[error("the payload is compressed with a format Hangar does not unpack ({0})")]
    Unsupported(&'static str),
    #[error("the LZ4 payload is corrupt: {0}")]
    Corrupt(String),
    #[error("the payload does not unpack to an ELF file")]
    NotElf,
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

/// The compressed payload of a bzImage.
pub fn payload(image: &[u8]) -> Result<&[u8], PayloadError> {
    if image.get(0x202..0x206) != Some(HDRS_MAGIC)
        || u16_at(image, 0x206).is_none_or(|v| v < MIN_PROTOCOL_WITH_PAYLOAD)
    {
        return Err(PayloadError::NoPayload);
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start =
        (setup_sects + 1) * 512 + u32_at(image, 0x248).ok_or(PayloadError::NoPayload)? as usize;
    let len = u32_at(image, 0x24c).ok_or(PayloadError::NoPayload)? as usize;
    image.get(start..start + len).ok_or(PayloadError::NoPayload)
}

/// The version string a bzImage carries in its setup header (`kernel_version`, boot protocol
/// 2.00 and later), e.g. "6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ...".
/// `None` when the image is not a bzImage or has no readable version.
pub fn kernel_version(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206) != Some(HDRS_MAGIC) || u16_at(image, 0x206)? < 0x200 {
        return None;
    }
    // The pointer is relative to the start of the setup code, 0x200 into the file.
    let start = 0x200 + usize::from(u16_at(image, 0x20e)?);
    let text = image.get(start..(start + 256).min(image.len()))?;
    let end = text.iter().position(|&b| b == 0)?;
    let version = std::str::from_utf8(&text[..end]).ok()?.trim();
    (!version.is_empty() && version.chars().all(|c| !c.is_control())).then(|| version.to_string())
}

/// Names a payload's compression from its magic bytes.
pub fn compression(payload: &[u8]) -> &'static str {
    match payload {
        [0x02, 0x21, 0x4c, 0x18, ..] => "lz4",
        [0x1f, 0x8b, ..] => "gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => "xz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x5d, 0x00, ..] => "lzma",
        [b'B', b'Z', b'h', ..] => "bzip2",
        [0x89, b'L', b'Z', b'O', ..] => "lzo",
        _ => "unknown",
    }
}

/// Unpacks a legacy LZ4 stream: the magic, then blocks of (u32 size, data). The kernel build
/// appends the unpacked size as a last u32, which is where the stream ends.
pub fn unpack_lz4_legacy(stream: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let corrupt = |what: &str| PayloadError::Corrupt(what.to_string());
    if u32_at(stream, 0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(corrupt("missing the LZ4 legacy magic"));
    }
    let mut output = Vec::new();
    let mut pos = 4;
    while let Some(size) = u32_at(stream, pos) {
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        let size = size as usize;
        let Some(block) = stream.get(pos + 4..pos + 4 + size) else {
            // Not a block: the trailing unpacked-size field.
            if stream.len() - pos == 4 && size != output.len() {
                return Err(corrupt("the unpacked size does not match the size field"));
            }
            break;
        };
        let start = output.len();
        if start + LZ4_LEGACY_BLOCK > MAX_VMLINUX {
            return Err(corrupt("it unpacks to more than 1 GiB"));
        }
        output.resize(start + LZ4_LEGACY_BLOCK, 0);
        let written = decompress_into(block, &mut output[start..])
            .map_err(|err| PayloadError::Corrupt(err.to_string()))?;
        output.truncate(start + written);
        pos += 4 + size;
    }
    Ok(output)
}

/// Unpacks the ELF vmlinux inside a bzImage.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, PayloadError> {
    let payload = payload(image)?;
    let vmlinux = match compression(payload) {
        "lz4" => unpack_lz4_legacy(payload)?,
        other => return Err(PayloadError::Unsupported(other)),
    };
    if !vmlinux.starts_with(b"\x7fELF") {
        return Err(PayloadError::NotElf);
    }
    Ok(vmlinux)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped buffer around `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3usize;
        let mut image = vec![0u8; (setup_sects + 1) * 512 + 100];
        image[0x1f1] = setup_sects as u8;
        image[0x202..0x206].copy_from_slice(HDRS_MAGIC);
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(payload);
        image.extend_from_slice(b"trailing setup data");
        image
    }

    fn lz4_legacy(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut stream = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for piece in data.chunks(chunk) {
            let block = lz4_flex::block::compress(piece);
            stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
            stream.extend_from_slice(&block);
        }
        stream.extend_from_slice(&(data.len() as u32).to_le_bytes());
        stream
    }

    fn fake_vmlinux(len: usize) -> Vec<u8> {
        let mut data = b"\x7fELF".to_vec();
        data.extend((0..len).map(|i| (i * 7 % 251) as u8));
        data
    }

    #[test]
    fn unpacks_an_lz4_payload_across_blocks() {
        let vmlinux = fake_vmlinux(3 * 1024 * 1024);
        let image = bzimage(&lz4_legacy(&vmlinux, 1024 * 1024));
        assert_eq!(compression(payload(&image).unwrap()), "lz4");
        assert_eq!(extract_vmlinux(&image).unwrap(), vmlinux);
    }

    #[test]
    fn refuses_what_it_cannot_or_should_not_unpack() {
        assert_eq!(
            extract_vmlinux(b"not a kernel"),
            Err(PayloadError::NoPayload)
        );
        let gzip = bzimage(&[0x1f, 0x8b, 8, 0, 0, 0]);
        assert_eq!(
            extract_vmlinux(&gzip),
            Err(PayloadError::Unsupported("gzip"))
        );
        let not_elf = bzimage(&lz4_legacy(b"plain data, not an ELF", 64));
        assert_eq!(extract_vmlinux(&not_elf), Err(PayloadError::NotElf));
        let mut truncated = lz4_legacy(&fake_vmlinux(4096), 4096);
        let cut = truncated.len() - 10;
        truncated[cut] ^= 0xff;
        truncated.truncate(cut + 1);
        assert!(matches!(
            extract_vmlinux(&bzimage(&truncated)),
            Err(PayloadError::Corrupt(_)) | Err(PayloadError::NotElf)
        ));
    }

    #[test]
    fn a_payload_past_the_end_is_no_payload() {
        let mut image = bzimage(b"xx");
        image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(payload(&image), Err(PayloadError::NoPayload));
    }

    #[test]
    fn reads_the_kernel_version_from_the_setup_header() {
        let mut image = bzimage(b"payload");
        let version = b"6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        let at = 0x400;
        image[at..at + version.len()].copy_from_slice(version);
        image[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
        assert_eq!(
            kernel_version(&image).as_deref(),
            Some("6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP")
        );
        // No terminator within reach, no header, garbage: no version rather than nonsense.
        image[at + version.len() - 1] = b'x';
        image[at + version.len()..].fill(b'x');
        assert_eq!(kernel_version(&image), None);
        assert_eq!(kernel_version(b"\x7fELF not a bzImage"), None);
        let mut binary = bzimage(b"payload");
        binary[0x400..0x404].copy_from_slice(&[1, 2, 3, 0]);
        binary[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
        assert_eq!(kernel_version(&binary), None);
    }
}
