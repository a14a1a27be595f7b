//! The demo app's fault knobs, on the real binary: a release can ship an error rate and added
//! latency (the canary tests and demos need a version that is bad only in its traffic), and the
//! health route is spared both, as a real app's errors would not show in its health check.
use bluegreen_tests::{binary, free_port, wait_for};
use std::time::{Duration, Instant};

struct DemoApp {
    _child: tokio::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl DemoApp {
    async fn start(env: &[(&str, &str)]) -> DemoApp {
        let port = free_port("127.0.0.1");
        let dir = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(binary("demo-app"))
            .env("APPLICATION_PORT", port.to_string())
            .env("APPLICATION_HOST", "127.0.0.1")
            .env("APP_VERSION", "v1")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.path().join("demo.db").display()),
            )
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("start demo-app");
        let base = format!("http://127.0.0.1:{port}");
        let health = format!("{base}/health");
        wait_for("the demo app to answer", Duration::from_secs(30), || {
            let health = health.clone();
            async move {
                reqwest::get(&health)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        DemoApp {
            _child: child,
            base,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_rate_and_latency_apply_to_traffic_but_never_to_health() {
    let app = DemoApp::start(&[
        ("DEMO_ERROR_RATE", "0.1"),
        ("DEMO_LATENCY_MS", "50"),
        ("DEMO_LATENCY_JITTER_PCT", "20"),
    ])
    .await;
    let client = reqwest::Client::new();
    let (mut errors, total) = (0, 400);
    for _ in 0..total {
        let started = Instant::now();
        let answer = client
            .get(format!("{}/api/v1/status", app.base))
            .send()
            .await
            .unwrap();
        // A sleep lasts at least as asked: 50 ms less 20 % is the floor.
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "no added latency"
        );
        if answer.status() == reqwest::StatusCode::INTERNAL_SERVER_ERROR {
            errors += 1;
        } else {
            assert!(answer.status().is_success(), "{}", answer.status());
        }
    }
    // 10 % of 400: 40 expected; a binomial's 5 standard deviations either way is 20..60.
    assert!((20..=60).contains(&errors), "{errors} errors of {total}");
    for _ in 0..200 {
        let health = client
            .get(format!("{}/health", app.base))
            .send()
            .await
            .unwrap();
        assert!(
            health.status().is_success(),
            "health failed: {}",
            health.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_knob_stops_the_app_naming_it() {
    let out = tokio::process::Command::new(binary("demo-app"))
        .env("APPLICATION_PORT", free_port("127.0.0.1").to_string())
        .env("DEMO_ERROR_RATE", "5%")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEMO_ERROR_RATE"));
}
