//! Parsing, validation and compatibility of the etcd records.
use super::*;
use serde_json::json;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn release_json() -> serde_json::Value {
    json!({
        "version": "v2",
        "artifact": {"url": "file:///tmp/app.tar.gz", "sha256": SHA},
        "run": {"command": ["./demo-app"], "env": {"A": "1"}, "stop_timeout": "5s"},
        "health": {"path": "/health", "interval": "1s", "timeout": "500ms", "startup_timeout": "30s"},
        "desired": "running",
        "deploy_id": "d1",
        "token": 7,
        "added_by_a_newer_writer": true
    })
}

fn decode_release(v: &serde_json::Value) -> Result<ReleaseRecord, ProtoError> {
    decode("/p/shop/releases/green", v.to_string().as_bytes())
}

#[test]
fn release_parses_durations_and_ignores_unknown_fields() {
    let r = decode_release(&release_json()).unwrap();
    assert_eq!(r.run.stop_timeout, Duration::from_secs(5));
    assert_eq!(r.health.timeout, Duration::from_millis(500));
    assert_eq!(r.desired, Desired::Running);
    let round: ReleaseRecord = serde_json::from_str(&encode(&r)).unwrap();
    assert_eq!(round, r);
}

#[test]
fn release_errors_name_key_and_field() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("version", json!(""), "version"),
        ("desired", json!("paused"), "unknown variant"),
    ];
    for (field, value, expect) in cases {
        let mut v = release_json();
        v[field] = value;
        let err = decode_release(&v).unwrap_err().to_string();
        assert!(
            err.contains("/p/shop/releases/green") && err.contains(expect),
            "{err}"
        );
    }
    let mut v = release_json();
    v["artifact"]["sha256"] = json!("abc");
    let err = decode_release(&v).unwrap_err().to_string();
    assert!(err.contains("artifact.sha256"), "{err}");
    let mut v = release_json();
    v["artifact"]["url"] = json!("ftp://x/y");
    assert!(decode_release(&v)
        .unwrap_err()
        .to_string()
        .contains("artifact.url"));
    let mut v = release_json();
    v["run"]["command"] = json!([]);
    assert!(decode_release(&v)
        .unwrap_err()
        .to_string()
        .contains("run.command"));
    let mut v = release_json();
    v["health"]["interval"] = json!("soon");
    assert!(decode_release(&v)
        .unwrap_err()
        .to_string()
        .contains("/p/shop/releases/green"));
    let mut v = release_json();
    v.as_object_mut().unwrap().remove("artifact");
    assert!(decode_release(&v)
        .unwrap_err()
        .to_string()
        .contains("missing field `artifact`"));
}

#[test]
fn garbage_values_are_errors_not_panics() {
    for garbage in [&b""[..], b"null", b"{", b"\xff\xfe", b"[1,2]", b"\"blue\""] {
        assert!(decode::<ReleaseRecord>("k", garbage).is_err());
        assert!(decode::<ActiveRecord>("k", garbage).is_err());
        assert!(decode::<HealthRecord>("k", garbage).is_err());
    }
}

#[test]
fn active_rejects_unknown_color() {
    let v =
        json!({"color": "red", "version": "v1", "deploy_id": "d", "token": 1, "switched_at": "x"});
    let err = decode::<ActiveRecord>("/p/shop/active", v.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/p/shop/active") && err.contains("\"red\""),
        "{err}"
    );
}

#[test]
fn host_record_rejects_same_ports() {
    let v = json!({"host": "a", "address": "127.0.0.1", "ports": {"blue": 1, "green": 1},
                   "grpc": "x", "agent_version": "0", "started_at": "t"});
    assert!(decode::<HostRecord>("k", v.to_string().as_bytes())
        .unwrap_err()
        .to_string()
        .contains("ports"));
}

#[test]
fn health_state_serializes_lowercase() {
    assert_eq!(
        serde_json::to_string(&HealthState::Unhealthy).unwrap(),
        "\"unhealthy\""
    );
}

#[test]
fn records_written_before_typing_still_parse() {
    let lock = json!({"deploy_id": "rollback-1", "holder": "ci:1", "version": "rollback", "acquired_at": "t"});
    let l: LockRecord = decode("/p/shop/lock", lock.to_string().as_bytes()).unwrap();
    assert_eq!(l.operation, Operation::Deploy);
    let deploy = json!({"deploy_id": "d", "phase": "switched", "from": "blue", "to": "green",
        "version": "v2", "token": 3, "started_at": "t", "updated_at": "t"});
    let d: DeployRecord = decode("/p/shop/deploy", deploy.to_string().as_bytes()).unwrap();
    assert_eq!((d.phase, d.operation), (Phase::Switched, Operation::Deploy));
    let history =
        json!({"kind": "reconcile", "deploy_id": "d", "outcome": "not switched", "at": "t"});
    let h: HistoryRecord = decode("/p/shop/history/1", history.to_string().as_bytes()).unwrap();
    assert_eq!(
        (h.kind, h.outcome),
        (Operation::Reconcile, Outcome::NotSwitched)
    );
    let old_release = release_json();
    let r = decode_release(&old_release).unwrap();
    assert_eq!(r.health.mode, HealthMode::Contract);
}

#[test]
fn names_and_addresses_that_could_inject_config_are_refused() {
    let mut v = release_json();
    v["version"] = json!("v1; } server { listen 81;");
    let err = decode_release(&v).unwrap_err().to_string();
    assert!(
        err.contains("/p/shop/releases/green") && err.contains("version"),
        "{err}"
    );
    for bad in ["127.0.0.1:1; } server {", "a b", "", "-x.example", "x..y"] {
        assert!(check_address(bad).is_err(), "{bad}");
    }
    for ok in ["127.0.0.11", "::1", "app-1.internal.example", "host7"] {
        assert!(check_address(ok).is_ok(), "{ok}");
    }
    let host = json!({"host": "a", "address": "10.0.0.1;", "ports": {"blue": 1, "green": 2},
                      "grpc": "x", "agent_version": "0", "started_at": "t"});
    let err = decode::<HostRecord>("k", host.to_string().as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("address"), "{err}");
}

#[test]
fn serves_needs_healthy_at_exactly_that_version() {
    let record = |state, version: &str| HealthRecord {
        version: version.into(),
        state,
        health: serde_json::Value::Null,
        since: "t".into(),
        restarts: 0,
        error: None,
        unsigned: None,
    };
    assert!(record(HealthState::Healthy, "v2").serves("v2"));
    assert!(!record(HealthState::Healthy, "v1").serves("v2"));
    assert!(!record(HealthState::Starting, "v2").serves("v2"));
    assert!(!serves(None, "v2"));
}

#[test]
fn health_mode_settings_must_fit_the_mode() {
    let mut v = release_json();
    v["health"]["mode"] = json!("tcp");
    v["health"]["expect_status"] = json!(204);
    let err = decode_release(&v).unwrap_err().to_string();
    assert!(err.contains("health.expect_status"), "{err}");
    v["health"]["mode"] = json!("http");
    assert_eq!(decode_release(&v).unwrap().health.expect_status, Some(204));
    v["health"]["mode"] = json!("grpc");
    assert!(decode_release(&v).is_err());
}

#[test]
fn grpc_endpoints_round_trip_through_the_host_record() {
    use crate::records::GrpcEndpoint;
    let socket = GrpcEndpoint::parse("unix:/run/bluegreen/agent.sock");
    assert_eq!(
        socket,
        GrpcEndpoint::Socket("/run/bluegreen/agent.sock".into())
    );
    assert_eq!(socket.to_string(), "unix:/run/bluegreen/agent.sock");
    // What agents before the socket wrote stays an address.
    let tcp = GrpcEndpoint::parse("10.0.0.5:7070");
    assert_eq!(tcp, GrpcEndpoint::Tcp("10.0.0.5:7070".into()));
    assert_eq!(tcp.to_string(), "10.0.0.5:7070");
}
