//! core/v1 Events, recorded the way upstream components record them.
//!
//! `kubectl describe` and `kubectl get events` read core/v1 Events, so that
//! is what [`Recorder`] writes. A repeat of the same event (same object,
//! type, reason and message) bumps `count` and `lastTimestamp` on the
//! existing Event instead of creating another, as upstream's correlator
//! does. Recording is best effort: a failure is logged, never returned,
//! because no controller should stop over an Event it could not write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

/// The two event types upstream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something a user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// How many distinct events a recorder remembers for aggregation.
const REMEMBERED: usize = 4096;

#[derive(Hash, PartialEq, Eq)]
struct Key {
    object: (String, String, String, String),
    kind: EventType,
    reason: String,
    message: String,
}

struct Seen {
    namespace: String,
    name: String,
    count: i32,
}

/// Writes Events for one component (`default-scheduler`, `kubelet`, ...).
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<HashMap<Key, Seen>>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("component", &self.component)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder that signs its Events as `component`, on `host` if it
    /// runs on a node (the kubelet does).
    pub fn new(client: kube::Client, component: &str, host: Option<&str>) -> Self {
        Self {
            client,
            component: component.to_owned(),
            host: host.map(str::to_owned),
            seen: Arc::default(),
        }
    }

    /// Record an event about `obj`.
    pub async fn publish<K>(&self, obj: &K, kind: EventType, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        self.publish_ref(&obj.object_ref(&()), kind, reason, message)
            .await;
    }

    /// Record an event about the object `r` refers to.
    pub async fn publish_ref(
        &self,
        r: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_publish(r, kind, reason, message).await {
            tracing::warn!(
                component = %self.component,
                object = ?r.name,
                reason,
                error = %e,
                "could not record an event"
            );
        }
    }

    async fn try_publish(
        &self,
        r: &ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let key = Key {
            object: (
                r.kind.clone().unwrap_or_default(),
                r.namespace.clone().unwrap_or_default(),
                r.name.clone().unwrap_or_default(),
                r.uid.clone().unwrap_or_default(),
            ),
            kind,
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        let now = Time(jiff::Timestamp::now());
        let repeat = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get_mut(&key).map(|s| {
                s.count += 1;
                (s.namespace.clone(), s.name.clone(), s.count)
            })
        };
        if let Some((ns, name, count)) = repeat {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            let patch = serde_json::json!({"count": count, "lastTimestamp": now});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired or deleted: start a new one below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        // Events about cluster-scoped objects live in "default", as upstream.
        let ns = r
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let nanos = now.0.as_nanosecond();
        let name = format!(
            "{}.{:x}",
            r.name.as_deref().unwrap_or("unknown"),
            nanos.unsigned_abs()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: r.clone(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            type_: Some(kind.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.host.clone().unwrap_or_else(|| self.component.clone())),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let created = api.create(&PostParams::default(), &ev).await?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                namespace: ns,
                name: created.name_any(),
                count: 1,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kestrel_apiserver::testing::TestServer;
    use kube::api::ListParams;

    use super::*;

    #[tokio::test]
    async fn repeats_aggregate_into_one_event_with_a_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = TestServer::start_in(dir.path(), |_| {}).await;
        let client = s.client().await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let cm = cms
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("watched".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect("create configmap");
        let rec = Recorder::new(client.clone(), "test-component", Some("node-a"));
        for _ in 0..3 {
            rec.publish(&cm, EventType::Warning, "Odd", "it happened")
                .await;
        }
        rec.publish(&cm, EventType::Normal, "Other", "something else")
            .await;
        let events: Api<Event> = Api::namespaced(client, "default");
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=watched"))
            .await
            .expect("list events");
        let mut got: Vec<_> = list
            .items
            .iter()
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.count.unwrap_or_default(),
                    e.type_.clone().unwrap_or_default(),
                    e.source.as_ref().and_then(|s| s.host.clone()),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("Odd".into(), 3, "Warning".into(), Some("node-a".into())),
                ("Other".into(), 1, "Normal".into(), Some("node-a".into())),
            ]
        );
        let e = &list.items[0];
        assert_eq!(
            e.involved_object.uid, cm.metadata.uid,
            "the event names the object by uid"
        );
        s.stop().await;
    }
}
