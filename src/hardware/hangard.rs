//! What the hardware editor asks of hangard, off the main loop: the definition, the pool's
//! volumes and the host's limits to edit with, and Apply (create volumes, update the
//! definition, grow volumes; new volumes are deleted again when the update is refused).

use hangar_engine::host::api::{ManagerProxy, VmProxy, VolumeEntry};
use hangar_engine::host::capabilities::HostCapabilities;
use zbus::Connection;

use crate::hardware::model::{ApplyPlan, HostLimits};

/// A refusal or failure of a hangard call: its D-Bus error name (`dev.hangar.Error.Conflict`)
/// when it has one, and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub name: Option<String>,
    pub message: String,
}

impl Refusal {
    fn of(err: &zbus::Error) -> Refusal {
        match err {
            zbus::Error::MethodError(name, message, _) => Refusal {
                name: Some(name.to_string()),
                message: message.clone().unwrap_or_else(|| name.to_string()),
            },
            other => Refusal {
                name: None,
                message: other.to_string(),
            },
        }
    }

    /// Someone else changed the definition since it was loaded.
    pub fn is_conflict(&self) -> bool {
        self.name.as_deref() == Some("dev.hangar.Error.Conflict")
    }
}

/// Why Apply stopped, and how far it got.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", .refusal.message)]
    Connect { refusal: Refusal },
    /// Creating the volume of disk `index` failed; the volumes created before it were deleted
    /// again, and the definition is unchanged.
    #[error("{}", .refusal.message)]
    Create { index: usize, refusal: Refusal },
    /// hangard refused the definition; `leftovers` are new volumes that could not be deleted
    /// again (with why).
    #[error("{}", .refusal.message)]
    Update {
        refusal: Refusal,
        leftovers: Vec<String>,
    },
    /// The definition is stored (at `generation`), but growing disk `index` failed.
    #[error("{}", .refusal.message)]
    Grow {
        index: usize,
        refusal: Refusal,
        generation: u64,
    },
}

/// What the page edits with.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub definition: String,
    pub volumes: Vec<VolumeEntry>,
    pub host: Option<HostLimits>,
}

async fn vm<'a>(connection: &Connection, path: &'a str) -> zbus::Result<VmProxy<'a>> {
    VmProxy::builder(connection).path(path)?.build().await
}

/// The definition, the pool and the host's limits. Only the definition is needed: without the
/// pool the disks show no sizes, without capabilities the limits are hangard's own.
pub async fn load(connection: &Connection, path: &str) -> Result<Snapshot, Refusal> {
    let definition = vm(connection, path)
        .await
        .map_err(|e| Refusal::of(&e))?
        .get_definition()
        .await
        .map_err(|e| Refusal::of(&e))?;
    let manager = ManagerProxy::new(connection)
        .await
        .map_err(|e| Refusal::of(&e))?;
    let volumes = manager.list_volumes().await.unwrap_or_default();
    let host = manager
        .capabilities()
        .await
        .ok()
        .and_then(|json| serde_json::from_str::<HostCapabilities>(&json).ok())
        .map(|caps| HostLimits::from_capabilities(&caps));
    Ok(Snapshot {
        definition,
        volumes,
        host,
    })
}

/// Carries out `plan`; returns the definition's new generation.
pub async fn apply(
    connection: &Connection,
    path: &str,
    plan: ApplyPlan,
) -> Result<u64, ApplyError> {
    let connect = |e: zbus::Error| ApplyError::Connect {
        refusal: Refusal::of(&e),
    };
    let manager = ManagerProxy::new(connection).await.map_err(connect)?;
    let vm = vm(connection, path).await.map_err(connect)?;
    let mut created = Vec::new();
    for (index, volume, size) in &plan.create {
        if let Err(err) = manager.create_volume(volume, *size, "qcow2").await {
            delete_again(&manager, &created).await;
            return Err(ApplyError::Create {
                index: *index,
                refusal: Refusal::of(&err),
            });
        }
        created.push(volume.clone());
    }
    let generation = match vm.update_definition(&plan.json, plan.generation).await {
        Ok(generation) => generation,
        Err(err) => {
            let leftovers = delete_again(&manager, &created).await;
            return Err(ApplyError::Update {
                refusal: Refusal::of(&err),
                leftovers,
            });
        }
    };
    for (index, volume, size) in &plan.grow {
        if let Err(err) = manager.resize_volume(volume, *size).await {
            return Err(ApplyError::Grow {
                index: *index,
                refusal: Refusal::of(&err),
                generation,
            });
        }
    }
    Ok(generation)
}

/// Deletes the volumes this Apply created; returns those that stay, each with the reason.
async fn delete_again(manager: &ManagerProxy<'_>, created: &[String]) -> Vec<String> {
    let mut leftovers = Vec::new();
    for volume in created {
        if let Err(err) = manager.delete_volume(volume).await {
            leftovers.push(format!("{volume}: {}", Refusal::of(&err).message));
        }
    }
    leftovers
}
