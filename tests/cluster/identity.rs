//! Pod identity on a real cluster: the ServiceAccount token, CA and
//! namespace every pod gets mounted, a projected token for another
//! audience, and an in-cluster client (the real kubectl, with no
//! kubeconfig) that reaches `https://kubernetes.default.svc` with them.

use base64::Engine as _;

use super::dns::exec;
use super::*;

const KUBECTL: &str = "docker.io/kestrel/kubectl:0.1.0";
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn claims(token: &str) -> Value {
    let payload = token.trim().split('.').nth(1).expect("a JWT payload");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("JSON claims")
}

/// `cat` a file in `pod`, retried until it works.
fn cat(c: &Cluster, pod: &str, path: &str) -> String {
    c.wait(
        Duration::from_secs(30),
        &format!("{pod}: cat {path}"),
        || {
            let (ok, out) = exec(c, pod, &["cat", path]);
            ok.then_some(out)
        },
    )
}

pub fn setup(c: &Cluster) {
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: id-reader}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {BUSYBOX}
    command: [sleep, "3600"]
    volumeMounts: [{{name: vault, mountPath: /vault, readOnly: true}}]
  volumes:
  - name: vault
    projected:
      sources:
      - serviceAccountToken: {{audience: vault, expirationSeconds: 600, path: token}}
---
apiVersion: v1
kind: Pod
metadata: {{name: id-kubectl}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: {KUBECTL}, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: id-none}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
  - {{name: c, image: {BUSYBOX}, command: [sleep, "3600"]}}
"#
    ));
    for p in ["id-reader", "id-kubectl", "id-none"] {
        c.wait(Duration::from_secs(90), &format!("{p} Ready"), || {
            c.pod(p).filter(ready)
        });
    }
}

pub fn pods_read_their_token_ca_and_namespace(c: &Cluster) {
    let pod = c.pod("id-reader").expect("id-reader");
    let uid = str_at(&pod, "/metadata/uid");
    assert_eq!(str_at(&pod, "/spec/serviceAccountName"), "default");
    let vol = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| str_at(v, "/name").starts_with("kube-api-access-"))
        .expect("the kube-api-access volume");
    let want_exp = vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"]
        .as_i64()
        .expect("expirationSeconds");
    assert_eq!(want_exp, 3607);

    let token = cat(c, "id-reader", &format!("{SA_DIR}/token"));
    let t = claims(&token);
    assert_eq!(t["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(t["sub"], "system:serviceaccount:default:default");
    assert_eq!(
        t["aud"],
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(t["kubernetes.io"]["namespace"], "default");
    assert_eq!(t["kubernetes.io"]["pod"]["name"], "id-reader");
    assert_eq!(t["kubernetes.io"]["pod"]["uid"], uid);
    assert_eq!(t["kubernetes.io"]["node"]["name"], "node-1");
    let life = t["exp"].as_i64().expect("exp") - t["iat"].as_i64().expect("iat");
    assert_eq!(
        life, want_exp,
        "the token lives as long as the projection asks"
    );

    let ca = cat(c, "id-reader", &format!("{SA_DIR}/ca.crt"));
    let server_ca =
        std::fs::read_to_string(c.dir.path().join("server/tls/ca.crt")).expect("cluster CA");
    assert_eq!(ca.trim(), server_ca.trim());
    let cm = c.kubectl(&["get", "configmap", "kube-root-ca.crt", "-o", "json"]);
    let cm: Value = serde_json::from_str(&cm).expect("json");
    assert_eq!(str_at(&cm, "/data/ca.crt").trim(), server_ca.trim());
    assert_eq!(
        cat(c, "id-reader", &format!("{SA_DIR}/namespace")),
        "default"
    );

    // A projection of its own: another audience and lifetime.
    let v = claims(&cat(c, "id-reader", "/vault/token"));
    assert_eq!(v["aud"], serde_json::json!(["vault"]));
    assert_eq!(
        v["exp"].as_i64().expect("exp") - v["iat"].as_i64().expect("iat"),
        600
    );
    assert_eq!(v["kubernetes.io"]["pod"]["uid"], uid);

    // automountServiceAccountToken: false mounts nothing.
    let (ok, out) = exec(c, "id-none", &["ls", SA_DIR]);
    assert!(!ok, "id-none has {SA_DIR}: {out}");
}

pub fn in_cluster_kubectl_uses_the_mounted_token(c: &Cluster) {
    // No kubeconfig: kubectl's in-cluster config reads
    // KUBERNETES_SERVICE_HOST/PORT, the token and ca.crt, and verifies the
    // server's certificate against that CA.
    let (ok, out) = c.wait(
        Duration::from_secs(60),
        "in-cluster kubectl answered",
        || {
            let (ok, out) = exec(c, "id-kubectl", &["kubectl", "get", "pods", "-o", "name"]);
            // Until the first answer, a transient connection error is retried.
            (ok || out.contains("forbidden") || out.contains("Unauthorized")).then_some((ok, out))
        },
    );
    // RBAC gives the default ServiceAccount nothing: refused, naming it.
    assert!(!ok, "the default ServiceAccount listed pods: {out}");
    assert!(
        out.contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods" in API group "" in the namespace "default""#),
        "{out}"
    );
    // Bound to view in its namespace, it lists pods there, and only there.
    c.kubectl(&[
        "create",
        "rolebinding",
        "default-view",
        "-n",
        "default",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    let out = c.wait(
        Duration::from_secs(30),
        "in-cluster kubectl lists pods",
        || {
            let (ok, out) = exec(c, "id-kubectl", &["kubectl", "get", "pods", "-o", "name"]);
            ok.then_some(out)
        },
    );
    assert!(out.contains("pod/id-kubectl"), "{out}");
    let (ok, out) = exec(c, "id-kubectl", &["kubectl", "get", "secrets"]);
    assert!(
        !ok && out.contains("forbidden"),
        "view must not read secrets: {out}"
    );
    let (ok, out) = exec(
        c,
        "id-kubectl",
        &["kubectl", "get", "pods", "-n", "kube-system"],
    );
    assert!(
        !ok && out.contains("forbidden"),
        "view is only for default: {out}"
    );
    c.kubectl(&["delete", "rolebinding", "default-view", "-n", "default"]);
    let (ok, out) = exec(
        c,
        "id-kubectl",
        &["kubectl", "auth", "whoami", "-o", "json"],
    );
    assert!(ok, "kubectl auth whoami: {out}");
    let me: Value = serde_json::from_str(&out).expect("whoami json");
    let info = &me["status"]["userInfo"];
    assert_eq!(info["username"], "system:serviceaccount:default:default");
    assert_eq!(
        info["extra"]["authentication.kubernetes.io/pod-name"],
        serde_json::json!(["id-kubectl"])
    );
    assert_eq!(
        info["extra"]["authentication.kubernetes.io/node-name"],
        serde_json::json!(["node-2"])
    );
}
