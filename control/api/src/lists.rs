//! How each list of a kind merges, read from its OpenAPI schema: the
//! `x-kubernetes-patch-merge-key` / `x-kubernetes-patch-strategy` that
//! strategic merge patch uses, and the `x-kubernetes-list-type` /
//! `x-kubernetes-list-map-keys` that server-side apply and managedFields
//! use. Built-in kinds get them from their k8s-openapi schemas, annotated
//! with upstream's extensions ([`annotate`], which the served OpenAPI
//! documents carry too); custom resources from their CRD's structural
//! schema. Both become one [`ListTree`] per kind, walked alongside the
//! object.

use std::collections::{BTreeMap, HashMap};
use std::sync::{OnceLock, RwLock};

use serde_json::{Map, Value, json};

use crate::registry::{ResourceDef, TypeOps, Types};
use crate::schema::{AdditionalProperties, Structural};

/// `x-kubernetes-list-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole (also lists that declare nothing).
    Atomic,
    /// Scalars merged as a set.
    Set,
    /// Objects merged by the values of these keys.
    Map(Vec<String>),
}

/// What the schema says about one list field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSemantics {
    /// For server-side apply and managedFields.
    pub list_type: ListType,
    /// For strategic merge patch: the key elements merge by, when the
    /// patch strategy is `merge` and the elements are objects.
    pub merge_key: Option<String>,
    /// The patch strategy includes `merge` (a scalar list with it merges
    /// as a set under strategic merge patch).
    pub merge: bool,
    /// Defaults of the map keys' fields (a port's `protocol` is `TCP`):
    /// an element that leaves a key out has its default.
    pub key_defaults: BTreeMap<String, Value>,
}

impl ListSemantics {
    /// The strategic-merge-patch key, if the list merges by one.
    pub fn patch_merge_key(&self) -> Option<&str> {
        self.merge.then_some(self.merge_key.as_deref()).flatten()
    }

    /// The value of key field `k` of `elem`, or its default.
    pub fn key<'a>(&'a self, elem: &'a Value, k: &str) -> Option<&'a Value> {
        elem.get(k).or_else(|| self.key_defaults.get(k))
    }

    /// The keys server-side apply merges elements by, if it does.
    pub fn map_keys(&self) -> Option<&[String]> {
        match &self.list_type {
            ListType::Map(k) if !k.is_empty() => Some(k),
            _ => None,
        }
    }
}

/// The list semantics of a kind, by object path: each node's children are
/// its object keys (a list's children are those of its elements). Only
/// paths that lead to a declared list are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListTree {
    children: BTreeMap<String, ListTree>,
    list: Option<ListSemantics>,
}

/// The empty tree: every list atomic, nothing merges by key.
pub static NONE: ListTree = ListTree {
    children: BTreeMap::new(),
    list: None,
};

impl ListTree {
    /// The node of key `k` below this one (also through a map's values).
    pub fn child(&self, k: &str) -> Option<&ListTree> {
        self.children.get(k).or_else(|| self.children.get(ANY_KEY))
    }

    /// The semantics of the list at this node, if declared.
    pub fn list(&self) -> Option<&ListSemantics> {
        self.list.as_ref()
    }

    fn is_empty(&self) -> bool {
        self.list.is_none() && self.children.is_empty()
    }

    /// `v` with every keyed list element's missing key fields set to their
    /// defaults, so the element is found by the key path managedFields
    /// names it with (an applied port without `protocol` is the TCP one).
    pub fn with_key_defaults(&self, v: &Value) -> Value {
        let mut out = v.clone();
        self.fill_key_defaults(&mut out);
        out
    }

    fn fill_key_defaults(&self, v: &mut Value) {
        let Value::Object(m) = v else { return };
        for (k, child) in m.iter_mut() {
            let Some(node) = self.child(k) else { continue };
            match child {
                Value::Array(items) => {
                    for e in items.iter_mut() {
                        if let (Some(l), Value::Object(em)) = (node.list(), &mut *e) {
                            for (dk, dv) in &l.key_defaults {
                                em.entry(dk.clone()).or_insert_with(|| dv.clone());
                            }
                        }
                        node.fill_key_defaults(e);
                    }
                }
                Value::Object(_) => node.fill_key_defaults(child),
                _ => {}
            }
        }
    }

    /// The tree of the definition `root` in `defs` (OpenAPI definitions
    /// already [`annotate`]d), following `$ref`s.
    pub fn from_openapi(defs: &Map<String, Value>, root: &str) -> ListTree {
        let mut stack = Vec::new();
        defs.get(root)
            .map(|s| {
                stack.push(root.to_owned());
                from_openapi_node(defs, s, &mut stack)
            })
            .unwrap_or_default()
    }

    /// The tree of a custom resource: its structural schema's list types,
    /// and ObjectMeta's under `metadata`.
    pub fn from_structural(s: &Structural) -> ListTree {
        let mut t = from_structural_node(s, 0);
        let meta = object_meta();
        if !meta.is_empty() {
            t.children.insert("metadata".into(), meta.clone());
        }
        t
    }
}

/// Built-in types are finite, but recursive ones (JSONSchemaProps) are not.
const MAX_DEPTH: usize = 24;

fn resolve<'a>(defs: &'a Map<String, Value>, s: &'a Value) -> Option<(&'a str, &'a Value)> {
    let r = s.get("$ref").and_then(Value::as_str).or_else(|| {
        // schemars wraps a described reference in a one-element allOf.
        match s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) => one.get("$ref").and_then(Value::as_str),
            _ => None,
        }
    })?;
    let name = r.rsplit('/').next()?;
    defs.get(name).map(|d| (name, d))
}

fn from_openapi_node(defs: &Map<String, Value>, s: &Value, stack: &mut Vec<String>) -> ListTree {
    if stack.len() > MAX_DEPTH {
        return ListTree::default();
    }
    if let Some((name, d)) = resolve(defs, s) {
        if stack.iter().any(|n| n == name) {
            return ListTree::default();
        }
        stack.push(name.to_owned());
        let t = from_openapi_node(defs, d, stack);
        stack.pop();
        return t;
    }
    let mut t = ListTree::default();
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            let mut c = from_openapi_node(defs, p, stack);
            c.list = semantics_of(defs, p);
            if !c.is_empty() {
                t.children.insert(k.clone(), c);
            }
        }
    }
    if let Some(items) = s.get("items") {
        let c = from_openapi_node(defs, items, stack);
        t.children.extend(c.children);
    }
    if let Some(ap) = s.get("additionalProperties").filter(|v| v.is_object()) {
        // A map's values: reached by any key.
        let c = from_openapi_node(defs, ap, stack);
        if !c.is_empty() {
            t.children.insert(ANY_KEY.into(), c);
        }
    }
    t
}

/// The child that stands for every key of a map (`additionalProperties`).
const ANY_KEY: &str = "*";

fn semantics_of(defs: &Map<String, Value>, p: &Value) -> Option<ListSemantics> {
    if p.get("type").and_then(Value::as_str) != Some("array") {
        return None;
    }
    let s = |k: &str| p.get(k).and_then(Value::as_str);
    let keys: Vec<String> = p
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let list_type = match s("x-kubernetes-list-type") {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(keys),
        _ => ListType::Atomic,
    };
    let merge =
        s("x-kubernetes-patch-strategy").is_some_and(|st| st.split(',').any(|x| x == "merge"));
    let merge_key = s("x-kubernetes-patch-merge-key").map(str::to_owned);
    // The key fields' defaults, from the element schema.
    let item = p.get("items");
    let item = item.and_then(|i| resolve(defs, i).map(|(_, d)| d)).or(item);
    let key_defaults = match (&list_type, item.and_then(|i| i.get("properties"))) {
        (ListType::Map(keys), Some(props)) => keys
            .iter()
            .filter_map(|k| Some((k.clone(), props.get(k)?.get("default")?.clone())))
            .collect(),
        _ => BTreeMap::new(),
    };
    (list_type != ListType::Atomic || merge || merge_key.is_some()).then_some(ListSemantics {
        list_type,
        merge_key,
        merge,
        key_defaults,
    })
}

fn from_structural_node(s: &Structural, depth: usize) -> ListTree {
    let mut t = ListTree::default();
    if depth > MAX_DEPTH * 4 {
        return t;
    }
    for (k, p) in &s.properties {
        let mut c = from_structural_node(p, depth + 1);
        if p.type_ == "array" {
            c.list = match p.list_type.as_deref() {
                Some("map") => Some(ListType::Map(p.list_map_keys.clone())),
                Some("set") => Some(ListType::Set),
                _ => None,
            }
            .map(|list_type| ListSemantics {
                key_defaults: match (&list_type, p.items.as_deref()) {
                    (ListType::Map(keys), Some(item)) => keys
                        .iter()
                        .filter_map(|k| Some((k.clone(), item.properties.get(k)?.default.clone()?)))
                        .collect(),
                    _ => BTreeMap::new(),
                },
                list_type,
                merge_key: None,
                merge: false,
            });
        }
        if !c.is_empty() {
            t.children.insert(k.clone(), c);
        }
    }
    if let Some(items) = s.items.as_deref() {
        t.children
            .extend(from_structural_node(items, depth + 1).children);
    }
    if let Some(AdditionalProperties::Schema(ap)) = &s.additional_properties {
        let c = from_structural_node(ap, depth + 1);
        if !c.is_empty() {
            t.children.insert(ANY_KEY.into(), c);
        }
    }
    t
}

/// One list field's extensions in upstream's OpenAPI.
struct Ext {
    merge_key: Option<&'static str>,
    strategy: Option<&'static str>,
    list_type: &'static str,
    map_keys: &'static [&'static str],
}

const fn keyed(key: &'static str, map_keys: &'static [&'static str]) -> Ext {
    Ext {
        merge_key: Some(key),
        strategy: Some("merge"),
        list_type: "map",
        map_keys,
    }
}

const CONDITIONS: Ext = keyed("type", &["type"]);
const BY_NAME: Ext = keyed("name", &["name"]);
const SET: Ext = Ext {
    merge_key: None,
    strategy: Some("merge"),
    list_type: "set",
    map_keys: &[],
};

/// Upstream's list extensions on the built-in definitions this server
/// serves (the ones its types carry as struct tags); every other list is
/// atomic.
const BUILTIN: &[(&str, &str, Ext)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        keyed("uid", &["uid"]),
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        SET,
    ),
    ("io.k8s.api.core.v1.PodSpec", "containers", BY_NAME),
    ("io.k8s.api.core.v1.PodSpec", "initContainers", BY_NAME),
    ("io.k8s.api.core.v1.PodSpec", "ephemeralContainers", BY_NAME),
    ("io.k8s.api.core.v1.PodSpec", "imagePullSecrets", BY_NAME),
    ("io.k8s.api.core.v1.PodSpec", "schedulingGates", BY_NAME),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        Ext {
            strategy: Some("merge,retainKeys"),
            ..BY_NAME
        },
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        Ext {
            strategy: Some("merge,retainKeys"),
            ..BY_NAME
        },
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        keyed("ip", &["ip"]),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        keyed("topologyKey", &["topologyKey", "whenUnsatisfiable"]),
    ),
    ("io.k8s.api.core.v1.Container", "env", BY_NAME),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        keyed("containerPort", &["containerPort", "protocol"]),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        keyed("mountPath", &["mountPath"]),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        keyed("devicePath", &["devicePath"]),
    ),
    ("io.k8s.api.core.v1.EphemeralContainer", "env", BY_NAME),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        keyed("containerPort", &["containerPort", "protocol"]),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        keyed("mountPath", &["mountPath"]),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        keyed("devicePath", &["devicePath"]),
    ),
    ("io.k8s.api.core.v1.PodStatus", "conditions", CONDITIONS),
    (
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        keyed("ip", &["ip"]),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        Ext {
            list_type: "atomic",
            map_keys: &[],
            ..keyed("ip", &[])
        },
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        keyed("port", &["port", "protocol"]),
    ),
    ("io.k8s.api.core.v1.ServiceStatus", "conditions", CONDITIONS),
    ("io.k8s.api.core.v1.ServiceAccount", "secrets", BY_NAME),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", SET),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", CONDITIONS),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", CONDITIONS),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        Ext {
            list_type: "atomic",
            map_keys: &[],
            ..CONDITIONS
        },
    ),
    (
        "io.k8s.api.certificates.v1.CertificateSigningRequestStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.api.admissionregistration.v1.MutatingWebhookConfiguration",
        "webhooks",
        BY_NAME,
    ),
    (
        "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration",
        "webhooks",
        BY_NAME,
    ),
    (
        "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinitionStatus",
        "conditions",
        CONDITIONS,
    ),
    (
        "io.k8s.kube-aggregator.pkg.apis.apiregistration.v1.APIServiceStatus",
        "conditions",
        CONDITIONS,
    ),
];

/// Defaults upstream's OpenAPI declares on list map keys.
const KEY_DEFAULTS: &[(&str, &str, &str)] = &[
    ("io.k8s.api.core.v1.ContainerPort", "protocol", "TCP"),
    ("io.k8s.api.core.v1.ServicePort", "protocol", "TCP"),
];

/// Add upstream's list extensions (and the defaults of list map keys) to
/// generated OpenAPI definitions.
pub fn annotate(defs: &mut Map<String, Value>) {
    for (def, prop, default) in KEY_DEFAULTS {
        if let Some(p) = defs
            .get_mut(*def)
            .and_then(|d| d.pointer_mut(&format!("/properties/{prop}")))
            .and_then(Value::as_object_mut)
        {
            p.insert("default".into(), json!(default));
        }
    }
    for (def, prop, ext) in BUILTIN {
        let Some(p) = defs
            .get_mut(*def)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*prop))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if let Some(k) = ext.merge_key {
            p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
        }
        if let Some(s) = ext.strategy {
            p.insert("x-kubernetes-patch-strategy".into(), json!(s));
        }
        p.insert("x-kubernetes-list-type".into(), json!(ext.list_type));
        if !ext.map_keys.is_empty() {
            p.insert("x-kubernetes-list-map-keys".into(), json!(ext.map_keys));
        }
    }
}

/// The tree of a built-in type, from its annotated OpenAPI v3 schema.
fn typed_tree(ops: &TypeOps) -> ListTree {
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    let r = (ops.json_schema)(&mut g);
    let Some(root) = r
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|s| s.rsplit('/').next())
        .map(str::to_owned)
    else {
        return ListTree::default();
    };
    let mut defs = g.take_definitions(true);
    annotate(&mut defs);
    ListTree::from_openapi(&defs, &root)
}

fn object_meta() -> &'static ListTree {
    static META: OnceLock<ListTree> = OnceLock::new();
    META.get_or_init(|| {
        typed_tree(&TypeOps::of::<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        >())
    })
}

/// Group, version and kind.
type Gvk = (&'static str, &'static str, &'static str);

impl ResourceDef {
    /// How this kind's lists merge. Built once per kind.
    pub fn lists(&self) -> &'static ListTree {
        static TREES: OnceLock<RwLock<HashMap<Gvk, &'static ListTree>>> = OnceLock::new();
        let key = (self.group, self.version, self.kind);
        let trees = TREES.get_or_init(Default::default);
        if let Some(t) = trees.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return t;
        }
        let tree: &'static ListTree = match self.types {
            Types::Typed(ops) => Box::leak(Box::new(typed_tree(&ops))),
            Types::Custom(c) => return &c.lists,
        };
        trees
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(tree)
    }
}

#[cfg(test)]
mod tests;
