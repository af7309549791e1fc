//! Label selectors: upstream's string syntax (`labels.Parse`) and the
//! structured `metav1.LabelSelector`, both reduced to one requirement list.
//!
//! Syntax: comma-separated requirements, each one of
//! `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k > 3`, `k < 3`. An empty selector matches everything.
//!
//! Also the two other selectors built from the same requirements: plain
//! label sets ([`set_matches`]: Service `spec.selector`, `nodeSelector`)
//! and node selector terms ([`NodeTerm`]: node affinity).
//!
//! This is the one label matcher of Kestrel: the API server, the
//! scheduler, the controllers and the NetworkPolicy compiler all match
//! through it. What a missing (`nil`) selector means differs by
//! API field and is decided by each caller.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::NodeSelectorTerm;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::validation;

/// Why a selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The text does not follow the selector grammar.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    /// A key or value breaks the label rules.
    #[error("unable to parse requirement: {0}")]
    InvalidValue(String),
    /// An unknown operator in a structured `LabelSelector`.
    #[error("{0:?} is not a valid label selector operator")]
    UnknownOperator(String),
}

/// One selector operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `k=v`, `k==v`, `k in (...)`.
    In(Vec<String>),
    /// `k!=v`, `k notin (...)`.
    NotIn(Vec<String>),
    /// `k`.
    Exists,
    /// `!k`.
    DoesNotExist,
    /// `k > n`.
    Gt(i64),
    /// `k < n`.
    Lt(i64),
}

/// One `key op values` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator with its operands.
    pub op: Op,
}

impl Requirement {
    /// Whether a label set satisfies this requirement. As upstream, `!=` and
    /// `notin` also match objects that lack the key.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_value(labels.get(&self.key).map(String::as_str))
    }

    /// Whether the key's value (`None`: the key is absent) satisfies this
    /// requirement.
    pub fn matches_value(&self, v: Option<&str>) -> bool {
        match &self.op {
            Op::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
            Op::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Op::Lt(n) => v
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }

    /// One structured requirement (`matchExpressions` item) as upstream's
    /// `labels.NewRequirement` checks it. `Gt`/`Lt` only when `numeric`
    /// (node selectors); label selectors know four operators.
    fn structured(
        key: &str,
        operator: &str,
        values: Option<&[String]>,
        numeric: bool,
    ) -> Result<Self, SelectorError> {
        check_key(key)?;
        let vals = values.unwrap_or_default();
        let op = match operator {
            "In" | "NotIn" => {
                if vals.is_empty() {
                    return Err(SelectorError::InvalidValue(
                        "for 'in', 'notin' operators, values set can't be empty".to_owned(),
                    ));
                }
                for v in vals {
                    check_value(v)?;
                }
                if operator == "In" {
                    Op::In(vals.to_vec())
                } else {
                    Op::NotIn(vals.to_vec())
                }
            }
            "Exists" | "DoesNotExist" => {
                if !vals.is_empty() {
                    return Err(SelectorError::InvalidValue(
                        "values set must be empty for exists and does not exist".to_owned(),
                    ));
                }
                if operator == "Exists" {
                    Op::Exists
                } else {
                    Op::DoesNotExist
                }
            }
            "Gt" | "Lt" if numeric => {
                let [v] = vals else {
                    return Err(SelectorError::InvalidValue(
                        "for 'Gt', 'Lt' operators, exactly one value is required".to_owned(),
                    ));
                };
                check_value(v)?;
                let n: i64 = v.parse().map_err(|_| {
                    SelectorError::InvalidValue(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    ))
                })?;
                if operator == "Gt" {
                    Op::Gt(n)
                } else {
                    Op::Lt(n)
                }
            }
            other => return Err(SelectorError::UnknownOperator(other.to_owned())),
        };
        Ok(Self {
            key: key.to_owned(),
            op,
        })
    }
}

/// Whether `labels` has every pair of `set`: an equality-based selector
/// from a plain map, as upstream's `labels.SelectorFromSet` (Service
/// `spec.selector`, `nodeSelector`, a template's labels). An empty set
/// matches everything; whether an empty or missing map selects anything
/// at all is the caller's business.
pub fn set_matches(set: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    set.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A parsed label selector: the AND of its requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    /// A structured selector with no requirements that must match nothing
    /// (`nil` selector in upstream workload semantics is handled by callers).
    nothing: bool,
}

impl Selector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches nothing.
    pub fn nothing() -> Self {
        Self {
            reqs: Vec::new(),
            nothing: true,
        }
    }

    /// Whether this selector has no requirements (matches all objects).
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty() && !self.nothing
    }

    /// The requirements, in the order given.
    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }

    /// Whether `labels` satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.nothing && self.reqs.iter().all(|r| r.matches(labels))
    }

    /// Match against an object's `metadata.labels` in JSON form.
    pub fn matches_json(&self, labels: Option<&serde_json::Value>) -> bool {
        if self.is_empty() {
            return true;
        }
        let mut map = BTreeMap::new();
        if let Some(obj) = labels.and_then(|l| l.as_object()) {
            for (k, v) in obj {
                if let Some(s) = v.as_str() {
                    map.insert(k.clone(), s.to_owned());
                }
            }
        }
        self.matches(&map)
    }

    /// Parse the string form used in `?labelSelector=`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            s: input.as_bytes(),
            src: input,
            i: 0,
        };
        let mut reqs = Vec::new();
        p.skip_ws();
        if p.at_end() {
            return Ok(Self::everything());
        }
        loop {
            reqs.push(p.requirement()?);
            p.skip_ws();
            if p.at_end() {
                break;
            }
            if !p.eat(b',') {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: ',' or 'end of string'",
                    p.rest_token()
                )));
            }
        }
        Ok(Self {
            reqs,
            nothing: false,
        })
    }

    /// Convert a structured `metav1.LabelSelector`, as upstream's
    /// `LabelSelectorAsSelector`. An empty one matches all. An error (an
    /// unknown operator, a bad key or value) is for the caller to report;
    /// callers that cannot report one match nothing, as upstream's
    /// controllers do.
    pub fn from_label_selector(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            check_key(k)?;
            check_value(v)?;
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::In(vec![v.clone()]),
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            reqs.push(Requirement::structured(
                &e.key,
                &e.operator,
                e.values.as_deref(),
                false,
            )?);
        }
        Ok(Self {
            reqs,
            nothing: false,
        })
    }
}

/// One `NodeSelectorTerm` (node affinity), as upstream's `nodeaffinity`
/// package reads it: requirements on the node's labels (`matchExpressions`,
/// with `Gt`/`Lt`) and on its fields (`matchFields`: `In`/`NotIn` of one
/// value; a node has one field, `metadata.name`), all of which must hold.
/// A term with no requirements selects no node; so does the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTerm {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl NodeTerm {
    /// Convert a term. Upstream treats a term that does not convert as
    /// selecting no node (`NodeTerm::default()`).
    pub fn new(t: &NodeSelectorTerm) -> Result<Self, SelectorError> {
        let labels = t
            .match_expressions
            .iter()
            .flatten()
            .map(|r| Requirement::structured(&r.key, &r.operator, r.values.as_deref(), true))
            .collect::<Result<_, _>>()?;
        let fields = t
            .match_fields
            .iter()
            .flatten()
            .map(|r| {
                // Field values are not label values (node names run to 253
                // characters): only the operator and the count are checked.
                let vals = r.values.as_deref().unwrap_or_default();
                let op = match r.operator.as_str() {
                    "In" => Op::In(vals.to_vec()),
                    "NotIn" => Op::NotIn(vals.to_vec()),
                    other => return Err(SelectorError::UnknownOperator(other.to_owned())),
                };
                if vals.len() != 1 {
                    return Err(SelectorError::InvalidValue(format!(
                        "{}: values: must have one element",
                        r.key
                    )));
                }
                Ok(Requirement {
                    key: r.key.clone(),
                    op,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { labels, fields })
    }

    /// Whether the node `name` with `labels` satisfies the term. An empty
    /// name (a node not yet named) skips the field requirements, as
    /// upstream.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        if self.labels.is_empty() && self.fields.is_empty() {
            return false;
        }
        // Upstream reads a field the node lacks as the empty string.
        let field = |key: &str| if key == "metadata.name" { name } else { "" };
        self.labels.iter().all(|r| r.matches(labels))
            && (name.is_empty()
                || self
                    .fields
                    .iter()
                    .all(|r| r.matches_value(Some(field(&r.key)))))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .reqs
            .iter()
            .map(|r| match &r.op {
                Op::In(v) if v.len() == 1 => format!("{}={}", r.key, v[0]),
                Op::In(v) => format!("{} in ({})", r.key, v.join(",")),
                Op::NotIn(v) if v.len() == 1 => format!("{}!={}", r.key, v[0]),
                Op::NotIn(v) => format!("{} notin ({})", r.key, v.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
                Op::Gt(n) => format!("{}>{n}", r.key),
                Op::Lt(n) => format!("{}<{n}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn check_key(k: &str) -> Result<(), SelectorError> {
    let errs = validation::qualified_name(k);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue(format!(
            "key: Invalid value: {k:?}: {}",
            errs.join("; ")
        )))
    }
}

fn check_value(v: &str) -> Result<(), SelectorError> {
    let errs = validation::label_value(v);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue(format!(
            "values[0][{v}]: Invalid value: {v:?}: {}",
            errs.join("; ")
        )))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn rest_token(&self) -> &str {
        let rest = self.src.get(self.i..).unwrap_or("");
        rest.split(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap_or("")
    }

    /// A key or value: everything up to whitespace or a special character.
    fn word(&mut self) -> &str {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace()
                || matches!(c, b',' | b'=' | b'!' | b'(' | b')' | b'<' | b'>')
            {
                break;
            }
            self.i += 1;
        }
        self.src.get(start..self.i).unwrap_or("")
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        let negated = self.eat(b'!');
        self.skip_ws();
        let key = self.word().to_owned();
        if key.is_empty() {
            return Err(SelectorError::Syntax(format!(
                "found '{}', expected: identifier",
                self.rest_token()
            )));
        }
        check_key(&key)?;
        if negated {
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        self.skip_ws();
        let op = match self.peek() {
            None | Some(b',') => {
                return Ok(Requirement {
                    key,
                    op: Op::Exists,
                });
            }
            Some(b'=') => {
                self.i += 1;
                self.eat(b'=');
                Op::In(vec![self.single_value()?])
            }
            Some(b'!') => {
                self.i += 1;
                if !self.eat(b'=') {
                    return Err(SelectorError::Syntax(format!(
                        "found '{}', expected: '=', '!=', '==', 'in', notin'",
                        self.rest_token()
                    )));
                }
                Op::NotIn(vec![self.single_value()?])
            }
            Some(b'>') | Some(b'<') => {
                let gt = self.peek() == Some(b'>');
                self.i += 1;
                let v = self.single_value()?;
                let n: i64 = v.parse().map_err(|_| {
                    SelectorError::InvalidValue(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                    ))
                })?;
                if gt { Op::Gt(n) } else { Op::Lt(n) }
            }
            Some(_) => {
                let w = self.word().to_owned();
                match w.as_str() {
                    "in" => Op::In(self.value_set()?),
                    "notin" => Op::NotIn(self.value_set()?),
                    _ => {
                        return Err(SelectorError::Syntax(format!(
                            "found '{w}', expected: '=', '!=', '==', 'in', notin'"
                        )));
                    }
                }
            }
        };
        Ok(Requirement { key, op })
    }

    fn single_value(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let v = self.word().to_owned();
        if matches!(self.peek(), Some(b'=' | b'!' | b'(' | b')' | b'<' | b'>')) {
            return Err(SelectorError::Syntax(format!(
                "found '{}', expected: identifier",
                self.rest_token()
            )));
        }
        check_value(&v)?;
        Ok(v)
    }

    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.skip_ws();
        if !self.eat(b'(') {
            return Err(SelectorError::Syntax(format!(
                "found '{}', expected: '('",
                self.rest_token()
            )));
        }
        let mut vals = Vec::new();
        loop {
            self.skip_ws();
            let v = self.word().to_owned();
            check_value(&v)?;
            vals.push(v);
            self.skip_ws();
            if self.eat(b')') {
                break;
            }
            if !self.eat(b',') {
                return Err(SelectorError::Syntax(format!(
                    "found '{}', expected: ',', or ')'",
                    self.rest_token()
                )));
            }
        }
        // `in ()` parses as one empty value upstream; an empty set of real
        // values cannot match and is rejected for in/notin.
        if vals.len() == 1 && vals[0].is_empty() {
            return Err(SelectorError::InvalidValue(
                "for 'in', 'notin' operators, values set can't be empty".to_owned(),
            ));
        }
        vals.sort();
        vals.dedup();
        Ok(vals)
    }
}

#[cfg(test)]
mod tests;
