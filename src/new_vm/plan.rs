//! The New VM assistant's choices and rules, apart from GTK: what the user picked on each of the
//! five steps, what is wrong with it (each problem tied to the field it belongs to, so the page
//! can show it there), and the volumes and definition that Finish creates.

use gettextrs::gettext;
use hangar_engine::config::ByteSize;
use hangar_engine::host::definition::{
    validate_name, DiskDefinition, DisplayKind, NicDefinition, NicMode, PortForward, Protocol,
    Uuid, VmDefinition, SCHEMA_VERSION,
};

use super::source::{ImageInfo, KernelInfo};

/// The assistant's pages, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Source,
    Review,
    Resources,
    Storage,
    Finish,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Source,
        Step::Review,
        Step::Resources,
        Step::Storage,
        Step::Finish,
    ];

    pub fn index(self) -> usize {
        Step::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    pub fn next(self) -> Option<Step> {
        Step::ALL.get(self.index() + 1).copied()
    }

    pub fn previous(self) -> Option<Step> {
        self.index().checked_sub(1).map(|i| Step::ALL[i])
    }

    /// The page's name in the assistant's stack.
    pub fn name(self) -> &'static str {
        match self {
            Step::Source => "source",
            Step::Review => "review",
            Step::Resources => "resources",
            Step::Storage => "storage",
            Step::Finish => "finish",
        }
    }
}

/// Where the VM's system comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// A Linux kernel, an optional initrd and a command line (direct boot).
    #[default]
    Kernel,
    /// An existing disk image, imported into the pool, booted with a kernel.
    Import,
    /// The sample "debian-tiny": the guest kit's kernel and busybox initramfs.
    Sample,
}

/// The VM's (first, or for an import additional) disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    /// A new qcow2 volume in the default pool.
    #[default]
    New,
    /// A volume already in the pool.
    Existing,
    None,
}

/// One port forward as typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardDraft {
    pub udp: bool,
    pub host: String,
    pub guest: String,
}

/// Everything the user chose so far.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub source: Source,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    /// The image to import (Source::Import).
    pub image: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub storage: Storage,
    pub new_disk_gib: u64,
    pub existing_volume: Option<String>,
    pub name: String,
    pub network: bool,
    pub forwards: Vec<ForwardDraft>,
    pub customize: bool,
}

pub use crate::host_limits::{HostLimits, MIN_MEMORY_MIB};
/// The biggest new disk the assistant offers, in GiB.
pub const MAX_DISK_GIB: u64 = 16 * 1024;
/// Default size of a new disk, in GiB.
pub const DEFAULT_DISK_GIB: u64 = 8;
/// The sample's memory and disk: small enough to start anywhere.
const SAMPLE_MEMORY_MIB: u64 = 256;
const SAMPLE_DISK_GIB: u64 = 1;

impl Draft {
    pub fn new(limits: &HostLimits) -> Draft {
        Draft {
            source: Source::Kernel,
            kernel: String::new(),
            initrd: String::new(),
            cmdline: hangar_engine::config::DEFAULT_CMDLINE.to_string(),
            image: String::new(),
            memory_mib: limits.default_memory_mib(),
            vcpus: limits.default_vcpus(),
            storage: Storage::New,
            new_disk_gib: DEFAULT_DISK_GIB,
            existing_volume: None,
            name: String::new(),
            network: true,
            forwards: Vec::new(),
            customize: false,
        }
    }

    /// Fills in what the sample VM uses, from the guest kit in `kit`.
    pub fn use_sample(&mut self, kit: &std::path::Path) {
        use hangar_engine::host::inventory::{SAMPLE_CMDLINE, SAMPLE_INITRD, SAMPLE_KERNEL};
        self.source = Source::Sample;
        self.kernel = kit.join(SAMPLE_KERNEL).display().to_string();
        self.initrd = kit.join(SAMPLE_INITRD).display().to_string();
        self.cmdline = SAMPLE_CMDLINE.to_string();
        self.memory_mib = SAMPLE_MEMORY_MIB;
        self.vcpus = 1;
        self.storage = Storage::New;
        self.new_disk_gib = SAMPLE_DISK_GIB;
    }

    /// The name to suggest for this source, made unique among `taken`.
    pub fn suggested_name(&self, taken: &[String]) -> String {
        let stem = |path: &str| {
            std::path::Path::new(path)
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .filter(|s| validate_name(s).is_ok())
        };
        let base = match self.source {
            Source::Sample => Some(hangar_engine::host::inventory::SAMPLE_NAME.to_string()),
            Source::Import => stem(&self.image),
            Source::Kernel => None,
        }
        .unwrap_or_else(|| "linux".to_string());
        unique(&base, |candidate| taken.iter().any(|t| t == candidate))
    }
}

/// `base`, or `base-2`, `base-3`… whichever `is_taken` does not claim.
pub fn unique(base: &str, is_taken: impl Fn(&str) -> bool) -> String {
    if !is_taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|c| !is_taken(c))
        .unwrap_or_default()
}

/// The field a problem belongs to, so the page shows it next to that row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Kernel,
    Initrd,
    Image,
    Cmdline,
    Memory,
    Vcpus,
    NewDisk,
    ExistingVolume,
    Name,
    Forward(usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: Field,
    pub message: String,
}

fn problem(field: Field, message: String) -> Problem {
    Problem { field, message }
}

/// What the assistant learned from the files and from hangard, as the steps need it.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub kernel: Option<Result<KernelInfo, String>>,
    pub initrd: Option<Result<u64, String>>,
    pub image: Option<Result<ImageInfo, String>>,
    /// Names of the VMs hangard has.
    pub taken_names: Vec<String>,
    /// Names of the pool's volumes.
    pub volumes: Vec<String>,
}

/// What is wrong with `step`; empty when Next may go on.
pub fn problems(step: Step, draft: &Draft, facts: &Facts, limits: &HostLimits) -> Vec<Problem> {
    let mut found = Vec::new();
    match step {
        Step::Source | Step::Review => source_problems(draft, facts, &mut found),
        Step::Resources => {
            let max = limits.max_memory_mib();
            if draft.memory_mib < MIN_MEMORY_MIB {
                found.push(problem(
                    Field::Memory,
                    gettext("Give the VM at least {min} MiB.")
                        .replace("{min}", &MIN_MEMORY_MIB.to_string()),
                ));
            } else if draft.memory_mib > max {
                found.push(problem(
                    Field::Memory,
                    gettext("{memory} MiB is more than this host has ({max} MiB).")
                        .replace("{memory}", &draft.memory_mib.to_string())
                        .replace("{max}", &max.to_string()),
                ));
            }
            if draft.vcpus == 0 || draft.vcpus > limits.max_vcpus() {
                found.push(problem(
                    Field::Vcpus,
                    gettext("Give 1 to {max} CPUs: this host has {max}.")
                        .replace("{max}", &limits.max_vcpus().to_string()),
                ));
            }
        }
        Step::Storage => match draft.storage {
            Storage::New if draft.new_disk_gib == 0 || draft.new_disk_gib > MAX_DISK_GIB => found
                .push(problem(
                    Field::NewDisk,
                    gettext("Give a size from 1 to {max} GiB.")
                        .replace("{max}", &MAX_DISK_GIB.to_string()),
                )),
            Storage::Existing => match &draft.existing_volume {
                None => found.push(problem(
                    Field::ExistingVolume,
                    if facts.volumes.is_empty() {
                        gettext("The storage pool has no volumes yet: create a new disk instead.")
                    } else {
                        gettext("Choose a volume.")
                    },
                )),
                Some(volume) if !facts.volumes.contains(volume) => found.push(problem(
                    Field::ExistingVolume,
                    gettext("Volume {volume} is no longer in the pool.")
                        .replace("{volume}", volume),
                )),
                Some(_) => {}
            },
            _ => {}
        },
        Step::Finish => {
            if validate_name(&draft.name).is_err() {
                found.push(problem(Field::Name, name_rule(&draft.name)));
            } else if facts.taken_names.contains(&draft.name) {
                found.push(problem(
                    Field::Name,
                    gettext("A VM called {name} exists already: choose another name.")
                        .replace("{name}", &draft.name),
                ));
            }
            forward_problems(draft, &mut found);
        }
    }
    found
}

/// What every step up to and including `step` gets wrong, for Finish and for jumping ahead.
pub fn problems_through(
    step: Step,
    draft: &Draft,
    facts: &Facts,
    limits: &HostLimits,
) -> Vec<Problem> {
    Step::ALL
        .iter()
        .filter(|s| **s <= step && **s != Step::Review)
        .flat_map(|s| problems(*s, draft, facts, limits))
        .collect()
}

/// The rule an invalid name breaks, in the user's language (the engine's reason is English).
fn name_rule(name: &str) -> String {
    if name.is_empty() {
        gettext("Give the VM a name.")
    } else if name.len() > hangar_engine::host::definition::MAX_NAME_LEN {
        gettext("The name is too long: at most 64 characters.")
    } else {
        gettext("Use letters, digits and - _ . + @ : (not at the start: - or .), and no \"..\".")
    }
}

fn source_problems(draft: &Draft, facts: &Facts, found: &mut Vec<Problem>) {
    if draft.source == Source::Import {
        match &facts.image {
            _ if draft.image.trim().is_empty() => found.push(problem(
                Field::Image,
                gettext("Choose the disk image to import."),
            )),
            Some(Err(reason)) => found.push(problem(Field::Image, reason.clone())),
            None => found.push(problem(Field::Image, gettext("Reading the image…"))),
            Some(Ok(_)) => {}
        }
    }
    match &facts.kernel {
        _ if draft.kernel.trim().is_empty() => found.push(problem(
            Field::Kernel,
            if draft.source == Source::Import {
                gettext("Choose the Linux kernel that boots this image.")
            } else {
                gettext("Choose a Linux kernel (bzImage or vmlinux).")
            },
        )),
        Some(Err(reason)) => found.push(problem(Field::Kernel, reason.clone())),
        None => found.push(problem(Field::Kernel, gettext("Reading the kernel…"))),
        Some(Ok(_)) => {}
    }
    if !draft.initrd.trim().is_empty() {
        if let Some(Err(reason)) = &facts.initrd {
            found.push(problem(Field::Initrd, reason.clone()));
        }
    }
    if draft.cmdline.len() >= hangar_engine::arch::x86_64::layout::CMDLINE_MAX_SIZE {
        found.push(problem(
            Field::Cmdline,
            gettext("The command line is too long."),
        ));
    }
}

fn forward_problems(draft: &Draft, found: &mut Vec<Problem>) {
    if !draft.network {
        return;
    }
    let mut seen: Vec<(bool, u16)> = Vec::new();
    for (i, forward) in draft.forwards.iter().enumerate() {
        let (Some(host), Some(_)) = (port(&forward.host), port(&forward.guest)) else {
            found.push(problem(
                Field::Forward(i),
                gettext("Ports are numbers from 1 to 65535."),
            ));
            continue;
        };
        if seen.contains(&(forward.udp, host)) {
            found.push(problem(
                Field::Forward(i),
                gettext("Host port {port} is forwarded twice.")
                    .replace("{port}", &host.to_string()),
            ));
        }
        seen.push((forward.udp, host));
    }
}

fn port(text: &str) -> Option<u16> {
    text.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

/// The field hangard's refusal of the definition belongs to: its error name (a taken name) or
/// the field its message names (`field "memory": ...`).
pub fn refused_field(draft: &Draft, error_name: &str, message: &str) -> Option<Field> {
    if error_name.ends_with(".NameTaken") {
        return Some(Field::Name);
    }
    let (field, _) = hangar_engine::host::definition::refused_field(message)?;
    Some(match field {
        "name" => Field::Name,
        "kernel" => Field::Kernel,
        "initrd" => Field::Initrd,
        "cmdline" => Field::Cmdline,
        "memory" => Field::Memory,
        "vcpus" => Field::Vcpus,
        disks if disks.starts_with("disks") => match draft.storage {
            Storage::Existing => Field::ExistingVolume,
            _ if draft.source == Source::Import => Field::Image,
            _ => Field::NewDisk,
        },
        nics => {
            let forward = nics.split("forwards[").nth(1)?;
            Field::Forward(forward.trim_end_matches(']').parse().ok()?)
        }
    })
}

/// The volumes Finish creates, in order: what to call each and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewVolume {
    Import {
        name: String,
        source: String,
        format: String,
    },
    Create {
        name: String,
        size: u64,
    },
}

impl NewVolume {
    pub fn name(&self) -> &str {
        match self {
            NewVolume::Import { name, .. } | NewVolume::Create { name, .. } => name,
        }
    }
}

/// What Finish does, worked out from a valid draft: the volumes to make and the definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub volumes: Vec<NewVolume>,
    pub definition: VmDefinition,
    pub start: bool,
}

pub fn plan(draft: &Draft, facts: &Facts) -> Plan {
    let taken = |candidate: &str| facts.volumes.iter().any(|v| v == candidate);
    let mut volumes = Vec::new();
    let mut disks = Vec::new();
    if draft.source == Source::Import {
        let format = match &facts.image {
            Some(Ok(info)) => info.format.clone(),
            _ => "raw".to_string(),
        };
        let extension = if format == "qcow2" { "qcow2" } else { "img" };
        let name = unique_volume(&draft.name, extension, &taken, &volumes);
        volumes.push(NewVolume::Import {
            name: name.clone(),
            source: draft.image.trim().to_string(),
            format,
        });
        disks.push(name);
    }
    match draft.storage {
        Storage::New => {
            let base = if volumes.is_empty() {
                draft.name.clone()
            } else {
                format!("{}-data", draft.name)
            };
            let name = unique_volume(&base, "qcow2", &taken, &volumes);
            volumes.push(NewVolume::Create {
                name: name.clone(),
                size: draft.new_disk_gib << 30,
            });
            disks.push(name);
        }
        Storage::Existing => disks.extend(draft.existing_volume.clone()),
        Storage::None => {}
    }
    let forwards = draft
        .forwards
        .iter()
        .filter_map(|f| {
            Some(PortForward {
                protocol: if f.udp { Protocol::Udp } else { Protocol::Tcp },
                host: port(&f.host)?,
                guest: port(&f.guest)?,
            })
        })
        .collect();
    let definition = VmDefinition {
        schema_version: SCHEMA_VERSION,
        name: draft.name.clone(),
        uuid: Uuid::NIL,
        vcpus: draft.vcpus,
        memory: ByteSize(draft.memory_mib << 20),
        kernel: draft.kernel.trim().into(),
        initrd: Some(draft.initrd.trim())
            .filter(|s| !s.is_empty())
            .map(Into::into),
        cmdline: draft.cmdline.trim().to_string(),
        disks: disks
            .into_iter()
            .map(|volume| DiskDefinition {
                volume,
                readonly: false,
            })
            .collect(),
        nics: if draft.network {
            vec![NicDefinition {
                mode: NicMode::User,
                forwards,
            }]
        } else {
            Vec::new()
        },
        display: DisplayKind::Framebuffer,
        resolution: Default::default(),
        input: Default::default(),
        autostart: false,
        generation: 0,
    };
    Plan {
        volumes,
        definition,
        start: !draft.customize,
    }
}

fn unique_volume(
    base: &str,
    extension: &str,
    taken: &impl Fn(&str) -> bool,
    planned: &[NewVolume],
) -> String {
    let stem = unique(base, |candidate| {
        let name = format!("{candidate}.{extension}");
        taken(&name) || planned.iter().any(|v| v.name() == name)
    });
    format!("{stem}.{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HostLimits = HostLimits {
        cpus: 4,
        memory: 8 << 30,
    };

    fn kernel_facts() -> Facts {
        Facts {
            kernel: Some(Ok(KernelInfo {
                version: Some("6.1.0-28-amd64".into()),
                kind: super::super::source::KernelKind::BzImage,
                size: 8 << 20,
            })),
            taken_names: vec!["web".into()],
            volumes: vec!["web.qcow2".into(), "db.qcow2".into()],
            ..Facts::default()
        }
    }

    fn valid_draft() -> Draft {
        let mut draft = Draft::new(&LIMITS);
        draft.kernel = "/boot/vmlinuz".into();
        draft.name = "new".into();
        draft
    }

    fn fields(found: &[Problem]) -> Vec<Field> {
        found.iter().map(|p| p.field).collect()
    }

    #[test]
    fn defaults_are_sane_for_the_host() {
        let draft = Draft::new(&LIMITS);
        assert_eq!((draft.memory_mib, draft.vcpus), (1024, 2));
        let small = HostLimits {
            cpus: 1,
            memory: 512 << 20,
        };
        let draft = Draft::new(&small);
        assert_eq!((draft.memory_mib, draft.vcpus), (128, 1));
        assert!(draft.network);
        assert_eq!(draft.storage, Storage::New);
    }

    #[test]
    fn steps_go_forwards_and_back() {
        assert_eq!(Step::Source.next(), Some(Step::Review));
        assert_eq!(Step::Finish.next(), None);
        assert_eq!(Step::Source.previous(), None);
        assert_eq!(Step::Storage.previous(), Some(Step::Resources));
        assert_eq!(Step::Finish.index(), 4);
    }

    #[test]
    fn a_source_needs_a_readable_kernel() {
        let mut draft = valid_draft();
        let mut facts = kernel_facts();
        assert!(problems(Step::Source, &draft, &facts, &LIMITS).is_empty());
        facts.kernel = Some(Err("no such file".into()));
        let found = problems(Step::Source, &draft, &facts, &LIMITS);
        assert_eq!(fields(&found), [Field::Kernel]);
        assert_eq!(found[0].message, "no such file");
        draft.kernel.clear();
        assert_eq!(
            fields(&problems(Step::Source, &draft, &facts, &LIMITS)),
            [Field::Kernel]
        );
        // An initrd is optional, but one that is named must be readable.
        let mut draft = valid_draft();
        let mut facts = kernel_facts();
        draft.initrd = "/boot/initrd".into();
        facts.initrd = Some(Err("empty".into()));
        assert_eq!(
            fields(&problems(Step::Source, &draft, &facts, &LIMITS)),
            [Field::Initrd]
        );
    }

    #[test]
    fn an_import_needs_an_image_and_a_kernel() {
        let mut draft = valid_draft();
        draft.source = Source::Import;
        let facts = kernel_facts();
        assert_eq!(
            fields(&problems(Step::Source, &draft, &facts, &LIMITS)),
            [Field::Image]
        );
    }

    #[test]
    fn resources_are_bounded_by_the_host() {
        let mut draft = valid_draft();
        let facts = kernel_facts();
        draft.memory_mib = 9 * 1024;
        draft.vcpus = 5;
        let found = problems(Step::Resources, &draft, &facts, &LIMITS);
        assert_eq!(fields(&found), [Field::Memory, Field::Vcpus]);
        assert!(found[0].message.contains("8192"), "{}", found[0].message);
        draft.memory_mib = 8 * 1024;
        draft.vcpus = 4;
        assert!(problems(Step::Resources, &draft, &facts, &LIMITS).is_empty());
        draft.memory_mib = 1;
        assert_eq!(
            fields(&problems(Step::Resources, &draft, &facts, &LIMITS)),
            [Field::Memory]
        );
    }

    #[test]
    fn storage_choices_are_checked() {
        let mut draft = valid_draft();
        let facts = kernel_facts();
        draft.new_disk_gib = 0;
        assert_eq!(
            fields(&problems(Step::Storage, &draft, &facts, &LIMITS)),
            [Field::NewDisk]
        );
        draft.storage = Storage::Existing;
        assert_eq!(
            fields(&problems(Step::Storage, &draft, &facts, &LIMITS)),
            [Field::ExistingVolume]
        );
        draft.existing_volume = Some("gone.qcow2".into());
        assert_eq!(
            fields(&problems(Step::Storage, &draft, &facts, &LIMITS)),
            [Field::ExistingVolume]
        );
        draft.existing_volume = Some("db.qcow2".into());
        assert!(problems(Step::Storage, &draft, &facts, &LIMITS).is_empty());
        draft.storage = Storage::None;
        assert!(problems(Step::Storage, &draft, &facts, &LIMITS).is_empty());
    }

    #[test]
    fn names_must_be_valid_and_free() {
        let mut draft = valid_draft();
        let facts = kernel_facts();
        assert!(problems(Step::Finish, &draft, &facts, &LIMITS).is_empty());
        for bad in ["", "a/b", "web", ".x", &"n".repeat(65)] {
            draft.name = bad.to_string();
            assert_eq!(
                fields(&problems(Step::Finish, &draft, &facts, &LIMITS)),
                [Field::Name],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn port_forwards_are_numbers_and_unique() {
        let mut draft = valid_draft();
        let facts = kernel_facts();
        draft.forwards = vec![
            ForwardDraft {
                udp: false,
                host: "2222".into(),
                guest: "22".into(),
            },
            ForwardDraft {
                udp: false,
                host: "2222".into(),
                guest: "23".into(),
            },
            ForwardDraft {
                udp: true,
                host: "2222".into(),
                guest: "22".into(),
            },
            ForwardDraft {
                udp: false,
                host: "http".into(),
                guest: "80".into(),
            },
        ];
        assert_eq!(
            fields(&problems(Step::Finish, &draft, &facts, &LIMITS)),
            [Field::Forward(1), Field::Forward(3)]
        );
        // Without a network card, forwards do not matter.
        draft.network = false;
        assert!(problems(Step::Finish, &draft, &facts, &LIMITS).is_empty());
    }

    #[test]
    fn refusals_find_their_field() {
        let draft = valid_draft();
        let taken = "the name \"web\" is taken by VM 1; pick another name or undefine that VM";
        assert_eq!(
            refused_field(&draft, "dev.hangar.Error.NameTaken", taken),
            Some(Field::Name)
        );
        assert_eq!(
            refused_field(
                &draft,
                "dev.hangar.Error.InvalidDefinition",
                "field \"kernel\": /x: no such file; check the path"
            ),
            Some(Field::Kernel)
        );
        assert_eq!(
            refused_field(
                &draft,
                "dev.hangar.Error.InvalidDefinition",
                "field \"nics[0].forwards[2]\": port 0 cannot be forwarded"
            ),
            Some(Field::Forward(2))
        );
        assert_eq!(
            refused_field(&draft, "dev.hangar.Error.Failed", "qemu-img failed"),
            None
        );
    }

    #[test]
    fn names_are_suggested_and_made_unique() {
        let mut draft = valid_draft();
        draft.use_sample(std::path::Path::new("/kit"));
        let taken = vec!["debian-tiny".to_string(), "debian-tiny-2".to_string()];
        assert_eq!(draft.suggested_name(&taken), "debian-tiny-3");
        assert_eq!(draft.kernel, "/kit/vmlinuz-cloud-amd64");
        draft.source = Source::Import;
        draft.image = "/home/u/Downloads/fedora-cloud.qcow2".into();
        assert_eq!(draft.suggested_name(&taken), "fedora-cloud");
        draft.source = Source::Kernel;
        assert_eq!(draft.suggested_name(&taken), "linux");
    }

    #[test]
    fn the_plan_makes_volumes_and_a_definition_that_validates() {
        let mut draft = valid_draft();
        let facts = kernel_facts();
        draft.name = "web".into(); // its volume name is taken: the plan picks another
        draft.new_disk_gib = 20;
        draft.forwards = vec![ForwardDraft {
            udp: false,
            host: "8080".into(),
            guest: "80".into(),
        }];
        let plan = plan(&draft, &facts);
        assert_eq!(
            plan.volumes,
            [NewVolume::Create {
                name: "web-2.qcow2".into(),
                size: 20 << 30
            }]
        );
        let def = &plan.definition;
        assert_eq!(def.disks[0].volume, "web-2.qcow2");
        assert_eq!(def.memory, ByteSize(1 << 30));
        assert_eq!(def.nics[0].forwards[0].host, 8080);
        assert!(def.initrd.is_none());
        assert!(plan.start);
        def.validate().unwrap();
        VmDefinition::from_json(&def.to_json()).unwrap();
    }

    #[test]
    fn an_import_brings_its_image_and_maybe_a_data_disk() {
        let mut draft = valid_draft();
        let mut facts = kernel_facts();
        draft.source = Source::Import;
        draft.image = "/srv/images/base.qcow2".into();
        draft.name = "imported".into();
        draft.customize = true;
        draft.network = false;
        facts.image = Some(Ok(ImageInfo {
            format: "qcow2".into(),
            virtual_size: 10 << 30,
            size: 1 << 30,
            backing_file: None,
        }));
        let plan = plan(&draft, &facts);
        assert_eq!(
            plan.volumes.iter().map(NewVolume::name).collect::<Vec<_>>(),
            ["imported.qcow2", "imported-data.qcow2"]
        );
        assert_eq!(plan.definition.disks.len(), 2);
        assert!(plan.definition.nics.is_empty());
        assert!(
            !plan.start,
            "customize before start defines without starting"
        );
    }
}
