//! Admission plugins as kubectl users meet them: PodSecurity's enforce and
//! warn labels, LimitRanger's defaults and bounds.

use kestrel_apiserver::testing::TestServer;
use kestrel_testkit::kubectl::Kubectl;

async fn setup() -> (tempfile::TempDir, TestServer, Kubectl) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let k = Kubectl::new(dir.path(), s.kubeconfig.clone());
    (dir, s, k)
}

const PRIVILEGED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: root, namespace: locked}
spec:
  containers:
  - name: c
    image: busybox
    securityContext: {privileged: true}
"#;

const HARDENED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: fine, namespace: locked}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: c
    image: busybox
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
"#;

#[tokio::test]
async fn pod_security_enforces_and_warns() {
    let (_dir, s, k) = setup().await;
    k.ok(&["create", "namespace", "locked"]).await;
    k.ok(&[
        "label",
        "namespace",
        "locked",
        "pod-security.kubernetes.io/enforce=restricted",
    ])
    .await;
    let o = k.apply(PRIVILEGED).await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(
        o.stderr.contains(r#"pods "root" is forbidden: violates PodSecurity "restricted:latest": privileged (container "c" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{}",
        o.stderr
    );
    assert!(
        !k.run(&["get", "pod", "root", "-n", "locked"], None)
            .await
            .ok,
        "nothing stored"
    );
    let o = k.apply(HARDENED).await;
    assert!(o.ok, "{}", o.stderr);
    // A Deployment whose pods would be refused is stored, with a warning.
    let o = k
        .apply(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: locked}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostNetwork: true
      containers: [{name: web, image: busybox}]
"#,
        )
        .await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": host namespaces (hostNetwork=true)"#),
        "{}",
        o.stderr
    );
    // warn alone: allowed, with the warning.
    k.ok(&["create", "namespace", "loose"]).await;
    k.ok(&[
        "label",
        "namespace",
        "loose",
        "pod-security.kubernetes.io/warn=baseline",
        "pod-security.kubernetes.io/warn-version=v1.35",
    ])
    .await;
    let o = k.apply(&PRIVILEGED.replace("locked", "loose")).await;
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains(r#"Warning: would violate PodSecurity "baseline:v1.35": privileged (container "c" must not set securityContext.privileged=true)"#),
        "{}",
        o.stderr
    );
    s.stop().await;
}

#[tokio::test]
async fn limit_ranges_default_and_bound() {
    let (_dir, s, k) = setup().await;
    k.ok(&["create", "namespace", "lr"]).await;
    let o = k
        .apply(
            r#"
apiVersion: v1
kind: LimitRange
metadata: {name: bounds, namespace: lr}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m, memory: 64Mi}
    min: {cpu: 50m}
    max: {cpu: "1", memory: 1Gi}
"#,
        )
        .await;
    assert!(o.ok, "{}", o.stderr);
    k.ok(&[
        "run",
        "plain",
        "-n",
        "lr",
        "--image=busybox",
        "--restart=Never",
    ])
    .await;
    let res = k
        .ok(&[
            "get",
            "pod",
            "plain",
            "-n",
            "lr",
            "-o",
            "jsonpath={.spec.containers[0].resources}",
        ])
        .await;
    let v: serde_json::Value = serde_json::from_str(&res).expect("json");
    assert_eq!(v["requests"]["cpu"], "100m", "{v}");
    assert_eq!(v["limits"]["memory"], "128Mi", "{v}");
    let ann = k
        .ok(&[
            "get",
            "pod",
            "plain",
            "-n",
            "lr",
            "-o",
            r"jsonpath={.metadata.annotations.kubernetes\.io/limit-ranger}",
        ])
        .await;
    assert!(ann.starts_with("LimitRanger plugin set: "), "{ann}");
    let o = k
        .apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: greedy, namespace: lr}
spec:
  containers:
  - name: c
    image: busybox
    resources: {limits: {cpu: "2"}, requests: {cpu: 10m}}
"#,
        )
        .await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains(r#"pods "greedy" is forbidden: [minimum cpu usage per Container is 50m, but request is 10m, maximum cpu usage per Container is 1, but limit is 2]"#),
        "{}",
        o.stderr
    );
    s.stop().await;
}

/// PriorityClasses and the Priority plugin: the system classes exist, a
/// pod's class (or the one global default) becomes its priority, and bad
/// classes and pods are refused with upstream's messages.
#[tokio::test]
async fn priority_classes_resolve_pod_priority() {
    let (_dir, _s, k) = setup().await;
    let pcs = k.ok(&["get", "pc"]).await;
    assert!(
        pcs.lines()
            .next()
            .unwrap_or_default()
            .contains("GLOBAL-DEFAULT"),
        "{pcs}"
    );
    assert!(
        pcs.contains("system-node-critical") && pcs.contains("2000001000"),
        "{pcs}"
    );
    assert!(
        pcs.contains("system-cluster-critical") && pcs.contains("2000000000"),
        "{pcs}"
    );

    let class = |name: &str, value: i64, default: bool| {
        format!(
            "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\nvalue: {value}\nglobalDefault: {default}\n"
        )
    };
    assert!(k.apply(&class("high", 1000, false)).await.ok);
    assert!(k.apply(&class("low", 10, true)).await.ok);
    let o = k.apply(&class("other", 5, true)).await;
    assert!(
        o.stderr.contains(r#"priorityclasses.scheduling.k8s.io "other" is forbidden: PriorityClass low is already marked as default. Only one default can exist"#),
        "{}",
        o.stderr
    );
    let o = k.apply(&class("huge", 2_000_000_000, false)).await;
    assert!(
        o.stderr.contains(
            "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
        ),
        "{}",
        o.stderr
    );
    let o = k.apply(&class("system-mine", 5, false)).await;
    assert!(
        o.stderr.contains(
            "priority class names with 'system-' prefix are reserved for system use only"
        ),
        "{}",
        o.stderr
    );
    let o = k.apply(&class("high", 2000, false)).await;
    assert!(
        o.stderr
            .contains("value: Forbidden: may not be changed in an update."),
        "{}",
        o.stderr
    );

    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{extra}  containers:\n  - {{name: c, image: busybox}}\n"
        )
    };
    assert!(k.apply(&pod("plain", "")).await.ok);
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "plain",
            "-o",
            "jsonpath={.spec.priorityClassName} {.spec.priority} {.spec.preemptionPolicy}"
        ])
        .await,
        "low 10 PreemptLowerPriority"
    );
    assert!(
        k.apply(&pod("urgent", "  priorityClassName: high\n"))
            .await
            .ok
    );
    assert_eq!(
        k.ok(&["get", "pod", "urgent", "-o", "jsonpath={.spec.priority}"])
            .await,
        "1000"
    );
    let o = k.apply(&pod("lost", "  priorityClassName: nope\n")).await;
    assert!(
        o.stderr
            .contains(r#"pods "lost" is forbidden: no PriorityClass with name nope was found"#),
        "{}",
        o.stderr
    );
    let o = k
        .apply(&pod("sneaky", "  priorityClassName: high\n  priority: 5\n"))
        .await;
    assert!(
        o.stderr.contains("the integer value of priority (5) must not be provided in pod spec; priority admission controller computed 1000 from the given PriorityClass name"),
        "{}",
        o.stderr
    );
    assert!(
        k.run(&["get", "pod", "lost"], None)
            .await
            .stderr
            .contains("not found")
    );
}
