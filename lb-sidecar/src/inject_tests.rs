//! Property test: no value in etcd can add nginx configuration. Arbitrary strings, biased toward
//! nginx syntax (`;`, braces, quotes, newlines, `$`, `#`), are put into every field of every
//! record the renderer reads (active, host, health); whatever the state accepts must render to
//! a config with exactly the template's blocks and directives. Deterministic (fixed seed), so a
//! failure reproduces.
use crate::render::{render, View, BUILTIN_TEMPLATE};
use crate::state::LbState;
use proto::rng::Rng;
use proto::{Color, Keys};

/// Pieces rich in config syntax.
const PIECES: [&str; 24] = [
    ";",
    "{",
    "}",
    "\"",
    "'",
    "\n",
    "\r",
    "\\",
    "$host",
    "#",
    " ",
    "\t",
    "server",
    "listen 81",
    "location /",
    "alias /etc/",
    "include /etc/passwd",
    "upstream x",
    "a",
    "v1",
    "127.0.0.1",
    ":",
    "-",
    ".",
];

/// Up to 7 pieces of [`PIECES`].
fn nasty(rng: &mut Rng) -> String {
    rng.text(&PIECES, 7)
}

/// Either a valid-looking value or a nasty one, so that both accepted and refused paths run.
fn value(rng: &mut Rng, valid: &str) -> String {
    if rng.below(3) == 0 {
        valid.to_string()
    } else {
        let mut s = nasty(rng);
        if rng.below(2) == 0 {
            s.insert_str(0, valid);
        }
        s
    }
}

fn shape(config: &str) -> Vec<(String, usize)> {
    [
        "server {",
        "upstream ",
        "location ",
        "listen ",
        "include",
        "alias",
        "root ",
        "return ",
        "{",
        "}",
        ";",
    ]
    .iter()
    .map(|needle| (needle.to_string(), config.matches(needle).count()))
    .collect()
}

#[test]
fn no_etcd_value_adds_a_block_or_directive_to_the_config() {
    let keys = Keys::new("/bluegreen", "shop").unwrap();
    let mut rng = Rng::new(0x5eed_b10e_9e11);
    let mut accepted = 0;
    for _ in 0..3000 {
        let mut state = LbState::default();
        let host = value(&mut rng, "host-a");
        let record = serde_json::json!({
            "host": host,
            "address": value(&mut rng, "127.0.0.11"),
            "ports": {"blue": 8080, "green": 8081},
            "grpc": value(&mut rng, "127.0.0.11:7070"),
            "agent_version": value(&mut rng, "0.1.0"),
            "started_at": "t",
        });
        let host_key = format!("{}{}", keys.hosts_prefix(), host);
        let _ = state.apply(&keys, &host_key, Some(record.to_string().as_bytes()));
        let version = value(&mut rng, "v2");
        let health = serde_json::json!({"version": version, "state": "healthy", "since": "t",
                                         "error": nasty(&mut rng), "health": {"x": nasty(&mut rng)}});
        let health_key = format!("{}{}/green", keys.health_prefix(), host);
        let _ = state.apply(&keys, &health_key, Some(health.to_string().as_bytes()));
        let active = serde_json::json!({"color": "green", "version": version, "deploy_id": nasty(&mut rng),
                                         "token": 1, "switched_at": nasty(&mut rng)});
        let _ = state.apply(&keys, &keys.active(), Some(active.to_string().as_bytes()));
        let Some(a) = state.active.clone() else {
            continue;
        };
        let view = View {
            app: "shop".into(),
            listen: "0.0.0.0:80".into(),
            preview_listen: "127.0.0.1:8088".into(),
            status_listen: "127.0.0.1:9902".into(),
            color: a.color,
            version: a.version.clone(),
            live: state.upstream(Color::Green, Some(&a.version)),
            preview: state.upstream(Color::Blue, None),
            live_fallback: state.registered(Color::Green),
            preview_fallback: state.registered(Color::Blue),
            split: None,
            request_log: None,
            server_names: vec![],
            tls: None,
            status_host: None,
        };
        let Ok(config) = render(BUILTIN_TEMPLATE, &view) else {
            continue;
        };
        accepted += 1;
        // The same view with known-good values: the shape every accepted render must have.
        let reference = View {
            version: "v2".into(),
            live: view
                .live
                .iter()
                .map(|_| "127.0.0.11:8081".to_string())
                .collect(),
            preview: view
                .preview
                .iter()
                .map(|_| "127.0.0.11:8080".to_string())
                .collect(),
            live_fallback: view
                .live_fallback
                .iter()
                .map(|_| "127.0.0.11:8081".to_string())
                .collect(),
            preview_fallback: view
                .preview_fallback
                .iter()
                .map(|_| "127.0.0.11:8080".to_string())
                .collect(),
            ..view.clone()
        };
        let expected = render(BUILTIN_TEMPLATE, &reference).unwrap();
        assert_eq!(
            shape(&config),
            shape(&expected),
            "values {view:?} changed the config's shape:\n{config}"
        );
        assert!(!config.contains('\r') && config.lines().count() == expected.lines().count());
    }
    assert!(
        accepted > 100,
        "the generator must also produce acceptable states ({accepted})"
    );
}
