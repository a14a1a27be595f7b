//! Spec `[canary]`: the steps of a canary, how long each lasts at least and at most, and the
//! criteria its analysis judges the canary color against the stable one by.
use proto::records::Sticky;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySection {
    /// The canary's share of requests at each step, in percent, increasing. The switch to the
    /// canary color follows the last step (a step of 100 is the switch itself).
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// The least time a step lasts: every check must pass, and have passed for this long.
    #[serde(with = "humantime_serde", default = "default_step_time")]
    pub step_time: Duration,
    /// The most time a step waits for enough data; then the canary fails with "insufficient data".
    #[serde(with = "humantime_serde", default = "default_step_deadline")]
    pub step_deadline: Duration,
    /// How often the analysis looks at the LBs' counts.
    #[serde(with = "humantime_serde", default = "default_interval")]
    pub interval: Duration,
    /// The largest error-rate increase over the stable color tolerated, in percentage points.
    #[serde(default = "default_max_error_rate_increase")]
    pub max_error_rate_increase: f64,
    /// The largest ratio of the canary's p99 latency to the stable color's.
    #[serde(default = "default_max_p99_ratio")]
    pub max_p99_ratio: f64,
    /// A p99 increase of at most this many milliseconds is never a regression, whatever the
    /// ratio: nginx times answers in whole milliseconds, and a 2 ms service at 3 ms is noise.
    #[serde(default = "default_p99_margin_ms")]
    pub p99_margin_ms: f64,
    /// Requests each color must have answered in a step before any check can pass.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The probability, over a whole canary, that a canary as good as the stable color is
    /// aborted by chance on a given check (split evenly over the steps; every look is covered).
    #[serde(default = "default_false_abort_rate")]
    pub false_abort_rate: f64,
    /// What keeps a user on one color: "cookie" (set by the LB when absent), "address", or
    /// "header:NAME".
    #[serde(default = "default_sticky")]
    pub sticky: String,
}

fn default_steps() -> Vec<f64> {
    vec![1.0, 5.0, 25.0, 50.0]
}
fn default_step_time() -> Duration {
    Duration::from_secs(60)
}
fn default_step_deadline() -> Duration {
    Duration::from_secs(600)
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_error_rate_increase() -> f64 {
    1.0
}
fn default_max_p99_ratio() -> f64 {
    1.5
}
fn default_p99_margin_ms() -> f64 {
    5.0
}
fn default_min_requests() -> u64 {
    100
}
fn default_false_abort_rate() -> f64 {
    0.01
}
fn default_sticky() -> String {
    "cookie".into()
}

impl Default for CanarySection {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl CanarySection {
    /// The steps below 100 % as weights in hundredths of a percent.
    pub fn weights(&self) -> Vec<u32> {
        self.steps
            .iter()
            .map(|p| (p * 100.0).round() as u32)
            .filter(|w| *w < proto::records::FULL_WEIGHT)
            .collect()
    }

    pub fn sticky(&self) -> Result<Sticky, String> {
        let sticky = match self.sticky.as_str() {
            "cookie" => Sticky::Cookie,
            "address" => Sticky::Address,
            other => match other.strip_prefix("header:") {
                Some(name) => Sticky::Header(name.to_string()),
                None => {
                    return Err(format!(
                        "canary.sticky: {other:?} is not \"cookie\", \"address\" or \"header:NAME\""
                    ))
                }
            },
        };
        sticky.validate().map_err(|e| format!("canary.{e}"))?;
        Ok(sticky)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("canary.steps: at least one step".into());
        }
        let mut last = 0.0;
        for (i, step) in self.steps.iter().enumerate() {
            if !(*step >= 0.01 && *step <= 100.0) || *step <= last {
                return Err(format!(
                    "canary.steps[{i}]: {step} must be above the step before it, from 0.01 to 100"
                ));
            }
            last = *step;
        }
        if self.step_deadline < self.step_time {
            return Err("canary.step_deadline: must be at least step_time".into());
        }
        if self.interval.is_zero() {
            return Err("canary.interval: must be above zero".into());
        }
        if !(0.0..=100.0).contains(&self.max_error_rate_increase) {
            return Err("canary.max_error_rate_increase: percentage points, 0 to 100".into());
        }
        if self.max_p99_ratio.is_nan() || self.max_p99_ratio < 1.0 {
            return Err("canary.max_p99_ratio: at least 1".into());
        }
        if self.p99_margin_ms.is_nan() || self.p99_margin_ms < 0.0 {
            return Err("canary.p99_margin_ms: at least 0".into());
        }
        if !(self.false_abort_rate > 0.0 && self.false_abort_rate < 0.5) {
            return Err("canary.false_abort_rate: above 0 and below 0.5".into());
        }
        self.sticky().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_weights() {
        let c = CanarySection::default();
        c.validate().unwrap();
        assert_eq!(c.weights(), vec![100, 500, 2500, 5000]);
        let with_full: CanarySection = toml::from_str("steps = [0.5, 10, 100]").unwrap();
        assert_eq!(with_full.weights(), vec![50, 1000], "100 is the switch");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("steps = [5, 1]", "canary.steps[1]"),
            ("steps = []", "canary.steps"),
            ("step_time = \"11m\"", "canary.step_deadline"),
            ("max_p99_ratio = 0.5", "canary.max_p99_ratio"),
            ("sticky = \"session\"", "canary.sticky"),
            ("sticky = \"header:x y\"", "canary.sticky header"),
            ("false_abort_rate = 0", "canary.false_abort_rate"),
        ] {
            let section: CanarySection = toml::from_str(text).unwrap();
            let err = section.validate().unwrap_err();
            assert!(err.contains(field), "{text}: {err}");
        }
    }
}
