//! Disks on a real worker (kvm_pvm is enough: these tests stop at start-up or only need the
//! worker running). What a Linux guest does with the disks is in linux_guests.rs.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const BOOT: Duration = Duration::from_secs(30);

fn qemu_img(args: &[&str]) {
    let output = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn with_disks(guest: &str, disks: &[String]) -> Vec<String> {
    let mut args = vec![
        "--kernel".to_string(),
        tiny_guest(guest).display().to_string(),
    ];
    for disk in disks {
        args.push("--disk".into());
        args.push(disk.clone());
    }
    args
}

fn refused(disk: String) -> String {
    let args = with_disks("hello", &[disk]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_expecting_error(&args)
}

#[test]
fn disks_that_cannot_be_used_are_refused_at_start_naming_the_file() {
    require_kvm();
    let dir = TempDir::new("bad-disks");
    let path = |name: &str| dir.path(name).display().to_string();

    let stderr = refused(format!("path={}", path("missing.qcow2")));
    assert!(
        stderr.contains("missing.qcow2") && stderr.contains("no such file"),
        "{stderr}"
    );

    qemu_img(&["create", "-q", "-f", "qcow2", &path("good.qcow2"), "64M"]);
    let good = std::fs::read(dir.path("good.qcow2")).unwrap();
    std::fs::write(dir.path("truncated.qcow2"), &good[..50]).unwrap();
    let stderr = refused(format!("path={}", path("truncated.qcow2")));
    assert!(
        stderr.contains("truncated.qcow2") && stderr.contains("truncated"),
        "{stderr}"
    );

    std::fs::write(dir.path("cut.qcow2"), &good[..4096]).unwrap();
    let stderr = refused(format!("path={}", path("cut.qcow2")));
    assert!(
        stderr.contains("cut.qcow2") && stderr.contains("L1 table"),
        "{stderr}"
    );

    let stderr = refused(format!("path={},format=raw", path("good.qcow2")));
    assert!(
        stderr.contains("good.qcow2") && stderr.contains("format=qcow2"),
        "{stderr}"
    );

    std::fs::write(dir.path("empty.img"), b"").unwrap();
    let stderr = refused(format!("path={}", path("empty.img")));
    assert!(
        stderr.contains("empty.img") && stderr.contains("empty"),
        "{stderr}"
    );

    // base -> top -> base: a loop that qemu-img itself lets through with -u.
    qemu_img(&["create", "-q", "-f", "qcow2", &path("base.qcow2"), "64M"]);
    let base = path("base.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &base,
        "-F",
        "qcow2",
        &path("top.qcow2"),
    ]);
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        &path("top.qcow2"),
        "-F",
        "qcow2",
        &base,
    ]);
    let stderr = refused(format!("path={}", path("top.qcow2")));
    assert!(
        stderr.contains("top.qcow2") && stderr.contains("loops"),
        "{stderr}"
    );

    // A malformed option is a usage error (exit code 2, as for any bad flag).
    let output = Command::new(vmm_binary())
        .args(["--kernel", "x", "--disk", "path=a,formt=raw"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown disk option \"formt\""), "{stderr}");
}

#[test]
fn a_disk_in_use_by_another_vm_is_refused() {
    require_kvm();
    let dir = TempDir::new("locked");
    let image = dir.path("shared.qcow2").display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &image, "64M"]);

    let args = with_disks("ticker", &[format!("path={image}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Vmm::start(&args, true);
    first.expect("tick", BOOT);

    let stderr = refused(format!("path={image}"));
    assert!(
        stderr.contains("shared.qcow2") && stderr.contains("in use by another VM"),
        "{stderr}"
    );
    let stderr = refused(format!("path={image},readonly=on"));
    assert!(stderr.contains("in use by another VM"), "{stderr}");

    let stats = first.control().ok("stats");
    let disks = stats["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{stats}");
    assert_eq!(disks[0]["path"], image.as_str());
    first.control().ok("kill");
    assert!(first.wait(BOOT).success());

    // Read-only users share the image.
    let args = with_disks("ticker", &[format!("path={image},readonly=on")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut readers = [Vmm::start(&args, true), Vmm::start(&args, true)];
    for reader in &mut readers {
        reader.expect("tick", BOOT);
    }
    for mut reader in readers {
        reader.control().ok("kill");
        assert!(reader.wait(BOOT).success());
    }
}

/// The refcount check a writable qcow2 goes through (it refuses images imago would corrupt)
/// lets every layout qemu-img makes through, and imago's writes leave them clean for
/// `qemu-img check`, growing past the first refcount block included.
#[test]
fn qemu_img_images_of_every_refcount_layout_open_writable_and_stay_clean() {
    use hangar_engine::disk::{Disk, DiskSpec};
    let dir = TempDir::new("refcount-layouts");
    let layouts = [
        "cluster_size=65536",
        "cluster_size=512",
        "cluster_size=512,refcount_bits=1",
        "cluster_size=512,refcount_bits=64",
        "compat=0.10,cluster_size=4096",
        "cluster_size=4096,lazy_refcounts=on",
    ];
    for (i, options) in layouts.iter().enumerate() {
        let path = dir.path(&format!("image-{i}.qcow2"));
        let image = path.display().to_string();
        qemu_img(&["create", "-q", "-f", "qcow2", "-o", options, &image, "8M"]);
        let disk = Disk::open(&DiskSpec {
            path: path.clone(),
            format: None,
            readonly: false,
            serial: None,
        })
        .unwrap_or_else(|err| panic!("{options}: {err}"));
        // Enough clusters to need a second refcount block with 1-bit refcounts.
        let data = vec![0x5au8; 64 * 1024];
        for n in 0..64u64 {
            disk.write_at(&data, n * 128 * 1024).unwrap();
        }
        disk.flush().unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read_at(&mut back, 63 * 128 * 1024).unwrap();
        assert_eq!(back, data, "{options}");
        drop(disk);
        qemu_img(&["check", "-q", &image]);
    }
}
