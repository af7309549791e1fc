//! Parsing a JSONSchemaProps value into a [`Structural`] and checking it as
//! apiextensions does for a v1 CRD: `ValidateCustomResourceDefinitionOpenAPISchema`
//! (the "standard" checks), `ValidateStructural` (invariants and
//! completeness, sorted) and `ValidateDefaults`, with CEL compilation.

use super::validate::{
    Openapi, cel_walk, child, go_json, go_quote, go_value, invalid, key, not_supported,
};
use super::{
    AdditionalProperties, CHILD_KEYS, FieldError, MAX_DEPTH, META_FIELDS, Structural,
    ValidationRule, cel,
};
use serde_json::{Map, Value};

const TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];
const REASONS: &[&str] = &[
    "FieldValueDuplicate",
    "FieldValueForbidden",
    "FieldValueInvalid",
    "FieldValueRequired",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Items,
    Field,
}

/// Where a node sits, as the upstream walks track it.
#[derive(Clone)]
struct Cx {
    level: Level,
    /// Under `allOf`/`anyOf`/`oneOf`/`not`.
    nested: bool,
    /// An entry of the int-or-string `anyOf` pattern, exempt from the nested checks.
    exempt: bool,
    /// The node's `anyOf` entries are exempt (first `allOf` entry of an int-or-string pattern).
    exempt_any_of: bool,
    depth: usize,
    /// Inside the apiVersion/kind/metadata of a resource.
    inside_meta: bool,
    /// Why defaults are forbidden here, if they are.
    no_defaults: Option<String>,
    /// The outermost node making oldSelf uncorrelatable here.
    uncorrelatable: Option<String>,
}

#[derive(Default)]
struct Parser {
    structural: Vec<FieldError>,
    standard: Vec<FieldError>,
    /// CEL compilation errors, reported only for an otherwise valid schema.
    cel: Vec<FieldError>,
}

pub(super) fn parse(schema: &Value, field: &str) -> Result<Structural, Vec<FieldError>> {
    let mut p = Parser::default();
    let cx = Cx {
        level: Level::Root,
        nested: false,
        exempt: false,
        exempt_any_of: false,
        depth: 0,
        inside_meta: false,
        no_defaults: None,
        uncorrelatable: None,
    };
    let root = p.node(schema, field, &cx);
    let mut root_errs = Vec::new();
    if root.nullable {
        root_errs.push(FieldError::forbidden(
            child(field, "nullable"),
            "nullable cannot be true at the root",
        ));
    }
    completeness(&root, field, &mut p.structural);
    let mut errs = p.structural;
    errs.sort_by_key(FieldError::to_message);
    if errs.is_empty() {
        defaults(&root, field, true, &mut errs);
    }
    let cel_ok = errs.is_empty();
    errs.extend(root_errs);
    errs.extend(p.standard);
    if cel_ok {
        errs.extend(p.cel);
    }
    if errs.is_empty() { Ok(root) } else { Err(errs) }
}

/// The keyword of a rule's field, e.g. `….x-kubernetes-validations[0].rule`.
fn rule_field(path: &str, i: usize, what: &str) -> String {
    child(
        &key(&child(path, "x-kubernetes-validations"), &i.to_string()),
        what,
    )
}

impl Parser {
    /// Reads keyword `k` with `f`, reporting a value of the wrong JSON type.
    fn get<T>(
        &mut self,
        m: &Map<String, Value>,
        k: &str,
        path: &str,
        what: &str,
        f: impl Fn(&Value) -> Option<T>,
    ) -> Option<T> {
        let v = m.get(k)?;
        let out = f(v);
        if out.is_none() && !v.is_null() {
            self.standard.push(invalid(
                &child(path, k),
                Some(&go_value(v)),
                &format!("must be {what}"),
            ));
        }
        out
    }

    /// Like [`Parser::get`], borrowing from the schema.
    fn borrow<'v, T: ?Sized>(
        &mut self,
        m: &'v Map<String, Value>,
        k: &str,
        path: &str,
        what: &str,
        f: impl Fn(&'v Value) -> Option<&'v T>,
    ) -> Option<&'v T> {
        let v = m.get(k)?;
        let out = f(v);
        if out.is_none() && !v.is_null() {
            self.standard.push(invalid(
                &child(path, k),
                Some(&go_value(v)),
                &format!("must be {what}"),
            ));
        }
        out
    }

    fn string(&mut self, m: &Map<String, Value>, k: &str, path: &str) -> String {
        self.get(m, k, path, "a string", |v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn boolean(&mut self, m: &Map<String, Value>, k: &str, path: &str) -> Option<bool> {
        self.get(m, k, path, "a boolean", Value::as_bool)
    }

    fn int(&mut self, m: &Map<String, Value>, k: &str, path: &str) -> Option<i64> {
        self.get(m, k, path, "an integer", Value::as_i64)
    }

    fn float(&mut self, m: &Map<String, Value>, k: &str, path: &str) -> Option<f64> {
        self.get(m, k, path, "a number", Value::as_f64)
    }

    fn strings(&mut self, m: &Map<String, Value>, k: &str, path: &str) -> Vec<String> {
        self.get(m, k, path, "a list of strings", |v| {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    }

    fn forbid(&mut self, structural: bool, path: &str, k: &str, why: &str) {
        let e = FieldError::forbidden(child(path, k), why);
        if structural {
            self.structural.push(e)
        } else {
            self.standard.push(e)
        }
    }

    fn node(&mut self, v: &Value, path: &str, cx: &Cx) -> Structural {
        if cx.depth > MAX_DEPTH {
            let why = format!("must not be nested more than {MAX_DEPTH} levels deep");
            self.structural.push(FieldError::forbidden(path, why));
            return Structural::default();
        }
        let Some(m) = v.as_object() else {
            self.standard
                .push(invalid(path, Some(&go_value(v)), "must be an object"));
            return Structural::default();
        };
        let errs_before = self.standard.len();
        let mut s = Structural {
            type_: self.string(m, "type", path),
            format: self.string(m, "format", path),
            nullable: self.boolean(m, "nullable", path).unwrap_or(false),
            default: m.get("default").filter(|d| !d.is_null()).cloned(),
            required: self.strings(m, "required", path),
            enum_: self.get(m, "enum", path, "a list", |v| v.as_array().cloned()),
            maximum: self.float(m, "maximum", path),
            exclusive_maximum: self.boolean(m, "exclusiveMaximum", path).unwrap_or(false),
            minimum: self.float(m, "minimum", path),
            exclusive_minimum: self.boolean(m, "exclusiveMinimum", path).unwrap_or(false),
            max_length: self.int(m, "maxLength", path),
            min_length: self.int(m, "minLength", path),
            max_items: self.int(m, "maxItems", path),
            min_items: self.int(m, "minItems", path),
            unique_items: self.boolean(m, "uniqueItems", path).unwrap_or(false),
            max_properties: self.int(m, "maxProperties", path),
            min_properties: self.int(m, "minProperties", path),
            multiple_of: self.float(m, "multipleOf", path),
            int_or_string: self
                .boolean(m, "x-kubernetes-int-or-string", path)
                .unwrap_or(false),
            embedded_resource: self
                .boolean(m, "x-kubernetes-embedded-resource", path)
                .unwrap_or(false),
            list_map_keys: self.strings(m, "x-kubernetes-list-map-keys", path),
            extra: m
                .iter()
                .filter(|(k, _)| !CHILD_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Structural::default()
        };
        let preserve = self.boolean(m, "x-kubernetes-preserve-unknown-fields", path);
        s.preserve_unknown_fields = preserve == Some(true);
        s.list_type = m
            .contains_key("x-kubernetes-list-type")
            .then(|| self.string(m, "x-kubernetes-list-type", path));
        s.map_type = m
            .contains_key("x-kubernetes-map-type")
            .then(|| self.string(m, "x-kubernetes-map-type", path));
        let pattern = self.string(m, "pattern", path);

        self.standard_checks(m, &s, path, cx);
        self.children(m, &mut s, path, cx);
        if preserve == Some(false) {
            let f = child(path, "x-kubernetes-preserve-unknown-fields");
            self.standard
                .push(invalid(&f, Some("false"), "must be true or undefined"));
        }
        self.extension_checks(&s, path);
        if !pattern.is_empty() {
            match regex::Regex::new(&pattern) {
                Ok(re) => s.pattern = Some(re),
                Err(e) => {
                    let why = e.to_string();
                    let why = why
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim_start_matches("error: ");
                    let detail = format!(
                        "must be a valid regular expression, but isn't: error parsing regexp: {why}: `{pattern}`"
                    );
                    self.structural.push(invalid(
                        &child(path, "pattern"),
                        Some(&go_quote(&pattern)),
                        &detail,
                    ));
                }
            }
        }
        if cx.nested {
            if !cx.exempt {
                self.nested_checks(m, &s, path);
            }
        } else {
            self.invariants(m, &s, path, cx);
        }
        if let Some(rules) = m.get("x-kubernetes-validations") {
            let clean = errs_before == self.standard.len();
            s.validations = self.rules(rules, &s, path, cx, clean && !cx.nested);
        }
        s
    }

    /// `specStandardValidatorV3.validate` and the node's own checks.
    fn standard_checks(&mut self, m: &Map<String, Value>, s: &Structural, path: &str, cx: &Cx) {
        if !s.type_.is_empty() && !TYPES.contains(&s.type_.as_str()) {
            let allowed: Vec<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
            self.standard.push(not_supported(
                &child(path, "type"),
                &go_quote(&s.type_),
                &allowed,
            ));
        }
        if let (Some(_), Some(why)) = (&s.default, &cx.no_defaults) {
            self.forbid(false, path, "default", &format!("must not be set {why}"));
        }
        for (k, name) in [
            ("id", "id"),
            ("additionalItems", "additionalItems"),
            ("patternProperties", "patternProperties"),
            ("definitions", "definitions"),
            ("dependencies", "dependencies"),
            ("$ref", "$ref"),
        ] {
            if m.get(k).is_some_and(|v| !v.is_null()) {
                self.forbid(false, path, k, &format!("{name} is not supported"));
            }
        }
        if s.type_ == "null" {
            self.forbid(
                false,
                path,
                "type",
                "type cannot be set to null, use nullable as an alternative",
            );
        }
        if m.get("items").is_some_and(Value::is_array) {
            self.forbid(
                false,
                path,
                "items",
                "items must be a schema object and not an array",
            );
        }
        if cx.inside_meta && s.embedded_resource {
            self.forbid(
                false,
                path,
                "x-kubernetes-embedded-resource",
                "must not be used inside of resource meta",
            );
        }
        if s.unique_items {
            let why =
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic";
            self.forbid(false, path, "uniqueItems", why);
        }
        let has_props = m
            .get("properties")
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty());
        if has_props
            && m.get("additionalProperties")
                .is_some_and(|a| a != &Value::Bool(true) && !a.is_null())
        {
            self.forbid(
                false,
                path,
                "additionalProperties",
                "additionalProperties and properties are mutual exclusive",
            );
        }
    }

    fn children(&mut self, m: &Map<String, Value>, s: &mut Structural, path: &str, cx: &Cx) {
        let deeper = |level: Level| Cx {
            level,
            depth: cx.depth + 1,
            exempt: false,
            exempt_any_of: false,
            ..cx.clone()
        };
        match m.get("additionalProperties") {
            Some(Value::Bool(b)) => s.additional_properties = Some(AdditionalProperties::Bool(*b)),
            Some(a) if a.is_object() => {
                let mut sub = deeper(Level::Field);
                if cx.inside_meta {
                    sub.no_defaults =
                        Some("inside additionalProperties applying to object metadata".into());
                }
                if !cx.nested {
                    let node = self.node(a, &child(path, "additionalProperties"), &sub);
                    s.additional_properties = Some(AdditionalProperties::Schema(Box::new(node)));
                }
            }
            Some(Value::Null) | None => {}
            Some(a) => self.standard.push(invalid(
                &child(path, "additionalProperties"),
                Some(&go_value(a)),
                "must be a boolean or an object",
            )),
        }
        if let Some(props) = self.borrow(m, "properties", path, "an object", Value::as_object) {
            let correlatable = matches!(s.map_type.as_deref(), None | Some("granular" | "atomic"));
            for (k, v) in props {
                let mut sub = deeper(Level::Field);
                if !correlatable && sub.uncorrelatable.is_none() {
                    sub.uncorrelatable = Some(path.to_owned());
                }
                let is_resource = (cx.level == Level::Root && !cx.nested) || s.embedded_resource;
                if is_resource && META_FIELDS.contains(&k.as_str()) {
                    sub.inside_meta = true;
                    if cx.level == Level::Root && !cx.nested {
                        sub.no_defaults = Some(format!("in top-level {k}"));
                    }
                }
                let node = self.node(v, &key(&child(path, "properties"), k), &sub);
                s.properties.insert(k.clone(), node);
            }
        }
        let nested = Cx {
            nested: true,
            depth: cx.depth + 1,
            exempt: false,
            exempt_any_of: false,
            ..cx.clone()
        };
        if let Some(not) = m.get("not").filter(|v| !v.is_null()) {
            s.not = Some(Box::new(self.node(not, &child(path, "not"), &nested)));
        }
        let int_or_string = |v: Option<&Value>| {
            v == Some(&serde_json::json!([{"type": "integer"}, {"type": "string"}]))
        };
        let exempt_any_of = cx.exempt_any_of || (!cx.nested && int_or_string(m.get("anyOf")));
        let exempt_first_all_of = !cx.nested
            && m.get("allOf")
                .and_then(|a| a.get(0))
                .is_some_and(|first| int_or_string(first.get("anyOf")));
        for k in ["allOf", "oneOf", "anyOf"] {
            let Some(list) = self.borrow(m, k, path, "a list", Value::as_array) else {
                continue;
            };
            let mut nodes = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                let entry = Cx {
                    exempt: k == "anyOf" && exempt_any_of,
                    exempt_any_of: k == "allOf" && i == 0 && exempt_first_all_of,
                    ..nested.clone()
                };
                nodes.push(self.node(v, &key(&child(path, k), &i.to_string()), &entry));
            }
            match k {
                "allOf" => s.all_of = nodes,
                "oneOf" => s.one_of = nodes,
                _ => s.any_of = nodes,
            }
        }
        if let Some(items) = m.get("items").filter(|i| i.is_object()) {
            let mut sub = deeper(Level::Items);
            if s.list_type.as_deref() != Some("map") && sub.uncorrelatable.is_none() {
                sub.uncorrelatable = Some(path.to_owned());
            }
            s.items = Some(Box::new(self.node(items, &child(path, "items"), &sub)));
        }
    }

    /// The list-type, map-type and list-map-key checks.
    fn extension_checks(&mut self, s: &Structural, path: &str) {
        let item = s.items.as_deref();
        let std = &mut self.standard;
        let type_must = |std: &mut Vec<FieldError>, want: &str, ext: &str| {
            let why = format!("must be {want} if {ext} is specified");
            std.push(if s.type_.is_empty() {
                FieldError::required(child(path, "type"), why)
            } else {
                invalid(&child(path, "type"), Some(&go_quote(&s.type_)), &why)
            });
        };
        if let Some(mt) = &s.map_type {
            if s.type_ != "object" {
                type_must(std, "object", "x-kubernetes-map-type");
            }
            if mt != "atomic" && mt != "granular" {
                std.push(not_supported(
                    &child(path, "x-kubernetes-map-type"),
                    &go_quote(mt),
                    &["atomic".into(), "granular".into()],
                ));
            }
        }
        let atomic_msg = "must be atomic as item of a list with x-kubernetes-list-type=set";
        let quoted = |o: &Option<String>| o.as_deref().map_or_else(|| "null".to_owned(), go_quote);
        match (&s.list_type, item) {
            (Some(_), _) if s.type_ != "array" => type_must(std, "array", "x-kubernetes-list-type"),
            (Some(lt), Some(it)) if lt == "set" => {
                if it.type_ == "array" && it.list_type.as_deref().is_some_and(|l| l != "atomic") {
                    std.push(invalid(
                        &child(&child(path, "items"), "x-kubernetes-list-type"),
                        Some(&quoted(&it.list_type)),
                        atomic_msg,
                    ));
                }
                if it.type_ == "object" && it.map_type.as_deref() != Some("atomic") {
                    std.push(invalid(
                        &child(&child(path, "items"), "x-kubernetes-map-type"),
                        Some(&quoted(&it.list_type)),
                        atomic_msg,
                    ));
                }
            }
            _ => {}
        }
        if let Some(lt) = s
            .list_type
            .as_deref()
            .filter(|l| !["atomic", "set", "map"].contains(l))
        {
            let allowed = ["atomic".into(), "set".into(), "map".into()];
            std.push(not_supported(
                &child(path, "x-kubernetes-list-type"),
                &go_quote(lt),
                &allowed,
            ));
        }
        if !s.list_map_keys.is_empty() {
            let why = "must be map if x-kubernetes-list-map-keys is non-empty";
            match s.list_type.as_deref() {
                None => std.push(FieldError::required(
                    child(path, "x-kubernetes-list-type"),
                    why,
                )),
                Some("map") => {}
                Some(lt) => std.push(invalid(
                    &child(path, "x-kubernetes-list-type"),
                    Some(&go_quote(lt)),
                    why,
                )),
            }
        }
        let keys_json = go_json(&serde_json::json!(s.list_map_keys));
        if s.list_type.as_deref() == Some("map") {
            if s.list_map_keys.is_empty() {
                std.push(FieldError::required(
                    child(path, "x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
            match item {
                None => std.push(FieldError::required(
                    child(path, "items"),
                    "must have a schema if x-kubernetes-list-type is map",
                )),
                Some(it) if it.type_ != "object" => {
                    let why = "must be object if parent array's x-kubernetes-list-type is map";
                    std.push(invalid(
                        &child(&child(path, "items"), "type"),
                        Some(&go_quote(&it.type_)),
                        why,
                    ));
                }
                Some(it) => {
                    for (i, k) in s.list_map_keys.iter().enumerate() {
                        match it.properties.get(k) {
                            Some(p) if p.type_ == "array" || p.type_ == "object" => {
                                let f = child(
                                    &key(&child(&child(path, "items"), "properties"), k),
                                    "type",
                                );
                                std.push(invalid(&f, Some(&go_quote(&it.type_)), "must be a scalar type if parent array's x-kubernetes-list-type is map"));
                            }
                            Some(_) => {}
                            None => std.push(invalid(
                                &child(path, "x-kubernetes-list-map-keys"),
                                Some(&keys_json),
                                "entries must all be names of item properties",
                            )),
                        }
                        if s.list_map_keys[..i].contains(k) {
                            std.push(invalid(
                                &child(path, "x-kubernetes-list-map-keys"),
                                Some(&keys_json),
                                "must not contain duplicate entries",
                            ));
                        }
                    }
                }
            }
        }
        if let (Some(lt @ ("set" | "map")), Some(it)) = (s.list_type.as_deref(), item) {
            if it.nullable {
                std.push(FieldError::forbidden(
                    child(&child(path, "items"), "nullable"),
                    format!("cannot be nullable when x-kubernetes-list-type is {lt}"),
                ));
            }
            if lt == "map" {
                for k in &s.list_map_keys {
                    let Some(p) = it.properties.get(k) else {
                        continue;
                    };
                    let f = key(&child(&child(path, "items"), "properties"), k);
                    if !it.required.contains(k) && p.default.is_none() {
                        std.push(FieldError::required(child(&f, "default"), "this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property"));
                    }
                    if p.nullable {
                        std.push(FieldError::forbidden(child(&f, "nullable"), "this property is in x-kubernetes-list-map-keys, so it cannot be nullable"));
                    }
                }
            }
        }
    }

    /// `validateNestedValueValidation`: what value validations may not carry.
    fn nested_checks(&mut self, m: &Map<String, Value>, s: &Structural, path: &str) {
        let present = |k: &str| m.get(k).is_some_and(|v| !v.is_null());
        let nonempty_str = |k: &str| {
            m.get(k)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        };
        let checks: [(bool, &str, &str); 14] = [
            (
                !s.type_.is_empty(),
                "type",
                "must be empty to be structural",
            ),
            (
                present("additionalProperties"),
                "additionalProperties",
                "must be undefined to be structural",
            ),
            (
                s.default.is_some(),
                "default",
                "must be undefined to be structural",
            ),
            (
                nonempty_str("title"),
                "title",
                "must be empty to be structural",
            ),
            (
                nonempty_str("description"),
                "description",
                "must be empty to be structural",
            ),
            (s.nullable, "nullable", "must be false to be structural"),
            (
                present("externalDocs"),
                "externalDocs",
                "must be undefined to be structural",
            ),
            (
                s.preserve_unknown_fields,
                "x-kubernetes-preserve-unknown-fields",
                "must be false to be structural",
            ),
            (
                s.embedded_resource,
                "x-kubernetes-embedded-resource",
                "must be false to be structural",
            ),
            (
                s.int_or_string,
                "x-kubernetes-int-or-string",
                "must be false to be structural",
            ),
            (
                !s.list_map_keys.is_empty(),
                "x-kubernetes-list-map-keys",
                "must be empty to be structural",
            ),
            (
                s.list_type.is_some(),
                "x-kubernetes-list-type",
                "must be undefined to be structural",
            ),
            (
                s.map_type.is_some(),
                "x-kubernetes-map-type",
                "must be undefined to be structural",
            ),
            (
                m.get("x-kubernetes-validations")
                    .and_then(Value::as_array)
                    .is_some_and(|v| !v.is_empty()),
                "x-kubernetes-validations",
                "must be empty to be structural",
            ),
        ];
        for (bad, k, why) in checks {
            if bad {
                self.forbid(true, path, k, why);
            }
        }
        if s.properties.contains_key("metadata") {
            let f = key(&child(path, "properties"), "metadata");
            self.structural.push(FieldError::forbidden(
                f,
                "must not be specified in a nested context",
            ));
        }
    }

    /// `validateStructuralInvariants` for a node outside value validations.
    fn invariants(&mut self, m: &Map<String, Value>, s: &Structural, path: &str, cx: &Cx) {
        let root = cx.level == Level::Root;
        let errs = &mut self.structural;
        if s.type_ == "array" && s.items.is_none() {
            errs.push(FieldError::required(
                child(path, "items"),
                "must be specified",
            ));
        }
        if s.additional_properties.is_some() && root {
            errs.push(FieldError::forbidden(
                child(path, "additionalProperties"),
                "must not be used at the root",
            ));
        }
        if s.int_or_string && s.preserve_unknown_fields {
            let f = child(path, "x-kubernetes-preserve-unknown-fields");
            errs.push(invalid(
                &f,
                Some("true"),
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        if s.int_or_string && s.embedded_resource {
            let f = child(path, "x-kubernetes-embedded-resource");
            errs.push(invalid(
                &f,
                Some("true"),
                "must be false if x-kubernetes-int-or-string is true",
            ));
        }
        let type_f = child(path, "type");
        if s.embedded_resource && s.type_ != "object" {
            let why = "must be object if x-kubernetes-embedded-resource is true";
            errs.push(if s.type_.is_empty() {
                FieldError::required(&type_f, why)
            } else {
                invalid(&type_f, Some(&go_quote(&s.type_)), why)
            });
        } else if s.type_.is_empty() && !s.int_or_string && !s.preserve_unknown_fields {
            let why = match cx.level {
                Level::Root => "must not be empty at the root",
                Level::Items => "must not be empty for specified array items",
                Level::Field => "must not be empty for specified object fields",
            };
            errs.push(FieldError::required(&type_f, why));
        }
        if s.embedded_resource && s.additional_properties.is_some() {
            errs.push(FieldError::forbidden(
                child(path, "additionalProperties"),
                "must not be used if x-kubernetes-embedded-resource is set",
            ));
        }
        if root && !s.type_.is_empty() && s.type_ != "object" {
            errs.push(invalid(
                &type_f,
                Some(&go_quote(&s.type_)),
                "must be object at the root",
            ));
        }
        let check_meta = root || s.embedded_resource;
        let props = key_path(path);
        for k in ["kind", "apiVersion"] {
            if let Some(p) = s
                .properties
                .get(k)
                .filter(|p| check_meta && p.type_ != "string")
            {
                errs.push(invalid(
                    &child(&props(k), "type"),
                    Some(&go_quote(&p.type_)),
                    "must be string",
                ));
            }
        }
        if let Some(meta) = s.properties.get("metadata") {
            if check_meta && meta.type_ != "object" {
                errs.push(invalid(
                    &child(&props("metadata"), "type"),
                    Some(&go_quote(&meta.type_)),
                    "must be object",
                ));
            }
            let raw = m
                .get("properties")
                .and_then(|p| p.get("metadata"))
                .and_then(Value::as_object);
            if root && raw.is_some_and(|r| !metadata_restricts_names_only(r)) {
                let why = "must not specify anything other than name and generateName, but metadata is implicitly specified";
                errs.push(FieldError::forbidden(props("metadata"), why));
            }
        }
        if s.embedded_resource && !s.preserve_unknown_fields && s.properties.is_empty() {
            let why = "must not be empty if x-kubernetes-embedded-resource is true without x-kubernetes-preserve-unknown-fields";
            errs.push(FieldError::required(child(path, "properties"), why));
        }
    }

    /// Checks and compiles `x-kubernetes-validations`.
    fn rules(
        &mut self,
        rules: &Value,
        s: &Structural,
        path: &str,
        cx: &Cx,
        compile: bool,
    ) -> Vec<ValidationRule> {
        let Some(list) = rules.as_array() else {
            self.standard.push(invalid(
                &child(path, "x-kubernetes-validations"),
                Some(&go_value(rules)),
                "must be a list",
            ));
            return Vec::new();
        };
        let mut out = Vec::new();
        let newline = |t: &str| t.contains(['\n', '\r']);
        for (i, r) in list.iter().enumerate() {
            let Some(m) = r.as_object() else {
                self.standard.push(invalid(
                    &key(&child(path, "x-kubernetes-validations"), &i.to_string()),
                    Some(&go_value(r)),
                    "must be an object",
                ));
                continue;
            };
            let at = |what: &str| rule_field(path, i, what);
            let entry = key(&child(path, "x-kubernetes-validations"), &i.to_string());
            let mut rule = ValidationRule {
                rule: self.string(m, "rule", &entry),
                message: self.string(m, "message", &entry),
                message_expression: self.string(m, "messageExpression", &entry),
                reason: m.get("reason").and_then(Value::as_str).map(str::to_owned),
                field_path: self.string(m, "fieldPath", &entry),
                optional_old_self: m.get("optionalOldSelf").and_then(Value::as_bool),
                compiled: None,
            };
            let before = self.standard.len();
            let (trule, tmsg) = (rule.rule.trim(), rule.message.trim());
            let std = &mut self.standard;
            if trule.is_empty() {
                std.push(FieldError::required(at("rule"), "rule is not specified"));
            } else if !rule.message.is_empty() && tmsg.is_empty() {
                std.push(invalid(
                    &at("message"),
                    Some(&go_quote(&rule.message)),
                    "must be non-empty if specified",
                ));
            } else if newline(tmsg) {
                std.push(invalid(
                    &at("message"),
                    Some(&go_quote(&rule.message)),
                    "must not contain line breaks",
                ));
            } else if newline(trule) && tmsg.is_empty() {
                std.push(FieldError::required(
                    at("message"),
                    "message must be specified if rule contains line breaks",
                ));
            }
            if !rule.message_expression.is_empty() && rule.message_expression.trim().is_empty() {
                std.push(FieldError::required(
                    at("messageExpression"),
                    "messageExpression must be non-empty if specified",
                ));
            }
            if let Some(reason) = rule.reason.as_deref().filter(|r| !REASONS.contains(r)) {
                let allowed: Vec<String> = REASONS.iter().map(|r| (*r).to_owned()).collect();
                std.push(not_supported(&at("reason"), &go_quote(reason), &allowed));
            }
            let fp = &rule.field_path;
            if !fp.is_empty() && fp.trim().is_empty() {
                std.push(invalid(
                    &at("fieldPath"),
                    Some(&go_quote(fp)),
                    "must be non-empty if specified",
                ));
            }
            if newline(fp) {
                std.push(invalid(
                    &at("fieldPath"),
                    Some(&go_quote(fp)),
                    "must not contain line breaks",
                ));
            }
            if !fp.is_empty() && !valid_field_path(fp, s) {
                std.push(invalid(
                    &at("fieldPath"),
                    Some(&go_quote(fp)),
                    "must be a valid path",
                ));
            }
            if compile && before == self.standard.len() {
                self.compile(&mut rule, path, i, cx);
            }
            out.push(rule);
        }
        out
    }

    fn compile(&mut self, rule: &mut ValidationRule, path: &str, i: usize, cx: &Cx) {
        let expr = Some(rule.message_expression.trim()).filter(|m| !m.is_empty());
        match cel::compile(&rule.rule, expr) {
            Err(e) => {
                let on_message = e.starts_with("messageExpression ")
                    || e.starts_with("estimated messageExpression");
                let f = rule_field(
                    path,
                    i,
                    if on_message {
                        "messageExpression"
                    } else {
                        "rule"
                    },
                );
                self.cel.push(if e.starts_with("estimated ") {
                    FieldError::forbidden(f, e)
                } else {
                    invalid(&f, Some(&go_rule(rule)), &e)
                });
            }
            Ok(compiled) => {
                if compiled.uses_old_self() {
                    if let Some(p) = &cx.uncorrelatable {
                        let why = format!(
                            "oldSelf cannot be used on the uncorrelatable portion of the schema within {p}"
                        );
                        self.cel.push(invalid(
                            &rule_field(path, i, "rule"),
                            Some(&go_quote(&rule.rule)),
                            &why,
                        ));
                    }
                } else if let Some(b) = rule.optional_old_self {
                    let why = "may not be set if oldSelf is not used in rule";
                    self.cel.push(invalid(
                        &rule_field(path, i, "optionalOldSelf"),
                        Some(&b.to_string()),
                        why,
                    ));
                }
                rule.compiled = Some(compiled);
            }
        }
    }
}

/// `path.properties[k]` for keys `k`.
fn key_path(path: &str) -> impl Fn(&str) -> String + '_ {
    move |k| key(&child(path, "properties"), k)
}

/// Whether a root `metadata` schema only restricts name and generateName.
fn metadata_restricts_names_only(m: &Map<String, Value>) -> bool {
    m.iter().all(|(k, v)| match k.as_str() {
        "type" | "default" => true,
        "properties" => v
            .as_object()
            .is_some_and(|p| p.keys().all(|k| k == "name" || k == "generateName")),
        _ => false,
    })
}

/// The rule as Go's `json.Marshal` prints the internal `ValidationRule`
/// (no JSON tags: Go field names, declaration order).
fn go_rule(r: &ValidationRule) -> String {
    let q = |s: &str| go_json(&Value::String(s.to_owned()));
    let reason = r.reason.as_deref().map_or_else(|| "null".to_owned(), q);
    let old = r
        .optional_old_self
        .map_or_else(|| "null".to_owned(), |b| b.to_string());
    format!(
        "{{\"Rule\":{},\"Message\":{},\"MessageExpression\":{},\"Reason\":{reason},\"FieldPath\":{},\"OptionalOldSelf\":{old}}}",
        q(&r.rule),
        q(&r.message),
        q(&r.message_expression),
        q(&r.field_path),
    )
}

/// `cel.ValidFieldPath`: `.name` and `['key']` steps through properties
/// and additionalProperties.
fn valid_field_path(fp: &str, s: &Structural) -> bool {
    let mut node = s;
    let mut rest = fp;
    while !rest.is_empty() {
        let name = if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            rest = &r[end..];
            r[..end].to_owned()
        } else if let Some(r) = rest.strip_prefix("['") {
            let Some(end) = r.find("']") else {
                return false;
            };
            rest = &r[end + 2..];
            r[..end].replace("\\'", "'")
        } else {
            return false;
        };
        if name.is_empty() {
            return false;
        }
        match node.child(&name) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

/// `validateStructuralCompleteness`: what value validations at the root
/// mention must exist in the structural part.
fn completeness(root: &Structural, path: &str, errs: &mut Vec<FieldError>) {
    for (v, vpath) in value_validations(root, path) {
        complete(v, Some(root), path, &vpath, errs);
    }
}

/// A node's value validations (`not`, then `allOf`/`anyOf`/`oneOf` items),
/// each with its path.
fn value_validations<'a>(v: &'a Structural, path: &str) -> Vec<(&'a Structural, String)> {
    let mut out = Vec::new();
    if let Some(not) = &v.not {
        out.push((&**not, child(path, "not")));
    }
    for (k, list) in [
        ("allOf", &v.all_of),
        ("anyOf", &v.any_of),
        ("oneOf", &v.one_of),
    ] {
        for (i, x) in list.iter().enumerate() {
            out.push((x, key(&child(path, k), &i.to_string())));
        }
    }
    out
}

fn complete(
    v: &Structural,
    s: Option<&Structural>,
    spath: &str,
    vpath: &str,
    errs: &mut Vec<FieldError>,
) {
    let Some(s) = s else {
        errs.push(FieldError::required(
            spath,
            format!("because it is defined in {vpath}"),
        ));
        return;
    };
    for (x, xpath) in value_validations(v, vpath) {
        complete(x, Some(s), spath, &xpath, errs);
    }
    if let Some(items) = &v.items {
        complete(
            items,
            s.items.as_deref(),
            &child(spath, "items"),
            &child(vpath, "items"),
            errs,
        );
    }
    for (k, vf) in &v.properties {
        let sp = key(&child(spath, "properties"), k);
        let vp = key(&child(vpath, "properties"), k);
        match s.properties.get(k) {
            Some(sf) => complete(vf, Some(sf), &sp, &vp, errs),
            None => errs.push(FieldError::required(
                sp,
                format!("because it is defined in {vp}"),
            )),
        }
    }
}

/// `defaulting.ValidateDefaults`: every default must validate against its
/// schema, be pruned already, and pass the node's CEL rules.
fn defaults(s: &Structural, path: &str, root: bool, errs: &mut Vec<FieldError>) {
    if let Some(d) = &s.default {
        let f = child(path, "default");
        let mut pruned = d.clone();
        s.prune_node(&mut pruned, root || s.embedded_resource, false);
        if &pruned != d {
            errs.push(invalid(
                &f,
                Some(&go_value(d)),
                "must not have unknown fields",
            ));
        }
        let mut v = Openapi::new(Some(&f));
        v.node(s, d, "", None);
        if v.errs.is_empty() {
            cel_walk(s, d, Some(d), &f, false, errs);
        } else {
            errs.extend(v.errs);
        }
    }
    if let Some(items) = &s.items {
        defaults(items, &child(path, "items"), false, errs);
    }
    for (k, p) in &s.properties {
        defaults(p, &key(&child(path, "properties"), k), false, errs);
    }
}
