//! OpenAPI documents generated from the registry: paths and operations with
//! their `x-kubernetes-group-version-kind` and query parameters (kubectl
//! reads the PATCH `fieldValidation` parameter to decide the server validates
//! fields itself), and the schemas of every kind and the types they use,
//! from k8s-openapi's JSON schemas (built-in kinds) and CRD schemas (custom
//! resources), for `kubectl explain`.

use axum::body::Body;
use hyper::{Response, StatusCode};
use kestrel_api::ApiError;
use kestrel_api::registry::{ResourceDef, Types};
use serde_json::{Map, Value, json};

use crate::crd::Registry;
use crate::state::{Ctx, json_response};

fn gv_path(g: &str, v: &str) -> String {
    if g.is_empty() {
        format!("api/{v}")
    } else {
        format!("apis/{g}/{v}")
    }
}

fn param(name: &str, location: &str) -> Value {
    json!({"name": name, "in": location, "schema": {"type": "string"}, "uniqueItems": true})
}

fn operations(d: &ResourceDef) -> Map<String, Value> {
    let prefix = format!("/{}", gv_path(d.group, d.version));
    let base = if d.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
    } else {
        format!("{prefix}/{}", d.plural)
    };
    let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
    let write_params = vec![
        param("dryRun", "query"),
        param("fieldManager", "query"),
        param("fieldValidation", "query"),
    ];
    let op = |action: &str, params: &[Value]| {
        json!({
            "operationId": format!("{action}{}", d.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
        })
    };
    let mut paths = Map::new();
    paths.insert(
        base.clone(),
        json!({
            "get": op("list", &[param("labelSelector", "query"), param("fieldSelector", "query"), param("limit", "query"), param("continue", "query"), param("watch", "query")]),
            "post": op("post", &write_params),
            "delete": op("deletecollection", &[]),
        }),
    );
    let mut item_params = write_params.clone();
    item_params.push(param("force", "query"));
    paths.insert(
        format!("{base}/{{name}}"),
        json!({
            "get": op("get", &[]),
            "put": op("put", &write_params),
            "patch": op("patch", &item_params),
            "delete": op("delete", &[param("dryRun", "query")]),
        }),
    );
    paths
}

/// Schemas of `defs` and everything they reference, keyed by upstream's
/// definition names, each kind tagged with its group/version/kind.
fn schemas<'a>(
    settings: schemars::generate::SchemaSettings,
    defs: impl IntoIterator<Item = &'a ResourceDef>,
) -> Map<String, Value> {
    let mut generator = settings.into_generator();
    let mut kinds = Vec::new();
    let mut custom = Vec::new();
    for d in defs {
        match d.types {
            Types::Typed(ops) => {
                let r = (ops.json_schema)(&mut generator);
                let name = r
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|s| s.rsplit('/').next())
                    .unwrap_or("")
                    .to_owned();
                kinds.push((name, d));
            }
            Types::Custom(c) => {
                let meta = generator
                    .subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
                let mut schema = c.schema.to_openapi();
                if let Some(o) = schema.as_object_mut() {
                    let props = o.entry("properties").or_insert_with(|| json!({}));
                    if let Some(p) = props.as_object_mut() {
                        p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                        p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                        p.insert("metadata".into(), json!({"allOf": [Value::from(meta)], "description": "Standard object's metadata."}));
                    }
                }
                // Upstream names a CRD's definition by its reversed group.
                let rev: Vec<&str> = d.group.split('.').rev().collect();
                custom.push((
                    format!("{}.{}.{}", rev.join("."), d.version, d.kind),
                    schema,
                    d,
                ));
            }
        }
    }
    let mut defs = generator.take_definitions(true);
    // The list extensions strategic merge patch and apply read.
    kestrel_api::lists::annotate(&mut defs);
    for (name, schema, d) in custom {
        defs.insert(name.clone(), schema);
        kinds.push((name, d));
    }
    for (name, d) in kinds {
        if let Some(Value::Object(s)) = defs.get_mut(&name) {
            s.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": d.group, "version": d.version, "kind": d.kind}]),
            );
        }
    }
    defs
}

/// `/openapi/v3`: the index of per-group-version documents.
pub fn v3_root(reg: &Registry, _ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let mut paths = Map::new();
    for (g, versions) in reg.groups() {
        for v in versions {
            let p = gv_path(g, v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=kestrel")}),
            );
        }
    }
    Ok(json_response(StatusCode::OK, &json!({"paths": paths})))
}

/// `/openapi/v3/<api/v1|apis/g/v>`.
pub fn v3_group(reg: &Registry, _ctx: &Ctx, gv: &str) -> Result<Response<Body>, ApiError> {
    let (g, v) = match gv.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), (*v).to_owned()),
        ["apis", g, v] => ((*g).to_owned(), (*v).to_owned()),
        _ => return Err(ApiError::RouteNotFound),
    };
    let mut paths = Map::new();
    let mut any = false;
    let defs = reg.resources_in(&g, &v);
    for d in &defs {
        any = true;
        paths.extend(operations(d));
    }
    if !any {
        return Err(ApiError::RouteNotFound);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": crate::state::version_info()["gitVersion"]},
            "paths": paths,
            "components": {"schemas": schemas(
                schemars::generate::SchemaSettings::openapi3(),
                defs.iter().copied(),
            )},
        }),
    ))
}

/// `/openapi/v2`: the same operations in Swagger 2.0 form.
pub fn v2(reg: &Registry, _ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let mut paths = Map::new();
    let all = reg.all();
    for d in &all {
        paths.extend(operations(d));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": crate::state::version_info()["gitVersion"]},
            "paths": paths,
            "definitions": schemas(
                {
                    let mut s = schemars::generate::SchemaSettings::draft07();
                    s.meta_schema = None;
                    s
                },
                all.iter().copied(),
            ),
        }),
    ))
}
