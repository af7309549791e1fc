//! Validation of values against a [`Structural`] schema: kube-openapi's
//! `validate.SchemaValidator` as apiextensions converts its results to field
//! errors, `listtype.ValidateListSetsAndMaps`, and the CEL rule walk of
//! `schema/cel.Validator`, with ratcheting of unchanged values on update.
//!
//! kube-openapi names values by dotted paths without a root (`spec.ports[0]`,
//! map keys dotted too); the list-type and CEL walks use `field.Path`
//! rendering (`spec.labels[key]`); a root-level error has no path, which
//! upstream renders as `<nil>`.

use super::{AdditionalProperties, FieldError, Structural, formats};
use serde_json::Value;
use std::collections::HashMap;

/// What upstream prints for a nil `field.Path`.
const NIL: &str = "<nil>";

// ---- Go-compatible rendering of field errors ----

/// Go's `strconv.Quote`, for the printable-Unicode case Go shares with JSON.
pub(super) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` of a float64.
pub(super) fn go_float(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f.is_infinite() {
            if f > 0.0 {
                "+Inf".into()
            } else {
                "-Inf".into()
            }
        } else {
            "0".into()
        };
    }
    let exp = f.abs().log10().floor();
    if (-4.0..21.0).contains(&exp) {
        return format!("{f}");
    }
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// Go's `json.Marshal` of a JSON value (HTML-safe escapes included).
pub(super) fn go_json(v: &Value) -> String {
    serde_json::to_string(v)
        .unwrap_or_default()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// How `field.Error` prints a bad value.
pub(super) fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| go_float(n.as_f64().unwrap_or(0.0)), |i| i.to_string()),
        Value::Bool(b) => b.to_string(),
        _ => go_json(v),
    }
}

fn body(kind: &str, value: Option<&str>, detail: &str) -> String {
    let mut s = kind.to_owned();
    if let Some(v) = value {
        s.push_str(": ");
        s.push_str(v);
    }
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(detail);
    }
    s
}

/// `field.Invalid` with an already rendered value (`None`: omitted).
pub(super) fn invalid(field: &str, value: Option<&str>, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: field.to_owned(),
        detail: body("Invalid value", value, detail),
    }
}

/// `field.TypeInvalid`.
fn type_invalid(field: &str, value: &str, detail: &str) -> FieldError {
    FieldError {
        reason: "FieldValueTypeInvalid",
        field: field.to_owned(),
        detail: body("Invalid value", Some(value), detail),
    }
}

/// `field.NotSupported` with a rendered value and the allowed values.
pub(super) fn not_supported(field: &str, value: &str, allowed: &[String]) -> FieldError {
    let quoted: Vec<String> = allowed.iter().map(|a| go_quote(a)).collect();
    let detail = if quoted.is_empty() {
        String::new()
    } else {
        format!("supported values: {}", quoted.join(", "))
    };
    FieldError {
        reason: "FieldValueNotSupported",
        field: field.to_owned(),
        detail: body("Unsupported value", Some(value), &detail),
    }
}

/// `field.Duplicate` with a rendered value (`None`: omitted).
fn duplicate(field: &str, value: Option<&str>) -> FieldError {
    FieldError {
        reason: "FieldValueDuplicate",
        field: field.to_owned(),
        detail: body("Duplicate value", value, ""),
    }
}

fn too_long(field: &str, max: i64) -> FieldError {
    let unit = if max == 1 { "byte" } else { "bytes" };
    FieldError {
        reason: "FieldValueTooLong",
        field: field.to_owned(),
        detail: format!("Too long: may not be more than {max} {unit}"),
    }
}

fn too_many(field: &str, actual: usize, max: i64) -> FieldError {
    let unit = if max == 1 { "item" } else { "items" };
    FieldError {
        reason: "FieldValueTooMany",
        field: field.to_owned(),
        detail: format!("Too many: {actual}: must have at most {max} {unit}"),
    }
}

// ---- field.Path rendering ----

pub(super) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

pub(super) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

fn or_nil(path: &str) -> &str {
    if path.is_empty() { NIL } else { path }
}

// ---- kube-openapi schema validation ----

/// Validates values against a schema the way kube-openapi does, collecting
/// apiextensions-style field errors. `base` is the `fldPath` the results are
/// reported under (`None` for a custom resource itself).
pub(super) struct Openapi<'a> {
    base: Option<&'a str>,
    /// Errors so far.
    pub(super) errs: Vec<FieldError>,
}

/// `swag.IsFloat64AJSONInteger`.
fn is_json_integer(f: f64) -> bool {
    if !f.is_finite() {
        return false;
    }
    let r = f.round();
    f == r || ((f - r).abs() / (f.abs() + r.abs())) < 1e-9
}

/// Whether `f`, printed as Go's `FormatFloat(f, 'f', -1)`, parses as an int64.
fn fits_i64(f: f64) -> bool {
    f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f)
}

#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn of(v: &Value) -> Option<Num> {
        let n = v.as_number()?;
        Some(
            n.as_i64()
                .map_or_else(|| Num::Float(n.as_f64().unwrap_or(0.0)), Num::Int),
        )
    }
    fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
    fn show(self) -> String {
        match self {
            Num::Int(i) => i.to_string(),
            Num::Float(f) => go_float(f),
        }
    }
}

impl<'a> Openapi<'a> {
    pub(super) fn new(base: Option<&'a str>) -> Self {
        Self {
            base,
            errs: Vec::new(),
        }
    }

    /// The field of the value kube-openapi names `name`.
    fn field(&self, name: &str) -> String {
        if name.is_empty() || name == "." {
            return self.base.unwrap_or(NIL).to_owned();
        }
        let name = name.strip_prefix('.').unwrap_or(name);
        self.base
            .map_or_else(|| name.to_owned(), |b| format!("{b}.{name}"))
    }

    /// A non-`Validation` kube-openapi error, reported at the base path.
    fn plain(&mut self, msg: String) {
        let f = self.base.unwrap_or(NIL).to_owned();
        self.errs.push(invalid(&f, Some("\"\""), &msg));
    }

    fn sub(&self) -> Openapi<'a> {
        Openapi::new(self.base)
    }

    /// Validate `v` (named `name`) against `s`; with `old`, an unchanged
    /// value is not checked (ratcheting).
    pub(super) fn node(&mut self, s: &Structural, v: &Value, name: &str, old: Option<&Value>) {
        if old.is_some_and(|o| o == v) {
            return;
        }
        let one = [s.type_.as_str()];
        let types: &[&str] = if s.int_or_string {
            &["integer", "string"]
        } else if s.type_.is_empty() {
            &[]
        } else {
            &one
        };
        let format = formats::supported(&s.format);
        if v.is_null() {
            if !types.is_empty() && !s.nullable {
                let msg = format!(
                    "{name} in body must be of type {}: \"null\"",
                    types.join(",")
                );
                self.errs
                    .push(type_invalid(&self.field(name), "\"null\"", &msg));
            }
            self.enumeration(s, v, name);
            return;
        }
        self.types(s, v, name, types, format.is_some());
        self.combinators(s, v, name);
        match v {
            Value::String(text) => {
                self.string(s, text, name);
                if let Some(f) = &format
                    && !formats::valid(f, text)
                {
                    let msg = format!(
                        "{name} in body must be of type {}: {}",
                        s.format,
                        go_quote(text)
                    );
                    self.errs
                        .push(type_invalid(&self.field(name), &go_quote(text), &msg));
                }
            }
            Value::Number(_) => {
                let int_type = types == ["integer"];
                if let Some(n) = Num::of(v) {
                    self.number(s, n, name, int_type);
                }
            }
            _ => {}
        }
        if let Value::Array(items) = v {
            self.array(s, items, name, old);
        }
        self.enumeration(s, v, name);
        if let Value::Object(map) = v {
            self.object(s, map, name, old);
        }
    }

    fn types(&mut self, s: &Structural, v: &Value, name: &str, types: &[&str], has_format: bool) {
        if types.is_empty() && !has_format {
            return;
        }
        let (sch, data_format) = match v {
            Value::Bool(_) => ("boolean", ""),
            Value::String(_) => ("string", ""),
            Value::Number(n) if n.is_i64() => ("integer", "int64"),
            Value::Number(_) => ("number", "float64"),
            Value::Array(_) => ("array", ""),
            _ => ("object", ""),
        };
        let contains = |t: &str| types.contains(&t);
        let float_int =
            sch == "number" && v.as_f64().is_some_and(is_json_integer) && contains("integer");
        let int_float = sch == "integer" && contains("number");
        let stringish = matches!(v, Value::String(_) | Value::Array(_));
        if !stringish
            && has_format
            && !(contains(sch) || data_format == s.format || float_int || int_float)
        {
            let msg = format!(
                "{name} in body must be of type {}: {}",
                s.format,
                go_quote(data_format)
            );
            self.errs.push(type_invalid(
                &self.field(name),
                &go_quote(data_format),
                &msg,
            ));
            return;
        }
        if !(contains("number") || contains("integer")) && has_format && stringish {
            return;
        }
        if !(contains(sch) || float_int || int_float) {
            let msg = format!(
                "{name} in body must be of type {}: {}",
                types.join(","),
                go_quote(sch)
            );
            self.errs
                .push(type_invalid(&self.field(name), &go_quote(sch), &msg));
        }
    }

    /// Whether `v` passes `s` entirely, and the errors if not.
    fn try_node(&self, s: &Structural, v: &Value, name: &str) -> Vec<FieldError> {
        let mut sub = self.sub();
        sub.node(s, v, name, None);
        sub.errs
    }

    fn combinators(&mut self, s: &Structural, v: &Value, name: &str) {
        if !s.any_of.is_empty() {
            let results: Vec<Vec<FieldError>> =
                s.any_of.iter().map(|a| self.try_node(a, v, name)).collect();
            if results.iter().all(|r| !r.is_empty()) {
                self.plain(format!(
                    "{} must validate at least one schema (anyOf)",
                    go_quote(name)
                ));
                if let Some(best) = results.into_iter().min_by_key(Vec::len) {
                    self.errs.extend(best);
                }
            }
        }
        if !s.one_of.is_empty() {
            let results: Vec<Vec<FieldError>> =
                s.one_of.iter().map(|a| self.try_node(a, v, name)).collect();
            let valid = results.iter().filter(|r| r.is_empty()).count();
            if valid != 1 {
                let more = if valid == 0 {
                    "Found none valid".to_owned()
                } else {
                    format!("Found {valid} valid alternatives")
                };
                self.plain(format!(
                    "{} must validate one and only one schema (oneOf). {more}",
                    go_quote(name)
                ));
                if valid == 0
                    && let Some(best) = results.into_iter().min_by_key(Vec::len)
                {
                    self.errs.extend(best);
                }
            }
        }
        if !s.all_of.is_empty() {
            let mut valid = 0;
            for a in &s.all_of {
                let r = self.try_node(a, v, name);
                valid += usize::from(r.is_empty());
                self.errs.extend(r);
            }
            if valid != s.all_of.len() {
                let more = if valid == 0 { ". None validated" } else { "" };
                self.plain(format!(
                    "{} must validate all the schemas (allOf){more}",
                    go_quote(name)
                ));
            }
        }
        if let Some(not) = &s.not
            && self.try_node(not, v, name).is_empty()
        {
            self.plain(format!(
                "{} must not validate the schema (not)",
                go_quote(name)
            ));
        }
    }

    fn string(&mut self, s: &Structural, text: &str, name: &str) {
        let len = text.chars().count() as i64;
        if let Some(max) = s.max_length.filter(|m| len > *m) {
            self.errs.push(too_long(&self.field(name), max));
        } else if let Some(min) = s.min_length.filter(|m| len < *m) {
            let msg = format!("{name} in body should be at least {min} chars long");
            self.errs
                .push(invalid(&self.field(name), Some(&go_quote(text)), &msg));
        } else if let Some(re) = s.pattern.as_ref().filter(|re| !re.is_match(text)) {
            let msg = format!("{name} in body should match '{}'", re.as_str());
            self.errs
                .push(invalid(&self.field(name), Some(&go_quote(text)), &msg));
        }
    }

    fn number(&mut self, s: &Structural, n: Num, name: &str, int_type: bool) {
        let range_ok = |f: f64| !int_type || fits_i64(f);
        if let Num::Float(f) = n
            && !range_ok(f)
        {
            self.plain(format!(
                "Checked value must be of type integer (default format) in {name}"
            ));
        }
        if let Some(factor) = s.multiple_of {
            if !range_ok(factor) {
                self.plain(format!(
                    "MultipleOf value must be of type integer (default format) in {name}"
                ));
            }
            let failed = match n {
                Num::Int(i) if range_ok(factor) => {
                    let fi = factor as i64;
                    if fi <= 0 {
                        Some((true, fi.to_string()))
                    } else {
                        (i % fi != 0).then(|| (false, fi.to_string()))
                    }
                }
                _ => {
                    let data = n.f();
                    if factor <= 0.0 {
                        Some((true, go_float(factor)))
                    } else {
                        let mult = if factor < 1.0 {
                            1.0 / factor * data
                        } else {
                            data / factor
                        };
                        (!is_json_integer(mult)).then(|| (false, go_float(factor)))
                    }
                }
            };
            match failed {
                Some((true, f)) => {
                    let msg =
                        format!("factor MultipleOf declared for {name} must be positive: {f}");
                    self.errs.push(invalid(&self.field(name), Some(&f), &msg));
                }
                Some((false, f)) => {
                    let msg = format!("{name} in body should be a multiple of {f}");
                    self.errs
                        .push(invalid(&self.field(name), Some(&n.show()), &msg));
                }
                None => {}
            }
        }
        let bounds = [
            (
                s.minimum,
                s.exclusive_minimum,
                "Minimum boundary",
                "greater than",
            ),
            (
                s.maximum,
                s.exclusive_maximum,
                "Maximum boundary",
                "less than",
            ),
        ];
        for (bound, exclusive, prefix, word) in bounds {
            let Some(b) = bound else { continue };
            if !range_ok(b) {
                self.plain(format!(
                    "{prefix} value must be of type integer (default format) in {name}"
                ));
            }
            let lower = word == "greater than";
            let int_bound = matches!(n, Num::Int(_)) && range_ok(b);
            let fails = match n {
                Num::Int(i) if int_bound => {
                    let bi = b as i64;
                    if lower {
                        i < bi || (exclusive && i == bi)
                    } else {
                        i > bi || (exclusive && i == bi)
                    }
                }
                _ => {
                    let d = n.f();
                    if lower {
                        d < b || (exclusive && d == b)
                    } else {
                        d > b || (exclusive && d == b)
                    }
                }
            };
            if fails {
                let shown = if int_bound {
                    (b as i64).to_string()
                } else {
                    go_float(b)
                };
                let eq = if exclusive { "" } else { " or equal to" };
                let msg = format!("{name} in body should be {word}{eq} {shown}");
                self.errs
                    .push(invalid(&self.field(name), Some(&n.show()), &msg));
            }
        }
    }

    fn array(&mut self, s: &Structural, items: &[Value], name: &str, old: Option<&Value>) {
        if let Some(item) = &s.items {
            let old_items = old.and_then(Value::as_array);
            for (i, v) in items.iter().enumerate() {
                let old = old_items.and_then(|o| correlate(s, o, v));
                self.node(item, v, &format!("{name}[{i}]"), old);
            }
        }
        if let Some(min) = s.min_items.filter(|m| (items.len() as i64) < *m) {
            let msg = format!("{name} in body should have at least {min} items");
            self.errs.push(invalid(
                &self.field(name),
                Some(&items.len().to_string()),
                &msg,
            ));
        }
        if let Some(max) = s.max_items.filter(|m| (items.len() as i64) > *m) {
            self.errs
                .push(too_many(&self.field(name), items.len(), max));
        }
    }

    fn enumeration(&mut self, s: &Structural, v: &Value, name: &str) {
        let Some(values) = &s.enum_ else { return };
        if values.is_empty() || (!v.is_null() && values.iter().any(|e| enum_matches(v, e))) {
            return;
        }
        let allowed: Vec<String> = values
            .iter()
            .map(|e| e.as_str().map_or_else(|| go_json(e), str::to_owned))
            .collect();
        self.errs
            .push(not_supported(&self.field(name), &go_value(v), &allowed));
    }

    fn object(
        &mut self,
        s: &Structural,
        map: &serde_json::Map<String, Value>,
        name: &str,
        old: Option<&Value>,
    ) {
        let n = map.len();
        if let Some(min) = s.min_properties.filter(|m| (n as i64) < *m) {
            let msg = format!("{name} in body should have at least {min} properties");
            self.errs
                .push(invalid(&self.field(name), Some(&n.to_string()), &msg));
        }
        if let Some(max) = s.max_properties.filter(|m| (n as i64) > *m) {
            self.errs.push(too_many(&self.field(name), n, max));
        }
        let old = old.and_then(Value::as_object);
        match &s.additional_properties {
            Some(AdditionalProperties::Bool(false)) => {
                for k in map.keys().filter(|k| !s.properties.contains_key(*k)) {
                    let msg = format!("{name}.{k} in body is a forbidden property");
                    self.errs
                        .push(invalid(&self.field(name), Some(&go_quote(k)), &msg));
                }
            }
            Some(AdditionalProperties::Schema(a)) => {
                for (k, v) in map.iter().filter(|(k, _)| !s.properties.contains_key(*k)) {
                    self.node(a, v, &format!("{name}.{k}"), old.and_then(|o| o.get(k)));
                }
            }
            _ => {}
        }
        for (k, p) in &s.properties {
            if let Some(v) = map.get(k) {
                let child = if name.is_empty() {
                    k.clone()
                } else {
                    format!("{name}.{k}")
                };
                self.node(p, v, &child, old.and_then(|o| o.get(k)));
            }
        }
        for k in s.required.iter().filter(|k| !map.contains_key(*k)) {
            let f = self.field(&format!("{name}.{k}"));
            self.errs.push(FieldError::required(f, ""));
        }
    }
}

/// kube-openapi's enum comparison: deep equality, numbers converted to the
/// enum value's type (so an integer enum value matches a float truncating).
fn enum_matches(v: &Value, e: &Value) -> bool {
    match (Num::of(v), Num::of(e)) {
        (Some(a), Some(Num::Int(b))) => match a {
            Num::Int(a) => a == b,
            Num::Float(f) => f.trunc() == b as f64,
        },
        (Some(a), Some(Num::Float(b))) => a.f() == b,
        _ => v == e,
    }
}

/// The old item a new list item corresponds to: by key for list-type map
/// lists, by equality for sets; atomic lists don't correlate.
fn correlate<'v>(s: &Structural, old: &'v [Value], item: &Value) -> Option<&'v Value> {
    match s.list_type.as_deref() {
        Some("map") => {
            let keys = |v: &Value| -> Vec<Option<Value>> {
                s.list_map_keys.iter().map(|k| v.get(k).cloned()).collect()
            };
            let want = keys(item);
            old.iter().find(|o| o.is_object() && keys(o) == want)
        }
        Some("set") => old.iter().find(|o| *o == item),
        _ => None,
    }
}

// ---- x-kubernetes-list-type ----

/// `listtype.ValidateListSetsAndMaps` over the value at `path`.
fn list_types(s: &Structural, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if !s.has_keyed_lists_below() {
        return; // nothing below can fail
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if let Some(p) = s.properties.get(k) {
                    if p.has_keyed_lists_below() {
                        list_types(p, v, &child(path, k), errs);
                    }
                } else if let Some(AdditionalProperties::Schema(a)) = &s.additional_properties
                    && a.has_keyed_lists_below()
                {
                    list_types(a, v, &key(path, k), errs);
                }
            }
        }
        Value::Array(items) => {
            match s.list_type.as_deref() {
                Some("set") => {
                    for i in repeats(items.iter().map(canonical)) {
                        errs.push(duplicate(
                            &key(path, &i.to_string()),
                            Some(&go_value(&items[i])),
                        ));
                    }
                }
                Some("map") => list_map(s, items, path, errs),
                _ => {}
            }
            if let Some(item) = s.items.as_deref().filter(|i| i.has_keyed_lists_below()) {
                for (i, v) in items.iter().enumerate() {
                    list_types(item, v, &key(path, &i.to_string()), errs);
                }
            }
        }
        _ => {}
    }
}

fn canonical(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The indices where a value occurs for the second time.
fn repeats(keys: impl Iterator<Item = String>) -> Vec<usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, k) in keys.enumerate() {
        let n = seen.entry(k).or_insert(0);
        *n += 1;
        if *n == 2 {
            out.push(i);
        }
    }
    out
}

fn list_map(s: &Structural, items: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    if let Some((i, x)) = items
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_null() && !x.is_object())
    {
        let msg = "must be an object for an array of list-type map";
        errs.push(invalid(&key(path, &i.to_string()), Some(&go_value(x)), msg));
        return;
    }
    let key_maps: Vec<Value> = items
        .iter()
        .map(|x| {
            let m = s
                .list_map_keys
                .iter()
                .filter_map(|k| Some((k.clone(), x.get(k)?.clone())))
                .collect();
            Value::Object(m)
        })
        .collect();
    // With one key, an absent key is its own value, unlike any present one.
    let ids = key_maps
        .iter()
        .map(|m| match (s.list_map_keys.len(), m.as_object()) {
            (1, Some(o)) if o.is_empty() => "\u{0}unspecified".to_owned(),
            (1, Some(o)) => o.values().next().map(canonical).unwrap_or_default(),
            _ => canonical(m),
        });
    for i in repeats(ids) {
        errs.push(duplicate(
            &key(path, &i.to_string()),
            Some(&go_json(&key_maps[i])),
        ));
    }
}

// ---- CEL ----

/// The message of a failed rule without a (usable) messageExpression.
fn rule_message(r: &super::ValidationRule) -> String {
    let msg = r.message.trim();
    if msg.is_empty() {
        format!("failed rule: {}", r.rule.trim())
    } else {
        msg.to_owned()
    }
}

/// `cel.Validator.validate` at `path`; with `ratchet`, failures of rules
/// without oldSelf on unchanged values are dropped. False once evaluation
/// must stop (cost limit exceeded).
pub(super) fn cel_walk(
    s: &Structural,
    v: &Value,
    old: Option<&Value>,
    path: &str,
    ratchet: bool,
    errs: &mut Vec<FieldError>,
) -> bool {
    if v.is_null() || !s.has_rules_below() {
        return true;
    }
    // Converted once for all of this node's rules, and only when it has any.
    let mut bindings = None;
    for r in &s.validations {
        let Some(rule) = &r.compiled else { continue };
        let b = bindings.get_or_insert_with(|| super::cel::Bindings::new(v, old));
        let shown = if r.message.trim().is_empty() {
            r.rule.trim()
        } else {
            r.message.trim()
        };
        let typ = go_quote(&s.type_);
        match rule.eval_with(b) {
            Ok(None) => {}
            Err(e) if e.starts_with("no such overload") => {
                let msg = format!(
                    "'{e}': call arguments did not match a supported operator, function or macro signature for rule: {shown}"
                );
                errs.push(invalid(or_nil(path), Some(&typ), &msg));
            }
            Err(e) if e.starts_with("operation cancelled: actual cost limit exceeded") => {
                let msg = format!(
                    "'{e}': no further validation rules will be run due to call cost exceeds limit for rule: {shown}"
                );
                errs.push(invalid(or_nil(path), Some(&typ), &msg));
                return false;
            }
            Err(e) => errs.push(invalid(
                or_nil(path),
                Some(&typ),
                &format!("{e} evaluating rule: {shown}"),
            )),
            Ok(Some(msg)) => {
                if ratchet && !rule.uses_old_self() && old.is_some_and(|o| o == v) {
                    continue; // ratcheted: upstream only warns
                }
                let fp = r.field_path.trim().trim_start_matches('.');
                let at = if fp.is_empty() {
                    path.to_owned()
                } else {
                    child(path, fp)
                };
                let at = or_nil(&at);
                let detail = if msg.is_empty() { rule_message(r) } else { msg };
                let value = (s.type_ != "object" && s.type_ != "array").then(|| go_value(v));
                errs.push(match r.reason.as_deref() {
                    Some("FieldValueForbidden") => FieldError::forbidden(at, detail),
                    Some("FieldValueRequired") => FieldError::required(at, detail),
                    Some("FieldValueDuplicate") => duplicate(at, value.as_deref()),
                    _ => invalid(at, value.as_deref(), &detail),
                });
            }
        }
    }
    match v {
        Value::Object(map) => {
            let old = old.and_then(Value::as_object);
            for (k, v) in map {
                let o = old.and_then(|o| o.get(k));
                // Paths are built only for subtrees with rules in them.
                let next = match (s.properties.get(k), &s.additional_properties) {
                    (Some(p), _) if !p.has_rules_below() => None,
                    (Some(p), _) => Some((p, child(path, k))),
                    (None, Some(AdditionalProperties::Schema(a))) if !a.has_rules_below() => None,
                    (None, Some(AdditionalProperties::Schema(a))) => Some((&**a, key(path, k))),
                    _ => None,
                };
                if let Some((sub, p)) = next
                    && !cel_walk(sub, v, o, &p, ratchet, errs)
                {
                    return false;
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.items.as_deref().filter(|i| i.has_rules_below()) {
                let old = old.and_then(Value::as_array);
                for (i, v) in items.iter().enumerate() {
                    let o = old.and_then(|o| {
                        if s.list_type.as_deref() == Some("map") {
                            correlate(s, o, v)
                        } else {
                            None
                        }
                    });
                    if !cel_walk(item, v, o, &key(path, &i.to_string()), ratchet, errs) {
                        return false;
                    }
                }
            }
        }
        _ => {}
    }
    true
}

/// Everything `customResourceStrategy.Validate`/`ValidateUpdate` checks
/// through the schema, in upstream's order.
pub(super) fn validate_object(s: &Structural, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut v = Openapi::new(None);
    v.node(s, obj, "", old);
    let mut errs = v.errs;
    let mut lists = Vec::new();
    list_types(s, obj, "", &mut lists);
    if !lists.is_empty() {
        let mut old_lists = Vec::new();
        if let Some(o) = old {
            list_types(s, o, "", &mut old_lists);
        }
        if old_lists.is_empty() {
            errs.extend(lists);
        }
    }
    let blocking = [
        "FieldValueNotSupported",
        "FieldValueRequired",
        "FieldValueTooLong",
        "FieldValueTooMany",
        "FieldValueTypeInvalid",
    ];
    if errs.iter().any(|e| blocking.contains(&e.reason)) {
        let msg = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation";
        errs.push(invalid(NIL, Some("null"), msg));
    } else {
        cel_walk(s, obj, old, "", true, &mut errs);
    }
    errs
}
