//! Authorization as users meet it: the real kubectl as different users
//! (client certificates from the cluster CA), RBAC roles and bindings,
//! escalation prevention, `kubectl auth can-i` (with `--list` and `--as`),
//! `kubectl auth whoami`, impersonation, and a node's credentials under the
//! Node authorizer and NodeRestriction.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kestrel_apiserver::testing::TestServer;
use kestrel_testkit::kubectl::Kubectl;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

const ROLES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
- apiGroups: [""]
  resources: [pods, configmaps]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ns-admin}
rules:
- apiGroups: [""]
  resources: [pods, configmaps]
  verbs: ["*"]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: bob-admins, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ns-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: team-admins}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: impersonator}
rules:
- apiGroups: [""]
  resources: [users]
  verbs: [impersonate]
  resourceNames: [alice]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: carol-impersonates}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: impersonator}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}
"#;

#[tokio::test]
async fn users_get_what_their_bindings_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let admin = Kubectl::new(dir.path(), s.kubeconfig.clone());
    let o = admin.apply(ROLES).await;
    assert!(o.ok, "{}", o.stderr);
    admin
        .ok(&[
            "create",
            "configmap",
            "c1",
            "-n",
            "team",
            "--from-literal=a=b",
        ])
        .await;
    admin
        .ok(&[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "team",
            "--from-literal=a=b",
        ])
        .await;

    // alice: read pods and configmaps in team, nothing else.
    let alice = Kubectl::new(dir.path(), s.user_kubeconfig("alice", &[]));
    let out = alice.ok(&["get", "configmaps", "-n", "team"]).await;
    assert!(out.contains("c1"), "{out}");
    let err = alice.refused(&["get", "configmaps", "-n", "other"]).await;
    assert!(
        err.contains(r#"configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "other""#),
        "{err}"
    );
    let err = alice.refused(&["get", "secrets", "-n", "team"]).await;
    assert!(err.contains(r#"cannot list resource "secrets""#), "{err}");
    let err = alice
        .refused(&["delete", "configmap", "c1", "-n", "team"])
        .await;
    assert!(
        err.contains(
            r#"configmaps "c1" is forbidden: User "alice" cannot delete resource "configmaps""#
        ),
        "{err}"
    );
    let err = alice.refused(&["get", "namespaces"]).await;
    assert!(err.contains("at the cluster scope"), "{err}");

    // can-i, for oneself and --list.
    assert_eq!(
        alice
            .ok(&["auth", "can-i", "list", "pods", "-n", "team"])
            .await
            .trim(),
        "yes"
    );
    let o = alice
        .run(&["auth", "can-i", "list", "pods", "-n", "other"], None)
        .await;
    assert_eq!((o.ok, o.stdout.trim()), (false, "no"));
    let list = alice.ok(&["auth", "can-i", "--list", "-n", "team"]).await;
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
    let who = alice
        .ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ])
        .await;
    assert_eq!(who, r#"alice ["system:authenticated"]"#);

    // bob (group team-admins) can grant in team what he holds...
    let bob = Kubectl::new(dir.path(), s.user_kubeconfig("bob", &["team-admins"]));
    bob.ok(&[
        "create",
        "rolebinding",
        "dave-reads",
        "-n",
        "team",
        "--clusterrole=reader",
        "--user=dave",
    ])
    .await;
    let dave = Kubectl::new(dir.path(), s.user_kubeconfig("dave", &[]));
    assert_eq!(
        dave.ok(&["auth", "can-i", "get", "configmaps", "-n", "team"])
            .await
            .trim(),
        "yes"
    );
    // ...but not what he does not: a role with secrets, or a binding to cluster-admin.
    let err = bob
        .refused(&[
            "create",
            "role",
            "peek",
            "-n",
            "team",
            "--verb=get",
            "--resource=secrets",
        ])
        .await;
    assert!(
        err.contains(r#"roles.rbac.authorization.k8s.io "peek" is forbidden: user "bob" (groups=["team-admins" "system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#)
            && err.contains(r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#),
        "{err}"
    );
    let err = bob
        .refused(&[
            "create",
            "rolebinding",
            "root",
            "-n",
            "team",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ])
        .await;
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // Nor anything outside team.
    let err = bob
        .refused(&["create", "configmap", "x", "-n", "other"])
        .await;
    assert!(err.contains("forbidden"), "{err}");
    // A role within his own permissions is fine.
    bob.ok(&[
        "create",
        "role",
        "cm-reader",
        "-n",
        "team",
        "--verb=get",
        "--resource=configmaps",
    ])
    .await;

    // Impersonation: carol may act as alice, not as bob.
    let carol = Kubectl::new(dir.path(), s.user_kubeconfig("carol", &[]));
    let out = carol
        .ok(&["get", "configmaps", "-n", "team", "--as=alice"])
        .await;
    assert!(out.contains("c1"), "{out}");
    assert_eq!(
        carol
            .ok(&["auth", "can-i", "list", "pods", "-n", "team", "--as=alice"])
            .await
            .trim(),
        "yes"
    );
    let err = carol
        .refused(&["get", "configmaps", "-n", "team", "--as=bob"])
        .await;
    assert!(
        err.contains(r#"users "bob" is forbidden: User "carol" cannot impersonate resource "users" in API group "" at the cluster scope"#),
        "{err}"
    );
    let err = carol
        .refused(&[
            "get",
            "configmaps",
            "-n",
            "team",
            "--as=alice",
            "--as-group=system:masters",
        ])
        .await;
    assert!(
        err.contains(r#"cannot impersonate resource "groups""#),
        "{err}"
    );
    // The admin (system:masters) may check others.
    let o = admin
        .run(
            &[
                "auth",
                "can-i",
                "delete",
                "configmaps",
                "-n",
                "team",
                "--as=alice",
            ],
            None,
        )
        .await;
    assert_eq!(o.stdout.trim(), "no");
    // Revoking works at once.
    admin
        .ok(&["delete", "rolebinding", "alice-reads", "-n", "team"])
        .await;
    alice.refused(&["get", "configmaps", "-n", "team"]).await;
    // Anonymous requests reach only the public endpoints.
    let anon = s.anonymous();
    let req = http::Request::get("/version")
        .body(Vec::new())
        .expect("req");
    assert!(anon.request_text(req).await.is_ok());
    let pods: Api<Pod> = Api::namespaced(anon, "team");
    assert!(pods.list(&Default::default()).await.is_err());
    s.stop().await;
}

fn pod(name: &str, node: &str, secret: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox", "envFrom": [{"secretRef": {"name": secret}}]}],
        },
    }))
    .expect("pod")
}

fn secret(name: &str) -> Secret {
    serde_json::from_value(
        serde_json::json!({"metadata": {"name": name}, "stringData": {"k": "v"}}),
    )
    .expect("secret")
}

fn node(name: &str) -> Node {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("node")
}

fn status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn a_node_reaches_only_what_its_pods_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let admin = s.client().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let nodes: Api<Node> = Api::all(admin.clone());
    let pp = PostParams::default();
    for n in ["n1", "n2"] {
        nodes.create(&pp, &node(n)).await.expect("node");
    }
    for n in ["s1", "s2", "lonely"] {
        secrets.create(&pp, &secret(n)).await.expect("secret");
    }
    pods.create(&pp, &pod("p1", "n1", "s1")).await.expect("pod");
    pods.create(&pp, &pod("p2", "n2", "s2")).await.expect("pod");

    let n1 = s.user_client("system:node:n1", &["system:nodes"]).await;
    let n1_secrets: Api<Secret> = Api::namespaced(n1.clone(), "default");
    n1_secrets
        .get("s1")
        .await
        .expect("n1 reads the secret of its pod");
    let (code, msg) = status(
        n1_secrets
            .get("s2")
            .await
            .expect_err("another node's pod's secret"),
    );
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        r#"secrets "s2" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n1' and this object"#
    );
    assert_eq!(
        status(n1_secrets.get("lonely").await.expect_err("unused")).0,
        403
    );
    assert_eq!(
        status(
            n1_secrets
                .list(&Default::default())
                .await
                .expect_err("list")
        )
        .0,
        403
    );

    // Its pods' status yes, another node's pods' status no; no deleting
    // workloads or patching another Node.
    let n1_pods: Api<Pod> = Api::namespaced(n1.clone(), "default");
    let st = Patch::Merge(serde_json::json!({"status": {"phase": "Running"}}));
    n1_pods
        .patch_status("p1", &PatchParams::default(), &st)
        .await
        .expect("own pod status");
    let (code, msg) = status(
        n1_pods
            .patch_status("p2", &PatchParams::default(), &st)
            .await
            .expect_err("other pod"),
    );
    assert_eq!(code, 403);
    assert!(
        msg.contains(r#"node "n1" can only update pod status with spec.nodeName set to itself"#),
        "{msg}"
    );
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(n1.clone(), "default");
    assert_eq!(
        status(
            deploys
                .delete("web", &DeleteParams::default())
                .await
                .expect_err("deployments")
        )
        .0,
        403
    );
    let n1_nodes: Api<Node> = Api::all(n1.clone());
    let label = Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}}));
    n1_nodes
        .patch("n1", &PatchParams::default(), &label)
        .await
        .expect("own node");
    let (code, msg) = status(
        n1_nodes
            .patch("n2", &PatchParams::default(), &label)
            .await
            .expect_err("other node"),
    );
    assert_eq!(code, 403);
    assert!(
        msg.contains(r#"node "n1" is not allowed to modify node "n2""#),
        "{msg}"
    );

    // The pod moves away (deleted): the secret is out of reach at once.
    pods.delete(
        "p1",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("delete");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match n1_secrets.get("s1").await {
            Err(e) => {
                assert_eq!(status(e).0, 403);
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => panic!("n1 still reads s1 after its pod is gone"),
        }
    }
    s.stop().await;
}

async fn post(
    client: &kube::Client,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, kube::Error> {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("json"))
        .expect("request");
    client.request::<serde_json::Value>(req).await
}

/// TokenReview, as an auth-delegating server (metrics, aggregated APIs)
/// uses it: allowed through system:auth-delegator, answering who a token is.
#[tokio::test]
async fn token_reviews_say_who_a_token_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let admin = s.client().await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": "app"}})).expect("sa"),
    )
    .await
    .expect("sa");
    let tr = post(
        &admin,
        "/api/v1/namespaces/default/serviceaccounts/app/token",
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await
    .expect("token");
    let token = tr["status"]["token"].as_str().expect("token").to_owned();
    let review = |t: &str| serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}});
    let path = "/apis/authentication.k8s.io/v1/tokenreviews";
    let metrics = s.user_client("metrics-server", &[]).await;
    let e = post(&metrics, path, review(&token))
        .await
        .expect_err("no delegation yet");
    assert!(
        matches!(e, kube::Error::Api(ref st) if st.code == 403),
        "{e}"
    );
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin.clone());
    crbs.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({
            "metadata": {"name": "metrics-delegator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "metrics-server"}],
        }))
        .expect("crb"),
    )
    .await
    .expect("crb");
    let v = post(&metrics, path, review(&token)).await.expect("review");
    assert_eq!(v["status"]["authenticated"], true, "{v}");
    assert_eq!(
        v["status"]["user"]["username"],
        "system:serviceaccount:default:app"
    );
    let v = post(&metrics, path, review("not-a-token"))
        .await
        .expect("review");
    assert_eq!(v["status"]["authenticated"], false, "{v}");
    s.stop().await;
}
