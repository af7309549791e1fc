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
