//! Many apps on one fleet: one agent per host runs every app its config lists, under one lease.
use bluegreen_tests::artifacts::release;
use bluegreen_tests::fleet::{assert_ok, text, Fleet};
use bluegreen_tests::procs::{active, app_pid_in, get_raw, put_raw, AppEntry, PREFIX};
use bluegreen_tests::{free_port, wait_for};
use proto::agent_api::StatusRequest;
use proto::records::{decode, encode, HealthRecord, HealthState, Ports};
use proto::{Color, Keys};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

async fn health_of(
    client: &etcd_client::Client,
    keys: &Keys,
    host: &str,
    color: Color,
) -> Option<HealthRecord> {
    let key = keys.health(host, color);
    let bytes = get_raw(client, &key).await?;
    Some(decode(&key, &bytes).expect("agents write valid health"))
}

/// host-1 runs shop (deployed with the coordinator, behind an LB, beside host-2) and, from a
/// SIGHUP on, api and web too, without touching shop's processes. api leaves config first: the
/// agent keeps it running and registered until `host remove` marks it leaving. shop leaves in
/// the documented order: the mark takes host-1 out of the LB's upstreams while shop still runs
/// there, then the config change stops it and deletes its keys; no request through the LB fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_runs_several_apps_adds_one_on_sighup_and_retires_one_marked_leaving() {
    let mut fleet = Fleet::start(2, 1).await;
    let client = fleet.client.clone();
    let shop = Keys::new(PREFIX, "shop").unwrap();
    let api = Keys::new(PREFIX, "api").unwrap();
    let spec = fleet.spec("shop", &[]);
    assert_ok(&fleet.deploy(&spec, "v1", &[]).await, "deploy shop v1");
    let live = active(&client).await.expect("active").color;
    let shop_pid = fleet.hosts[0].app_pid(live).expect("shop runs on host-1");
    let single_dir = fleet.hosts[0].state_dir.clone();
    let shop_ports = fleet.hosts[0].ports;
    let shop_entry = |claim: bool| AppEntry {
        name: "shop".into(),
        ports: shop_ports,
        state_dir: claim.then(|| single_dir.clone()),
    };

    // Restarted into [[apps]] without claiming the single-app layout: refused, shop untouched.
    fleet.hosts[0].use_apps(&[shop_entry(false)]);
    fleet.hosts[0].restart();
    let host1 = &mut fleet.hosts[0];
    let end = tokio::time::Instant::now() + WAIT;
    while host1.exit_status().is_none() {
        assert!(
            tokio::time::Instant::now() < end,
            "the agent did not refuse: {}",
            host1.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll again; the deadline is asserted above
    }
    assert!(
        host1.log().contains("from a single-app agent"),
        "{}",
        host1.log()
    );
    assert!(alive(shop_pid), "the refused agent left shop running");

    // Claimed: the same process is adopted.
    let before = get_raw(&client, &shop.host("host-1")).await;
    fleet.hosts[0].use_apps(&[shop_entry(true)]);
    fleet.hosts[0].restart();
    let api_ports = Ports {
        blue: free_port(&fleet.hosts[0].address),
        green: free_port(&fleet.hosts[0].address),
    };
    let web_ports = Ports {
        blue: free_port(&fleet.hosts[0].address),
        green: free_port(&fleet.hosts[0].address),
    };
    let api_entry = AppEntry {
        name: "api".into(),
        ports: api_ports,
        state_dir: None,
    };
    wait_for("host-1's agent back (a new host record)", WAIT, || {
        let (client, key, before) = (&client, shop.host("host-1"), &before);
        async move {
            get_raw(client, &key)
                .await
                .filter(|now| Some(now) != before.as_ref())
        }
    })
    .await;

    // api added with SIGHUP: it starts, shop's process is the same one.
    fleet.hosts[0].use_apps(&[
        shop_entry(true),
        api_entry,
        AppEntry {
            name: "web".into(),
            ports: web_ports,
            state_dir: None,
        },
    ]);
    fleet.hosts[0].sighup();
    let artifact = fleet.app.clone();
    put_raw(
        &client,
        &api.release(Color::Blue),
        &encode(&release("a1", &artifact, &[])),
    )
    .await;
    wait_for("api healthy on host-1", WAIT, || {
        let (client, api) = (&client, &api);
        async move {
            health_of(client, api, "host-1", Color::Blue)
                .await
                .filter(|h| h.version == "a1" && h.state == HealthState::Healthy)
        }
    })
    .await;
    let api_dir = fleet.hosts[0].app_dir("api");
    let api_pid = app_pid_in(&api_dir, Color::Blue).expect("api's pid file in its own directory");
    assert_eq!(
        fleet.hosts[0].app_pid(live),
        Some(shop_pid),
        "shop was restarted"
    );
    assert!(alive(shop_pid));
    let registered = get_raw(&client, &api.host("host-1"))
        .await
        .expect("api's host key");
    let registered: serde_json::Value = serde_json::from_slice(&registered).unwrap();
    assert_eq!(registered["ports"]["blue"], api_ports.blue);

    // The API answers for each app it runs, and asks which one when none is named.
    let mut agent_api = fleet.hosts[0].api().await;
    let status = agent_api
        .status(StatusRequest { app: "api".into() })
        .await
        .expect("api's status")
        .into_inner();
    assert_eq!(status.app, "api");
    assert!(status
        .colors
        .iter()
        .any(|c| c.version == "a1" && c.port == u32::from(api_ports.blue)));
    let unnamed = agent_api
        .status(StatusRequest { app: String::new() })
        .await
        .unwrap_err();
    assert!(
        unnamed.message().contains("api, shop"),
        "{}",
        unnamed.message()
    );
    let metrics = reqwest::get(fleet.hosts[0].metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("app=\"api\"") && metrics.contains("app=\"shop\""),
        "{metrics}"
    );

    // api leaves host-1 config first: nothing happens until it is marked leaving. (web, an
    // app with no release yet, keeps the agent's app list from becoming empty.)
    let web_entry = || AppEntry {
        name: "web".into(),
        ports: web_ports,
        state_dir: None,
    };
    fleet.hosts[0].use_apps(&[shop_entry(true), web_entry()]);
    fleet.hosts[0].sighup();
    wait_for("the agent to say api is not marked leaving", WAIT, || {
        let log = fleet.hosts[0].log();
        async move { log.contains("is not marked leaving").then_some(()) }
    })
    .await;
    assert!(alive(api_pid), "api stopped before it was marked leaving");
    assert!(get_raw(&client, &api.host("host-1")).await.is_some());
    // Listed again before the mark: the retirement is called off; dropped again: it waits anew.
    let api_again = AppEntry {
        name: "api".into(),
        ports: api_ports,
        state_dir: None,
    };
    fleet.hosts[0].use_apps(&[shop_entry(true), api_again, web_entry()]);
    fleet.hosts[0].sighup();
    wait_for("the agent to keep api", WAIT, || {
        let log = fleet.hosts[0].log();
        async move {
            log.contains("listed again before it was marked leaving")
                .then_some(())
        }
    })
    .await;
    fleet.hosts[0].use_apps(&[shop_entry(true), web_entry()]);
    fleet.hosts[0].sighup();
    wait_for(
        "the agent to say again that api is not marked leaving",
        WAIT,
        || {
            let log = fleet.hosts[0].log();
            async move { (log.matches("is not marked leaving").count() == 2).then_some(()) }
        },
    )
    .await;
    assert!(alive(api_pid));
    let out = fleet
        .run(&["--app", "api", "host", "remove", "host-1", "--yes"])
        .await;
    assert_ok(&out, "host remove of api's live host");
    wait_for_retired(&client, &api, api_pid).await;

    // shop leaves host-1 in the documented order: marked first. The LB stops routing to host-1
    // at once, while its agent still runs shop; then the config change retires it.
    let stop = Arc::new(AtomicBool::new(false));
    let load = fleet.load_every_lb(&stop);
    let out = fleet.run(&["host", "remove", "host-1", "--yes"]).await;
    assert_ok(&out, "host remove of shop's live host");
    assert!(text(&out).contains("leaving shop"), "{}", text(&out));
    let host2 = format!(
        "{}:{}",
        fleet.hosts[1].address,
        fleet.hosts[1].ports.of(live)
    );
    bluegreen_tests::lb::wait_upstreams(&client, "lb-0", live, std::slice::from_ref(&host2)).await;
    assert!(alive(shop_pid), "the mark alone stopped shop");
    assert!(get_raw(&client, &shop.host("host-1")).await.is_some());
    let listed = text(&fleet.run(&["host", "list"]).await);
    assert!(
        listed.contains("host-1 ")
            && listed.contains("leaving this app")
            && listed.contains("host-2"),
        "{listed}"
    );
    fleet.hosts[0].use_apps(&[web_entry()]);
    fleet.hosts[0].sighup();
    wait_for_retired(&client, &shop, shop_pid).await;
    stop.store(true, Ordering::Relaxed);
    for report in load {
        let report = report.await.unwrap();
        assert!(report.ok > 0, "no load ran");
        report.assert_none_failed();
    }
    // web is still registered; the last host serving shop cannot leave.
    let web = Keys::new(PREFIX, "web").unwrap();
    assert!(get_raw(&client, &web.host("host-1")).await.is_some());
    let out = fleet.run(&["host", "remove", "host-2", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("the only host serving"),
        "{}",
        text(&out)
    );

    // web marked leaving, then its agent gone for good before retiring it: a second `host
    // remove` forgets the host and the mark instead of waiting for an agent that never comes.
    let remove_web = ["--app", "web", "host", "remove", "host-1", "--yes"];
    assert_ok(&fleet.run(&remove_web).await, "web marked leaving");
    let again = fleet.run(&remove_web).await;
    assert!(text(&again).contains("already leaving"), "{}", text(&again));
    fleet.hosts[0].kill9();
    wait_for("host-1's lease on web to expire", WAIT, || {
        let (client, key) = (&client, web.host("host-1"));
        async move { get_raw(client, &key).await.is_none().then_some(()) }
    })
    .await;
    let forgotten = fleet.run(&remove_web).await;
    assert_ok(&forgotten, "web's leaving host forgotten");
    assert!(
        text(&forgotten).contains("forgotten"),
        "{}",
        text(&forgotten)
    );
    for key in [web.host_member("host-1"), web.host_leaving("host-1")] {
        assert!(get_raw(&client, &key).await.is_none(), "{key} left behind");
    }
}

/// Waits until `app` is retired from host-1: its process gone, its keys for host-1 deleted.
async fn wait_for_retired(client: &etcd_client::Client, app: &Keys, pid: u32) {
    wait_for(
        &format!("{} retired from host-1", app.app()),
        WAIT,
        || async move {
            let gone = [
                app.host("host-1"),
                app.host_member("host-1"),
                app.host_leaving("host-1"),
                app.health("host-1", Color::Blue),
                app.health("host-1", Color::Green),
            ];
            for key in gone {
                if get_raw(client, &key).await.is_some() {
                    return None;
                }
            }
            (!alive(pid)).then_some(())
        },
    )
    .await;
}

/// GET `url` as `host`: the status, the served color header and the body's version.
async fn get_as(url: &str, host: &str) -> (u16, Option<String>, Option<String>) {
    let resp = reqwest::Client::new()
        .get(url)
        .header(reqwest::header::HOST, host)
        .send()
        .await
        .expect("the LB answers");
    let status = resp.status().as_u16();
    let color = resp
        .headers()
        .get("x-bluegreen-color")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Option<serde_json::Value> = resp.json().await.ok();
    let version = body.and_then(|b| b["version"].as_str().map(str::to_string));
    (status, color, version)
}

/// Two apps behind one nginx listener, routed by host name: every host's one agent runs both,
/// each app's sidecar renders its server names into its own include file, the coordinator
/// verifies each switch asking as the app's host name, a host name no app claims gets nginx's
/// default server (404, never an app), and both apps deploy at the same time, twice, under load
/// for each host name, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_share_one_listener_routed_by_host_name() {
    let setup = bluegreen_tests::fleet::Setup {
        etcd: bluegreen_tests::Etcd::start().await,
        agent_extra: &|_| String::new(),
        sidecar_extra: &|_, _| "server_names = [\"shop.test\"]".into(),
        coordinator_env: Vec::new(),
    };
    let mut fleet = Fleet::start_setup(2, 1, setup).await;
    let client = fleet.client.clone();
    let api = Keys::new(PREFIX, "api").unwrap();
    // nginx includes every app's file, and its default server answers the host names no app
    // claims (on Debian, the default site does).
    let lb = &fleet.lbs[0];
    lb.include_every_app();
    std::fs::write(
        lb.dir.join("conf.d").join("00-default.conf"),
        format!(
            "server {{ listen {}:{} default_server; return 404; }}\n",
            lb.address, lb.listen
        ),
    )
    .unwrap();
    run_shop_and_api_on_every_host(&mut fleet, &api).await;
    let _api_sidecar = bluegreen_tests::nginx::SidecarProc::start_app(
        &fleet.etcd,
        "lb-0",
        &fleet.lbs[0],
        "api",
        "server_names = [\"api.test\"]",
    );
    wait_for("api's sidecar registered", WAIT, || {
        let (client, key) = (&client, api.lb("lb-0"));
        async move { get_raw(client, &key).await }
    })
    .await;

    deploy_both_twice_under_load(&fleet, &fleet.lbs[0].url("/api/v1/status")).await;
}

/// The certificate (PEM) the server at 127.0.0.1:`port` presents for the SNI `name`, if any.
fn presented_certificate(port: u16, name: &str) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            name,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start;
    Some(text[start..end].trim().to_string())
}

/// The first certificate of a PEM file, as [`presented_certificate`] shows it.
fn certificate_in(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    text[start..end].trim().to_string()
}

/// An app with `listen_tls` and `[tls]` is served over HTTPS with its certificate, chosen by
/// SNI on its host name, while deploys verify over plain HTTP as its host name; replacing the
/// certificate's files (a renewal) gets them served without any deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_served_over_https_by_its_host_name_and_a_renewed_certificate_is_loaded() {
    let pki = bluegreen_tests::pki::Pki::new();
    let first = pki.site("shop-1", "shop.test");
    let installed = tempfile::tempdir().unwrap();
    let (cert, key) = (
        installed.path().join("shop.pem"),
        installed.path().join("shop.key"),
    );
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let tls_port = free_port("127.0.0.1");
    let extra = format!(
        "server_names = [\"shop.test\"]\nlisten_tls = \"127.0.0.1:{tls_port}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let setup = bluegreen_tests::fleet::Setup {
        etcd: bluegreen_tests::Etcd::start().await,
        agent_extra: &|_| String::new(),
        sidecar_extra: &|_, _| extra.clone(),
        coordinator_env: Vec::new(),
    };
    let fleet = Fleet::start_setup(1, 1, setup).await;
    assert_ok(
        &fleet.deploy(&fleet.spec("shop", &[]), "v1", &[]).await,
        "deploy v1",
    );
    let live = active(&fleet.client).await.expect("active").color;

    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap(),
        )
        .resolve("shop.test", ([127, 0, 0, 1], tls_port).into())
        .build()
        .unwrap();
    let resp = https
        .get(format!("https://shop.test:{tls_port}/api/v1/status"))
        .send()
        .await
        .expect("HTTPS through the LB, certificate checked");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["x-bluegreen-color"], live.as_str());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["version"], "v1");
    assert_eq!(
        presented_certificate(tls_port, "shop.test"),
        Some(certificate_in(&cert))
    );

    // Renewed in place, as certbot does: served without a deploy.
    let renewed = pki.site("shop-2", "shop.test");
    let staged = installed.path().join("new.pem");
    std::fs::copy(&renewed.key, installed.path().join("new.key")).unwrap();
    std::fs::copy(&renewed.cert, &staged).unwrap();
    std::fs::rename(installed.path().join("new.key"), &key).unwrap();
    std::fs::rename(&staged, &cert).unwrap();
    let want = certificate_in(&cert);
    wait_for("the renewed certificate served", WAIT, || {
        let served = presented_certificate(tls_port, "shop.test");
        let ok = served.as_deref() == Some(want.as_str());
        async move { ok.then_some(()) }
    })
    .await;
}

/// One sidecar serves both apps of an LB (`[[apps]]`): each app's server names in its own
/// include file on the shared listeners, the sidecar's own default server answering 404 for any
/// other host name, both apps' keys under the sidecar's one lease, one `/metrics` with an `app`
/// label. Both apps deploy at the same time, twice, under load for each host name, with no
/// failed request. A host that dies changes both apps at once: in reload mode both changes go
/// into one reload; in Lua mode neither reloads nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sidecar_serves_two_apps_by_host_name_under_one_lease() {
    two_apps_under_one_lease("lua").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sidecar_serves_two_apps_by_host_name_under_one_lease_in_reload_mode() {
    two_apps_under_one_lease("reload").await;
}

async fn two_apps_under_one_lease(mode: &'static str) {
    let setup = bluegreen_tests::fleet::Setup {
        etcd: bluegreen_tests::Etcd::start().await,
        agent_extra: &|_| String::new(),
        sidecar_extra: &|_, _| String::new(),
        coordinator_env: Vec::new(),
    };
    let mut fleet = Fleet::start_setup(2, 0, setup).await;
    let client = fleet.client.clone();
    let shop = Keys::new(PREFIX, "shop").unwrap();
    let api = Keys::new(PREFIX, "api").unwrap();
    run_shop_and_api_on_every_host(&mut fleet, &api).await;
    let nginx = bluegreen_tests::nginx::Nginx::start().in_mode(mode);
    nginx.include_every_app();
    let sidecar = bluegreen_tests::nginx::SidecarProc::start_apps(
        &fleet.etcd,
        "lb-0",
        &nginx,
        &[("shop", &["shop.test"]), ("api", &["api.test"])],
    );
    for keys in [&shop, &api] {
        wait_for(
            &format!("{}'s registration on lb-0", keys.app()),
            WAIT,
            || {
                let (client, key) = (&client, keys.lb("lb-0"));
                async move { get_raw(client, &key).await }
            },
        )
        .await;
    }
    // One lease holds both apps' liveness.
    let mut c = client.clone();
    let mut leases = Vec::new();
    for keys in [&shop, &api] {
        let resp = c.get(keys.lb_alive("lb-0"), None).await.unwrap();
        leases.push(resp.kvs().first().expect("lb-alive").lease());
    }
    assert!(leases[0] != 0 && leases[0] == leases[1], "{leases:?}");

    deploy_both_twice_under_load(&fleet, &nginx.url("/api/v1/status")).await;
    let metrics = reqwest::get(sidecar.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metrics
            .matches("# TYPE bluegreen_lb_reloads counter")
            .count(),
        1,
        "{metrics}"
    );
    for app in ["shop", "api"] {
        assert!(
            metrics.contains(&format!("bluegreen_lb_reloads_total{{app=\"{app}\"}}")),
            "{metrics}"
        );
    }

    // host-2's agent dies: its one lease takes both apps' keys for host-2 in one revision, and
    // both apps' changes go into one reload (reload mode) or none (Lua mode).
    let signals = "bluegreen_lb_nginx_reload_signals{app=\"shop\"}";
    let before = sidecar.metric(signals).await.expect("the signal count");
    let live = active(&client).await.expect("active").color;
    let host2 = fleet.hosts[1].address.clone();
    fleet.hosts[1].kill9();
    let mut applied = Vec::new();
    for keys in [&shop, &api] {
        let revision = wait_for(
            &format!("lb-0 to drop host-2 from {}", keys.app()),
            WAIT,
            || {
                let (client, key, host2) = (&client, keys.lb_upstreams("lb-0"), &host2);
                async move {
                    let bytes = get_raw(client, &key).await?;
                    let lists: proto::records::LbUpstreamsRecord = decode(&key, &bytes).ok()?;
                    let live_list = lists.upstreams.get(&live)?;
                    if live_list
                        .iter()
                        .any(|a| a.starts_with(&format!("{host2}:")))
                    {
                        return None;
                    }
                    let ack = get_raw(client, &keys.lb("lb-0")).await?;
                    let ack: proto::records::LbRecord = decode(&keys.lb("lb-0"), &ack).ok()?;
                    Some(ack.applied_revision)
                }
            },
        )
        .await;
        applied.push(revision);
    }
    assert_eq!(
        applied[0], applied[1],
        "both apps applied the same revision"
    );
    let after = sidecar.metric(signals).await.expect("the signal count");
    if mode == "lua" {
        assert_eq!(
            after - before,
            0.0,
            "Lua mode reloaded nginx for a host's health"
        );
    } else {
        assert_eq!(after - before, 1.0, "one reload for both apps' changes");
    }
}

/// shop and api deploy at the same time, twice, through the LB at `url` routed by host name: the
/// first time each host name gets its own app's version and an unclaimed one gets 404 and no
/// app; the second time under load for each host name, with no failed request.
async fn deploy_both_twice_under_load(fleet: &Fleet, url: &str) {
    let shop_spec = fleet.spec("shop", &[]);
    let api_spec = fleet.demo_spec_as("api");
    let api_deploy = |version: &str| {
        let mut command = fleet.deploy_command(&api_spec, version, &[]);
        command.env("BLUEGREEN_APP", "api");
        command.output()
    };
    let (shop_v1, api_a1) = tokio::join!(fleet.deploy(&shop_spec, "v1", &[]), api_deploy("a1"));
    assert_ok(&shop_v1, "shop v1");
    assert_ok(&api_a1.unwrap(), "api a1");
    let (status, _, version) = get_as(url, "shop.test").await;
    assert_eq!((status, version.as_deref()), (200, Some("v1")));
    let (status, _, version) = get_as(url, "api.test").await;
    assert_eq!((status, version.as_deref()), (200, Some("a1")));
    let (status, color, _) = get_as(url, "nobody.test").await;
    assert_eq!(
        (status, color),
        (404, None),
        "an unclaimed host name reached an app"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = ["shop.test", "api.test"]
        .into_iter()
        .map(|host| {
            bluegreen_tests::load::spawn_as(url.to_string(), Some(host.into()), false, stop.clone())
        })
        .collect();
    let (shop_v2, api_a2) = tokio::join!(fleet.deploy(&shop_spec, "v2", &[]), api_deploy("a2"));
    assert_ok(&shop_v2, "shop v2");
    assert_ok(&api_a2.unwrap(), "api a2");
    stop.store(true, Ordering::Relaxed);
    for load in loads {
        let report = load.await.unwrap();
        assert!(report.ok > 0, "no load ran");
        report.assert_none_failed();
    }
    let (_, _, version) = get_as(url, "shop.test").await;
    assert_eq!(version.as_deref(), Some("v2"));
    let (_, _, version) = get_as(url, "api.test").await;
    assert_eq!(version.as_deref(), Some("a2"));
}

/// Every host's agent runs shop (adopting the single-app layout) and api, each on its own ports;
/// returns once api is registered on every host.
async fn run_shop_and_api_on_every_host(fleet: &mut Fleet, api: &Keys) {
    for host in &mut fleet.hosts {
        let api_ports = Ports {
            blue: free_port(&host.address),
            green: free_port(&host.address),
        };
        host.use_apps(&[
            AppEntry {
                name: "shop".into(),
                ports: host.ports,
                state_dir: Some(host.state_dir.clone()),
            },
            AppEntry {
                name: "api".into(),
                ports: api_ports,
                state_dir: None,
            },
        ]);
        host.restart();
    }
    for host in fleet.hosts.iter().map(|h| h.host.clone()) {
        wait_for(&format!("api registered on {host}"), WAIT, || {
            let (client, key) = (&fleet.client, api.host(&host));
            async move { get_raw(client, &key).await }
        })
        .await;
    }
}
