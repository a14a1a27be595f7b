use super::*;
use std::error::Error as _;

#[test]
fn the_line_is_subject_detail_and_cause_and_the_cause_stays_typed() {
    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
    let e = Subject::Spec("deploy/app.toml".into())
        .usage("")
        .because(io);
    assert_eq!(
        e.to_string(),
        "spec deploy/app.toml: No such file or directory"
    );
    assert_eq!(e.exit_code(), 2);
    assert_eq!(e.subject(), Some(Subject::Spec("deploy/app.toml".into())));
    let CoordinatorError::Usage(problem) = &e else {
        panic!("{e:?}")
    };
    let cause = problem.source().expect("the cause is kept");
    let io = cause
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn each_kind_keeps_its_exit_code_whatever_it_concerns() {
    let host = || Subject::Host("host-1".into());
    let cases = [
        (host().usage("alive"), 2),
        (host().failed("still runs"), 1),
        (
            CoordinatorError::LockTimeout(Problem::new("held").about(host())),
            3,
        ),
        (CoordinatorError::unsafe_state("moved").about(host()), 4),
        (CoordinatorError::unreachable("refused").about(host()), 5),
    ];
    for (e, code) in cases {
        assert_eq!(e.exit_code(), code, "{e}");
        assert_eq!(e.subject(), Some(host()), "{e}");
    }
}

#[test]
fn a_wrapped_error_is_the_cause_of_the_new_one() {
    let inner = Subject::Lb("lb-2".into()).failed("did not ack");
    let e =
        CoordinatorError::unsafe_state("traffic moved to green at revision 7, then").because(inner);
    assert_eq!(
        e.to_string(),
        "unsafe, needs a human: traffic moved to green at revision 7, then: lb lb-2: did not ack"
    );
    let CoordinatorError::Unsafe(problem) = &e else {
        panic!("{e:?}")
    };
    let cause = problem
        .source()
        .and_then(|c| c.downcast_ref::<CoordinatorError>());
    assert_eq!(
        cause.and_then(CoordinatorError::subject),
        Some(Subject::Lb("lb-2".into()))
    );
}

#[test]
fn flags_show_their_value_and_protocol_errors_name_their_key() {
    let e = Subject::flag_value("--lock-ttl", "2s").usage("shorter than the minimum 5s");
    assert_eq!(e.to_string(), "--lock-ttl 2s: shorter than the minimum 5s");
    let fence = CoordinatorError::from(proto::ProtoError::FenceLost {
        key: "/bluegreen/apps/web/active".into(),
        lock_key: "/bluegreen/apps/web/lock".into(),
        token: 3,
    });
    assert_eq!(fence.exit_code(), 1);
    assert_eq!(
        fence.subject(),
        Some(Subject::Key("/bluegreen/apps/web/active".into()))
    );
}

#[test]
fn a_spec_that_cannot_be_read_names_the_file_and_keeps_the_io_error() {
    let path = std::path::Path::new("/nonexistent/bluegreen/app.toml");
    let e = crate::spec::AppSpec::load(path).expect_err("no such file");
    assert_eq!(e.exit_code(), 2);
    assert_eq!(e.subject(), Some(Subject::Spec(path.to_path_buf())));
    let CoordinatorError::Usage(problem) = &e else {
        panic!("{e:?}")
    };
    let io = problem
        .source()
        .and_then(|c| c.downcast_ref::<std::io::Error>());
    assert_eq!(
        io.map(std::io::Error::kind),
        Some(std::io::ErrorKind::NotFound)
    );
}
