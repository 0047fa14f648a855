use std::path::{Path, PathBuf};

use mailroom::config::{Config, ConfigError, Overrides};

fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn load_err(text: &str) -> String {
    let (_dir, path) = write("bad.toml", text);
    let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("bad.toml"),
        "the message names the file: {msg}"
    );
    msg
}

#[test]
fn the_shipped_config_toml_parses_and_means_what_it_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let loaded = Config::load(Some(&path), &Overrides::default()).unwrap();
    let c = loaded.config;
    assert_eq!(c.server.bind, "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 1_048_576);
    assert_eq!(c.dispatch.capacity, 10_000);
    let kinds: Vec<_> = c.effective_routes().into_keys().collect();
    assert_eq!(
        kinds,
        ["echo", "fetch", "hash", "primes", "sleep"],
        "every built-in but chaos"
    );
    assert_eq!(c.sources.tcp.as_ref().unwrap().bind, "127.0.0.1:7070");
    assert!(c.schedule.is_empty());
    // One client may hold a sixteenth of the bodies being read: 16 MiB of 256.
    assert_eq!(c.server.client_body_share(), 16 << 20);
    // And a quarter of the connections, HTTP and TCP.
    assert_eq!(c.server.client_connection_share(), 2_500);
    assert_eq!(c.tcp_settings().max_connections_per_client, 64);
}

#[test]
fn a_clients_share_of_the_bodies_is_a_sixteenth_but_at_least_one_body() {
    let share = |text: &str| {
        let (_d, path) = write("c.toml", text);
        let c = Config::load(Some(&path), &Overrides::default()).unwrap();
        c.config.server.client_body_share()
    };
    assert_eq!(
        share("[server]\nmax_buffered_body_bytes = 1600000\n"),
        1_048_576
    );
    assert_eq!(
        share("[server]\nmax_buffered_body_bytes = 32000000\n"),
        2_000_000
    );
    assert_eq!(
        share("[server]\nmax_buffered_body_bytes_per_client = 3000000\n"),
        3_000_000
    );
}

#[test]
fn flags_override_the_file() {
    let (_d, path) = write("c.toml", "[server]\nbind = \"127.0.0.1:9001\"\n");
    let c = Config::load(
        Some(&path),
        &Overrides {
            bind: Some("127.0.0.1:9002".into()),
        },
    )
    .unwrap();
    assert_eq!(c.config.server.bind, "127.0.0.1:9002");
}

#[test]
fn unknown_keys_and_bad_values_name_the_file_the_key_and_the_expectation() {
    let msg = load_err("[server]\nbindd = \"127.0.0.1:1\"\n");
    assert!(msg.contains("bindd") && msg.contains("server"), "{msg}");
    let msg = load_err("[server]\nworkers = \"many\"\n");
    assert!(
        msg.contains("server.workers") && msg.contains("expected"),
        "{msg}"
    );
    let msg = load_err("[sever]\nbind = \"x\"\n");
    assert!(msg.contains("sever"), "{msg}");
    let msg = load_err("[server]\nmax_json_depth = 0\n");
    assert!(
        msg.contains("server.max_json_depth: expected 1 to 128"),
        "{msg}"
    );
    let msg = load_err("[server]\nbind = \"localhost\"\n");
    assert!(msg.contains("server.bind"), "{msg}");
    let msg = load_err("[routes.x]\nprocessor = \"teleport\"\n");
    assert!(
        msg.contains("routes.x.processor") && msg.contains("teleport"),
        "{msg}"
    );
    let msg = load_err("[routes.x]\nprocessor = \"echo\"\nretry = 2\n");
    assert!(msg.contains("retry"), "{msg}");
    let msg = load_err("[[schedule]]\nkind = \"echo\"\nevery_ms = 10\nafter_ms = 10\n");
    assert!(
        msg.contains("schedule[0]") && msg.contains("exactly one"),
        "{msg}"
    );
    let msg = load_err("[[schedule]]\nkind = \"nope\"\nevery_ms = 10\n");
    assert!(msg.contains("has no route"), "{msg}");
    let msg = load_err("[server]\ntokens = [\"two words\"]\n");
    assert!(
        msg.contains("server.tokens: a token may hold only visible ASCII characters"),
        "{msg}"
    );
    let msg = load_err("[fetch]\nmax_body_bytes = 1000000000000\n");
    assert!(
        msg.contains("fetch.max_body_bytes: expected 1 to 268435456"),
        "{msg}"
    );
    let msg = load_err("[server]\nmax_buffered_body_bytes_per_client = 1000\n");
    assert!(
        msg.contains("server.max_buffered_body_bytes_per_client: expected 0 (a sixteenth of server.max_buffered_body_bytes) or server.max_body_bytes (1048576) to server.max_buffered_body_bytes (268435456)"),
        "{msg}"
    );
    let msg = load_err("[server]\nmax_connections = 10\nmax_connections_per_client = 11\n");
    assert!(
        msg.contains("server.max_connections_per_client: expected 0 (a quarter of server.max_connections) to server.max_connections (10)"),
        "{msg}"
    );
    let msg = load_err(
        "[sources.tcp]\nbind = \"127.0.0.1:0\"\nmax_connections = 8\nmax_connections_per_client = 9\n",
    );
    assert!(
        msg.contains("sources.tcp.max_connections_per_client: expected 0 (a quarter of sources.tcp.max_connections) to sources.tcp.max_connections (8)"),
        "{msg}"
    );
    let msg = load_err("[pools.io]\nstall_warn_ms = 20\n");
    assert!(
        msg.contains("pools.io.stall_warn_ms: expected 0 (off) or at least 100"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let err = Config::load(
        Some(Path::new("/nonexistent/mailroom.toml")),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Missing(_)));
    assert_eq!(
        err.to_string(),
        "config file /nonexistent/mailroom.toml not found"
    );
}
