//! Discovery: legacy (`APIVersions`, `APIGroupList`, `APIGroup`,
//! `APIResourceList`) and aggregated v2 (`APIGroupDiscoveryList`), all
//! generated from the live registry (built-in kinds and established CRDs).

use axum::body::Body;
use hyper::{Response, StatusCode, header};
use kestrel_api::ApiError;
use kestrel_api::registry::ResourceDef;
use serde_json::{Value, json};

use crate::crd::Registry;
use crate::state::{Ctx, json_bytes, json_response};

const AGGREGATED_CT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery v2.
fn wants_aggregated(ctx: &Ctx) -> bool {
    ctx.header(header::ACCEPT).is_some_and(|a| {
        a.split(',').any(|m| {
            let m = m.replace(' ', "");
            m.contains("as=APIGroupDiscoveryList")
                && m.contains("g=apidiscovery.k8s.io")
                && m.contains("v=v2;")
                || m.ends_with("v=v2") && m.contains("as=APIGroupDiscoveryList")
        })
    })
}

/// `/api` and `/apis`.
pub fn root(reg: &Registry, ctx: &Ctx, path: &str) -> Result<Response<Body>, ApiError> {
    let core = path == "/api";
    if wants_aggregated(ctx) {
        let items: Vec<Value> = reg
            .groups()
            .into_iter()
            .filter(|(g, _)| g.is_empty() == core)
            .map(|(g, versions)| aggregated_group(reg, g, &versions))
            .collect();
        let body = json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        });
        return Ok(json_bytes(
            StatusCode::OK,
            serde_json::to_vec(&body).unwrap_or_default(),
            AGGREGATED_CT,
        ));
    }
    if core {
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [],
            }),
        ));
    }
    let groups: Vec<Value> = reg
        .groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| group_json(g, &versions))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    ))
}

fn group_json(g: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "name": g,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis/<group>`.
pub fn group(reg: &Registry, g: &str) -> Result<Response<Body>, ApiError> {
    let Some((_, versions)) = reg
        .groups()
        .into_iter()
        .find(|(n, _)| *n == g && !g.is_empty())
    else {
        return Err(ApiError::RouteNotFound);
    };
    let mut v = group_json(g, &versions);
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), "APIGroup".into());
        o.insert("apiVersion".into(), "v1".into());
    }
    Ok(json_response(StatusCode::OK, &v))
}

/// `/api/v1` and `/apis/<group>/<version>`.
pub fn resource_list(reg: &Registry, g: &str, v: &str) -> Result<Response<Body>, ApiError> {
    let defs = reg.resources_in(g, v);
    if defs.is_empty() {
        return Err(ApiError::RouteNotFound);
    }
    let mut resources = Vec::new();
    for d in defs {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": d.verbs,
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        for s in d.subresources {
            let (sg, sv, sk) = s.kind(d);
            let mut r = json!({
                "name": format!("{}/{}", d.plural, s.name()),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": sk,
                "verbs": s.verbs(),
            });
            if sg != d.group || sv != d.version {
                r["group"] = json!(sg);
                r["version"] = json!(sv);
            }
            resources.push(r);
        }
    }
    let gv = if g.is_empty() {
        v.to_owned()
    } else {
        format!("{g}/{v}")
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

fn aggregated_group(reg: &Registry, g: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| {
            let resources: Vec<Value> = reg
                .resources_in(g, v)
                .into_iter()
                .map(aggregated_resource)
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": vs})
}

fn aggregated_resource(d: &ResourceDef) -> Value {
    let subs: Vec<Value> = d
        .subresources
        .iter()
        .map(|s| {
            let (sg, sv, sk) = s.kind(d);
            json!({
                "subresource": s.name(),
                "responseKind": {"group": sg, "version": sv, "kind": sk},
                "verbs": s.verbs(),
            })
        })
        .collect();
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": d.verbs,
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if !subs.is_empty() {
        r["subresources"] = json!(subs);
    }
    r
}
