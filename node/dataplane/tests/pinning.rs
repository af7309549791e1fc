//! The maps are pinned under the node's bpffs directory: a second load over
//! the same directory (a restarted agent) sees what the first one wrote.

use aya::maps::HashMap;
use kestrel_dataplane::{Dataplane, LoadOptions};
use kestrel_ebpf_common::{lb::Backend, map_names};
use kestrel_testkit::{BpfFs, privileged_test_can_run};

#[test]
fn a_second_load_adopts_the_pinned_maps() {
    let built = (
        kestrel_dataplane::object_is_built(),
        "the eBPF object was not built (AYA_BUILD_SKIP=1)",
    );
    if !privileged_test_can_run("a_second_load_adopts_the_pinned_maps", &[built]) {
        return;
    }
    let bpffs = BpfFs::new();
    let options = LoadOptions::new(bpffs.path());
    let backend = Backend {
        addr_be: u32::from(std::net::Ipv4Addr::new(10, 42, 1, 7)).to_be(),
        port_be: 8080u16.to_be(),
        proto: 6,
        flags: 0,
    };
    {
        let mut first = Dataplane::load(&options).expect("first load");
        let mut backends: HashMap<_, u32, Backend> = HashMap::try_from(
            first
                .ebpf_mut()
                .map_mut(map_names::BACKENDS)
                .expect("BACKENDS map"),
        )
        .expect("typing BACKENDS");
        backends.insert(7, backend, 0).expect("writing a backend");
    }
    assert!(
        bpffs.path().join(map_names::BACKENDS).exists(),
        "BACKENDS is pinned by name"
    );
    let mut second = Dataplane::load(&options).expect("second load");
    let backends: HashMap<_, u32, Backend> = HashMap::try_from(
        second
            .ebpf_mut()
            .map_mut(map_names::BACKENDS)
            .expect("BACKENDS map"),
    )
    .expect("typing BACKENDS");
    assert_eq!(backends.get(&7, 0).expect("the backend survived"), backend);
}
