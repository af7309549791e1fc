//! Watches: replay from the log, then live events from the writer's
//! broadcast, with no gap and no duplicate at the switch.
//!
//! The switch works because the writer publishes a transaction's events only
//! after it has committed. A watcher first replays the log up to the newest
//! revision it can see, then subscribes, then replays once more. Anything
//! committed before the subscription is in that second replay; anything
//! committed after it arrives on the broadcast. Both may hold the same
//! transaction, so live events below the next expected revision are skipped.
//!
//! The broadcast is a bounded ring: the writer never waits for a watcher.
//! A watcher whose consumer is too slow falls off the ring and is ended with
//! [`Error::WatcherLagged`], carrying the revision to resume from.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use super::{Inner, schema};
use crate::{Error, Event, Result, Revision, WatchStream};

/// Events read from the log per read transaction, so a long replay does not
/// pin one snapshot (and hold back checkpoints) for its whole length.
const REPLAY_PAGE: usize = 512;

/// Events buffered between a watcher's task and its consumer.
const CHANNEL: usize = 256;

pub(crate) async fn start(
    inner: Arc<Inner>,
    prefix: String,
    start_revision: Revision,
) -> Result<WatchStream> {
    // Subscribe before reading the revision. The writer raises the revision
    // before it publishes, so every transaction above the revision read
    // here is still to be published and reaches this subscription: a watch
    // from there on needs no replay and is live the moment this returns.
    let live = inner.shared.events.subscribe();
    let current = inner.shared.revision.load(Ordering::SeqCst);
    let compact = inner.shared.compact_revision.load(Ordering::SeqCst);
    let next = if start_revision <= 0 {
        current + 1
    } else {
        start_revision
    };
    if next <= compact {
        return Err(Error::Compacted {
            compact_revision: compact,
        });
    }
    // History to replay: subscribe again after catching up instead, so a
    // long replay cannot push the subscription off the ring.
    let early = (next > current).then_some(live);
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let mut next = next;
        let result = match early {
            Some(live) => forward(live, &prefix, &mut next, &tx).await,
            None => pump(&inner, &prefix, &mut next, &tx).await,
        };
        if let Err(e) = result {
            debug!(prefix, next, error = %e, "watch ended");
            let _ = tx.send(Err(e)).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(stream.boxed())
}

/// What to do after handing an event over.
enum Flow {
    Continue,
    /// The consumer dropped the stream.
    Stop,
}

async fn send(tx: &mpsc::Sender<Result<Event>>, event: Event) -> Flow {
    match tx.send(Ok(event)).await {
        Ok(()) => Flow::Continue,
        Err(_) => Flow::Stop,
    }
}

async fn pump(
    inner: &Arc<Inner>,
    prefix: &str,
    next: &mut Revision,
    tx: &mpsc::Sender<Result<Event>>,
) -> Result<()> {
    // Catch up before subscribing, so that a long replay cannot push this
    // watcher off the broadcast ring before it even starts.
    if let Flow::Stop = replay(inner, prefix, next, tx).await? {
        return Ok(());
    }
    let live = inner.shared.events.subscribe();
    if let Flow::Stop = replay(inner, prefix, next, tx).await? {
        return Ok(());
    }
    forward(live, prefix, next, tx).await
}

/// Forwards live events at or after `next` until the consumer goes away or
/// falls behind.
async fn forward(
    mut live: broadcast::Receiver<Arc<super::writer::Batch>>,
    prefix: &str,
    next: &mut Revision,
    tx: &mpsc::Sender<Result<Event>>,
) -> Result<()> {
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return Ok(()),
            batch = live.recv() => batch,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                debug!(prefix, missed, resume_from = *next, "watcher lagged");
                return Err(Error::WatcherLagged { resume_from: *next });
            }
            Err(broadcast::error::RecvError::Closed) => return Err(Error::Closed),
        };
        for event in &batch.events {
            let rev = event.revision();
            if rev < *next {
                continue;
            }
            *next = rev + 1;
            if event.kv.key.starts_with(prefix)
                && let Flow::Stop = send(tx, event.clone()).await
            {
                return Ok(());
            }
        }
    }
}

/// Delivers the logged events from `next` up to the newest committed
/// revision, and moves `next` past it.
async fn replay(
    inner: &Arc<Inner>,
    prefix: &str,
    next: &mut Revision,
    tx: &mpsc::Sender<Result<Event>>,
) -> Result<Flow> {
    loop {
        let from = *next;
        let owned = prefix.to_owned();
        let (events, current) = inner
            .snapshot(move |conn, revs| {
                // A compaction may have run since the watch started.
                if from <= revs.compact {
                    return Err(Error::Compacted {
                        compact_revision: revs.compact,
                    });
                }
                let events = schema::events(conn, &owned, from, revs.current, REPLAY_PAGE)?;
                Ok((events, revs.current))
            })
            .await?;
        let full = events.len() == REPLAY_PAGE;
        for event in events {
            *next = event.revision() + 1;
            if let Flow::Stop = send(tx, event).await {
                return Ok(Flow::Stop);
            }
        }
        if !full {
            *next = (*next).max(current + 1);
            return Ok(Flow::Continue);
        }
    }
}
