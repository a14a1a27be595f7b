//! The canary's judge: canary against stable over the same window, from the LBs' request counts.
//!
//! Each look asks three questions, and each answer is **pass**, **fail** or **insufficient data**:
//! - *requests*: has each color answered `min_requests` in this step?
//! - *error rate*: is the canary's error rate more than `max_error_rate_increase` points above
//!   the stable color's?
//! - *p99 latency*: are more than 1 % of the canary's answers slower than `max_p99_ratio` × the
//!   stable color's p99 (and at least `p99_margin_ms` above it)?
//!
//! The test is sequential and anytime-valid: each rate gets a Chernoff (binomial KL) confidence
//! bound, and the false-abort budget α (`false_abort_rate`) is spent over the looks as
//! α/(k(k+1)) for look k, which sums to α however many looks a canary takes. A check fails only
//! when the bound says so (a canary as good as the stable color is aborted with probability at
//! most α over the whole canary), passes only with enough requests and the observed value within
//! the threshold, and is insufficient data otherwise: a worrying number that is not yet
//! significant waits for more requests, it neither passes nor aborts.
use super::section::CanarySection;
use proto::requests::ColorCounts;
use serde::Serialize;

/// The counts of one window: the same interval for both colors, summed over every LB.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub canary: ColorCounts,
    pub stable: ColorCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    InsufficientData,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::InsufficientData => "insufficient data",
        }
    }
}

/// One criterion's answer at one look, with the numbers behind it (recorded in history).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub criterion: &'static str,
    pub verdict: Verdict,
    /// One line for operators: the numbers and the threshold.
    pub detail: String,
    pub numbers: serde_json::Value,
}

/// The share of the false-abort budget spent on look `look` (1, 2, …): α/(k(k+1)).
pub fn alpha_at(alpha: f64, look: u64) -> f64 {
    let k = look.max(1) as f64;
    alpha / (k * (k + 1.0))
}

/// Bernoulli KL divergence kl(p ‖ q).
fn kl(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| if a <= 0.0 { 0.0 } else { a * (a / b).ln() };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

/// Chernoff bounds on a rate from `hits` of `n`: the rates q with n·kl(p̂ ‖ q) ≤ ln(1/δ), where δ
/// is the chance the true rate lies outside. (0, 1) without observations.
pub fn rate_bounds(hits: u64, n: u64, delta: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let p = hits as f64 / n as f64;
    let budget = (1.0 / delta).ln() / n as f64;
    let inside = |q: f64| kl(p, q) <= budget;
    let bisect = |mut inner: f64, mut outer: f64| {
        for _ in 0..60 {
            let mid = (inner + outer) / 2.0;
            if inside(mid) {
                inner = mid;
            } else {
                outer = mid;
            }
        }
        inner
    };
    let lower = if p == 0.0 || inside(0.0) {
        0.0
    } else {
        bisect(p, 0.0)
    };
    let upper = if p == 1.0 || inside(1.0) {
        1.0
    } else {
        bisect(p, 1.0)
    };
    (lower, upper)
}

fn rate(hits: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        hits as f64 / n as f64
    }
}

/// Every criterion's answer for `window` at look `look` (counted over the whole canary).
pub fn judge(window: &Window, criteria: &CanarySection, look: u64) -> Vec<Check> {
    let alpha = alpha_at(criteria.false_abort_rate, look);
    vec![
        requests(window, criteria),
        error_rate(window, criteria, alpha),
        p99_latency(window, criteria, alpha),
    ]
}

/// The canary's verdict from its checks: any fail fails, all pass passes, else insufficient.
pub fn overall(checks: &[Check]) -> Verdict {
    if checks.iter().any(|c| c.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if checks.iter().all(|c| c.verdict == Verdict::Pass) {
        Verdict::Pass
    } else {
        Verdict::InsufficientData
    }
}

fn enough(window: &Window, criteria: &CanarySection) -> bool {
    window.canary.requests >= criteria.min_requests
        && window.stable.requests >= criteria.min_requests
}

fn requests(window: &Window, criteria: &CanarySection) -> Check {
    let (c, s) = (window.canary.requests, window.stable.requests);
    Check {
        criterion: "requests",
        verdict: if enough(window, criteria) {
            Verdict::Pass
        } else {
            Verdict::InsufficientData
        },
        detail: format!(
            "canary {c}, stable {s} requests (at least {} each)",
            criteria.min_requests
        ),
        numbers: serde_json::json!({ "canary": c, "stable": s, "min": criteria.min_requests }),
    }
}

fn error_rate(window: &Window, criteria: &CanarySection, alpha: f64) -> Check {
    let (c, s) = (&window.canary, &window.stable);
    let limit = criteria.max_error_rate_increase / 100.0;
    // Two one-sided bounds, α/2 each: the canary's rate at least `low`, the stable's at most `high`.
    let (low, _) = rate_bounds(c.errors, c.requests, alpha / 2.0);
    let (_, high) = rate_bounds(s.errors, s.requests, alpha / 2.0);
    let (canary_rate, stable_rate) = (rate(c.errors, c.requests), rate(s.errors, s.requests));
    let certain_increase = low - high;
    let verdict = if c.requests > 0 && certain_increase > limit {
        Verdict::Fail
    } else if enough(window, criteria) && canary_rate - stable_rate <= limit {
        Verdict::Pass
    } else {
        Verdict::InsufficientData
    };
    Check {
        criterion: "error rate",
        verdict,
        detail: format!(
            "canary {}/{} = {:.2} %, stable {}/{} = {:.2} %; increase at least {:.2} points \
             (bound at α {alpha:.1e}), limit {:.2}",
            c.errors,
            c.requests,
            canary_rate * 100.0,
            s.errors,
            s.requests,
            stable_rate * 100.0,
            (certain_increase * 100.0).max(0.0),
            criteria.max_error_rate_increase
        ),
        numbers: serde_json::json!({
            "canary": { "requests": c.requests, "errors": c.errors, "rate": canary_rate },
            "stable": { "requests": s.requests, "errors": s.errors, "rate": stable_rate },
            "increase_lower_bound": certain_increase,
            "limit": limit,
            "alpha": alpha,
        }),
    }
}

fn p99_latency(window: &Window, criteria: &CanarySection, alpha: f64) -> Check {
    let (c, s) = (&window.canary, &window.stable);
    let stable_p99 = s.quantile_ms(0.99);
    let canary_p99 = c.quantile_ms(0.99);
    let Some(stable_p99) = stable_p99 else {
        return Check {
            criterion: "p99 latency",
            verdict: Verdict::InsufficientData,
            detail: "no stable answers to compare with".into(),
            numbers: serde_json::json!({ "limit_ratio": criteria.max_p99_ratio }),
        };
    };
    let threshold = (stable_p99 * criteria.max_p99_ratio).max(stable_p99 + criteria.p99_margin_ms);
    let answers: u64 = c.latency.values().sum();
    let slow = c.slower_than(threshold);
    // The canary's p99 is above the threshold exactly when more than 1 % of its answers are.
    let (low, _) = rate_bounds(slow, answers, alpha);
    let verdict = if answers > 0 && low > 0.01 {
        Verdict::Fail
    } else if enough(window, criteria) && canary_p99.is_some_and(|p| p <= threshold) {
        Verdict::Pass
    } else {
        Verdict::InsufficientData
    };
    Check {
        criterion: "p99 latency",
        verdict,
        detail: format!(
            "canary p99 {} ms, stable p99 {stable_p99:.1} ms, limit {threshold:.1} ms ({}×, at \
             least +{} ms); \
             {slow}/{answers} canary answers slower, at least {:.2} % (bound at α {alpha:.1e})",
            canary_p99.map_or("-".into(), |p| format!("{p:.1}")),
            criteria.max_p99_ratio,
            criteria.p99_margin_ms,
            low * 100.0
        ),
        numbers: serde_json::json!({
            "canary_p99_ms": canary_p99,
            "stable_p99_ms": stable_p99,
            "threshold_ms": threshold,
            "slower": slow,
            "answers": answers,
            "slow_share_lower_bound": low,
            "alpha": alpha,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64, ms: f64) -> ColorCounts {
        let mut c = ColorCounts::default();
        for i in 0..requests {
            c.add(ms, i < errors);
        }
        c
    }

    fn criteria() -> CanarySection {
        toml::from_str("min_requests = 100\nmax_error_rate_increase = 0.5").unwrap()
    }

    #[test]
    fn the_budget_sums_to_alpha_over_any_number_of_looks() {
        let spent: f64 = (1..100_000).map(|k| alpha_at(0.01, k)).sum();
        assert!(spent < 0.01 && spent > 0.0099, "{spent}");
    }

    #[test]
    fn bounds_hold_the_observed_rate_and_tighten_with_data() {
        let (lo, hi) = rate_bounds(5, 100, 0.01);
        assert!(lo < 0.05 && 0.05 < hi, "{lo} {hi}");
        let (lo2, hi2) = rate_bounds(50, 1000, 0.01);
        assert!(lo2 > lo && hi2 < hi);
        assert_eq!(rate_bounds(0, 0, 0.01), (0.0, 1.0));
        let (zero_lo, zero_hi) = rate_bounds(0, 1000, 0.01);
        assert_eq!(zero_lo, 0.0);
        // ln(100)/1000 ≈ 0.0046: the rule of three's cousin.
        assert!((0.004..0.005).contains(&zero_hi), "{zero_hi}");
    }

    #[test]
    fn a_canary_with_five_percent_errors_fails_once_it_is_significant() {
        let few = Window {
            canary: counts(40, 2, 10.0),
            stable: counts(4000, 0, 10.0),
        };
        let checks = judge(&few, &criteria(), 10);
        assert_eq!(
            checks[1].verdict,
            Verdict::InsufficientData,
            "{:?}",
            checks[1]
        );
        let many = Window {
            canary: counts(300, 15, 10.0),
            stable: counts(30000, 0, 10.0),
        };
        let checks = judge(&many, &criteria(), 60);
        assert_eq!(checks[1].verdict, Verdict::Fail, "{}", checks[1].detail);
        assert_eq!(overall(&checks), Verdict::Fail);
    }

    #[test]
    fn a_healthy_canary_passes_only_with_enough_requests() {
        let thin = Window {
            canary: counts(20, 0, 10.0),
            stable: counts(2000, 0, 10.0),
        };
        assert_eq!(
            overall(&judge(&thin, &criteria(), 5)),
            Verdict::InsufficientData
        );
        let enough = Window {
            canary: counts(200, 0, 11.0),
            stable: counts(20000, 1, 10.0),
        };
        let checks = judge(&enough, &criteria(), 30);
        assert_eq!(overall(&checks), Verdict::Pass, "{checks:#?}");
    }

    #[test]
    fn no_traffic_is_insufficient_data_never_pass_or_fail() {
        let empty = Window::default();
        for look in [1, 100, 10_000] {
            let checks = judge(&empty, &criteria(), look);
            assert!(
                checks
                    .iter()
                    .all(|c| c.verdict == Verdict::InsufficientData),
                "{checks:#?}"
            );
        }
    }

    #[test]
    fn a_slow_canary_fails_on_latency() {
        let mut canary = counts(300, 0, 10.0);
        canary.merge(&counts(30, 0, 200.0));
        let window = Window {
            canary,
            stable: counts(30000, 0, 10.0),
        };
        let checks = judge(&window, &criteria(), 20);
        assert_eq!(checks[2].verdict, Verdict::Fail, "{}", checks[2].detail);
        assert_eq!(checks[1].verdict, Verdict::Pass);
    }

    #[test]
    fn a_stable_color_already_failing_is_the_baseline_not_a_reason() {
        let window = Window {
            canary: counts(500, 50, 10.0),
            stable: counts(50000, 5000, 10.0),
        };
        let checks = judge(&window, &criteria(), 10);
        assert_eq!(checks[1].verdict, Verdict::Pass, "{}", checks[1].detail);
    }
}
