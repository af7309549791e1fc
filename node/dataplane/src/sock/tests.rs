use aya_obj::generated::bpf_link_type;

use super::*;

const CONNECT4: u32 = bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32;
const OUR_CGROUP: u64 = 4242;
const OUR_PROG: u32 = 77;

fn cgroup_link(cgroup_id: u64, attach_type: u32, prog_id: u32) -> CgroupLinkInfo {
    CgroupLinkInfo {
        link_type: CGROUP_LINK,
        id: 9,
        prog_id,
        cgroup_id,
        attach_type,
    }
}

#[test]
fn nothing_pinned_attaches() {
    assert_eq!(plan(None, CONNECT4, OUR_CGROUP, OUR_PROG), Step::Attach);
}

#[test]
fn our_link_with_an_older_program_is_updated_in_place() {
    let link = cgroup_link(OUR_CGROUP, CONNECT4, OUR_PROG - 1);
    assert_eq!(
        plan(Some(&link), CONNECT4, OUR_CGROUP, OUR_PROG),
        Step::Update
    );
}

#[test]
fn our_link_with_this_program_is_kept() {
    let link = cgroup_link(OUR_CGROUP, CONNECT4, OUR_PROG);
    assert_eq!(
        plan(Some(&link), CONNECT4, OUR_CGROUP, OUR_PROG),
        Step::Keep
    );
}

#[test]
fn a_link_on_another_or_a_removed_cgroup_is_moved() {
    for other in [0, OUR_CGROUP + 1] {
        let link = cgroup_link(other, CONNECT4, OUR_PROG - 1);
        assert_eq!(
            plan(Some(&link), CONNECT4, OUR_CGROUP, OUR_PROG),
            Step::Replace,
            "cgroup {other}"
        );
    }
}

#[test]
fn a_foreign_object_on_the_pin_path_is_refused() {
    let wrong_hook = cgroup_link(
        OUR_CGROUP,
        bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG as u32,
        OUR_PROG,
    );
    assert!(matches!(
        plan(Some(&wrong_hook), CONNECT4, OUR_CGROUP, OUR_PROG),
        Step::Refuse(_)
    ));
    let not_cgroup = CgroupLinkInfo {
        link_type: bpf_link_type::BPF_LINK_TYPE_XDP as u32,
        ..cgroup_link(OUR_CGROUP, CONNECT4, OUR_PROG)
    };
    assert!(matches!(
        plan(Some(&not_cgroup), CONNECT4, OUR_CGROUP, OUR_PROG),
        Step::Refuse(_)
    ));
}

#[test]
fn hooks_attach_reverse_translations_first() {
    let kinds: Vec<_> = HOOKS.iter().map(|h| h.kernel_attach_type()).collect();
    let position = |t: bpf_attach_type| kinds.iter().position(|&k| k == t as u32);
    let reverse = [
        bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME,
        bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG,
    ];
    let forward = [
        bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG,
    ];
    for r in reverse {
        for f in forward {
            assert!(position(r) < position(f), "{r:?} before {f:?}");
        }
    }
    assert_eq!(SOCK_LB_PROGRAMS.len(), 4);
}

const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 30 0:39 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
55 22 0:38 /kestrel/node-1 /run/node-1/cgroup rw shared:3 master:2 - cgroup2 cgroup2 rw
56 22 0:38 / /mnt/cg\\040two rw - cgroup2 none rw
";

#[test]
fn cgroup2_roots_come_from_mountinfo() {
    assert_eq!(
        cgroup2_hierarchy_roots(MOUNTINFO),
        [
            PathBuf::from("/sys/fs/cgroup/unified"),
            PathBuf::from("/mnt/cg two"),
        ],
        "v1 hierarchies, tmpfs and a bind mount of a child cgroup are not roots"
    );
    assert!(cgroup2_hierarchy_roots("garbage\n\n- -\n").is_empty());
}

#[test]
fn mountinfo_escapes_are_undone() {
    assert_eq!(unescape_octal(r"/a\040b\011c"), "/a b\tc");
    assert_eq!(unescape_octal(r"/back\134slash"), r"/back\slash");
    assert_eq!(unescape_octal(r"/short\04"), r"/short\04");
    assert_eq!(unescape_octal(r"/not\999octal"), r"/not\999octal");
    assert_eq!(unescape_octal(r"/overflow\777"), r"/overflow\777");
}

#[test]
fn a_mount_root_or_cgroup_id_one_is_the_root() {
    let roots = [(38, 1), (50, 7)];
    assert!(is_hierarchy_root((38, 1), roots));
    assert!(
        is_hierarchy_root((50, 7), roots),
        "same directory as a mount root"
    );
    assert!(is_hierarchy_root((99, 1), []), "id 1 is the root cgroup");
    assert!(!is_hierarchy_root((38, 120), roots), "a child cgroup");
    assert!(
        !is_hierarchy_root((39, 7), roots),
        "the same inode on another device"
    );
}

#[test]
fn status_is_active_only_with_one_program_per_hook_on_this_cgroup() {
    let link = SockLbLink {
        id: 1,
        prog_id: 10,
        cgroup_id: OUR_CGROUP,
    };
    let hook = |link: Option<SockLbLink>, attached: Vec<u32>| SockLbHook {
        program: "p",
        link,
        attached_prog_ids: attached,
    };
    let status = |hooks: Vec<SockLbHook>| SockLbStatus {
        cgroup_id: OUR_CGROUP,
        hooks,
    };
    assert!(status(vec![hook(Some(link), vec![10]); 4]).is_active());
    assert!(!status(vec![hook(Some(link), vec![10]); 3]).is_active());
    let mut missing = vec![hook(Some(link), vec![10]); 4];
    missing[2] = hook(None, vec![]);
    assert!(!status(missing).is_active());
    assert!(
        !status(vec![hook(Some(link), vec![10, 11]); 4]).is_active(),
        "a second copy"
    );
    let elsewhere = SockLbLink {
        cgroup_id: OUR_CGROUP + 1,
        ..link
    };
    assert!(!status(vec![hook(Some(elsewhere), vec![10]); 4]).is_active());
}
