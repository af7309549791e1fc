//! `as=Table` output: server-side printing with the registry's columns.

use hyper::header;
use kestrel_api::printers;
use kestrel_api::registry::{Cell, Column, ResourceDef};
use serde_json::{Value, json};

use crate::state::Ctx;

/// Whether the client asked for a Table (kubectl get does).
pub fn wants_table(ctx: &Ctx) -> bool {
    ctx.header(header::ACCEPT).is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.replace(' ', "").contains("as=Table"))
    })
}

fn cell(c: &Column, obj: &Value) -> Value {
    match c.cell {
        Cell::Name => obj
            .pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
        Cell::Age => printers::age(
            obj.pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str),
        ),
        Cell::CreatedAt => obj
            .pointer("/metadata/creationTimestamp")
            .cloned()
            .unwrap_or(Value::Null),
        Cell::Path(p) => {
            let ptr = format!("/{}", p.replace('.', "/"));
            match obj.pointer(&ptr) {
                Some(Value::Null) | None => json!("<none>"),
                Some(v) => v.clone(),
            }
        }
        // A CRD's date columns show an age, as upstream's Table conversion;
        // objects and lists show as JSON.
        Cell::JsonPath(p) => match printers::json_path(obj, p) {
            Some(Value::String(s)) if c.type_ == "date" => printers::age(Some(&s)),
            Some(v @ (Value::Object(_) | Value::Array(_))) => json!(v.to_string()),
            Some(v) => v,
            None => Value::Null,
        },
        Cell::Func(f) => f(obj),
    }
}

fn row_object(obj: &Value, include: &str) -> Value {
    match include {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
        }),
    }
}

/// A Table of `items`, with `metadata` as the list metadata.
pub fn table<'a>(
    def: &ResourceDef,
    items: impl IntoIterator<Item = &'a Value>,
    metadata: Value,
    include: &str,
) -> Value {
    let cols: Vec<Value> = def
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.type_,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .into_iter()
        .map(|o| {
            let cells: Vec<Value> = def.columns.iter().map(|c| cell(c, o)).collect();
            let mut r = json!({"cells": cells});
            let ro = row_object(o, include);
            if !ro.is_null() {
                r["object"] = ro;
            }
            r
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": cols,
        "rows": rows,
    })
}
