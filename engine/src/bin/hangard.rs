//! `hangard`: Hangar's management daemon on the D-Bus session bus (`dev.hangar.Hangar`).
//!
//! It knows which VMs exist and what each is doing, runs their `hangar-vmm` workers, and
//! re-attaches to the workers still running when it starts again. Usually started by D-Bus
//! activation (data/dev.hangar.Hangar.service); run it by hand to see its log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hangar_engine::host::api::{vm_path, BUS_NAME, MANAGER_PATH, OBJECT_MANAGER_PATH};
use hangar_engine::host::capabilities::{Acceleration, HostCapabilities};
use hangar_engine::host::inventory::{HostPaths, Inventory};
use hangar_engine::host::service::{forward_events, ManagerObject, VmObject};
use hangar_engine::host::storage::find_in_path;

/// Hangar's management daemon on the D-Bus session bus.
#[derive(Parser, Debug)]
#[command(name = "hangard", version)]
struct Args {
    /// The worker binary [default: $HANGAR_VMM, else hangar-vmm next to hangard, else in PATH].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Milliseconds between stats samples.
    #[arg(long, default_value_t = 1000)]
    stats_interval: u64,
    /// Do not start the autostart VMs.
    #[arg(long)]
    no_autostart: bool,
}

fn log(message: impl std::fmt::Display) {
    eprintln!("hangard: {message}");
}

/// The worker binary: the flag, else next to this executable, else in PATH.
fn find_vmm(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    let chosen = flag.or_else(|| std::env::var_os("HANGAR_VMM").map(PathBuf::from));
    if let Some(path) = chosen {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "worker {} does not exist; check --vmm or HANGAR_VMM",
                path.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("hangar-vmm")))
        .filter(|path| path.is_file());
    beside.or_else(|| find_in_path("hangar-vmm")).ok_or_else(|| {
        "hangar-vmm was found neither next to hangard nor in PATH; install it or pass --vmm PATH"
            .to_string()
    })
}

fn taken() -> String {
    format!("another hangard already owns {BUS_NAME} on this session bus; use that one")
}

fn run(args: Args) -> Result<(), String> {
    let capabilities = HostCapabilities::probe();
    if !capabilities.kvm_usable {
        log(format!(
            "VMs cannot start on this host: {}; definitions and volumes still work",
            capabilities.kvm_problem
        ));
    } else if capabilities.acceleration == Acceleration::Emulated {
        log("KVM here has no hardware virtualization underneath (kvm_pvm): guests are emulated and slow");
    }
    if capabilities.qemu_img.is_none() {
        log("qemu-img is missing: volumes cannot be created or listed; install qemu-utils");
    }
    let paths = HostPaths::from_environment()?;
    let vmm = find_vmm(args.vmm)?;
    let (inventory, events, skipped) =
        Inventory::open(paths, vmm, capabilities).map_err(|err| err.to_string())?;
    inventory.set_stats_interval(Duration::from_millis(args.stats_interval));
    for file in skipped {
        log(format!(
            "skipped definition {}: {}",
            file.path.display(),
            file.reason
        ));
    }
    let bus_err = |err: zbus::Error| format!("cannot serve on the session bus: {err}");
    // Re-attaching touches the workers' runtime files: only the hangard that will own the
    // name may do it. (Requesting the name below is the final guard against a race.)
    let probe = zbus::blocking::Connection::session().map_err(bus_err)?;
    let owned = zbus::blocking::fdo::DBusProxy::new(&probe)
        .and_then(|bus| Ok(bus.name_has_owner(BUS_NAME.try_into()?)?))
        .map_err(bus_err)?;
    if owned {
        return Err(taken());
    }
    drop(probe);
    for note in inventory.reattach_all() {
        log(note);
    }

    let mut builder = zbus::blocking::connection::Builder::session()
        .map_err(bus_err)?
        .serve_at(MANAGER_PATH, ManagerObject::new(inventory.clone()))
        .map_err(bus_err)?
        // Lets a client fetch every VM with all its properties in one call and follow
        // InterfacesAdded/InterfacesRemoved.
        .serve_at(OBJECT_MANAGER_PATH, zbus::fdo::ObjectManager)
        .map_err(bus_err)?;
    for uuid in inventory.uuids() {
        builder = builder
            .serve_at(vm_path(&uuid), VmObject::new(uuid, inventory.clone()))
            .map_err(bus_err)?;
    }
    let connection = builder
        // One hangard per bus: a second one must not take over VMs the first is driving.
        .allow_name_replacements(false)
        .replace_existing_names(false)
        // A bus that dies mid-call must not leave hangard waiting forever.
        .method_timeout(Duration::from_secs(30))
        .name(BUS_NAME)
        .map_err(bus_err)?
        .build()
        .map_err(|err| match err {
            zbus::Error::NameTaken => taken(),
            other => bus_err(other),
        })?;
    let async_connection = connection.inner().clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || forward_events(async_connection, events))
        .map_err(|err| err.to_string())?;
    log(format!(
        "serving {BUS_NAME} with {} VMs",
        inventory.uuids().len()
    ));

    if !args.no_autostart {
        let autostarting = Arc::clone(&inventory);
        let _ = std::thread::Builder::new()
            .name("autostart".into())
            .spawn(move || {
                for note in autostarting.autostart_all() {
                    log(note);
                }
            });
    }
    inventory.spawn_sampler();

    // Serve until the bus goes away or takes the name.
    let bus = zbus::blocking::fdo::DBusProxy::new(&connection).map_err(bus_err)?;
    let lost = bus.receive_name_lost().map_err(bus_err)?;
    for signal in lost {
        if signal.args().is_ok_and(|args| args.name() == BUS_NAME) {
            log(format!("lost {BUS_NAME}; exiting (the VMs keep running)"));
            return Ok(());
        }
    }
    log("the session bus closed; exiting (the VMs keep running)");
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log(err);
            ExitCode::FAILURE
        }
    }
}
