//! Request counts per color as the LBs see them: requests, errors and a latency histogram with
//! fixed buckets. The sidecar keeps them as running totals since it started (bounded: two colors ×
//! [`BUCKETS`] numbers, whatever the traffic); a reader takes a window by subtracting an earlier
//! total from a later one, so every LB's window is exactly the reader's, without clocks agreeing.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Latency buckets: bucket 0 holds answers of at most 1 ms, bucket `i` those up to
/// `2^(i/4)` ms (each bound 19 % above the last), the last everything slower (about 65 s and up).
/// A quantile read from them is within 19 % of the true value.
pub const BUCKETS: u16 = 65;

/// The bucket of an answer that took `ms` milliseconds.
pub fn bucket_of(ms: f64) -> u16 {
    if ms.is_nan() || ms <= 1.0 {
        return 0;
    }
    let index = (ms.log2() * 4.0).ceil();
    (index as u16).min(BUCKETS - 1)
}

/// The upper bound of `bucket` in milliseconds (the last bucket's is its lower bound).
pub fn bucket_upper_ms(bucket: u16) -> f64 {
    2f64.powf(f64::from(bucket.min(BUCKETS - 1)) / 4.0)
}

/// One color's totals. `latency` maps a bucket to its count; empty buckets are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColorCounts {
    /// Answers from an upstream of this color: every attempt, retries included.
    pub requests: u64,
    /// Attempts answered 5xx, or not answered at all (nginx records those as 502 or 504).
    pub errors: u64,
    #[serde(default)]
    pub latency: BTreeMap<u16, u64>,
}

impl ColorCounts {
    pub fn add(&mut self, ms: f64, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        *self.latency.entry(bucket_of(ms)).or_default() += 1;
    }

    /// Adds another window or LB to this one.
    pub fn merge(&mut self, other: &ColorCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (bucket, n) in &other.latency {
            *self.latency.entry(*bucket).or_default() += n;
        }
    }

    /// What happened after `earlier` (a total taken before this one from the same counter).
    /// A counter that went backwards was restarted: everything it holds is new.
    pub fn since(&self, earlier: &ColorCounts) -> ColorCounts {
        let restarted = self.requests < earlier.requests
            || self.errors < earlier.errors
            || self
                .latency
                .iter()
                .any(|(b, n)| *n < earlier.latency.get(b).copied().unwrap_or(0))
            || earlier
                .latency
                .keys()
                .any(|b| !self.latency.contains_key(b));
        if restarted {
            return self.clone();
        }
        ColorCounts {
            requests: self.requests - earlier.requests,
            errors: self.errors - earlier.errors,
            latency: self
                .latency
                .iter()
                .map(|(b, n)| (*b, n - earlier.latency.get(b).copied().unwrap_or(0)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    /// The `q` quantile (0..1) as its bucket's upper bound in ms; None without answers.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.values().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, n) in &self.latency {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_ms(*bucket));
            }
        }
        self.latency.keys().last().map(|b| bucket_upper_ms(*b))
    }

    /// How many answers certainly took longer than `ms`: those in buckets entirely above it.
    pub fn slower_than(&self, ms: f64) -> u64 {
        self.latency
            .iter()
            .filter(|(bucket, _)| **bucket > 0 && bucket_upper_ms(**bucket - 1) >= ms)
            .map(|(_, n)| n)
            .sum()
    }

    /// The buckets' invariants, for a record read from etcd.
    pub fn validate(&self) -> Result<(), String> {
        if self.errors > self.requests {
            return Err(format!(
                "errors {} are more than requests {}",
                self.errors, self.requests
            ));
        }
        if let Some(bucket) = self.latency.keys().find(|b| **b >= BUCKETS) {
            return Err(format!("latency bucket {bucket} is not below {BUCKETS}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_a_fourth_power_of_two() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(1.0), 0);
        assert_eq!(bucket_of(1.1), 1);
        assert_eq!(bucket_of(2.0), 4);
        assert_eq!(bucket_of(100.0), 27);
        assert_eq!(bucket_of(1e9), BUCKETS - 1);
        for ms in [1.5, 7.0, 99.0, 250.0, 3000.0] {
            let b = bucket_of(ms);
            assert!(
                bucket_upper_ms(b) >= ms && bucket_upper_ms(b - 1) < ms,
                "{ms}"
            );
            assert!(bucket_upper_ms(b) / ms < 1.19 + 1e-9, "{ms}");
        }
    }

    #[test]
    fn windows_are_differences_and_a_restart_starts_over() {
        let mut earlier = ColorCounts::default();
        (0..10).for_each(|_| earlier.add(5.0, false));
        let mut later = earlier.clone();
        later.add(5.0, true);
        later.add(500.0, false);
        let window = later.since(&earlier);
        assert_eq!((window.requests, window.errors), (2, 1));
        assert_eq!(window.latency.values().sum::<u64>(), 2);
        let mut restarted = ColorCounts::default();
        restarted.add(5.0, false);
        assert_eq!(restarted.since(&later), restarted);
    }

    #[test]
    fn quantiles_and_slow_answers_come_from_the_buckets() {
        let mut c = ColorCounts::default();
        (0..99).for_each(|_| c.add(10.0, false));
        c.add(1000.0, false);
        let p50 = c.quantile_ms(0.5).unwrap();
        assert!((10.0..11.9).contains(&p50), "{p50}");
        let p99 = c.quantile_ms(0.99).unwrap();
        assert!((10.0..11.9).contains(&p99), "{p99}");
        let p100 = c.quantile_ms(1.0).unwrap();
        assert!((1000.0..1190.0).contains(&p100), "{p100}");
        assert_eq!(c.slower_than(100.0), 1);
        assert_eq!(c.slower_than(5.0), 100);
        assert_eq!(ColorCounts::default().quantile_ms(0.99), None);
    }
}
