//! ServiceAccount tokens end to end against the in-process server: the
//! TokenRequest API, bearer JWT authentication, OIDC discovery, the pod
//! admission plugin and `kubectl create token`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kestrel_apiserver::serviceaccount::token::{self, BoundClaims, ObjectRef};
use kestrel_apiserver::serviceaccount::{self, SigningKey};
use kestrel_apiserver::testing::{TestServer, request};
use kestrel_testkit::{eventually, kubectl_path};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object")
}

async fn server() -> (tempfile::TempDir, TestServer, kube::Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = TestServer::start_with_admission(dir.path(), |_| {}).await;
    let admin = s.client().await;
    (dir, s, admin)
}

async fn create_sa(admin: &kube::Client, ns: &str, name: &str, extra: Value) -> ServiceAccount {
    let mut v = json!({"metadata": {"name": name}});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &obj(v))
        .await
        .expect("create the ServiceAccount")
}

fn pod_json(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

async fn create_pod(admin: &kube::Client, ns: &str, name: &str, spec: Value) -> Pod {
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &obj(pod_json(name, spec)))
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"))
}

/// POST serviceaccounts/NAME/token.
async fn token_request(client: &kube::Client, ns: &str, sa: &str, spec: Value) -> (u16, Value) {
    request(
        client,
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"),
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
        ),
    )
    .await
}

async fn new_token(client: &kube::Client, ns: &str, sa: &str, spec: Value) -> String {
    let (code, v) = token_request(client, ns, sa, spec).await;
    assert_eq!(code, 201, "{v}");
    v["status"]["token"].as_str().expect("token").to_owned()
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("json")
}

/// Who the server says a token is: `status.userInfo` of a SelfSubjectReview
/// (which every authenticated user may create). `None` when the server
/// answers 401.
async fn whoami(s: &TestServer, token: &str) -> Option<Value> {
    let (code, v) = request(
        &s.with_token(token),
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
    )
    .await;
    match code {
        401 => None,
        201 | 200 => Some(v["status"]["userInfo"].clone()),
        // Without the review API: a request that is authenticated gets 200
        // or 403, and a 403 names the user.
        404 => {
            let (code, v) = request(
                &s.with_token(token),
                "GET",
                "/api/v1/namespaces/default/pods",
                None,
            )
            .await;
            match code {
                401 => None,
                200 => Some(json!({})),
                403 => Some(json!({"message": v["message"]})),
                other => panic!("unexpected {other}: {v}"),
            }
        }
        other => panic!("selfsubjectreviews: unexpected {other}: {v}"),
    }
}

#[tokio::test]
async fn token_request_issues_upstreams_claims_and_authenticates() {
    let (_dir, s, admin) = server().await;
    let sa = create_sa(&admin, "default", "robot", json!({})).await;
    let sa_uid = sa.metadata.uid.clone().expect("uid");
    let before = jiff::Timestamp::now().as_second();
    let (code, v) = token_request(&admin, "default", "robot", json!({})).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["kind"], "TokenRequest");
    assert_eq!(v["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(v["metadata"]["name"], "robot");
    assert_eq!(v["metadata"]["namespace"], "default");
    assert_eq!(v["spec"]["expirationSeconds"], 3600);
    assert_eq!(v["spec"]["audiences"], json!([token::ISSUER]));
    let t = v["status"]["token"].as_str().expect("token");
    let exp_ts: jiff::Timestamp = v["status"]["expirationTimestamp"]
        .as_str()
        .expect("expirationTimestamp")
        .parse()
        .expect("RFC 3339");

    let header = part(t, 0);
    assert_eq!(header["alg"], "ES256");
    let c = part(t, 1);
    assert_eq!(c["iss"], token::ISSUER);
    assert_eq!(c["sub"], "system:serviceaccount:default:robot");
    assert_eq!(c["aud"], json!([token::ISSUER]));
    let (iat, exp) = (
        c["iat"].as_i64().expect("iat"),
        c["exp"].as_i64().expect("exp"),
    );
    assert_eq!(exp - iat, 3600);
    assert_eq!(c["nbf"], c["iat"]);
    assert!(iat >= before - 1 && iat <= before + 5, "{iat} vs {before}");
    assert_eq!(
        exp_ts.as_second(),
        exp,
        "status.expirationTimestamp is the token's exp"
    );
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        c["kubernetes.io"],
        json!({"namespace": "default", "serviceaccount": {"name": "robot", "uid": sa_uid}})
    );

    // The token is a credential: the server knows who it is.
    let me = whoami(&s, t).await.expect("the token authenticates");
    if let Some(name) = me.get("username") {
        assert_eq!(name, "system:serviceaccount:default:robot");
        assert_eq!(me["uid"], sa_uid);
        let groups: Vec<&str> = me["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for g in [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated",
        ] {
            assert!(groups.contains(&g), "{groups:?}");
        }
        assert_eq!(
            me["extra"]["authentication.kubernetes.io/credential-id"],
            json!([format!("JTI={}", c["jti"].as_str().expect("jti"))])
        );
    } else if let Some(m) = me.get("message") {
        assert!(
            m.as_str()
                .is_some_and(|m| m.contains("system:serviceaccount:default:robot")),
            "{m}"
        );
    }

    // A token for another audience is not for the API server.
    let (code, v) = token_request(
        &admin,
        "default",
        "robot",
        json!({"audiences": ["vault"], "expirationSeconds": 7200}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["spec"]["audiences"], json!(["vault"]));
    let vt = v["status"]["token"].as_str().expect("token");
    assert_eq!(part(vt, 1)["aud"], json!(["vault"]));
    let c = part(vt, 1);
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        7200
    );
    assert!(
        whoami(&s, vt).await.is_none(),
        "a vault token authenticated"
    );

    // Deleting the ServiceAccount invalidates its tokens.
    Api::<ServiceAccount>::namespaced(admin.clone(), "default")
        .delete("robot", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(WAIT, "the token to stop working", || async {
        whoami(&s, t).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn token_request_checks_like_upstream() {
    let (_dir, _s, admin) = server().await;
    create_sa(&admin, "default", "robot", json!({})).await;
    create_sa(&admin, "default", "other", json!({})).await;

    // Discovery lists the subresource as upstream does.
    let (code, v) = request(&admin, "GET", "/api/v1", None).await;
    assert_eq!(code, 200);
    let sub = v["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "serviceaccounts/token")
        .expect("serviceaccounts/token in discovery");
    assert_eq!(sub["group"], "authentication.k8s.io");
    assert_eq!(sub["version"], "v1");
    assert_eq!(sub["kind"], "TokenRequest");
    assert_eq!(sub["verbs"], json!(["create"]));

    let (code, v) = token_request(&admin, "default", "ghost", json!({})).await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["message"], "serviceaccounts \"ghost\" not found");

    let (code, v) = token_request(
        &admin,
        "default",
        "robot",
        json!({"expirationSeconds": 599}),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["reason"], "Invalid");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes")),
        "{v}"
    );
    let (code, v) = token_request(
        &admin,
        "default",
        "robot",
        json!({"expirationSeconds": 600}),
    )
    .await;
    assert_eq!(code, 201, "{v}");

    // The body may not name another ServiceAccount.
    let (code, v) = request(
        &admin,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/robot/token",
        Some(json!({"metadata": {"name": "other"}, "spec": {}})),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("must match the service account name if specified")),
        "{v}"
    );

    // Bound objects: must exist, match the uid, run as this ServiceAccount.
    let pod = create_pod(
        &admin,
        "default",
        "worker",
        json!({"serviceAccountName": "robot"}),
    )
    .await;
    let pod_uid = pod.metadata.uid.clone().expect("uid");
    let bound = |name: &str, uid: &str| json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid}});
    let (code, v) = token_request(&admin, "default", "robot", bound("nope", "")).await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["message"], "pods \"nope\" not found");
    let (code, v) = token_request(&admin, "default", "robot", bound("worker", "0000")).await;
    assert_eq!(code, 409, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains(
            "the UID in the bound object reference (0000) does not match the UID in record"
        )),
        "{v}"
    );
    let (code, v) = token_request(&admin, "default", "other", bound("worker", &pod_uid)).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["message"],
        "cannot bind token for serviceaccount \"other\" to pod running with different serviceaccount name."
    );
    let (code, v) = token_request(
        &admin,
        "default",
        "robot",
        json!({"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "x"}}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v["message"],
        "cannot bind token to object of type /v1, Kind=ConfigMap"
    );
}

#[tokio::test]
async fn a_token_bound_to_a_pod_dies_with_the_pod() {
    let (_dir, s, admin) = server().await;
    create_sa(&admin, "default", "default", json!({})).await;
    let pod = create_pod(&admin, "default", "p1", json!({})).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let t = new_token(
        &admin,
        "default",
        "default",
        json!({"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p1", "uid": uid}}),
    )
    .await;
    let c = part(&t, 1);
    assert_eq!(c["kubernetes.io"]["pod"], json!({"name": "p1", "uid": uid}));
    let me = whoami(&s, &t).await.expect("the bound token authenticates");
    if me.get("username").is_some() {
        assert_eq!(
            me["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["p1"])
        );
        assert_eq!(
            me["extra"]["authentication.kubernetes.io/pod-uid"],
            json!([uid])
        );
    }
    Api::<Pod>::namespaced(admin.clone(), "default")
        .delete("p1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the pod");
    eventually(WAIT, "the pod to be gone", || async {
        Api::<Pod>::namespaced(admin.clone(), "default")
            .get_opt("p1")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        whoami(&s, &t).await.is_none(),
        "a token of a deleted pod still authenticates"
    );
    // A new pod of the same name does not revive it.
    create_pod(&admin, "default", "p1", json!({})).await;
    assert!(
        whoami(&s, &t).await.is_none(),
        "a token bound to the old pod's uid authenticates"
    );
}

/// Claims of a token for `default/robot` (uid `uid`), made by hand.
fn robot_claims(uid: &str, aud: &str, iat: i64, exp_in: i64) -> BoundClaims {
    BoundClaims {
        namespace: "default".into(),
        service_account: ObjectRef {
            name: "robot".into(),
            uid: uid.into(),
        },
        audiences: vec![aud.into()],
        issued_at: iat,
        expiration_seconds: exp_in,
        id: "j".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let (dir, s, admin) = server().await;
    let sa = create_sa(&admin, "default", "robot", json!({})).await;
    let key = SigningKey::load(&serviceaccount::key_path(dir.path())).expect("the server's key");
    let now = jiff::Timestamp::now().as_second();
    let uid = sa.metadata.uid.clone().expect("uid");
    let claims = |aud: &str, iat: i64, exp_in: i64| robot_claims(&uid, aud, iat, exp_in);
    // The server's own key signs a valid token, so the others fail for the
    // reason they are built with.
    let good = key
        .sign(&claims(token::ISSUER, now, 3600).to_json(token::ISSUER))
        .expect("sign");
    assert!(
        whoami(&s, &good).await.is_some(),
        "a well-formed token is refused"
    );

    let expired = key
        .sign(&claims(token::ISSUER, now - 7200, 3600).to_json(token::ISSUER))
        .expect("sign");
    let wrong_aud = key
        .sign(&claims("https://elsewhere", now, 3600).to_json(token::ISSUER))
        .expect("sign");
    let wrong_iss = key
        .sign(&claims(token::ISSUER, now, 3600).to_json("https://evil"))
        .expect("sign");
    let (other, _) = SigningKey::generate().expect("key");
    let wrong_key = other
        .sign(&claims(token::ISSUER, now, 3600).to_json(token::ISSUER))
        .expect("sign");
    let payload = good.split('.').nth(1).expect("payload");
    let alg_none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    let hs256 = format!(
        "{}.{payload}.{}",
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"HS256","kid":"{}"}}"#,
            key.public().kid()
        )),
        good.split('.').nth(2).expect("sig")
    );
    let mut sig = URL_SAFE_NO_PAD
        .decode(good.split('.').nth(2).expect("sig"))
        .expect("b64");
    sig[0] ^= 0x80;
    let tampered = format!(
        "{}.{payload}.{}",
        good.split('.').next().expect("h"),
        URL_SAFE_NO_PAD.encode(sig)
    );
    for (what, t) in [
        ("malformed", "a.b.c".to_owned()),
        ("not a JWT", "garbage".to_owned()),
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_iss),
        ("wrong key", wrong_key),
        ("alg none", alg_none),
        ("alg HS256", hs256),
        ("tampered signature", tampered),
    ] {
        let (code, v) = request(&s.with_token(&t), "GET", "/api/v1/namespaces", None).await;
        assert_eq!(code, 401, "{what}: {v}");
        assert_eq!(v["reason"], "Unauthorized", "{what}");
    }
}

#[tokio::test]
async fn rotated_keys_keep_validating_and_are_published() {
    // A key from before a rotation, kept as a public key.
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, _) = SigningKey::generate().expect("key");
    let keys = serviceaccount::extra_keys_dir(dir.path());
    std::fs::create_dir_all(&keys).expect("dir");
    std::fs::write(keys.join("previous.pub"), old.public().to_pem()).expect("write");
    let s = TestServer::start_with_admission(dir.path(), |_| {}).await;
    let admin = s.client().await;
    let sa = create_sa(&admin, "default", "robot", json!({})).await;
    let now = jiff::Timestamp::now().as_second();
    let t = old
        .sign(
            &robot_claims(
                &sa.metadata.uid.clone().expect("uid"),
                token::ISSUER,
                now,
                3600,
            )
            .to_json(token::ISSUER),
        )
        .expect("sign");
    assert!(
        whoami(&s, &t).await.is_some(),
        "a token of the previous key is refused"
    );

    // OIDC discovery names the issuer and publishes both keys.
    let (code, d) = request(&admin, "GET", "/.well-known/openid-configuration", None).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["issuer"], token::ISSUER);
    assert_eq!(d["jwks_uri"], format!("https://{}/openid/v1/jwks", s.addr));
    assert_eq!(d["response_types_supported"], json!(["id_token"]));
    assert_eq!(d["subject_types_supported"], json!(["public"]));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
    let (code, j) = request(&admin, "GET", "/openid/v1/jwks", None).await;
    assert_eq!(code, 200, "{j}");
    let jwks = j["keys"].as_array().expect("keys");
    assert_eq!(jwks.len(), 2, "{j}");
    let current = new_token(&admin, "default", "robot", json!({})).await;
    let kid = part(&current, 0)["kid"].clone();
    for k in jwks {
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["use"], "sig");
        assert_eq!(k["alg"], "ES256");
        for xy in ["x", "y"] {
            let b = URL_SAFE_NO_PAD
                .decode(k[xy].as_str().expect("coordinate"))
                .expect("b64");
            assert_eq!(b.len(), 32);
        }
    }
    let kids: Vec<&Value> = jwks.iter().map(|k| &k["kid"]).collect();
    assert!(kids.contains(&&kid), "{kids:?} lacks the current key {kid}");
    assert!(kids.contains(&&json!(old.public().kid())), "{kids:?}");
    // Both need credentials.
    for p in ["/.well-known/openid-configuration", "/openid/v1/jwks"] {
        let (code, _) = request(&s.anonymous(), "GET", p, None).await;
        assert_eq!(code, 401, "{p}");
    }
    // The key file is the server's, private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(serviceaccount::key_path(dir.path()))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn pods_get_their_service_account_and_token_volume() {
    let (_dir, _s, admin) = server().await;
    create_sa(&admin, "default", "default", json!({})).await;
    let pod = create_pod(
        &admin,
        "default",
        "plain",
        json!({"initContainers": [{"name": "init", "image": "busybox"}], "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]}),
    )
    .await;
    let v = serde_json::to_value(&pod).expect("json");
    assert_eq!(v["spec"]["serviceAccountName"], "default");
    assert_eq!(v["spec"]["serviceAccount"], "default");
    let vols = v["spec"]["volumes"].as_array().expect("volumes");
    assert_eq!(vols.len(), 1, "{vols:?}");
    let name = vols[0]["name"].as_str().expect("name");
    let suffix = name
        .strip_prefix("kube-api-access-")
        .expect("kube-api-access-");
    assert_eq!(suffix.len(), 5, "{name}");
    assert_eq!(
        vols[0]["projected"],
        json!({
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        })
    );
    for c in ["initContainers", "containers"] {
        for ctr in v["spec"][c].as_array().expect("containers") {
            assert_eq!(
                ctr["volumeMounts"],
                json!([{"name": name, "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]),
                "{ctr}"
            );
        }
    }

    // automountServiceAccountToken: false on the pod, or on the
    // ServiceAccount; the pod's own setting wins.
    let p = create_pod(
        &admin,
        "default",
        "no-token",
        json!({"automountServiceAccountToken": false}),
    )
    .await;
    assert!(p.spec.expect("spec").volumes.is_none_or(|v| v.is_empty()));
    create_sa(
        &admin,
        "default",
        "quiet",
        json!({"automountServiceAccountToken": false, "imagePullSecrets": [{"name": "regcred"}]}),
    )
    .await;
    let p = create_pod(
        &admin,
        "default",
        "quiet-pod",
        json!({"serviceAccountName": "quiet"}),
    )
    .await;
    let spec = p.spec.expect("spec");
    assert!(spec.volumes.is_none_or(|v| v.is_empty()));
    assert_eq!(spec.service_account_name.as_deref(), Some("quiet"));
    assert_eq!(
        spec.image_pull_secrets
            .expect("pull secrets from the ServiceAccount")[0]
            .name,
        "regcred"
    );
    let p = create_pod(
        &admin,
        "default",
        "loud-pod",
        json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true}),
    )
    .await;
    assert_eq!(p.spec.expect("spec").volumes.expect("volumes").len(), 1);
    // The deprecated field alone names the ServiceAccount too.
    let p = create_pod(
        &admin,
        "default",
        "old-style",
        json!({"serviceAccount": "quiet"}),
    )
    .await;
    assert_eq!(
        p.spec.expect("spec").service_account_name.as_deref(),
        Some("quiet")
    );

    // A mount of its own at the path is left alone.
    let p = create_pod(
        &admin,
        "default",
        "own-mount",
        json!({
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": [{"name": "mine", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        }),
    )
    .await;
    let spec = p.spec.expect("spec");
    assert_eq!(spec.volumes.expect("volumes").len(), 1);
    assert_eq!(
        spec.containers[0]
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .len(),
        1
    );
}

#[tokio::test]
async fn pods_need_an_existing_service_account() {
    let (_dir, _s, admin) = server().await;
    create_sa(&admin, "default", "default", json!({})).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let err = pods
        .create(
            &PostParams::default(),
            &obj(pod_json("x", json!({"serviceAccountName": "ghost"}))),
        )
        .await
        .expect_err("a pod of a missing ServiceAccount");
    let kube::Error::Api(st) = err else {
        panic!("{err:?}")
    };
    assert_eq!(st.code, 403);
    assert_eq!(
        st.message,
        "pods \"x\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
    );

    // A new namespace's `default` ServiceAccount is waited for ...
    for ns in ["late", "lonely"] {
        Api::<Namespace>::all(admin.clone())
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": ns}})),
            )
            .await
            .expect("namespace");
    }
    let admin2 = admin.clone();
    let creating = tokio::spawn(async move {
        Api::<Pod>::namespaced(admin2, "late")
            .create(&PostParams::default(), &obj(pod_json("early", json!({}))))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !creating.is_finished(),
        "the pod did not wait for its ServiceAccount"
    );
    create_sa(&admin, "late", "default", json!({})).await;
    let p = tokio::time::timeout(WAIT, creating)
        .await
        .expect("the pod create returned")
        .expect("join")
        .expect("the pod is admitted once the ServiceAccount exists");
    assert_eq!(
        p.spec.expect("spec").service_account_name.as_deref(),
        Some("default")
    );

    // ... for 5 s, then refused.
    let started = Instant::now();
    let err = Api::<Pod>::namespaced(admin.clone(), "lonely")
        .create(&PostParams::default(), &obj(pod_json("y", json!({}))))
        .await
        .expect_err("no default ServiceAccount");
    let waited = started.elapsed();
    let kube::Error::Api(st) = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        st.message,
        "pods \"y\" is forbidden: error looking up service account lonely/default: serviceaccount \"default\" not found"
    );
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
}

#[tokio::test]
async fn kubectl_create_token() {
    let (dir, s, admin) = server().await;
    create_sa(&admin, "default", "robot", json!({})).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    // Async, so the in-process server keeps serving while kubectl runs.
    let run = async |args: &[&str]| {
        tokio::process::Command::new(kubectl_path())
            .args(args)
            .env("KUBECONFIG", &s.kubeconfig)
            .env("HOME", &home)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run kubectl")
    };
    let out = run(&[
        "create",
        "token",
        "robot",
        "--duration",
        "2h",
        "--audience",
        token::ISSUER,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let c = part(&t, 1);
    assert_eq!(c["sub"], "system:serviceaccount:default:robot");
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        7200
    );
    assert!(
        whoami(&s, &t).await.is_some(),
        "kubectl's token does not authenticate"
    );
    let out = run(&["create", "token", "ghost"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serviceaccounts \"ghost\" not found"), "{err}");
}
