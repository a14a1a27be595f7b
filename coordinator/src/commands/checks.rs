//! What `deploy` and `promote` share: their flags for the lock wait, the checks before and after
//! the switch and the signing key, and those flags parsed.
use crate::context::parse_duration as dur;
use crate::error::{CoordinatorError, Subject};
use crate::fleet::LbPolicy;
use std::path::PathBuf;
use std::time::Duration;

/// What `deploy` and `promote` share: the lock wait, the checks before and after the switch, and
/// the release-signing key.
#[derive(clap::Args)]
pub struct CheckFlags {
    /// How long to wait for another operation's deploy lock (0s: give up at once, exit 3).
    #[arg(long, default_value = "0s")]
    lock_wait: String,
    /// How long the new color may take to be healthy on every host [default: the spec's
    /// health.startup_timeout + 30s].
    #[arg(long)]
    health_timeout: Option<String>,
    /// After the switch, watch the new color this long and switch back if it turns unhealthy or
    /// its answers through the LBs turn worse than the old color's before the switch (errors,
    /// p99 latency: the [canary] criteria) [default: the spec's switch.verify_for].
    #[arg(long)]
    verify_for: Option<String>,
    /// Leave a color that failed its checks running for debugging instead of stopping it.
    #[arg(long)]
    keep_failed: bool,
    /// Switch even when no LB is registered (nothing can follow or verify the switch).
    #[arg(long)]
    allow_no_lb: bool,
    /// Move traffic even while a registered LB's sidecar is silent: that LB keeps serving the
    /// old color (an emergency that knowingly splits the LBs).
    #[arg(long)]
    allow_split_lbs: bool,
    /// ed25519 private key (`coordinator keygen`) to sign the releases written; agents with
    /// trusted_keys run only signed releases.
    #[arg(long, env = "BLUEGREEN_SIGNING_KEY_FILE")]
    signing_key: Option<PathBuf>,
}

impl CheckFlags {
    pub fn parse(self) -> Result<Checks, CoordinatorError> {
        Ok(Checks {
            lock_wait: dur("--lock-wait", &self.lock_wait)?,
            health_timeout: self
                .health_timeout
                .map(|d| dur("--health-timeout", &d))
                .transpose()?,
            verify_for: self
                .verify_for
                .map(|d| dur("--verify-for", &d))
                .transpose()?,
            keep_failed: self.keep_failed,
            lb_policy: LbPolicy {
                allow_no_lb: self.allow_no_lb,
                allow_split_lbs: self.allow_split_lbs,
            },
            signing_key: self.signing_key,
        })
    }
}

/// What `deploy` and `promote` share: the lock wait, the checks, the signing key.
pub struct Checks {
    pub lock_wait: Duration,
    pub health_timeout: Option<Duration>,
    pub verify_for: Option<Duration>,
    pub keep_failed: bool,
    pub lb_policy: LbPolicy,
    pub signing_key: Option<std::path::PathBuf>,
}

impl Checks {
    pub fn signing_key(&self) -> Result<Option<proto::signing::SigningKey>, CoordinatorError> {
        self.signing_key
            .as_deref()
            .map(proto::signing::SigningKey::load)
            .transpose()
            .map_err(|e| Subject::flag("--signing-key").usage(e))
    }
}
