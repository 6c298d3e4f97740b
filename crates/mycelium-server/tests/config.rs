//! Configuration: defaults, the reference file, units, environment overrides, and error reports
//! that name the file, the key and the reason.

use std::io::Write;
use std::time::Duration;

use mycelium_broker::spec::{Overflow, PayloadCodec, Routing};
use mycelium_server::{Config, ConfigError};

fn write(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn defaults_need_no_file() {
    let config = Config::load(None, no_env()).unwrap();
    assert_eq!(config.server.socket_path, "/tmp/mycelium.sock");
    assert_eq!(config.server.tcp, "127.0.0.1:7420");
    assert!(config.server.auto_create_topics);
}

#[test]
fn the_reference_file_loads_and_means_what_it_says() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/mycelium.toml");
    let config = Config::load(Some(&path), no_env()).unwrap();
    let broker = config.broker_config().unwrap();
    let execution = broker.topics.iter().find(|(n, _)| n == "execution").unwrap();
    assert_eq!(execution.1.routing, Routing::Queue);
    assert_eq!(execution.1.codec, PayloadCodec::Tlv);
    assert_eq!(execution.1.buffer_bytes, 4 << 20);
    assert_eq!(execution.1.message_bytes_max, 64 << 10);
    let market = broker.topics.iter().find(|(n, _)| n == "market_data").unwrap();
    assert_eq!(market.1.overflow, Overflow::Block);
    assert_eq!(market.1.block_timeout, Duration::from_secs(5));
}

#[test]
fn human_units() {
    let file = write(
        "[server]\nmax_frame_size = \"2 MiB\"\nconnection_timeout = \"1m 30s\"\n[performance]\nflush_interval = 250\n\
         [[topics]]\nname = \"t\"\nbuffer_size = \"1.5 MiB\"\nmax_message_size = 4096\n",
    );
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    assert_eq!(config.server.max_frame_size.0, 2 << 20);
    assert_eq!(config.server.connection_timeout.0, Duration::from_secs(90));
    assert_eq!(config.performance.flush_interval.0, Duration::from_millis(250));
    assert_eq!(config.topics[0].buffer_size.0, 1_572_864);
}

#[test]
fn environment_overrides_the_file() {
    let file = write("[server]\nmax_connections = 10\n");
    let env = vec![
        ("MYCELIUM_SERVER__MAX_CONNECTIONS".to_owned(), "500".to_owned()),
        ("MYCELIUM_SERVER__TCP".to_owned(), "127.0.0.1:9999".to_owned()),
        (
            "MYCELIUM_PERFORMANCE__FLUSH_INTERVAL".to_owned(),
            "5ms".to_owned(),
        ),
        ("MYCELIUM_URL".to_owned(), "not an override".to_owned()),
    ];
    let config = Config::load(Some(file.path()), env).unwrap();
    assert_eq!(config.server.max_connections, 500);
    assert_eq!(config.server.tcp, "127.0.0.1:9999");
    assert_eq!(config.performance.flush_interval.0, Duration::from_millis(5));
    let bad = vec![("MYCELIUM_SERVER__MAX_CONNECTIONS".to_owned(), "0".to_owned())];
    let error = Config::load(Some(file.path()), bad).unwrap_err().to_string();
    assert!(
        error.contains("server.max_connections: must be greater than 0"),
        "{error}"
    );
}

#[test]
fn every_problem_is_reported_with_file_key_and_reason() {
    let file = write(
        "[server]\nmax_connections = 0\ntcp = \"nowhere\"\n[performance]\nworker_threads = 0\n\
         [[topics]]\nname = \"a..b\"\n[[topics]]\nname = \"dup\"\nrouting = \"broadcast\"\n\
         [[topics]]\nname = \"dup\"\nmax_message_size = \"32 MiB\"\n",
    );
    let error = Config::load(Some(file.path()), no_env()).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &error else {
        panic!("{error}")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.max_connections",
            "server.tcp",
            "performance.worker_threads",
            "topics[0].name",
            "topics[1].routing",
            "topics[2].name",
            // Over the frame limit and over the buffer: one problem for the key, both bounds named.
            "topics[2].max_message_size",
        ]
    );
    let text = error.to_string();
    let name = file.path().display().to_string();
    assert!(
        text.lines().all(|l| l.starts_with(&name)),
        "every line names the file:\n{text}"
    );
    assert!(
        text.contains("`broadcast` is not one of: fanout, queue, direct"),
        "{text}"
    );
    assert!(text.contains("topic `dup` is configured twice"), "{text}");
}

#[test]
fn syntax_errors_unknown_keys_and_wrong_types_name_the_spot() {
    let file = write("[server]\nmax_conections = 5\n");
    let text = Config::load(Some(file.path()), no_env()).unwrap_err().to_string();
    assert!(text.contains("unknown field `max_conections`"), "{text}");
    assert!(text.contains("line 2"), "{text}");

    let file = write("[server]\nconnection_timeout = \"soon\"\n");
    let text = Config::load(Some(file.path()), no_env()).unwrap_err().to_string();
    assert!(text.contains("`soon` is not a duration"), "{text}");

    let file = write("[server\n");
    assert!(matches!(
        Config::load(Some(file.path()), no_env()),
        Err(ConfigError::Parse { .. })
    ));

    let missing = std::path::Path::new("/nonexistent/mycelium.toml");
    let text = Config::load(Some(missing), no_env()).unwrap_err().to_string();
    assert!(
        text.starts_with("/nonexistent/mycelium.toml: cannot read"),
        "{text}"
    );
}

#[test]
fn delivery_guarantees_and_retention_per_topic() {
    use mycelium_broker::spec::{Delivery, Retention, StorageKind};
    let file = write(
        "[storage]\nack_persist_interval = \"50ms\"\nretention_age = \"7d\"\n\
         [[topics]]\nname = \"payments\"\ndelivery = \"exactly_once\"\ndedup_window = \"10m\"\n\
         [[topics]]\nname = \"jobs\"\nstorage = \"disk\"\npriority = true\nttl = \"1h\"\n\
         retention = \"work_queue\"\nretention_messages = 1000\non_expired = \"dead_letter\"\n\
         [[topics]]\nname = \"ticks\"\n",
    );
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    let broker = config.broker_config().unwrap();
    let spec = |name: &str| broker.topics.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let payments = spec("payments");
    assert_eq!(
        (payments.storage, payments.delivery),
        (StorageKind::Disk, Delivery::ExactlyOnce)
    );
    assert_eq!(payments.dedup_window, Duration::from_secs(600));
    let jobs = spec("jobs");
    assert_eq!(
        jobs.delivery,
        Delivery::AtLeastOnce,
        "disk topics default to at_least_once"
    );
    assert!(jobs.priority);
    assert_eq!(jobs.ttl, Some(Duration::from_secs(3600)));
    assert_eq!(jobs.retention, Retention::WorkQueue);
    assert_eq!(jobs.retention_messages, Some(1000));
    let ticks = spec("ticks");
    assert_eq!(
        (ticks.storage, ticks.delivery),
        (StorageKind::Memory, Delivery::AtMostOnce)
    );
    assert_eq!(broker.durable.ack_persist_interval, Duration::from_millis(50));
    assert_eq!(
        broker.durable.log.retention_age,
        Some(Duration::from_secs(7 * 86_400))
    );
}

#[test]
fn contradictory_delivery_settings_are_reported_by_key() {
    let file = write(
        "[[topics]]\nname = \"a\"\ndelivery = \"at_most_once\"\nstorage = \"disk\"\n\
         [[topics]]\nname = \"b\"\ndelivery = \"at_least_once\"\nstorage = \"memory\"\n\
         [[topics]]\nname = \"c\"\npriority = true\nttl = \"5s\"\n\
         [[topics]]\nname = \"d\"\ndelivery = \"twice\"\nfsync = \"sometimes\"\n",
    );
    let error = Config::load(Some(file.path()), no_env()).unwrap_err().to_string();
    for expected in [
        "topics[0].delivery: at_most_once topics are not stored",
        "topics[1].storage: at_least_once needs storage = \"disk\"",
        "topics[2].priority: applies to stored topics only",
        "topics[2].ttl: applies to stored topics only",
        "topics[3].delivery: `twice` is not one of: at_most_once, at_least_once, exactly_once",
        "topics[3].fsync: `sometimes` is not one of: batch, always, never",
    ] {
        assert!(error.contains(expected), "missing `{expected}` in:\n{error}");
    }
}

#[test]
fn segment_reserve_zero_fill_and_inline_flush_bytes_are_read_checked_and_reach_the_broker() {
    let defaults = Config::default();
    assert_eq!(defaults.storage.segment_reserve.0, 4 << 20);
    assert_eq!(
        defaults.broker_config().unwrap().durable.fsync_interval,
        Duration::from_millis(1)
    );
    assert!(
        defaults.broker_config().unwrap().durable.log.zero_fill,
        "zero-filled by default"
    );
    assert_eq!(defaults.performance.inline_flush_bytes.0, 64 << 10);
    let file = write(
        "[storage]\nsegment_reserve = \"1 MiB\"\nsegment_zero_fill = false\n[performance]\ninline_flush_bytes = 0\n",
    );
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    assert_eq!(config.broker_config().unwrap().durable.log.reserve_bytes, 1 << 20);
    assert!(!config.broker_config().unwrap().durable.log.zero_fill);
    assert_eq!(config.performance.inline_flush_bytes.0, 0);
    let file =
        write("[storage]\nsegment_reserve = \"2 GiB\"\n[performance]\ninline_flush_bytes = \"32 MiB\"\n");
    let error = Config::load(Some(file.path()), no_env()).unwrap_err().to_string();
    assert!(
        error.contains("storage.segment_reserve: 2 GiB is out of range (0 to 1 GiB)"),
        "{error}"
    );
    assert!(
        error.contains("performance.inline_flush_bytes: 32 MiB is out of range (0 to 16 MiB)"),
        "{error}"
    );
}

#[test]
fn jwt_cache_tokens_is_read_checked_and_reaches_the_verifier_settings() {
    let defaults = Config::default();
    assert_eq!(defaults.auth.jwt_cache_tokens, 4096);
    let file =
        write("[auth]\njwt_secret = \"a test secret of at least thirty-two bytes\"\njwt_cache_tokens = 0\n");
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    assert_eq!(config.jwt_config().unwrap().cache_tokens, 0);
    let file = write("[auth]\njwt_cache_tokens = 2000000\n");
    let error = Config::load(Some(file.path()), no_env()).unwrap_err().to_string();
    assert!(
        error.contains("auth.jwt_cache_tokens: must be at most 1000000 (0 turns the cache off)"),
        "{error}"
    );
}

#[test]
fn the_old_http_auth_keys_are_refused_naming_their_new_place() {
    let keys = problem_keys(
        "[http]\nauth = \"none\"\njwt_secret = \"a test secret of at least thirty-two bytes\"\n",
    );
    assert_eq!(keys, ["http.auth", "http.jwt_secret"]);
    let file = write("[http]\njwt_issuer = \"me\"\n");
    let error = Config::load(Some(file.path()), no_env()).unwrap_err().to_string();
    assert!(
        error.contains("http.jwt_issuer: moved: set `auth.jwt_issuer` instead"),
        "{error}"
    );
    // Through the environment too.
    let env = vec![("MYCELIUM_HTTP__JWT_SECRET".to_owned(), "x".repeat(40))];
    let error = Config::load(None, env).unwrap_err().to_string();
    assert!(
        error.contains("http.jwt_secret: moved: set `auth.jwt_secret`"),
        "{error}"
    );
}

#[test]
fn auth_settings_and_users_are_checked_each_under_its_key() {
    let keys = problem_keys(
        "[auth]\nmode = \"open\"\njwt_algorithm = \"HS512\"\njwt_role_claim = \"\"\nopen_probes = \"sometimes\"\n\
         [[auth.users]]\nname = \"svc\"\ntoken_sha256 = \"abc\"\nroles = [\"boss\"]\npublish = [\"a..b\"]\n\
         [[auth.users]]\nname = \"svc\"\nroles = []\n",
    );
    assert_eq!(
        keys,
        [
            "auth.mode",
            "auth.jwt_algorithm",
            "auth.jwt_role_claim",
            "auth.open_probes",
            "auth.users[0].token_sha256",
            "auth.users[0].roles",
            "auth.users[0].publish",
            "auth.users[1].name",
            "auth.users[1].token_sha256",
            "auth.users[1].roles",
        ]
    );
    assert_eq!(
        problem_keys("[auth]\njwt_secret = \"short\"\n"),
        ["auth.jwt_secret"]
    );
    assert_eq!(
        problem_keys("[auth]\njwt_algorithm = \"RS256\"\n"),
        ["auth.jwt_public_key"]
    );
    // A good user reaches the authenticator's settings.
    let hash = mycelium_auth::token_hash_hex("myc_token");
    let file = write(&format!(
        "[auth]\njwt_secret = \"a test secret of at least thirty-two bytes\"\n\
         [[auth.users]]\nname = \"adapter\"\ntoken_sha256 = \"{hash}\"\nuid = 1234\nroles = [\"producer\"]\npublish = [\"md.>\"]\n"
    ));
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    let auth = config.auth_config().unwrap();
    assert_eq!(auth.mode, mycelium_auth::Mode::Required);
    let user = &auth.users[0];
    assert_eq!(user.name, "adapter");
    assert_eq!(user.uid, Some(1234));
    assert_eq!(user.roles, [mycelium_broker::Role::Producer]);
    assert_eq!(user.publish.as_ref().unwrap()[0].as_str(), "md.>");
    assert!(user.consume.is_none());
    let authenticator = mycelium_auth::Authenticator::new(auth).unwrap();
    assert_eq!(authenticator.token("myc_token").unwrap().name, "adapter");
    // `config show` never prints a secret or a token hash.
    let shown = config.to_string();
    assert!(!shown.contains("thirty-two") && !shown.contains(&hash), "{shown}");
    assert!(shown.contains("jwt_secret = \"<redacted>\""), "{shown}");
}

fn problem_keys(text: &str) -> Vec<String> {
    let file = write(text);
    match Config::load(Some(file.path()), no_env()).unwrap_err() {
        ConfigError::Invalid { problems, .. } => problems.into_iter().map(|p| p.key).collect(),
        other => panic!("{other}"),
    }
}

#[test]
fn http_settings_are_checked_each_under_its_key() {
    let keys = problem_keys(
        "[http]\nlisten = \"nowhere\"\n\
         max_body_size = 100\nheader_timeout = \"0s\"\n\
         [http.rate_limits]\nproducer = { per_second = 0 }\n\
         [[http.rate_limits.topics]]\npattern = \"a..b\"\nper_second = 0\n",
    );
    assert_eq!(
        keys,
        [
            "http.listen",
            "http.max_body_size",
            "http.header_timeout",
            "http.rate_limits.producer.per_second",
            "http.rate_limits.topics[0].pattern",
            "http.rate_limits.topics[0].per_second",
        ]
    );
    assert_eq!(
        problem_keys("[http]\nlisten = \"\"\nunix_socket = \"\"\n"),
        ["http"]
    );
}

#[test]
fn http_config_carries_keys_limits_and_timeouts() {
    let file = write(
        "[auth]\njwt_algorithm = \"ES256\"\njwt_public_key = \"/keys/pub.pem\"\njwt_issuer = \"issuer\"\n\
         open_probes = \"never\"\n\
         [http]\nlisten = \"127.0.0.1:7421\"\nunix_socket = \"/tmp/m-http.sock\"\nrequest_timeout = \"7s\"\n\
         [http.rate_limits]\nconsumer = { per_second = 5, burst = 9 }\nper_ip = { per_second = 3 }\n\
         [[http.rate_limits.topics]]\npattern = \"orders.>\"\nper_second = 4\n",
    );
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    let auth = std::sync::Arc::new(mycelium_auth::Authenticator::none());
    let http = config.http_config(&auth).unwrap();
    assert_eq!(http.listen, Some("127.0.0.1:7421".parse().unwrap()));
    assert_eq!(
        http.unix_socket.as_deref(),
        Some(std::path::Path::new("/tmp/m-http.sock"))
    );
    assert_eq!(http.request_timeout, Duration::from_secs(7));
    assert_eq!(http.open_probes, mycelium_http::OpenProbes::Never);
    assert!(
        std::sync::Arc::ptr_eq(&http.auth, &auth),
        "both doors share one authenticator"
    );
    let jwt = config.jwt_config().unwrap();
    assert!(
        matches!(&jwt.key, mycelium_auth::JwtKey::Es256 { public_key, private_key: None }
            if public_key == std::path::Path::new("/keys/pub.pem")),
        "{:?}",
        jwt.key
    );
    assert_eq!(jwt.issuer.as_deref(), Some("issuer"));
    let consumer = http.limits.per_role[&mycelium_broker::Role::Consumer];
    assert_eq!((consumer.per_second, consumer.burst), (5, 9));
    let per_ip = http.limits.per_ip.unwrap();
    assert_eq!(
        (per_ip.per_second, per_ip.burst),
        (3, 3),
        "burst defaults to the rate"
    );
    assert_eq!(http.limits.per_topic[0].0, "orders.>");

    let off = write("[auth]\nmode = \"none\"\n");
    let config = Config::load(Some(off.path()), no_env()).unwrap();
    assert_eq!(config.auth_config().unwrap().mode, mycelium_auth::Mode::None);
    let metrics_only = write("[http]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:9464\"\n");
    let config = Config::load(Some(metrics_only.path()), no_env()).unwrap();
    let http = config.http_config(&auth).unwrap();
    assert!(http.metrics_only);
    assert_eq!(http.listen, Some("127.0.0.1:9464".parse().unwrap()));
}

#[test]
fn the_generated_jwt_secret_is_private_kept_and_refused_when_others_could_read_or_replace_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(&format!("[storage]\ndata_dir = \"{}\"\n", data.display()));
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    let secret = |config: &Config| match config.jwt_config().unwrap().key {
        mycelium_auth::JwtKey::Hs256(secret) => secret,
        other => panic!("{other:?}"),
    };
    let first = secret(&config);
    assert_eq!(first.len(), 64, "32 random bytes, hex");
    assert_eq!(secret(&config), first, "kept across starts");
    let path = mycelium_storage::DataDir::new(&data).jwt_secret();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Readable by others: refused, saying how to fix it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = config.jwt_config().unwrap_err().to_string();
    assert!(error.contains("chmod 600"), "{error}");
    // A link planted in its place: refused.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::rename(&path, &elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let error = config.jwt_config().unwrap_err().to_string();
    assert!(error.contains("symbolic link"), "{error}");
    std::fs::remove_file(&path).unwrap();
    // Someone else's: refused (changing the owner needs root).
    std::fs::rename(&elsewhere, &path).unwrap();
    if mycelium_test_support::available(&[mycelium_test_support::Need::Root]) {
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let error = config.jwt_config().unwrap_err().to_string();
        assert!(error.contains("owned by uid 65534"), "{error}");
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    }
    std::fs::write(&path, "too short").unwrap();
    match config.jwt_config().unwrap_err() {
        ConfigError::Secret { path: at, reason } => {
            assert_eq!(at, path);
            assert!(reason.contains("shorter than 32 bytes"), "{reason}");
        }
        other => panic!("{other}"),
    }
}

mod one_topic_validator {
    //! The config file and the HTTP topics API read topic settings through one validator: fed
    //! the same settings, both accept with the same spec or both refuse, naming the same fields.

    use std::collections::BTreeSet;

    use mycelium_server::Config;
    use proptest::prelude::*;

    /// One setting: its config key and HTTP field, and the value in both notations.
    #[derive(Debug, Clone)]
    struct Setting {
        config_key: &'static str,
        http_field: &'static str,
        toml: String,
        json: String,
    }

    fn text(key: &'static str, values: &'static [&'static str]) -> impl Strategy<Value = Option<Setting>> {
        proptest::option::of(proptest::sample::select(values)).prop_map(move |v| {
            v.map(|v| Setting {
                config_key: key,
                http_field: key,
                toml: format!("{v:?}"),
                json: format!("{v:?}"),
            })
        })
    }

    fn flag(key: &'static str) -> impl Strategy<Value = Option<Setting>> {
        proptest::option::of(any::<bool>()).prop_map(move |v| {
            v.map(|v| Setting {
                config_key: key,
                http_field: key,
                toml: v.to_string(),
                json: v.to_string(),
            })
        })
    }

    /// A duration in whole seconds: humantime text in the config, milliseconds over HTTP.
    fn seconds(config_key: &'static str, http_field: &'static str) -> impl Strategy<Value = Option<Setting>> {
        proptest::option::of(0u64..3).prop_map(move |v| {
            v.map(|v| Setting {
                config_key,
                http_field,
                toml: format!("\"{v}s\""),
                json: (v * 1000).to_string(),
            })
        })
    }

    fn number(key: &'static str, values: &'static [u64]) -> impl Strategy<Value = Option<Setting>> {
        proptest::option::of(proptest::sample::select(values)).prop_map(move |v| {
            v.map(|v| Setting {
                config_key: key,
                http_field: key,
                toml: v.to_string(),
                json: v.to_string(),
            })
        })
    }

    fn settings() -> impl Strategy<Value = Vec<Setting>> {
        (
            (
                text("routing", &["fanout", "queue", "direct", "broadcast"]),
                text("balance", &["round_robin", "least_loaded", "random"]),
                text(
                    "delivery",
                    &["at_most_once", "at_least_once", "exactly_once", "twice"],
                ),
                text("fsync", &["batch", "always", "never", "sometimes"]),
                text("codec", &["raw", "tlv", "json"]),
                text("overflow", &["block", "drop_oldest", "disconnect", "spill"]),
            ),
            (
                flag("priority"),
                flag("dead_letter"),
                seconds("ttl", "ttl_ms"),
                seconds("dedup_window", "dedup_window_ms"),
                text("retention", &["limits", "work_queue", "forever"]),
                number("retention_messages", &[1, 1000]),
                text("unmatched", &["skip", "dead_letter", "bounce"]),
                number("max_message_size", &[0, 1024, 1 << 20, 20 << 20]),
            ),
        )
            .prop_map(|((a, b, c, d, e, f), (g, h, i, j, k, l, m, n))| {
                [a, b, c, d, e, f, g, h, i, j, k, l, m, n]
                    .into_iter()
                    .flatten()
                    .collect()
            })
    }

    /// The config file's answer: the spec, or the keys it names under `topics[0]`.
    fn through_config(settings: &[Setting]) -> Result<mycelium_broker::spec::TopicSpec, BTreeSet<String>> {
        let mut toml = String::from("[[topics]]\nname = \"t\"\n");
        for s in settings {
            toml.push_str(&format!("{} = {}\n", s.config_key, s.toml));
        }
        let mut config: Config = toml::from_str(&toml).expect("well-formed TOML");
        config.resolve();
        match config.validate() {
            Ok(()) => Ok(config.broker_config().expect("valid").topics.remove(0).1),
            Err(problems) => Err(problems
                .into_iter()
                .map(|p| p.key.trim_start_matches("topics[0].").to_owned())
                .collect()),
        }
    }

    /// The HTTP API's answer, its fields renamed to the config's keys.
    fn through_http(
        settings: &[Setting],
        limits: &mycelium_broker::draft::SpecLimits,
    ) -> Result<mycelium_broker::spec::TopicSpec, BTreeSet<String>> {
        let body: Vec<String> = settings
            .iter()
            .map(|s| format!("\"{}\": {}", s.http_field, s.json))
            .collect();
        let json = format!("{{{}}}", body.join(", "));
        mycelium_http::topic_settings(&json, limits).map_err(|problems| {
            problems
                .into_iter()
                .map(|(field, _)| {
                    settings
                        .iter()
                        .find(|s| s.http_field == field)
                        .map_or(field.clone(), |s| s.config_key.to_owned())
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn both_doors_give_the_same_answer(settings in settings()) {
            let limits = Config::default().spec_limits();
            let config = through_config(&settings);
            let http = through_http(&settings, &limits);
            prop_assert_eq!(&config, &http, "settings: {:?}", settings);
        }
    }

    #[test]
    fn the_doors_refuse_a_stored_only_setting_on_a_memory_topic_alike() {
        let limits = Config::default().spec_limits();
        let work_queue = vec![Setting {
            config_key: "retention",
            http_field: "retention",
            toml: "\"work_queue\"".into(),
            json: "\"work_queue\"".into(),
        }];
        let expected: BTreeSet<String> = ["retention".to_owned()].into();
        assert_eq!(through_config(&work_queue), Err(expected.clone()));
        assert_eq!(through_http(&work_queue, &limits), Err(expected));
    }
}

#[test]
fn tls_settings_are_checked_and_reach_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "x").unwrap();
    assert_eq!(
        problem_keys(&format!("[tls]\ncert_file = \"{}\"\n", cert.display())),
        ["tls"],
        "a certificate without its key"
    );
    assert_eq!(
        problem_keys(&format!(
            "[tls]\ncert_file = \"{0}\"\nkey_file = \"{0}.missing\"\n",
            cert.display()
        )),
        ["tls.key_file"]
    );
    assert_eq!(
        problem_keys("[tls]\nclient_ca_file = \"/etc/hostname\"\n"),
        ["tls.client_ca_file"]
    );
    let file = write(&format!(
        "[tls]\ncert_file = \"{0}\"\nkey_file = \"{0}\"\nclient_ca_file = \"{0}\"\nplain_http = true\n",
        cert.display()
    ));
    let config = Config::load(Some(file.path()), no_env()).unwrap();
    let files = config.tls_files().unwrap();
    assert_eq!(
        (files.cert.as_path(), files.client_ca.as_deref()),
        (cert.as_path(), Some(cert.as_path()))
    );
    assert!(config.tls.plain_http && !config.tls.plain_tcp);
    assert!(Config::default().tls_files().is_none(), "off by default");
    // Unusable files are refused at start-up, naming the file.
    let error = mycelium_auth::tls::server_config(&files).unwrap_err();
    assert_eq!(error.path, cert);
}
