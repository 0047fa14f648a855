//! The dashboard (`/ui`) in a real headless Chromium: Debian's `chromium`, driven over WebDriver
//! by `chromedriver` (both installed by `.ci/run`), with fantoccini as the client. Each test
//! starts the real server on loopback and a browser of its own, acts as a user would (clicks,
//! typing), checks what the page shows against the API, and saves screenshots under
//! `target/ui-screenshots/`.
//!
//! Without Chromium the tests fail under CI (`CI` set) and are skipped, with a note, elsewhere.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use mailroom::config::RouteConfig;
use serde_json::{json, Value};

use crate::common::{config, eventually, free_port, start, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the page may take to reflect a change (it polls once a second).
pub(crate) const LIVE: Duration = Duration::from_secs(2);
/// Deadline for everything else the page does (loading, a click's answer).
const SOON: Duration = Duration::from_secs(20);

/// A headless Chromium with its chromedriver, in a process group of their own (so both go when
/// the test ends, however it ends) and with a fresh profile.
pub(crate) struct Browser {
    client: Client,
    driver: Driver,
    _profile: tempfile::TempDir,
}

/// chromedriver, and the browser it started: killed (their whole process group) on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // `--`: without it, procps' kill reads `-PGID` as an option.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// chromedriver's log of the browser console (`goog:loggingPrefs`).
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

impl Browser {
    /// A browser with a window of `width`×`height`, or `None` (skipped) when Chromium is not
    /// installed and this is not CI.
    pub(crate) async fn start(width: u32, height: u32) -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
            .into_iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "{} not installed (apt-get install chromium chromium-driver; .ci/run does)",
                missing.join(" and ")
            );
            if std::env::var_os("CI").is_some() {
                panic!("the dashboard tests need a browser: {why}");
            }
            eprintln!("skipped: {why}");
            return None;
        }
        let port = free_port();
        let driver = Driver({
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts")
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + SOON;
        let mut browser = None;
        let mut last = String::new();
        while Instant::now() < deadline {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    browser = Some(client);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        let client =
            browser.unwrap_or_else(|| panic!("no WebDriver session within {SOON:?}: {last}"));
        // Headless Chromium takes the window size from the flag; say it again for good measure.
        let _ = client.set_window_size(width, height).await;
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    async fn open(&self, s: &TestServer, path: &str) {
        self.goto(&format!("{}{path}", s.base)).await;
    }

    /// Loads `url` (a server this test started some other way, such as a cluster node).
    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Entries of the browser console at level SEVERE (errors), as text.
    pub(crate) async fn console_errors(&self) -> Vec<String> {
        let log = self.client.issue_cmd(ConsoleLog).await.unwrap();
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub(crate) async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }

    /// The text of the first element matching `css` (empty while there is none).
    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until `css`'s text satisfies `ok`; panics with what it showed last.
    pub(crate) async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + within;
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            if Instant::now() >= end {
                panic!("{css} showed {t:?} after {within:?}");
            }
            actix_rt::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn is_displayed(&self, css: &str) -> bool {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.is_displayed().await.unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(SOON)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let e = self.client.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Saves a screenshot as `target/ui-screenshots/<name>.png`.
    pub(crate) async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
        drop(self.driver);
    }
}

/// The test server's config with a route that always fails after one retry (`flaky`), beside
/// the built-in routes.
fn with_flaky() -> mailroom::config::Config {
    let mut c = config();
    let mut routes: BTreeMap<String, RouteConfig> = ["echo", "sleep", "primes"]
        .into_iter()
        .map(|k| (k.to_owned(), RouteConfig::default()))
        .collect();
    routes.insert(
        "flaky".into(),
        RouteConfig {
            processor: Some("chaos".into()),
            retries: 1,
            backoff_ms: 1,
            ..Default::default()
        },
    );
    c.routes = routes;
    c
}

/// Runs a browser test on an actix system of its own, one at a time with the other tests that
/// load the machine (`heavy`): its waits for what the page shows are short.
fn heavy_test(test: impl std::future::Future<Output = ()>) {
    let _heavy = crate::common::heavy();
    actix_rt::System::new().block_on(test);
}

/// A browser on the live dashboard of a server with the `flaky` route (`None`: no browser).
async fn live_dashboard() -> Option<(Browser, TestServer)> {
    let b = Browser::start(1400, 1000).await?;
    let s = start(with_flaky()).await;
    b.open(&s, "/ui").await;
    b.wait_text("#conn", SOON, |t| t == "live").await;
    Some((b, s))
}

/// Submits a `flaky` message that fails every attempt and waits until it is dead.
async fn dead_letter(s: &TestServer, message: &str) -> String {
    let r = s
        .post(
            "/v1/messages?wait=true",
            json!({"kind": "flaky", "payload": {"mode": "error", "message": message}}),
        )
        .await;
    assert_eq!(r.body["status"], "dead", "{}", r.text);
    r.body["id"].as_str().unwrap().to_owned()
}

#[test]
fn the_page_loads_with_no_errors_and_counts_a_message_within_two_seconds() {
    heavy_test(async {
        let Some((b, s)) = live_dashboard().await else {
            return;
        };
        b.wait_text("#total-accepted", SOON, |t| t == "0").await;
        assert_eq!(b.text("#storage-pill").await, "journal ok");
        let kinds = b
            .js("return [...document.querySelectorAll('#routes-body tr')].map(r => r.dataset.kind)")
            .await;
        assert_eq!(kinds, json!(["echo", "flaky", "primes", "sleep"]));
        // Nothing came from anywhere but this server (it works offline).
        let foreign = b
            .js(&format!(
                "return performance.getEntriesByType('resource').map(e => e.name)\
             .filter(n => !n.startsWith('{}/'))",
                s.base
            ))
            .await;
        assert_eq!(foreign, json!([]));

        let r = s
            .post(
                "/v1/messages?wait=true",
                json!({"kind": "echo", "payload": {"n": 1}}),
            )
            .await;
        assert_eq!(r.body["status"], "completed");
        let answered = Instant::now();
        b.wait_text("#total-completed", LIVE, |t| t == "1").await;
        b.wait_text("#total-accepted", LIVE, |t| t == "1").await;
        b.wait_text("tr[data-kind=echo] td.pct", LIVE, |t| t != "– / –")
            .await;
        eprintln!(
            "the page showed the message {:?} after its answer",
            answered.elapsed()
        );

        // A delayed message shows as delayed, in its route and in the totals.
        let r = s
            .post(
                "/v1/messages",
                json!({"kind": "sleep", "payload": {"ms": 1}, "delay_ms": 600000}),
            )
            .await;
        assert_eq!(r.status, 202);
        b.wait_text("tr[data-kind=sleep] td.d", LIVE, |t| t == "1")
            .await;
        b.wait_text("#total-in-flight-detail", LIVE, |t| {
            t == "0 queued · 1 delayed · 0 running"
        })
        .await;
        b.screenshot("dashboard").await;
        b.assert_no_console_errors().await;
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn a_dead_letter_shows_up_and_its_retry_button_replays_it() {
    heavy_test(async {
        let Some((b, s)) = live_dashboard().await else {
            return;
        };
        let id = dead_letter(&s, "upstream said no").await;
        let item = format!("li.dead-item[data-id='{id}']");
        b.wait_text(&format!("{item} .dead-error"), LIVE, |t| {
            t == "error upstream said no"
        })
        .await;
        assert_eq!(b.text(&format!("{item} .kind")).await, "flaky");
        assert!(b
            .text(&format!("{item} .dead-meta"))
            .await
            .starts_with("2 attempts"));
        // The payload, on demand.
        assert!(!b.is_displayed(&format!("{item} pre.payload")).await);
        b.click(&format!("{item} button[aria-expanded]")).await;
        let payload = b
            .wait_text(&format!("{item} pre.payload"), SOON, |t| !t.is_empty())
            .await;
        let payload: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            payload,
            json!({"mode": "error", "message": "upstream said no"})
        );

        b.click(&format!("{item} button.retry")).await;
        let new_id = b
            .wait_text("#dead-status a.new-id", SOON, |t| t.len() == 26)
            .await;
        assert_ne!(new_id, id);
        let replay = s.get(&format!("/v1/messages/{new_id}?wait_ms=10000")).await;
        assert_eq!(replay.status, 200, "{}", replay.text);
        assert_eq!(replay.body["replay_of"], id.as_str());
        // The replay fails again (the route always fails) and becomes a dead letter of its own; the
        // original leaves the list.
        assert_eq!(replay.body["status"], "dead");
        let listed = s.get("/v1/dead-letters").await;
        let ids: Vec<&str> = listed.body["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [new_id.as_str()]);
        b.wait_text(
            &format!("li.dead-item[data-id='{new_id}'] .dead-meta"),
            LIVE,
            |t| t.ends_with(&format!("replay of {id}")),
        )
        .await;
        assert!(!b.is_displayed(&item).await);

        // A payload opened stays open when more dead letters arrive and the list reloads.
        let replayed = format!("li.dead-item[data-id='{new_id}']");
        b.click(&format!("{replayed} button[aria-expanded]")).await;
        b.wait_text(&format!("{replayed} pre.payload"), SOON, |t| !t.is_empty())
            .await;

        // Retry every dead letter of a kind.
        let more = [
            dead_letter(&s, "second").await,
            dead_letter(&s, "third").await,
        ];
        b.wait_text("#dead-count", LIVE, |t| t == "(3)").await;
        b.wait_text(
            &format!("li.dead-item[data-id='{}'] .dead-error", more[1]),
            SOON,
            |t| t == "error third",
        )
        .await;
        assert!(
            b.is_displayed(&format!("{replayed} pre.payload")).await,
            "the list's reload closed the open payload"
        );
        b.click("#retry-all").await;
        b.wait_text("#dead-status", SOON, |t| {
            t == "Retried 3 dead letters of flaky."
        })
        .await;
        for old in more.iter().chain([&new_id]) {
            assert_eq!(
                s.get(&format!("/v1/dead-letters/{old}")).await.status,
                404,
                "{old} was replayed"
            );
        }
        b.screenshot("dead-letters").await;
        b.assert_no_console_errors().await;
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn ages_are_counted_on_the_servers_clock_and_move_on() {
    heavy_test(async {
        let Some((b, s)) = live_dashboard().await else {
            return;
        };
        let id = dead_letter(&s, "aged").await;
        let when = format!("li.dead-item[data-id='{id}'] .when");
        b.wait_text(&when, LIVE, |t| t.ends_with(" s ago")).await;
        // This browser's clock runs an hour ahead of the server's: ages and the uptime go by the
        // server's.
        b.js("const real = Date.now.bind(Date); Date.now = () => real() + 3600000;")
            .await;
        // The list is not reloaded (it has not changed), yet the age moves on.
        let seconds = |t: &str| t.strip_suffix(" s ago").and_then(|n| n.parse::<u64>().ok());
        let shown = b
            .wait_text(&when, SOON, |t| seconds(t).is_some_and(|n| n >= 2))
            .await;
        assert!(seconds(&shown).is_some_and(|n| n < 60), "{shown}");
        // The uptime too: minutes at most (an hour's skew would show hours).
        let meta = b.text("#meta").await;
        let up = meta.rsplit(" · up ").next().unwrap_or_default();
        assert!(
            up.ends_with(" s") || (up.ends_with(" min") && !up.contains(" h ")),
            "the uptime is this process's: {meta}"
        );
        b.assert_no_console_errors().await;
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn a_new_lookup_lets_go_of_the_last_ones_long_poll() {
    heavy_test(async {
        let Some((b, s)) = live_dashboard().await else {
            return;
        };
        // Running messages: looking one up long-polls until it finishes.
        let mut ids = Vec::new();
        for _ in 0..8 {
            let r = s
                .post(
                    "/v1/messages",
                    json!({"kind": "sleep", "payload": {"ms": 60000}}),
                )
                .await;
            ids.push(r.body["id"].as_str().unwrap().to_owned());
        }
        // One after another, as a user clicking through them. A browser opens six connections to
        // one server: were the earlier long-polls kept, the seventh lookup would wait for one.
        for id in &ids {
            b.fill("#lookup-id", id).await;
            b.click("#lookup-form button").await;
            // Its answer comes at once (the earlier long-polls, 20 s each, would hold it back).
            b.wait_text("#message code.id", Duration::from_secs(5), |t| t == id)
                .await;
            b.wait_text("#message .badge", SOON, |t| t == "running")
                .await;
        }
        // The lookups let go cleanly: no error shown, none logged.
        assert!(b.text("#message .error").await.is_empty());
        b.assert_no_console_errors().await;
        // And the page's own polling goes on.
        let accepted = b
            .wait_text("#total-accepted", Duration::from_secs(5), |t| t == "8")
            .await;
        assert_eq!(accepted, "8");
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn the_submit_form_submits_and_the_lookup_follows_the_message() {
    heavy_test(async {
        let Some((b, s)) = live_dashboard().await else {
            return;
        };
        // The kinds come from the routes; the payload is suggested from the kind's schema.
        let options = b
            .js("return [...document.querySelectorAll('#submit-kind option')].map(o => o.value)")
            .await;
        assert_eq!(options, json!(["echo", "flaky", "primes", "sleep"]));
        b.client
            .find(Locator::Css("#submit-kind"))
            .await
            .unwrap()
            .select_by_value("sleep")
            .await
            .unwrap();
        let suggested = b
            .js("return document.getElementById('submit-payload').value")
            .await;
        let suggested: Value = serde_json::from_str(suggested.as_str().unwrap()).unwrap();
        assert_eq!(suggested, json!({"ms": 0}));

        // Invalid JSON is refused in the page, and nothing is sent.
        b.fill("#submit-payload", "{\"ms\": ").await;
        b.click("#submit-button").await;
        b.wait_text("#submit-status", SOON, |t| {
            t.starts_with("The payload is not valid JSON")
        })
        .await;
        assert_eq!(s.get("/v1/overview").await.body["totals"]["accepted"], 0);

        // A payload the processor refuses: the server's reason is shown.
        b.fill("#submit-payload", "{\"ms\": -5}").await;
        b.click("#submit-button").await;
        b.wait_text("#submit-status", SOON, |t| t.starts_with("Refused (422)"))
            .await;

        b.client
            .find(Locator::Css("#submit-kind"))
            .await
            .unwrap()
            .select_by_value("echo")
            .await
            .unwrap();
        b.fill("#submit-payload", r#"{"hello": "dashboard"}"#).await;
        b.click("#submit-button").await;
        let id = b
            .wait_text("#submit-status a.submitted-id", SOON, |t| t.len() == 26)
            .await;
        b.wait_text("#message .badge", SOON, |t| t == "completed")
            .await;
        let shown: Value = serde_json::from_str(&b.text("#message pre.result").await).unwrap();
        assert_eq!(shown, json!({"hello": "dashboard"}));
        let outcome = s.get(&format!("/v1/messages/{id}")).await;
        assert_eq!(outcome.body["status"], "completed");
        assert_eq!(outcome.body["result"], json!({"hello": "dashboard"}));
        let timeline = b.text("#message ol.timeline").await;
        assert!(
            timeline.contains("Accepted") && timeline.contains("Finished completed"),
            "{timeline}"
        );

        // A delayed message, followed live, then cancelled from the page.
        b.fill("#submit-delay", "600000").await;
        b.click("#submit-button").await;
        b.wait_text("#message .badge", SOON, |t| t == "delayed")
            .await;
        let delayed = b.text("#message code.id").await;
        b.click("#message button.quiet").await;
        b.wait_text("#message .badge", SOON, |t| t == "cancelled")
            .await;
        assert_eq!(
            s.get(&format!("/v1/messages/{delayed}")).await.body["status"],
            "cancelled"
        );

        // Looking up by id (here the first message), as typed.
        b.fill("#lookup-id", &id).await;
        b.click("#lookup-form button").await;
        b.wait_text("#message code.id", SOON, |t| t == id).await;
        b.screenshot("submit-and-lookup").await;
        // The one console error is the refused payload's 422 (Chromium logs every failed request).
        let errors = b.console_errors().await;
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains("/v1/messages") && errors[0].contains("422"),
            "{errors:#?}"
        );
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn with_tokens_the_page_works_only_after_the_token_is_entered() {
    heavy_test(async {
        let Some(b) = Browser::start(1200, 900).await else {
            return;
        };
        let mut c = with_flaky();
        c.server.tokens = vec!["s3cret".into()];
        let s = start(c).await;
        b.open(&s, "/ui").await;
        b.wait_text("#login-title", SOON, |t| {
            t == "This server asks for a token"
        })
        .await;
        assert!(!b.is_displayed("#app").await);
        assert_eq!(s.get("/v1/overview").await.status, 401);
        b.fill("#token", "wrong").await;
        b.click("#login-form button").await;
        b.wait_text("#login-error", SOON, |t| t == "That token is not accepted.")
            .await;
        assert!(!b.is_displayed("#app").await);
        b.fill("#token", "s3cret").await;
        b.click("#login-form button").await;
        b.wait_text("#total-accepted", SOON, |t| t == "0").await;
        assert!(!b.is_displayed("#login").await);
        // Live with the token: a message shows up.
        let r = s
            .request(
                "POST",
                "/v1/messages?wait=true",
                Some((
                    "application/json",
                    json!({"kind": "echo", "payload": 1})
                        .to_string()
                        .into_bytes(),
                )),
                Some("s3cret"),
            )
            .await;
        assert_eq!(r.body["status"], "completed");
        b.wait_text("#total-completed", LIVE, |t| t == "1").await;
        // The only console errors are the wrong token's 401.
        let errors = b.console_errors().await;
        assert!(
            errors.iter().all(|e| e.contains("401")),
            "console errors: {errors:#?}"
        );
        assert_eq!(errors.len(), 1, "{errors:#?}");
        // "Forget token" asks again.
        b.click("#sign-out").await;
        assert!(b.is_displayed("#login").await);
        assert!(!b.is_displayed("#app").await);
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn at_phone_width_nothing_overflows_and_every_control_has_a_label() {
    heavy_test(async {
        let Some(b) = Browser::start(390, 844).await else {
            return;
        };
        let s = start(with_flaky()).await;
        dead_letter(&s, "shown on a phone").await;
        b.open(&s, "/ui").await;
        b.wait_text("#total-dead", SOON, |t| t == "1").await;
        b.wait_text("#dead-list .dead-error", SOON, |t| {
            t.ends_with("shown on a phone")
        })
        .await;
        let width = b
            .js("return [document.documentElement.scrollWidth, window.innerWidth]")
            .await;
        assert!(
            width[0].as_u64() <= width[1].as_u64(),
            "the page is wider than the screen: {width}"
        );
        // The routes table turns into cards: each cell says what it is.
        let display = b
            .js("return getComputedStyle(document.querySelector('#routes-body tr')).display")
            .await;
        assert_eq!(display, "block");
        let unlabelled = b
        .js(r#"return [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !e.labels?.length && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML)"#)
        .await;
        assert_eq!(unlabelled, json!([]));
        b.screenshot("phone").await;
        b.assert_no_console_errors().await;
        b.close().await;
        s.stop().await;
    });
}

#[test]
fn the_overview_adds_up_and_keeps_its_history_bounded() {
    heavy_test(async {
        let s = start(with_flaky()).await;
        let seq = || async {
            s.get("/v1/overview").await.body["history_seq"]
                .as_u64()
                .unwrap()
        };
        // The first sample is taken at start: whatever finishes after it is in the history.
        assert!(eventually(SOON, || async { seq().await >= 1 }).await);
        for i in 0..3 {
            let r = s
                .post(
                    "/v1/messages?wait=true",
                    json!({"kind": "echo", "payload": i}),
                )
                .await;
            assert_eq!(r.body["status"], "completed");
        }
        dead_letter(&s, "counted").await;
        // A sample taken after they all finished.
        let after = seq().await + 1;
        assert!(eventually(SOON, || async { seq().await >= after }).await);
        let o = s.get("/v1/overview?history=300").await;
        assert_eq!(o.status, 200, "{}", o.text);
        let o = o.body;
        assert_eq!(o["totals"]["accepted"], 4);
        assert_eq!(o["totals"]["completed"], 3);
        assert_eq!(o["totals"]["dead"], 1);
        assert_eq!(o["totals"]["in_flight"], 0);
        assert_eq!(o["totals"]["queued"], 0);
        assert_eq!(o["dead_letters"], 1);
        assert_eq!(o["storage"]["kind"], "journal");
        assert_eq!(o["storage"]["health"], "ok");
        let echo = &o["routes"][0];
        assert_eq!(echo["kind"], "echo");
        assert_eq!(echo["completed"], 3);
        assert_eq!(echo["queued"], 0);
        assert!(echo["run_p50_ms"].as_f64().unwrap() <= echo["run_p99_ms"].as_f64().unwrap());
        let flaky = &o["routes"][1];
        assert_eq!(
            (flaky["dead"].as_u64(), flaky["retried"].as_u64()),
            (Some(1), Some(1))
        );
        // The history holds what finished, second by second.
        let history = |r: &Value, s: &str| -> u64 {
            r["history"][s]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum()
        };
        let seq = o["history_seq"].as_u64().unwrap();
        let len = echo["history"]["completed"].as_array().unwrap().len() as u64;
        assert_eq!(len, seq - 1, "one entry per pair of samples");
        assert_eq!(history(echo, "completed"), 3);
        assert_eq!(history(echo, "failed"), 0);
        assert_eq!(history(flaky, "failed"), 1, "dead counts as failed");
        // Bounds.
        assert_eq!(s.get("/v1/overview?history=301").await.status, 400);
        assert_eq!(s.get("/v1/overview?history=-1").await.status, 400);
        assert_eq!(s.get("/v1/overview?bogus=1").await.status, 400);
        let few = s.get("/v1/overview?history=1").await.body;
        assert!(
            few["routes"][0]["history"]["completed"]
                .as_array()
                .unwrap()
                .len()
                <= 1
        );
        // The page's files need no token; the overview does.
        s.stop().await;
        let mut c = with_flaky();
        c.server.tokens = vec!["s3cret".into()];
        let s = start(c).await;
        for path in ["/ui", "/ui/app.js", "/ui/style.css", "/ui/icon.svg"] {
            let r = s.get(path).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(r.header("content-security-policy").is_some(), "{path}");
        }
        assert_eq!(
            s.get("/ui/auth").await.body,
            json!({"token_required": true})
        );
        assert_eq!(s.get("/v1/overview").await.status, 401);
        // `/` leads to the page (the test client follows the redirect).
        let r = s.get("/").await;
        assert_eq!(r.status, 200);
        assert!(r.text.contains("<title>Mailroom</title>"));
        s.stop().await;
    });
}
