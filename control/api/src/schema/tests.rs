//! Tests of structural schemas against upstream's documented behaviour.

use super::*;
use serde_json::json;

const P: &str = "spec.versions[0].schema.openAPIV3Schema";

fn schema(v: Value) -> Structural {
    Structural::parse(&v, P).unwrap_or_else(|e| panic!("schema refused: {e:?}"))
}

fn refused(v: Value) -> Vec<String> {
    match Structural::parse(&v, P) {
        Ok(_) => panic!("schema accepted"),
        Err(e) => e.iter().map(FieldError::to_message).collect(),
    }
}

fn messages(s: &Structural, obj: Value) -> Vec<String> {
    s.validate(&obj, None)
        .iter()
        .map(FieldError::to_message)
        .collect()
}

fn object(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

#[test]
fn non_structural_schemas_are_refused() {
    let cases = [
        (
            object(json!({"spec": {"properties": {}}})),
            format!(
                "{P}.properties[spec].type: Required value: must not be empty for specified object fields"
            ),
        ),
        (
            json!({"type": "string"}),
            format!("{P}.type: Invalid value: \"string\": must be object at the root"),
        ),
        (
            object(json!({"a": {"type": "array"}})),
            format!("{P}.properties[a].items: Required value: must be specified"),
        ),
        (
            object(json!({"a": {"type": "array", "items": {}}})),
            format!(
                "{P}.properties[a].items.type: Required value: must not be empty for specified array items"
            ),
        ),
        (
            object(json!({"a": {"$ref": "#/x", "type": "string"}})),
            format!("{P}.properties[a].$ref: Forbidden: $ref is not supported"),
        ),
        (
            object(
                json!({"a": {"type": "array", "uniqueItems": true, "items": {"type": "string"}}}),
            ),
            format!(
                "{P}.properties[a].uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
            ),
        ),
        (
            object(
                json!({"a": {"type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": {"type": "string"}}}),
            ),
            format!(
                "{P}.properties[a].additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
            ),
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "allOf": [{"type": "string"}]}),
            format!("{P}.allOf[0].type: Forbidden: must be empty to be structural"),
        ),
        (
            json!({"type": "object", "anyOf": [{"properties": {"b": {}}}]}),
            format!(
                "{P}.properties[b]: Required value: because it is defined in {P}.anyOf[0].properties[b]"
            ),
        ),
        (
            object(
                json!({"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}),
            ),
            format!(
                "{P}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
            ),
        ),
        (
            object(json!({"a": {"type": "string", "pattern": "("}})),
            format!(
                "{P}.properties[a].pattern: Invalid value: \"(\": must be a valid regular expression, but isn't: error parsing regexp: unclosed group: `(`"
            ),
        ),
        (
            json!({"type": "object", "additionalProperties": {"type": "string"}}),
            format!("{P}.additionalProperties: Forbidden: must not be used at the root"),
        ),
        (
            object(
                json!({"l": {"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object", "properties": {"k": {"type": "string"}}}}}),
            ),
            format!(
                "{P}.properties[l].x-kubernetes-list-map-keys: Required value: must not be empty if x-kubernetes-list-type is map"
            ),
        ),
        (
            object(json!({"e": {"type": "object", "x-kubernetes-embedded-resource": true}})),
            format!(
                "{P}.properties[e].properties: Required value: must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields"
            ),
        ),
        (
            object(json!({"n": {"type": "integer", "default": "x"}})),
            format!(
                "{P}.properties[n].default: Invalid value: \"string\":  in body must be of type integer: \"string\""
            ),
        ),
        (
            object(
                json!({"o": {"type": "object", "properties": {"a": {"type": "string"}}, "default": {"a": "x", "b": 1}}}),
            ),
            format!(
                "{P}.properties[o].default: Invalid value: {{\"a\":\"x\",\"b\":1}}: must not have unknown fields"
            ),
        ),
        (
            object(json!({"metadata": {"type": "object", "default": {}}})),
            format!(
                "{P}.properties[metadata].default: Forbidden: must not be set in top-level metadata"
            ),
        ),
    ];
    for (schema, want) in cases {
        let got = refused(schema);
        assert!(got.contains(&want), "want {want}\n got {got:#?}");
    }
}

#[test]
fn structural_schemas_are_accepted() {
    schema(object(json!({
        "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}},
        "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "any": {"x-kubernetes-preserve-unknown-fields": true},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "n": {"type": "integer", "default": 3, "minimum": 0},
        "v": {"type": "string", "allOf": [{"pattern": "^a"}], "not": {"enum": ["ab"]}},
    })));
}

#[test]
fn deep_schema_is_refused_without_overflow() {
    // Built and dropped in a big-stack thread: serde_json's drop recurses.
    let run = || {
        let mut v = json!({"type": "string"});
        for _ in 0..10_000 {
            let props = Map::from_iter([("a".to_owned(), v)]);
            let node = [
                ("type".to_owned(), json!("object")),
                ("properties".to_owned(), Value::Object(props)),
            ];
            v = Value::Object(Map::from_iter(node));
        }
        let errs = Structural::parse(&v, P).err().unwrap_or_default();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0]
                .detail
                .contains("must not be nested more than 100 levels deep"),
            "{errs:?}"
        );
    };
    let t = std::thread::Builder::new().stack_size(256 << 20).spawn(run);
    assert!(t.is_ok_and(|t| t.join().is_ok()));
}

#[test]
fn value_validation_messages() {
    let s = schema(object(json!({
        "spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer"},
            "replicas": {"type": "integer", "maximum": 10, "minimum": 1},
            "ratio": {"type": "number", "exclusiveMaximum": true, "maximum": 1.5},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
            "short": {"type": "string", "minLength": 3},
            "tags": {"type": "array", "maxItems": 3, "minItems": 1, "items": {"type": "string"}},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "port": {"x-kubernetes-int-or-string": true},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "even": {"type": "integer", "multipleOf": 2},
        }},
    })));
    let got = messages(
        &s,
        json!({"spec": {
            "replicas": 11, "ratio": 1.5, "mode": "x", "name": "X", "short": "ab",
            "tags": ["a", "b", "c", "d"], "when": "yesterday", "id": "nope", "port": true,
            "labels": {"k": 1}, "even": 3,
        }}),
    );
    let want = [
        "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
        "spec.ratio: Invalid value: 1.5: spec.ratio in body should be less than 1.5",
        "spec.mode: Unsupported value: \"x\": supported values: \"a\", \"b\"",
        "spec.name: Invalid value: \"X\": spec.name in body should match '^[a-z]+$'",
        "spec.short: Invalid value: \"ab\": spec.short in body should be at least 3 chars long",
        "spec.tags: Too many: 4: must have at most 3 items",
        "spec.when: Invalid value: \"yesterday\": spec.when in body must be of type date-time: \"yesterday\"",
        "spec.id: Invalid value: \"nope\": spec.id in body must be of type uuid: \"nope\"",
        "spec.port: Invalid value: \"boolean\": spec.port in body must be of type integer,string: \"boolean\"",
        "spec.labels.k: Invalid value: \"integer\": spec.labels.k in body must be of type string: \"integer\"",
        "spec.even: Invalid value: 3: spec.even in body should be a multiple of 2",
        "spec.size: Required value",
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "want {w}\n got {got:#?}");
    }
    let got = messages(
        &s,
        json!({"spec": {"size": "big", "name": "abcdefg", "tags": [], "port": "http"}}),
    );
    for w in [
        "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
        "spec.name: Too long: may not be more than 5 bytes",
        "spec.tags: Invalid value: 0: spec.tags in body should have at least 1 items",
    ] {
        assert!(got.iter().any(|g| g == w), "want {w}\n got {got:#?}");
    }
    assert!(got.iter().all(|g| !g.starts_with("spec.port")), "{got:?}");
    assert!(
        messages(
            &s,
            json!({"spec": {"size": 1, "port": 8080, "when": "2024-01-02T03:04:05Z", "even": 4.0}})
        )
        .is_empty()
    );
    assert_eq!(
        messages(&s, json!({"spec": {"size": 1.0}})),
        Vec::<String>::new(),
        "1.0 is an integer"
    );
}

#[test]
fn list_type_set_and_map_duplicates() {
    let s = schema(object(json!({
        "set": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
            "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
    })));
    let got = messages(
        &s,
        json!({
            "set": ["a", "b", "a", "a"],
            "ports": [{"name": "http", "port": 1}, {"name": "http", "port": 2}],
        }),
    );
    assert_eq!(
        got,
        [
            "ports[1]: Duplicate value: {\"name\":\"http\"}",
            "set[2]: Duplicate value: \"a\"",
        ]
    );
}

#[test]
fn pruning() {
    let s = schema(object(json!({
        "spec": {"type": "object", "properties": {
            "keep": {"type": "string"},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "embedded": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}},
            "opt": {"type": "string"},
        }},
    })));
    let mut obj = json!({
        "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "labels": {"a": "b"}},
        "unknown": 1,
        "spec": {
            "keep": "k", "drop": "d", "opt": null,
            "free": {"anything": {"deep": [1]}},
            "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}, "status": {}},
        },
    });
    s.prune(&mut obj);
    assert_eq!(
        obj,
        json!({
            "apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "labels": {"a": "b"}},
            "spec": {
                "keep": "k",
                "free": {"anything": {"deep": [1]}},
                "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}},
            },
        })
    );
}

#[test]
fn defaulting() {
    let s = schema(object(json!({
        "spec": {"type": "object", "properties": {
            "replicas": {"type": "integer", "default": 1},
            "mode": {"type": "string", "default": "auto"},
            "nested": {"type": "object", "properties": {"deep": {"type": "string", "default": "d"}}},
            "list": {"type": "array", "items": {"type": "object", "properties": {"p": {"type": "integer", "default": 80}}}},
        }},
    })));
    let mut obj = json!({"spec": {"mode": null, "list": [{}, {"p": 1}]}});
    s.apply_defaults(&mut obj);
    assert_eq!(
        obj,
        json!({"spec": {"replicas": 1, "mode": "auto", "list": [{"p": 80}, {"p": 1}]}})
    );
    let mut obj = json!({"spec": {"nested": {}}});
    s.apply_defaults(&mut obj);
    assert_eq!(obj["spec"]["nested"], json!({"deep": "d"}));
    let mut obj = json!({});
    s.apply_defaults(&mut obj);
    assert_eq!(obj, json!({}), "no defaults under a missing parent");
}

#[test]
fn cel_rules() {
    let errs = refused(object(
        json!({"spec": {"type": "object", "x-kubernetes-validations": [{"rule": "self.x >"}]}}),
    ));
    let f = format!(
        "{P}.properties[spec].x-kubernetes-validations[0].rule: Invalid value: {{\"Rule\":\"self.x \\u003e\","
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&f) && e.contains("compilation failed")),
        "{errs:#?}"
    );

    let s = schema(object(json!({"spec": {"type": "object", "properties": {
        "min": {"type": "integer"}, "max": {"type": "integer"},
        "name": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "name is immutable"}]},
    }, "x-kubernetes-validations": [
        {"rule": "self.min <= self.max"},
        {"rule": "self.min >= 0", "messageExpression": "'min is ' + string(self.min)", "fieldPath": ".min"},
    ]}})));
    assert_eq!(
        messages(&s, json!({"spec": {"min": -1, "max": -2, "name": "a"}})),
        [
            "spec: Invalid value: failed rule: self.min <= self.max",
            "spec.min: Invalid value: min is -1",
        ]
    );
    let old = json!({"spec": {"min": 1, "max": 2, "name": "a"}});
    let new = json!({"spec": {"min": 1, "max": 2, "name": "b"}});
    let errs: Vec<String> = s
        .validate(&new, Some(&old))
        .iter()
        .map(FieldError::to_message)
        .collect();
    assert_eq!(errs, ["spec.name: Invalid value: \"b\": name is immutable"]);
    // Ratcheting: an unchanged invalid value passes on update.
    let bad = json!({"spec": {"min": 3, "max": 2, "name": "a"}});
    assert!(s.validate(&bad, Some(&bad)).is_empty());
}

#[test]
fn openapi_and_lookups() {
    let raw = object(json!({
        "spec": {"type": "object", "description": "the spec", "properties": {
            "replicas": {"type": "integer", "format": "int32"},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port"],
                "items": {"type": "object", "required": ["port"], "properties": {"port": {"type": "integer"}}}},
        }},
    }));
    let s = schema(raw.clone());
    assert_eq!(s.to_openapi(), raw);
    assert_eq!(
        s.at(".spec.replicas").map(|n| n.format.as_str()),
        Some("int32")
    );
    assert!(s.at(".spec.missing").is_none());
    assert_eq!(
        s.list_semantics(&["spec", "ports"]),
        Some(("map".to_owned(), vec!["port".to_owned()]))
    );
    assert_eq!(s.list_semantics(&["spec", "replicas"]), None);
}

#[test]
fn formats() {
    use super::formats::valid;
    for (f, ok, bad) in [
        (
            "datetime",
            "2024-02-29T10:00:00.5+01:00",
            "2023-02-29T10:00:00Z",
        ),
        ("date", "2024-12-31", "2024-13-01"),
        ("ipv4", "10.0.0.1", "10.0.0"),
        ("ipv6", "fe80::1", "10.0.0.1"),
        ("cidr", "10.0.0.0/8", "10.0.0.0/33"),
        ("mac", "00:1a:2b:3c:4d:5e", "00:1a:2b"),
        ("hostname", "example.com", "-bad-.com"),
        ("byte", "aGVsbG8=", "not base64!"),
        ("duration", "1h30m", "forever"),
        ("email", "a@b.io", "a@"),
        ("uri", "https://x.io/a", "no scheme"),
        ("k8sshortname", "my-name", "My-Name"),
    ] {
        assert!(valid(f, ok), "{f} {ok}");
        assert!(!valid(f, bad), "{f} {bad}");
    }
}
