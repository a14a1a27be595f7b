//! Real apps as build tools make them, and the operations a team runs on them: a Python app in a
//! real virtualenv, started through an npm-style `node_modules/.bin` link, running as the
//! unprivileged `bluegreen-app`, deploys, redeploys with only an env change and rolls back, each
//! color in its own working tree.
use bluegreen_tests::fleet::{assert_ok, text, Fleet, Setup};
use bluegreen_tests::procs::APP;
use bluegreen_tests::Etcd;
use proto::Color;
use std::path::{Path, PathBuf};

/// A static-site and Puma-style app: it refuses to start when `server.pid` is in its directory,
/// renders `page.txt` (from `GREETING`) once next to itself, and writes to its HOME and TMPDIR.
const SERVE_PY: &str = r#"import http.server, os, sys, tempfile
if os.path.exists("server.pid"):
    sys.exit("server already running: server.pid exists in " + os.getcwd())
with open("server.pid", "w") as f:
    f.write(str(os.getpid()))
if not os.path.exists("page.txt"):
    with open("page.txt", "w") as f:
        f.write(os.environ["GREETING"])
with open(os.path.join(os.environ["HOME"], ".history"), "a") as f:
    f.write(os.environ["APP_VERSION"] + "\n")
tempfile.NamedTemporaryFile(delete=False).write(b"scratch")
page = open("page.txt").read().encode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/health" else page
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

address = (os.environ["APPLICATION_HOST"], int(os.environ["APPLICATION_PORT"]))
http.server.ThreadingHTTPServer(address, Handler).serve_forever()
"#;

/// The app's tree: a real `python3 -m venv` (its `bin/python3` is a link to `/usr/bin/python3`)
/// and the script reached through `node_modules/.bin/serve -> ../serve/bin/serve.py`.
fn python_app(root: &Path) -> PathBuf {
    let tree = root.join("python-app");
    let venv = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(tree.join("venv"))
        .output()
        .expect("run /usr/bin/python3 -m venv (deploy/install-deps.sh installs python3-venv)");
    assert!(
        venv.status.success(),
        "venv: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let link = std::fs::read_link(tree.join("venv/bin/python3")).unwrap();
    assert!(
        link.is_absolute(),
        "a venv links its python absolutely: {link:?}"
    );
    std::fs::create_dir_all(tree.join("node_modules/serve/bin")).unwrap();
    std::fs::create_dir_all(tree.join("node_modules/.bin")).unwrap();
    std::fs::write(tree.join("node_modules/serve/bin/serve.py"), SERVE_PY).unwrap();
    std::os::unix::fs::symlink(
        "../serve/bin/serve.py",
        tree.join("node_modules/.bin/serve"),
    )
    .unwrap();
    tree
}

fn spec_text(greeting: &str) -> String {
    format!(
        "app = \"{APP}\"\n[run]\ncommand = [\"venv/bin/python3\", \"node_modules/.bin/serve\"]\n\
         env = {{ GREETING = \"{greeting}\" }}\nstop_timeout = \"5s\"\n\
         [health]\nmode = \"http\"\npath = \"/health\"\ninterval = \"500ms\"\nstartup_timeout = \"20s\"\n"
    )
}

/// What the LB serves at `/`, over a fresh connection.
async fn served(fleet: &Fleet) -> String {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let resp = http
        .get(fleet.lbs[0].url("/"))
        .send()
        .await
        .expect("LB answers");
    resp.text().await.unwrap()
}

/// The running app of `color` on the first host: its pid, working directory and uid.
fn running(fleet: &Fleet, color: Color) -> (u32, PathBuf, u32) {
    let pid_file = fleet.hosts[0].state_dir.join(format!("{color}.pid.json"));
    let pid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pid_file).expect("a pid file")).unwrap();
    let pid = pid["pid"].as_u64().unwrap() as u32;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    (pid, cwd, uid)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_venv_app_with_npm_style_links_runs_each_color_in_its_own_tree_as_the_app_user() {
    let uid = bluegreen_tests::app_user();
    let setup = Setup {
        etcd: Etcd::start().await,
        agent_extra: &|_| "run_as = \"bluegreen-app\"\n".into(),
        sidecar_extra: &|_, _| String::new(),
        coordinator_env: vec![],
    };
    let fleet = Fleet::start_setup(1, 1, setup).await;
    let scratch = tempfile::tempdir().unwrap();
    let app = fleet
        .artifacts
        .tarball_of_dir("python-app.tar.gz", &python_app(scratch.path()));
    let v1_spec = fleet.raw_spec("validate", &spec_text("hello from v1"));
    let spec_flag = v1_spec.display().to_string();
    let validate = fleet
        .run(&[
            "validate",
            "--spec",
            &spec_flag,
            "--artifact",
            &app.url,
            "--sha256",
            &app.sha256,
        ])
        .await;
    assert!(
        text(&validate).contains("unpacks as an agent"),
        "{}",
        text(&validate)
    );

    let deploy = |version: &'static str, greeting: &'static str| {
        let spec = fleet.raw_spec(version, &spec_text(greeting));
        let (fleet, app) = (&fleet, &app);
        async move { fleet.deploy_artifact(&spec, version, app, &[]).await }
    };
    assert_ok(&deploy("v1", "hello from v1").await, "deploy v1");
    assert_eq!(served(&fleet).await, "hello from v1");
    // Only the env changes: the same artifact on the other color. Sharing one directory, v2
    // found v1's server.pid and refused to start, or served v1's page.
    assert_ok(&deploy("v2", "hello from v2").await, "deploy v2 (env only)");
    assert_eq!(served(&fleet).await, "hello from v2");
    let (_, blue_dir, blue_uid) = running(&fleet, Color::Blue);
    let (_, green_dir, green_uid) = running(&fleet, Color::Green);
    assert_eq!(
        (blue_uid, green_uid),
        (uid, uid),
        "both colors run as bluegreen-app"
    );
    assert_ne!(blue_dir, green_dir);
    for dir in [&blue_dir, &green_dir] {
        assert!(
            !dir.starts_with(fleet.hosts[0].state_dir.join("artifacts")),
            "{dir:?}"
        );
        assert!(dir.join("server.pid").is_file() && dir.join("page.txt").is_file());
        let home = dir.parent().unwrap().join("home");
        assert!(
            home.join(".history").is_file(),
            "HOME is the color's own: {home:?}"
        );
    }

    assert_ok(&fleet.run(&["rollback"]).await, "rollback");
    assert_eq!(
        served(&fleet).await,
        "hello from v1",
        "the rollback serves v1's own page"
    );
    // A redeploy of green starts from a clean tree: no v2 page, no v2 pid file.
    assert_ok(&deploy("v3", "hello from v3").await, "deploy v3 onto green");
    assert_eq!(served(&fleet).await, "hello from v3");
    let (_, v3_dir, _) = running(&fleet, Color::Green);
    assert_ne!(v3_dir, green_dir);

    // v4 replaces v1 on blue: v1 runs nowhere now. `rollback --to v1` deploys it again from
    // history (its artifact, run and env: the spec given is v4's), onto the idle green.
    assert_ok(&deploy("v4", "hello from v4").await, "deploy v4 onto blue");
    let history = text(&fleet.run(&["history"]).await);
    assert!(history.contains("v1 (redeployable)"), "{history}");
    let v4_spec = fleet.raw_spec("v4", &spec_text("hello from v4"));
    let spec_flag = v4_spec.display().to_string();
    let back = fleet
        .run(&["rollback", "--to", "v1", "--spec", &spec_flag])
        .await;
    assert_ok(&back, "rollback --to v1");
    assert_eq!(served(&fleet).await, "hello from v1");
    let refused = fleet
        .run(&["rollback", "--to", "v9", "--spec", &spec_flag])
        .await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("redeployable versions: v2, v3, v4, v1"),
        "newest last: {}",
        text(&refused)
    );
}
