//! Leader election on a coordination.k8s.io/v1 Lease, as upstream's
//! client-go leaderelection does it.
//!
//! A candidate polls the Lease every `retry`. It takes the Lease when it is
//! free, or when the holder has not renewed it for `lease_duration` as
//! measured on the candidate's own clock from the last change it observed
//! (clock skew between machines never matters). The leader renews every
//! `retry`; if it cannot renew for `renew_deadline` it has lost, and
//! [`LeaderElector::lead`] returns [`Error::Lost`] so the process can exit
//! before a standby takes over. With the defaults a standby leads within
//! 12 s + 2 s of the leader's death.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

/// Why leading stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be renewed within the renew deadline.
    #[error("lost the lease {namespace}/{name}: not renewed within {deadline:?}")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The renew deadline that passed.
        deadline: Duration,
    },
}

/// One candidate for one Lease.
#[derive(Debug, Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    /// How long a Lease that is not renewed stays valid.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// How often candidates poll and the leader renews.
    pub retry: Duration,
}

impl LeaderElector {
    /// A candidate named `identity` for the Lease `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(12),
            renew_deadline: Duration::from_secs(8),
            retry: Duration::from_secs(2),
        }
    }

    /// Wait to become leader, then run `work` while renewing the Lease.
    /// Returns `work`'s output when it finishes (the Lease is then
    /// released), or [`Error::Lost`] if leadership is lost first.
    pub async fn lead<F: Future>(&self, work: F) -> Result<F::Output, Error> {
        self.acquire().await;
        tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
        let out = tokio::select! {
            out = work => out,
            e = self.renew_until_lost() => return Err(e),
        };
        self.release().await;
        Ok(out)
    }

    async fn acquire(&self) {
        // The last (resourceVersion, when we saw it change).
        let mut observed: Option<(String, Instant)> = None;
        loop {
            match self.try_acquire(&mut observed).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::debug!(lease = %self.name, error = %e, "lease poll failed"),
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    /// One poll: take the Lease if it is free or expired.
    async fn try_acquire(
        &self,
        observed: &mut Option<(String, Instant)>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now.clone(), now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let changed_at = match observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                let at = Instant::now();
                *observed = Some((rv, at));
                at
            }
        };
        let transitions = spec.lease_transitions.unwrap_or(0);
        let (acquired, transitions) = if holder == self.identity {
            (
                spec.acquire_time.clone().unwrap_or_else(|| now.clone()),
                transitions,
            )
        } else {
            let free = holder.is_empty();
            if !free && changed_at.elapsed() < self.lease_duration {
                return Ok(false);
            }
            (now.clone(), transitions + 1)
        };
        lease.spec = Some(self.spec(acquired, now, transitions));
        // The update carries the resourceVersion we read: if another
        // candidate got there first we get 409 and keep waiting.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquired: MicroTime, renewed: MicroTime, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired),
            renew_time: Some(renewed),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    async fn renew_until_lost(&self) -> Error {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.retry).await;
            match self.renew().await {
                Ok(()) => last_ok = Instant::now(),
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease renewal failed"),
            }
            if last_ok.elapsed() >= self.renew_deadline {
                return Error::Lost {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    deadline: self.renew_deadline,
                };
            }
        }
    }

    async fn renew(&self) -> Result<(), String> {
        let mut lease = self.api.get(&self.name).await.map_err(|e| e.to_string())?;
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Err(format!("held by {:?}", spec.holder_identity));
        }
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Give the Lease up so a standby need not wait for it to expire.
    async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        lease.spec = Some(spec);
        let _ = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kestrel_apiserver::testing::TestServer;
    use kestrel_testkit::eventually;

    use super::*;

    /// Long enough that a slow store commit on a loaded machine (each
    /// renewal is a committed write) does not cost the leader its lease.
    const LEASE: Duration = Duration::from_secs(6);
    const RETRY: Duration = Duration::from_millis(300);

    fn fast(e: LeaderElector) -> LeaderElector {
        LeaderElector {
            lease_duration: LEASE,
            renew_deadline: Duration::from_secs(4),
            retry: RETRY,
            ..e
        }
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_standby_takes_over_after_death() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = TestServer::start_in(dir.path(), |_| {}).await;
        let client = s.client().await;
        let leading = Arc::new(AtomicUsize::new(0));
        let max_leading = Arc::new(AtomicUsize::new(0));
        let spawn = |id: &str| {
            let e = fast(LeaderElector::new(
                client.clone(),
                "kube-system",
                "test-lock",
                id,
            ));
            let (leading, max_leading) = (leading.clone(), max_leading.clone());
            let id = id.to_owned();
            tokio::spawn(async move {
                e.lead(async move {
                    let n = leading.fetch_add(1, Ordering::SeqCst) + 1;
                    max_leading.fetch_max(n, Ordering::SeqCst);
                    // Lead until aborted; the guard counts us out.
                    struct Out(Arc<AtomicUsize>);
                    impl Drop for Out {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _out = Out(leading);
                    std::future::pending::<()>().await;
                    id
                })
                .await
            })
        };
        let a = spawn("a");
        eventually(Duration::from_secs(10), "a leads", || async {
            (leading.load(Ordering::SeqCst) == 1).then_some(())
        })
        .await;
        let b = spawn("b");
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
        let holder = || async {
            leases
                .get("test-lock")
                .await
                .ok()
                .and_then(|l| l.spec?.holder_identity)
        };
        // b stays a standby while a renews: several lease durations.
        let until = Instant::now() + 2 * LEASE;
        while Instant::now() < until {
            assert_eq!(holder().await.as_deref(), Some("a"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // a dies without releasing (its task is aborted mid-lead).
        a.abort();
        let died = Instant::now();
        eventually(4 * LEASE, "b takes over", || async {
            (holder().await.as_deref() == Some("b")).then_some(())
        })
        .await;
        let took = died.elapsed();
        assert!(
            took >= LEASE - 2 * RETRY,
            "b must wait out a's lease, took {took:?}"
        );
        assert_eq!(max_leading.load(Ordering::SeqCst), 1, "never two leaders");
        let l = leases.get("test-lock").await.expect("lease");
        assert_eq!(l.spec.and_then(|s| s.lease_transitions), Some(1));
        b.abort();
        s.stop().await;
    }
}
