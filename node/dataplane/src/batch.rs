//! The loop both map syncs (services, network policy) run. Watchers send
//! messages on a channel; the first message of a burst starts a batch,
//! which waits `debounce` for the rest of the burst and runs once every
//! watcher has finished a full list. A batch whose writes fail is retried
//! after a backoff that doubles up to a ceiling. Each outcome lands in the
//! loop's [`Progress`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::progress::Progress;
use crate::{Error, Result};

/// What a sync gives the loop: how to take a message in, when a batch is
/// due, and the batch itself.
pub(crate) trait Batcher {
    type Msg: Send;
    type Report: Copy + std::fmt::Debug + Send + Sync;

    /// Takes one watcher message into the pending state.
    fn absorb(&mut self, msg: Self::Msg);

    /// Whether every watcher has finished its first full list.
    fn listed(&self) -> bool;

    /// Whether something waits to be written.
    fn pending(&self) -> bool;

    /// Computes and writes one batch. The outer error ends the loop; the
    /// inner one is a failed write, retried after the backoff.
    fn batch(&mut self) -> impl Future<Output = Result<Result<Self::Report>>> + Send;
}

/// The timing of a sync loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// How long a batch collects watch events after its first one.
    pub debounce: Duration,
    /// The first wait after a failed write; it doubles up to `max_retry`.
    pub retry: Duration,
    /// The longest wait between retries.
    pub max_retry: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(5),
            retry: Duration::from_millis(100),
            max_retry: Duration::from_secs(10),
        }
    }
}

/// The loop's timing, its retry state and its progress channel.
pub(crate) struct BatchLoop<R> {
    /// What the loop writes, for the logs ("service maps").
    what: &'static str,
    config: BatchConfig,
    progress: watch::Sender<Progress<R>>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl<R: Copy + std::fmt::Debug + Send + Sync> BatchLoop<R> {
    pub fn new(
        what: &'static str,
        config: BatchConfig,
        progress: watch::Sender<Progress<R>>,
    ) -> Self {
        Self {
            what,
            config,
            progress,
            retry_at: None,
            backoff: config.retry,
        }
    }

    /// Runs `batcher` on the messages of `rx` until `shutdown` completes or
    /// every sender is gone.
    pub async fn run<B: Batcher<Report = R> + Send>(
        &mut self,
        batcher: &mut B,
        mut rx: mpsc::UnboundedReceiver<B::Msg>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                msg = rx.recv() => match msg {
                    Some(msg) => batcher.absorb(msg),
                    // The watchers are gone: only an abort does that.
                    None => return Ok(()),
                },
                () = sleep_until(retry_at), if retry_at.is_some() => {}
            }
            // Collect the rest of the burst.
            let deadline = Instant::now() + self.config.debounce;
            loop {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    msg = rx.recv() => match msg {
                        Some(msg) => batcher.absorb(msg),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            if !batcher.listed() {
                continue;
            }
            let retrying = self.retry_at.is_some_and(|at| at <= Instant::now());
            if batcher.pending() || retrying {
                let outcome = batcher.batch().await?;
                self.record(outcome);
            }
        }
    }

    /// Publishes a batch's outcome; a failure schedules the retry.
    fn record(&mut self, outcome: Result<R>) {
        let what = self.what;
        match outcome {
            Ok(report) => {
                self.retry_at = None;
                self.backoff = self.config.retry;
                tracing::debug!(?report, "{what} synced");
                self.progress.send_modify(|p| {
                    if !p.synced {
                        tracing::info!(?report, "{what}: first full sync done");
                    }
                    p.synced = true;
                    p.batches += 1;
                    p.last = Some(report);
                    p.failing = false;
                });
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), retry_in = ?self.backoff, "writing the {what}");
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(self.config.max_retry);
                self.progress.send_modify(|p| p.failing = true);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs map work on the blocking pool: a full sync is up to hundreds of
/// thousands of syscalls, which must not stall the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Io {
        what,
        source: std::io::Error::other(e),
    })
}

/// Aborts a spawned task when dropped, so the watchers end with the loop.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An error with its causes, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
