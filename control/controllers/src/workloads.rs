//! The workload controllers as one unit: ReplicaSet, Deployment,
//! DaemonSet, StatefulSet and Job, sharing one watch per resource type.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::workload::{Context, WorkloadConfig};

/// Run every workload controller against the API server `client` talks to,
/// until one of them (or a watch) stops, which is an error.
pub async fn run_workloads(client: kube::Client) -> anyhow::Result<()> {
    run_workloads_with(client, WorkloadConfig::default()).await
}

/// [`run_workloads`] with non-default knobs (tests shorten the Job backoff).
pub async fn run_workloads_with(
    client: kube::Client,
    config: WorkloadConfig,
) -> anyhow::Result<()> {
    let ctx = Arc::new(Context::new(client, config));
    // Controllers subscribe to the informers as they are built, so build
    // them before any informer delivers its first list.
    let controllers: Vec<(&str, BoxFuture<'static, ()>)> = vec![
        ("replicaset", crate::replicaset::controller(ctx.clone())),
        (
            "replicationcontroller",
            crate::replicationcontroller::controller(ctx.clone()),
        ),
        ("deployment", crate::deployment::controller(ctx.clone())),
        ("job", crate::job::controller(ctx.clone())),
        ("cronjob", crate::cronjob::controller(ctx.clone())),
        ("daemonset", crate::daemonset::controller(ctx.clone())),
        ("statefulset", crate::statefulset::controller(ctx.clone())),
    ];
    let informers = async {
        tokio::try_join!(
            Box::pin(ctx.pods.run()),
            Box::pin(ctx.nodes.run()),
            Box::pin(ctx.replicasets.run()),
            Box::pin(ctx.replicationcontrollers.run()),
            Box::pin(ctx.deployments.run()),
            Box::pin(ctx.daemonsets.run()),
            Box::pin(ctx.statefulsets.run()),
            Box::pin(ctx.jobs.run()),
            Box::pin(ctx.cronjobs.run()),
        )
        .map(|_| ())
    };
    let run = async {
        // A controller that acts on a half-filled store would create what
        // already exists; wait for every first list.
        tokio::try_join!(
            ctx.pods.store().wait_until_ready(),
            ctx.nodes.store().wait_until_ready(),
            ctx.replicasets.store().wait_until_ready(),
            ctx.replicationcontrollers.store().wait_until_ready(),
            ctx.deployments.store().wait_until_ready(),
            ctx.daemonsets.store().wait_until_ready(),
            ctx.statefulsets.store().wait_until_ready(),
            ctx.jobs.store().wait_until_ready(),
            ctx.cronjobs.store().wait_until_ready(),
        )?;
        tracing::info!("workload controllers started");
        let names: Vec<_> = controllers.iter().map(|(n, _)| *n).collect();
        let (_, i, _) = futures::future::select_all(controllers.into_iter().map(|(_, f)| f)).await;
        anyhow::bail!("the {} controller stopped", names[i])
    };
    tokio::select! {
        r = informers => r,
        r = run => r,
    }
}
