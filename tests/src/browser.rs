//! A real headless Chromium driven through WebDriver (Debian's `chromium` and
//! `chromium-driver`), and the dashboard (`coordinator ui`) it looks at. Each test gets its own
//! chromedriver and browser, killed when the test ends.
use crate::daemon::Daemon;
use crate::{binary, free_port, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::time::Duration;

/// How long a page has to show what a test waits for: generous, a loaded two-core machine runs
/// two suites and a browser at once.
pub const SHOW: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    _driver: Daemon,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a laptop-sized window.
    pub async fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port("127.0.0.1");
        let driver = Daemon::start(
            "chromedriver",
            PathBuf::from("/usr/bin/chromedriver"),
            vec![format!("--port={port}").into()],
            dir.path().join("chromedriver.log"),
        );
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        wait_for("chromedriver to answer", SHOW, || async {
            let r = reqwest::get(&status).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        let profile = dir.path().join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1440,1000", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }),
        );
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a WebDriver session with headless Chromium");
        Browser {
            client,
            _driver: driver,
            _dir: dir,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let el = self.client.find(Locator::Css(css)).await.ok()?;
        el.text().await.ok()
    }

    /// Waits until the element matching `css` shows a text for which `ok` holds; returns it.
    pub async fn wait_text(&self, what: &str, css: &str, ok: impl Fn(&str) -> bool) -> String {
        wait_for(what, SHOW, || async {
            self.text(css).await.filter(|t| ok(t))
        })
        .await
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
        el.send_keys(text).await.expect("type");
    }

    /// Saves a screenshot as `target/ui-screenshots/<name>.png` (for the README and for people
    /// reading a failed run).
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = crate::bin_dir()
            .parent()
            .expect("target/")
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// `coordinator ui` on a free loopback port.
pub struct Ui {
    pub url: String,
    pub daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Ui {
    /// Starts the dashboard with `env` (the fleet's `BLUEGREEN_*` settings) and `args` after
    /// `ui`; waits until it answers.
    pub async fn start(env: Vec<(String, String)>, args: &[&str]) -> Ui {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port("127.0.0.1");
        let listen = format!("127.0.0.1:{port}");
        let mut argv: Vec<std::ffi::OsString> = vec!["ui".into(), "--listen".into(), listen.into()];
        argv.extend(args.iter().map(Into::into));
        let daemon = Daemon::start_with_env(
            "coordinator ui",
            binary("coordinator"),
            argv,
            dir.path().join("ui.log"),
            env,
        );
        let url = format!("http://127.0.0.1:{port}");
        let page = format!("{url}/");
        wait_for("the dashboard to answer", SHOW, || async {
            reqwest::get(&page)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        Ui {
            url,
            daemon,
            _dir: dir,
        }
    }
}
