//! How a map sync loop (services, network policy) shows its progress: a
//! watch channel of [`Progress`] that the loop updates after each batch,
//! and a [`SyncStatus`] handle that waits on it.

use tokio::sync::watch;

/// A sync loop's progress, with `R` the report of one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress<R> {
    /// Whether the first full sync is done: everything the loop watches
    /// was listed and the maps hold it.
    pub synced: bool,
    /// Batches applied so far.
    pub batches: u64,
    /// The last batch.
    pub last: Option<R>,
    /// Whether the last write failed (it is being retried).
    pub failing: bool,
}

impl<R> Default for Progress<R> {
    fn default() -> Self {
        Self {
            synced: false,
            batches: 0,
            last: None,
            failing: false,
        }
    }
}

/// A handle on a loop's progress; cheap to clone.
#[derive(Clone, Debug)]
pub struct SyncStatus<R> {
    rx: watch::Receiver<Progress<R>>,
}

/// The loop ended before its first full sync.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the sync loop ended before its first full sync")]
pub struct SyncEnded;

impl<R: Copy> SyncStatus<R> {
    /// A handle on the progress `rx` receives.
    pub(crate) fn new(rx: watch::Receiver<Progress<R>>) -> Self {
        Self { rx }
    }

    /// Waits for the first full sync (immediately if it is done).
    pub async fn wait_synced(&mut self) -> Result<(), SyncEnded> {
        self.rx
            .wait_for(|p| p.synced)
            .await
            .map(|_| ())
            .map_err(|_| SyncEnded)
    }

    /// Whether the first full sync is done.
    pub fn is_synced(&self) -> bool {
        self.rx.borrow().synced
    }

    /// The latest progress.
    pub fn progress(&self) -> Progress<R> {
        *self.rx.borrow()
    }

    /// Waits until the progress changes.
    pub async fn changed(&mut self) -> Result<Progress<R>, SyncEnded> {
        self.rx.changed().await.map_err(|_| SyncEnded)?;
        Ok(*self.rx.borrow_and_update())
    }
}
