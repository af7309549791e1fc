//! Pod volumes on the node: emptyDir (disk or tmpfs), configMap, secret,
//! downwardAPI, projected (ServiceAccount tokens included, see
//! [`super::tokens`]) under `<pods>/<uid>/volumes/`; hostPath, and
//! persistentVolumeClaim and ephemeral volumes (see [`super::claims`]),
//! where they are on the host.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use kestrel_cri::v1;

use super::claims::{Claims, host_path_ready};
use super::env::{ConfigError, Sources, field_ref};
use super::resources;
use super::tokens::TokenManager;

/// A prepared volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Where it is on the host.
    pub path: PathBuf,
    /// Every mount of it is read-only, whatever the mount says (a claim
    /// volume with `readOnly`).
    pub read_only: bool,
}

/// Volume name → the prepared volume.
pub type Volumes = HashMap<String, Prepared>;

/// Where a pod's volumes live.
pub fn pod_dir(pods_root: &Path, uid: &str) -> PathBuf {
    pods_root.join(uid)
}

/// A relative path inside a volume, refusing absolute paths and `..`.
fn inside(root: &Path, rel: &str) -> anyhow::Result<PathBuf> {
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(ConfigError(format!("invalid path {rel:?} in volume")).into());
    }
    Ok(root.join(p))
}

fn write_file(root: &Path, rel: &str, data: &[u8], mode: i32) -> anyhow::Result<()> {
    let path = inside(root, rel)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("kestrel-tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode as u32 & 0o7777))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Write `data` per `items` (or every key when `items` is empty).
fn write_keys(
    root: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
    what: &str,
) -> anyhow::Result<()> {
    match items.filter(|i| !i.is_empty()) {
        Some(items) => {
            for it in items {
                let Some(v) = data.get(&it.key) else {
                    return Err(ConfigError(format!(
                        "configuration key {:?} not found in {what}",
                        it.key
                    ))
                    .into());
                };
                write_file(root, &it.path, v, it.mode.unwrap_or(default_mode))?;
            }
        }
        None => {
            for (k, v) in data {
                write_file(root, k, v, default_mode)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    root: &Path,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: i32,
    pod_ip: &str,
    host_ip: &str,
) -> anyhow::Result<()> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_ref(pod, &f.field_path, pod_ip, host_ip)
                .map_err(|e| ConfigError(e.to_string()))?
        } else if let Some(r) = &it.resource_field_ref {
            let spec = pod.spec.as_ref();
            let c = spec
                .and_then(|s| {
                    let n = r.container_name.as_deref()?;
                    s.containers.iter().find(|c| c.name == n)
                })
                .ok_or_else(|| {
                    ConfigError("downwardAPI resourceFieldRef needs a containerName".into())
                })?;
            resources::field_value(c, &r.resource, r.divisor.as_ref())
                .map_err(|e| ConfigError(e.to_string()))?
        } else {
            continue;
        };
        write_file(
            root,
            &it.path,
            value.as_bytes(),
            it.mode.unwrap_or(default_mode),
        )?;
    }
    Ok(())
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// Prepare every volume of `pod`.
pub async fn prepare(
    pod: &Pod,
    dir: &Path,
    sources: &mut Sources,
    tokens: &TokenManager,
    claims: &mut Claims,
    pod_ip: &str,
    host_ip: &str,
) -> anyhow::Result<Volumes> {
    let mut out = Volumes::new();
    // Claim volumes first, all of them: the kubelet reports every one that
    // is not ready in one FailedMount event.
    claims.prepare(pod).await?;
    let vols: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    for v in vols {
        let path = dir.join("volumes").join(&v.name);
        let fresh = |p: &Path| -> anyhow::Result<()> {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))
        };
        if let Some(e) = &v.empty_dir {
            fresh(&path)?;
            if e.medium.as_deref() == Some("Memory") && !is_mountpoint(&path) {
                let size = e
                    .size_limit
                    .as_ref()
                    .map(resources::bytes)
                    .transpose()?
                    .map(|b| format!("size={b}"));
                nix::mount::mount(
                    Some("tmpfs"),
                    &path,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    size.as_deref(),
                )
                .with_context(|| format!("mounting tmpfs at {}", path.display()))?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        } else if let Some(cm) = &v.config_map {
            fresh(&path)?;
            match sources.config_map(&cm.name).await? {
                Some(d) => write_keys(
                    &path,
                    &d,
                    cm.items.as_ref(),
                    cm.default_mode.unwrap_or(0o644),
                    &format!("configmap {:?}", cm.name),
                )?,
                None if cm.optional.unwrap_or(false) => {}
                None => {
                    return Err(ConfigError(format!("configmap {:?} not found", cm.name)).into());
                }
            }
        } else if let Some(s) = &v.secret {
            fresh(&path)?;
            let name = s.secret_name.clone().unwrap_or_default();
            match sources.secret(&name).await? {
                Some(d) => write_keys(
                    &path,
                    &d,
                    s.items.as_ref(),
                    s.default_mode.unwrap_or(0o644),
                    &format!("secret {name:?}"),
                )?,
                None if s.optional.unwrap_or(false) => {}
                None => return Err(ConfigError(format!("secret {name:?} not found")).into()),
            }
        } else if let Some(d) = &v.downward_api {
            fresh(&path)?;
            write_downward(
                &path,
                pod,
                d.items.as_deref().unwrap_or_default(),
                d.default_mode.unwrap_or(0o644),
                pod_ip,
                host_ip,
            )?;
        } else if let Some(p) = &v.projected {
            fresh(&path)?;
            let mode = p.default_mode.unwrap_or(0o644);
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    match sources.config_map(&cm.name).await? {
                        Some(d) => write_keys(
                            &path,
                            &d,
                            cm.items.as_ref(),
                            mode,
                            &format!("configmap {:?}", cm.name),
                        )?,
                        None if cm.optional.unwrap_or(false) => {}
                        None => {
                            return Err(
                                ConfigError(format!("configmap {:?} not found", cm.name)).into()
                            );
                        }
                    }
                } else if let Some(s) = &src.secret {
                    match sources.secret(&s.name).await? {
                        Some(d) => write_keys(
                            &path,
                            &d,
                            s.items.as_ref(),
                            mode,
                            &format!("secret {:?}", s.name),
                        )?,
                        None if s.optional.unwrap_or(false) => {}
                        None => {
                            return Err(
                                ConfigError(format!("secret {:?} not found", s.name)).into()
                            );
                        }
                    }
                } else if let Some(d) = &src.downward_api {
                    write_downward(
                        &path,
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        mode,
                        pod_ip,
                        host_ip,
                    )?;
                } else if let Some(t) = &src.service_account_token {
                    // A bound token from the TokenRequest API, refreshed by
                    // the token manager; a failure is the volume's, retried.
                    let token = tokens
                        .token(pod, t.audience.as_deref(), t.expiration_seconds)
                        .await
                        .map_err(|e| ConfigError(format!("{e:#}")))?;
                    write_file(&path, &t.path, token.as_bytes(), mode)?;
                }
            }
        } else if let Some(h) = &v.host_path {
            let hp = PathBuf::from(&h.path);
            host_path_ready(&hp, h.type_.as_deref().unwrap_or("")).map_err(ConfigError)?;
            out.insert(
                v.name.clone(),
                Prepared {
                    path: hp,
                    read_only: false,
                },
            );
            continue;
        } else if v.persistent_volume_claim.is_some() || v.ephemeral.is_some() {
            let Some(r) = claims.get(&v.name) else {
                bail!(ConfigError(format!(
                    "volume {:?}: its claim is not resolved",
                    v.name
                )));
            };
            out.insert(
                v.name.clone(),
                Prepared {
                    path: r.path.clone(),
                    read_only: r.read_only,
                },
            );
            continue;
        } else {
            bail!(ConfigError(format!(
                "volume {:?}: unsupported volume type",
                v.name
            )));
        }
        out.insert(
            v.name.clone(),
            Prepared {
                path,
                read_only: false,
            },
        );
    }
    Ok(out)
}

/// The CRI mounts of `c`.
pub fn mounts(c: &Container, vols: &Volumes) -> anyhow::Result<Vec<v1::Mount>> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(Prepared {
            path: base,
            read_only,
        }) = vols.get(&m.name)
        else {
            return Err(
                ConfigError(format!("volumeMount {:?}: no volume of that name", m.name)).into(),
            );
        };
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = inside(base, sub)?;
                if !p.exists() {
                    std::fs::create_dir_all(&p)?;
                }
                p
            }
            None => base.clone(),
        };
        out.push(v1::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: *read_only || m.read_only.unwrap_or(false),
            ..Default::default()
        });
    }
    Ok(out)
}

/// Remove a pod's directory, unmounting any tmpfs in it first.
pub fn cleanup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join("volumes")) {
        for e in entries.flatten() {
            if is_mountpoint(&e.path()) {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_stay_inside() {
        let root = Path::new("/v");
        assert!(inside(root, "a/b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a"] {
            assert!(inside(root, bad).is_err(), "{bad:?}");
        }
    }
}
