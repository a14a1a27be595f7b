//! Real nginx and lb-sidecar processes for tests: each LB gets its own nginx (own prefix, pid
//! file, ports) and its own sidecar owning that nginx's include file.
use crate::daemon::Daemon;
use crate::procs::{APP, PREFIX};
use crate::{binary, free_port, Etcd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Nginx {
    child: Option<Child>,
    pub dir: PathBuf,
    pub listen: u16,
    pub preview: u16,
    /// The loopback status listener the sidecar renders (`[nginx] status_listen`).
    pub status: u16,
    pub main_config: PathBuf,
    pub include_file: PathBuf,
    pub pid_file: PathBuf,
    /// Run with `-p <dir>`; off for the stock config, whose relative module paths need
    /// nginx's own prefix.
    own_prefix: bool,
    /// Where the public and preview listeners are (127.0.0.1, or the namespace's address).
    pub address: String,
    /// The network namespace nginx (and its sidecar) run in, if any.
    pub ns: Option<crate::netns::Ns>,
    /// A small disk under the include file's directory, if asked for.
    pub disk: Option<crate::disk::SmallDisk>,
    /// The `[nginx] mode` its sidecars are started with (`None`: the sidecar's own choice,
    /// which is Lua whenever this nginx loads the module).
    pub mode: Option<&'static str>,
    _tmp: tempfile::TempDir,
}

/// Debian's Lua module and the kit it needs (`deploy/install-deps.sh` installs them).
const LUA_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
];

/// The mode sidecars run in unless a test asks for one: `BLUEGREEN_TEST_NGINX_MODE` (`lua` or
/// `reload`), so that any suite runs in reload mode too
/// (`BLUEGREEN_TEST_NGINX_MODE=reload deploy/test.sh canary:: faults:: partitions::`); unset,
/// the sidecar's own choice (Lua, with the module installed).
fn default_mode() -> Option<&'static str> {
    match std::env::var("BLUEGREEN_TEST_NGINX_MODE").ok()?.as_str() {
        "lua" => Some("lua"),
        "reload" => Some("reload"),
        other => panic!("BLUEGREEN_TEST_NGINX_MODE={other}: say lua or reload"),
    }
}

/// The `load_module` lines of the tests' main configs: the Lua module when it is installed.
pub fn load_modules() -> String {
    if LUA_MODULES.iter().all(|m| std::path::Path::new(m).exists()) {
        LUA_MODULES
            .iter()
            .map(|m| format!("load_module {m};\n"))
            .collect()
    } else {
        String::new()
    }
}

impl Nginx {
    /// Starts nginx in the foreground (`daemon off`, so the child is the master) with an empty
    /// include file: nothing listens on the public port until a sidecar renders it.
    pub fn start() -> Nginx {
        Nginx::start_at(None, None)
    }

    /// Makes the main config include every `.conf` file beside the include file (as Debian's
    /// `conf.d/*.conf` glob does): an `[[apps]]` sidecar writes a file per app. Takes effect at
    /// the next reload.
    pub fn include_every_app(&self) {
        let main = std::fs::read_to_string(&self.main_config)
            .expect("nginx main config")
            .replace(
                &format!("include {};", self.include_file.display()),
                &format!("include {}/conf.d/*.conf;", self.dir.display()),
            );
        std::fs::write(&self.main_config, main).expect("write nginx main config");
    }

    /// [`Nginx::start`] inside network namespace `ns`, listening on its address; with
    /// `include_disk_mib`, the include file's directory is a tmpfs of that size.
    pub fn start_in(ns: &crate::netns::Ns, include_disk_mib: Option<u64>) -> Nginx {
        Nginx::start_at(Some(ns), include_disk_mib)
    }

    fn start_at(ns: Option<&crate::netns::Ns>, include_disk_mib: Option<u64>) -> Nginx {
        Nginx::start_placed(true, ns, include_disk_mib, |dir, include, pid| {
            format!(
                "{modules}daemon off;\nworker_processes 2;\npid {pid};\nerror_log {dir}/error.log warn;\n\
                 worker_shutdown_timeout 10s;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n    access_log off;\n    client_body_temp_path {dir}/tmp/body;\n    proxy_temp_path {dir}/tmp/proxy;\n\
                 \n    include {include};\n}}\n",
                modules = load_modules(),
                pid = pid.display(),
                dir = dir.display(),
                include = include.display()
            )
        })
    }

    /// Its worker pids, sorted: the same list before and after means nginx did not reload.
    pub fn workers(&self) -> Vec<i32> {
        let mut pids = lb_sidecar::nginx::workers_of(self.master_pid() as i32);
        pids.sort();
        pids
    }

    /// The sidecar's own control of this nginx in `mode` (install, reload, push, wait), for
    /// tests and benchmarks that drive it by hand. Its scratch files go into this nginx's
    /// directory.
    pub fn control(&self, mode: lb_sidecar::config::Mode) -> lb_sidecar::nginx::Nginx {
        lb_sidecar::nginx::Nginx::new(
            lb_sidecar::config::NginxConfig {
                binary: "nginx".into(),
                main_config: self.main_config.clone(),
                include_file: self.include_file.clone(),
                pid_file: self.pid_file.clone(),
                status_listen: format!("127.0.0.1:{}", self.status).parse().unwrap(),
                mode: Some(mode),
            },
            format!("127.0.0.1:{}", self.listen).parse().unwrap(),
            None,
            self.dir.clone(),
        )
    }

    /// Has its sidecars run in `mode` (`lua` or `reload`).
    pub fn in_mode(mut self, mode: &'static str) -> Nginx {
        self.mode = Some(mode);
        self
    }

    /// Debian's stock `/etc/nginx/nginx.conf`, copied with its paths moved into this instance's
    /// directory: the sidecar's include file is picked up by the stock `conf.d/*.conf` glob, as on
    /// an operator's load balancer (the default site is left out: it would take port 80).
    pub fn start_debian_stock() -> Nginx {
        let stock = std::fs::read_to_string("/etc/nginx/nginx.conf")
            .expect("Debian's /etc/nginx/nginx.conf");
        Nginx::start_with(false, move |dir, _include, pid| {
            let d = dir.display();
            format!("daemon off;\n{stock}")
                .replace("pid /run/nginx.pid;", &format!("pid {};", pid.display()))
                .replace("/var/log/nginx/", &format!("{d}/"))
                .replace("include /etc/nginx/conf.d/*.conf;", &format!("include {d}/conf.d/*.conf;\n\tclient_body_temp_path {d}/tmp/body;\n\tproxy_temp_path {d}/tmp/proxy;"))
                .replace("include /etc/nginx/sites-enabled/*;", "")
        })
    }

    /// Starts nginx with the main config `main(dir, include_file, pid_file)` returns; the include
    /// file is `<dir>/conf.d/bluegreen-shop.conf`.
    pub fn start_with(
        own_prefix: bool,
        main: impl Fn(&std::path::Path, &std::path::Path, &std::path::Path) -> String,
    ) -> Nginx {
        Nginx::start_placed(own_prefix, None, None, main)
    }

    fn start_placed(
        own_prefix: bool,
        ns: Option<&crate::netns::Ns>,
        include_disk_mib: Option<u64>,
        main: impl Fn(&std::path::Path, &std::path::Path, &std::path::Path) -> String,
    ) -> Nginx {
        let address = ns.map_or("127.0.0.1".to_string(), |n| n.address.clone());
        let tmp = tempfile::tempdir().expect("nginx dir");
        let dir = tmp.path().to_path_buf();
        // nginx's workers (user nobody) reach the sidecar's request-log socket inside, as they
        // reach /var/lib/bluegreen (0711) on an LB.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let disk =
            include_disk_mib.map(|mib| crate::disk::SmallDisk::mount(&dir.join("conf.d"), mib));
        let include_file = dir.join("conf.d").join(format!("bluegreen-{APP}.conf"));
        let (listen, preview, status) = (
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
        );
        // Bind every port from the start (answering 503 until a sidecar renders the real config),
        // as an operator would: a port picked now and bound only later could be taken meanwhile.
        let placeholder = format!(
            "server {{ listen {address}:{listen}; return 503; }}\nserver {{ listen {address}:{preview}; return 503; }}\n\
             server {{ listen 127.0.0.1:{status}; return 503; }}\n"
        );
        std::fs::write(&include_file, placeholder).unwrap();
        let pid_file = dir.join("nginx.pid");
        let main_config = dir.join("nginx.conf");
        std::fs::write(&main_config, main(&dir, &include_file, &pid_file)).unwrap();
        let mut nginx = Nginx {
            child: None,
            listen,
            preview,
            status,
            dir,
            main_config,
            include_file,
            pid_file,
            own_prefix,
            address,
            ns: ns.cloned(),
            disk,
            mode: default_mode(),
            _tmp: tmp,
        };
        nginx.spawn();
        nginx
    }

    /// Starts the master (again, after [`Nginx::stop`]) and waits for its pid file.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (is nginx-light installed? run deploy/install-deps.sh)");
        let pid = child.id();
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&self.pid_file)
            .map(|p| p.trim() != pid.to_string())
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not write its pid file"
            );
            std::thread::sleep(std::time::Duration::from_millis(20)); // poll, bounded by the deadline
        }
    }

    /// Fast shutdown of master and workers (SIGTERM), waiting for the master to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// `nginx` aimed at this instance's prefix, config and error log; add `-s reload` and the like.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "nginx"]);
                c
            }
            None => Command::new("nginx"),
        };
        if self.own_prefix {
            cmd.arg("-p").arg(&self.dir);
        }
        cmd.arg("-c")
            .arg(&self.main_config)
            .arg("-e")
            .arg(self.dir.join("error.log"));
        cmd
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.address, self.listen)
    }

    pub fn preview_url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.address, self.preview)
    }

    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }
}

impl Nginx {
    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.error_log();
            eprintln!("--- last lines of nginx on port {} ---", self.listen);
            for line in log.lines().rev().take(15).collect::<Vec<_>>().iter().rev() {
                eprintln!("{line}");
            }
        }
        // SIGTERM: fast shutdown of master and workers (SIGKILL would orphan the workers).
        self.stop();
    }
}

pub struct SidecarProc {
    daemon: Daemon,
    pub name: String,
    pub status_port: u16,
    /// Where its status listener is (`/healthz`, `/metrics`).
    pub status_address: String,
}

impl SidecarProc {
    /// Its Prometheus endpoint.
    pub fn metrics_url(&self) -> String {
        format!(
            "http://{}:{}/metrics",
            self.status_address, self.status_port
        )
    }

    /// The value of one series on its /metrics (`name` with its labels, as exported), if
    /// exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = reqwest::get(self.metrics_url())
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Everything the sidecar logged so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Restarts it as `program` (another release's sidecar), with the same config.
    pub fn restart_as(&mut self, program: std::path::PathBuf) {
        self.daemon.restart_as(program);
    }

    /// SIGSTOP: the sidecar freezes (its lease expires) while its nginx keeps serving.
    pub fn pause(&self) {
        self.daemon.signal("STOP");
    }

    pub fn resume(&self) {
        self.daemon.signal("CONT");
    }
    /// Starts `lb-sidecar` for `nginx`; `extra` is appended to the top level of its config.
    pub fn start(etcd: &Etcd, name: &str, nginx: &Nginx, extra: &str) -> SidecarProc {
        SidecarProc::start_app(etcd, name, nginx, APP, extra)
    }

    /// [`SidecarProc::start`] for `app`. Another app than the fleet's shares `nginx`'s public
    /// listener (routed by `server_names` in `extra`) and gets its own include file
    /// (`conf.d/bluegreen-<app>.conf`, which nginx's main config must include), preview and
    /// status ports and state directory.
    pub fn start_app(
        etcd: &Etcd,
        name: &str,
        nginx: &Nginx,
        app: &str,
        extra: &str,
    ) -> SidecarProc {
        let status_port = free_port("127.0.0.1");
        let (nginx_status_port, preview, include_file, state_dir) = if app == APP {
            (
                nginx.status,
                nginx.preview,
                nginx.include_file.clone(),
                nginx.dir.join(format!("sidecar-{name}")),
            )
        } else {
            (
                free_port("127.0.0.1"),
                free_port("127.0.0.1"),
                nginx
                    .dir
                    .join("conf.d")
                    .join(format!("bluegreen-{app}.conf")),
                nginx.dir.join(format!("sidecar-{name}-{app}")),
            )
        };
        let address = &nginx.address;
        let config_path = match app {
            APP => nginx.dir.join(format!("{name}.toml")),
            _ => nginx.dir.join(format!("{name}-{app}.toml")),
        };
        let config = format!(
            "etcd = [{}]\nprefix = \"{PREFIX}\"\napp = \"{app}\"\nname = \"{name}\"\nlisten = \"{address}:{}\"\n\
             preview_listen = \"{address}:{preview}\"\nstatus_listen = \"127.0.0.1:{status_port}\"\nlease_ttl = \"5s\"\n\
             state_dir = \"{}\"\n{extra}\n\
             [nginx]\nbinary = \"nginx\"\nmain_config = \"{}\"\ninclude_file = \"{}\"\npid_file = \"{}\"\n\
             status_listen = \"127.0.0.1:{nginx_status_port}\"\n",
            etcd.endpoints_toml(),
            nginx.listen,
            state_dir.display(),
            nginx.main_config.display(),
            include_file.display(),
            nginx.pid_file.display()
        );
        std::fs::write(&config_path, config).unwrap();
        let args = vec!["--config".into(), config_path.into_os_string()];
        let (program, args) = match &nginx.ns {
            Some(ns) => ns.wrap(binary("lb-sidecar"), args),
            None => (binary("lb-sidecar"), args),
        };
        let env = sidecar_env(nginx);
        let daemon = Daemon::start_with_env(
            &format!("sidecar {name}"),
            program,
            args,
            nginx.dir.join(match app {
                APP => format!("{name}.log"),
                _ => format!("{name}-{app}.log"),
            }),
            env,
        );
        SidecarProc {
            daemon,
            name: name.to_string(),
            status_port,
            status_address: "127.0.0.1".into(),
        }
    }

    /// One `lb-sidecar` serving every app of `apps` (name, server names) on `nginx`'s listeners
    /// (`[[apps]]`), each app in its own include file beside the fleet's: nginx's main config
    /// must include them all (`conf.d/*.conf`).
    pub fn start_apps(
        etcd: &Etcd,
        name: &str,
        nginx: &Nginx,
        apps: &[(&str, &[&str])],
    ) -> SidecarProc {
        let status_port = free_port("127.0.0.1");
        let address = &nginx.address;
        let entries: String = apps
            .iter()
            .map(|(app, names)| {
                let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
                format!(
                    "[[apps]]\nname = \"{app}\"\nserver_names = [{}]\n",
                    names.join(", ")
                )
            })
            .collect();
        let config = format!(
            "etcd = [{}]\nprefix = \"{PREFIX}\"\nname = \"{name}\"\nlisten = \"{address}:{}\"\n\
             preview_listen = \"{address}:{}\"\nstatus_listen = \"127.0.0.1:{status_port}\"\nlease_ttl = \"5s\"\n\
             debounce = \"1s\"\nstate_dir = \"{}\"\n{entries}\
             [nginx]\nbinary = \"nginx\"\nmain_config = \"{}\"\ninclude_file = \"{}\"\npid_file = \"{}\"\n\
             status_listen = \"127.0.0.1:{}\"\n",
            etcd.endpoints_toml(),
            nginx.listen,
            nginx.preview,
            nginx.dir.join(format!("sidecar-{name}")).display(),
            nginx.main_config.display(),
            nginx.include_file.display(),
            nginx.pid_file.display(),
            nginx.status,
        );
        let config_path = nginx.dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let daemon = Daemon::start_with_env(
            &format!("sidecar {name}"),
            binary("lb-sidecar"),
            vec!["--config".into(), config_path.into_os_string()],
            nginx.dir.join(format!("{name}.log")),
            sidecar_env(nginx),
        );
        SidecarProc {
            daemon,
            name: name.to_string(),
            status_port,
            status_address: "127.0.0.1".into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    pub fn restart(&mut self) {
        self.daemon.restart();
    }

    /// How it exited, once it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.daemon.exit_status()
    }
}

/// `count` LBs (an nginx and its sidecar each, named `<prefix>-<i>`) whose sidecars run in
/// `mode`, each acked blue v1 as `active`: the start the Lua mode's tests and benchmarks share.
pub async fn lbs_serving_blue(
    etcd: &Etcd,
    client: &etcd_client::Client,
    mode: &'static str,
    prefix: &str,
    count: usize,
) -> (Vec<Nginx>, Vec<SidecarProc>) {
    let lbs: Vec<Nginx> = (0..count).map(|_| Nginx::start().in_mode(mode)).collect();
    let sidecars: Vec<SidecarProc> = lbs
        .iter()
        .enumerate()
        .map(|(i, n)| SidecarProc::start(etcd, &format!("{prefix}-{i}"), n, ""))
        .collect();
    let revision = crate::lb::set_active(client, proto::Color::Blue, "v1").await;
    for s in &sidecars {
        crate::lb::wait_ack(client, &s.name, "first active", |a| {
            a.applied_revision >= revision
        })
        .await;
    }
    (lbs, sidecars)
}

/// The variables every test sidecar of `nginx` gets: the test fleet's hosts are on loopback,
/// and the mode it was asked for. Variables, not file keys, so that the upgrade test can run
/// the previous release's sidecar (which knows neither key) on the same config file.
fn sidecar_env(nginx: &Nginx) -> Vec<(String, String)> {
    let mut env = vec![(
        "BLUEGREEN_SIDECAR_UPSTREAMS_ALLOW".to_string(),
        "127.0.0.0/8".to_string(),
    )];
    if let Some(mode) = nginx.mode {
        env.push(("BLUEGREEN_SIDECAR_NGINX_MODE".to_string(), mode.to_string()));
    }
    env
}

/// The built-in template with the version as the live location's `keepalive_timeout`: a version
/// that reads as a time (`60s`) renders valid config, any other valid name (`v9`) is refused by
/// `nginx -t`. Tests use it to render config that passes every check but nginx's own.
pub fn lb_template_with_version_as_timeout() -> String {
    let anchor = "add_header X-Bluegreen-Revision {{revision}} always;";
    let template = lb_sidecar_template();
    // Fail here, not later with a template that silently stayed valid.
    assert!(
        template.contains(anchor),
        "the built-in template lost {anchor:?}"
    );
    template.replace(
        anchor,
        &format!("{anchor}\n        keepalive_timeout {{{{version}}}};"),
    )
}

fn lb_sidecar_template() -> String {
    lb_sidecar::render::BUILTIN_TEMPLATE.to_string()
}
