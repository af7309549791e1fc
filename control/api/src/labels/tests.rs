use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn m(sel: &str, pairs: &[(&str, &str)]) -> bool {
    Selector::parse(sel)
        .unwrap_or_else(|e| panic!("{sel:?}: {e}"))
        .matches(&labels(pairs))
}

#[test]
fn empty_matches_everything() {
    assert!(m("", &[]));
    assert!(m("   ", &[("a", "b")]));
    assert!(Selector::parse("").expect("parse").is_empty());
}

#[test]
fn equality_forms() {
    assert!(m("app=web", &[("app", "web")]));
    assert!(m("app==web", &[("app", "web")]));
    assert!(m("app = web", &[("app", "web")]));
    assert!(!m("app=web", &[("app", "db")]));
    assert!(!m("app=web", &[]));
    assert!(m("app=", &[("app", "")]));
}

#[test]
fn inequality_matches_missing_keys() {
    assert!(m("app!=web", &[("app", "db")]));
    assert!(m("app!=web", &[]));
    assert!(!m("app!=web", &[("app", "web")]));
}

#[test]
fn set_based() {
    assert!(m("env in (prod, staging)", &[("env", "prod")]));
    assert!(m("env in (prod,staging)", &[("env", "staging")]));
    assert!(!m("env in (prod)", &[("env", "dev")]));
    assert!(!m("env in (prod)", &[]));
    assert!(m("env notin (prod)", &[("env", "dev")]));
    assert!(m("env notin (prod)", &[]));
    assert!(!m("env notin (prod,dev)", &[("env", "dev")]));
}

#[test]
fn existence() {
    assert!(m("app", &[("app", "x")]));
    assert!(!m("app", &[]));
    assert!(m("!app", &[]));
    assert!(m("! app", &[]));
    assert!(!m("!app", &[("app", "")]));
}

#[test]
fn numeric_comparisons() {
    assert!(m("gen>3", &[("gen", "4")]));
    assert!(!m("gen>3", &[("gen", "3")]));
    assert!(m("gen<3", &[("gen", "2")]));
    assert!(!m("gen<3", &[("gen", "x")]));
    assert!(Selector::parse("gen>x").is_err());
}

#[test]
fn conjunction_of_mixed_requirements() {
    let s = "app=web,tier in (fe,be),!canary,env!=dev,version";
    assert!(m(
        s,
        &[
            ("app", "web"),
            ("tier", "fe"),
            ("env", "prod"),
            ("version", "1")
        ]
    ));
    assert!(!m(
        s,
        &[
            ("app", "web"),
            ("tier", "fe"),
            ("canary", "y"),
            ("version", "1")
        ]
    ));
    assert!(!m(s, &[("app", "web"), ("tier", "fe"), ("env", "prod")]));
    assert_eq!(Selector::parse(s).expect("parse").requirements().len(), 5);
}

#[test]
fn qualified_keys() {
    assert!(m(
        "app.kubernetes.io/name=nginx",
        &[("app.kubernetes.io/name", "nginx")]
    ));
}

#[test]
fn syntax_errors() {
    for bad in [
        "=x",
        "a=b=c",
        "a in b",
        "a in (b",
        "a notin",
        "a!b",
        "a,",
        ",a",
        "a b",
        "bad key=x",
        "-a=b",
        "a=-b",
        "a in ()",
        "a/b/c=d",
    ] {
        let r = Selector::parse(bad);
        assert!(r.is_err(), "{bad:?} parsed as {r:?}");
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("unable to parse requirement"),
            "{bad:?}: {msg}"
        );
    }
}

#[test]
fn display_round_trips() {
    for s in [
        "app=web",
        "a!=b",
        "a in (x,y)",
        "a notin (x,y)",
        "a",
        "!a",
        "a>1",
        "a<2",
    ] {
        let sel = Selector::parse(s).expect("parse");
        assert_eq!(Selector::parse(&sel.to_string()).expect("reparse"), sel);
    }
}

#[test]
fn structured_selector() {
    let sel = LabelSelector {
        match_labels: Some([("app".to_owned(), "web".to_owned())].into()),
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["fe".into()]),
            },
            LabelSelectorRequirement {
                key: "canary".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]),
    };
    let s = Selector::from_label_selector(&sel).expect("convert");
    assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("canary", "1")])));
    let bad = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "x".into(),
            operator: "Near".into(),
            values: None,
        }]),
        ..Default::default()
    };
    assert!(matches!(
        Selector::from_label_selector(&bad),
        Err(SelectorError::UnknownOperator(_))
    ));
    assert!(
        Selector::from_label_selector(&LabelSelector::default())
            .expect("empty")
            .matches(&labels(&[]))
    );
}

#[test]
fn json_labels() {
    let s = Selector::parse("app=web").expect("parse");
    let v = serde_json::json!({"app": "web"});
    assert!(s.matches_json(Some(&v)));
    assert!(!s.matches_json(None));
    assert!(Selector::everything().matches_json(None));
    assert!(!Selector::nothing().matches_json(Some(&v)));
}

fn structured(v: serde_json::Value) -> Result<Selector, SelectorError> {
    let sel: LabelSelector = serde_json::from_value(v).expect("selector");
    Selector::from_label_selector(&sel)
}

#[test]
fn structured_selector_operators() {
    let l = labels(&[("app", "web"), ("tier", "1")]);
    let m = |v: serde_json::Value| structured(v).expect("convert").matches(&l);
    assert!(m(serde_json::json!({})));
    assert!(m(serde_json::json!({"matchLabels": {"app": "web"}})));
    assert!(!m(serde_json::json!({"matchLabels": {"app": "db"}})));
    assert!(m(serde_json::json!({"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["1", "2"]}]})));
    assert!(m(serde_json::json!({"matchExpressions": [
        {"key": "gone", "operator": "NotIn", "values": ["x"]}]})));
    assert!(!m(serde_json::json!({"matchExpressions": [
        {"key": "tier", "operator": "NotIn", "values": ["1"]}]})));
    assert!(m(serde_json::json!({"matchExpressions": [
        {"key": "app", "operator": "Exists"}]})));
    assert!(!m(serde_json::json!({"matchExpressions": [
        {"key": "app", "operator": "DoesNotExist"}]})));
}

#[test]
fn structured_selector_errors_as_upstream() {
    for bad in [
        serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
        serde_json::json!({"matchExpressions": [{"key": "a", "operator": "NotIn"}]}),
        serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
        // Gt/Lt are node selector operators only.
        serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        serde_json::json!({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}),
        serde_json::json!({"matchExpressions": [{"key": "a b", "operator": "Exists"}]}),
        serde_json::json!({"matchLabels": {"a": "-x"}}),
    ] {
        assert!(structured(bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn plain_sets() {
    let l = labels(&[("app", "web"), ("tier", "1")]);
    assert!(set_matches(&labels(&[]), &l));
    assert!(set_matches(&labels(&[("app", "web")]), &l));
    assert!(!set_matches(&labels(&[("app", "web"), ("x", "y")]), &l));
    assert!(!set_matches(&labels(&[("app", "")]), &labels(&[])));
}

fn term(v: serde_json::Value) -> Result<NodeTerm, SelectorError> {
    let t: NodeSelectorTerm = serde_json::from_value(v).expect("term");
    NodeTerm::new(&t)
}

#[test]
fn node_terms() {
    let small = labels(&[("gen", "3"), ("zone", "a")]);
    let m = |v: serde_json::Value, l: &BTreeMap<String, String>, name: &str| {
        term(v).expect("convert").matches(l, name)
    };
    let e = |r: serde_json::Value| serde_json::json!({"matchExpressions": [r]});
    let f = |r: serde_json::Value| serde_json::json!({"matchFields": [r]});
    use serde_json::json;
    assert!(m(
        e(json!({"key": "gen", "operator": "Lt", "values": ["4"]})),
        &small,
        "small"
    ));
    assert!(!m(
        e(json!({"key": "gen", "operator": "Gt", "values": ["4"]})),
        &small,
        "small"
    ));
    assert!(!m(
        e(json!({"key": "zone", "operator": "Gt", "values": ["4"]})),
        &small,
        "small"
    ));
    assert!(m(
        e(json!({"key": "zone", "operator": "NotIn", "values": ["b"]})),
        &small,
        "small"
    ));
    assert!(m(
        e(json!({"key": "zone", "operator": "In", "values": ["a"]})),
        &small,
        "small"
    ));
    assert!(!m(
        e(json!({"key": "gpu", "operator": "Exists"})),
        &small,
        "small"
    ));
    assert!(m(
        f(json!({"key": "metadata.name", "operator": "In", "values": ["small"]})),
        &small,
        "small"
    ));
    assert!(!m(
        f(json!({"key": "metadata.name", "operator": "In", "values": ["small"]})),
        &small,
        "big"
    ));
    assert!(m(
        f(json!({"key": "metadata.name", "operator": "NotIn", "values": ["big"]})),
        &small,
        "small"
    ));
    // Node names are not label values.
    let long = "n".repeat(200);
    assert!(m(
        f(json!({"key": "metadata.name", "operator": "In", "values": [long]})),
        &small,
        &long
    ));
    // A node without a name skips the field requirements, as upstream.
    assert!(m(
        f(json!({"key": "metadata.name", "operator": "In", "values": ["x"]})),
        &small,
        ""
    ));
    // Labels and fields must both hold.
    assert!(!m(
        json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
               "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["big"]}]}),
        &small,
        "small"
    ));
    // A term with no requirements selects nothing; so does the default.
    assert!(!m(json!({}), &small, "small"));
    assert!(!m(
        json!({"matchExpressions": [], "matchFields": []}),
        &small,
        "small"
    ));
    assert!(!NodeTerm::default().matches(&small, "small"));
}

#[test]
fn node_term_errors_as_upstream() {
    use serde_json::json;
    for bad in [
        json!({"matchExpressions": [{"key": "gen", "operator": "Gt", "values": ["1", "2"]}]}),
        json!({"matchExpressions": [{"key": "gen", "operator": "Lt", "values": ["x"]}]}),
        json!({"matchExpressions": [{"key": "gen", "operator": "Near"}]}),
        json!({"matchExpressions": [{"key": "gen", "operator": "In"}]}),
        json!({"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}),
        json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a", "b"]}]}),
    ] {
        assert!(term(bad.clone()).is_err(), "{bad}");
    }
}
