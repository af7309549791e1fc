//! Bodies are built by encoding k8s-pb messages, as client-go would send them.

use std::collections::BTreeMap;

use k8s_pb::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
use serde_json::json;

use super::*;

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

/// The `k8s\0` + `runtime.Unknown` envelope around `m`.
fn body<M: Message>(api_version: &str, kind: &str, m: &M) -> Vec<u8> {
    let env = runtime::Unknown {
        type_meta: Some(runtime::TypeMeta {
            api_version: s(api_version),
            kind: s(kind),
        }),
        raw: Some(m.encode_to_vec()),
        content_encoding: s(""),
        content_type: s(""),
    };
    let mut b = MAGIC.to_vec();
    b.extend(env.encode_to_vec());
    b
}

/// ObjectMeta as Go encodes a fresh object's: value fields present and zero.
fn meta(name: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
        ..Default::default()
    })
}

fn container(name: &str, image: &str) -> core::Container {
    core::Container {
        name: s(name),
        image: s(image),
        working_dir: s(""),
        termination_message_path: s(""),
        image_pull_policy: s(""),
        stdin: Some(false),
        tty: Some(false),
        resources: Some(core::ResourceRequirements::default()),
        ..Default::default()
    }
}

fn pod_spec(c: core::Container) -> Option<core::PodSpec> {
    Some(core::PodSpec {
        containers: vec![c],
        restart_policy: s(""),
        dns_policy: s(""),
        service_account_name: s(""),
        host_network: Some(false),
        ..Default::default()
    })
}

/// What `kubectl create deployment web --image=... --replicas=2` sends.
fn web_deployment() -> apps::Deployment {
    apps::Deployment {
        metadata: meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(2),
            selector: Some(meta::LabelSelector {
                match_labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
                    creation_timestamp: Some(meta::Time::default()),
                    ..Default::default()
                }),
                spec: pod_spec(container("echo", "docker.io/kestrel/echo:0.1.0")),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: s(""),
                rolling_update: None,
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(apps::DeploymentStatus {
            replicas: Some(0),
            ..Default::default()
        }),
    }
}

#[test]
fn deployment_as_kubectl_create_sends_it() {
    let d = web_deployment();
    let v = decode(&body("apps/v1", "Deployment", &d)).expect("decode");
    assert_eq!(
        v,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{
                        "name": "echo",
                        "image": "docker.io/kestrel/echo:0.1.0",
                        "resources": {}
                    }]}
                },
                "strategy": {}
            },
            "status": {"replicas": 0}
        })
    );
    // An explicit zero replica count is kept: it is a pointer upstream.
    let mut d0 = d;
    if let Some(spec) = d0.spec.as_mut() {
        spec.replicas = Some(0);
    }
    let v = decode(&body("apps/v1", "Deployment", &d0)).expect("decode");
    assert_eq!(v["spec"]["replicas"], 0);
    // It parses as the typed struct the rest of the server uses.
    let _: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(v).expect("typed");
}

#[test]
fn pod_with_ports_resources_env_and_probe() {
    let mut c = container("app", "docker.io/library/busybox:1.35");
    c.args = vec!["sleep".to_owned(), "10".to_owned()];
    c.ports = vec![core::ContainerPort {
        name: s("http"),
        host_port: Some(0),
        container_port: Some(8080),
        protocol: s("TCP"),
        host_ip: s(""),
    }];
    c.resources = Some(core::ResourceRequirements {
        limits: BTreeMap::from([(
            "memory".to_owned(),
            resource::Quantity { string: s("128Mi") },
        )]),
        requests: BTreeMap::from([("cpu".to_owned(), resource::Quantity { string: s("100m") })]),
        ..Default::default()
    });
    c.env = vec![
        core::EnvVar {
            name: s("MODE"),
            value: s("fast"),
            value_from: None,
        },
        core::EnvVar {
            name: s("PASS"),
            value: s(""),
            value_from: Some(core::EnvVarSource {
                secret_key_ref: Some(core::SecretKeySelector {
                    local_object_reference: Some(core::LocalObjectReference { name: s("creds") }),
                    key: s("password"),
                    optional: None,
                }),
                ..Default::default()
            }),
        },
    ];
    c.readiness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            http_get: Some(core::HttpGetAction {
                path: s("/healthz"),
                port: Some(intstr::IntOrString {
                    r#type: Some(1),
                    int_val: Some(0),
                    str_val: s("http"),
                }),
                host: s(""),
                scheme: s("HTTP"),
                http_headers: vec![],
            }),
            ..Default::default()
        }),
        period_seconds: Some(5),
        // Value fields Go always encodes; zero means "default it".
        initial_delay_seconds: Some(0),
        timeout_seconds: Some(0),
        ..Default::default()
    });
    let mut spec = pod_spec(c);
    if let Some(spec) = spec.as_mut() {
        spec.restart_policy = s("Never");
        spec.termination_grace_period_seconds = Some(0);
        spec.host_pid = Some(false);
    }
    let p = core::Pod {
        metadata: meta("p"),
        spec,
        status: None,
    };
    let v = decode(&body("v1", "Pod", &p)).expect("decode");
    assert_eq!(
        v["spec"],
        json!({
            "containers": [{
                "name": "app",
                "image": "docker.io/library/busybox:1.35",
                "args": ["sleep", "10"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "MODE", "value": "fast"},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}
                ],
                "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "100m"}},
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                    "periodSeconds": 5
                }
            }],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0
        })
    );
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).expect("typed");
}

#[test]
fn service_target_port_int_or_string() {
    let port = |name: &str, target: intstr::IntOrString| core::ServicePort {
        name: s(name),
        protocol: s("TCP"),
        port: Some(80),
        target_port: Some(target),
        node_port: Some(0),
        app_protocol: None,
    };
    let svc = core::Service {
        metadata: meta("s"),
        spec: Some(core::ServiceSpec {
            ports: vec![
                port(
                    "num",
                    intstr::IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: s(""),
                    },
                ),
                port(
                    "named",
                    intstr::IntOrString {
                        r#type: Some(1),
                        int_val: Some(0),
                        str_val: s("http"),
                    },
                ),
            ],
            selector: BTreeMap::from([("app".to_owned(), "s".to_owned())]),
            r#type: s("ClusterIP"),
            cluster_ip: s(""),
            session_affinity: s(""),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus::default()),
    };
    let v = decode(&body("v1", "Service", &svc)).expect("decode");
    assert_eq!(
        v["spec"],
        json!({
            "ports": [
                {"name": "num", "protocol": "TCP", "port": 80, "targetPort": 8080},
                {"name": "named", "protocol": "TCP", "port": 80, "targetPort": "http"}
            ],
            "selector": {"app": "s"},
            "type": "ClusterIP"
        })
    );
    assert_eq!(v["status"], json!({}));
}

#[test]
fn secret_bytes_are_base64() {
    let sec = core::Secret {
        metadata: meta("creds"),
        immutable: None,
        data: BTreeMap::from([("password".to_owned(), b"s3cr\xffet".to_vec())]),
        string_data: BTreeMap::new(),
        r#type: s("Opaque"),
    };
    let v = decode(&body("v1", "Secret", &sec)).expect("decode");
    assert_eq!(v["data"], json!({"password": "czNjcv9ldA=="}));
    assert_eq!(v["type"], "Opaque");
    assert!(v.get("stringData").is_none());
}

#[test]
fn job_and_times() {
    let job = batch::Job {
        metadata: Some(meta::ObjectMeta {
            name: s("j"),
            creation_timestamp: Some(meta::Time {
                seconds: Some(1_700_000_000),
                nanos: Some(0),
            }),
            ..Default::default()
        }),
        spec: Some(batch::JobSpec {
            backoff_limit: Some(0),
            template: Some(core::PodTemplateSpec {
                metadata: meta("j"),
                spec: pod_spec(container("j", "docker.io/library/busybox:1.35")).map(|mut p| {
                    p.restart_policy = s("Never");
                    p
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode(&body("batch/v1", "Job", &job)).expect("decode");
    assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(v["spec"]["backoffLimit"], 0);
    assert_eq!(v["spec"]["template"]["spec"]["restartPolicy"], "Never");
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["image"],
        "docker.io/library/busybox:1.35"
    );
    let micro = meta::MicroTime {
        seconds: Some(1_700_000_000),
        nanos: Some(123_456_789),
    };
    assert_eq!(micro.to_json(), Ok(json!("2023-11-14T22:13:20.123456Z")));
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(1_500_000), "1.5ms");
    assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
    assert_eq!(go_duration(-90_000_000_000), "-1m30s");
}

#[test]
fn every_served_kind_decodes() {
    // CRDs arrive as JSON from kubectl, helm, kube-rs and client-go's
    // apiextensions clientset; a protobuf CRD body gets a clear 415 instead
    // (JSONSchemaProps' union-typed fields have no generated form yet).
    let json_only = |r: &&kestrel_api::registry::ResourceDef| r.kind != "CustomResourceDefinition";
    for r in kestrel_api::registry::RESOURCES.iter().filter(json_only) {
        let mut kinds = vec![(r.api_version(), r.kind)];
        // Connect subresources take their options as query parameters,
        // never as a body.
        let bodies = r.subresources.iter().filter(|s| {
            !matches!(
                s,
                kestrel_api::registry::Subresource::Proxy
                    | kestrel_api::registry::Subresource::PortForward
            )
        });
        for sub in bodies {
            let (g, v, k) = sub.kind(r);
            kinds.push((
                if g.is_empty() {
                    v.to_owned()
                } else {
                    format!("{g}/{v}")
                },
                k,
            ));
        }
        for (av, kind) in kinds {
            let b = body(&av, kind, &meta::Status::default());
            let v = decode(&b).unwrap_or_else(|e| panic!("{av} {kind}: {e}"));
            assert_eq!(v["kind"], kind);
        }
    }
    assert!(matches!(
        decode(&body("example.com/v1", "Widget", &meta::Status::default())),
        Err(ProtoError::Unsupported(_))
    ));
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let d = web_deployment();
    let good = body("apps/v1", "Deployment", &d);
    assert!(decode(&good).is_ok());
    assert!(matches!(decode(b"nope"), Err(ProtoError::Malformed(_))));
    assert!(matches!(decode(b""), Err(ProtoError::Malformed(_))));
    // Every truncation: an error or (cut between fields) a shorter object.
    let mut errors = 0;
    for n in 0..good.len() {
        match decode(&good[..n]) {
            Err(ProtoError::Malformed(_)) => errors += 1,
            Err(e) => panic!("truncated at {n}: {e}"),
            Ok(_) => {}
        }
    }
    assert!(errors > good.len() / 2, "{errors} of {}", good.len());
    // Garbage after the magic, and single-byte corruptions of a good body.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in 0..400 {
        let mut b = MAGIC.to_vec();
        b.extend((0..len).map(|_| next() as u8));
        let _ = decode(&b);
    }
    for _ in 0..2000 {
        let mut b = good.clone();
        let i = MAGIC.len() + (next() as usize) % (b.len() - MAGIC.len());
        b[i] = next() as u8;
        // Any outcome but a panic; a corrupted kind name is Unsupported.
        let _ = decode(&b);
    }
    // A wire type that does not match the field.
    let mut b = MAGIC.to_vec();
    b.extend([0x0a, 0x0c, 0x0a, 0x07]);
    b.extend(b"apps/v1");
    b.extend([0x12, 0x01, b'X']);
    assert!(decode(&b).is_err());
}

#[test]
fn delete_options_decode_under_any_group_version() {
    let opts = k8s_pb::apimachinery::pkg::apis::meta::v1::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: Some("Background".to_owned()),
        ..Default::default()
    };
    for av in ["v1", "apps/v1", "meta.k8s.io/v1"] {
        let v = decode(&body(av, "DeleteOptions", &opts)).expect("decodes");
        assert_eq!(v["propagationPolicy"], "Background", "{av}: {v}");
        assert_eq!(v["gracePeriodSeconds"], 0, "{av}: {v}");
    }
}
