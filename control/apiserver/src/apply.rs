//! Server-side apply: `application/apply-patch+yaml` with a `fieldManager`.
//! Field ownership is recorded in `metadata.managedFields` (FieldsV1,
//! `managed.rs`), a
//! manager applying a field another manager owns with a different value gets
//! 409 naming that manager unless `force=true`, and fields a manager stops
//! applying are removed when no one else owns them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use hyper::{Response, StatusCode};
use kestrel_api::registry::Subresource;
use kestrel_api::{ApiError, FieldError, ObjectRef};
use serde_json::{Value, json};

use crate::managed::{Path, entries, entry_json, kept, lookup, owned_fields, remove_path, render};
use crate::patch;
use crate::state::{Ctx, Target, json_response};
use crate::write::{create_object, update_with};

/// Handle an apply patch.
pub async fn apply(
    state: &Arc<crate::state::AppState>,
    ctx: &Ctx,
    t: &Target,
    sub: Option<Subresource>,
    applied: Value,
    dry: bool,
) -> Result<Response<Body>, ApiError> {
    let manager = ctx
        .q("fieldManager")
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::BadRequest("PATCH apply requests need a fieldManager".to_owned()))?
        .to_owned();
    let force = ctx.q_bool("force");
    if !applied.is_object() {
        return Err(ApiError::BadRequest(
            "an apply patch must be an object".to_owned(),
        ));
    }
    for f in ["apiVersion", "kind"] {
        if applied
            .get(f)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::BadRequest(format!(
                "invalid object type: {f} not set in the apply patch"
            )));
        }
    }
    let api_version = t.def.api_version();
    let lists = t.def.lists();
    let mine = owned_fields(&applied, sub, lists);
    // The applied configuration with its list keys' defaults, to find the
    // live values of the fields it names.
    let keyed = lists.with_key_defaults(&applied);

    if state.cache.get(&t.key()).is_none() && sub.is_none() {
        let mut obj = applied.clone();
        obj["metadata"]["managedFields"] =
            json!([entry_json(&manager, "Apply", &api_version, sub, &mine)]);
        if obj.pointer("/metadata/name").is_none() {
            obj["metadata"]["name"] = json!(t.name);
        }
        let created = create_object(state, Some(ctx), t, obj, dry).await?;
        return Ok(json_response(StatusCode::CREATED, &created));
    }

    let out = update_with(state, Some(ctx), t, sub, dry, |cur| {
        let mut others = entries(cur);
        let mine_before: BTreeSet<Path> = others
            .iter()
            .filter(|e| {
                e.manager == manager
                    && e.raw.get("operation").and_then(Value::as_str) == Some("Apply")
            })
            .flat_map(|e| e.fields.iter().cloned())
            .collect();
        others.retain(|e| {
            !(e.manager == manager
                && e.raw.get("operation").and_then(Value::as_str) == Some("Apply"))
        });

        // Conflicts: someone else owns a field we set to a different value.
        let mut conflicts: BTreeMap<String, Vec<Path>> = BTreeMap::new();
        for p in &mine {
            if p.last().map(String::as_str) == Some(".") {
                continue;
            }
            let differs = lookup(cur, p) != lookup(&keyed, p);
            if !differs {
                continue;
            }
            for e in &others {
                if e.fields.contains(p) {
                    conflicts
                        .entry(e.manager.clone())
                        .or_default()
                        .push(p.clone());
                }
            }
        }
        if !conflicts.is_empty() && !force {
            let n: usize = conflicts.values().map(Vec::len).sum();
            let mut causes = Vec::new();
            let mut parts = Vec::new();
            for (m, paths) in &conflicts {
                for p in paths {
                    causes.push(FieldError {
                        reason: "FieldManagerConflict",
                        field: render(p),
                        detail: format!("conflict with {m:?} using {api_version}"),
                    });
                    parts.push(format!(
                        "conflict with {m:?} using {api_version}: {}",
                        render(p)
                    ));
                }
            }
            let msg = format!(
                "Apply failed with {n} conflict{}: {}",
                if n == 1 { "" } else { "s" },
                parts.join("\n")
            );
            return Err(ApiError::ConflictMessage(
                ObjectRef::new(t.def.group, t.def.plural, t.name.as_deref().unwrap_or("")),
                msg,
                causes,
            ));
        }
        // Forcing takes the fields away from their previous owners.
        for e in &mut others {
            e.fields
                .retain(|p| !mine.contains(p) || lookup(cur, p) == lookup(&keyed, p));
        }

        let mut doc = cur.clone();
        // Fields this manager applied before and no longer does, and that no
        // one else owns, are removed.
        for p in mine_before.difference(&mine) {
            if !others.iter().any(|e| e.fields.contains(p)) {
                remove_path(&mut doc, p);
            }
        }
        let mut body = applied.clone();
        if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        patch::apply_merge(&mut doc, &body, lists)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut mf = kept(others);
        mf.push(entry_json(&manager, "Apply", &api_version, sub, &mine));
        doc["metadata"]["managedFields"] = Value::Array(mf);
        let rv = applied
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|r| r.parse().ok());
        if rv.is_none()
            && let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("resourceVersion");
        }
        Ok((doc, rv))
    })
    .await?;
    Ok(json_response(StatusCode::OK, &out))
}
