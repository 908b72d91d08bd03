//! A small W3C WebDriver client for browser tests: `chromedriver` started as a child in the
//! test's process group, headless Chromium with a fresh profile, a few commands (navigate,
//! find, click, type, text, execute script, screenshot) over HTTP. Every wait has a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use lifeboat_testkit::{free_loopback_port, require_tool, wait_for_port, Procs};
use serde_json::{json, Value};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    session: String,
    /// Where screenshots go.
    pub shots: PathBuf,
    n: usize,
    started: Instant,
    _profile: tempfile::TempDir,
    _procs: Procs,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; screenshots go to `shots`.
    pub fn start(shots: &Path) -> Browser {
        let driver = require_tool("chromedriver");
        let port = free_loopback_port();
        let mut procs = Procs::new();
        let mut c = Command::new(driver);
        c.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        procs.spawn(c);
        wait_for_port(port, Duration::from_secs(30));
        let profile = tempfile::tempdir().expect("browser profile dir");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("HTTP client");
        let base = format!("http://127.0.0.1:{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display())],
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .expect("new WebDriver session");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        std::fs::create_dir_all(shots).expect("screenshot dir");
        Browser {
            http,
            base,
            session,
            shots: shots.to_path_buf(),
            n: 0,
            started: Instant::now(),
            _profile: profile,
            _procs: procs,
        }
    }

    /// One WebDriver command; the answer's `value`, or the driver's error.
    fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .and_then(|r| r.json())
            .map_err(|e| format!("{path}: {e}"))?;
        let v = r["value"].clone();
        if v.get("error").is_some() {
            return Err(format!("{path}: {}: {}", v["error"], v["message"]));
        }
        Ok(v)
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.cmd(reqwest::Method::POST, path, Some(body))
    }

    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The element matching CSS `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        self.post("/element", json!({"using": "css selector", "value": css}))
            .ok()
            .and_then(|v| v[ELEMENT].as_str().map(str::to_string))
    }

    /// Whether an element matches `css`.
    pub fn exists(&self, css: &str) -> bool {
        self.find(css).is_some()
    }

    /// The visible text of the element matching `css` ("" when there is none).
    pub fn text(&self, css: &str) -> String {
        self.find(css)
            .and_then(|id| {
                self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
                    .ok()
            })
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Clicks the element matching `css`, retrying while it is missing or being replaced.
    pub fn click(&self, css: &str) {
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match self.find(css) {
                Some(id) => match self.post(&format!("/element/{id}/click"), json!({})) {
                    Ok(_) => return,
                    Err(e) => last = e,
                },
                None => last = "no such element".to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot click {css}: {last}\npage: {}", self.text("body"));
    }

    /// Types `text` into the element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self
            .find(css)
            .unwrap_or_else(|| panic!("no {css} to type into: {}", self.text("body")));
        self.post(&format!("/element/{id}/clear"), json!({}))
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Runs `script` in the page (its `return` value).
    pub fn exec(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .unwrap_or_else(|e| panic!("script failed: {e}"))
    }

    /// Waits until the text of `css` contains `want`; returns it.
    pub fn wait_text(&self, css: &str, want: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text(css);
            if t.contains(want) {
                return t;
            }
            if Instant::now() > deadline {
                panic!(
                    "{css} never contained {want:?} within {timeout:?}: {t:?}\nat {}\npage: {}",
                    self.url(),
                    self.text("body")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a screenshot as `NN-name.png`; returns its path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        self.n += 1;
        let v = self
            .cmd(reqwest::Method::GET, "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("screenshot is base64");
        let path = self.shots.join(format!("{:02}-{name}.png", self.n));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!(
            "[{:6.1} s] screenshot {}",
            self.started.elapsed().as_secs_f64(),
            path.display()
        );
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd(reqwest::Method::DELETE, "", None);
    }
}
