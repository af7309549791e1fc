use serde_json::json;

use super::*;

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
    strategic_merge(&mut r, &json!({"data": {"$patch": "replace", "b": "2"}})).expect("replace");
    assert_eq!(r, json!({"data": {"b": "2"}}));
    let mut d = json!({"metadata": {"finalizers": ["a", "b"]}});
    strategic_merge(
        &mut d,
        &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
    )
    .expect("del");
    assert_eq!(d, json!({"metadata": {"finalizers": ["b"]}}));
}
