use super::*;
use crate::registry;

fn def(group: &str, kind: &str) -> &'static ResourceDef {
    registry::RESOURCES
        .iter()
        .find(|d| d.group == group && d.kind == kind)
        .expect("kind")
}

fn at<'a>(t: &'a ListTree, path: &[&str]) -> Option<&'a ListSemantics> {
    path.iter().try_fold(t, |n, k| n.child(k))?.list()
}

#[test]
fn pod_lists_carry_upstreams_keys() {
    let t = def("", "Pod").lists();
    let c = at(t, &["spec", "containers"]).expect("containers");
    assert_eq!(c.patch_merge_key(), Some("name"));
    assert_eq!(c.list_type, ListType::Map(vec!["name".into()]));
    let ports = at(t, &["spec", "containers", "ports"]).expect("ports");
    assert_eq!(ports.patch_merge_key(), Some("containerPort"));
    assert_eq!(
        ports.map_keys(),
        Some(&["containerPort".to_owned(), "protocol".to_owned()][..])
    );
    assert_eq!(
        at(t, &["spec", "initContainers", "env"]).and_then(ListSemantics::patch_merge_key),
        Some("name")
    );
    assert_eq!(
        at(t, &["metadata", "ownerReferences"]).and_then(ListSemantics::patch_merge_key),
        Some("uid")
    );
    let fin = at(t, &["metadata", "finalizers"]).expect("finalizers");
    assert_eq!(fin.list_type, ListType::Set);
    assert!(fin.merge && fin.patch_merge_key().is_none());
    assert_eq!(
        at(t, &["status", "conditions"]).and_then(ListSemantics::patch_merge_key),
        Some("type")
    );
    // Declared nothing: atomic.
    assert!(at(t, &["spec", "tolerations"]).is_none());
    assert!(at(t, &["spec", "containers", "args"]).is_none());
}

#[test]
fn one_field_name_two_meanings() {
    // `ports` of a Service merge by port; of a container by containerPort.
    let svc = def("", "Service").lists();
    assert_eq!(
        at(svc, &["spec", "ports"]).and_then(ListSemantics::patch_merge_key),
        Some("port")
    );
    // A Deployment reaches the pod's lists through its template.
    let d = def("apps", "Deployment").lists();
    assert_eq!(
        at(d, &["spec", "template", "spec", "containers", "ports"])
            .and_then(ListSemantics::patch_merge_key),
        Some("containerPort")
    );
    assert_eq!(
        at(d, &["status", "conditions"]).and_then(ListSemantics::patch_merge_key),
        Some("type")
    );
}

#[test]
fn annotate_writes_the_extensions_into_openapi() {
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    let _ = g.subschema_for::<k8s_openapi::api::core::v1::Pod>();
    let mut defs = g.take_definitions(true);
    annotate(&mut defs);
    let c = &defs["io.k8s.api.core.v1.Container"]["properties"]["ports"];
    assert_eq!(c["x-kubernetes-patch-merge-key"], "containerPort");
    assert_eq!(c["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(c["x-kubernetes-list-type"], "map");
    assert_eq!(
        c["x-kubernetes-list-map-keys"],
        json!(["containerPort", "protocol"])
    );
}

#[test]
fn every_table_entry_names_a_list_that_exists() {
    // A typo in the table would silently leave a list atomic.
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    for d in registry::RESOURCES {
        if let Types::Typed(ops) = d.types {
            let _ = (ops.json_schema)(&mut g);
        }
    }
    let defs = g.take_definitions(true);
    for (d, p, _) in BUILTIN {
        let prop = defs
            .get(*d)
            .and_then(|s| s.pointer(&format!("/properties/{p}")));
        assert_eq!(
            prop.and_then(|p| p.get("type")).and_then(Value::as_str),
            Some("array"),
            "{d}.{p}"
        );
    }
}

#[test]
fn custom_resources_use_their_schema_list_types() {
    let schema = Structural::parse(
        &json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "backends": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name", "port"],
                "items": {"type": "object", "required": ["name", "port"], "properties": {
                    "name": {"type": "string"}, "port": {"type": "integer"},
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}},
            "plain": {"type": "array", "items": {"type": "string"}}}}}}),
        "spec.validation.openAPIV3Schema",
    )
    .expect("structural");
    let t = ListTree::from_structural(&schema);
    let b = at(&t, &["spec", "backends"]).expect("backends");
    assert_eq!(
        b.map_keys(),
        Some(&["name".to_owned(), "port".to_owned()][..])
    );
    // Custom resources have no strategic merge patch keys.
    assert_eq!(b.patch_merge_key(), None);
    assert_eq!(
        at(&t, &["spec", "backends", "tags"]).map(|l| &l.list_type),
        Some(&ListType::Set)
    );
    assert!(at(&t, &["spec", "plain"]).is_none());
    // ObjectMeta's lists are the same as for built-in kinds.
    assert_eq!(
        at(&t, &["metadata", "ownerReferences"]).and_then(ListSemantics::map_keys),
        Some(&["uid".to_owned()][..])
    );
}

#[test]
fn key_defaults_fill_missing_keys() {
    let t = def("", "Service").lists();
    let v = json!({"spec": {"ports": [{"port": 53}, {"port": 53, "protocol": "UDP"}]}});
    assert_eq!(
        t.with_key_defaults(&v),
        json!({"spec": {"ports": [{"port": 53, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}})
    );
    let pod = def("", "Pod").lists();
    let p = json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}});
    assert_eq!(
        pod.with_key_defaults(&p)["spec"]["containers"][0]["ports"][0]["protocol"],
        "TCP"
    );
}
