//! kube-rs against an in-process server backed by the real SQLite store.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kestrel_apiserver::testing::{self, TestServer};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn api_err(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
    .expect("configmap")
}

async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    ct: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    testing::request_raw(client, method, path, ct, body).await
}

#[tokio::test]
async fn authentication_and_public_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let anon = s.anonymous();
    for p in ["/healthz", "/livez", "/readyz"] {
        let (code, _) = raw(&anon, "GET", p, "", vec![]).await;
        assert_eq!(code, 200, "{p}");
    }
    let (code, v) = raw(&anon, "GET", "/version", "", vec![]).await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
    for p in ["/api", "/apis", "/api/v1/namespaces", "/openapi/v3"] {
        let (code, v) = raw(&anon, "GET", p, "", vec![]).await;
        assert_eq!(code, 401, "{p}");
        assert_eq!(v["kind"], "Status");
        assert_eq!(v["reason"], "Unauthorized");
    }
    // A wrong token is refused; the admin token from tokens.csv works.
    let (code, _) = raw(&s.with_token("nope"), "GET", "/api", "", vec![]).await;
    assert_eq!(code, 401);
    let tokens = std::fs::read_to_string(dir.path().join("tokens.csv")).expect("tokens.csv");
    let admin_token = tokens.split(',').next().expect("token");
    let ns: Api<Namespace> = Api::all(s.with_token(admin_token));
    let names: Vec<String> = ns
        .list(&Default::default())
        .await
        .expect("list with token")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&want.to_owned()), "{names:?}");
    }
    // The node token only opens the join endpoint.
    let (code, _) = raw(
        &s.with_token(&s.node_token),
        "GET",
        "/api/v1/nodes",
        "",
        vec![],
    )
    .await;
    assert_eq!(code, 401);
}

#[tokio::test]
async fn node_join_issues_a_node_certificate_that_authenticates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let body = serde_json::to_vec(&json!({"nodeName": "node-1", "csr": csr})).expect("json");
    let (code, v) = raw(
        &s.with_token(&s.node_token),
        "POST",
        kestrel_apiserver::JOIN_PATH,
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let cert = v["certificate"].as_str().expect("certificate").to_owned();
    let der = testing::pem_der(&cert);
    let user = kestrel_apiserver::auth::user_from_cert(&der).expect("identity");
    assert_eq!(user.name, "system:node:node-1");
    assert_eq!(user.groups, ["system:nodes", "system:authenticated"]);
    // Without the token: 401.
    let (code, _) = raw(
        &s.anonymous(),
        "POST",
        kestrel_apiserver::JOIN_PATH,
        "application/json",
        body,
    )
    .await;
    assert_eq!(code, 401);
    // The issued certificate authenticates.
    let mut cfg = kube::Config::new(format!("https://{}", s.addr).parse().expect("url"));
    cfg.root_cert = Some(vec![testing::pem_der(&s.ca_pem)]);
    cfg.auth_info.client_certificate_data = Some(base64_encode(&cert));
    cfg.auth_info.client_key_data = Some(base64_encode(&key.serialize_pem()).into());
    let node_client = kube::Client::try_from(cfg).expect("client");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(node_client);
    nodes
        .list(&Default::default())
        .await
        .expect("node cert authenticates");
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn crud_conflicts_and_read_your_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let created = cms
        .create(&PostParams::default(), &cm("one", json!({"app": "a"})))
        .await
        .expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    let rv1 = meta.resource_version.clone().expect("rv");
    // Seen by the very next list.
    let names: Vec<_> = cms
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(names.contains(&"one".to_owned()));

    let e = api_err(
        cms.create(&PostParams::default(), &cm("one", json!({})))
            .await
            .expect_err("dup"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, r#"configmaps "one" already exists"#);

    let mut upd = created.clone();
    upd.data = Some([("k".to_owned(), "v2".to_owned())].into());
    let updated = cms
        .replace("one", &PostParams::default(), &upd)
        .await
        .expect("update");
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );
    // Same stale resourceVersion again: 409 Conflict.
    let e = api_err(
        cms.replace("one", &PostParams::default(), &upd)
            .await
            .expect_err("stale"),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("the object has been modified"),
        "{}",
        e.message
    );

    // generateName.
    let mut g = cm("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let gen_obj = cms
        .create(&PostParams::default(), &g)
        .await
        .expect("generateName");
    let gname = gen_obj.metadata.name.expect("name");
    assert!(gname.starts_with("gen-") && gname.len() == 9, "{gname}");

    // dryRun creates nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    cms.create(&dry, &cm("dry", json!({})))
        .await
        .expect("dry run");
    assert_eq!(
        api_err(cms.get("dry").await.expect_err("not stored")).code,
        404
    );

    // Patches: merge, json, strategic.
    let p = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"m": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("m"))
            .map(String::as_str),
        Some("1")
    );
    let (code, v) = raw(
        &client,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/one",
        "application/json-patch+json",
        serde_json::to_vec(&json!([{"op": "add", "path": "/data/j", "value": "x"}])).expect("json"),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["j"], "x");
    let p = cms
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"s": "y"}})),
        )
        .await
        .expect("strategic patch");
    assert_eq!(p.data.as_ref().map(|d| d.len()), Some(3));

    cms.delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    let e = api_err(cms.get("one").await.expect_err("gone"));
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, r#"configmaps "one" not found"#);
}

#[tokio::test]
async fn lists_page_and_select() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(
            &PostParams::default(),
            &cm(
                &format!("cm-{i:02}"),
                json!({"tier": tier, "n": i.to_string()}),
            ),
        )
        .await
        .expect("create");
    }
    // Pages of 10 over one snapshot.
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(10);
    loop {
        let page = cms.list(&lp).await.expect("page");
        seen.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25, "{seen:?}");
    let count = |sel: &str| {
        let cms = cms.clone();
        let sel = sel.to_owned();
        async move {
            cms.list(&ListParams::default().labels(&sel))
                .await
                .expect("list")
                .items
                .len()
        }
    };
    assert_eq!(count("tier=even").await, 13);
    assert_eq!(count("tier!=even").await, 12);
    assert_eq!(count("tier in (even,odd)").await, 25);
    assert_eq!(count("n in (1,2,3),tier=odd").await, 2);
    assert_eq!(count("!tier").await, 0);
    assert_eq!(count("tier,tier notin (odd)").await, 13);
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=cm-03"))
        .await
        .expect("fields");
    assert_eq!(by_name.items.len(), 1);
    let e = api_err(
        cms.list(&ListParams::default().fields("spec.nodeName=x"))
            .await
            .expect_err("unsupported"),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "field label not supported: spec.nodeName")
    );
    let e = api_err(
        cms.list(&ListParams::default().labels("a in ("))
            .await
            .expect_err("bad selector"),
    );
    assert_eq!(e.code, 400);
    // Selectors on a paged list still fill pages.
    let page = cms
        .list(&ListParams::default().labels("tier=odd").limit(5))
        .await
        .expect("paged select");
    assert_eq!(page.items.len(), 5);
    assert!(page.metadata.continue_.is_some_and(|c| !c.is_empty()));
}

#[tokio::test]
async fn watch_resumes_bookmarks_and_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |c| {
        c.watch_history = 20;
        c.bookmark_interval = Duration::from_millis(200);
    })
    .await;
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let first = cms
        .create(&PostParams::default(), &cm("w0", json!({"w": "yes"})))
        .await
        .expect("create");
    let rv0 = first.metadata.resource_version.clone().expect("rv");

    let mut stream = cms
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default().labels("w=yes")
            },
            &rv0,
        )
        .await
        .expect("watch")
        .boxed();
    cms.create(&PostParams::default(), &cm("w1", json!({"w": "yes"})))
        .await
        .expect("create w1");
    cms.create(&PostParams::default(), &cm("skip", json!({"w": "no"})))
        .await
        .expect("create skip");
    cms.patch(
        "w1",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .expect("patch");
    // Relabelled out of the selector: upstream reports DELETED.
    cms.patch(
        "w0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"w": "no"}}})),
    )
    .await
    .expect("relabel");
    let mut kinds = Vec::new();
    let mut saw_bookmark = false;
    tokio::time::timeout(WAIT, async {
        while kinds.len() < 3 || !saw_bookmark {
            match stream
                .try_next()
                .await
                .expect("event")
                .expect("stream open")
            {
                WatchEvent::Added(c) => {
                    kinds.push(format!("ADDED {}", c.metadata.name.unwrap_or_default()))
                }
                WatchEvent::Modified(c) => {
                    kinds.push(format!("MODIFIED {}", c.metadata.name.unwrap_or_default()))
                }
                WatchEvent::Deleted(c) => {
                    kinds.push(format!("DELETED {}", c.metadata.name.unwrap_or_default()))
                }
                WatchEvent::Bookmark(_) => saw_bookmark = true,
                WatchEvent::Error(e) => panic!("watch error {e:?}"),
            }
        }
    })
    .await
    .expect("watch events within the deadline");
    assert_eq!(kinds, vec!["ADDED w1", "MODIFIED w1", "DELETED w0"]);

    // Push the first revision out of the 20-event history: resuming there is 410.
    for i in 0..30 {
        cms.create(&PostParams::default(), &cm(&format!("f{i}"), json!({})))
            .await
            .expect("fill");
    }
    let mut old = cms
        .watch(&WatchParams::default(), &rv0)
        .await
        .expect("watch old")
        .boxed();
    let ev = tokio::time::timeout(WAIT, old.try_next())
        .await
        .expect("deadline")
        .expect("event")
        .expect("open");
    match ev {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_list_with_initial_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..3 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}"), json!({})))
            .await
            .expect("create");
    }
    let mut st = cms
        .watch(&WatchParams::default().initial_events(), "")
        .await
        .expect("watch list")
        .boxed();
    let mut added = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            match st.try_next().await.expect("event").expect("open") {
                WatchEvent::Added(_) => added += 1,
                WatchEvent::Bookmark(b) => {
                    assert_eq!(
                        b.metadata
                            .annotations
                            .get("k8s.io/initial-events-end")
                            .map(String::as_str),
                        Some("true")
                    );
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("initial events within the deadline");
    // kube-root-ca.crt is not created; exactly the three.
    assert_eq!(added, 3);
}

#[tokio::test]
async fn bad_input_never_stores_and_gets_a_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let path = "/api/v1/namespaces/default/configmaps";
    let ok = |name: &str| {
        serde_json::to_vec(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}),
        )
        .expect("json")
    };
    // (what, path, content type, body, code, reason)
    type Case<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("malformed json", path.into(), "application/json", b"{\"apiVersion\":".to_vec(), 400, "BadRequest"),
        ("malformed yaml", path.into(), "application/yaml", b"metadata: [\n  name: x".to_vec(), 400, "BadRequest"),
        ("invalid utf-8", path.into(), "application/json", b"{\"a\":\"\xff\xfe\"}".to_vec(), 400, "BadRequest"),
        ("deep json", path.into(), "application/json", ("[".repeat(10_000) + &"]".repeat(10_000)).into_bytes(), 400, "BadRequest"),
        ("too large", path.into(), "application/json", vec![b' '; 3 * 1024 * 1024 + 10], 413, "RequestEntityTooLarge"),
        ("wrong content type", path.into(), "application/x-protobuf", ok("ct"), 415, "UnsupportedMediaType"),
        ("protobuf without magic", path.into(), "application/vnd.kubernetes.protobuf", ok("pb"), 400, "BadRequest"),
        ("truncated protobuf", path.into(), "application/vnd.kubernetes.protobuf", b"k8s\x00\x0a\x20\x0a".to_vec(), 400, "BadRequest"),
        ("protobuf for a kind without one", path.into(), "application/vnd.kubernetes.protobuf", [&b"k8s\x00\x0a\x18\x0a\x0eexample.com/v1\x12\x06Widget"[..], b"\x12\x00"].concat(), 415, "UnsupportedMediaType"),
        ("long name", path.into(), "application/json", ok(&"a".repeat(300)), 422, "Invalid"),
        ("bad name", path.into(), "application/json", ok("Bad_Name"), 422, "Invalid"),
        ("missing namespace", "/api/v1/namespaces/nope/configmaps".into(), "application/json", ok("x"), 404, "NotFound"),
        ("unknown kind", "/apis/example.com/v1/namespaces/default/widgets".into(), "application/json", ok("x"), 404, "NotFound"),
        ("unknown version", "/apis/apps/v9/namespaces/default/deployments".into(), "application/json", ok("x"), 404, "NotFound"),
        ("kind mismatch", path.into(), "application/json", serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}})).expect("json"), 400, "BadRequest"),
        ("wrong type", path.into(), "application/json", serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "t"}, "data": 5})).expect("json"), 400, "BadRequest"),
    ];
    for (what, p, ct, body, code, reason) in cases {
        let (got, v) = raw(&client, "POST", &p, ct, body).await;
        assert_eq!(got, code, "{what}: {v}");
        assert_eq!(v["kind"], "Status", "{what}");
        assert_eq!(v["reason"], reason, "{what}: {v}");
    }
    let (code, v) = raw(
        &client,
        "PUT",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        ok("x"),
    )
    .await;
    assert_eq!(
        (code, v["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    let req = http::Request::builder()
        .uri(path)
        .header("accept", "application/xml")
        .body(kube::client::Body::empty())
        .expect("request");
    let resp = client.send(req).await.expect("send");
    assert_eq!(resp.status().as_u16(), 406);
    // YAML when asked for it first.
    let req = http::Request::builder()
        .uri("/api/v1/namespaces/default")
        .header("accept", "application/yaml")
        .body(kube::client::Body::empty())
        .expect("request");
    let resp = client.send(req).await.expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/yaml")
    );
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("kind: Namespace") && text.contains("name: default"),
        "{text}"
    );
    let invalid = raw(&client, "POST", path, "application/json", ok("Bad_Name"))
        .await
        .1;
    assert_eq!(invalid["details"]["causes"][0]["field"], "metadata.name");
    // Nothing was stored and the server is still up.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert!(
        cms.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let (code, _) = raw(&client, "GET", "/healthz", "", vec![]).await;
    assert_eq!(code, 200);
}

/// The API server's part of namespace deletion (no controllers run here):
/// the namespace turns Terminating and refuses new content; once its
/// content is gone, removing the `kubernetes` finalizer through
/// `namespaces/{name}/finalize` deletes it. (The namespace controller does
/// the emptying; kestrel-controllers tests that.)
#[tokio::test]
async fn namespace_deletion_marks_terminating_and_finalize_removes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "doomed"}})).expect("ns");
    let created = nss
        .create(&PostParams::default(), &ns)
        .await
        .expect("create ns");
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Active")
    );
    assert_eq!(
        created.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_owned()])
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &cm("c0", json!({})))
        .await
        .expect("create cm");
    nss.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete ns");
    let n = nss.get("doomed").await.expect("still there");
    assert!(n.metadata.deletion_timestamp.is_some());
    assert_eq!(
        n.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let e = api_err(
        cms.create(&PostParams::default(), &cm("late", json!({})))
            .await
            .expect_err("terminating"),
    );
    assert_eq!(e.code, 403);
    assert!(
        e.message.contains(
            "unable to create new content in namespace doomed because it is being terminated"
        ),
        "{}",
        e.message
    );
    // A plain update cannot drop spec.finalizers; the finalize subresource can.
    let mut upd = nss.get("doomed").await.expect("get");
    upd.spec = Some(Default::default());
    let after = nss
        .replace("doomed", &PostParams::default(), &upd)
        .await
        .expect("update");
    assert_eq!(
        after.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_owned()])
    );
    cms.delete("c0", &DeleteParams::default())
        .await
        .expect("delete cm");
    let mut fin = nss.get("doomed").await.expect("get");
    fin.spec = Some(Default::default());
    nss.replace_subresource("finalize", "doomed", &PostParams::default(), &fin)
        .await
        .expect("finalize");
    assert!(
        nss.get_opt("doomed").await.expect("get").is_none(),
        "gone once finalized"
    );
    // A namespace created without finalizers goes at once.
    let bare: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "bare"}, "spec": {"finalizers": []}}))
            .expect("ns");
    nss.create(&PostParams::default(), &bare)
        .await
        .expect("create bare");
    nss.delete("bare", &DeleteParams::default())
        .await
        .expect("delete bare");
    assert!(nss.get_opt("bare").await.expect("get").is_none());
    let e = api_err(
        nss.delete("default", &DeleteParams::default())
            .await
            .expect_err("protected"),
    );
    assert_eq!(e.code, 403);
}

/// propagationPolicy as upstream's registry applies it: Foreground and
/// Orphan leave the object with a deletionTimestamp and the garbage
/// collector's finalizer (which a controller later removes), Background and
/// the default delete at once.
#[tokio::test]
async fn propagation_policy_sets_garbage_collector_finalizers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (name, policy, finalizer) in [
        (
            "fg",
            Some(kube::api::PropagationPolicy::Foreground),
            Some("foregroundDeletion"),
        ),
        (
            "or",
            Some(kube::api::PropagationPolicy::Orphan),
            Some("orphan"),
        ),
        ("bg", Some(kube::api::PropagationPolicy::Background), None),
        ("default", None, None),
    ] {
        cms.create(&PostParams::default(), &cm(name, json!({})))
            .await
            .expect("create");
        let dp = DeleteParams {
            propagation_policy: policy,
            ..Default::default()
        };
        cms.delete(name, &dp).await.expect("delete");
        let left = cms.get_opt(name).await.expect("get");
        match finalizer {
            Some(f) => {
                let left = left.expect("kept for the garbage collector");
                assert!(left.metadata.deletion_timestamp.is_some(), "{name}");
                assert_eq!(left.metadata.finalizers, Some(vec![f.to_owned()]), "{name}");
            }
            None => assert!(left.is_none(), "{name} deleted at once"),
        }
    }
    // Switching policy on a pending delete swaps the finalizer; Background
    // drops it, and with it the object.
    let dp = |p| DeleteParams {
        propagation_policy: Some(p),
        ..Default::default()
    };
    cms.delete("or", &dp(kube::api::PropagationPolicy::Foreground))
        .await
        .expect("re-delete");
    let or = cms.get("or").await.expect("still there");
    assert_eq!(
        or.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_owned()])
    );
    cms.delete("or", &dp(kube::api::PropagationPolicy::Background))
        .await
        .expect("background");
    assert!(cms.get_opt("or").await.expect("get").is_none());
    // Removing the finalizer finishes a foreground delete.
    let patch = json!({"metadata": {"finalizers": null}});
    cms.patch("fg", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("drop finalizer");
    assert!(cms.get_opt("fg").await.expect("get").is_none());
}

/// DefaultTolerationSeconds: new pods tolerate the not-ready and
/// unreachable NoExecute taints for the configured time, unless they
/// already tolerate them.
#[tokio::test]
async fn pods_get_default_not_ready_and_unreachable_tolerations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |c| {
        c.default_unreachable_toleration_seconds = 7;
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(s.client().await, "default");
    let pod = |name: &str, tolerations: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.35"}], "tolerations": tolerations},
        }))
        .expect("pod")
    };
    let tols = |p: Pod| -> Vec<(String, Option<i64>)> {
        p.spec
            .and_then(|s| s.tolerations)
            .unwrap_or_default()
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.toleration_seconds))
            .collect()
    };
    let plain = pods
        .create(&PostParams::default(), &pod("plain", json!([])))
        .await
        .expect("create");
    assert_eq!(
        tols(plain),
        [
            ("node.kubernetes.io/not-ready".to_owned(), Some(300)),
            ("node.kubernetes.io/unreachable".to_owned(), Some(7)),
        ]
    );
    let own = pods
        .create(
            &PostParams::default(),
            &pod(
                "own",
                json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}]),
            ),
        )
        .await
        .expect("create");
    assert_eq!(
        tols(own),
        [
            ("node.kubernetes.io/unreachable".to_owned(), None),
            ("node.kubernetes.io/not-ready".to_owned(), Some(300)),
        ]
    );
}

#[tokio::test]
async fn restart_keeps_credentials_objects_and_allocations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let kubeconfig_before = std::fs::read_to_string(&s.kubeconfig).expect("kubeconfig");
    let ca_before = s.ca_pem.clone();
    let token_before = s.node_token.clone();
    let svcs: Api<Service> = Api::namespaced(s.client().await, "default");
    let svc: Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    let created = svcs
        .create(&PostParams::default(), &svc)
        .await
        .expect("create svc");
    let ip = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("clusterIP");
    assert!(ip.starts_with("10.43."), "{ip}");
    let np = created
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p[0].node_port)
        .expect("nodePort");
    assert!((30000..=32767).contains(&np));
    s.stop().await;

    let s = TestServer::start_in(dir.path(), |_| {}).await;
    assert_eq!(s.ca_pem, ca_before);
    assert_eq!(s.node_token, token_before);
    let kubeconfig_after = std::fs::read_to_string(&s.kubeconfig).expect("kubeconfig");
    // Same credentials (the port differs between runs).
    let creds = |k: &str| {
        k.lines()
            .filter(|l| l.contains("-data:"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(creds(&kubeconfig_before), creds(&kubeconfig_after));
    let svcs: Api<Service> = Api::namespaced(s.client().await, "default");
    let got = svcs.get("web").await.expect("service survived");
    assert_eq!(got.spec.and_then(|s| s.cluster_ip), Some(ip.clone()));
    // The allocation was rebuilt: asking for the same IP or port is refused.
    let dup: Service = serde_json::from_value(
        json!({"metadata": {"name": "dup"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    let e = api_err(
        svcs.create(&PostParams::default(), &dup)
            .await
            .expect_err("duplicate IP"),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let dup: Service = serde_json::from_value(json!({"metadata": {"name": "dup2"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": np}]}})).expect("svc");
    assert_eq!(
        api_err(
            svcs.create(&PostParams::default(), &dup)
                .await
                .expect_err("duplicate port")
        )
        .code,
        422
    );
    // Released on delete: now the IP can be taken.
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    let again: Service = serde_json::from_value(
        json!({"metadata": {"name": "again"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    svcs.create(&PostParams::default(), &again)
        .await
        .expect("IP released on delete");
    let k: Service = svcs.get("kubernetes").await.expect("kubernetes service");
    assert_eq!(
        k.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.43.0.1")
    );
}

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}}
        }
    }))
    .expect("deployment")
}

#[tokio::test]
async fn workloads_defaults_generation_status_and_scale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = deps
        .create(&PostParams::default(), &deployment("web", "nginx:1.27"))
        .await
        .expect("create");
    let spec = d.spec.clone();
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(
        spec.strategy.and_then(|s| s.type_).as_deref(),
        Some("RollingUpdate")
    );
    let pod_spec = spec.template.spec.expect("pod spec");
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod_spec.dns_policy.as_deref(), Some("ClusterFirst"));
    assert_eq!(
        pod_spec.scheduler_name.as_deref(),
        Some("default-scheduler")
    );
    assert_eq!(pod_spec.termination_grace_period_seconds, Some(30));
    assert_eq!(
        pod_spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );

    // Status writes do not bump the generation; spec writes do.
    let st = deps
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1}})),
        )
        .await
        .expect("status");
    assert_eq!(st.metadata.generation, Some(1));
    assert_eq!(st.status.and_then(|s| s.ready_replicas), Some(1));
    let sp = deps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"minReadySeconds": 5}, "status": {"readyReplicas": 9}})),
        )
        .await
        .expect("spec");
    assert_eq!(sp.metadata.generation, Some(2));
    assert_eq!(
        sp.status.and_then(|s| s.ready_replicas),
        Some(1),
        "main resource must not write status"
    );

    let scale = deps.get_scale("web").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    deps.patch_scale(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("patch scale");
    assert_eq!(deps.get("web").await.expect("get").spec.replicas, Some(5));

    // Selector must match template labels; selector is immutable.
    let mut bad = deployment("bad", "nginx");
    bad.spec.template.metadata =
        Some(serde_json::from_value(json!({"labels": {"app": "other"}})).expect("meta"));
    let e = api_err(
        deps.create(&PostParams::default(), &bad)
            .await
            .expect_err("mismatch"),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message
            .contains("`selector` does not match template `labels`"),
        "{}",
        e.message
    );
    let e = api_err(
        deps.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {"metadata": {"labels": {"app": "x"}}}}})))
            .await
            .expect_err("immutable selector"),
    );
    assert_eq!(e.code, 422);

    // Pods: defaults, binding, and bound pods delete gracefully.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).expect("pod");
    let p = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert_eq!(
        p.spec.expect("spec").containers[0]
            .image_pull_policy
            .as_deref(),
        Some("Always")
    );
    let (code, v) = raw(&client, "POST", "/api/v1/namespaces/default/pods/p/binding", "application/json",
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}})).expect("json")).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        pods.get("p")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.node_name)
            .as_deref(),
        Some("n1")
    );
    let by_node = pods
        .list(&ListParams::default().fields("spec.nodeName=n1"))
        .await
        .expect("list");
    assert_eq!(by_node.items.len(), 1);
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let p = pods.get("p").await.expect("still there, terminating");
    assert!(p.metadata.deletion_timestamp.is_some());
    pods.delete(
        "p",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .expect("force");
    let _ = pods.get("p").await;
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    let mut c = cm("fin", json!({}));
    c.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &c)
        .await
        .expect("create");
    cms.delete("fin", &DeleteParams::default())
        .await
        .expect("delete");
    let held = cms.get("fin").await.expect("held by finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    cms.patch(
        "fin",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    assert_eq!(api_err(cms.get("fin").await.expect_err("gone")).code, 404);
}

#[tokio::test]
async fn server_side_apply_owns_fields_and_reports_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let deps: Api<Deployment> = Api::namespaced(s.client().await, "default");
    let d = deps
        .patch(
            "ssa",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment("ssa", "nginx:1")),
        )
        .await
        .expect("apply create");
    let mf = d.metadata.managed_fields.expect("managedFields");
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    // bob applies a different replicas: conflict naming alice.
    let mut other = deployment("ssa", "nginx:1");
    other.spec.replicas = Some(7);
    let e = api_err(
        deps.patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(&other))
            .await
            .expect_err("conflict"),
    );
    assert_eq!(e.code, 409);
    assert!(
        e.message.contains("conflict with \"alice\""),
        "{}",
        e.message
    );
    assert!(e.message.contains(".spec.replicas"), "{}", e.message);
    let forced = deps
        .patch(
            "ssa",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("force");
    assert_eq!(forced.spec.replicas, Some(7));
    // Re-applying with a changed image by alice works (alice still owns it).
    let d = deps
        .patch(
            "ssa",
            &PatchParams::apply("alice"),
            &Patch::Apply(deployment("ssa", "nginx:2")),
        )
        .await;
    let e = api_err(d.expect_err("alice lost replicas to bob"));
    assert_eq!(e.code, 409);
    let mut v2 = serde_json::to_value(deployment("ssa", "nginx:2")).expect("json");
    v2["spec"].as_object_mut().expect("spec").remove("replicas");
    // bob applied the same image too, so he co-owns it: changing it conflicts with him.
    let e = api_err(
        deps.patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(&v2))
            .await
            .expect_err("co-owned image"),
    );
    assert!(e.message.contains("conflict with \"bob\""), "{}", e.message);
    assert!(
        e.message
            .contains(".spec.template.spec.containers[name=\"c\"].image"),
        "{}",
        e.message
    );
    let d = deps
        .patch(
            "ssa",
            &PatchParams::apply("alice").force(),
            &Patch::Apply(&v2),
        )
        .await
        .expect("alice forces the image, no longer applies replicas");
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(7));
    assert_eq!(
        spec.template.spec.expect("pod").containers[0]
            .image
            .as_deref(),
        Some("nginx:2")
    );
}

#[tokio::test]
async fn discovery_serves_the_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut found = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            found.push(format!("{}/{}", ar.group, ar.plural));
            if ar.plural == "deployments" {
                assert!(
                    caps.subresources
                        .iter()
                        .any(|(s, _)| s.plural == "deployments/scale" || s.plural == "scale"),
                    "{:?}",
                    caps.subresources
                );
            }
        }
    }
    for want in [
        "/pods",
        "/namespaces",
        "apps/deployments",
        "batch/jobs",
        "discovery.k8s.io/endpointslices",
        "networking.k8s.io/networkpolicies",
        "coordination.k8s.io/leases",
        "rbac.authorization.k8s.io/clusterroles",
    ] {
        assert!(
            found.iter().any(|f| f == want),
            "{want} missing from {found:?}"
        );
    }
    // Aggregated discovery when asked for it.
    let req = http::Request::builder()
        .uri("/apis")
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(Vec::new())
        .expect("req");
    let v: serde_json::Value = client.request(req).await.expect("aggregated");
    assert_eq!(v["kind"], "APIGroupDiscoveryList");
    let apps = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .expect("apps");
    assert_eq!(apps["versions"][0]["version"], "v1");
}

#[tokio::test]
async fn expired_continue_token_is_410() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(s.client().await, "default");
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("e{i}"), json!({})))
            .await
            .expect("create");
    }
    let page = cms
        .list(&ListParams::default().limit(2))
        .await
        .expect("first page");
    let token = page.metadata.continue_.expect("continue token");
    // Newer writes, then compaction past the first page's snapshot.
    cms.create(&PostParams::default(), &cm("later", json!({})))
        .await
        .expect("create");
    let rev = s.store.current_revision().await.expect("revision");
    s.store.compact(rev).await.expect("compact");
    let e = api_err(
        cms.list(&ListParams::default().limit(2).continue_token(&token))
            .await
            .expect_err("expired"),
    );
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    assert!(
        e.message
            .starts_with("The provided continue parameter is too old"),
        "{}",
        e.message
    );
    // A fresh list still works.
    assert_eq!(
        cms.list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        6
    );
}

/// The cluster DNS Service is in place after start (10th address, no
/// selector, node-local), survives a user's change across a restart, and
/// the static band keeps dynamically allocated ClusterIPs away from it.
#[tokio::test]
async fn kube_dns_service_and_the_static_band() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let system: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let dns = system.get("kube-dns").await.expect("kube-dns service");
    let labels = dns.metadata.labels.clone().unwrap_or_default();
    for (k, v) in [
        ("k8s-app", "kube-dns"),
        ("kubernetes.io/cluster-service", "true"),
        ("kubernetes.io/name", "KubeDNS"),
    ] {
        assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
    }
    let spec = dns.spec.clone().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.0.10"));
    assert_eq!(spec.cluster_ips, Some(vec!["10.43.0.10".to_owned()]));
    assert_eq!(spec.selector.unwrap_or_default().len(), 0);
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"));
    let ports: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_default(),
                p.target_port.clone(),
            )
        })
        .collect();
    let fifty_three = Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53));
    assert_eq!(
        ports,
        vec![
            ("dns".to_owned(), 53, "UDP".to_owned(), fifty_three.clone()),
            ("dns-tcp".to_owned(), 53, "TCP".to_owned(), fifty_three),
        ]
    );

    // 300 dynamic allocations of a /16 never enter the static band
    // (10.43.0.1-10.43.1.0) while the rest has room.
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let ips: Vec<String> = futures::stream::iter(0..300)
        .map(|i| {
            let svcs = svcs.clone();
            async move {
                let svc: Service = serde_json::from_value(
                    json!({"metadata": {"name": format!("burst-{i}")}, "spec": {"ports": [{"port": 80}]}}),
                )
                .expect("svc");
                let made = svcs
                    .create(&PostParams::default(), &svc)
                    .await
                    .expect("create");
                made.spec.and_then(|s| s.cluster_ip).expect("clusterIP")
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 300);
    for ip in &ips {
        let a: std::net::Ipv4Addr = ip.parse().expect("ipv4");
        let off = u32::from(a) - u32::from(std::net::Ipv4Addr::new(10, 43, 0, 0));
        assert!(
            (257..65535).contains(&off),
            "{ip} was allocated from the static band"
        );
    }

    // A user's change to kube-dns is kept across a restart.
    system
        .patch(
            "kube-dns",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"mine": "yes"}}})),
        )
        .await
        .expect("label kube-dns");
    s.stop().await;
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let system: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    let dns = system.get("kube-dns").await.expect("kube-dns kept");
    assert_eq!(
        dns.metadata
            .labels
            .unwrap_or_default()
            .get("mine")
            .map(String::as_str),
        Some("yes")
    );

    // An old store where a user's Service holds the address: the server
    // still starts, without kube-dns, and the user's Service keeps it.
    system
        .delete("kube-dns", &DeleteParams::default())
        .await
        .expect("delete kube-dns");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let squatter: Service = serde_json::from_value(
        json!({"metadata": {"name": "squatter"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    svcs.create(&PostParams::default(), &squatter)
        .await
        .expect("a static claim of .10");
    s.stop().await;
    let s = TestServer::start_in(dir.path(), |_| {}).await;
    let client = s.client().await;
    let system: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    assert!(system.get_opt("kube-dns").await.expect("get").is_none());
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let got = svcs.get("squatter").await.expect("squatter");
    assert_eq!(
        got.spec.and_then(|s| s.cluster_ip).as_deref(),
        Some("10.43.0.10")
    );
}
