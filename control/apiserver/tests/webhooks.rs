//! Admission webhooks against a webhook server the test runs itself: HTTPS
//! on 127.0.0.1 with a certificate from a test CA (its `caBundle`), with
//! handlers that deny, mutate with a JSON patch, sleep past the timeout,
//! warn, and refuse deletes. kube-rs drives most cases; the raw `Warning`
//! header and the real kubectl cover what kube-rs does not show.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ConfigMap;
use kestrel_apiserver::testing::{TestServer, request};
use kestrel_testkit::kubectl::Kubectl;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};

/// What the webhook server saw: (path, AdmissionReview request).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// The test's webhook server.
struct Hooks {
    port: u16,
    ca_b64: String,
    seen: Seen,
}

impl Hooks {
    async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        // The address for `url`, the Service's DNS name for `service`.
        let params = rcgen::CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "hook.hooks.svc".to_owned(),
        ])
        .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| answer(log.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            ca_b64: base64::engine::general_purpose::STANDARD.encode(ca_cert.pem()),
            seen,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// `clientConfig` for `path` by URL.
    fn at(&self, path: &str) -> Value {
        json!({"url": self.url(path), "caBundle": self.ca_b64})
    }

    /// The reviews `path` received.
    fn seen(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// One webhook's answer, by path.
async fn answer(
    seen: Seen,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let timeout = req.uri().query().unwrap_or("").to_owned();
    let body = req.into_body().collect().await.expect("body").to_bytes();
    let review: Value = serde_json::from_slice(&body).expect("an AdmissionReview");
    let r = review["request"].clone();
    seen.lock()
        .expect("lock")
        .push((path.clone(), json!({"query": timeout, "request": r})));
    let mut resp = json!({"uid": r["uid"], "allowed": true});
    match path.as_str() {
        "/deny" => {
            resp["allowed"] = json!(false);
            resp["status"] = json!({"code": 403, "message": "forbidden by policy"});
        }
        "/mutate" => {
            let patch = if r["object"]["metadata"]["labels"].is_object() {
                json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
            };
            resp["patchType"] = json!("JSONPatch");
            resp["patch"] =
                json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
        }
        "/sleep" => tokio::time::sleep(Duration::from_secs(3)).await,
        "/warn" => resp["warnings"] = json!(["careful: this is a test"]),
        "/deny-delete" if r["operation"] == "DELETE" => {
            resp["allowed"] = json!(false);
            resp["status"] = json!({"code": 403, "message": "deletes are not allowed here"});
        }
        _ => {}
    }
    let out =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp});
    let mut reply = hyper::Response::new(Full::new(Bytes::from(out.to_string())));
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(reply)
}

/// A webhook on `operations` of ConfigMaps in namespaces labelled
/// `case=<case>`, at `client_config`.
fn webhook(name: &str, case: &str, operations: &[&str], client_config: Value) -> Value {
    json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{"operations": operations, "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
        "namespaceSelector": {"matchLabels": {"case": case}},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    })
}

async fn create(client: &kube::Client, path: &str, body: Value) {
    let (code, out) = request(client, "POST", path, Some(body)).await;
    assert_eq!(code, 201, "POST {path}: {out}");
}

async fn configure(client: &kube::Client, kind: &str, name: &str, webhooks: Vec<Value>) {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    create(
        client,
        &format!("/apis/admissionregistration.k8s.io/v1/{plural}"),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": webhooks}),
    )
    .await;
}

/// `deny.kestrel.test`, refusing creates of ConfigMaps in `case` namespaces.
async fn configure_deny(client: &kube::Client, hooks: &Hooks, case: &str) {
    let hook = webhook("deny.kestrel.test", case, &["CREATE"], hooks.at("/deny"));
    configure(client, "ValidatingWebhookConfiguration", "deny", vec![hook]).await;
}

async fn namespace(client: &kube::Client, name: &str, case: &str) {
    create(
        client,
        "/api/v1/namespaces",
        json!({"metadata": {"name": name, "labels": {"case": case}}}),
    )
    .await;
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

async fn start(dir: &Path) -> (TestServer, kube::Client, Hooks) {
    let s = TestServer::start_in(dir, |_| {}).await;
    let client = s.client().await;
    (s, client, Hooks::start().await)
}

#[tokio::test]
async fn denials_mutations_and_selectors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s, client, hooks) = start(dir.path()).await;
    namespace(&client, "deny-ns", "deny").await;
    namespace(&client, "mutate-ns", "mutate").await;
    configure_deny(&client, &hooks, "deny").await;
    // The mutating webhook is reached through a Service, resolved to its
    // EndpointSlice's ready address (the API server does not use ClusterIPs).
    namespace(&client, "hooks", "none").await;
    create(
        &client,
        "/api/v1/namespaces/hooks/services",
        json!({"metadata": {"name": "hook"}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": hooks.port}]}}),
    )
    .await;
    create(
        &client,
        "/apis/discovery.k8s.io/v1/namespaces/hooks/endpointslices",
        json!({
            "metadata": {"name": "hook-1", "labels": {"kubernetes.io/service-name": "hook"}},
            "addressType": "IPv4",
            "ports": [{"name": "https", "port": hooks.port, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["127.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["127.0.0.1"], "conditions": {"ready": true}},
            ],
        }),
    )
    .await;
    let mut mutate = webhook(
        "mutate.kestrel.test",
        "mutate",
        &["CREATE", "UPDATE"],
        json!({"service": {"namespace": "hooks", "name": "hook", "path": "/mutate"}, "caBundle": hooks.ca_b64}),
    );
    mutate["objectSelector"] = json!({"matchLabels": {"mutate": "please"}});
    configure(
        &client,
        "MutatingWebhookConfiguration",
        "mutate",
        vec![mutate],
    )
    .await;

    // The configuration got upstream's defaults.
    let (_, cfg) = request(
        &client,
        "GET",
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mutate",
        None,
    )
    .await;
    let w = &cfg["webhooks"][0];
    assert_eq!(
        (
            &w["failurePolicy"],
            &w["timeoutSeconds"],
            &w["reinvocationPolicy"]
        ),
        (&json!("Fail"), &json!(10), &json!("Never")),
        "{cfg}"
    );
    assert_eq!(w["clientConfig"]["service"]["port"], 443);

    // Denied: upstream's message, the webhook's code, nothing stored.
    let (code, out) = request(
        &client,
        "POST",
        "/api/v1/namespaces/deny-ns/configmaps",
        Some(cm("refused", json!({}))),
    )
    .await;
    assert_eq!(code, 403, "{out}");
    assert_eq!(
        out["message"],
        "admission webhook \"deny.kestrel.test\" denied the request: forbidden by policy"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "deny-ns");
    assert!(cms.get_opt("refused").await.expect("get").is_none());
    let seen = hooks.seen("/deny");
    assert_eq!(seen.len(), 1);
    let r = &seen[0]["request"];
    assert_eq!(seen[0]["query"], "timeout=10s");
    assert_eq!(
        (&r["operation"], &r["namespace"], &r["name"]),
        (&json!("CREATE"), &json!("deny-ns"), &json!("refused"))
    );
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(r["resource"]["resource"], "configmaps");
    assert_eq!(r["userInfo"]["username"], "admin");
    assert!(
        r["userInfo"]["groups"]
            .as_array()
            .expect("groups")
            .contains(&json!("system:masters")),
        "{r}"
    );
    assert_eq!(r["object"]["data"]["k"], "v");
    assert!(r["oldObject"].is_null());

    // The namespaceSelector leaves other namespaces alone.
    create(
        &client,
        "/api/v1/namespaces/default/configmaps",
        cm("fine", json!({})),
    )
    .await;
    assert_eq!(hooks.seen("/deny").len(), 1);

    // Mutated through the Service; the objectSelector picks the object.
    let mutate_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "mutate-ns");
    create(
        &client,
        "/api/v1/namespaces/mutate-ns/configmaps",
        cm("picked", json!({"mutate": "please"})),
    )
    .await;
    let stored = mutate_ns.get("picked").await.expect("stored");
    let labels = stored.metadata.labels.unwrap_or_default();
    assert_eq!(labels.get("mutated").map(String::as_str), Some("yes"));
    assert_eq!(hooks.seen("/mutate").len(), 1);
    create(
        &client,
        "/api/v1/namespaces/mutate-ns/configmaps",
        cm("skipped", json!({"other": "x"})),
    )
    .await;
    let stored = mutate_ns.get("skipped").await.expect("stored");
    assert!(
        !stored
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("mutated")
    );
    assert_eq!(
        hooks.seen("/mutate").len(),
        1,
        "the objectSelector excludes it"
    );
    // An update is judged by the old object too: dropping the label still
    // reaches the webhook, which puts `mutated` back.
    let (code, out) = request(
        &client,
        "PUT",
        "/api/v1/namespaces/mutate-ns/configmaps/picked",
        Some(cm("picked", json!({"kept": "1"}))),
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["metadata"]["labels"]["mutated"], "yes", "{out}");
    let r = &hooks.seen("/mutate")[1]["request"];
    assert_eq!(r["operation"], "UPDATE");
    assert_eq!(r["oldObject"]["metadata"]["labels"]["mutate"], "please");

    // Removing the configuration is never sent to webhooks.
    let (code, out) = request(
        &client,
        "DELETE",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/deny",
        None,
    )
    .await;
    assert_eq!(code, 200, "{out}");
    create(
        &client,
        "/api/v1/namespaces/deny-ns/configmaps",
        cm("now-fine", json!({})),
    )
    .await;
}

#[tokio::test]
async fn timeouts_follow_the_failure_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s, client, hooks) = start(dir.path()).await;
    namespace(&client, "ignore-ns", "ignore").await;
    namespace(&client, "fail-ns", "fail").await;
    let sleepy = |name: &str, case: &str, policy: &str| {
        let mut w = webhook(name, case, &["CREATE"], hooks.at("/sleep"));
        w["timeoutSeconds"] = json!(1);
        w["failurePolicy"] = json!(policy);
        w
    };
    configure(
        &client,
        "ValidatingWebhookConfiguration",
        "sleepy",
        vec![
            sleepy("ignore.kestrel.test", "ignore", "Ignore"),
            sleepy("fail.kestrel.test", "fail", "Fail"),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    create(
        &client,
        "/api/v1/namespaces/ignore-ns/configmaps",
        cm("a", json!({})),
    )
    .await;
    let (code, out) = request(
        &client,
        "POST",
        "/api/v1/namespaces/fail-ns/configmaps",
        Some(cm("b", json!({}))),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout is 1s"
    );
    assert_eq!(code, 500, "{out}");
    let msg = out["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("Internal error occurred: failed calling webhook \"fail.kestrel.test\": failed to call webhook: Post \"https://127.0.0.1:"),
        "{msg}"
    );
    assert!(
        msg.ends_with("/sleep?timeout=1s\": context deadline exceeded"),
        "{msg}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "fail-ns");
    assert!(cms.get_opt("b").await.expect("get").is_none());

    // An unreachable webhook is a call failure too.
    let mut down = webhook(
        "down.kestrel.test",
        "ignore",
        &["UPDATE"],
        json!({"url": "https://127.0.0.1:1/", "caBundle": hooks.ca_b64}),
    );
    down["failurePolicy"] = json!("Fail");
    configure(
        &client,
        "ValidatingWebhookConfiguration",
        "down",
        vec![down],
    )
    .await;
    let (code, out) = request(
        &client,
        "PUT",
        "/api/v1/namespaces/ignore-ns/configmaps/a",
        Some(cm("a", json!({"x": "y"}))),
    )
    .await;
    assert_eq!(code, 500, "{out}");
    let msg = out["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("Internal error occurred: failed calling webhook \"down.kestrel.test\": failed to call webhook: Post \"https://127.0.0.1:1/?timeout=10s\": dial tcp 127.0.0.1:1: "),
        "{msg}"
    );
    // A dry run reaches a webhook without side effects, marked as such.
    let (code, out) = request(
        &client,
        "POST",
        "/api/v1/namespaces/ignore-ns/configmaps?dryRun=All",
        Some(cm("dry", json!({}))),
    )
    .await;
    assert_eq!(code, 201, "{out}");
    let dry = hooks.seen("/sleep");
    assert_eq!(dry.last().expect("called")["request"]["dryRun"], true);
}

#[tokio::test]
async fn deletes_and_warnings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (s, client, hooks) = start(dir.path()).await;
    namespace(&client, "delete-ns", "delete").await;
    namespace(&client, "warn-ns", "warn").await;
    configure(
        &client,
        "ValidatingWebhookConfiguration",
        "checks",
        vec![
            webhook(
                "delete.kestrel.test",
                "delete",
                &["DELETE"],
                hooks.at("/deny-delete"),
            ),
            webhook("warn.kestrel.test", "warn", &["*"], hooks.at("/warn")),
        ],
    )
    .await;
    // Creates are not in the DELETE webhook's rules.
    create(
        &client,
        "/api/v1/namespaces/delete-ns/configmaps",
        cm("kept", json!({})),
    )
    .await;
    assert!(hooks.seen("/deny-delete").is_empty());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "delete-ns");
    let err = cms
        .delete("kept", &DeleteParams::default())
        .await
        .expect_err("refused");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}");
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "admission webhook \"delete.kestrel.test\" denied the request: deletes are not allowed here"
    );
    assert!(cms.get_opt("kept").await.expect("get").is_some());
    let r = &hooks.seen("/deny-delete")[0]["request"];
    assert_eq!(
        (&r["operation"], &r["name"]),
        (&json!("DELETE"), &json!("kept"))
    );
    assert!(r["object"].is_null());
    assert_eq!(r["oldObject"]["metadata"]["name"], "kept");
    assert_eq!(r["options"]["kind"], "DeleteOptions");

    // Warnings reach the client as `Warning: 299` headers.
    let req = http::Request::builder()
        .method("POST")
        .uri("/api/v1/namespaces/warn-ns/configmaps")
        .header("content-type", "application/json")
        .body(cm("warned", json!({})).to_string().into_bytes())
        .expect("request");
    let resp = client
        .send(req.map(kube::client::Body::from))
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 201);
    let warnings: Vec<&str> = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(warnings, ["299 - \"careful: this is a test\""]);

    // The real kubectl shows the warning, and a denial.
    let kubectl = Kubectl::new(dir.path(), s.kubeconfig.clone());
    let yaml = |ns: &str, name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  k: v\n"
        )
    };
    let out = kubectl.apply(&yaml("warn-ns", "by-kubectl")).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("Warning: careful: this is a test"),
        "{}",
        out.stderr
    );

    configure_deny(&client, &hooks, "warn").await;
    let out = kubectl.apply(&yaml("warn-ns", "denied")).await;
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains(
            "admission webhook \"deny.kestrel.test\" denied the request: forbidden by policy"
        ),
        "{}",
        out.stderr
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "warn-ns");
    assert!(cms.get_opt("denied").await.expect("get").is_none());
}

#[tokio::test]
async fn configurations_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s, client, hooks) = start(dir.path()).await;
    let mut bad = webhook(
        "short",
        "x",
        &["CREATE"],
        json!({"url": "http://127.0.0.1/"}),
    );
    bad["sideEffects"] = json!("Unknown");
    bad["timeoutSeconds"] = json!(31);
    let (code, out) = request(
        &client,
        "POST",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        Some(json!({"metadata": {"name": "bad"}, "webhooks": [bad]})),
    )
    .await;
    assert_eq!(code, 422, "{out}");
    let msg = out["message"].as_str().unwrap_or_default();
    for part in [
        "webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots",
        "webhooks[0].sideEffects: Unsupported value: \"Unknown\"",
        "webhooks[0].timeoutSeconds: Invalid value: \"31\": the timeout value must be between 1 and 30 seconds",
        "webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1/\": 'https' is the only allowed URL scheme",
    ] {
        assert!(msg.contains(part), "{part} in {msg}");
    }
    // A valid one is stored and listed.
    configure(
        &client,
        "ValidatingWebhookConfiguration",
        "ok",
        vec![webhook(
            "ok.kestrel.test",
            "x",
            &["CREATE"],
            json!({"url": hooks.url("/")}),
        )],
    )
    .await;
    let (code, list) = request(
        &client,
        "GET",
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
        None,
    )
    .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
}
