//! The audit log: a policy with Metadata for secrets, RequestResponse for
//! configmaps and None for everything else, requests as the admin, as an
//! impersonated user and as a user RBAC refuses, and the JSON lines they
//! leave.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kestrel_apiserver::testing::{TestServer, request};
use kestrel_testkit::eventually;
use serde_json::{Value, json};

const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
  resources:
  - group: ""
    resources: ["secrets"]
- level: RequestResponse
  resources:
  - group: ""
    resources: ["configmaps"]
- level: None
"#;

/// The log's events, once `done` says they are all there.
async fn events(log: &Path, done: impl Fn(&[Value]) -> bool) -> (String, Vec<Value>) {
    eventually(Duration::from_secs(10), "the audit events", || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let evs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        done(&evs).then_some((text, evs))
    })
    .await
}

/// Every stage's event of the request whose last event is `verb` on
/// `resource` named `name` (a create's first event has no name yet: it
/// comes from the body, as upstream).
fn of<'a>(evs: &'a [Value], verb: &str, resource: &str, name: &str) -> Vec<&'a Value> {
    let last = evs
        .iter()
        .find(|e| {
            e["stage"] == "ResponseComplete"
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["objectRef"]["name"].as_str().unwrap_or("") == name
        })
        .unwrap_or_else(|| panic!("no event for {verb} {resource} {name}"));
    evs.iter()
        .filter(|e| e["auditID"] == last["auditID"])
        .collect()
}

fn stages(evs: &[&Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["stage"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn is_micro_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    // 2006-01-02T15:04:05.000000Z
    s.len() == 27 && s.ends_with('Z') && s.as_bytes()[19] == b'.' && s.as_bytes()[10] == b'T'
}

#[tokio::test]
async fn events_follow_the_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("logs/audit.log");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("policy");
    let s = TestServer::start_in(dir.path(), |c| {
        c.audit_log_path = Some(log.clone());
        c.audit_policy_file = Some(policy.clone());
    })
    .await;
    let admin = s.client().await;
    let secret = "aHVudGVyMg=="; // hunter2
    let (code, out) = request(
        &admin,
        "POST",
        "/api/v1/namespaces/default/secrets",
        Some(json!({"metadata": {"name": "s1"}, "data": {"password": secret}})),
    )
    .await;
    assert_eq!(code, 201, "{out}");
    let (code, _) = request(&admin, "GET", "/api/v1/namespaces/default/secrets/s1", None).await;
    assert_eq!(code, 200);
    let (code, out) = request(
        &admin,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(json!({"metadata": {"name": "c1"}, "data": {"k": "v"}})),
    )
    .await;
    assert_eq!(code, 201, "{out}");
    // Not audited (None): namespaces.
    let (code, _) = request(&admin, "GET", "/api/v1/namespaces/default", None).await;
    assert_eq!(code, 200);
    // Refused by RBAC.
    let eve = s.user_client("eve", &["team"]).await;
    let (code, _) = request(&eve, "GET", "/api/v1/namespaces/default/secrets", None).await;
    assert_eq!(code, 403);
    // Impersonation: the admin acting as bob, who may not read configmaps.
    let req = http::Request::builder()
        .method("GET")
        .uri("/api/v1/namespaces/default/configmaps/c1")
        .header("impersonate-user", "bob")
        .header("audit-id", "my-audit-id")
        .body(Vec::new())
        .expect("request");
    let resp = admin
        .send(req.map(kube::client::Body::from))
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 403);
    assert_eq!(
        resp.headers().get("audit-id").and_then(|v| v.to_str().ok()),
        Some("my-audit-id")
    );

    let (text, evs) = events(&log, |evs| {
        evs.iter()
            .any(|e| e["auditID"] == "my-audit-id" && e["stage"] == "ResponseComplete")
    })
    .await;
    assert!(
        !text.contains(secret) && !text.contains("hunter2"),
        "{text}"
    );
    for e in &evs {
        assert_eq!(
            (&e["kind"], &e["apiVersion"]),
            (&json!("Event"), &json!("audit.k8s.io/v1"))
        );
        assert!(is_micro_time(&e["requestReceivedTimestamp"]), "{e}");
        assert!(is_micro_time(&e["stageTimestamp"]), "{e}");
        assert_ne!(e["objectRef"]["resource"], "namespaces", "None level: {e}");
        assert_eq!(e["sourceIPs"], json!(["127.0.0.1"]), "{e}");
    }

    // Secrets at Metadata: who, what, outcome, no bodies.
    let create = of(&evs, "create", "secrets", "s1");
    assert_eq!(stages(&create), ["RequestReceived", "ResponseComplete"]);
    assert_eq!(create[0]["auditID"], create[1]["auditID"]);
    let done = create[1];
    assert_eq!(done["level"], "Metadata");
    assert_eq!(done["requestURI"], "/api/v1/namespaces/default/secrets");
    assert_eq!(done["user"]["username"], "admin");
    assert_eq!(
        done["objectRef"],
        json!({"resource": "secrets", "namespace": "default", "name": "s1", "apiVersion": "v1"})
    );
    assert_eq!(done["responseStatus"], json!({"metadata": {}, "code": 201}));
    assert_eq!(
        done["annotations"]["authorization.k8s.io/decision"],
        "allow"
    );
    assert!(done.get("requestObject").is_none() && done.get("responseObject").is_none());
    assert!(create[0].get("responseStatus").is_none());
    assert!(create[0]["objectRef"].get("name").is_none());
    assert!(create[0].get("annotations").is_none());
    let get = of(&evs, "get", "secrets", "s1");
    assert_eq!(stages(&get), ["RequestReceived", "ResponseComplete"]);
    assert_eq!(get[1]["responseStatus"]["code"], 200);

    // ConfigMaps at RequestResponse: both bodies.
    let create = of(&evs, "create", "configmaps", "c1");
    assert_eq!(stages(&create), ["RequestReceived", "ResponseComplete"]);
    let done = create[1];
    assert_eq!(done["level"], "RequestResponse");
    assert_eq!(done["requestObject"]["data"]["k"], "v");
    assert_eq!(done["responseObject"]["metadata"]["name"], "c1");
    assert!(done["responseObject"]["metadata"]["uid"].is_string());
    assert_eq!(done["responseStatus"]["code"], 201);

    // A refusal: 403, upstream's Status fields, decision forbid.
    let list = of(&evs, "list", "secrets", "");
    assert_eq!(stages(&list), ["RequestReceived", "ResponseComplete"]);
    let done = list[1];
    assert_eq!(done["user"]["username"], "eve");
    assert!(
        done["user"]["groups"]
            .as_array()
            .expect("groups")
            .contains(&json!("team"))
    );
    assert_eq!(
        done["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    let st = &done["responseStatus"];
    assert_eq!(
        (&st["code"], &st["status"], &st["reason"]),
        (&json!(403), &json!("Failure"), &json!("Forbidden"))
    );
    assert_eq!(
        st["message"],
        "secrets is forbidden: User \"eve\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(st["metadata"], json!({}));

    // Impersonation: the event names both users.
    let imp: Vec<&Value> = evs
        .iter()
        .filter(|e| e["auditID"] == "my-audit-id")
        .collect();
    assert_eq!(stages(&imp), ["RequestReceived", "ResponseComplete"]);
    assert_eq!(imp[1]["user"]["username"], "admin");
    assert_eq!(imp[1]["impersonatedUser"]["username"], "bob");
    assert!(imp[0].get("impersonatedUser").is_none());
    assert_eq!(
        imp[1]["annotations"]["authorization.k8s.io/decision"],
        "forbid"
    );
    assert_eq!(imp[1]["responseStatus"]["code"], 403);
    // The request was GET with no body: nothing to record.
    assert!(imp[1].get("requestObject").is_none());
    assert!(
        imp[1]["responseObject"]["message"].is_string(),
        "{}",
        imp[1]
    );
}

#[tokio::test]
async fn watches_and_failed_authentication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.log");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata"}]}"#,
    )
    .expect("policy");
    let s = TestServer::start_in(dir.path(), |c| {
        c.audit_log_path = Some(log.clone());
        c.audit_policy_file = Some(policy.clone());
    })
    .await;
    let admin = s.client().await;
    // A watch that ends after its timeout: started, then completed.
    let (code, _) = request(
        &admin,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1",
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = request(&s.with_token("not-a-token"), "GET", "/api/v1/pods", None).await;
    assert_eq!(code, 401);
    let (_, evs) = events(&log, |evs| {
        evs.iter()
            .any(|e| e["verb"] == "watch" && e["stage"] == "ResponseComplete")
            && evs.iter().any(|e| e["responseStatus"]["code"] == 401)
    })
    .await;
    assert!(!evs.iter().any(|e| e["stage"] == "RequestReceived"));
    let watch: Vec<&Value> = evs.iter().filter(|e| e["verb"] == "watch").collect();
    assert_eq!(stages(&watch), ["ResponseStarted", "ResponseComplete"]);
    assert_eq!(watch[0]["auditID"], watch[1]["auditID"]);
    let denied: Vec<&Value> = evs
        .iter()
        .filter(|e| e["responseStatus"]["code"] == 401)
        .collect();
    assert_eq!(stages(&denied), ["ResponseStarted"]);
    assert_eq!(denied[0]["user"], json!({}));
    assert_eq!(denied[0]["verb"], "list");
    assert!(denied[0].get("annotations").is_none());
}

#[tokio::test]
async fn a_bad_policy_stops_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Loud\n",
    )
    .expect("policy");
    let store = kestrel_store::sqlite::SqliteStore::open(kestrel_store::sqlite::SqliteConfig::new(
        dir.path().join("state.db"),
    ))
    .await
    .expect("store");
    let mut cfg = kestrel_apiserver::Config::new(dir.path());
    cfg.bind_address = "127.0.0.1".parse().expect("ip");
    cfg.secure_port = 0;
    cfg.audit_log_path = Some(dir.path().join("audit.log"));
    cfg.audit_policy_file = Some(policy.clone());
    let err = kestrel_apiserver::ApiServer::bind(Arc::new(store), cfg)
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("--audit-policy-file {}", policy.display()))
            && msg.contains("rules[0].level: Unsupported value: \"Loud\""),
        "{msg}"
    );
}
