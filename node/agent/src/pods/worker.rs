//! One pod's worker: moves what CRI runs toward what the Pod asks for,
//! level-based, every time something about the pod changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, EphemeralContainer, LifecycleHandler, Pod};
use kestrel_client::events::EventType;
use kestrel_cri::v1;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use super::claims::Claims;
use super::cri::{self as build, CONTAINER_NAME, POD_UID};
use super::env::{ConfigError, Sources};
use super::probe::{self, Kind};
use super::status::{self, Update, now, time_of};
use super::{Shared, volumes};

/// Upstream's crash-loop backoff: 10 s doubling to 5 min, reset after a
/// container has run for 10 min.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long an idle worker waits before re-checking on its own.
const RESYNC: Duration = Duration::from_secs(10);
/// How long a postStart exec or httpGet hook may take.
const POST_START_TIMEOUT: i64 = 300;

#[derive(Debug, Default)]
struct Backoff {
    /// Restarts counted toward the delay.
    n: u32,
    /// Not before this instant.
    until: Option<Instant>,
    /// The current delay.
    delay: Duration,
    /// The exited container the delay is for.
    for_id: String,
}

/// What to do after a sync.
enum Next {
    /// Run again after at most this long (or when woken).
    After(Duration),
    /// The pod is gone and cleaned up; the worker ends.
    Done,
}

/// A CRI container of this pod, as listed.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    name: String,
    attempt: u32,
    state: i32,
}

/// Why a container is waiting.
type Waiting = HashMap<String, (String, String)>;

pub(super) struct Worker {
    shared: Arc<Shared>,
    pub(super) uid: String,
    namespace: String,
    name: String,
    wake: Arc<Notify>,
    backoff: HashMap<String, Backoff>,
    waiting: Waiting,
    probes: HashMap<String, Vec<tokio::task::JoinHandle<()>>>,
    failures_tx: mpsc::UnboundedSender<probe::Failure>,
    failures: mpsc::UnboundedReceiver<probe::Failure>,
    announced: HashSet<String>,
    /// The pod failed for good (an init container failed under Never).
    failed: Option<String>,
    start_time: Option<String>,
    /// Its claim volumes, resolved once.
    claims: Claims,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        uid: String,
        namespace: String,
        name: String,
        wake: Arc<Notify>,
    ) -> Self {
        let (failures_tx, failures) = mpsc::unbounded_channel();
        Self {
            claims: Claims::new(shared.client.clone()),
            shared,
            uid,
            namespace,
            name,
            wake,
            backoff: HashMap::new(),
            waiting: HashMap::new(),
            probes: HashMap::new(),
            failures_tx,
            failures,
            announced: HashSet::new(),
            failed: None,
            start_time: None,
        }
    }

    /// Sync until the pod is gone.
    pub(super) async fn run(mut self) {
        loop {
            let next = match self.sync().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", self.namespace, self.name), error = %format!("{e:#}"), "pod sync failed; retrying");
                    Next::After(Duration::from_secs(1))
                }
            };
            let wait = match next {
                Next::Done => break,
                Next::After(d) => d,
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(f) = self.failures.recv() => self.probe_failed(f).await,
            }
        }
        for (_, tasks) in self.probes.drain() {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }

    fn pod(&self) -> Option<Arc<Pod>> {
        self.shared
            .pods
            .state()
            .into_iter()
            .find(|p| p.metadata.uid.as_deref() == Some(self.uid.as_str()))
    }

    async fn event(&self, pod: &Pod, kind: EventType, reason: &str, msg: &str) {
        self.shared.recorder.publish(pod, kind, reason, msg).await;
    }

    async fn probe_failed(&mut self, f: probe::Failure) {
        tracing::debug!(container = %f.container_id, probe = f.kind.name(), message = %f.message, "probe failed");
        if let Some(pod) = self.pod() {
            let msg = format!("{} probe failed: {}", f.kind.name(), f.message);
            self.event(&pod, EventType::Warning, "Unhealthy", &msg)
                .await;
        }
    }

    async fn sandboxes(&self) -> anyhow::Result<Vec<v1::PodSandbox>> {
        let mut cri = self.shared.cri.clone();
        Ok(cri
            .list_pod_sandbox(v1::ListPodSandboxRequest {
                filter: Some(v1::PodSandboxFilter {
                    label_selector: [(POD_UID.to_owned(), self.uid.clone())].into(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items)
    }

    async fn containers(&self, sandbox: &str) -> anyhow::Result<Vec<Seen>> {
        let mut cri = self.shared.cri.clone();
        let list = cri
            .list_containers(v1::ListContainersRequest {
                filter: Some(v1::ContainerFilter {
                    pod_sandbox_id: sandbox.to_owned(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
        Ok(list
            .into_iter()
            .map(|c| Seen {
                name: c.labels.get(CONTAINER_NAME).cloned().unwrap_or_default(),
                attempt: c.metadata.map_or(0, |m| m.attempt),
                id: c.id,
                state: c.state,
            })
            .collect())
    }

    /// Stop every container (preStop hooks, SIGTERM, grace, SIGKILL), then
    /// the sandboxes; remove them too when `remove`.
    async fn kill_pod(
        &mut self,
        pod: Option<&Pod>,
        grace: i64,
        remove: bool,
    ) -> anyhow::Result<()> {
        for (_, tasks) in self.probes.drain() {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
        let sandboxes = self.sandboxes().await?;
        let deadline =
            Instant::now() + Duration::from_secs(u64::try_from(grace.max(0)).unwrap_or(0));
        // Main (and ephemeral) containers first, side by side; then the
        // sidecars, last started first, each once the later ones are gone.
        let order = pod
            .and_then(|p| p.spec.as_ref())
            .map(|s| {
                super::status::sidecar_stop_order(s.init_containers.as_deref().unwrap_or_default())
            })
            .unwrap_or_default();
        let mut kills = Vec::new();
        let mut sidecars: Vec<(usize, String, Option<Container>)> = Vec::new();
        for s in &sandboxes {
            for c in self.containers(&s.id).await? {
                if c.state == v1::ContainerState::ContainerRunning as i32 {
                    let spec = pod.and_then(|p| spec_container(p, &c.name)).cloned();
                    match order.iter().position(|n| *n == c.name) {
                        Some(i) => sidecars.push((i, c.id.clone(), spec)),
                        None => kills.push(self.kill_container(pod, c.id.clone(), spec, grace)),
                    }
                }
            }
        }
        futures::future::join_all(kills).await;
        sidecars.sort_by_key(|s| s.0);
        for (_, id, spec) in sidecars {
            self.kill_container(pod, id, spec, remaining(deadline, grace))
                .await;
        }
        let mut cri = self.shared.cri.clone();
        for s in sandboxes {
            cri.stop_pod_sandbox(v1::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await?;
            if remove {
                cri.remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: s.id,
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Run the preStop hook, then stop the container within `grace` seconds.
    async fn kill_container(
        &self,
        pod: Option<&Pod>,
        id: String,
        spec: Option<Container>,
        grace: i64,
    ) {
        let deadline =
            Instant::now() + Duration::from_secs(u64::try_from(grace.max(0)).unwrap_or(0));
        if let (Some(pod), Some(c)) = (pod, &spec) {
            self.event(
                pod,
                EventType::Normal,
                "Killing",
                &format!("Stopping container {}", c.name),
            )
            .await;
            if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                let ip = pod_ip_of(pod);
                let run = self.run_handler(hook, &id, &ip, c, grace);
                if let Ok(Err(msg)) = tokio::time::timeout_at(deadline.into(), run).await {
                    self.event(
                        pod,
                        EventType::Warning,
                        "FailedPreStopHook",
                        &format!("PreStopHook failed: {msg}"),
                    )
                    .await;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        let mut cri = self.shared.cri.clone();
        if let Err(e) = cri
            .stop_container(v1::StopContainerRequest {
                container_id: id.clone(),
                timeout: i64::try_from(left).unwrap_or(0),
            })
            .await
        {
            tracing::warn!(container = %id, error = %e, "stopping a container");
        }
    }

    /// Run a lifecycle hook (exec, httpGet, tcpSocket or sleep) in or
    /// against the container, within `timeout` seconds.
    async fn run_handler(
        &self,
        hook: &LifecycleHandler,
        id: &str,
        pod_ip: &str,
        c: &Container,
        timeout: i64,
    ) -> Result<(), String> {
        if let Some(sleep) = &hook.sleep {
            let d = Duration::from_secs(u64::try_from(sleep.seconds.max(0)).unwrap_or(0));
            tokio::time::sleep(d).await;
            return Ok(());
        }
        let as_probe = k8s_openapi::api::core::v1::Probe {
            exec: hook.exec.clone(),
            http_get: hook.http_get.clone(),
            tcp_socket: hook.tcp_socket.clone(),
            timeout_seconds: Some(i32::try_from(timeout.max(1)).unwrap_or(30)),
            ..Default::default()
        };
        let target = probe::Target {
            cri: self.shared.cri.clone(),
            container_id: id.to_owned(),
            pod_ip: pod_ip.to_owned(),
            ports: c.ports.clone().unwrap_or_default(),
        };
        probe::run_once(&as_probe, &target).await
    }

    /// Restart a running container whose liveness (or startup) probe
    /// failed; true when it was killed.
    async fn restart_if_unhealthy(&mut self, pod: &Pod, c: &Container, id: &str) -> bool {
        let failed = self
            .shared
            .probe_results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|r| r.liveness_failed);
        if !failed {
            return false;
        }
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let msg = format!(
            "Container {} failed liveness probe, will be restarted",
            c.name
        );
        self.event(pod, EventType::Normal, "Killing", &msg).await;
        self.stop_probes(id);
        self.kill_container(None, id.to_owned(), None, grace).await;
        true
    }

    async fn sync(&mut self) -> anyhow::Result<Next> {
        let Some(pod) = self.pod() else {
            // Gone from the API (or never ours): tear down whatever is left.
            tracing::info!(uid = %self.uid, pod = %format!("{}/{}", self.namespace, self.name), "pod gone from the API; tearing it down");
            self.kill_pod(None, 0, true).await?;
            volumes::cleanup(&volumes::pod_dir(&self.shared.pods_root, &self.uid));
            self.remove_logs();
            return Ok(Next::Done);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30);
            self.kill_pod(Some(&pod), grace, true).await?;
            volumes::cleanup(&volumes::pod_dir(&self.shared.pods_root, &self.uid));
            let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&self.name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            self.remove_logs();
            return Ok(Next::Done);
        }
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            // Finished pods keep their containers (for logs) but not their
            // sandbox, which holds the IP.
            self.kill_pod(Some(&pod), 0, false).await?;
            return Ok(Next::After(RESYNC));
        }
        self.sync_running(&pod).await
    }

    fn remove_logs(&self) {
        if let Some(pod) = self.pod() {
            let _ = std::fs::remove_dir_all(build::log_dir(&self.shared.logs_root, &pod));
        } else if let Ok(entries) = std::fs::read_dir(&self.shared.logs_root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("_{}", self.uid))
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    async fn sync_running(&mut self, pod: &Pod) -> anyhow::Result<Next> {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        if self.start_time.is_none() {
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                .or_else(|| Some(now()));
        }
        if let Some(reason) = self.failed.clone() {
            self.kill_pod(Some(pod), 0, false).await?;
            self.report(pod, &[], "", &reason).await;
            return Ok(Next::After(RESYNC));
        }
        let mut cri = self.shared.cri.clone();
        // 1. The sandbox.
        let sandboxes = self.sandboxes().await?;
        let ready = sandboxes
            .iter()
            .filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at)
            .cloned();
        let sandbox = match ready {
            Some(s) => s,
            None => {
                for s in &sandboxes {
                    cri.stop_pod_sandbox(v1::StopPodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await?;
                    cri.remove_pod_sandbox(v1::RemovePodSandboxRequest {
                        pod_sandbox_id: s.id.clone(),
                    })
                    .await?;
                }
                let attempt = u32::try_from(sandboxes.len()).unwrap_or(0);
                let mut cfg = build::sandbox(
                    pod,
                    attempt,
                    &self.shared.logs_root,
                    &self.shared.cgroup_parent,
                );
                let (dns, warnings) = super::dns::config(pod, &self.shared.dns);
                cfg.dns_config = Some(dns);
                for (reason, msg) in warnings {
                    self.event(pod, EventType::Warning, reason, &msg).await;
                }
                std::fs::create_dir_all(&cfg.log_directory)?;
                match cri
                    .run_pod_sandbox(v1::RunPodSandboxRequest {
                        config: Some(cfg),
                        runtime_handler: String::new(),
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(s) => {
                        let msg = format!("Failed to create pod sandbox: {}", s.message());
                        self.event(pod, EventType::Warning, "FailedCreatePodSandBox", &msg)
                            .await;
                        return Ok(Next::After(Duration::from_secs(2)));
                    }
                }
                let Some(s) = self
                    .sandboxes()
                    .await?
                    .into_iter()
                    .filter(|s| s.state == v1::PodSandboxState::SandboxReady as i32)
                    .max_by_key(|s| s.created_at)
                else {
                    return Ok(Next::After(Duration::from_secs(1)));
                };
                s
            }
        };
        let pod_ip = if build::host_network(pod) {
            self.shared.node_ip.clone()
        } else {
            cri.pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: sandbox.id.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
        };
        let seen = self.containers(&sandbox.id).await?;
        let latest = |name: &str| {
            seen.iter()
                .filter(|c| c.name == name)
                .max_by_key(|c| c.attempt)
                .cloned()
        };

        // 2. Volumes and config sources, once per sync.
        let mut sources = Sources::new(self.shared.client.clone(), &self.namespace);
        let dir = volumes::pod_dir(&self.shared.pods_root, &self.uid);
        let vols = match volumes::prepare(
            pod,
            &dir,
            &mut sources,
            &self.shared.tokens,
            &mut self.claims,
            &pod_ip,
            &self.shared.node_ip,
        )
        .await
        {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = format!("{e:#}");
                if e.downcast_ref::<ConfigError>().is_some() {
                    self.event(pod, EventType::Warning, "FailedMount", &msg)
                        .await;
                    for c in spec
                        .init_containers
                        .iter()
                        .flatten()
                        .chain(&spec.containers)
                    {
                        self.waiting
                            .insert(c.name.clone(), ("ContainerCreating".into(), msg.clone()));
                    }
                    None
                } else {
                    return Err(e);
                }
            }
        };
        let mut next = RESYNC;
        let Some(vols) = vols else {
            self.report(pod, &seen, &pod_ip, "").await;
            return Ok(Next::After(Duration::from_secs(2)));
        };

        // The main containers' exits: once they are all done for good
        // (restartPolicy Never or OnFailure), the sidecars stop.
        let mut exits = Vec::new();
        for c in &spec.containers {
            exits.push(match latest(&c.name) {
                Some(s) if s.state == v1::ContainerState::ContainerExited as i32 => {
                    Some(self.exit_code(&s.id).await)
                }
                _ => None,
            });
        }
        let main_done = status::main_containers_done(&policy, &exits);
        // Initialized before: a restarting sidecar blocks nothing.
        let main_started = spec.containers.iter().any(|c| latest(&c.name).is_some());

        // 3. Init containers, in order. A sidecar (restartPolicy Always)
        // lets the next one start once it has started (postStart done,
        // startup probe passed) and runs on, restarted whenever it exits.
        let mut init_done = true;
        for c in spec.init_containers.iter().flatten() {
            let sidecar = status::is_sidecar(c);
            match latest(&c.name) {
                None if sidecar && (main_done || main_started) => {
                    if !main_done {
                        self.start(pod, c, 0, &vols, &mut sources, &pod_ip, &sandbox, None)
                            .await;
                    }
                }
                None => {
                    init_done = false;
                    self.start(pod, c, 0, &vols, &mut sources, &pod_ip, &sandbox, None)
                        .await;
                    break;
                }
                Some(s) if s.state == v1::ContainerState::ContainerRunning as i32 && sidecar => {
                    if main_done {
                        continue;
                    }
                    self.ensure_probes(c, &s.id, &pod_ip);
                    if self.restart_if_unhealthy(pod, c, &s.id).await {
                        next = Duration::ZERO;
                    }
                    if !(main_started || self.started(c, &s.id)) {
                        init_done = false;
                        break;
                    }
                }
                Some(s) if s.state != v1::ContainerState::ContainerExited as i32 => {
                    if s.state == v1::ContainerState::ContainerCreated as i32 {
                        let _ = cri
                            .start_container(v1::StartContainerRequest {
                                container_id: s.id.clone(),
                            })
                            .await;
                    }
                    init_done = false;
                    break;
                }
                Some(s) if sidecar => {
                    // Sidecars come back whatever the pod's restartPolicy,
                    // until the main containers are done.
                    self.stop_probes(&s.id);
                    if main_done {
                        continue;
                    }
                    if let Some(d) = self
                        .restart_after_backoff(
                            pod,
                            c,
                            &s,
                            &vols,
                            &mut sources,
                            &pod_ip,
                            &sandbox,
                            &seen,
                        )
                        .await
                    {
                        next = next.min(d);
                    }
                    if !main_started {
                        init_done = false;
                        break;
                    }
                }
                Some(s) => {
                    let code = self.exit_code(&s.id).await;
                    if code == 0 {
                        continue;
                    }
                    init_done = false;
                    if policy == "Never" {
                        self.failed = Some(format!(
                            "Init container {} failed with exit code {code}",
                            c.name
                        ));
                        self.kill_pod(Some(pod), 0, false).await?;
                        break;
                    }
                    if let Some(d) = self
                        .restart_after_backoff(
                            pod,
                            c,
                            &s,
                            &vols,
                            &mut sources,
                            &pod_ip,
                            &sandbox,
                            &seen,
                        )
                        .await
                    {
                        next = next.min(d);
                    }
                    break;
                }
            }
        }

        // 4. App containers.
        if init_done && self.failed.is_none() {
            for c in &spec.containers {
                match latest(&c.name) {
                    None => {
                        self.start(pod, c, 0, &vols, &mut sources, &pod_ip, &sandbox, None)
                            .await;
                    }
                    Some(s) if s.state == v1::ContainerState::ContainerCreated as i32 => {
                        let _ = cri
                            .start_container(v1::StartContainerRequest {
                                container_id: s.id.clone(),
                            })
                            .await;
                    }
                    Some(s) if s.state == v1::ContainerState::ContainerRunning as i32 => {
                        self.ensure_probes(c, &s.id, &pod_ip);
                        if self.restart_if_unhealthy(pod, c, &s.id).await {
                            next = Duration::ZERO;
                        }
                    }
                    Some(s) => {
                        self.stop_probes(&s.id);
                        let code = self.exit_code(&s.id).await;
                        let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                        if restart
                            && let Some(d) = self
                                .restart_after_backoff(
                                    pod,
                                    c,
                                    &s,
                                    &vols,
                                    &mut sources,
                                    &pod_ip,
                                    &sandbox,
                                    &seen,
                                )
                                .await
                        {
                            next = next.min(d);
                        }
                    }
                }
            }
        }

        // 5. Ephemeral containers: started once each, in the pod's
        // sandbox, never restarted; `targetContainerName` shares that
        // container's process namespace.
        if self.failed.is_none() && !main_done {
            for e in spec.ephemeral_containers.iter().flatten() {
                match latest(&e.name) {
                    None => {
                        let c = ephemeral_as_container(e);
                        let target = e
                            .target_container_name
                            .as_deref()
                            .and_then(&latest)
                            .filter(|s| s.state == v1::ContainerState::ContainerRunning as i32)
                            .map(|s| s.id);
                        self.start(
                            pod,
                            &c,
                            0,
                            &vols,
                            &mut sources,
                            &pod_ip,
                            &sandbox,
                            target.as_deref(),
                        )
                        .await;
                    }
                    Some(s) if s.state == v1::ContainerState::ContainerCreated as i32 => {
                        let _ = cri
                            .start_container(v1::StartContainerRequest {
                                container_id: s.id.clone(),
                            })
                            .await;
                    }
                    Some(_) => {}
                }
            }
        }

        // 6. The main containers are done for good: stop the sidecars
        // after them, last started first, within the grace period.
        if main_done {
            let grace = spec.termination_grace_period_seconds.unwrap_or(30);
            let deadline =
                Instant::now() + Duration::from_secs(u64::try_from(grace.max(0)).unwrap_or(0));
            let order =
                status::sidecar_stop_order(spec.init_containers.as_deref().unwrap_or_default());
            for name in order {
                let Some(s) = latest(&name)
                    .filter(|s| s.state == v1::ContainerState::ContainerRunning as i32)
                else {
                    continue;
                };
                self.stop_probes(&s.id);
                let c = spec_container(pod, &name).cloned();
                self.kill_container(Some(pod), s.id.clone(), c, remaining(deadline, grace))
                    .await;
            }
        }
        let seen = self.containers(&sandbox.id).await?;
        let done = self.report(pod, &seen, &pod_ip, "").await;
        if done {
            // Terminal: free the sandbox (and its IP); containers stay for logs.
            self.kill_pod(Some(pod), 0, false).await?;
        }
        Ok(Next::After(next))
    }

    fn stop_probes(&mut self, id: &str) {
        if let Some(tasks) = self.probes.remove(id) {
            tasks.iter().for_each(tokio::task::JoinHandle::abort);
        }
    }

    fn ensure_probes(&mut self, c: &Container, id: &str, pod_ip: &str) {
        if self.probes.contains_key(id) {
            // Liveness and readiness wait for the startup probe.
            let started = self.started(c, id);
            let tasks = self.probes.get(id).map_or(0, Vec::len);
            if !(started && tasks == 1 && c.startup_probe.is_some()) {
                return;
            }
        }
        let target = probe::Target {
            cri: self.shared.cri.clone(),
            container_id: id.to_owned(),
            pod_ip: pod_ip.to_owned(),
            ports: c.ports.clone().unwrap_or_default(),
        };
        let mut tasks = self.probes.remove(id).unwrap_or_default();
        let spawn = |kind, p: &k8s_openapi::api::core::v1::Probe| {
            probe::spawn(
                kind,
                p.clone(),
                target.clone(),
                self.shared.probe_results.clone(),
                self.failures_tx.clone(),
                self.wake.clone(),
            )
        };
        if tasks.is_empty()
            && let Some(p) = &c.startup_probe
        {
            tasks.push(spawn(Kind::Startup, p));
            self.probes.insert(id.to_owned(), tasks);
            return;
        }
        if let Some(p) = &c.liveness_probe {
            tasks.push(spawn(Kind::Liveness, p));
        }
        if let Some(p) = &c.readiness_probe {
            tasks.push(spawn(Kind::Readiness, p));
        }
        // A marker so the probes are not started twice.
        tasks.push(tokio::spawn(async {}));
        self.probes.insert(id.to_owned(), tasks);
    }

    fn started(&self, c: &Container, id: &str) -> bool {
        c.startup_probe.is_none()
            || self
                .shared
                .probe_results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .is_some_and(|r| r.started)
    }

    fn ready(&self, c: &Container, id: &str) -> bool {
        self.started(c, id)
            && (c.readiness_probe.is_none()
                || self
                    .shared
                    .probe_results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .is_some_and(|r| r.ready))
    }

    async fn exit_code(&self, id: &str) -> i32 {
        let mut cri = self.shared.cri.clone();
        cri.container_status(v1::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().status)
        .map_or(0, |s| s.exit_code)
    }

    /// Restart `c` once its backoff allows; returns how long until then.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the pieces of one sync"
    )]
    async fn restart_after_backoff(
        &mut self,
        pod: &Pod,
        c: &Container,
        last: &Seen,
        vols: &volumes::Volumes,
        sources: &mut Sources,
        pod_ip: &str,
        sandbox: &v1::PodSandbox,
        seen: &[Seen],
    ) -> Option<Duration> {
        let mut cri = self.shared.cri.clone();
        let status = cri
            .container_status(v1::ContainerStatusRequest {
                container_id: last.id.clone(),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().status);
        let ran = status
            .as_ref()
            .map(|s| {
                Duration::from_nanos(
                    u64::try_from(s.finished_at.saturating_sub(s.started_at)).unwrap_or(0),
                )
            })
            .unwrap_or_default();
        let b = self.backoff.entry(c.name.clone()).or_default();
        if b.for_id != last.id {
            // A new exit. As upstream: the first restart is immediate, then
            // 10 s, 20 s, ... up to 5 min; a long run resets the count.
            if ran >= BACKOFF_RESET {
                b.n = 0;
            }
            b.delay = if b.n == 0 {
                Duration::ZERO
            } else {
                BACKOFF_BASE
                    .saturating_mul(1 << (b.n - 1).min(5))
                    .min(BACKOFF_MAX)
            };
            b.n += 1;
            b.until = Some(Instant::now() + b.delay);
            b.for_id = last.id.clone();
        }
        let until = b.until.unwrap_or_else(Instant::now);
        let delay = b.delay;
        if Instant::now() < until {
            let left = until - Instant::now();
            let msg = format!(
                "back-off {}s restarting failed container={} pod={}_{}({})",
                delay.as_secs(),
                c.name,
                self.name,
                self.namespace,
                self.uid
            );
            if self.waiting.get(&c.name).map(|w| w.0.as_str()) != Some("CrashLoopBackOff") {
                self.event(
                    pod,
                    EventType::Warning,
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {} in pod {}_{}({})",
                        c.name, self.name, self.namespace, self.uid
                    ),
                )
                .await;
            }
            self.waiting
                .insert(c.name.clone(), ("CrashLoopBackOff".into(), msg));
            return Some(left);
        }
        // Keep one previous instance (for `logs --previous`), drop older ones.
        for old in seen
            .iter()
            .filter(|s| s.name == c.name && s.attempt < last.attempt)
        {
            let _ = cri
                .remove_container(v1::RemoveContainerRequest {
                    container_id: old.id.clone(),
                })
                .await;
        }
        self.start(
            pod,
            c,
            last.attempt + 1,
            vols,
            sources,
            pod_ip,
            sandbox,
            None,
        )
        .await;
        None
    }

    /// Pull if needed, create and start one container; failures become the
    /// container's waiting reason and an event.
    #[expect(clippy::too_many_arguments, reason = "the pieces of one sync")]
    async fn start(
        &mut self,
        pod: &Pod,
        c: &Container,
        attempt: u32,
        vols: &volumes::Volumes,
        sources: &mut Sources,
        pod_ip: &str,
        sandbox: &v1::PodSandbox,
        pid_target: Option<&str>,
    ) {
        if let Err((reason, msg)) = self.ensure_image(pod, c).await {
            self.waiting.insert(c.name.clone(), (reason, msg));
            return;
        }
        let services: Vec<_> = self
            .shared
            .services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect();
        let built = async {
            let env = super::env::resolve(pod, c, &services, sources, pod_ip, &self.shared.node_ip)
                .await?;
            let mounts = volumes::mounts(c, vols)?;
            build::container(pod, c, attempt, env, mounts)
        }
        .await;
        let cfg = match built {
            Ok(mut cfg) => {
                if let Some(target) = pid_target
                    && let Some(ns) = cfg
                        .linux
                        .as_mut()
                        .and_then(|l| l.security_context.as_mut())
                        .and_then(|s| s.namespace_options.as_mut())
                {
                    ns.pid = v1::NamespaceMode::Target as i32;
                    ns.target_id = target.to_owned();
                }
                cfg
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let reason = if e.downcast_ref::<ConfigError>().is_some() {
                    "CreateContainerConfigError"
                } else {
                    "CreateContainerError"
                };
                self.event(pod, EventType::Warning, "Failed", &format!("Error: {msg}"))
                    .await;
                self.waiting.insert(c.name.clone(), (reason.into(), msg));
                return;
            }
        };
        let sandbox_cfg = build::sandbox(
            pod,
            sandbox.metadata.as_ref().map_or(0, |m| m.attempt),
            &self.shared.logs_root,
            &self.shared.cgroup_parent,
        );
        let mut cri = self.shared.cri.clone();
        let created = cri
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: sandbox.id.clone(),
                config: Some(cfg),
                sandbox_config: Some(sandbox_cfg),
            })
            .await;
        let id = match created {
            Ok(r) => r.into_inner().container_id,
            Err(s) => {
                let msg = s.message().to_owned();
                self.event(pod, EventType::Warning, "Failed", &format!("Error: {msg}"))
                    .await;
                self.waiting
                    .insert(c.name.clone(), ("CreateContainerError".into(), msg));
                return;
            }
        };
        self.event(
            pod,
            EventType::Normal,
            "Created",
            &format!("Created container: {}", c.name),
        )
        .await;
        if let Err(s) = cri
            .start_container(v1::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            let msg = s.message().to_owned();
            self.event(pod, EventType::Warning, "Failed", &format!("Error: {msg}"))
                .await;
            self.waiting
                .insert(c.name.clone(), ("RunContainerError".into(), msg));
            return;
        }
        self.waiting.remove(&c.name);
        self.event(
            pod,
            EventType::Normal,
            "Started",
            &format!("Started container {}", c.name),
        )
        .await;
        // postStart runs before anything counts the container as started;
        // a failure kills it, and its restartPolicy decides what follows.
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            let grace = pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30);
            if let Err(msg) = self
                .run_handler(hook, &id, pod_ip, c, POST_START_TIMEOUT)
                .await
            {
                tracing::info!(container = %c.name, pod = %self.name, error = %msg, "postStart hook failed");
                // Upstream keeps the hook's output out of the event.
                self.event(
                    pod,
                    EventType::Warning,
                    "FailedPostStartHook",
                    "PostStartHook failed",
                )
                .await;
                self.kill_container(Some(pod), id, Some(c.clone()), grace)
                    .await;
            }
        }
    }

    async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Result<(), (String, String)> {
        let image = c.image.clone().unwrap_or_default();
        let tag_latest = !image.contains('@')
            && !image.rsplit('/').next().unwrap_or("").contains(':')
            || image.ends_with(":latest");
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            if tag_latest {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let mut images = self.shared.images.clone();
        let spec = v1::ImageSpec {
            image: image.clone(),
            ..Default::default()
        };
        let present = images
            .image_status(v1::ImageStatusRequest {
                image: Some(spec.clone()),
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().image)
            .is_some();
        if present && policy != "Always" {
            if self.announced.insert(format!("pulled/{}", c.name)) {
                self.event(
                    pod,
                    EventType::Normal,
                    "Pulled",
                    &format!("Container image {image:?} already present on machine"),
                )
                .await;
            }
            return Ok(());
        }
        if policy == "Never" {
            let msg = format!("Container image {image:?} is not present with pull policy of Never");
            self.event(pod, EventType::Warning, "ErrImageNeverPull", &msg)
                .await;
            return Err(("ErrImageNeverPull".into(), msg));
        }
        self.event(
            pod,
            EventType::Normal,
            "Pulling",
            &format!("Pulling image {image:?}"),
        )
        .await;
        let started = Instant::now();
        match images
            .pull_image(v1::PullImageRequest {
                image: Some(spec),
                ..Default::default()
            })
            .await
        {
            Ok(_) => {
                let msg = format!(
                    "Successfully pulled image {image:?} in {:?}",
                    started.elapsed()
                );
                self.event(pod, EventType::Normal, "Pulled", &msg).await;
                Ok(())
            }
            Err(s) if present => {
                tracing::warn!(image, error = %s.message(), "pull failed; using the local copy");
                Ok(())
            }
            Err(s) => {
                let msg = format!("Failed to pull image {image:?}: {}", s.message());
                self.event(pod, EventType::Warning, "Failed", &msg).await;
                let reason = if self
                    .waiting
                    .get(&c.name)
                    .is_some_and(|w| w.0 == "ErrImagePull" || w.0 == "ImagePullBackOff")
                {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                };
                Err((reason.into(), msg))
            }
        }
    }

    /// Compute and send the status; returns true when the pod is finished.
    async fn report(&mut self, pod: &Pod, seen: &[Seen], pod_ip: &str, failed: &str) -> bool {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut cri = self.shared.cri.clone();
        let mut statuses: HashMap<
            String,
            (Option<v1::ContainerStatus>, Option<v1::ContainerStatus>),
        > = HashMap::new();
        for s in seen {
            let Ok(st) = cri
                .container_status(v1::ContainerStatusRequest {
                    container_id: s.id.clone(),
                    verbose: false,
                })
                .await
            else {
                continue;
            };
            let Some(st) = st.into_inner().status else {
                continue;
            };
            let e = statuses.entry(s.name.clone()).or_default();
            let attempt = |x: &Option<v1::ContainerStatus>| {
                x.as_ref()
                    .and_then(|c| c.metadata.as_ref())
                    .map_or(0, |m| m.attempt)
            };
            let this = st.metadata.as_ref().map_or(0, |m| m.attempt);
            if e.0.is_none() || this > attempt(&e.0) {
                e.1 = e.0.take();
                e.0 = Some(st);
            } else if e.1.is_none() || this > attempt(&e.1) {
                e.1 = Some(st);
            }
        }
        let state_json = |st: &v1::ContainerStatus| -> Value {
            match st.state {
                s if s == v1::ContainerState::ContainerRunning as i32 => {
                    json!({"running": {"startedAt": time_of(st.started_at)}})
                }
                s if s == v1::ContainerState::ContainerExited as i32 => json!({"terminated": {
                    "exitCode": st.exit_code,
                    "reason": if st.reason.is_empty() { if st.exit_code == 0 { "Completed" } else { "Error" } } else { st.reason.as_str() },
                    "message": if st.message.is_empty() { None } else { Some(&st.message) },
                    "startedAt": time_of(st.started_at),
                    "finishedAt": time_of(st.finished_at),
                    "containerID": format!("containerd://{}", st.id),
                }}),
                _ => json!({"waiting": {"reason": "ContainerCreating"}}),
            }
        };
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Role {
            Init,
            Sidecar,
            Main,
            Ephemeral,
        }
        let waiting = &self.waiting;
        let build = |c: &Container, role: Role| -> Value {
            let (cur, prev) = statuses.get(&c.name).cloned().unwrap_or_default();
            let mut state = cur.as_ref().map_or_else(
                || json!({"waiting": {"reason": "ContainerCreating"}}),
                &state_json,
            );
            let running = cur
                .as_ref()
                .is_some_and(|s| s.state == v1::ContainerState::ContainerRunning as i32);
            let exited = cur
                .as_ref()
                .filter(|s| s.state == v1::ContainerState::ContainerExited as i32);
            if let Some((reason, message)) = waiting.get(&c.name)
                && !running
            {
                state = json!({"waiting": {"reason": reason, "message": message}});
            }
            let id = cur.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            // As upstream: a plain init container is ready once it
            // succeeded; sidecars and main containers while they run and
            // pass their readiness probe; ephemeral containers never.
            let ready = match role {
                Role::Init => exited.is_some_and(|s| s.exit_code == 0),
                Role::Sidecar | Role::Main => running && self.ready(c, &id),
                Role::Ephemeral => false,
            };
            let mut v = json!({
                "name": c.name,
                "image": c.image,
                "imageID": cur.as_ref().map(|s| s.image_ref.clone()).unwrap_or_default(),
                "ready": ready,
                "started": running && self.started(c, &id),
                "restartCount": cur.as_ref().and_then(|s| s.metadata.as_ref()).map_or(0, |m| m.attempt),
                "state": state,
                "lastState": prev.as_ref().map_or(json!({}), &state_json),
            });
            if role == Role::Ephemeral
                && let Some(o) = v.as_object_mut()
            {
                o.remove("started");
            }
            if !id.is_empty() {
                v["containerID"] = json!(format!("containerd://{id}"));
            }
            v
        };
        let inits: Vec<(bool, Value)> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                let sidecar = status::is_sidecar(c);
                let role = if sidecar { Role::Sidecar } else { Role::Init };
                (sidecar, build(c, role))
            })
            .collect();
        let containers: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| build(c, Role::Main))
            .collect();
        let ephemerals: Vec<Value> = spec
            .ephemeral_containers
            .iter()
            .flatten()
            .map(|e| build(&ephemeral_as_container(e), Role::Ephemeral))
            .collect();
        let initialized = status::initialized(&inits, &containers);
        let all_ready = containers
            .iter()
            .chain(inits.iter().filter(|(s, _)| *s).map(|(_, v)| v))
            .all(|v| v["ready"] == json!(true));
        let mut phase = status::phase(&inits, &containers, &policy);
        let mut reason = None;
        if !failed.is_empty() {
            phase = "Failed";
            reason = Some(failed.to_owned());
        }
        let ready = initialized && all_ready && phase == "Running";
        let old = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let cond = |t: &str, ok: bool| -> Value {
            let status = if ok { "True" } else { "False" };
            let since = old
                .iter()
                .find(|c| c.type_ == t && c.status == status)
                .and_then(|c| c.last_transition_time.as_ref())
                .map_or_else(now, |t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let status = json!({
            "phase": phase,
            "message": reason,
            "conditions": [
                cond("PodReadyToStartContainers", !pod_ip.is_empty()),
                cond("Initialized", initialized),
                cond("Ready", ready),
                cond("ContainersReady", ready),
                cond("PodScheduled", true),
            ],
            "hostIP": self.shared.node_ip,
            "hostIPs": [{"ip": self.shared.node_ip}],
            "podIP": if pod_ip.is_empty() { None } else { Some(pod_ip) },
            "podIPs": if pod_ip.is_empty() { Value::Null } else { json!([{"ip": pod_ip}]) },
            "startTime": self.start_time,
            "initContainerStatuses": if inits.is_empty() { Value::Null } else { json!(inits.into_iter().map(|(_, v)| v).collect::<Vec<_>>()) },
            "containerStatuses": containers,
            "ephemeralContainerStatuses": if ephemerals.is_empty() { Value::Null } else { json!(ephemerals) },
        });
        let _ = self.shared.status_tx.send(Update {
            namespace: self.namespace.clone(),
            name: pod.name_any(),
            uid: self.uid.clone(),
            status,
        });
        phase == "Succeeded" || phase == "Failed"
    }
}

/// An ephemeral container as the container it runs as: the same fields,
/// less the target (and the hooks, ports and probes it may not have).
fn ephemeral_as_container(e: &EphemeralContainer) -> Container {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in [
            "targetContainerName",
            "lifecycle",
            "ports",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "restartPolicy",
            "resizePolicy",
            "resources",
        ] {
            o.remove(k);
        }
    }
    serde_json::from_value(v).unwrap_or_else(|_| Container {
        name: e.name.clone(),
        image: e.image.clone(),
        ..Default::default()
    })
}

fn spec_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// What is left of a shared grace period; sidecars stopped after the main
/// containers get at least upstream's minimum of 2 s when there was one.
fn remaining(deadline: Instant, grace: i64) -> i64 {
    if grace <= 0 {
        return 0;
    }
    let left = deadline.saturating_duration_since(Instant::now()).as_secs();
    i64::try_from(left).unwrap_or(0).max(2)
}

fn pod_ip_of(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}
