//! Structural OpenAPI v3 schemas of CustomResourceDefinitions, with the
//! semantics of k8s.io/apiextensions-apiserver (Kubernetes 1.35):
//!
//! - [`Structural::parse`]: the structural-schema and CRD schema checks
//!   (`validation.ValidateCustomResourceDefinitionOpenAPISchema`,
//!   `schema.ValidateStructural`, `defaulting.ValidateDefaults`) with
//!   upstream's field paths and wording, and CEL rule compilation;
//! - [`Structural::prune`] and [`Structural::apply_defaults`]: the decoding
//!   steps (`pruning.Prune`, `PruneNonNullableNullsWithoutDefaults`,
//!   `defaulting.Default`);
//! - [`Structural::validate`]: kube-openapi's schema validation as
//!   apiextensions renders it, list-type set/map uniqueness, CEL rules, and
//!   ratcheting of unchanged values on update.
//!
//! Schemas nest at most [`MAX_DEPTH`] levels, so no walk here can exhaust
//! the stack on hostile input.

pub mod cel;
mod check;
mod formats;
mod validate;

#[cfg(test)]
mod tests;
pub use crate::status::FieldError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The deepest nesting of schema nodes (`properties`, `items`,
/// `additionalProperties`, `allOf`/`anyOf`/`oneOf`/`not`) a schema may have.
pub const MAX_DEPTH: usize = 100;

/// `additionalProperties`: a boolean or a schema.
#[derive(Debug, Clone)]
pub enum AdditionalProperties {
    /// `true` (any value, pruned as unknown) or `false` (no other keys).
    Bool(bool),
    /// The schema of every value of the map.
    Schema(Box<Structural>),
}

/// One `x-kubernetes-validations` entry.
#[derive(Clone)]
pub struct ValidationRule {
    /// The CEL expression.
    pub rule: String,
    /// `message`, shown when the rule fails.
    pub message: String,
    /// `messageExpression`, a CEL expression producing the message.
    pub message_expression: String,
    /// `reason`: `FieldValueInvalid` (default), `FieldValueForbidden`, ...
    pub reason: Option<String>,
    /// `fieldPath`, where a failure is reported, relative to the node.
    pub field_path: String,
    /// `optionalOldSelf`.
    pub optional_old_self: Option<bool>,
    /// The compiled rule (absent when compilation failed or was skipped).
    pub compiled: Option<cel::Rule>,
}

impl std::fmt::Debug for ValidationRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidationRule")
            .field("rule", &self.rule)
            .field("message", &self.message)
            .field("compiled", &self.compiled.is_some())
            .finish_non_exhaustive()
    }
}

/// A parsed schema node. Nodes under `allOf`/`anyOf`/`oneOf`/`not` carry only
/// value validations (structural schemas forbid the rest there).
#[derive(Debug, Clone, Default)]
pub struct Structural {
    /// `type` (`object`, `array`, `string`, `integer`, `number`, `boolean`), empty if unset.
    pub type_: String,
    /// `format`, empty if unset.
    pub format: String,
    /// `nullable`.
    pub nullable: bool,
    /// `default`.
    pub default: Option<Value>,
    /// `properties`.
    pub properties: BTreeMap<String, Structural>,
    /// `items`.
    pub items: Option<Box<Structural>>,
    /// `additionalProperties`.
    pub additional_properties: Option<AdditionalProperties>,
    /// `required`.
    pub required: Vec<String>,
    /// `enum`.
    pub enum_: Option<Vec<Value>>,
    /// `pattern`, compiled.
    pub pattern: Option<regex::Regex>,
    /// `maximum`.
    pub maximum: Option<f64>,
    /// `exclusiveMaximum`.
    pub exclusive_maximum: bool,
    /// `minimum`.
    pub minimum: Option<f64>,
    /// `exclusiveMinimum`.
    pub exclusive_minimum: bool,
    /// `maxLength` (in characters).
    pub max_length: Option<i64>,
    /// `minLength`.
    pub min_length: Option<i64>,
    /// `maxItems`.
    pub max_items: Option<i64>,
    /// `minItems`.
    pub min_items: Option<i64>,
    /// `uniqueItems` (refused by [`Structural::parse`]).
    pub unique_items: bool,
    /// `maxProperties`.
    pub max_properties: Option<i64>,
    /// `minProperties`.
    pub min_properties: Option<i64>,
    /// `multipleOf`.
    pub multiple_of: Option<f64>,
    /// `allOf`.
    pub all_of: Vec<Structural>,
    /// `anyOf`.
    pub any_of: Vec<Structural>,
    /// `oneOf`.
    pub one_of: Vec<Structural>,
    /// `not`.
    pub not: Option<Box<Structural>>,
    /// `x-kubernetes-int-or-string`.
    pub int_or_string: bool,
    /// `x-kubernetes-preserve-unknown-fields`.
    pub preserve_unknown_fields: bool,
    /// `x-kubernetes-embedded-resource`.
    pub embedded_resource: bool,
    /// `x-kubernetes-list-type`.
    pub list_type: Option<String>,
    /// `x-kubernetes-list-map-keys`.
    pub list_map_keys: Vec<String>,
    /// `x-kubernetes-map-type`.
    pub map_type: Option<String>,
    /// `x-kubernetes-validations`.
    pub validations: Vec<ValidationRule>,
    /// Every other keyword as given (description, title, example, ...) plus
    /// the scalar keywords above, for [`Structural::to_openapi`].
    extra: Map<String, Value>,
    /// Whether this node or one below it has a compiled CEL rule (computed
    /// on first use), so validation skips the subtrees without any.
    rules_below: OnceLock<bool>,
    /// Whether this node or one below it is a set or map list.
    keyed_lists_below: OnceLock<bool>,
}

/// Keywords holding sub-schemas, rebuilt from the parsed children.
const CHILD_KEYS: &[&str] = &[
    "properties",
    "items",
    "additionalProperties",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
];
/// Fields of a resource the root (and an embedded resource) keeps unpruned.
const META_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

impl Structural {
    /// Parse and check a CRD version's `schema.openAPIV3Schema`; `field` is
    /// the path prefix of errors, e.g. `spec.versions[0].schema.openAPIV3Schema`.
    pub fn parse(schema: &Value, field: &str) -> Result<Structural, Vec<FieldError>> {
        check::parse(schema, field)
    }

    /// Drop the fields the schema does not specify, as upstream's decoder
    /// does: the root keeps `apiVersion`, `kind` and `metadata` untouched,
    /// `x-kubernetes-preserve-unknown-fields` keeps unknown fields, an
    /// embedded resource keeps its `apiVersion`, `kind` and `metadata`; then
    /// nulls of non-nullable fields without a default are removed.
    pub fn prune(&self, obj: &mut Value) {
        self.prune_node(obj, true, false);
        self.prune_nulls(obj);
    }

    /// Apply `default`s to missing fields (and to nulls of non-nullable
    /// fields) of every object present; a default under a missing parent
    /// applies only once the parent exists.
    pub fn apply_defaults(&self, obj: &mut Value) {
        match obj {
            Value::Object(map) => {
                for (k, prop) in &self.properties {
                    if let Some(d) = &prop.default {
                        let missing = map.get(k).is_none_or(|v| v.is_null() && !prop.nullable);
                        if missing {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                }
                for (k, v) in map.iter_mut() {
                    if let Some(prop) = self.properties.get(k) {
                        prop.apply_defaults(v);
                    } else if let Some(AdditionalProperties::Schema(s)) =
                        &self.additional_properties
                    {
                        s.default_null(v);
                        s.apply_defaults(v);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    for v in items {
                        s.default_null(v);
                        s.apply_defaults(v);
                    }
                }
            }
            _ => {}
        }
    }

    /// Validate `obj` (the whole object) against the schema; `old` is the
    /// previous object on update (transition rules, ratcheting).
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        validate::validate_object(self, obj, old)
    }

    /// The node as OpenAPI v3 JSON (for publication and `kubectl explain`).
    pub fn to_openapi(&self) -> Value {
        let mut out = self.extra.clone();
        if !self.properties.is_empty() {
            let props = self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.to_openapi()))
                .collect();
            out.insert("properties".into(), Value::Object(props));
        }
        if let Some(items) = &self.items {
            out.insert("items".into(), items.to_openapi());
        }
        match &self.additional_properties {
            Some(AdditionalProperties::Bool(b)) => {
                out.insert("additionalProperties".into(), Value::Bool(*b));
            }
            Some(AdditionalProperties::Schema(s)) => {
                out.insert("additionalProperties".into(), s.to_openapi());
            }
            None => {}
        }
        for (key, list) in [
            ("allOf", &self.all_of),
            ("anyOf", &self.any_of),
            ("oneOf", &self.one_of),
        ] {
            if !list.is_empty() {
                out.insert(
                    key.into(),
                    Value::Array(list.iter().map(Structural::to_openapi).collect()),
                );
            }
        }
        if let Some(not) = &self.not {
            out.insert("not".into(), not.to_openapi());
        }
        Value::Object(out)
    }

    /// The `x-kubernetes-list-type` and `x-kubernetes-list-map-keys` of the
    /// list at `path` (object keys; lists on the way are stepped through to
    /// their items), if it declares a list type.
    pub fn list_semantics(&self, path: &[&str]) -> Option<(String, Vec<String>)> {
        let mut node = self;
        for key in path {
            while node.type_ == "array" {
                node = node.items.as_deref()?;
            }
            node = node.child(key)?;
        }
        let list_type = node.list_type.clone()?;
        Some((list_type, node.list_map_keys.clone()))
    }

    /// The sub-schema at a dotted JSON path such as `.spec.replicas`.
    pub fn at(&self, path: &str) -> Option<&Structural> {
        path.split('.')
            .filter(|s| !s.is_empty())
            .try_fold(self, |node, key| node.child(key))
    }

    /// The schemas the CEL and list-type walks descend into.
    fn walked_children(&self) -> impl Iterator<Item = &Structural> {
        let additional = match &self.additional_properties {
            Some(AdditionalProperties::Schema(s)) => Some(&**s),
            _ => None,
        };
        self.properties
            .values()
            .chain(additional)
            .chain(self.items.as_deref())
    }

    /// Whether this node or one the CEL walk reaches below it has a
    /// compiled rule.
    pub(crate) fn has_rules_below(&self) -> bool {
        *self.rules_below.get_or_init(|| {
            self.validations.iter().any(|r| r.compiled.is_some())
                || self.walked_children().any(Structural::has_rules_below)
        })
    }

    /// Whether this node or one the list-type walk reaches below it is a
    /// `set` or `map` list.
    pub(crate) fn has_keyed_lists_below(&self) -> bool {
        *self.keyed_lists_below.get_or_init(|| {
            matches!(self.list_type.as_deref(), Some("set" | "map"))
                || self
                    .walked_children()
                    .any(Structural::has_keyed_lists_below)
        })
    }

    /// The schema of the value at `key` of an object of this schema.
    fn child(&self, key: &str) -> Option<&Structural> {
        match (self.properties.get(key), &self.additional_properties) {
            (Some(p), _) => Some(p),
            (None, Some(AdditionalProperties::Schema(s))) => Some(s),
            _ => None,
        }
    }

    /// Replaces a null with the default when the schema is not nullable.
    fn default_null(&self, v: &mut Value) {
        if v.is_null()
            && !self.nullable
            && let Some(d) = &self.default
        {
            *v = d.clone();
        }
    }

    /// `pruning.prune`; `resource` marks a resource root (embedded or not),
    /// `preserve` an item of a list whose schema preserves unknown fields
    /// (upstream's `skipPrune` carries through lists).
    fn prune_node(&self, v: &mut Value, resource: bool, preserve: bool) {
        let keep_meta = resource || self.embedded_resource;
        let preserve = preserve || self.preserve_unknown_fields;
        match v {
            Value::Object(map) => map.retain(|k, v| {
                if keep_meta && META_FIELDS.contains(&k.as_str()) {
                    return true;
                }
                match (self.properties.get(k), &self.additional_properties) {
                    (Some(p), _) => p.prune_node(v, false, false),
                    (None, Some(AdditionalProperties::Schema(s))) => s.prune_node(v, false, false),
                    (None, Some(AdditionalProperties::Bool(_))) => prune_all(v),
                    (None, None) => return preserve,
                }
                true
            }),
            Value::Array(items) => match &self.items {
                Some(s) => items
                    .iter_mut()
                    .for_each(|v| s.prune_node(v, false, preserve)),
                None if !preserve => items.iter_mut().for_each(prune_all),
                None => {}
            },
            _ => {}
        }
    }

    /// `PruneNonNullableNullsWithoutDefaults`.
    fn prune_nulls(&self, v: &mut Value) {
        let drop = |s: &Structural, v: &Value| v.is_null() && !s.nullable && s.default.is_none();
        match v {
            Value::Object(map) => map.retain(|k, v| match self.child(k) {
                Some(s) if drop(s, v) => false,
                Some(s) => {
                    s.prune_nulls(v);
                    true
                }
                None => true,
            }),
            Value::Array(items) => {
                if let Some(s) = &self.items {
                    items.iter_mut().for_each(|v| s.prune_nulls(v));
                }
            }
            _ => {}
        }
    }
}

/// Prunes a value without a schema: every object in it loses all its keys.
/// Iterative, as the value may nest arbitrarily deep.
fn prune_all(v: &mut Value) {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => map.clear(),
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
}
