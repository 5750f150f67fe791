//! The settings' loading, validation and hand-on to a child process.

use super::*;

#[test]
fn defaults_load_and_hold_the_documented_values() {
    let settings = Settings::load(None).expect("defaults load");
    assert_eq!(settings.amqp.url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(settings.amqp.ingest_queue, "customers.ingest");
    assert_eq!(settings.amqp.delivery_limit, 5);
    assert_eq!(settings.pipeline.chunk_size, 500);
    assert_eq!(settings.http.addr.port(), 9464);
}

/// Every key set, each to something other than its default.
const EVERY_KEY_CHANGED: &str = r#"
    telemetry.otlp_endpoint = "http://127.0.0.1:4318"
    [amqp]
    url = "amqps://u:p@10.0.0.1:5673/vhost"
    ingest_queue = "q.ingest"
    dead_letter_exchange = "q.dlx"
    dead_letter_queue = "q.dlq"
    events_exchange = "q.events"
    results_queue = "q.results"
    delivery_limit = 7
    prefetch = 2
    recovery_timeout_secs = 11
    passive_topology = true
    ca_file = "CA_FILE"
    [database]
    url = "postgres://u:p@10.0.0.2:5433/other?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    max_connections = 5
    lock_timeout_ms = 123
    retry_budget_secs = 45
    [pipeline]
    concurrency = 3
    chunk_size = 77
    max_body_bytes = 1000
    max_body_bytes_in_flight = 2000
    max_records = 99
    reply_records_per_message = 9
    reply_max_bytes = 65536
    [relay]
    batch_size = 5
    poll_interval_ms = 250
    [http]
    addr = "127.0.0.1:0"
    [log]
    format = "json"
    level = "warn,customer_ingest=debug"
    [shutdown]
    deadline_secs = 4
    [dlq]
    max_replays = 1
    [auth]
    mode = "user-id"
    [auth.tenants]
    "erp-prod" = ["acme", "globex"]
    "Web Shop" = ["shop_1"]
    [idempotency]
    retention_hours = 24
    sweep_interval_secs = 60
    [events]
    mode = "batch"
    [security]
    require_tls = true
"#;

fn from_toml(text: &str) -> Settings {
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(config::Config::try_deserialize)
        .expect("the test's settings are complete")
}

#[test]
fn settings_reach_a_child_process_unchanged_through_its_environment() {
    let ca_file = fake_ca_file();
    let original = from_toml(&EVERY_KEY_CHANGED.replace("CA_FILE", &ca_file.display().to_string()));
    let defaults = Settings::load_from(None, Some(config::Map::new())).unwrap();
    let variables = original.to_env();
    // Otherwise a variable `to_env` left out would come back as its default, unnoticed.
    let default_variables = defaults.to_env();
    let unchanged: Vec<_> = variables
        .iter()
        .filter(|variable| default_variables.contains(variable))
        .collect();
    assert!(unchanged.is_empty(), "set to the default: {unchanged:?}");
    assert!(
        variables.contains(&("INGEST__PIPELINE__CHUNK_SIZE".into(), "77".into())),
        "{variables:?}"
    );

    let loaded = Settings::load_from(None, Some(variables.into_iter().collect())).unwrap();
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&original).unwrap()
    );
    assert_eq!(loaded.amqp.url(), original.amqp.url());
    assert_eq!(loaded.database.url(), original.database.url());
    let _ = std::fs::remove_file(ca_file);
}

#[test]
fn settings_serialize_without_their_secrets() {
    let settings = Settings::load_from(None, Some(config::Map::new())).unwrap();
    let serialized = serde_json::to_string(&settings).unwrap();
    assert!(!serialized.contains("guest:guest"), "{serialized}");
    assert!(!serialized.contains("postgres:postgres"), "{serialized}");
}

#[test]
fn secrets_do_not_print() {
    let settings = Settings::load(None).expect("defaults load");
    let printed = format!("{settings:?}");
    assert!(!printed.contains("guest:guest"), "{printed}");
    assert!(!printed.contains("postgres:postgres"), "{printed}");
}

#[test]
fn a_prefetch_over_the_concurrency_or_a_pool_too_small_for_it_starts_nothing_and_names_the_keys() {
    let load = |pairs: &[(&str, &str)]| {
        let variables = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, Some(variables))
            .unwrap_err()
            .to_string()
    };
    let error = load(&[("INGEST__AMQP__PREFETCH", "5")]);
    assert!(
        error.contains("amqp.prefetch (5)") && error.contains("pipeline.concurrency (4)"),
        "{error}"
    );
    let error = load(&[("INGEST__DATABASE__MAX_CONNECTIONS", "4")]);
    assert!(error.contains("database.max_connections (4)"), "{error}");
}

#[test]
fn user_id_mode_needs_users_with_valid_tenant_names_which_a_variable_can_carry() {
    let load = |pairs: &[(&str, &str)]| {
        let variables = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, Some(variables)).map_err(|e| format!("{e:#}"))
    };
    let mode = ("INGEST__AUTH__MODE", "user-id");
    let error = load(&[mode]).unwrap_err();
    assert!(error.contains("auth.tenants"), "{error}");
    let error = load(&[mode, ("INGEST__AUTH__TENANTS", r#"{"erp": ["a b"]}"#)]).unwrap_err();
    assert!(
        error.contains("auth.tenants.erp") && error.contains("a b"),
        "{error}"
    );
    let error = load(&[mode, ("INGEST__AUTH__TENANTS", "erp=acme")]).unwrap_err();
    assert!(error.contains("auth.tenants"), "{error}");
    let settings = load(&[
        mode,
        (
            "INGEST__AUTH__TENANTS",
            r#"{"ERP Prod": ["acme", "globex"]}"#,
        ),
    ])
    .unwrap();
    assert!(settings.auth.allows("ERP Prod", "globex"));
    assert!(!settings.auth.allows("erp prod", "globex"));
    assert!(!settings.auth.allows("ERP Prod", "initech"));
    assert_eq!(Settings::load(None).unwrap().auth.mode, AuthMode::Open);
}

#[test]
fn an_unknown_setting_starts_nothing_and_names_the_key() {
    let variables = [("INGEST__PIPELINE__CHUNK_SIZ".to_owned(), "10".to_owned())]
        .into_iter()
        .collect();
    let error = format!(
        "{:#}",
        Settings::load_from(None, Some(variables)).unwrap_err()
    );
    assert!(error.contains("chunk_siz"), "{error}");
    let variables = [("INGEST__PIPELIN__CHUNK_SIZE".to_owned(), "10".to_owned())]
        .into_iter()
        .collect();
    let error = format!(
        "{:#}",
        Settings::load_from(None, Some(variables)).unwrap_err()
    );
    assert!(error.contains("pipelin"), "{error}");
}

/// A file that passes the loader's check of `amqp.ca_file` (it holds a PEM certificate block).
fn fake_ca_file() -> std::path::PathBuf {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let path = std::env::temp_dir().join(format!("ingest-test-ca-{id}.pem"));
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    path
}

#[test]
fn require_tls_accepts_only_amqps_and_verify_full_and_names_the_key_never_the_url() {
    let load = |pairs: &[(&str, &str)]| {
        let variables = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, Some(variables)).map_err(|e| format!("{e:#}"))
    };
    let require = ("INGEST__SECURITY__REQUIRE_TLS", "true");
    let amqps = ("INGEST__AMQP__URL", "amqps://u:secret@mq.example:5671/%2f");
    let database = |query: &str| {
        (
            "INGEST__DATABASE__URL",
            format!("postgres://u:secret@db.example/ingest{query}"),
        )
    };
    let verify_full = database("?sslmode=verify-full&sslrootcert=/etc/ca.pem");
    let verify_full = (verify_full.0, verify_full.1.as_str());

    assert!(load(&[require, amqps, verify_full]).is_ok());
    let upper = ("INGEST__AMQP__URL", "AMQPS://u:secret@mq.example:5671/%2f");
    assert!(load(&[require, upper, verify_full]).is_ok());
    // Plain URLs are fine without the setting.
    assert!(load(&[]).is_ok());

    let error = load(&[require, verify_full]).unwrap_err();
    assert!(
        error.contains("amqp.url") && !error.contains("guest"),
        "{error}"
    );
    for query in [
        "",
        "?sslmode=require",
        "?sslmode=verify-ca",
        "?sslmode=prefer",
    ] {
        let plain = database(query);
        let error = load(&[require, amqps, (plain.0, &plain.1)]).unwrap_err();
        assert!(error.contains("database.url"), "{query}: {error}");
        assert!(!error.contains("secret"), "{error}");
    }
}

#[test]
fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_starts_nothing() {
    let load = |path: &str| {
        let variables = [("INGEST__AMQP__CA_FILE".to_owned(), path.to_owned())]
            .into_iter()
            .collect();
        Settings::load_from(None, Some(variables)).map_err(|e| format!("{e:#}"))
    };
    let error = load("/nonexistent/ca.pem").unwrap_err();
    assert!(error.contains("amqp.ca_file"), "{error}");
    let error = load(env!("CARGO_MANIFEST_PATH")).unwrap_err();
    assert!(
        error.contains("amqp.ca_file") && error.contains("no PEM"),
        "{error}"
    );
    let ca_file = fake_ca_file();
    let settings = load(ca_file.to_str().unwrap()).unwrap();
    assert_eq!(settings.amqp.ca_file, ca_file);
    assert_eq!(Settings::load(None).unwrap().amqp.ca_file.as_os_str(), "");
    let _ = std::fs::remove_file(ca_file);
}
