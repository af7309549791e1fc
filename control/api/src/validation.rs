//! Name and label validation with upstream's rules and message wording
//! (`k8s.io/apimachinery/pkg/util/validation`). Each function returns the list
//! of problems, empty when the value is valid, so callers can turn every
//! problem into its own `FieldError`.

use std::collections::BTreeMap;

use crate::status::FieldError;

/// Longest DNS-1123 label.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Longest label value and qualified-name part.
pub const QUALIFIED_NAME_MAX: usize = 63;

const LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const SUBDOMAIN_FMT: &str = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const QUALIFIED_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
}

fn matches_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn max_len_msg(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// RFC 1123 label: namespaces, services and most names that become DNS labels.
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errs.push(max_len_msg(DNS1123_LABEL_MAX));
    }
    if !matches_dns_label(value) {
        errs.push(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{LABEL_FMT}')"
        ));
    }
    errs
}

/// RFC 1123 subdomain: the default rule for object names.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errs.push(max_len_msg(DNS1123_SUBDOMAIN_MAX));
    }
    if value.is_empty() || !value.split('.').all(matches_dns_label) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{SUBDOMAIN_FMT}')"
        ));
    }
    errs
}

/// A qualified name (`[prefix/]name`), the rule for label and annotation keys.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => {
            if n.contains('/') {
                errs.push(format!(
                    "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_FMT}') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
                ));
                return errs;
            }
            (Some(p), n)
        }
        None => (None, value),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errs.push(format!("name part {}", max_len_msg(QUALIFIED_NAME_MAX)));
        }
        if !matches_qualified_part(name) {
            errs.push(format!(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{QUALIFIED_FMT}')"
            ));
        }
    }
    errs
}

/// A label value: empty, or up to 63 qualified-name characters.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > QUALIFIED_NAME_MAX {
        errs.push(max_len_msg(QUALIFIED_NAME_MAX));
    }
    if !value.is_empty() && !matches_qualified_part(value) {
        errs.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '{LABEL_VALUE_FMT}')"
        ));
    }
    errs
}

/// Validate a whole label map at `field` (e.g. `metadata.labels`).
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (k, v) in labels {
        for m in qualified_name(k) {
            out.push(FieldError::invalid(field, k, m));
        }
        for m in label_value(v) {
            out.push(FieldError::invalid(format!("{field}[{k}]"), v, m));
        }
    }
    out
}

/// Total size limit for annotations, as upstream.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Validate annotation keys and total size at `field`.
pub fn annotations(field: &str, annotations: &BTreeMap<String, String>) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for (k, v) in annotations {
        total += k.len() + v.len();
        for m in qualified_name(&k.to_ascii_lowercase()) {
            out.push(FieldError::invalid(field, k, m));
        }
    }
    if total > ANNOTATIONS_MAX_BYTES {
        out.push(FieldError {
            reason: "FieldValueTooLong",
            field: field.to_owned(),
            detail: format!("Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"),
        });
    }
    out
}

/// How a kind's names are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain (most kinds).
    Subdomain,
    /// RFC 1123 label (namespaces, services).
    Label,
    /// Path segment only: no `/`, `%`, `.` or `..` (RBAC objects).
    PathSegment,
}

impl NameRule {
    /// Problems with `name` under this rule.
    pub fn check(self, name: &str) -> Vec<String> {
        match self {
            Self::Subdomain => dns1123_subdomain(name),
            Self::Label => dns1123_label(name),
            Self::PathSegment => path_segment(name),
        }
    }
}

/// Upstream's `IsValidPathSegmentName`.
pub fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    let mut errs = Vec::new();
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomain_accepts_and_rejects() {
        for ok in [
            "a",
            "abc",
            "a-b",
            "a.b",
            "0",
            "x.y-z.example.com",
            &"a".repeat(253),
        ] {
            assert!(dns1123_subdomain(ok).is_empty(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", ".a", "a.", "a_b", "ä", "a/b"] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad:?}");
        }
        let long = "a".repeat(300);
        assert_eq!(
            dns1123_subdomain(&long),
            vec!["must be no more than 253 characters"]
        );
    }

    #[test]
    fn label_rejects_dots_and_length() {
        assert!(dns1123_label("kube-system").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
        assert!(dns1123_label(&"a".repeat(63)).is_empty());
        assert!(dns1123_label("Bad")[0].starts_with("a lowercase RFC 1123 label"));
    }

    #[test]
    fn qualified_names_for_label_keys() {
        for ok in ["app", "app.kubernetes.io/name", "A_b.c-D", "x/y"] {
            assert!(qualified_name(ok).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "-a",
            "a-",
            "Example.com/a",
            &"a".repeat(64),
        ] {
            assert!(!qualified_name(bad).is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn label_values() {
        assert!(label_value("").is_empty());
        assert!(label_value("v1.2_x-Y").is_empty());
        assert!(!label_value("-v").is_empty());
        assert!(!label_value("a b").is_empty());
        assert!(!label_value(&"v".repeat(64)).is_empty());
    }

    #[test]
    fn label_maps_produce_field_errors() {
        let mut m = BTreeMap::new();
        m.insert("good".to_owned(), "ok".to_owned());
        m.insert("bad key".to_owned(), "ok".to_owned());
        m.insert("k".to_owned(), "bad value".to_owned());
        let errs = labels("metadata.labels", &m);
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().any(|e| e.field == "metadata.labels[k]"));
    }

    #[test]
    fn path_segment_names() {
        assert!(path_segment("system:masters").is_empty());
        assert!(!path_segment("..").is_empty());
        assert!(!path_segment("a/b").is_empty());
    }
}
