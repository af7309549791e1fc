use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use kestrel_testkit::eventually;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::common::{Cluster, WAIT, obj};

#[tokio::test]
async fn new_namespaces_get_a_default_service_account_recreated_if_deleted() {
    let c = Cluster::start(|_| {}).await;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "team-a"}})),
    )
    .await
    .expect("namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "team-a");
    let first = eventually(WAIT, "default ServiceAccount", || async {
        sas.get_opt("default").await.ok()?
    })
    .await;
    sas.delete("default", &DeleteParams::default())
        .await
        .expect("delete");
    let second = eventually(WAIT, "default ServiceAccount recreated", || async {
        sas.get_opt("default")
            .await
            .ok()?
            .filter(|s| s.metadata.uid != first.metadata.uid)
    })
    .await;
    assert!(second.metadata.uid.is_some());
    // The system namespaces have one too.
    let ks: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "kube-system");
    eventually(WAIT, "kube-system default ServiceAccount", || async {
        ks.get_opt("default").await.ok()?
    })
    .await;
}

#[tokio::test]
async fn deleting_a_namespace_empties_it_then_removes_it() {
    let c = Cluster::start(|_| {}).await;
    let nss: Api<Namespace> = Api::all(c.client.clone());
    nss.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "doomed"}})),
    )
    .await
    .expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "doomed");
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": format!("c{i}")}})),
        )
        .await
        .expect("configmap");
    }
    Api::<Secret>::namespaced(c.client.clone(), "doomed")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        )
        .await
        .expect("secret");
    Api::<Service>::namespaced(c.client.clone(), "doomed")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await
        .expect("service");
    Api::<Pod>::namespaced(c.client.clone(), "doomed")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.35"}]}})),
        )
        .await
        .expect("pod");
    nss.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "namespace gone", || async {
        nss.get_opt("doomed").await.ok()?.is_none().then_some(())
    })
    .await;
    let all: Api<ConfigMap> = Api::all(c.client.clone());
    let left = all
        .list(&kube::api::ListParams::default().fields("metadata.namespace=doomed"))
        .await
        .expect("list");
    assert!(left.items.is_empty());
}
