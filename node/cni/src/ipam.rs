//! Address management for one node's pod CIDR, persisted on disk.
//!
//! One file per allocated address (named by the address, holding the owner)
//! makes every allocation durable the moment it is created, and `O_EXCL`
//! makes it impossible to hand one address out twice, across restarts and
//! concurrent plugin runs alike. A lock file serialises the scan.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::{Error, Result};

/// Who holds an address: the sandbox and the interface inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The CNI container ID (the pod sandbox).
    pub container_id: String,
    /// The interface name inside the sandbox.
    pub ifname: String,
}

impl Owner {
    fn encode(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        Some(Self {
            container_id: lines.next()?.to_owned(),
            ifname: lines.next()?.to_owned(),
        })
    }
}

/// The on-disk allocator for one pod CIDR.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
}

impl Ipam {
    /// Opens (creating if needed) the allocator for `cidr` under `data_dir`.
    pub fn open(data_dir: &Path, cidr: Ipv4Net) -> Result<Self> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(Error::InvalidConfig(format!(
                "podCIDR {cidr} is too small for pods"
            )));
        }
        let dir = data_dir
            .join("ipam")
            .join(cidr.to_string().replace('/', "_"));
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        Ok(Self { dir, cidr })
    }

    fn lock(&self) -> Result<Flock<fs::File>> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("locking", &path, e.into()))
    }

    /// The addresses pods may get: all but the network address, the
    /// broadcast address and the first host address, which the node keeps.
    fn assignable(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let reserved = self.cidr.hosts().next();
        self.cidr.hosts().filter(move |ip| Some(*ip) != reserved)
    }

    /// The address `owner` holds, allocating the next free one if it holds
    /// none. Repeating an ADD therefore returns the same address.
    pub fn allocate(&self, owner: &Owner) -> Result<Ipv4Addr> {
        let _lock = self.lock()?;
        if let Some(ip) = self.find_locked(owner)? {
            return Ok(ip);
        }
        // Continue after the last allocation, so a released address is not
        // reused at once (a stale conntrack or cache entry might still name it).
        let last = fs::read_to_string(self.dir.join(".last"))
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        let candidates: Vec<Ipv4Addr> = self.assignable().collect();
        let start = last
            .and_then(|last| candidates.iter().position(|ip| *ip == last))
            .map_or(0, |i| i + 1);
        for ip in candidates[start..].iter().chain(&candidates[..start]) {
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(owner.encode().as_bytes())
                        .and_then(|()| file.sync_all())
                        .map_err(|e| Error::io("writing", &path, e))?;
                    let last_path = self.dir.join(".last");
                    fs::write(&last_path, ip.to_string())
                        .map_err(|e| Error::io("writing", &last_path, e))?;
                    return Ok(*ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("creating", &path, e)),
            }
        }
        Err(Error::Exhausted(self.cidr))
    }

    /// The address `owner` holds, if any.
    pub fn find(&self, owner: &Owner) -> Result<Option<Ipv4Addr>> {
        let _lock = self.lock()?;
        self.find_locked(owner)
    }

    fn find_locked(&self, owner: &Owner) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .allocations_locked()?
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip))
    }

    /// Releases whatever `owner` holds. Releasing nothing is not an error:
    /// CNI DEL must be idempotent.
    pub fn release(&self, owner: &Owner) -> Result<Option<Ipv4Addr>> {
        let _lock = self.lock()?;
        let Some(ip) = self.find_locked(owner)? else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        Ok(Some(ip))
    }

    /// Release every address whose sandbox is not in `live` and whose
    /// allocation is older than `min_age` (younger ones may belong to a
    /// sandbox the runtime is still creating). Returns what was released.
    pub fn release_orphans(
        &self,
        live: &std::collections::HashSet<String>,
        min_age: std::time::Duration,
    ) -> Result<Vec<Ipv4Addr>> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for (ip, owner) in self.allocations_locked()? {
            if live.contains(&owner.container_id) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if old {
                fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Every allocation, for garbage collection and inspection.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, Owner)>> {
        let _lock = self.lock()?;
        self.allocations_locked()
    }

    fn allocations_locked(&self) -> Result<Vec<(Ipv4Addr, Owner)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| Error::io("listing", &self.dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &self.dir, e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let text = fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
            if let Some(owner) = Owner::decode(&text) {
                out.push((ip, owner));
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
