//! Fault knobs for canary tests and demos, set per release through its environment: a fraction
//! of requests answered 500 (`DEMO_ERROR_RATE`, e.g. `0.05`) and added latency
//! (`DEMO_LATENCY_MS`, with `DEMO_LATENCY_JITTER_PCT` of random spread either way). They apply to
//! every route but the health check: a canary that errs must still look healthy to the agent,
//! as a real one does, so only the traffic can tell.
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// The probability that a request is answered 500, in [0, 1].
    pub error_rate: f64,
    pub latency: Duration,
    /// The latency varies uniformly within ± this percentage.
    pub jitter_pct: u32,
}

impl Faults {
    pub fn is_none(&self) -> bool {
        self.error_rate == 0.0 && self.latency.is_zero()
    }

    /// Parses the three variables (`var` reads one, `None` when unset).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Faults, String> {
        let error_rate = match var("DEMO_ERROR_RATE") {
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    return Err(format!(
                        "DEMO_ERROR_RATE={v:?} is not a fraction between 0 and 1"
                    ))
                }
            },
            None => 0.0,
        };
        let number = |name: &str| -> Result<u64, String> {
            var(name)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}={v:?} is not a whole number"))
                })
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let jitter_pct = number("DEMO_LATENCY_JITTER_PCT")?;
        if jitter_pct > 100 {
            return Err(format!(
                "DEMO_LATENCY_JITTER_PCT={jitter_pct} is more than 100"
            ));
        }
        Ok(Faults {
            error_rate,
            latency: Duration::from_millis(number("DEMO_LATENCY_MS")?),
            jitter_pct: jitter_pct as u32,
        })
    }

    /// The delay for one request, given a uniform random number in [0, 1).
    fn delay(&self, uniform: f64) -> Duration {
        let spread = f64::from(self.jitter_pct) / 100.0;
        self.latency.mul_f64(1.0 + spread * (2.0 * uniform - 1.0))
    }
}

/// A uniform random number in [0, 1): splitmix64 over a shared counter seeded from the clock and
/// the pid (no dependency, good enough for fault injection).
fn uniform() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = || {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    };
    let _ = STATE.compare_exchange(0, seed(), Ordering::Relaxed, Ordering::Relaxed);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The middleware: delays, then fails or passes the request on.
pub async fn inject(faults: Faults, request: Request, next: Next) -> Response {
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.delay(uniform())).await;
    }
    if faults.error_rate > 0.0 && uniform() < faults.error_rate {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose (DEMO_ERROR_RATE)\n",
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Faults, String> {
        Faults::from_vars(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn parses_the_knobs_and_names_a_bad_one() {
        let f = parse(&[
            ("DEMO_ERROR_RATE", "0.05"),
            ("DEMO_LATENCY_MS", "40"),
            ("DEMO_LATENCY_JITTER_PCT", "20"),
        ])
        .unwrap();
        assert_eq!(f.error_rate, 0.05);
        assert_eq!(f.delay(0.0), Duration::from_millis(32));
        assert_eq!(f.delay(0.5), Duration::from_millis(40));
        assert!(parse(&[]).unwrap().is_none());
        assert!(parse(&[("DEMO_ERROR_RATE", "5%")])
            .unwrap_err()
            .contains("DEMO_ERROR_RATE"));
        assert!(parse(&[("DEMO_ERROR_RATE", "1.5")]).is_err());
        assert!(parse(&[("DEMO_LATENCY_JITTER_PCT", "150")]).is_err());
    }

    #[test]
    fn the_error_fraction_is_what_was_asked() {
        let n = 200_000;
        let hits = (0..n).filter(|_| uniform() < 0.05).count();
        let share = hits as f64 / n as f64;
        assert!((0.045..0.055).contains(&share), "{share}");
    }
}
