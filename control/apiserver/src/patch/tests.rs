use serde_json::json;

use super::*;

fn lists(group: &str, kind: &str) -> &'static ListTree {
    kestrel_api::registry::RESOURCES
        .iter()
        .find(|d| d.group == group && d.kind == kind)
        .expect("kind")
        .lists()
}

#[test]
fn merge_patch_rfc7386() {
    let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
    merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
    assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
}

#[test]
fn json_patch_ops() {
    let mut t = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"list": [1, 2]}});
    json_patch(
        &mut t,
        &json!([
            {"op": "add", "path": "/metadata/labels/b", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "x"},
            {"op": "add", "path": "/spec/list/-", "value": 3},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "copy", "from": "/metadata/labels/b", "path": "/metadata/labels/c"},
            {"op": "move", "from": "/metadata/labels/c", "path": "/metadata/labels/d~1e"},
            {"op": "test", "path": "/metadata/labels/a", "value": "x"}
        ]),
    )
    .expect("patch");
    assert_eq!(
        t,
        json!({"metadata": {"labels": {"a": "x", "b": "2", "d/e": "2"}}, "spec": {"list": [2, 3]}})
    );
    let before = t.clone();
    let r = json_patch(
        &mut t,
        &json!([{"op": "remove", "path": "/metadata/labels/a"}, {"op": "test", "path": "/x", "value": 1}]),
    );
    assert!(r.is_err());
    assert_eq!(t, before, "failed patch must not apply partially");
    assert!(json_patch(&mut t, &json!({"op": "add"})).is_err());
    assert!(json_patch(&mut t, &json!([{"op": "frob", "path": "/a"}])).is_err());
}

#[test]
fn strategic_merges_containers_by_name() {
    let mut t = json!({"spec": {"containers": [
        {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
        {"name": "b", "image": "b:1"}
    ]}});
    strategic_merge(
        &mut t,
        &json!({"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
            {"name": "c", "image": "c:1"},
            {"name": "b", "$patch": "delete"}
        ]}}),
        lists("", "Pod"),
    )
    .expect("smp");
    assert_eq!(
        t,
        json!({"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "c", "image": "c:1"}
        ]}})
    );
}

#[test]
fn strategic_directives() {
    let mut t = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
        "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}], "args": ["a", "b"],
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
    strategic_merge(
        &mut t,
        &json!({"metadata": {"finalizers": ["b"], "labels": {"y": null}},
            "spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}],
                     "ports": [{"port": 80, "name": "web"}],
                     "args": ["c"],
                     "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        lists("", "Service"),
    )
    .expect("smp");
    assert_eq!(t["metadata"]["finalizers"], json!(["a", "b"]));
    assert_eq!(t["metadata"]["labels"], json!({"x": "1"}));
    assert_eq!(
        t["spec"]["ports"],
        json!([{"port": 443}, {"port": 80, "name": "web"}])
    );
    assert_eq!(t["spec"]["args"], json!(["c"]));
    assert_eq!(t["spec"]["strategy"], json!({"type": "Recreate"}));

    let mut r = json!({"data": {"a": "1"}});
    strategic_merge(
        &mut r,
        &json!({"data": {"$patch": "replace", "b": "2"}}),
        lists("", "ConfigMap"),
    )
    .expect("replace");
    assert_eq!(r, json!({"data": {"b": "2"}}));
    let mut d = json!({"metadata": {"finalizers": ["a", "b"]}});
    strategic_merge(
        &mut d,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        lists("", "ConfigMap"),
    )
    .expect("del");
    assert_eq!(d, json!({"metadata": {"finalizers": ["b"]}}));
}

#[test]
fn merge_keys_follow_the_schema_not_the_field_name() {
    // The same `ports` name: a container's merge by containerPort, reached
    // through a Deployment's template; a NetworkPolicy's are atomic.
    let mut d = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]}}}});
    strategic_merge(
        &mut d,
        &json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "ports": [{"containerPort": 81}]}]}}}}),
        lists("apps", "Deployment"),
    )
    .expect("smp");
    assert_eq!(
        d.pointer("/spec/template/spec/containers/0/ports"),
        Some(&json!([{"containerPort": 80, "name": "http"}, {"containerPort": 81}]))
    );
    let mut np = json!({"spec": {"ingress": [{"ports": [{"port": 80}]}]}});
    strategic_merge(
        &mut np,
        &json!({"spec": {"ingress": [{"ports": [{"port": 81}]}]}}),
        lists("networking.k8s.io", "NetworkPolicy"),
    )
    .expect("smp");
    assert_eq!(
        np,
        json!({"spec": {"ingress": [{"ports": [{"port": 81}]}]}})
    );
    // A missing merge key is refused, with upstream's message.
    let err = strategic_merge(
        &mut json!({"spec": {"containers": []}}),
        &json!({"spec": {"containers": [{"image": "x"}]}}),
        lists("", "Pod"),
    )
    .expect_err("no name");
    assert!(
        err.to_string()
            .contains("does not contain declared merge key: name"),
        "{err}"
    );
}

#[test]
fn apply_merges_by_all_list_map_keys_with_their_defaults() {
    // 53/UDP and 53/TCP are two ports; an applied port without a protocol
    // is the TCP one.
    let mut svc = json!({"spec": {"ports": [
        {"port": 53, "protocol": "UDP", "name": "dns"},
        {"port": 53, "protocol": "TCP", "name": "dns-tcp"}]}});
    apply_merge(
        &mut svc,
        &json!({"spec": {"ports": [{"port": 53, "targetPort": 5353}]}}),
        lists("", "Service"),
    )
    .expect("apply");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"port": 53, "protocol": "UDP", "name": "dns"},
               {"port": 53, "protocol": "TCP", "name": "dns-tcp", "targetPort": 5353}])
    );
    // Finalizers are a set.
    let mut m = json!({"metadata": {"finalizers": ["a"]}});
    apply_merge(
        &mut m,
        &json!({"metadata": {"finalizers": ["b", "a"]}}),
        lists("", "ConfigMap"),
    )
    .expect("apply");
    assert_eq!(m["metadata"]["finalizers"], json!(["a", "b"]));
}

#[test]
fn custom_resources_apply_by_their_schemas_list_map_keys() {
    let schema = kestrel_api::schema::Structural::parse(
        &json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "routes": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["host"],
                "items": {"type": "object", "required": ["host"], "properties": {
                    "host": {"type": "string"}, "weight": {"type": "integer"}}}},
            "args": {"type": "array", "items": {"type": "string"}}}}}}),
        "spec.validation.openAPIV3Schema",
    )
    .expect("structural");
    let t = ListTree::from_structural(&schema);
    let mut cr = json!({"spec": {"routes": [{"host": "a", "weight": 1}], "args": ["x"]}});
    apply_merge(
        &mut cr,
        &json!({"spec": {"routes": [{"host": "b", "weight": 2}], "args": ["y"]}}),
        &t,
    )
    .expect("apply");
    assert_eq!(
        cr,
        json!({"spec": {"routes": [{"host": "a", "weight": 1}, {"host": "b", "weight": 2}], "args": ["y"]}})
    );
}
