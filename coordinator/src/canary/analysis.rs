//! The canary's judge: canary against stable over the same window, from the LBs' request counts.
//!
//! Each look asks three questions, and each answer is **pass**, **fail** or **insufficient data**:
//! - *requests*: has each color answered `min_requests` in this step?
//! - *error rate*: is the canary's error rate more than `max_error_rate_increase` points above
//!   the stable color's?
//! - *p99 latency*: are more than 1 % of the canary's answers slower than `max_p99_ratio` × the
//!   stable color's p99 (and at least `p99_margin_ms` above it)?
//!
//! The test is sequential and anytime-valid: each color's rate gets a confidence sequence from a
//! beta-binomial mixture martingale (Robbins' method of mixtures; the prior is Beta(½, 10), most
//! of its mass on the low rates that errors and slow answers have). Whatever the true rate q,
//! the mixture's likelihood ratio against q is a martingale with mean 1, so by Ville's
//! inequality it ever reaches 1/δ with probability at most δ: the rates where it has not are a
//! confidence set valid at every look at once. Looking every second costs nothing, and there
//! is no per-look penalty growing with the canary's length (the Chernoff bounds with the budget
//! spent over looks that this replaces took 1.6× as long to abort a 5 %-error canary at a 1 %
//! step, median over simulated runs). A check fails only when
//! those sets say so, passes only with enough requests and the observed value within the
//! threshold, and is insufficient data otherwise: a worrying number that is not yet significant
//! waits for more requests, it neither passes nor aborts. Each step is its own sequence (its own
//! window) and gets `false_abort_rate` / steps, so a canary as good as the stable color fails a
//! given check by chance with probability at most `false_abort_rate` over the whole canary.
use super::section::CanarySection;
use proto::requests::ColorCounts;
use serde::Serialize;
use std::collections::BTreeMap;

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

/// The false-abort budget of one step's check: `false_abort_rate` split evenly over the steps
/// (each step's window is a fresh sequence of observations).
pub fn step_alpha(criteria: &CanarySection) -> f64 {
    criteria.false_abort_rate / criteria.steps.len().max(1) as f64
}

/// The mixture's prior on the rate, Beta(a, b): mean 1/21, so tight bounds where error rates
/// and slow-answer shares are (any prior keeps the bounds valid; it only moves their width).
const PRIOR: (f64, f64) = (0.5, 10.0);

fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// ln of the mixture likelihood ratio after `hits` of `n` against the rate `q`: the beta-
/// binomial probability of the sequence under the prior, over its probability at rate `q`.
/// For the true rate this is a martingale with mean 1 (at or below 0 at q = hits/n).
pub fn ln_mixture_ratio(hits: u64, n: u64, q: f64) -> f64 {
    let (a, b) = PRIOR;
    // Counts come from the LBs' records: more hits than tries would be a corrupt record, not a
    // reason to panic or to wrap around.
    let hits = hits.min(n);
    let (x, misses) = (hits as f64, (n - hits) as f64);
    let term = |count: f64, probability: f64| {
        if count == 0.0 {
            0.0
        } else {
            count * probability.ln()
        }
    };
    ln_beta(a + x, b + misses) - ln_beta(a, b) - term(x, q) - term(misses, 1.0 - q)
}

/// The confidence sequence for a rate after `hits` of `n`: the rates the mixture has not
/// rejected at level `delta` (the true rate is ever outside with probability at most `delta`,
/// over every look). (0, 1) without observations.
pub fn rate_bounds(hits: u64, n: u64, delta: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let p = hits as f64 / n as f64;
    let threshold = (1.0 / delta).ln();
    // The ratio is convex in q with its minimum (≤ 0) at p: the set is an interval around p.
    let inside = |q: f64| ln_mixture_ratio(hits, n, q) < threshold;
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
    let lower = if hits == 0 { 0.0 } else { bisect(p, 0.0) };
    let upper = if hits == n { 1.0 } else { bisect(p, 1.0) };
    (lower, upper)
}

fn rate(hits: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        hits as f64 / n as f64
    }
}

/// Every criterion's answer for `window`, each failing by chance with probability at most
/// `alpha` over every look at this window.
pub fn judge(window: &Window, criteria: &CanarySection, alpha: f64) -> Vec<Check> {
    vec![
        requests(window, criteria),
        error_rate(window, criteria, alpha),
        p99_latency(window, criteria, alpha),
    ]
}

/// One LB's canary error rate against the others' in the same window: an LB whose rate stands far
/// from every other LB's is suspect (its nginx broken, or its numbers forged), and a verdict
/// must not rest on it alone. Needs at least three LBs with `min_requests` canary requests each
/// (with two, neither can be told from the other); returns each suspect LB with why.
pub fn suspect_lbs(
    per_lb: &BTreeMap<String, ColorCounts>,
    min_requests: u64,
) -> Vec<(String, String)> {
    let rate = |c: &ColorCounts| c.errors as f64 / c.requests as f64;
    let judged: Vec<(&String, f64)> = per_lb
        .iter()
        .filter(|(_, c)| c.requests >= min_requests.max(1))
        .map(|(lb, c)| (lb, rate(c)))
        .collect();
    if judged.len() < 3 {
        return Vec::new();
    }
    // Far: 20 points apart and five times the other's rate (or the other's is zero).
    let far = |a: f64, b: f64| {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        hi - lo >= 0.20 && (lo == 0.0 || hi / lo >= 5.0)
    };
    let mut out = Vec::new();
    for (lb, r) in &judged {
        let mut others: Vec<f64> = judged
            .iter()
            .filter(|(o, _)| o != lb)
            .map(|(_, r)| *r)
            .collect();
        others.sort_by(f64::total_cmp);
        let median = others[others.len() / 2];
        if others.iter().all(|o| far(*r, *o)) {
            out.push((
                (*lb).clone(),
                format!(
                    "lb {lb}: canary error rate {:.2} % against a median of {:.2} % on the other LBs",
                    r * 100.0,
                    median * 100.0
                ),
            ));
        }
    }
    // More than one suspect: the LBs disagree among themselves, none stands out alone.
    if out.len() > 1 {
        return Vec::new();
    }
    out
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

    /// One LB's numbers far from every other LB's are left out and named; LBs that merely
    /// differ, or disagree among themselves, are all kept; two LBs cannot be told apart.
    #[test]
    fn one_lb_far_from_all_the_others_is_suspect() {
        let lbs = |rates: &[(u64, u64)]| -> BTreeMap<String, ColorCounts> {
            rates
                .iter()
                .enumerate()
                .map(|(i, (n, e))| (format!("lb-{i}"), counts(*n, *e, 5.0)))
                .collect()
        };
        // A forged flood of errors on one LB: the others see none.
        let forged = suspect_lbs(&lbs(&[(200, 0), (210, 1), (190, 150)]), 50);
        assert_eq!(forged.len(), 1, "{forged:?}");
        assert!(
            forged[0].0 == "lb-2" && forged[0].1.contains("median"),
            "{forged:?}"
        );
        // A bad canary fails on every LB alike: nobody is suspect.
        assert!(suspect_lbs(&lbs(&[(200, 100), (210, 110), (190, 90)]), 50).is_empty());
        // Ordinary noise.
        assert!(suspect_lbs(&lbs(&[(200, 2), (210, 9), (190, 0)]), 50).is_empty());
        // Two LBs: no majority to compare with. Too few requests: not judged.
        assert!(suspect_lbs(&lbs(&[(200, 0), (190, 150)]), 50).is_empty());
        assert!(suspect_lbs(&lbs(&[(200, 0), (210, 0), (10, 10)]), 50).is_empty());
    }

    fn criteria() -> CanarySection {
        toml::from_str("min_requests = 100\nmax_error_rate_increase = 0.5").unwrap()
    }

    /// α for one step of a four-step canary with the default budget.
    const ALPHA: f64 = 0.0025;

    #[test]
    fn the_budget_is_split_over_the_steps() {
        let mut four = criteria();
        four.steps = vec![1.0, 5.0, 25.0, 50.0];
        assert!((step_alpha(&four) - 0.0025).abs() < 1e-12);
    }

    /// Ville's inequality, checked: over many sequences at a true rate, the share whose mixture
    /// ratio against that rate ever reaches 1/δ (the true rate leaves the bounds at some look)
    /// stays at most δ. A Chernoff bound valid for one look, used at every look, lets it out of
    /// about 20 % of these sequences (checked once by simulation).
    #[test]
    fn the_true_rate_is_ever_outside_the_bounds_at_most_delta_of_the_time() {
        let (delta, truth, sequences, length): (f64, f64, u32, u64) = (0.05, 0.05, 2000, 500);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let threshold = (1.0 / delta).ln();
        let mut ever_outside = 0;
        for _ in 0..sequences {
            let mut hits = 0;
            for n in 1..=length {
                if uniform() < truth {
                    hits += 1;
                }
                if ln_mixture_ratio(hits, n, truth) >= threshold {
                    ever_outside += 1;
                    break;
                }
            }
        }
        let share = ever_outside as f64 / sequences as f64;
        assert!(share <= delta, "{share} of sequences left the bounds");
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
        // ln(100)/1000 ≈ 0.0046 for one fixed look; valid at every look costs a little more.
        assert!((0.0046..0.008).contains(&zero_hi), "{zero_hi}");
    }

    #[test]
    fn a_canary_with_five_percent_errors_fails_once_it_is_significant() {
        let few = Window {
            canary: counts(40, 2, 10.0),
            stable: counts(4000, 0, 10.0),
        };
        let checks = judge(&few, &criteria(), ALPHA);
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
        let checks = judge(&many, &criteria(), ALPHA);
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
            overall(&judge(&thin, &criteria(), ALPHA)),
            Verdict::InsufficientData
        );
        let enough = Window {
            canary: counts(200, 0, 11.0),
            stable: counts(20000, 1, 10.0),
        };
        let checks = judge(&enough, &criteria(), ALPHA);
        assert_eq!(overall(&checks), Verdict::Pass, "{checks:#?}");
    }

    #[test]
    fn no_traffic_is_insufficient_data_never_pass_or_fail() {
        let empty = Window::default();
        for alpha in [0.01, ALPHA, 1e-9] {
            let checks = judge(&empty, &criteria(), alpha);
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
        let checks = judge(&window, &criteria(), ALPHA);
        assert_eq!(checks[2].verdict, Verdict::Fail, "{}", checks[2].detail);
        assert_eq!(checks[1].verdict, Verdict::Pass);
    }

    #[test]
    fn a_stable_color_already_failing_is_the_baseline_not_a_reason() {
        let window = Window {
            canary: counts(500, 50, 10.0),
            stable: counts(50000, 5000, 10.0),
        };
        let checks = judge(&window, &criteria(), ALPHA);
        assert_eq!(checks[1].verdict, Verdict::Pass, "{}", checks[1].detail);
    }
}
