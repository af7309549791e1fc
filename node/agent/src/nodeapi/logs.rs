//! `GET /containerLogs/...`: find the container through CRI and stream its
//! log file.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode, header};
use kestrel_cri::{RuntimeClient, v1};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::crilog::{LineJoiner, LogOptions, Output, Tail};
use super::{Body, Ctx, HttpError, PodContainer};

/// How often a followed log is checked for new bytes at its end.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Read size.
const CHUNK: usize = 64 * 1024;

/// CRI labels the pod workers put on sandboxes and containers.
pub(crate) const POD_NAME: &str = "io.kubernetes.pod.name";
pub(crate) const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub(crate) const POD_UID: &str = "io.kubernetes.pod.uid";
pub(crate) const CONTAINER_NAME: &str = "io.kubernetes.container.name";

fn pod_labels(pc: &PodContainer) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (POD_NAME.to_owned(), pc.pod.clone()),
        (POD_NAMESPACE.to_owned(), pc.namespace.clone()),
    ]);
    if let Some(uid) = &pc.uid {
        l.insert(POD_UID.to_owned(), uid.clone());
    }
    l
}

/// The CRI id of a pod's container: the newest attempt, or for `previous`
/// the newest exited one before it.
pub(crate) async fn find_container(
    rt: &mut RuntimeClient,
    pc: &PodContainer,
    previous: bool,
) -> Result<String, HttpError> {
    let mut selector = pod_labels(pc);
    selector.insert(CONTAINER_NAME.to_owned(), pc.container.clone());
    let mut found = rt
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| HttpError::runtime("listing containers", &e))?
        .into_inner()
        .containers;
    let attempt = |c: &v1::Container| c.metadata.as_ref().map_or(0, |m| m.attempt);
    // Newest first: by attempt, then creation time.
    found.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
    let Some(current) = found.first() else {
        return Err(no_container(rt, pc).await);
    };
    if !previous {
        return Ok(current.id.clone());
    }
    let current_attempt = attempt(current);
    found
        .iter()
        .find(|c| {
            attempt(c) < current_attempt && c.state == v1::ContainerState::ContainerExited as i32
        })
        .map(|c| c.id.clone())
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "previous terminated container {:?} in pod {:?} not found",
                pc.container, pc.pod
            ))
        })
}

/// The error for a container that has no CRI container: the pod is not on
/// this node, or the container has not been created yet.
async fn no_container(rt: &mut RuntimeClient, pc: &PodContainer) -> HttpError {
    let sandboxes = rt
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(v1::PodSandboxFilter {
                label_selector: pod_labels(pc),
                ..Default::default()
            }),
        })
        .await;
    match sandboxes {
        Ok(s) if s.get_ref().items.is_empty() => HttpError::new(
            StatusCode::NOT_FOUND,
            format!("pod {:?} does not exist on this node", pc.pod),
        ),
        Ok(_) => HttpError::bad_request(format!(
            "container {:?} in pod {:?} is waiting to start: ContainerCreating",
            pc.container, pc.pod
        )),
        Err(e) => HttpError::runtime("listing pod sandboxes", &e),
    }
}

/// Whether the container is still running (a vanished one is not).
async fn running(rt: &mut RuntimeClient, id: &str) -> bool {
    rt.container_status(v1::ContainerStatusRequest {
        container_id: id.to_owned(),
        verbose: false,
    })
    .await
    .ok()
    .and_then(|r| r.into_inner().status)
    .is_some_and(|s| s.state == v1::ContainerState::ContainerRunning as i32)
}

pub(crate) async fn serve(
    ctx: &Ctx,
    pc: &PodContainer,
    query: &str,
) -> Result<Response<Body>, HttpError> {
    let opts = LogOptions::from_query(query, jiff::Timestamp::now())
        .map_err(|e| HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let mut rt = ctx.runtime.clone();
    let id = find_container(&mut rt, pc, opts.previous).await?;
    let status = rt
        .container_status(v1::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| HttpError::runtime("reading the container status", &e))?
        .into_inner()
        .status
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the runtime returned no status for container {id}"),
            )
        })?;
    if status.log_path.is_empty() {
        return Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container {pc} has no log path"),
        ));
    }
    let file = tokio::fs::File::open(&status.log_path).await.map_err(|e| {
        HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("opening the log of {pc}: {e}"),
        )
    })?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let pc = pc.clone();
    tokio::spawn(async move {
        if let Err(e) = produce(file, &opts, rt, &id, &tx).await {
            tracing::warn!(container = %pc, error = %e, "reading a container log");
        }
    });
    let body = StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b))),
    );
    let mut resp = Response::new(body.boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

/// Send unless empty; false once the client has gone.
async fn send(tx: &mpsc::Sender<Bytes>, b: Bytes) -> bool {
    b.is_empty() || tx.send(b).await.is_ok()
}

/// Read the log, apply the options, and with `follow` keep reading until
/// the container has exited and its log is drained, or the client goes.
async fn produce(
    mut file: tokio::fs::File,
    opts: &LogOptions,
    mut rt: RuntimeClient,
    id: &str,
    tx: &mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut joiner = LineJoiner::default();
    let mut out = Output::new(opts);
    let mut buf = vec![0u8; CHUNK];
    let mut tail = opts.tail_lines.map(Tail::new);
    // What is there now.
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let lines = joiner.feed(&buf[..n]);
        match &mut tail {
            Some(t) => t.push(lines),
            None => {
                if !send(tx, out.render(&lines)).await {
                    return Ok(());
                }
            }
        }
        if out.done() {
            return Ok(());
        }
    }
    if let Some(t) = &tail
        && !send(tx, out.render(t.lines())).await
    {
        return Ok(());
    }
    if !opts.follow {
        return Ok(());
    }
    // What comes next.
    let mut exited = false;
    while !out.done() {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            if !send(tx, out.render(&joiner.feed(&buf[..n]))).await {
                return Ok(());
            }
            continue;
        }
        if exited {
            // Drained after the exit was seen: nothing more will come.
            return Ok(());
        }
        // At the end: the container may have exited, in which case one more
        // read picks up whatever it wrote last.
        exited = !running(&mut rt, id).await;
        if !exited {
            tokio::select! {
                () = tx.closed() => return Ok(()),
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    }
    Ok(())
}
