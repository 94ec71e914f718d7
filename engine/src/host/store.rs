//! The definition store: every defined VM, one JSON file each under
//! `$XDG_CONFIG_HOME/hangar/vms/<uuid>.json`.
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory), so a crash leaves either
//! the old or the new definition, never half of one. Updates name the generation they were based
//! on; a stale generation is a conflict, so two clients can never silently overwrite each other.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::host::definition::{DefinitionError, Uuid, VmDefinition};

/// Errors of the definition store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] DefinitionError),
    #[error("the name {name:?} is taken by VM {uuid}; pick another name or undefine that VM")]
    NameTaken { name: String, uuid: Uuid },
    #[error("a VM with UUID {0} is already defined; leave \"uuid\" out to get a fresh one")]
    UuidTaken(Uuid),
    #[error("no VM {0} is defined; see `hangarctl list --all`")]
    NotFound(String),
    #[error(
        "VM {name:?} changed since you read it: you based your change on generation {expected}, \
         it is now at generation {current}; read it again (`hangarctl dumpdef {name}`), reapply \
         your change and retry"
    )]
    Conflict {
        name: String,
        expected: u64,
        current: u64,
    },
    #[error(
        "field \"uuid\": {given} does not match the VM being updated ({existing}); leave it out"
    )]
    UuidMismatch { given: Uuid, existing: Uuid },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read definitions in {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// A definition file that could not be loaded; the store skips it and reports why.
#[derive(Debug)]
pub struct SkippedFile {
    pub path: PathBuf,
    pub reason: String,
}

/// Every defined VM, in memory and on disk.
#[derive(Debug)]
pub struct DefinitionStore {
    dir: PathBuf,
    vms: BTreeMap<Uuid, VmDefinition>,
}

impl DefinitionStore {
    /// Opens (creating it if needed) the store in `dir` and loads every definition.
    pub fn open(dir: &Path) -> Result<(DefinitionStore, Vec<SkippedFile>), StoreError> {
        let read_err = |source| StoreError::Read {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(read_err)?;
        let mut store = DefinitionStore {
            dir: dir.to_path_buf(),
            vms: BTreeMap::new(),
        };
        let mut skipped = Vec::new();
        for entry in fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if stale_temp_file(&path) {
                // What a writer killed between create and rename left; the real file is whole.
                let _ = fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match store.load_file(&path) {
                Ok(def) => {
                    store.vms.insert(def.uuid, def);
                }
                Err(reason) => skipped.push(SkippedFile { path, reason }),
            }
        }
        Ok((store, skipped))
    }

    fn load_file(&self, path: &Path) -> Result<VmDefinition, String> {
        let text = fs::read_to_string(path).map_err(|err| err.to_string())?;
        let def = VmDefinition::from_json(&text).map_err(|err| err.to_string())?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if def.uuid.is_nil() || def.uuid.to_string() != stem {
            return Err(format!(
                "its uuid {} does not match its file name",
                def.uuid
            ));
        }
        if let Some(other) = self.by_name(&def.name) {
            return Err(format!(
                "its name {:?} is also used by VM {}",
                def.name, other.uuid
            ));
        }
        Ok(def)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn get(&self, uuid: &Uuid) -> Option<&VmDefinition> {
        self.vms.get(uuid)
    }

    pub fn by_name(&self, name: &str) -> Option<&VmDefinition> {
        self.vms.values().find(|def| def.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &VmDefinition> {
        self.vms.values()
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    fn path_of(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.json"))
    }

    /// Stores a new definition; assigns a UUID if it has none. Returns the stored definition.
    pub fn define(&mut self, mut def: VmDefinition) -> Result<&VmDefinition, StoreError> {
        def.validate()?;
        if let Some(other) = self.by_name(&def.name) {
            return Err(StoreError::NameTaken {
                name: def.name,
                uuid: other.uuid,
            });
        }
        if def.uuid.is_nil() {
            def.uuid = Uuid::random().map_err(|source| StoreError::Write {
                path: PathBuf::from("/dev/urandom"),
                source,
            })?;
        } else if self.vms.contains_key(&def.uuid) {
            return Err(StoreError::UuidTaken(def.uuid));
        }
        def.generation = 1;
        self.persist(&def)?;
        let uuid = def.uuid;
        Ok(self.vms.entry(uuid).or_insert(def))
    }

    /// Replaces a definition if it is still at `expected_generation`.
    pub fn update(
        &mut self,
        uuid: &Uuid,
        mut def: VmDefinition,
        expected_generation: u64,
    ) -> Result<&VmDefinition, StoreError> {
        def.validate()?;
        let current = self
            .vms
            .get(uuid)
            .ok_or_else(|| StoreError::NotFound(uuid.to_string()))?;
        if current.generation != expected_generation {
            return Err(StoreError::Conflict {
                name: current.name.clone(),
                expected: expected_generation,
                current: current.generation,
            });
        }
        if !def.uuid.is_nil() && def.uuid != *uuid {
            return Err(StoreError::UuidMismatch {
                given: def.uuid,
                existing: *uuid,
            });
        }
        if let Some(other) = self.by_name(&def.name) {
            if other.uuid != *uuid {
                return Err(StoreError::NameTaken {
                    name: def.name,
                    uuid: other.uuid,
                });
            }
        }
        def.uuid = *uuid;
        def.generation = current.generation + 1;
        self.persist(&def)?;
        self.vms.insert(*uuid, def);
        Ok(&self.vms[uuid])
    }

    /// Forgets a definition and deletes its file.
    pub fn remove(&mut self, uuid: &Uuid) -> Result<VmDefinition, StoreError> {
        if !self.vms.contains_key(uuid) {
            return Err(StoreError::NotFound(uuid.to_string()));
        }
        let path = self.path_of(uuid);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Write { path, source }),
        }
        let _ = sync_dir(&self.dir);
        Ok(self.vms.remove(uuid).expect("checked above"))
    }

    fn persist(&self, def: &VmDefinition) -> Result<(), StoreError> {
        let path = self.path_of(&def.uuid);
        let mut text = def.to_json();
        text.push('\n');
        write_atomically(&path, text.as_bytes())
            .map_err(|source| StoreError::Write { path, source })
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("definition");
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// A temp file of [`write_atomically`] whose writer process is gone.
fn stale_temp_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some((_, pid)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")) else {
        return false;
    };
    match pid.parse::<u32>() {
        Ok(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_temp_files_of_dead_writers_are_stale() {
        let dead = Path::new("/x/.a.json.tmp-4000000000");
        assert!(stale_temp_file(dead));
        let mine = format!("/x/.a.json.tmp-{}", std::process::id());
        assert!(!stale_temp_file(Path::new(&mine)));
        assert!(
            !stale_temp_file(Path::new("/x/.a.json.tmp-1")),
            "pid 1 is alive"
        );
        assert!(!stale_temp_file(Path::new("/x/a.json")));
        assert!(!stale_temp_file(Path::new("/x/.hidden")));
    }

    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let path = std::env::temp_dir()
                .join(format!("hangar-store-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Scratch(path)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn def(name: &str) -> VmDefinition {
        VmDefinition::from_json(&format!(r#"{{"name":"{name}","kernel":"/k"}}"#)).unwrap()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn define_assigns_identity_and_survives_reopen() {
        let scratch = Scratch::new("reopen");
        let (mut store, skipped) = DefinitionStore::open(&scratch.0).unwrap();
        assert!(skipped.is_empty());
        let uuid = store.define(def("a")).unwrap().uuid;
        assert!(!uuid.is_nil());
        assert_eq!(store.get(&uuid).unwrap().generation, 1);
        assert_eq!(files(&scratch.0), vec![format!("{uuid}.json")]);

        let (store, skipped) = DefinitionStore::open(&scratch.0).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(store.by_name("a").unwrap().uuid, uuid);
    }

    #[test]
    fn a_taken_name_is_refused_and_nothing_written() {
        let scratch = Scratch::new("taken");
        let (mut store, _) = DefinitionStore::open(&scratch.0).unwrap();
        store.define(def("a")).unwrap();
        let before = files(&scratch.0);
        let err = store.define(def("a")).unwrap_err();
        assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
        assert_eq!(files(&scratch.0), before);
    }

    #[test]
    fn stale_generations_conflict_and_nothing_is_lost() {
        let scratch = Scratch::new("conflict");
        let (mut store, _) = DefinitionStore::open(&scratch.0).unwrap();
        let uuid = store.define(def("a")).unwrap().uuid;

        let mut first = def("a");
        first.vcpus = 2;
        let mut second = def("a");
        second.memory = crate::config::ByteSize(512 << 20);

        assert_eq!(store.update(&uuid, first, 1).unwrap().generation, 2);
        let err = store.update(&uuid, second, 1).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 1,
                    current: 2,
                    ..
                }
            ),
            "{err}"
        );
        let (store, _) = DefinitionStore::open(&scratch.0).unwrap();
        let stored = store.get(&uuid).unwrap();
        assert_eq!(stored.vcpus, 2);
        assert_eq!(stored.generation, 2);
    }

    #[test]
    fn renaming_onto_a_taken_name_is_refused() {
        let scratch = Scratch::new("rename");
        let (mut store, _) = DefinitionStore::open(&scratch.0).unwrap();
        store.define(def("a")).unwrap();
        let uuid = store.define(def("b")).unwrap().uuid;
        let err = store.update(&uuid, def("a"), 1).unwrap_err();
        assert!(matches!(err, StoreError::NameTaken { .. }), "{err}");
        assert_eq!(store.update(&uuid, def("c"), 1).unwrap().name, "c");
    }

    #[test]
    fn broken_files_are_skipped_with_a_reason() {
        let scratch = Scratch::new("broken");
        fs::create_dir_all(&scratch.0).unwrap();
        fs::write(scratch.0.join("junk.json"), "{not json").unwrap();
        let (store, skipped) = DefinitionStore::open(&scratch.0).unwrap();
        assert!(store.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].reason.contains("not a valid VM definition"));
    }

    #[test]
    fn remove_deletes_the_file() {
        let scratch = Scratch::new("remove");
        let (mut store, _) = DefinitionStore::open(&scratch.0).unwrap();
        let uuid = store.define(def("a")).unwrap().uuid;
        store.remove(&uuid).unwrap();
        assert!(files(&scratch.0).is_empty());
        assert!(matches!(store.remove(&uuid), Err(StoreError::NotFound(_))));
    }
}
