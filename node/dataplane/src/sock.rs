//! Attaching the socket load-balancing hooks (`connect4`, `sendmsg4`,
//! `recvmsg4`, `getpeername4`) to the node's own cgroup.
//!
//! The attachments are bpf links pinned under `<pin_dir>/links/`, so they
//! outlive the agent: a `kill -9` leaves every connect in the cgroup
//! balanced by the programs already in the kernel, reading the pinned maps.
//! A restarted agent finds the pins and swaps its freshly loaded programs
//! into the same links (`BPF_LINK_UPDATE`), so there is no moment without
//! a hook and never a second copy of one.

use std::{
    fs::{self, File},
    io,
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockAddrAttachType, links::FdLink};
use aya_obj::generated::bpf_attach_type;
use tracing::{info, warn};

use crate::sys::{self, CGROUP_LINK, CgroupLinkInfo};
use crate::{Dataplane, Error, Result};

/// The directory under the node's bpffs directory where links are pinned.
pub const LINKS_DIR: &str = "links";

/// One socket hook: the program's name in the object and where it attaches.
#[derive(Clone, Copy, Debug)]
struct Hook {
    name: &'static str,
    attach: CgroupSockAddrAttachType,
}

impl Hook {
    fn kernel_attach_type(self) -> u32 {
        bpf_attach_type::from(self.attach) as u32
    }
}

/// The hooks in attach order: the reverse translations first, so that by
/// the time a connect or send is rewritten, the reply path and
/// `getpeername` already translate back. Detaching goes the other way.
const HOOKS: [Hook; 4] = [
    Hook {
        name: "sock_getpeername4",
        attach: CgroupSockAddrAttachType::GetPeerName4,
    },
    Hook {
        name: "sock_recvmsg4",
        attach: CgroupSockAddrAttachType::UDPRecvMsg4,
    },
    Hook {
        name: "sock_connect4",
        attach: CgroupSockAddrAttachType::Connect4,
    },
    Hook {
        name: "sock_sendmsg4",
        attach: CgroupSockAddrAttachType::UDPSendMsg4,
    },
];

/// The names of the socket load-balancing programs, in attach order.
pub const SOCK_LB_PROGRAMS: [&str; 4] =
    [HOOKS[0].name, HOOKS[1].name, HOOKS[2].name, HOOKS[3].name];

/// What to do about one hook, given what is pinned for it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Nothing is pinned: attach a new link and pin it.
    Attach,
    /// Our link, already running this very program.
    Keep,
    /// Our link: swap the program in place.
    Update,
    /// A link for this hook on another cgroup, or on one that is gone: the
    /// node's cgroup changed. Detach it, then attach to ours.
    Replace,
    /// Something that is not this hook's link sits on the pin path.
    Refuse(String),
}

/// Decides what to do about one hook. `cgroup_id` is the target cgroup's,
/// `prog_id` the id of the program this load would attach.
fn plan(pinned: Option<&CgroupLinkInfo>, attach_type: u32, cgroup_id: u64, prog_id: u32) -> Step {
    let Some(link) = pinned else {
        return Step::Attach;
    };
    if link.link_type != CGROUP_LINK {
        return Step::Refuse(format!(
            "a bpf object of link type {} is pinned there, not a cgroup link",
            link.link_type
        ));
    }
    if link.attach_type != attach_type {
        return Step::Refuse(format!(
            "the cgroup link pinned there has attach type {}, not {attach_type}",
            link.attach_type
        ));
    }
    if link.cgroup_id != cgroup_id {
        Step::Replace
    } else if link.prog_id == prog_id {
        Step::Keep
    } else {
        Step::Update
    }
}

impl Dataplane {
    /// Attaches the socket load-balancing hooks to `cgroup_dir`, a cgroup v2
    /// directory that is not the root of its hierarchy (refused with
    /// [`Error::RootCgroup`]: the hooks would rewrite every socket on the
    /// machine).
    ///
    /// The links are pinned under `<pin_dir>/links/` and outlive this value
    /// and this process. If they are already pinned (an agent restart, or a
    /// second call), the programs of this load replace the ones in the
    /// links in place; nothing is attached twice. Remove them with
    /// [`detach_sock_lb`].
    pub fn attach_sock_lb(&mut self, cgroup_dir: &Path) -> Result<()> {
        let cgroup = NodeCgroup::open(cgroup_dir)?;
        let links_dir = self.pin_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir).map_err(|source| Error::PathIo {
            what: "creating the links directory",
            path: links_dir.clone(),
            source,
        })?;
        // Load (verify) all four first: a rejected program must leave the
        // kernel exactly as it was.
        for hook in HOOKS {
            let program = self.sock_program(hook.name)?;
            if program.fd().is_err() {
                program.load().map_err(|source| Error::Program {
                    what: "loading".into(),
                    name: hook.name,
                    source,
                })?;
            }
        }
        let mut created = CreatedLinks::default();
        for hook in HOOKS {
            let pin = links_dir.join(hook.name);
            let pinned = open_pinned_link(&pin)?;
            let program = self.sock_program(hook.name)?;
            let prog_id = program
                .info()
                .map_err(|source| Error::Program {
                    what: "reading the id of".into(),
                    name: hook.name,
                    source,
                })?
                .id();
            let step = plan(
                pinned.as_ref().map(|(_, info)| info),
                hook.kernel_attach_type(),
                cgroup.id,
                prog_id,
            );
            match (step, pinned) {
                (Step::Attach, _) => {
                    attach_and_pin(program, hook.name, &cgroup, &pin)?;
                    created.0.push(pin);
                    info!(program = hook.name, cgroup = %cgroup.path.display(), "attached");
                }
                (Step::Keep, _) => {}
                (Step::Update, Some((link, info))) => {
                    let prog_fd = program.fd().map_err(|source| Error::Program {
                        what: "reading the descriptor of".into(),
                        name: hook.name,
                        source,
                    })?;
                    sys::link_update(link.as_fd(), prog_fd.as_fd()).map_err(|source| {
                        Error::PathIo {
                            what: "replacing the program of the pinned link",
                            path: pin.clone(),
                            source,
                        }
                    })?;
                    info!(
                        program = hook.name,
                        link = info.id,
                        old_prog = info.prog_id,
                        new_prog = prog_id,
                        "adopted the pinned link"
                    );
                }
                (Step::Replace, Some((link, info))) => {
                    warn!(
                        program = hook.name,
                        link = info.id,
                        old_cgroup = info.cgroup_id,
                        cgroup = %cgroup.path.display(),
                        "the pinned link is on another cgroup; moving it"
                    );
                    unpin_and_detach(&link, &pin)?;
                    attach_and_pin(program, hook.name, &cgroup, &pin)?;
                    created.0.push(pin);
                }
                (Step::Refuse(why), _) => {
                    return Err(Error::UnexpectedPin { path: pin, why });
                }
                (Step::Update | Step::Replace, None) => {
                    // `plan` only asks for these when a link is pinned.
                    return Err(Error::UnexpectedPin {
                        path: pin,
                        why: "the pinned link disappeared while being adopted".into(),
                    });
                }
            }
        }
        created.0.clear();
        Ok(())
    }

    fn sock_program(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program {
                what: "typing".into(),
                name,
                source,
            })
    }
}

/// Detaches the socket hooks pinned under `pin_dir` (from whatever cgroup
/// they are on) and removes their pins. Hooks that are not pinned are
/// skipped, so this is safe to repeat.
pub fn detach_sock_lb(pin_dir: &Path) -> Result<()> {
    let links_dir = pin_dir.join(LINKS_DIR);
    // Stop rewriting new connections before the reverse translation goes.
    for hook in HOOKS.iter().rev() {
        let pin = links_dir.join(hook.name);
        if let Some((link, _)) = open_pinned_link(&pin)? {
            unpin_and_detach(&link, &pin)?;
            info!(program = hook.name, "detached");
        }
    }
    // Left in place if something else is pinned there.
    let _ = fs::remove_dir(&links_dir);
    Ok(())
}

/// What the kernel holds for the socket hooks of one cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockLbStatus {
    /// The cgroup's id (its inode number).
    pub cgroup_id: u64,
    /// One entry per hook, in attach order.
    pub hooks: Vec<SockLbHook>,
}

/// One socket hook's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockLbHook {
    /// The program name.
    pub program: &'static str,
    /// The pinned link, if there is one.
    pub link: Option<SockLbLink>,
    /// The programs attached directly to the cgroup at this hook, by id.
    pub attached_prog_ids: Vec<u32>,
}

/// A pinned link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockLbLink {
    /// The link's id.
    pub id: u32,
    /// The id of the program it runs.
    pub prog_id: u32,
    /// The cgroup it is attached to; 0 once that cgroup is gone.
    pub cgroup_id: u64,
}

impl SockLbStatus {
    /// Whether every hook is pinned, attached to this cgroup, and is the
    /// only program there: the condition for the node to report its
    /// network as available.
    pub fn is_active(&self) -> bool {
        self.hooks.len() == HOOKS.len()
            && self.hooks.iter().all(|hook| {
                hook.link.is_some_and(|link| {
                    link.cgroup_id == self.cgroup_id && hook.attached_prog_ids == [link.prog_id]
                })
            })
    }
}

/// Reads the socket hooks pinned under `pin_dir` and the programs attached
/// to `cgroup_dir`, for introspection and for tests.
pub fn sock_lb_status(pin_dir: &Path, cgroup_dir: &Path) -> Result<SockLbStatus> {
    let cgroup = NodeCgroup::open_any(cgroup_dir)?;
    let links_dir = pin_dir.join(LINKS_DIR);
    let mut hooks = Vec::with_capacity(HOOKS.len());
    for hook in HOOKS {
        let link = open_pinned_link(&links_dir.join(hook.name))?.map(|(_, info)| SockLbLink {
            id: info.id,
            prog_id: info.prog_id,
            cgroup_id: info.cgroup_id,
        });
        let attached_prog_ids =
            sys::cgroup_prog_ids(cgroup.file.as_fd(), hook.kernel_attach_type()).map_err(
                |source| Error::PathIo {
                    what: "listing the programs attached to",
                    path: cgroup.path.clone(),
                    source,
                },
            )?;
        hooks.push(SockLbHook {
            program: hook.name,
            link,
            attached_prog_ids,
        });
    }
    Ok(SockLbStatus {
        cgroup_id: cgroup.id,
        hooks,
    })
}

/// The cgroup the hooks go on, opened once so that every check and the
/// attachment concern the same directory.
#[derive(Debug)]
struct NodeCgroup {
    file: File,
    path: PathBuf,
    /// Its cgroup id: on cgroup2 the directory's inode number.
    id: u64,
}

impl NodeCgroup {
    /// Opens `dir` for attaching: a cgroup2 directory that is not the root
    /// of its hierarchy.
    fn open(dir: &Path) -> Result<Self> {
        let cgroup = Self::open_any(dir)?;
        let meta = cgroup.file.metadata().map_err(|source| Error::PathIo {
            what: "reading",
            path: dir.to_owned(),
            source,
        })?;
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").map_err(|source| Error::PathIo {
                what: "reading",
                path: PathBuf::from("/proc/self/mountinfo"),
                source,
            })?;
        let roots = cgroup2_hierarchy_roots(&mountinfo)
            .into_iter()
            .filter_map(|root| fs::metadata(root).ok())
            .map(|root| (root.dev(), root.ino()));
        if is_hierarchy_root((meta.dev(), meta.ino()), roots) {
            return Err(Error::RootCgroup(dir.to_owned()));
        }
        Ok(cgroup)
    }

    /// Opens `dir`, checking only that it is a cgroup2 directory.
    fn open_any(dir: &Path) -> Result<Self> {
        let file = File::open(dir).map_err(|source| Error::PathIo {
            what: "opening the cgroup",
            path: dir.to_owned(),
            source,
        })?;
        let fs_type = nix::sys::statfs::fstatfs(&file)
            .map_err(|errno| Error::PathIo {
                what: "reading the file system of",
                path: dir.to_owned(),
                source: io::Error::from(errno),
            })?
            .filesystem_type();
        let meta = file.metadata().map_err(|source| Error::PathIo {
            what: "reading",
            path: dir.to_owned(),
            source,
        })?;
        if fs_type != nix::sys::statfs::CGROUP2_SUPER_MAGIC || !meta.is_dir() {
            return Err(Error::NotCgroup2(dir.to_owned()));
        }
        Ok(Self {
            file,
            path: dir.to_owned(),
            id: meta.ino(),
        })
    }
}

/// Whether `dir` is the root of a cgroup2 hierarchy: the same directory as
/// one of the hierarchy's mount roots, or the cgroup with id 1 (the root's
/// id, which also catches a root reached through a mount that
/// `/proc/self/mountinfo` does not list, such as another mount namespace's).
/// Directories are given as (device, inode).
fn is_hierarchy_root(dir: (u64, u64), mount_roots: impl IntoIterator<Item = (u64, u64)>) -> bool {
    const ROOT_CGROUP_ID: u64 = 1;
    dir.1 == ROOT_CGROUP_ID || mount_roots.into_iter().any(|root| root == dir)
}

/// The mount points of cgroup2 file systems that show their hierarchy's
/// root (mountinfo's "root" field is `/`), from `/proc/self/mountinfo`
/// text. A bind mount of a child cgroup is not a root and is left out.
pub(crate) fn cgroup2_hierarchy_roots(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let (mount, fs) = line.split_once(" - ")?;
            let mut mount = mount.split(' ');
            let root = mount.nth(3)?;
            let point = mount.next()?;
            let fs_type = fs.split(' ').next()?;
            (fs_type == "cgroup2" && root == "/").then(|| PathBuf::from(unescape_octal(point)))
        })
        .collect()
}

/// Undoes the kernel's octal escapes in mountinfo paths (`\040` for a
/// space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape_octal(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let code = match tail {
            [a, b, c, ..] if first == b'\\' => [a, b, c].iter().try_fold(0u8, |acc, &&d| {
                (b'0'..=b'7')
                    .contains(&d)
                    .then(|| acc.checked_mul(8)?.checked_add(d - b'0'))
                    .flatten()
            }),
            _ => None,
        };
        match code {
            Some(byte) => {
                out.push(byte);
                rest = &tail[3..];
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens the link pinned at `pin` and reads what it is attached to.
fn open_pinned_link(pin: &Path) -> Result<Option<(OwnedFd, CgroupLinkInfo)>> {
    let Some(fd) = sys::open_pin(pin).map_err(|source| Error::PathIo {
        what: "opening the pinned link",
        path: pin.to_owned(),
        source,
    })?
    else {
        return Ok(None);
    };
    let info = sys::link_info(fd.as_fd()).map_err(|source| Error::PathIo {
        what: "reading the pinned link",
        path: pin.to_owned(),
        source,
    })?;
    Ok(Some((fd, info)))
}

/// Attaches `program` to the cgroup as a link and pins the link at `pin`.
fn attach_and_pin(
    program: &mut CgroupSockAddr,
    name: &'static str,
    cgroup: &NodeCgroup,
    pin: &Path,
) -> Result<()> {
    let program_error = |what: &str| {
        let what = format!("{what} {}", cgroup.path.display());
        move |source| Error::Program { what, name, source }
    };
    // A bpf link ignores the mode (the kernel requires 0, which `Single`
    // is): links on one cgroup and hook always run one after another.
    let id = program
        .attach(cgroup.file.as_fd(), CgroupAttachMode::Single)
        .map_err(program_error("attaching to"))?;
    let link = program
        .take_link(id)
        .map_err(program_error("taking the link on"))?;
    // Only a bpf link can be pinned; kernels before 5.7 attach without one.
    let link: FdLink = link
        .try_into()
        .map_err(|source| Error::NotALink { name, source })?;
    // The pin holds the attachment from here on; the descriptor closes
    // when the returned value is dropped.
    link.pin(pin).map_err(|source| Error::LinkPin {
        path: pin.to_owned(),
        source,
    })?;
    Ok(())
}

/// Detaches a pinned link and removes its pin. Detaching first means the
/// hook is gone even if some other process still holds the link open.
fn unpin_and_detach(link: &OwnedFd, pin: &Path) -> Result<()> {
    // A link whose cgroup is already gone detaches as a no-op.
    sys::link_detach(link.as_fd()).map_err(|source| Error::PathIo {
        what: "detaching the pinned link",
        path: pin.to_owned(),
        source,
    })?;
    match fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::PathIo {
            what: "removing the pin",
            path: pin.to_owned(),
            source,
        }),
    }
}

/// Links this call attached; on an early return they are detached again,
/// so a failed attach never leaves the cgroup half balanced.
#[derive(Debug, Default)]
struct CreatedLinks(Vec<PathBuf>);

impl Drop for CreatedLinks {
    fn drop(&mut self) {
        for pin in self.0.drain(..).rev() {
            if let Ok(Some((link, _))) = open_pinned_link(&pin) {
                let _ = unpin_and_detach(&link, &pin);
            }
        }
    }
}

#[cfg(test)]
mod tests;
