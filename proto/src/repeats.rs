//! Rate limiting of repeated identical log lines. A crash-looping release or a failing reload
//! would otherwise log the same error many times a second, forever, burying everything else.
//! The first occurrence is logged; identical ones within the window are only counted, and the
//! next one logged says how many were held back.
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Repeats {
    window: Duration,
    last: Option<(String, Instant)>,
    held_back: u64,
}

impl Repeats {
    pub fn new(window: Duration) -> Repeats {
        Repeats {
            window,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)` when `message` should be logged now, `n` being how many identical lines were held
    /// back since the last one logged; `None` to hold this one back.
    pub fn admit(&mut self, message: &str, now: Instant) -> Option<u64> {
        match &self.last {
            Some((last, at)) if last == message && now.duration_since(*at) < self.window => {
                self.held_back += 1;
                None
            }
            _ => {
                let held_back = std::mem::take(&mut self.held_back);
                self.last = Some((message.to_string(), now));
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_lines_within_the_window_are_counted_not_logged() {
        let mut r = Repeats::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.admit("boom", t0), Some(0));
        for i in 1..=9 {
            assert_eq!(r.admit("boom", t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(r.admit("boom", t0 + Duration::from_secs(11)), Some(9));
        assert_eq!(r.admit("other", t0 + Duration::from_secs(11)), Some(0));
        assert_eq!(r.admit("boom", t0 + Duration::from_secs(11)), Some(0));
    }
}
