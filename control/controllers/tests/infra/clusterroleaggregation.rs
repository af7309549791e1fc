use k8s_openapi::api::rbac::v1::ClusterRole;
use kestrel_controllers::{Manager, Options};
use kestrel_testkit::eventually;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::common::{WAIT, obj};

fn has_resource(r: &ClusterRole, resource: &str) -> bool {
    r.rules
        .iter()
        .flatten()
        .any(|p| p.resources.iter().flatten().any(|x| x == resource))
}

/// The controller manager under its own identity (not system:masters)
/// fills view/edit/admin and follows roles users label for aggregation.
#[tokio::test]
async fn aggregated_roles_follow_their_selectors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = kestrel_apiserver::testing::TestServer::start_in(dir.path(), |_| {}).await;
    let cm = server
        .user_client("system:kube-controller-manager", &[])
        .await;
    let manager = Manager::new(cm, Options::default()).expect("manager");
    let task = tokio::spawn(async move { manager.run(std::future::pending()).await });
    let roles: Api<ClusterRole> = Api::all(server.client().await);
    for (role, resource) in [
        ("view", "pods"),
        ("edit", "secrets"),
        ("admin", "rolebindings"),
    ] {
        eventually(WAIT, &format!("{role} aggregated"), || async {
            roles
                .get(role)
                .await
                .ok()
                .filter(|r| has_resource(r, resource))
        })
        .await;
    }
    roles
        .create(
            &PostParams::default(),
            &obj(json!({
                "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}],
            })),
        )
        .await
        .expect("create");
    // view, and edit and admin through view's own aggregation labels.
    for role in ["view", "edit", "admin"] {
        eventually(WAIT, &format!("{role} picks up widgets"), || async {
            roles
                .get(role)
                .await
                .ok()
                .filter(|r| has_resource(r, "widgets"))
        })
        .await;
    }
    roles
        .delete("widgets-view", &Default::default())
        .await
        .expect("delete");
    eventually(WAIT, "view drops widgets", || async {
        roles
            .get("view")
            .await
            .ok()
            .filter(|r| !has_resource(r, "widgets"))
    })
    .await;
    task.abort();
}
