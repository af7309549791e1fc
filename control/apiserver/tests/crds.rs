//! CustomResourceDefinitions as kubectl 1.35 users meet them: a CRD with
//! two versions, printer columns, a CEL rule and the status and scale
//! subresources; its objects created, listed, patched every way, scaled,
//! watched and explained; invalid objects refused with upstream's messages;
//! and deleting the CRD deleting its objects.

use std::time::Duration;

use kestrel_apiserver::testing::TestServer;
use kestrel_testkit::eventually;
use kestrel_testkit::kubectl::Kubectl;

const WAIT: Duration = Duration::from_secs(20);

async fn setup() -> (tempfile::TempDir, TestServer, Kubectl) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let k = Kubectl::new(dir.path(), s.kubeconfig.clone());
    (dir, s, k)
}

/// `kubectl wait` for the CRD's Established condition.
async fn established(k: &Kubectl, crd: &str) {
    k.ok(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{crd}"),
        "--timeout=20s",
    ])
    .await;
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.selector
    additionalPrinterColumns:
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Size, type: string, priority: 1, jsonPath: .spec.size}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        description: A Widget is a thing with a color.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [color]
            x-kubernetes-validations:
            - rule: "self.replicas <= self.maxReplicas"
              message: replicas must not exceed maxReplicas
            properties:
              color:
                type: string
                description: The widget's color.
                enum: [red, green, blue]
              replicas:
                type: integer
                minimum: 0
                default: 1
              maxReplicas:
                type: integer
                default: 10
              size:
                x-kubernetes-int-or-string: true
              name:
                type: string
                pattern: '^[a-z]+$'
          status:
            type: object
            properties:
              replicas: {type: integer}
              selector: {type: string}
  - name: v1beta1
    served: true
    storage: false
    deprecated: true
    deprecationWarning: example.com/v1beta1 Widget is deprecated; use example.com/v1 Widget
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const RED: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: red, namespace: default}
spec:
  color: red
  size: 3
"#;

#[tokio::test]
async fn crd_lifecycle_with_kubectl() {
    let (_dir, _s, k) = setup().await;
    let o = k.apply(CRD).await;
    assert!(o.ok, "{}", o.stderr);
    established(&k, "widgets.example.com").await;
    // kubectl asks for strict field validation: unknown fields are refused,
    // and with validation off they are pruned.
    let unknown = format!("{RED}  unknownField: dropped\n");
    let o = k.apply(&unknown).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"Widget in version "v1" cannot be handled as a Widget: strict decoding error: unknown field "spec.unknownField""#),
        "{}",
        o.stderr
    );
    let o = k
        .run(&["apply", "--validate=false", "-f", "-"], Some(&unknown))
        .await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stdout.contains("widget.example.com/red created"),
        "{}",
        o.stdout
    );

    // Pruned, defaulted, shown with the printer columns.
    let spec = k
        .ok(&["get", "widget", "red", "-o", "jsonpath={.spec}"])
        .await;
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("spec json");
    assert_eq!(
        spec,
        serde_json::json!({"color": "red", "size": 3, "replicas": 1, "maxReplicas": 10})
    );
    let table = k.ok(&["get", "wd"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "REPLICAS", "COLOR", "AGE"], "{table}");
    assert!(table.contains("red    1          red"), "{table}");
    let wide = k.ok(&["get", "widgets.example.com", "-o", "wide"]).await;
    assert!(wide.lines().next().unwrap_or("").contains("SIZE"), "{wide}");
    // The CRD's category puts it in `kubectl get all`.
    let all = k.ok(&["get", "all"]).await;
    assert!(all.contains("widget.example.com/red"), "{all}");

    // Every patch type but strategic merge, which custom resources refuse.
    k.ok(&[
        "patch",
        "widget",
        "red",
        "--type=merge",
        "-p",
        r#"{"spec":{"color":"green"}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "widget",
        "red",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
    ])
    .await;
    let err = k
        .refused(&[
            "patch",
            "widget",
            "red",
            "-p",
            r#"{"spec":{"color":"blue"}}"#,
        ])
        .await;
    assert!(
        err.contains("the body of the request was in an unknown format"),
        "{err}"
    );
    // The patches recorded their managers, so taking spec.color over is a
    // conflict with kubectl-patch unless forced, as upstream.
    let applied = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: red, namespace: default}\nspec: {color: blue}\n";
    let o = k
        .run(
            &[
                "apply",
                "--server-side",
                "--field-manager=tester",
                "-f",
                "-",
            ],
            Some(applied),
        )
        .await;
    assert!(
        o.stderr
            .contains(r#"conflict with "kubectl-patch" using example.com/v1: .spec.color"#),
        "{}",
        o.stderr
    );
    let o = k
        .run(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=tester", "-f", "-"],
            Some(
                "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: red, namespace: default}\nspec: {color: blue}\n",
            ),
        )
        .await;
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(
        k.ok(&["get", "widget", "red", "-o", "jsonpath={.spec.color}"])
            .await,
        "blue"
    );

    // The scale subresource, and status written only through /status.
    k.ok(&["scale", "widget", "red", "--replicas=4"]).await;
    assert_eq!(
        k.ok(&["get", "widget", "red", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "4"
    );
    k.ok(&[
        "patch",
        "widget",
        "red",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"selector":"app=red"}}"#,
    ])
    .await;
    let scale = k
        .ok(&[
            "get",
            "--raw",
            "/apis/example.com/v1/namespaces/default/widgets/red/scale",
        ])
        .await;
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("scale json");
    assert_eq!(
        scale["status"],
        serde_json::json!({"replicas": 4, "selector": "app=red"})
    );

    // Invalid objects, with upstream's messages.
    let err = k
        .refused(&[
            "patch",
            "widget",
            "red",
            "--type=merge",
            "-p",
            r#"{"spec":{"color":"pink"}}"#,
        ])
        .await;
    assert!(
        err.contains(
            r#"spec.color: Unsupported value: "pink": supported values: "red", "green", "blue""#
        ),
        "{err}"
    );
    let err = k
        .refused(&[
            "patch",
            "widget",
            "red",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":11}}"#,
        ])
        .await;
    assert!(
        err.contains("replicas must not exceed maxReplicas"),
        "{err}"
    );
    let err = k
        .refused(&[
            "patch",
            "widget",
            "red",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":"many"}}"#,
        ])
        .await;
    assert!(
        err.contains(r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#),
        "{err}"
    );

    // The deprecated version serves the same object, with a warning.
    let o = k
        .run(
            &[
                "get",
                "widgets.v1beta1.example.com",
                "red",
                "-o",
                "jsonpath={.apiVersion}",
            ],
            None,
        )
        .await;
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout, "example.com/v1beta1");
    assert!(
        o.stderr.contains(
            "Warning: example.com/v1beta1 Widget is deprecated; use example.com/v1 Widget"
        ),
        "{}",
        o.stderr
    );

    // kubectl explain reads the published schema.
    let explain = k.ok(&["explain", "widget.spec.color"]).await;
    assert!(explain.contains("The widget's color."), "{explain}");

    // Deleting the CRD deletes its objects and the resource goes.
    k.ok(&["delete", "crd", "widgets.example.com", "--timeout=20s"])
        .await;
    eventually(WAIT, "the widgets resource is gone", || async {
        let o = k
            .run(&["get", "--raw", "/apis/example.com/v1/widgets"], None)
            .await;
        (!o.ok).then_some(())
    })
    .await;
    let o = k.apply(CRD).await;
    assert!(o.ok, "{}", o.stderr);
    established(&k, "widgets.example.com").await;
    let none = k.ok(&["get", "widgets", "-A", "-o", "name"]).await;
    assert_eq!(none.trim(), "", "objects of the deleted CRD came back");
}

#[tokio::test]
async fn crds_with_conflicting_or_invalid_names_are_refused_or_not_accepted() {
    let (_dir, _s, k) = setup().await;
    let err = k
        .run(
            &["apply", "-f", "-"],
            Some(
                r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Everywhere
  names: {plural: gizmos, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {properties: {a: {type: string}}}
"#,
            ),
        )
        .await;
    assert!(!err.ok);
    for want in [
        r#"metadata.name: Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group"#,
        r#"spec.scope: Unsupported value: "Everywhere": supported values: "Cluster", "Namespaced""#,
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value: must not be empty for specified object fields",
    ] {
        assert!(
            err.stderr.contains(want),
            "{want} missing from {}",
            err.stderr
        );
    }

    // Two CRDs asking for the same kind in a group: the older one wins.
    let crd = |plural: &str, short: &str| {
        format!(
            r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.example.com}}
spec:
  group: example.com
  scope: Cluster
  names: {{plural: {plural}, kind: Thing, shortNames: [{short}]}}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"#
        )
    };
    assert!(k.apply(&crd("things", "th")).await.ok);
    established(&k, "things.example.com").await;
    assert!(k.apply(&crd("otherthings", "oth")).await.ok);
    eventually(WAIT, "the conflicting CRD reports its conflict", || async {
        let o = k
            .run(
                &[
                    "get",
                    "crd",
                    "otherthings.example.com",
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="NamesAccepted")].message}"#,
                ],
                None,
            )
            .await;
        (o.stdout == r#""Thing" is already in use"#).then_some(())
    })
    .await;
    let o = k
        .run(&["get", "--raw", "/apis/example.com/v1/otherthings"], None)
        .await;
    assert!(!o.ok, "a CRD whose names are not accepted is not served");
}

fn crd_with_schema(name: &str, schema: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{name}s.bad.example.com")},
        "spec": {
            "group": "bad.example.com",
            "scope": "Namespaced",
            "names": {"plural": format!("{name}s"), "kind": name.to_uppercase()},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema}}],
        },
    })
}

#[tokio::test]
async fn bad_crds_and_objects_get_status_errors_and_the_server_stays_up() {
    use kestrel_apiserver::testing::{request, request_raw};
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let c = s.client().await;
    const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

    // A schema 10,000 levels deep.
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push_str(r#"{"type":"object","properties":{"a":"#);
    }
    deep.push_str(r#"{"type":"string"}"#);
    for _ in 0..10_000 {
        deep.push_str("}}");
    }
    let body = format!(
        r#"{{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{{"name":"deeps.bad.example.com"}},"spec":{{"group":"bad.example.com","scope":"Namespaced","names":{{"plural":"deeps","kind":"Deep"}},"versions":[{{"name":"v1","served":true,"storage":true,"schema":{{"openAPIV3Schema":{deep}}}}}]}}}}"#
    );
    let (code, st) = request_raw(&c, "POST", CRDS, "application/json", body.into_bytes()).await;
    assert!((400..500).contains(&code), "{code} {st}");
    assert_eq!(st["kind"], "Status", "{st}");

    // A CEL rule that does not compile, and one over the cost budget.
    let (code, st) = request(
        &c,
        "POST",
        CRDS,
        Some(crd_with_schema(
            "broken",
            serde_json::json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a ==="}]}),
        )),
    )
    .await;
    assert_eq!(code, 422, "{st}");
    let msg = st["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("spec.versions[0].schema.openAPIV3Schema.x-kubernetes-validations[0].rule")
            && msg.contains("compilation failed"),
        "{msg}"
    );
    let (code, st) = request(
        &c,
        "POST",
        CRDS,
        Some(crd_with_schema(
            "costly",
            serde_json::json!({
                "type": "object",
                "properties": {"l": {"type": "array", "items": {"type": "string"}}},
                "x-kubernetes-validations": [{"rule": "self.l.all(a, self.l.all(b, self.l.all(c, a == b || b == c)))"}],
            }),
        )),
    )
    .await;
    assert_eq!(code, 422, "{st}");
    let msg = st["message"].as_str().unwrap_or("");
    assert!(msg.contains("estimated rule cost exceeds budget"), "{msg}");

    // An object over the 3 MiB request limit.
    let (code, st) = request(
        &c,
        "POST",
        CRDS,
        Some(crd_with_schema(
            "blob",
            serde_json::json!({"type": "object", "properties": {"data": {"type": "string"}}}),
        )),
    )
    .await;
    assert_eq!(code, 201, "{st}");
    let path = "/apis/bad.example.com/v1/namespaces/default/blobs";
    let big = "x".repeat(3 * 1024 * 1024 + 1);
    let (code, st) = request(
        &c,
        "POST",
        path,
        Some(serde_json::json!({"apiVersion": "bad.example.com/v1", "kind": "BLOB", "metadata": {"name": "big"}, "data": big})),
    )
    .await;
    assert_eq!(code, 413, "{st}");

    // The server is up and lost nothing: the good CRD serves.
    let (code, st) = request(
        &c,
        "POST",
        path,
        Some(serde_json::json!({"apiVersion": "bad.example.com/v1", "kind": "BLOB", "metadata": {"name": "small"}, "data": "ok"})),
    )
    .await;
    assert_eq!(code, 201, "{st}");
    let (code, list) = request(&c, "GET", CRDS, None).await;
    assert_eq!(code, 200);
    let names: Vec<&str> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["blobs.bad.example.com"]);
}

/// A CRD of realistic size (`tests/fixtures/backends.crd.yaml`) applies,
/// and its objects are defaulted and validated through every level.
#[tokio::test]
async fn a_realistic_crd_applies_and_validates() {
    let (_dir, _s, k) = setup().await;
    let o = k.apply(include_str!("fixtures/backends.crd.yaml")).await;
    assert!(o.ok, "{}", o.stderr);
    established(&k, "backendpools.net.kestrel.dev").await;
    let pool = r#"
apiVersion: net.kestrel.dev/v1alpha1
kind: BackendPool
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  frontend: {port: http, sourceRanges: [10.0.0.0/8]}
  backends:
  - {name: a, address: 10.1.0.1, port: 8080}
  - {name: b, address: 10.1.0.2, port: web, labels: {zone: z1}}
  healthCheck: {protocol: HTTP, path: /healthz, headers: [{name: Host, value: web}]}
  extensions: {vendor: {anything: [1, 2, {deep: true}]}}
  template: {apiVersion: v1, kind: ConfigMap, metadata: {name: t}, data: {k: v}}
"#;
    let o = k.apply(pool).await;
    assert!(o.ok, "{}", o.stderr);
    let spec = k.ok(&["get", "bp", "web", "-o", "jsonpath={.spec}"]).await;
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("json");
    assert_eq!(spec["algorithm"], "Maglev");
    assert_eq!(spec["frontend"]["protocol"], "TCP");
    assert_eq!(spec["backends"][1]["weight"], 100);
    assert_eq!(spec["healthCheck"]["intervalSeconds"], 10);
    assert_eq!(spec["extensions"]["vendor"]["anything"][2]["deep"], true);
    assert_eq!(spec["template"]["data"]["k"], "v");
    let bad = pool
        .replace("10.0.0.0/8", "not-a-cidr")
        .replace(
            "protocol: HTTP, path: /healthz",
            "protocol: QUIC, path: healthz",
        )
        .replace("{name: b, address: 10.1.0.2", "{name: a, address: 10.1.0.2");
    let o = k.apply(&bad).await;
    assert!(!o.ok);
    for want in [
        r#"spec.healthCheck.protocol: Unsupported value: "QUIC""#,
        r#"spec.healthCheck.path: Invalid value: "healthz": spec.healthCheck.path in body should match '^/'"#,
        r#"spec.frontend.sourceRanges[0]: Invalid value: "not-a-cidr": spec.frontend.sourceRanges[0] in body must be of type cidr: "not-a-cidr""#,
        "spec.backends[1]: Duplicate value: ",
        // CEL rules wait until the schema's own checks pass, as upstream.
        "some validation rules were not checked because the object was invalid",
    ] {
        assert!(o.stderr.contains(want), "{want} missing from {}", o.stderr);
    }
    let o = k
        .apply(&pool.replace("replicas: 3", "replicas: 3\n  minReplicas: 5"))
        .await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("spec: Invalid value: ")
            && o.stderr.contains("replicas must be at least minReplicas"),
        "{}",
        o.stderr
    );
    let o = k
        .apply(&pool.replace(
            "frontend: {port: http,",
            "tls: {secretName: s}\n  frontend: {port: http, protocol: UDP,",
        ))
        .await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("tls needs protocol TCP, not UDP"),
        "{}",
        o.stderr
    );
    let table = k.ok(&["get", "backendpools"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ALGORITHM", "REPLICAS", "READY", "AGE"],
        "{table}"
    );
}

/// Server-side apply on a custom resource merges `x-kubernetes-list-type:
/// map` lists by all their keys, a key left out having its schema default:
/// two managers own one element each, a third applying an equal value
/// co-owns it, and a different value is a conflict naming the element.
#[tokio::test]
async fn apply_merges_custom_lists_by_their_map_keys() {
    let (_dir, _s, k) = setup().await;
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: routes.lists.example.com}
spec:
  group: lists.example.com
  scope: Namespaced
  names: {plural: routes, kind: Route}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              backends:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [host, port]
                items:
                  type: object
                  required: [host]
                  properties:
                    host: {type: string}
                    port: {type: integer, default: 80}
                    weight: {type: integer}
"#;
    assert!(k.apply(crd).await.ok);
    established(&k, "routes.lists.example.com").await;
    let route = |backend: &str| {
        format!(
            "apiVersion: lists.example.com/v1\nkind: Route\nmetadata: {{name: r, namespace: default}}\nspec:\n  backends:\n  - {backend}\n"
        )
    };
    let apply = |manager: &'static str, body: String| {
        let k = &k;
        async move {
            k.run(
                &[
                    "apply",
                    "--server-side",
                    &format!("--field-manager={manager}"),
                    "-f",
                    "-",
                ],
                Some(&body),
            )
            .await
        }
    };
    assert!(apply("team-a", route("{host: a, weight: 1}")).await.ok);
    assert!(
        apply("team-b", route("{host: b, port: 8080, weight: 2}"))
            .await
            .ok
    );
    assert_eq!(
        k.ok(&["get", "route", "r", "-o", "jsonpath={.spec.backends}"])
            .await,
        r#"[{"host":"a","port":80,"weight":1},{"host":"b","port":8080,"weight":2}]"#
    );
    let managed = k
        .ok(&["get", "route", "r", "-o", "json", "--show-managed-fields"])
        .await;
    assert!(
        managed.contains(r#"k:{\"host\":\"a\",\"port\":80}"#),
        "{managed}"
    );
    // The same value: co-owned, no conflict.
    assert!(apply("team-c", route("{host: a, weight: 1}")).await.ok);
    // A different value: a conflict with the element's owners.
    let o = apply("team-c", route("{host: a, weight: 5}")).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(
            r#"conflict with "team-a" using lists.example.com/v1: .spec.backends[host="a",port=80].weight"#
        ),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("].host"), "{}", o.stderr);
}
