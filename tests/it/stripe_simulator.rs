//! Stories about the Stripe client against the in-memory Stripe: tagging
//! migrated customers, creating billing customers, and what happens when
//! the network, the idempotency layer or the credentials get in the way.

use clap::Parser;
use orgkeeper::stripe::{
    Customer, Faults, SimulatorArgs, StripeClient, StripeConfig, StripeError, StripeSimulator,
};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::time::Duration;

fn client_with(base_url: String, key: &str, timeout: Duration) -> StripeClient {
    StripeClient::new(StripeConfig {
        base_url,
        api_key: SecretString::from(key.to_string()),
        timeout,
    })
    .expect("client")
}

fn client_for(sim: &StripeSimulator) -> StripeClient {
    client_with(sim.base_url(), &sim.api_key(), Duration::from_secs(5))
}

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn expect_permanent(e: &StripeError) -> (u16, &str, Option<&str>, &str) {
    match e {
        StripeError::Permanent {
            status,
            kind,
            code,
            message,
            ..
        } => (*status, kind.as_str(), code.as_deref(), message.as_str()),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn tagging_a_migrated_customer_sets_org_id_and_clears_user_id() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(
        Some("old@example.com"),
        &[("user_id", "u-1"), ("plan", "pro")],
    );
    let client = client_for(&sim);

    let updated = client
        .update_customer(
            &id,
            &[("org_id", "org-1"), ("user_id", "")],
            Some("billing@org.example"),
            "migrate-u-1-stripe",
        )
        .await
        .unwrap();

    let expected = metadata(&[("org_id", "org-1"), ("plan", "pro")]);
    assert_eq!(updated.metadata, expected, "empty value deletes the key");
    assert_eq!(updated.email.as_deref(), Some("billing@org.example"));
    assert_eq!(sim.customer(&id).unwrap(), updated);
    assert_eq!(client.get_customer(&id).await.unwrap(), Some(updated));
    assert_eq!(sim.stats().mutations, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_retry_with_the_same_key_is_replayed_not_performed_again() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[("user_id", "u-2")]);
    let client = client_for(&sim);
    let tags = [("org_id", "org-2"), ("user_id", "")];

    let first = client
        .update_customer(&id, &tags, None, "action-7")
        .await
        .unwrap();
    let second = client
        .update_customer(&id, &tags, None, "action-7")
        .await
        .unwrap();
    assert_eq!(first, second);

    // The replay is visible on the wire, as on Stripe.
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/customers/{id}", sim.base_url()))
        .bearer_auth(sim.api_key())
        .header("Idempotency-Key", "action-7")
        .form(&[("metadata[org_id]", "org-2"), ("metadata[user_id]", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["Idempotent-Replayed"], "true");
    assert!(raw.headers().contains_key("Original-Request"));

    let stats = sim.stats();
    assert_eq!(stats.mutations, 1, "performed once");
    assert_eq!(stats.idempotent_replays, 2);
    assert_eq!(stats.responses("update_customer", 200), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn reusing_a_key_with_different_parameters_is_a_permanent_idempotency_error() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[]);
    let client = client_for(&sim);

    client
        .update_customer(&id, &[("org_id", "org-a")], None, "k-1")
        .await
        .unwrap();
    let err = client
        .update_customer(&id, &[("org_id", "org-b")], None, "k-1")
        .await
        .unwrap_err();

    assert!(!err.is_transient());
    let (status, kind, _, message) = expect_permanent(&err);
    assert_eq!((status, kind), (400, "idempotency_error"));
    assert!(message.contains("same parameters"), "{message}");
    assert_eq!(
        sim.customer(&id).unwrap().metadata,
        metadata(&[("org_id", "org-a")])
    );
    assert_eq!(sim.stats().mutations, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_lost_response_is_transient_and_the_retry_returns_what_was_performed() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[("user_id", "u-3")]);
    let client = client_for(&sim);
    sim.set_faults(Faults {
        perform_then_502: true,
        ..Faults::default()
    });
    let tags = [("org_id", "org-3"), ("user_id", "")];

    let err = client
        .update_customer(&id, &tags, Some("o3@example.com"), "tag-3")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("502"), "{err}");
    // It happened anyway.
    assert_eq!(
        sim.customer(&id).unwrap().metadata,
        metadata(&[("org_id", "org-3")])
    );

    let retried = client
        .update_customer(&id, &tags, Some("o3@example.com"), "tag-3")
        .await
        .unwrap();
    assert_eq!(retried.metadata, metadata(&[("org_id", "org-3")]));
    assert_eq!(retried.email.as_deref(), Some("o3@example.com"));
    let stats = sim.stats();
    assert_eq!(stats.mutations, 1);
    assert_eq!(stats.idempotent_replays, 1);
    assert_eq!(stats.responses("update_customer", 502), 1);

    // The same holds for creation: one customer, whatever the client saw.
    let err = client
        .create_customer(
            "Acme",
            Some("a@acme.example"),
            &[("org_id", "org-4")],
            "create-4",
        )
        .await
        .unwrap_err();
    assert!(err.is_transient());
    let created = client
        .create_customer(
            "Acme",
            Some("a@acme.example"),
            &[("org_id", "org-4")],
            "create-4",
        )
        .await
        .unwrap();
    assert_eq!(created.metadata, metadata(&[("org_id", "org-4")]));
    assert_eq!(sim.stats().customers, 2, "the seeded one and Acme");
    sim.shutdown().await;
}

#[tokio::test]
async fn creating_twice_with_the_same_key_makes_one_customer() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let client = client_for(&sim);

    let a = client
        .create_customer(
            "Team A",
            Some("a@team.example"),
            &[("org_id", "org-a")],
            "act-1",
        )
        .await
        .unwrap();
    let b = client
        .create_customer(
            "Team A",
            Some("a@team.example"),
            &[("org_id", "org-a")],
            "act-1",
        )
        .await
        .unwrap();

    assert_eq!(a, b);
    assert!(a.id.starts_with("cus_"), "{}", a.id);
    assert_eq!(a.name.as_deref(), Some("Team A"));
    let stats = sim.stats();
    assert_eq!(stats.customers, 1);
    assert_eq!(stats.mutations, 1);
    assert_eq!(sim.customers(), vec![a.clone()]);

    // After 24 hours Stripe forgets the key: a late retry would create a
    // second customer, which is why the daemon looks up before creating.
    sim.expire_idempotency_keys();
    let found = client
        .list_customers_by_email("a@team.example", 10)
        .await
        .unwrap();
    assert_eq!(found, vec![a]);
    client
        .create_customer(
            "Team A",
            Some("a@team.example"),
            &[("org_id", "org-a")],
            "act-1",
        )
        .await
        .unwrap();
    assert_eq!(sim.stats().customers, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_and_deleted_customers_are_none_and_cannot_be_updated() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let client = client_for(&sim);

    assert_eq!(client.get_customer("cus_doesnotexist").await.unwrap(), None);
    let err = client
        .update_customer("cus_doesnotexist", &[("org_id", "o")], None, "k-404")
        .await
        .unwrap_err();
    let (status, kind, code, message) = expect_permanent(&err);
    assert_eq!(
        (status, kind, code),
        (404, "invalid_request_error", Some("resource_missing"))
    );
    assert!(
        message.contains("No such customer: 'cus_doesnotexist'"),
        "{message}"
    );
    assert_eq!(err.code(), Some("resource_missing"));

    let id = sim.seed_customer(Some("gone@example.com"), &[]);
    assert!(sim.delete_customer(&id));
    assert_eq!(client.get_customer(&id).await.unwrap(), None);
    let err = client
        .update_customer(&id, &[("org_id", "o")], None, "k-deleted")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("resource_missing"));
    assert!(client
        .list_customers_by_email("gone@example.com", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(sim.stats().mutations, 0);

    // A wrong base URL is not mistaken for a missing customer.
    let misrouted = client_with(
        format!("{}/nope", sim.base_url()),
        &sim.api_key(),
        Duration::from_secs(5),
    );
    let err = misrouted.get_customer(&id).await.unwrap_err();
    let (status, _, _, message) = expect_permanent(&err);
    assert_eq!(status, 404);
    assert!(message.starts_with("Unrecognized request URL"), "{message}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_key_is_permanent_401_and_never_echoed() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[]);
    let wrong = "sk_test_wrongKeyValue0123456789abcdef";
    let client = client_with(sim.base_url(), wrong, Duration::from_secs(5));

    let err = client
        .update_customer(&id, &[("org_id", "o")], None, "k-auth")
        .await
        .unwrap_err();
    let (status, kind, _, message) = expect_permanent(&err);
    assert_eq!((status, kind), (401, "invalid_request_error"));
    assert!(message.contains("Invalid API Key"), "{message}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains("wrongKeyValue"), "{shown}");
        assert!(!shown.contains(&sim.api_key()), "{shown}");
    }
    let err = client.get_customer(&id).await.unwrap_err();
    assert!(!err.is_transient());

    // No key at all: Stripe's envelope, 401.
    let raw = reqwest::Client::new()
        .get(format!("{}/v1/customers/{id}", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did not provide an API key"));
    assert_eq!(sim.stats().mutations, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn injected_server_errors_are_transient_and_perform_nothing() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[]);
    let client = client_for(&sim);
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });

    let err = client
        .update_customer(&id, &[("org_id", "o-5")], None, "k-5")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("500 api_error"), "{err}");
    assert!(client.get_customer(&id).await.unwrap_err().is_transient());
    assert!(client
        .create_customer("X", None, &[], "k-6")
        .await
        .unwrap_err()
        .is_transient());
    assert_eq!(sim.stats().mutations, 0);
    assert!(sim.customer(&id).unwrap().metadata.is_empty());

    // Nothing was stored under the key: once Stripe recovers, the retry acts.
    sim.set_faults(Faults::default());
    let ok = client
        .update_customer(&id, &[("org_id", "o-5")], None, "k-5")
        .await
        .unwrap();
    assert_eq!(ok.metadata, metadata(&[("org_id", "o-5")]));
    let stats = sim.stats();
    assert_eq!(stats.responses("update_customer", 500), 1);
    assert_eq!((stats.mutations, stats.idempotent_replays), (1, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_concurrent_request_with_the_same_key_gets_a_transient_conflict() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[]);
    let client = client_for(&sim);
    sim.set_faults(Faults {
        latency_ms: (300, 300),
        ..Faults::default()
    });
    let tags = [("org_id", "org-c")];

    let first = client.update_customer(&id, &tags, None, "k-c");
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.update_customer(&id, &tags, None, "k-c").await
    };
    let (first, second) = tokio::join!(first, second);

    assert_eq!(first.unwrap().metadata, metadata(&[("org_id", "org-c")]));
    let err = second.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("409"), "{err}");
    assert_eq!(sim.stats().mutations, 1);

    // Once the first one finished, the retry is a replay.
    sim.set_faults(Faults::default());
    client
        .update_customer(&id, &tags, None, "k-c")
        .await
        .unwrap();
    assert_eq!(
        (sim.stats().mutations, sim.stats().idempotent_replays),
        (1, 1)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_timed_out_request_still_happens_and_the_retry_replays_it() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[]);
    let impatient = client_with(sim.base_url(), &sim.api_key(), Duration::from_millis(100));
    sim.set_faults(Faults {
        latency_ms: (400, 400),
        ..Faults::default()
    });

    let err = impatient
        .update_customer(&id, &[("org_id", "org-t")], None, "k-t")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");

    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        sim.customer(&id).unwrap().metadata,
        metadata(&[("org_id", "org-t")])
    );
    sim.set_faults(Faults::default());
    impatient
        .update_customer(&id, &[("org_id", "org-t")], None, "k-t")
        .await
        .unwrap();
    assert_eq!(
        (sim.stats().mutations, sim.stats().idempotent_replays),
        (1, 1)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn dropped_connections_are_transient_and_perform_nothing() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(None, &[]);
    let client = client_for(&sim);
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });

    let err = client
        .update_customer(&id, &[("org_id", "o-d")], None, "k-d")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(client.get_customer(&id).await.unwrap_err().is_transient());
    let stats = sim.stats();
    assert_eq!(stats.dropped_connections, 2);
    assert_eq!(stats.mutations, 0);

    sim.set_faults(Faults::default());
    client
        .update_customer(&id, &[("org_id", "o-d")], None, "k-d")
        .await
        .unwrap();
    assert_eq!(sim.stats().mutations, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn failure_rules_pick_the_endpoint_and_the_status() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(Some("f@example.com"), &[]);
    let client = client_for(&sim);
    sim.set_faults(Faults {
        fail: vec![
            ("update_customer".into(), 429),
            ("create_customer".into(), 402),
        ],
        ..Faults::default()
    });

    let err = client
        .update_customer(&id, &[("org_id", "o")], None, "k-f")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "429 is transient: {err:?}");
    let err = client
        .create_customer("F", None, &[], "k-g")
        .await
        .unwrap_err();
    let (status, kind, code, _) = expect_permanent(&err);
    assert_eq!(
        (status, kind, code),
        (402, "card_error", Some("card_declined"))
    );
    // Other endpoints are untouched.
    assert!(client.get_customer(&id).await.unwrap().is_some());
    let stats = sim.stats();
    assert_eq!(stats.responses("update_customer", 429), 1);
    assert_eq!(stats.responses("create_customer", 402), 1);
    assert_eq!(stats.mutations, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn listing_by_email_is_exact_newest_first_and_limited() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let client = client_for(&sim);
    let ids: Vec<String> = (0..3)
        .map(|i| sim.seed_customer(Some("dup@example.com"), &[("n", &i.to_string())]))
        .collect();
    sim.seed_customer(Some("DUP@example.com"), &[]);
    sim.seed_customer(Some("other@example.com"), &[]);

    let two = client
        .list_customers_by_email("dup@example.com", 2)
        .await
        .unwrap();
    let got: Vec<&str> = two.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    let all = client
        .list_customers_by_email("dup@example.com", 500)
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "case-sensitive, clamped limit");
    assert!(client
        .list_customers_by_email("nobody@example.com", 10)
        .await
        .unwrap()
        .is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn debug_and_display_never_show_the_api_key() {
    let key = "sk_test_topSecretStripeKey987654321";
    let args = SimulatorArgs {
        api_key: key.to_string(),
        ..SimulatorArgs::local()
    };
    let sim = StripeSimulator::start(&args).await.unwrap();
    let config = StripeConfig {
        base_url: sim.base_url(),
        api_key: SecretString::from(key),
        timeout: Duration::from_secs(5),
    };
    let client = StripeClient::new(config.clone()).unwrap();
    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let transient = client.get_customer("cus_x").await.unwrap_err();
    sim.set_faults(Faults::default());
    let permanent = client
        .update_customer("cus_x", &[], None, "k")
        .await
        .unwrap_err();
    let unreachable = client_with("http://127.0.0.1:1".into(), key, Duration::from_secs(2))
        .get_customer("cus_x")
        .await
        .unwrap_err();
    assert!(unreachable.is_transient(), "{unreachable:?}");

    let shown = [
        format!("{config:?}"),
        format!("{client:?}"),
        format!("{args:?}"),
        format!("{sim:?}"),
        format!("{transient} {transient:?}"),
        format!("{permanent} {permanent:?}"),
        format!("{unreachable} {unreachable:?}"),
    ];
    for text in shown {
        assert!(!text.contains("topSecretStripeKey"), "{text}");
    }
    sim.shutdown().await;
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: SimulatorArgs,
}

#[test]
fn the_command_line_takes_ports_keys_and_faults() {
    let cli = Cli::try_parse_from([
        "simulate",
        "--port",
        "0",
        "--api-key",
        "sk_test_cli",
        "--error-rate",
        "0.25",
        "--latency-ms",
        "10..20",
        "--perform-then-502",
        "--drop-rate",
        "0.1",
        "--fail",
        "update_customer=429",
        "--fail",
        "*=503",
    ])
    .unwrap();
    let faults = cli.sim.faults();
    assert_eq!(cli.sim.port, 0);
    assert_eq!(cli.sim.api_key, "sk_test_cli");
    assert_eq!(faults.error_rate, 0.25);
    assert_eq!(faults.latency_ms, (10, 20));
    assert!(faults.perform_then_502);
    assert_eq!(faults.drop_rate, 0.1);
    assert_eq!(
        faults.fail,
        vec![("update_customer".to_string(), 429), ("*".to_string(), 503)]
    );

    let defaults = Cli::try_parse_from(["simulate"]).unwrap().sim;
    assert_eq!(defaults.port, 12111);
    assert_eq!(defaults.fault_flags.latency_ms, (0, 0));
    assert!(Cli::try_parse_from(["simulate", "--fail", "teams=500"]).is_err());
    assert!(Cli::try_parse_from(["simulate", "--error-rate", "2"]).is_err());
    assert!(Cli::try_parse_from(["simulate", "--latency-ms", "9..1"]).is_err());
}

#[tokio::test]
async fn the_customer_type_round_trips_through_json() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let id = sim.seed_customer(Some("j@example.com"), &[("org_id", "o-j")]);
    let raw: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/customers/{id}", sim.base_url()))
        .bearer_auth(sim.api_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["object"], "customer");
    assert_eq!(raw["metadata"]["org_id"], "o-j");
    let parsed: Customer = serde_json::from_value(raw).unwrap();
    assert_eq!(Some(parsed), sim.customer(&id));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_redirecting_base_url_never_gets_the_api_key_to_the_redirect_target() {
    // Any server answering 307 will do: the LiteLLM simulator's redirect fault.
    let target = orgkeeper::litellm::LiteLlmSimulator::start_local()
        .await
        .unwrap();
    let redirector = orgkeeper::litellm::LiteLlmSimulator::start_local()
        .await
        .unwrap();
    redirector.set_redirect_to(Some(&target.base_url()));
    let client = client_with(
        redirector.base_url(),
        "sk_test_redirected",
        Duration::from_secs(5),
    );
    let err = client.get_customer("cus_anything").await.unwrap_err();
    let (status, kind, _, message) = expect_permanent(&err);
    assert_eq!((status, kind), (307, "redirect"));
    assert!(
        message.contains(&target.base_url()) && message.contains("STRIPE_BASE_URL"),
        "names the Location and the setting: {message}"
    );
    assert!(!err.to_string().contains("sk_test_redirected"));
    assert_eq!(
        target.stats().total_requests(),
        0,
        "nothing reached the target"
    );
}

/// `GET /v1/customers/search` with this raw query string, as Stripe answers it.
async fn raw_search(sim: &StripeSimulator, params: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/customers/search", sim.base_url()))
        .bearer_auth(sim.api_key())
        .query(params)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn searching_by_org_finds_exactly_the_customers_tagged_with_it() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let client = client_for(&sim);
    let older = sim.seed_customer(Some("a@example.com"), &[("org_id", "org-s1")]);
    let newer = sim.seed_customer(None, &[("org_id", "org-s1"), ("plan", "team")]);
    let gone = sim.seed_customer(None, &[("org_id", "org-s1")]);
    sim.delete_customer(&gone);
    sim.seed_customer(None, &[("org_id", "org-s10")]);
    sim.seed_customer(None, &[("user_id", "org-s1")]);
    sim.seed_customer(Some("org-s1"), &[]);

    let found = client.search_customers_by_org("org-s1").await.unwrap();
    let ids: Vec<&str> = found.customers.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![newer.as_str(), older.as_str()],
        "exact metadata match, live customers, newest first"
    );
    assert!(!found.has_more);
    assert_eq!(found.customers[1].email.as_deref(), Some("a@example.com"));
    assert!(client
        .search_customers_by_org("org-none")
        .await
        .unwrap()
        .customers
        .is_empty());

    // The answer has Stripe's search_result shape.
    let (status, body) = raw_search(
        &sim,
        &[("query", "metadata['org_id']:'org-s1'"), ("limit", "1")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "search_result");
    assert_eq!(body["url"], "/v1/customers/search");
    assert_eq!(body["has_more"], true);
    assert!(body["next_page"].is_null());
    assert_eq!(body["data"][0]["id"], newer.as_str());
    // Double quotes, other fields and AND / OR work too.
    let (_, body) = raw_search(
        &sim,
        &[(
            "query",
            r#"metadata["org_id"]:"org-s1" AND email:"a@example.com""#,
        )],
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    let (_, body) = raw_search(
        &sim,
        &[("query", "metadata['org_id']:'org-s10' OR email:'org-s1'")],
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(sim.stats().responses("search_customers", 200), 5);
    assert_eq!(sim.stats().mutations, 0, "search changes nothing");
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_searches_get_stripes_400_and_the_client_refuses_injection() {
    let sim = StripeSimulator::start_local().await.unwrap();
    for query in [
        "metadata['org_id']:org-1",
        "metadata['org_id']:'org-1",
        "metadata[org_id]:'org-1'",
        "created>100",
        "email:'a' AND name:'b' OR phone:'c'",
        "",
    ] {
        let (status, body) = raw_search(&sim, &[("query", query)]).await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["error"]["param"], "query", "{body}");
    }
    let (status, body) = raw_search(&sim, &[]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_missing", "{body}");
    let (status, body) = raw_search(&sim, &[("query", "email:'a'"), ("limit", "0")]).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &serde_json::json!("limit"))
    );

    // A value that could change the query never leaves the client.
    let client = client_for(&sim);
    let before = sim.stats().requests_to("search_customers");
    for evil in ["x' OR email:'a", "x\\", "a b", ""] {
        let err = client.search_customers_by_org(evil).await.unwrap_err();
        let (status, kind, _, _) = expect_permanent(&err);
        assert_eq!((status, kind), (0, "invalid_argument"), "{evil:?}");
    }
    assert_eq!(sim.stats().requests_to("search_customers"), before);
    sim.shutdown().await;
}

#[tokio::test]
async fn search_takes_injected_faults_and_can_lag_like_stripes_index() {
    let sim = StripeSimulator::start_local().await.unwrap();
    let client = client_for(&sim);
    sim.seed_customer(None, &[("org_id", "org-f")]);
    sim.set_faults(Faults {
        fail: vec![("search_customers".into(), 503)],
        ..Faults::default()
    });
    let err = client.search_customers_by_org("org-f").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(sim.stats().responses("search_customers", 503), 1);
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    assert!(client
        .search_customers_by_org("org-f")
        .await
        .unwrap_err()
        .is_transient());
    sim.set_faults(Faults {
        fail: vec![("search_customers".into(), 400)],
        ..Faults::default()
    });
    assert!(!client
        .search_customers_by_org("org-f")
        .await
        .unwrap_err()
        .is_transient());
    sim.set_faults(Faults::default());

    // Eventual consistency: a customer created just now is missing from
    // search until the lag has passed, but the idempotency key still
    // replays its creation.
    sim.set_search_lag(Duration::from_secs(3600));
    let created = client
        .create_customer("Lagging", None, &[("org_id", "org-l")], "k-lag")
        .await
        .unwrap();
    assert!(client
        .search_customers_by_org("org-l")
        .await
        .unwrap()
        .customers
        .is_empty());
    let again = client
        .create_customer("Lagging", None, &[("org_id", "org-l")], "k-lag")
        .await
        .unwrap();
    assert_eq!(again.id, created.id);
    sim.set_search_lag(Duration::ZERO);
    let found = client.search_customers_by_org("org-l").await.unwrap();
    assert_eq!(found.customers, vec![created]);
    assert_eq!(sim.stats().customers, 2);

    assert_eq!(
        Cli::try_parse_from(["simulate", "--fail", "search_customers=429"])
            .unwrap()
            .sim
            .faults()
            .fail,
        vec![("search_customers".to_string(), 429)]
    );
    sim.shutdown().await;
}
