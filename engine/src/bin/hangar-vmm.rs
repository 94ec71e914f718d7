//! `hangar-vmm`: runs one virtual machine.
//!
//! ```text
//! hangar-vmm --kernel vmlinuz --initrd initrd.img --memory 256M --cpus 2 --serial stdio \\
//!     --disk path=disk.qcow2
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hangar_engine::config::{ByteSize, DisplaySetting, InputDevices, SerialMode, VmSettings};
use hangar_engine::disk::DiskSpec;
use hangar_engine::net::NetSpec;
use hangar_engine::worker::Worker;

/// Run one virtual machine on KVM. On a terminal, press Ctrl-A x to quit.
#[derive(Parser, Debug)]
#[command(name = "hangar-vmm", version, args_override_self = true)]
struct Args {
    /// Linux kernel: a bzImage, or an ELF vmlinux (PVH entry if it has one).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial RAM disk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: console=ttyS0].
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest RAM, e.g. 256M or 2G [default: 256M].
    #[arg(long, value_parser = parse_size)]
    memory: Option<ByteSize>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    cpus: Option<u32>,
    /// Where COM1 goes: stdio, none, or unix:PATH [default: stdio].
    #[arg(long, value_parser = parse_serial)]
    serial: Option<SerialMode>,
    /// Listen for control clients (newline-delimited JSON) on this Unix socket.
    #[arg(long)]
    control: Option<PathBuf>,
    /// Exit when the guest reboots instead of restarting it.
    #[arg(long)]
    no_reboot: bool,
    /// A virtio-blk disk: path=FILE[,format=raw|qcow2][,readonly=on][,serial=S]. Repeat for
    /// more disks; the guest sees them as vda, vdb, ... in this order.
    #[arg(long = "disk", value_parser = parse_disk)]
    disks: Vec<DiskSpec>,
    /// A virtio-net NIC: user[,hostfwd=tcp:127.0.0.1:HOSTPORT-:GUESTPORT]... (passt, no root),
    /// unix:PATH (a passt already listening there) or tap=NAME; each may add ,mac=XX:..:XX.
    #[arg(long = "net", value_parser = parse_net)]
    nics: Vec<NetSpec>,
    /// Screen size WIDTHxHEIGHT (up to 3840x2160), or none [default: 1280x800 when a display
    /// socket is given, else none].
    #[arg(long, value_parser = parse_display)]
    display: Option<DisplaySetting>,
    /// Listen for display clients (framebuffer memfd, damage, input) on this Unix socket.
    #[arg(long)]
    display_socket: Option<PathBuf>,
    /// The virtio-input devices of a machine with a display: keyboard, tablet, keyboard,tablet
    /// or none [default: keyboard,tablet]. The PS/2 keyboard is always there.
    #[arg(long, value_parser = parse_input)]
    input: Option<InputDevices>,
    /// Let the `screenshot` control command write PNG files in this directory (repeatable);
    /// the sandbox allows no other place.
    #[arg(long = "screenshot-dir")]
    screenshot_dirs: Vec<PathBuf>,
    /// Run without the sandbox (landlock and seccomp). For debugging a sandbox violation only;
    /// see RELIABILITY.md.
    #[arg(long)]
    no_sandbox: bool,
    /// Read settings from this JSON file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn parse_size(text: &str) -> Result<ByteSize, String> {
    text.parse()
}

fn parse_serial(text: &str) -> Result<SerialMode, String> {
    text.parse()
        .map_err(|err: hangar_engine::config::ConfigError| err.to_string())
}

fn parse_disk(text: &str) -> Result<DiskSpec, String> {
    text.parse()
}

fn parse_net(text: &str) -> Result<NetSpec, String> {
    text.parse()
}

fn parse_display(text: &str) -> Result<DisplaySetting, String> {
    text.parse()
        .map_err(|err: hangar_engine::config::ConfigError| err.to_string())
}

fn parse_input(text: &str) -> Result<InputDevices, String> {
    text.parse()
        .map_err(|err: hangar_engine::config::ConfigError| err.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let flags = VmSettings {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        cpus: args.cpus,
        serial: args.serial,
        control: args.control,
        no_reboot: args.no_reboot.then_some(true),
        disks: (!args.disks.is_empty()).then_some(args.disks),
        nics: (!args.nics.is_empty()).then_some(args.nics),
        display: args.display,
        display_socket: args.display_socket,
        input: args.input,
        sandbox: args.no_sandbox.then_some(false),
        screenshot_dirs: (!args.screenshot_dirs.is_empty()).then_some(args.screenshot_dirs),
    };
    let result = match &args.config {
        Some(path) => VmSettings::from_file(path).map(|file| file.merge(flags)),
        None => Ok(flags),
    }
    .and_then(VmSettings::validate);
    let config = match result {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hangar-vmm: {err}");
            return ExitCode::from(1);
        }
    };
    match Worker::new(config).and_then(Worker::run) {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            eprintln!("hangar-vmm: {err}");
            ExitCode::from(1)
        }
    }
}
