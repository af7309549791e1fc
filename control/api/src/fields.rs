//! Field selectors (`?fieldSelector=`): upstream's syntax (`fields.ParseSelector`,
//! terms `f=v`, `f==v`, `f!=v`, joined by `,`, with `\` escapes) and matching
//! against the JSON object. Which fields a kind supports is declared in the
//! resource registry; anything else is refused with upstream's message.

use serde_json::Value;

/// Why a field selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldSelectorError {
    /// The text does not parse.
    #[error("invalid selector: '{0}'; can't understand '{1}'")]
    Syntax(String, String),
    /// A backslash escape that upstream does not accept.
    #[error("invalid field selector: invalid escape sequence: {0}")]
    Escape(String),
    /// The kind does not index this field.
    #[error("field label not supported: {0}")]
    Unsupported(String),
}

/// A field-selector term operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    /// `=` or `==`.
    Equals,
    /// `!=`.
    NotEquals,
}

/// One `field op value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    /// Dotted field path, e.g. `spec.nodeName`.
    pub field: String,
    /// The operator.
    pub op: FieldOp,
    /// The (unescaped) value.
    pub value: String,
}

/// A parsed field selector: the AND of its terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Fields every kind supports.
pub const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Fields whose absence means `false` rather than empty, as upstream's
/// per-kind field-set functions render them.
const BOOLEAN_FIELDS: &[&str] = &["spec.hostNetwork", "spec.unschedulable"];

impl FieldSelector {
    /// Whether there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms in order.
    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// Parse the query-string form.
    pub fn parse(input: &str) -> Result<Self, FieldSelectorError> {
        let mut terms = Vec::new();
        if input.trim().is_empty() {
            return Ok(Self::default());
        }
        for raw in split_unescaped(input, ',') {
            if raw.is_empty() {
                continue;
            }
            let (field, op, value) = split_term(&raw)
                .ok_or_else(|| FieldSelectorError::Syntax(input.to_owned(), raw.clone()))?;
            terms.push(FieldTerm {
                field: field.trim().to_owned(),
                op,
                value: unescape(value)?,
            });
        }
        Ok(Self { terms })
    }

    /// Refuse terms on fields the kind does not support.
    pub fn check_supported(&self, extra: &[&str]) -> Result<(), FieldSelectorError> {
        for t in &self.terms {
            if !COMMON_FIELDS.contains(&t.field.as_str()) && !extra.contains(&t.field.as_str()) {
                return Err(FieldSelectorError::Unsupported(t.field.clone()));
            }
        }
        Ok(())
    }

    /// Whether the object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let v = field_value(obj, &t.field);
            match t.op {
                FieldOp::Equals => v == t.value,
                FieldOp::NotEquals => v != t.value,
            }
        })
    }

    /// The value the selector pins `field` to with `=`, if any; lets the
    /// server narrow a list to one name or namespace cheaply.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && t.op == FieldOp::Equals)
            .map(|t| t.value.as_str())
    }
}

/// The string value of a dotted field path in `obj`, as upstream renders it
/// into field sets: missing strings are empty, missing booleans `false`.
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => {
                return if BOOLEAN_FIELDS.contains(&path) {
                    "false".to_owned()
                } else {
                    String::new()
                };
            }
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if escaped {
        cur.push('\\');
    }
    out.push(cur);
    out
}

/// Split at the first unescaped operator, preferring `!=` and `==` over `=`.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        if term[i..].starts_with("!=") {
            return Some((&term[..i], FieldOp::NotEquals, &term[i + 2..]));
        }
        if term[i..].starts_with("==") {
            return Some((&term[..i], FieldOp::Equals, &term[i + 2..]));
        }
        if b[i] == b'=' {
            return Some((&term[..i], FieldOp::Equals, &term[i + 1..]));
        }
        i += 1;
    }
    None
}

fn unescape(v: &str) -> Result<String, FieldSelectorError> {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if c == '=' || c == ',' {
                return Err(FieldSelectorError::Escape(format!(
                    "unescaped {c:?} in value {v:?}"
                )));
            }
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=')) => out.push(e),
            other => {
                return Err(FieldSelectorError::Escape(format!(
                    "\\{}",
                    other.map(String::from).unwrap_or_default()
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "p1", "namespace": "default"},
            "spec": {"nodeName": "n1", "restartPolicy": "Always"},
            "status": {"phase": "Running"}
        })
    }

    #[test]
    fn parses_and_matches_terms() {
        let s = FieldSelector::parse("spec.nodeName=n1,status.phase!=Pending").expect("parse");
        assert_eq!(s.terms().len(), 2);
        assert!(s.matches(&pod()));
        assert!(
            !FieldSelector::parse("metadata.name==p2")
                .expect("parse")
                .matches(&pod())
        );
        assert!(
            FieldSelector::parse("spec.hostNetwork=false")
                .expect("parse")
                .matches(&pod())
        );
        assert!(
            FieldSelector::parse("spec.nodeName=")
                .expect("parse")
                .matches(&json!({}))
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=p1")
                .expect("p")
                .exact("metadata.name"),
            Some("p1")
        );
    }

    #[test]
    fn escapes() {
        let s = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").expect("parse");
        assert_eq!(s.terms()[0].value, r"a,b=c\d");
        assert!(FieldSelector::parse(r"metadata.name=a\x").is_err());
    }

    #[test]
    fn syntax_error_uses_upstream_wording() {
        let e = FieldSelector::parse("foo").expect_err("no operator");
        assert_eq!(
            e.to_string(),
            "invalid selector: 'foo'; can't understand 'foo'"
        );
    }

    #[test]
    fn unsupported_field_message() {
        let s = FieldSelector::parse("spec.foo=bar").expect("parse");
        let e = s
            .check_supported(&["spec.nodeName"])
            .expect_err("unsupported");
        assert_eq!(e.to_string(), "field label not supported: spec.foo");
        assert!(
            FieldSelector::parse("metadata.namespace=x")
                .expect("p")
                .check_supported(&[])
                .is_ok()
        );
    }
}
