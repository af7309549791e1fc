//! Events and PodScheduled conditions, written off the scheduling path.
//!
//! Like upstream's event broadcaster, reports go through a bounded queue
//! and are dropped (and counted) when it is full: a scheduler that falls
//! behind on Events must not fall behind on binding. A dropped condition
//! is written again on the pod's next failed attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kestrel_client::events::{EventType, Recorder};
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::mpsc;

use crate::pod_info::PodInfo;

const QUEUED: usize = 1000;
const IN_FLIGHT: usize = 8;

#[derive(Debug)]
pub(crate) enum Report {
    Event {
        pod: ObjectReference,
        kind: EventType,
        reason: &'static str,
        message: String,
    },
    /// PodScheduled=False with this reason and message.
    NotScheduled {
        namespace: String,
        name: String,
        reason: &'static str,
        message: String,
    },
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    tx: mpsc::Sender<Report>,
    dropped: Arc<AtomicU64>,
}

pub(crate) fn pod_ref(p: &PodInfo) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(p.namespace.clone()),
        name: Some(p.name.clone()),
        uid: Some(p.uid.clone()).filter(|u| !u.is_empty()),
        ..Default::default()
    }
}

impl Reporter {
    /// A reporter and the future that writes its reports; run the future
    /// for as long as the scheduler runs.
    pub(crate) fn new(
        client: kube::Client,
        component: &str,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel(QUEUED);
        let recorder = Recorder::new(client.clone(), component, None);
        let worker = async move {
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
                .for_each_concurrent(IN_FLIGHT, |r| write(&client, &recorder, r))
                .await;
        };
        (
            Self {
                tx,
                dropped: Arc::default(),
            },
            worker,
        )
    }

    pub(crate) fn send(&self, r: Report) {
        if self.tx.try_send(r).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "report queue full; dropping events");
            }
        }
    }

    pub(crate) fn event(
        &self,
        p: &PodInfo,
        kind: EventType,
        reason: &'static str,
        message: String,
    ) {
        self.send(Report::Event {
            pod: pod_ref(p),
            kind,
            reason,
            message,
        });
    }

    /// Record a failed attempt: the Event always (the recorder aggregates
    /// repeats), the condition only if it changed.
    pub(crate) fn not_scheduled(&self, p: &PodInfo, reason: &'static str, message: String) {
        self.event(p, EventType::Warning, "FailedScheduling", message.clone());
        let same = p
            .scheduled_condition
            .as_ref()
            .is_some_and(|(s, r, m)| s == "False" && r == reason && *m == message);
        if !same {
            self.send(Report::NotScheduled {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                reason,
                message,
            });
        }
    }
}

async fn write(client: &kube::Client, recorder: &Recorder, r: Report) {
    match r {
        Report::Event {
            pod,
            kind,
            reason,
            message,
        } => recorder.publish_ref(&pod, kind, reason, &message).await,
        Report::NotScheduled {
            namespace,
            name,
            reason,
            message,
        } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": Time(jiff::Timestamp::now()),
            }]}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                tracing::debug!(pod = %name, %namespace, error = %e, "could not set PodScheduled");
            }
        }
    }
}
