//! Waiting for a condition with a deadline: the only way tests synchronise with processes.
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Polls `check` every 50 ms until it returns `Some`, or panics naming `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(what, deadline, Duration::from_millis(50), check).await
}

/// [`wait_for`] with a chosen polling period (benchmarks poll every millisecond).
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    period: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(period).await; // poll again; the deadline is asserted above
    }
}
