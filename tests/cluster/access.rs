//! Who may do what on a real cluster: a node's own credentials reach only
//! what its pods use, the built-in view/edit/admin roles (filled by the
//! aggregation controller) mean what they mean upstream, and the
//! scheduler and controllers run under their own least-privilege users.

use std::time::Duration;

use super::Cluster;

/// kubectl with node-1's kubeconfig (the one its agent uses), against the
/// server's loopback address.
fn as_node(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let admin = std::fs::read_to_string(&c.kubeconfig).expect("admin kubeconfig");
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_owned();
    let kubeconfig = c.node_dir("node-1").join("kubelet.kubeconfig");
    let out = std::process::Command::new(kestrel_testkit::kubectl_path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--server")
        .arg(&server)
        .args(args)
        .env("HOME", c.dir.path())
        .output()
        .expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn refused(r: (bool, String, String), want: &str) {
    let (ok, out, err) = r;
    assert!(!ok, "should have been refused: {out}");
    assert!(err.contains("Forbidden") && err.contains(want), "{err}");
}

pub fn a_node_credential_is_not_an_admin(c: &Cluster) {
    refused(
        as_node(c, &["get", "secrets", "-A"]),
        r#"User "system:node:node-1" cannot list resource "secrets" in API group "" at the cluster scope"#,
    );
    refused(
        as_node(c, &["delete", "deployment", "anything", "-n", "default"]),
        r#"cannot delete resource "deployments" in API group "apps""#,
    );
    refused(
        as_node(c, &["label", "node", "node-2", "x=y"]),
        r#"node "node-1" is not allowed to modify node "node-2""#,
    );
    // What it needs still works: its own Node, and every pod (for policy).
    let (ok, out, err) = as_node(c, &["get", "node", "node-1", "-o", "name"]);
    assert!(ok && out.trim() == "node/node-1", "{err}");
    let (ok, _, err) = as_node(c, &["get", "pods", "-A"]);
    assert!(ok, "{err}");
}

pub fn components_hold_only_their_roles(c: &Cluster) {
    let can = |args: &[&str]| {
        let (_, out, _) = c.kubectl_raw(&[&["auth", "can-i"], args].concat(), None);
        out.trim().to_owned()
    };
    assert_eq!(
        can(&[
            "create",
            "pods",
            "--subresource=binding",
            "--as=system:kube-scheduler",
            "-n",
            "default"
        ]),
        "yes"
    );
    assert_eq!(
        can(&[
            "get",
            "secrets",
            "--as=system:kube-scheduler",
            "-n",
            "kube-system"
        ]),
        "no"
    );
    assert_eq!(
        can(&[
            "create",
            "replicasets.apps",
            "--as=system:kube-controller-manager",
            "-n",
            "default"
        ]),
        "yes"
    );
    assert_eq!(
        can(&[
            "create",
            "clusterrolebindings",
            "--as=system:kube-controller-manager"
        ]),
        "no"
    );
    assert_eq!(
        can(&[
            "impersonate",
            "users",
            "--as=system:kube-controller-manager"
        ]),
        "no"
    );
}

pub fn view_edit_admin(c: &Cluster) {
    // The aggregation controller fills the aggregated roles.
    c.wait(
        Duration::from_secs(20),
        "view to aggregate its rules",
        || {
            let out = c.kubectl(&[
                "get",
                "clusterrole",
                "view",
                "-o",
                "jsonpath={.rules[*].resources}",
            ]);
            out.contains("pods").then_some(())
        },
    );
    c.kubectl(&["create", "namespace", "rbac-e2e"]);
    for (user, role) in [("viewer", "view"), ("editor", "edit"), ("owner", "admin")] {
        c.kubectl(&[
            "create",
            "rolebinding",
            user,
            "-n",
            "rbac-e2e",
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }
    let can = |user: &str, verb: &str, what: &str, ns: &str| {
        let (_, out, _) = c.kubectl_raw(
            &[
                "auth",
                "can-i",
                verb,
                what,
                "-n",
                ns,
                &format!("--as={user}"),
            ],
            None,
        );
        out.trim() == "yes"
    };
    let table = [
        // (user, verb, resource, allowed in rbac-e2e)
        ("viewer", "list", "pods", true),
        ("viewer", "get", "secrets", false),
        ("viewer", "create", "configmaps", false),
        ("editor", "create", "deployments.apps", true),
        ("editor", "get", "secrets", true),
        (
            "editor",
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            false,
        ),
        (
            "owner",
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            true,
        ),
        ("owner", "delete", "pods", true),
    ];
    for (user, verb, what, want) in table {
        assert_eq!(
            can(user, verb, what, "rbac-e2e"),
            want,
            "{user} {verb} {what}"
        );
        // Nothing outside the namespace.
        assert!(
            !can(user, verb, what, "default"),
            "{user} {verb} {what} in default"
        );
    }
    // A user extends view to a new resource by labelling a role.
    c.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-view
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- apiGroups: [example.com]
  resources: [widgets]
  verbs: [get, list, watch]
"#,
    );
    // (kubectl auth can-i cannot name a resource discovery does not list,
    // so look at the aggregated rules themselves.)
    c.wait(Duration::from_secs(20), "view to pick up widgets", || {
        let out = c.kubectl(&[
            "get",
            "clusterrole",
            "view",
            "-o",
            "jsonpath={.rules[*].resources}",
        ]);
        out.contains("widgets").then_some(())
    });
    // The owner edits, the viewer cannot.
    let (ok, _, err) = c.kubectl_raw(
        &["create", "configmap", "x", "-n", "rbac-e2e", "--as=owner"],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, err) = c.kubectl_raw(
        &["delete", "configmap", "x", "-n", "rbac-e2e", "--as=viewer"],
        None,
    );
    assert!(
        !ok && err.contains(r#"User "viewer" cannot delete resource "configmaps""#),
        "{err}"
    );
    c.kubectl(&["delete", "namespace", "rbac-e2e", "--wait=false"]);
    c.kubectl(&["delete", "clusterrole", "widgets-view"]);
}
