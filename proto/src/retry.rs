//! Retrying etcd calls that failed because etcd did not answer (a restart, a leader election, a
//! short partition), as opposed to calls etcd answered with "no". A command rides out a few
//! seconds of control-plane loss this way instead of failing a deploy half-way; the caller bounds
//! the retries by a deadline it can keep (the lock's lease, the step's timeout).
use crate::ProtoError;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds, fails with an error that is not transient, or `until` would
/// pass before the next attempt. The last error is returned as is.
pub async fn transient<T, F, Fut>(
    what: &str,
    until: Instant,
    mut attempt: F,
) -> Result<T, ProtoError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, ProtoError>>,
{
    let mut delay = FIRST_DELAY;
    let mut tries = 0u32;
    loop {
        match attempt(tries).await {
            Err(e) if e.is_transient() && Instant::now() + delay < until => {
                if tries == 0 {
                    tracing::info!(what, error = %e.brief(), "etcd did not answer; retrying");
                }
                tokio::time::sleep(delay).await; // backoff between attempts, bounded by `until`
                delay = (delay * 2).min(MAX_DELAY);
                tries += 1;
            }
            Err(e) => return Err(e),
            Ok(v) => {
                if tries > 0 {
                    tracing::info!(what, tries, "etcd answered again");
                }
                return Ok(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> ProtoError {
        ProtoError::etcd(
            "read",
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader")),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_unavailable_until_it_answers() {
        let until = Instant::now() + Duration::from_secs(10);
        let got = transient("read", until, |n| async move {
            if n < 3 {
                Err(unavailable())
            } else {
                Ok(n)
            }
        })
        .await;
        assert_eq!(got.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let until = Instant::now() + Duration::from_secs(2);
        let got: Result<(), _> = transient("read", until, |_| async { Err(unavailable()) }).await;
        assert!(got.unwrap_err().is_transient());
        assert!(Instant::now() <= until);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_of_no_is_not_retried() {
        let until = Instant::now() + Duration::from_secs(10);
        let mut calls = 0;
        let got: Result<(), _> = transient("write", until, |_| {
            calls += 1;
            async {
                Err(ProtoError::etcd(
                    "write",
                    etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no")),
                ))
            }
        })
        .await;
        assert!(got.is_err());
        assert_eq!(calls, 1);
    }
}
