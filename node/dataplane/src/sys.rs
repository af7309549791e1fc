//! The few `bpf(2)` commands that aya 0.14 does not expose:
//! - for cgroup links (the socket hooks): open a pinned link, read which
//!   cgroup it is attached to, swap its program in place, force-detach it,
//!   and list the programs attached to a cgroup;
//! - for maps (the service sync): read, write and delete many entries in
//!   one call (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`,
//!   `BPF_MAP_DELETE_BATCH`).
//!
//! Each is one syscall on a zeroed `bpf_attr` (the kernel rejects non-zero
//! bytes past the fields a command reads, and writes back into the full
//! union for some commands, so the whole union is always passed).
#![expect(
    unsafe_code,
    reason = "raw bpf(2) commands on a C union; this module is the only place they happen"
)]

use std::{
    ffi::CString,
    io,
    mem::{size_of, size_of_val},
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info, bpf_link_type};

/// What the kernel reports about a cgroup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CgroupLinkInfo {
    /// `bpf_link_type` of the link; [`CGROUP_LINK`] for cgroup links.
    pub(crate) link_type: u32,
    /// The link's id.
    pub(crate) id: u32,
    /// The id of the program the link runs.
    pub(crate) prog_id: u32,
    /// The cgroup it is attached to (its inode number on cgroup2), or 0
    /// once that cgroup has been released.
    pub(crate) cgroup_id: u64,
    /// `bpf_attach_type` of the attachment.
    pub(crate) attach_type: u32,
}

/// `BPF_LINK_TYPE_CGROUP`.
pub(crate) const CGROUP_LINK: u32 = bpf_link_type::BPF_LINK_TYPE_CGROUP as u32;

/// One `bpf(2)` call; returns the syscall's non-negative result.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, exclusively borrowed `bpf_attr` of the
    // size passed; every pointer stored in it by the callers points to a
    // live buffer of the length they also store, for the whole call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An all-zero `bpf_attr`.
fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a C union of integer fields; all-zero is valid
    // and is what the kernel expects in every field a command does not use.
    unsafe { std::mem::zeroed() }
}

/// `BPF_OBJ_GET`: opens the object pinned at `path`. `Ok(None)` if nothing
/// is pinned there.
pub(crate) fn open_pin(path: &Path) -> io::Result<Option<OwnedFd>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    match bpf(bpf_cmd::BPF_OBJ_GET, &mut attr) {
        Ok(fd) => {
            let fd =
                i32::try_from(fd).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing
            // else owns.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link.
pub(crate) fn link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    // SAFETY: `bpf_link_info` is a C struct of integers and unions of
    // integers; all-zero is valid, and the kernel requires it as input.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    // The pointer and length describe `info`, which outlives the call.
    attr.info.bpf_fd = fd_u32(link);
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    attr.info.info_len = size_of_val(&info) as u32;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let (cgroup_id, attach_type) = if info.type_ == CGROUP_LINK {
        // SAFETY: the kernel filled the union's cgroup member, as the link
        // type says.
        let cgroup = unsafe { info.__bindgen_anon_1.cgroup };
        (cgroup.cgroup_id, cgroup.attach_type)
    } else {
        (0, 0)
    };
    Ok(CgroupLinkInfo {
        link_type: info.type_,
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id,
        attach_type,
    })
}

/// `BPF_LINK_UPDATE`: makes `link` run `prog` from now on. The swap is one
/// pointer exchange in the kernel: every hook invocation runs either the
/// old program or the new one, and the attachment is never absent.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_update.link_fd = fd_u32(link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = fd_u32(prog);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// `BPF_LINK_DETACH`: detaches `link` even if other descriptors or pins
/// still refer to it.
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed_attr();
    attr.link_detach.link_fd = fd_u32(link);
    bpf(bpf_cmd::BPF_LINK_DETACH, &mut attr).map(drop)
}

/// The most programs [`cgroup_prog_ids`] reports for one attach type.
const MAX_QUERIED_PROGS: usize = 64;

/// `BPF_PROG_QUERY`: the ids of the programs attached directly to
/// `cgroup` (not inherited from its ancestors) for `attach_type`.
pub(crate) fn cgroup_prog_ids(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; MAX_QUERIED_PROGS];
    let mut attr = zeroed_attr();
    // The pointer and count describe `ids`, which outlives the call.
    attr.query.__bindgen_anon_1.target_fd = fd_u32(cgroup);
    attr.query.attach_type = attach_type;
    attr.query.prog_ids = ids.as_mut_ptr() as u64;
    attr.query.__bindgen_anon_2.prog_cnt = MAX_QUERIED_PROGS as u32;
    bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr)?;
    // SAFETY: the kernel wrote the number of ids back into the same member.
    let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
    Ok(ids[..count.min(MAX_QUERIED_PROGS)].to_vec())
}

/// A descriptor as the `u32` the `bpf_attr` fields hold.
fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // A live descriptor is never negative, so the cast keeps its value.
    fd.as_raw_fd() as u32
}

/// A batch the kernel stopped: how many entries it applied, in order, and
/// why the next one failed.
#[derive(Debug)]
pub(crate) struct BatchStopped {
    pub(crate) done: usize,
    pub(crate) error: io::Error,
}

/// At most this many entries per call, so one call holds the map's bucket
/// locks and copies from user memory for a bounded time.
const BATCH: usize = 16_384;

/// `BPF_MAP_UPDATE_BATCH`: writes `keys[i]` → `values[i]` in order (create
/// or overwrite). `K` and `V` must be the map's plain `repr(C)` key and
/// value types, exactly `key_size` and `value_size` bytes long.
pub(crate) fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchStopped> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let mut attr = zeroed_attr();
        // The pointers and count describe `keys` and `values`, which
        // outlive the call; the kernel only reads through them.
        attr.batch.map_fd = fd_u32(map);
        attr.batch.keys = keys.as_ptr() as u64;
        attr.batch.values = values.as_ptr() as u64;
        attr.batch.count = keys.len() as u32;
        attr.batch.elem_flags = 0;
        if let Err(error) = bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) {
            // SAFETY: the kernel wrote back how many it applied.
            let applied = unsafe { attr.batch.count } as usize;
            return Err(BatchStopped {
                done: done + applied.min(keys.len()),
                error,
            });
        }
        done += keys.len();
    }
    Ok(())
}

/// `BPF_MAP_DELETE_BATCH`: deletes `keys` in order. A key that is not in
/// the map is skipped rather than an error.
pub(crate) fn map_delete_batch<K: aya::Pod>(
    map: BorrowedFd<'_>,
    keys: &[K],
) -> Result<(), BatchStopped> {
    let mut done = 0;
    while done < keys.len() {
        let chunk = &keys[done..keys.len().min(done + BATCH)];
        let mut attr = zeroed_attr();
        // The pointer and count describe `chunk`, which outlives the call.
        attr.batch.map_fd = fd_u32(map);
        attr.batch.keys = chunk.as_ptr() as u64;
        attr.batch.count = chunk.len() as u32;
        match bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(_) => done += chunk.len(),
            Err(error) => {
                // SAFETY: the kernel wrote back how many it deleted.
                let applied = (unsafe { attr.batch.count } as usize).min(chunk.len());
                done += applied;
                if error.raw_os_error() == Some(libc::ENOENT) && applied < chunk.len() {
                    // Already gone: as good as deleted.
                    done += 1;
                } else {
                    return Err(BatchStopped { done, error });
                }
            }
        }
    }
    Ok(())
}

/// `BPF_MAP_LOOKUP_BATCH` until the end: every entry of a hash map, in
/// bucket order. `K` and `V` must be the map's plain `repr(C)` key and
/// value types (every bit pattern valid, as [`aya::Pod`] promises),
/// exactly `key_size` and `value_size` bytes long; not for per-CPU maps.
pub(crate) fn map_lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
) -> io::Result<Vec<(K, V)>> {
    // SAFETY: `aya::Pod` types are plain data; all-zero is a valid value.
    let (zero_k, zero_v): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut chunk = 4096;
    let mut keys = vec![zero_k; chunk];
    let mut values = vec![zero_v; chunk];
    let mut out = Vec::new();
    // The position to go on from (a hash map's is its next bucket, a u32;
    // room for more costs nothing); none on the first call.
    let mut position = [0u64; 2];
    let mut next = [0u64; 2];
    let mut started = false;
    loop {
        let mut attr = zeroed_attr();
        // The pointers describe `position`, `next`, `keys` and `values`,
        // which outlive the call, with `count` entries of room in each.
        attr.batch.map_fd = fd_u32(map);
        attr.batch.in_batch = if started { position.as_ptr() as u64 } else { 0 };
        attr.batch.out_batch = next.as_mut_ptr() as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        attr.batch.count = chunk as u32;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote back how many entries it copied.
        let copied = (unsafe { attr.batch.count } as usize).min(chunk);
        let end = match result {
            Ok(_) => false,
            // The end: what was copied is the last of it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more than `chunk` entries: retry it with room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && copied == 0 => {
                chunk *= 2;
                keys.resize(chunk, zero_k);
                values.resize(chunk, zero_v);
                continue;
            }
            Err(e) => return Err(e),
        };
        out.extend(
            keys[..copied]
                .iter()
                .copied()
                .zip(values[..copied].iter().copied()),
        );
        if end {
            return Ok(out);
        }
        position = next;
        started = true;
    }
}
