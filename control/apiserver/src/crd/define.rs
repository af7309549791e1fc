//! From a CustomResourceDefinition object to what the server serves: one
//! [`ResourceDef`] per served version, and the CRD's own validation.

use kestrel_api::FieldError;
use kestrel_api::registry::{
    self, AGE, ALL_VERBS, Cell, Column, Custom, Generation, NAME, ResourceDef, ScalePaths,
    Strategy, Subresource, Types,
};
use kestrel_api::schema::Structural;
use kestrel_api::validation::{self, NameRule};
use serde_json::Value;

/// The finalizer that makes a CRD's deletion remove its objects first.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn leak_list(v: Option<&Value>) -> &'static [&'static str] {
    let items: Vec<&'static str> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(leak).collect())
        .unwrap_or_default();
    Box::leak(items.into_boxed_slice())
}

/// The served versions of `crd` as resource definitions. The definitions
/// are allocated for the life of the process: the registry hands out
/// `&'static` definitions, and the caller interns them per CRD spec
/// generation, so only a CRD spec change allocates anew.
pub fn served(crd: &Value) -> Vec<&'static ResourceDef> {
    let group = leak(s(crd, "/spec/group"));
    let names = crd.pointer("/spec/names").cloned().unwrap_or_default();
    let kind = leak(s(&names, "/kind"));
    let plural = leak(s(&names, "/plural"));
    let singular = match s(&names, "/singular") {
        "" => leak(&kind.to_lowercase()),
        x => leak(x),
    };
    let list_kind = match s(&names, "/listKind") {
        "" => leak(&format!("{kind}List")),
        x => leak(x),
    };
    let short_names = leak_list(names.get("shortNames"));
    let categories = leak_list(names.get("categories"));
    let namespaced = s(crd, "/spec/scope") == "Namespaced";
    let crd_id = (
        leak(s(crd, "/metadata/name")),
        leak(s(crd, "/metadata/uid")),
    );
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let storage_version = leak(
        versions
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .map_or("", |v| s(v, "/name")),
    );
    let mut out = Vec::new();
    for v in &versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let version = leak(s(v, "/name"));
        let schema = match Structural::parse(
            v.pointer("/schema/openAPIV3Schema").unwrap_or(&Value::Null),
            "",
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(crd = crd_id.0, version, errors = ?e, "not serving a version whose schema does not parse");
                continue;
            }
        };
        let mut subresources = Vec::new();
        if v.pointer("/subresources/status").is_some() {
            subresources.push(Subresource::Status);
        }
        let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
            spec_replicas: s(sc, "/specReplicasPath").to_owned(),
            status_replicas: s(sc, "/statusReplicasPath").to_owned(),
            label_selector: sc
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
        if scale.is_some() {
            subresources.push(Subresource::Scale);
        }
        let mut columns = vec![NAME];
        let printer = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &printer {
            columns.push(Column {
                name: leak(s(c, "/name")),
                type_: leak(s(c, "/type")),
                format: leak(s(c, "/format")),
                description: leak(s(c, "/description")),
                priority: c
                    .get("priority")
                    .and_then(Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok())
                    .unwrap_or(0),
                cell: Cell::JsonPath(leak(s(c, "/jsonPath"))),
            });
        }
        if printer.is_empty() {
            columns.push(AGE);
        }
        let field_selectors: Vec<&'static str> = v
            .get("selectableFields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|f| leak(s(f, "/jsonPath").trim_start_matches('.')))
                    .collect()
            })
            .unwrap_or_default();
        let deprecation_warning = (v.get("deprecated").and_then(Value::as_bool) == Some(true))
            .then(|| match s(v, "/deprecationWarning") {
                "" => format!("{group}/{version} {kind} is deprecated"),
                w => w.to_owned(),
            });
        let custom: &'static Custom = Box::leak(Box::new(Custom {
            lists: kestrel_api::lists::ListTree::from_structural(&schema),
            schema,
            storage_version,
            deprecation_warning,
            scale,
            crd: crd_id,
        }));
        out.push(&*Box::leak(Box::new(ResourceDef {
            group,
            version,
            kind,
            list_kind,
            plural,
            singular,
            short_names,
            namespaced,
            verbs: ALL_VERBS,
            subresources: Box::leak(subresources.into_boxed_slice()),
            categories,
            columns: Box::leak(columns.into_boxed_slice()),
            field_selectors: Box::leak(field_selectors.into_boxed_slice()),
            name_rule: NameRule::Subdomain,
            strategy: Strategy {
                generation: Generation::Always,
                ..Strategy::DEFAULT
            },
            types: Types::Custom(custom),
        })));
    }
    out
}

fn check_dns_label(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if value.is_empty() {
        errs.push(FieldError::required(field, ""));
        return;
    }
    for e in validation::dns1123_label(value) {
        errs.push(FieldError::invalid(field, value, e));
    }
}

/// Whether a Kind is a valid Go-style identifier, as upstream requires
/// (`kind` and `listKind` must be DNS-1035-like and start upper case).
fn check_kind(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if value.is_empty() {
        errs.push(FieldError::required(field, ""));
        return;
    }
    let lower = value.to_lowercase();
    if !validation::dns1123_label(&lower).is_empty() || lower.contains('-') {
        errs.push(FieldError::invalid(
            field,
            value,
            "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
        ));
    }
}

/// Validate a CustomResourceDefinition as upstream's apiextensions
/// validation does (the parts Kestrel serves), with its messages.
pub fn validate(crd: &Value, old: Option<&Value>, errs: &mut Vec<FieldError>) {
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let name = s(crd, "/metadata/name");
    if name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if group.is_empty() {
        errs.push(FieldError::required("spec.group", ""));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    } else {
        for e in validation::dns1123_subdomain(group) {
            errs.push(FieldError::invalid("spec.group", group, e));
        }
    }
    if registry::RESOURCES.iter().any(|r| r.group == group) {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "is a group served by the API server itself",
        ));
    }
    let scope = s(crd, "/spec/scope");
    if scope.is_empty() {
        errs.push(FieldError::required("spec.scope", ""));
    } else if scope != "Cluster" && scope != "Namespaced" {
        errs.push(FieldError::not_supported(
            "spec.scope",
            scope,
            &["Cluster", "Namespaced"],
        ));
    }
    check_dns_label("spec.names.plural", plural, errs);
    let singular = s(crd, "/spec/names/singular");
    if !singular.is_empty() {
        check_dns_label("spec.names.singular", singular, errs);
    }
    check_kind("spec.names.kind", s(crd, "/spec/names/kind"), errs);
    let list_kind = s(crd, "/spec/names/listKind");
    if !list_kind.is_empty() {
        check_kind("spec.names.listKind", list_kind, errs);
    }
    for (i, sn) in crd
        .pointer("/spec/names/shortNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_dns_label(
            &format!("spec.names.shortNames[{i}]"),
            sn.as_str().unwrap_or(""),
            errs,
        );
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    } else if versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count()
        != 1
    {
        errs.push(FieldError::invalid(
            "spec.versions",
            "...",
            "must have exactly one version marked as storage version",
        ));
    }
    let conversion = s(crd, "/spec/conversion/strategy");
    if !conversion.is_empty() && conversion != "None" {
        errs.push(FieldError::not_supported(
            "spec.conversion.strategy",
            conversion,
            &["None"],
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let field = format!("spec.versions[{i}]");
        let vname = s(v, "/name");
        check_dns_label(&format!("{field}.name"), vname, errs);
        if seen.contains(&vname) {
            errs.push(FieldError::duplicate(format!("{field}.name"), vname));
        }
        seen.push(vname);
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.push(FieldError::required(
                format!("{field}.schema.openAPIV3Schema"),
                "schemas are required",
            )),
            Some(schema) => {
                if let Err(e) =
                    Structural::parse(schema, &format!("{field}.schema.openAPIV3Schema"))
                {
                    errs.extend(e);
                }
            }
        }
        for (j, c) in v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let cf = format!("{field}.additionalPrinterColumns[{j}]");
            if s(c, "/name").is_empty() {
                errs.push(FieldError::required(format!("{cf}.name"), ""));
            }
            let ty = s(c, "/type");
            const TYPES: &[&str] = &["integer", "number", "string", "boolean", "date"];
            if !TYPES.contains(&ty) {
                errs.push(FieldError::not_supported(format!("{cf}.type"), ty, TYPES));
            }
            if s(c, "/jsonPath").is_empty() {
                errs.push(FieldError::required(format!("{cf}.jsonPath"), ""));
            }
        }
        if let Some(sc) = v.pointer("/subresources/scale") {
            for k in ["specReplicasPath", "statusReplicasPath"] {
                let p = s(sc, &format!("/{k}"));
                if p.is_empty() {
                    errs.push(FieldError::required(
                        format!("{field}.subresources.scale.{k}"),
                        "",
                    ));
                } else if !p.starts_with('.') {
                    errs.push(FieldError::invalid(
                        format!("{field}.subresources.scale.{k}"),
                        p,
                        "should be a json path under .spec or .status",
                    ));
                }
            }
        }
    }
    if let Some(old) = old {
        for (ptr, field) in [("/spec/scope", "spec.scope"), ("/spec/group", "spec.group")] {
            if old.pointer(ptr) != crd.pointer(ptr) {
                errs.push(FieldError::immutable(field));
            }
        }
    }
}

/// The names a CRD asks for, for conflict checks: plural, singular, kind,
/// list kind and short names.
pub fn names(crd: &Value) -> Vec<String> {
    let n = crd.pointer("/spec/names").cloned().unwrap_or_default();
    let mut out: Vec<String> = ["/plural", "/singular", "/kind", "/listKind"]
        .iter()
        .map(|p| s(&n, p).to_owned())
        .filter(|x| !x.is_empty())
        .collect();
    out.extend(
        n.get("shortNames")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned),
    );
    out
}
