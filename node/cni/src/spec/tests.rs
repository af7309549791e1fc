use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"kestrel","type":"kestrel-cni",
    "podCIDR":"10.42.1.0/24","dataDir":"/var/lib/kestrel/cni","agentSocket":"/run/kestrel/cni.sock"}"#;

#[test]
fn parses_the_agents_configuration() {
    let conf = NetConf::parse(CONF.as_bytes()).expect("parse");
    assert_eq!(
        conf.pod_cidr,
        "10.42.1.0/24".parse::<Ipv4Net>().expect("cidr")
    );
    assert_eq!(conf.mtu, 1500);
    assert_eq!(
        conf.agent_socket.as_deref(),
        Some(std::path::Path::new("/run/kestrel/cni.sock"))
    );
}

#[test]
fn bad_configurations_get_the_right_cni_codes() {
    let decode = NetConf::parse(b"{not json").expect_err("garbage");
    assert_eq!(decode.code(), 6);
    let version =
        NetConf::parse(CONF.replace("1.0.0", "0.1.0").as_bytes()).expect_err("old version");
    assert_eq!(version.code(), 1);
    let cidr = NetConf::parse(CONF.replace("10.42.1.0/24", "10.42.1.0/99").as_bytes())
        .expect_err("bad cidr");
    assert_eq!(cidr.code(), 6);
    let relative = NetConf::parse(CONF.replace("/var/lib/kestrel/cni", "cni").as_bytes())
        .expect_err("relative");
    assert_eq!(relative.code(), 7);
    let mtu = NetConf::parse(CONF.replace("\"type\"", "\"mtu\":10,\"type\"").as_bytes())
        .expect_err("mtu");
    assert_eq!(mtu.code(), 7);
}

#[test]
fn reads_the_environment() {
    let inv = Invocation::from_env(env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]))
    .expect("env");
    assert_eq!(inv.command, Command::Add);
    assert_eq!(inv.arg("K8S_POD_NAME"), "web-0");
    assert_eq!(inv.arg("MISSING"), "");
}

#[test]
fn del_tolerates_a_missing_namespace_but_add_does_not() {
    let base = [("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")];
    let del = Invocation::from_env(env(&[base[0], base[1], ("CNI_COMMAND", "DEL")])).expect("del");
    assert_eq!(del.netns, None);
    let add =
        Invocation::from_env(env(&[base[0], base[1], ("CNI_COMMAND", "ADD")])).expect_err("add");
    assert_eq!(add.code(), 4);
}

#[test]
fn bad_environments_are_refused() {
    for pairs in [
        vec![],
        vec![("CNI_COMMAND", "FROB")],
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "a-very-long-interface"),
        ],
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "novalue"),
        ],
    ] {
        let err = Invocation::from_env(env(&pairs)).expect_err("refused");
        assert_eq!(err.code(), 4, "{pairs:?}: {err}");
    }
}

#[test]
fn error_documents_carry_code_and_causes() {
    let err = NetConf::parse(b"[").expect_err("garbage");
    let doc = ErrorDoc::from_error(&err);
    assert_eq!(doc.code, 6);
    assert!(doc.msg.starts_with("decoding the network configuration"));
    assert!(!doc.details.is_empty());
}
