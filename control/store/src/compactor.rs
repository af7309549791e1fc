//! Periodic compaction, the same for every backend.
//!
//! Kubernetes' API server compacts etcd every five minutes; k3s's kine keeps
//! a fixed number of revisions. This does the latter on a timer: history is
//! bounded by revisions, not by time, so a burst of writes cannot grow it
//! without limit between two ticks any more than `retain_revisions` allows.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::{Error, Store};

/// When and how much history to discard.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// Time between two compactions.
    pub interval: Duration,
    /// Revisions of history kept below the current revision; watches and
    /// reads within this window keep working.
    pub retain_revisions: i64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            interval: Duration::from_secs(300),
            retain_revisions: 1000,
        }
    }
}

/// Compacts `store` every `policy.interval` until the task is aborted.
pub fn spawn(store: Arc<dyn Store>, policy: CompactionPolicy) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(policy.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once; skip it so that starting up is not
        // followed by a compaction right away.
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = compact_once(store.as_ref(), policy.retain_revisions).await {
                warn!(error = %e, "periodic compaction failed");
            }
        }
    })
}

/// One compaction step: drops history older than `retain` revisions, if any.
pub async fn compact_once(store: &dyn Store, retain: i64) -> crate::Result<()> {
    let current = store.current_revision().await?;
    let done = store.compact_revision().await?;
    let target = current - retain.max(0);
    if target <= done || target <= 0 {
        return Ok(());
    }
    match store.compact(target).await {
        // Another API server sharing the store got there first.
        Err(Error::Compacted { .. }) => Ok(()),
        Err(e) => Err(e),
        Ok(()) => {
            debug!(target, "compacted");
            Ok(())
        }
    }
}
