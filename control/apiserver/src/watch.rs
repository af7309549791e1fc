//! Watch: newline-delimited `{"type", "object"}` events from the watch
//! cache, with resume from a resourceVersion, bookmarks, `sendInitialEvents`
//! and 410 once the history no longer reaches back far enough.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::{Response, StatusCode, header};
use kestrel_api::ApiError;
use kestrel_store::Revision;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::cache::{Change, ChangeKind};
use crate::state::{AppState, Ctx};
use crate::state::{ListOpts, Target};
use crate::table;

/// Upstream caps watches at a random 30–60 minutes; one hour is the ceiling here.
const MAX_WATCH: Duration = Duration::from_secs(3600);

struct Encoder {
    def: &'static kestrel_api::registry::ResourceDef,
    table: Option<String>,
}

impl Encoder {
    fn event(&self, kind: &str, obj: &Value) -> Bytes {
        let converted = crate::write::served_as(self.def, obj);
        let obj = converted.as_ref().unwrap_or(obj);
        let object = match &self.table {
            Some(include) if kind != "BOOKMARK" && kind != "ERROR" => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                table::table(self.def, [obj], json!({"resourceVersion": rv}), include)
            }
            _ => obj.clone(),
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// An event from an already-encoded object (the common, non-Table case).
    fn event_json(&self, kind: &str, obj: &Value, json: &[u8]) -> Bytes {
        if self.table.is_some()
            || self
                .def
                .types
                .custom()
                .is_some_and(|c| c.storage_version != self.def.version)
        {
            return self.event(kind, obj);
        }
        let mut line = Vec::with_capacity(json.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(json);
        line.extend_from_slice(b"}\n");
        Bytes::from(line)
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta});
        self.event("BOOKMARK", &obj)
    }
}

/// Serve a watch on `t`.
pub async fn serve(
    state: &Arc<AppState>,
    ctx: &Ctx,
    t: &Target,
) -> Result<Response<Body>, ApiError> {
    let opts = ListOpts::parse(ctx, t)?;
    let name = t
        .name
        .clone()
        .or_else(|| opts.fields.exact("metadata.name").map(str::to_owned));
    let ns = t.ns.clone().or_else(|| {
        t.def
            .namespaced
            .then(|| opts.fields.exact("metadata.namespace").map(str::to_owned))
            .flatten()
    });
    let prefix = t.def.key_prefix_ns(ns.as_deref());
    // One key only when the name pins one object: a namespaced kind
    // watched across namespaces by name matches that name in every one.
    let exact_key = name
        .as_ref()
        .filter(|_| !t.def.namespaced || ns.is_some())
        .map(|n| t.def.key(ns.as_deref(), n));
    let bookmarks = ctx.q_bool("allowWatchBookmarks");
    let send_initial = ctx
        .q("sendInitialEvents")
        .map(crate::state::parse_bool_true);
    let rv: Option<Revision> = match ctx.q("resourceVersion").filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(
            r.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version {r:?}")))?,
        ),
    };
    if send_initial.is_some() && ctx.q("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![kestrel_api::FieldError::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let timeout = ctx
        .q("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(MAX_WATCH)
        .min(MAX_WATCH);
    let enc = Encoder {
        def: t.def,
        table: table::wants_table(ctx).then(|| {
            ctx.q("includeObject")
                .unwrap_or("PartialObjectMetadata")
                .to_owned()
        }),
    };

    let keys = KeyFilter {
        exact: exact_key,
        prefix: prefix.clone(),
    };

    // Work out what to send first and where live events take over.
    let mut first: Vec<Bytes> = Vec::new();
    let (rx, start) = match (send_initial, rv) {
        // Current state first: sendInitialEvents=true, or the legacy
        // "resourceVersion unset or 0" watch that starts with ADDED events.
        (Some(true), _) | (None, None) | (None, Some(0)) => {
            if let Some(r) = rv.filter(|r| *r > 0) {
                state
                    .cache
                    .wait_for(r, Duration::from_secs(3))
                    .await
                    .map_err(|e| ApiError::Timeout(e.to_string()))?;
            }
            let (items, rx, rev) = state.cache.snapshot_and_watch(&prefix);
            for e in items {
                let keyed_name = e.value.pointer("/metadata/name").and_then(Value::as_str);
                if name.as_deref().is_some_and(|n| Some(n) != keyed_name) {
                    continue;
                }
                if opts.matches(&e.value) {
                    first.push(enc.event_json("ADDED", &e.value, &e.json));
                }
            }
            if send_initial == Some(true) {
                first.push(enc.bookmark(rev, true));
            }
            (rx, rev)
        }
        (Some(false), None) | (Some(false), Some(0)) => {
            let (_, rx, rev) = state
                .cache
                .watch_from(None)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            (rx, rev)
        }
        (_, Some(r)) => match state.cache.watch_from(Some(r)) {
            Ok((past, rx, rev)) => {
                for c in past {
                    if keys.matches(&c.key)
                        && let Some(b) = event_for(&enc, &opts, &c)
                    {
                        first.push(b);
                    }
                }
                (rx, rev)
            }
            Err(e) => {
                // Upstream answers 200 and sends one ERROR event.
                let status = ApiError::Expired(e.to_string()).to_json();
                let mut r = Response::new(Body::from(enc.event("ERROR", &status)));
                *r.status_mut() = StatusCode::OK;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                return Ok(r);
            }
        },
    };

    // The response body reads the cache's broadcast directly: one task
    // (hyper's connection) per watcher and no queue in between, which is
    // what keeps the fan-out cheap with a thousand watchers.
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + state.config.bookmark_interval,
        state.config.bookmark_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let live = Live {
        first: first.into(),
        rx,
        last: start,
        deadline: Box::pin(tokio::time::sleep(timeout)),
        ticker,
        bookmarks,
        enc,
        keys,
        opts,
    };
    let stream = futures::stream::unfold(live, |mut live| async move {
        live.next()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), live))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// A watch's state once its response has started.
struct Live {
    /// Events decided before the live stream takes over.
    first: std::collections::VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<Change>>,
    /// The newest revision sent or skipped.
    last: Revision,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    ticker: tokio::time::Interval,
    bookmarks: bool,
    enc: Encoder,
    keys: KeyFilter,
    opts: ListOpts,
}

impl Live {
    /// The next chunk of the response, or `None` to end the watch.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(b) = self.first.pop_front() {
            return Some(b);
        }
        loop {
            tokio::select! {
                () = &mut self.deadline => return None,
                _ = self.ticker.tick(), if self.bookmarks => {
                    return Some(self.enc.bookmark(self.last, false));
                }
                r = self.rx.recv() => match r {
                    Ok(c) => {
                        if c.revision <= self.last {
                            continue;
                        }
                        self.last = c.revision;
                        if !self.keys.matches(&c.key) {
                            continue;
                        }
                        if let Some(b) = event_for(&self.enc, &self.opts, &c) {
                            return Some(b);
                        }
                    }
                    // Too slow to keep up: end the watch; the client
                    // re-watches from its last resourceVersion.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return None,
                },
            }
        }
    }
}

struct KeyFilter {
    exact: Option<String>,
    prefix: String,
}

impl KeyFilter {
    fn matches(&self, k: &str) -> bool {
        match &self.exact {
            Some(e) => k == e,
            None => k.starts_with(&self.prefix),
        }
    }
}

/// The event a change makes for a watcher with selectors: objects that
/// start matching are ADDED, stop matching are DELETED, as upstream.
fn event_for(enc: &Encoder, opts: &ListOpts, c: &Change) -> Option<Bytes> {
    let now = c.kind == ChangeKind::Put && opts.matches(&c.object);
    let before = c.prev.as_ref().is_some_and(|p| opts.matches(p));
    match c.kind {
        ChangeKind::Delete => before.then(|| enc.event_json("DELETED", &c.object, &c.json)),
        ChangeKind::Put => match (before, now) {
            (false, true) => Some(enc.event_json("ADDED", &c.object, &c.json)),
            (true, true) => Some(enc.event_json("MODIFIED", &c.object, &c.json)),
            (true, false) => Some(enc.event_json("DELETED", &c.object, &c.json)),
            (false, false) => None,
        },
    }
}
