//! The LiteLLM client against the LiteLLM simulator: onboarding, every retry
//! path the real proxy forces on us, injected faults, and secrets that must
//! never leak into errors or `Debug` output.

use orgkeeper::litellm::simulator::{LiteLlmSimulator, SimulatorArgs};
use orgkeeper::litellm::{
    hash_key, Created, Deleted, Faults, LiteLlmClient, LiteLlmConfig, LiteLlmError, NewKey,
    NewTeam, NewUser, TeamOwner, UserInfo, UNLIMITED_MAX_BUDGET,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TEAM: &str = "6f1c2a4e-0000-4000-8000-000000000001";
const USER: &str = "0b7e9d3c-0000-4000-8000-000000000002";
const KEY: &str = "sk-orgkeeper-test-key-0123456789abcdef";

fn alias() -> String {
    format!("OpenHands Cloud - user {USER} - org {TEAM}")
}

fn models() -> Vec<String> {
    vec!["litellm_proxy/test-model".to_string()]
}

fn client_with(sim: &LiteLlmSimulator, header: &str, key: &str) -> LiteLlmClient {
    LiteLlmClient::new(LiteLlmConfig {
        base_url: sim.base_url(),
        master_key: SecretString::from(key),
        auth_header: header.to_string(),
        timeout: Duration::from_secs(5),
    })
    .expect("client")
}

fn client(sim: &LiteLlmSimulator) -> LiteLlmClient {
    client_with(sim, "x-goog-api-key", &sim.master_key())
}

fn team<'a>(models: &'a [String]) -> NewTeam<'a> {
    NewTeam {
        team_id: TEAM,
        team_alias: "Acme",
        max_budget: Some(50.0),
        models,
        metadata: json!({"managed_by": "orgkeeper", "org_id": TEAM, "version": 4}),
    }
}

fn new_key<'a>(key: &'a SecretString, alias: &'a str, models: &'a [String]) -> NewKey<'a> {
    NewKey {
        key,
        key_alias: alias,
        team_id: TEAM,
        user_id: USER,
        models,
        metadata: json!({"org": TEAM}),
    }
}

/// The daemon's onboarding sequence; returns what each step reported.
async fn onboard(c: &LiteLlmClient, key: &SecretString) -> [Created; 4] {
    let models = models();
    let alias = alias();
    let team = c.create_team(&team(&models)).await.expect("team");
    let user = c
        .create_user(&NewUser::plain(USER, Some("owner@example.com")))
        .await
        .expect("user");
    let member = c
        .add_team_member(TEAM, USER, Some(50.0))
        .await
        .expect("member");
    let k = c
        .ensure_key(&new_key(key, &alias, &models))
        .await
        .expect("key");
    [team, user, member, k]
}

fn assert_one_of_each(sim: &LiteLlmSimulator) {
    let stats = sim.stats();
    assert_eq!(
        (stats.teams, stats.users, stats.memberships, stats.keys),
        (1, 1, 1, 1),
        "exactly one team, user, membership and key: {stats:?}"
    );
    let t = sim.team(TEAM).expect("team");
    assert_eq!(t.members.len(), 1);
    assert_eq!(t.members[0].user_id, USER);
    assert_eq!(t.keys.len(), 1);
    assert_eq!(t.keys[0].alias.as_deref(), Some(alias().as_str()));
    assert_eq!(t.keys[0].user_id.as_deref(), Some(USER));
}

async fn raw(
    sim: &LiteLlmSimulator,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = reqwest::Client::new()
        .request(method, format!("{}{path}", sim.base_url()))
        .header("x-litellm-api-key", sim.master_key());
    send(req, body).await
}

async fn send(mut req: reqwest::RequestBuilder, body: Option<Value>) -> (u16, Value) {
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `GET /v1/models` with `Authorization: Bearer <key>`.
async fn models_with(sim: &LiteLlmSimulator, key: &str) -> (u16, Value) {
    let req = reqwest::Client::new()
        .get(format!("{}/v1/models", sim.base_url()))
        .header("Authorization", format!("Bearer {key}"));
    send(req, None).await
}

/// Creates the team and a key in it with the master key, over HTTP.
async fn team_and_key(sim: &LiteLlmSimulator, key: &str, alias: &str) {
    let post = reqwest::Method::POST;
    let (status, body) = raw(
        sim,
        post.clone(),
        "/team/new",
        Some(json!({"team_id": TEAM, "team_alias": "Acme"})),
    )
    .await;
    assert!(status == 200 || status == 400, "{status} {body}");
    let (status, body) = raw(
        sim,
        post,
        "/key/generate",
        Some(json!({"key": key, "key_alias": alias, "team_id": TEAM, "user_id": USER})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn onboarding_creates_exactly_one_team_user_membership_and_key() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let key = SecretString::from(KEY);

    assert_eq!(onboard(&c, &key).await, [Created::New; 4]);

    assert_one_of_each(&sim);
    let t = sim.team(TEAM).unwrap();
    assert_eq!(t.max_budget, Some(50.0));
    assert_eq!(t.models, models());
    assert_eq!(
        t.metadata,
        json!({"managed_by": "orgkeeper", "org_id": TEAM, "version": 4})
    );
    assert!(
        t.caller_admin,
        "/team/new adds the master-key caller as admin"
    );
    assert_eq!(t.members[0].max_budget_in_team, Some(50.0));
    assert_eq!(t.members[0].role, "user");
    let u = sim.user(USER).unwrap();
    assert_eq!(u.email.as_deref(), Some("owner@example.com"));
    assert_eq!(u.teams, vec![TEAM.to_string()]);
    assert_eq!(u.keys, 1, "auto_create_key:false made no extra key");
    assert!(sim.has_key(KEY));
    assert!(c.key_exists(&key).await.unwrap());
    assert_ne!(
        c.team_owner(TEAM, &json!({})).await.unwrap(),
        TeamOwner::Absent
    );
    assert_eq!(
        c.team_owner("no-such-team", &json!({})).await.unwrap(),
        TeamOwner::Absent
    );
}

#[tokio::test]
async fn every_retry_returns_existing_and_creates_nothing_new() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let key = SecretString::from(KEY);
    onboard(&c, &key).await;
    let models = models();
    let alias = alias();

    // The whole sequence again, as after a crash: every step finds its work done.
    assert_eq!(onboard(&c, &key).await, [Created::Existing; 4]);
    let stats = sim.stats();
    assert_eq!(stats.count("team/new", 400), 1, "team: 400 already exists");
    assert_eq!(stats.count("team/info", 200), 1, "…confirmed by /team/info");
    assert_eq!(stats.count("user/new", 409), 1, "user: 409 for the id");
    assert_eq!(stats.count("team/member_add", 400), 1, "member: 400");

    // The two key traps, called directly: an exact retry answers 400
    // "alias already exists", and the key is there.
    c.generate_key(&new_key(&key, &alias, &models))
        .await
        .expect("400 alias-exists is not an error for the caller");
    assert_eq!(sim.stats().count("key/generate", 400), 1);
    assert!(c.key_exists(&key).await.unwrap());
    // The same key under a fresh alias: 200, echoed, nothing written.
    c.generate_key(&new_key(&key, "a brand-new alias", &models))
        .await
        .expect("200 echo");
    assert_eq!(sim.stats().count("key/generate", 200), 2);
    let k = sim.key(KEY).unwrap();
    assert_eq!(
        k.alias.as_deref(),
        Some(alias.as_str()),
        "the echo wrote nothing"
    );

    assert_one_of_each(&sim);
}

#[tokio::test]
async fn a_taken_email_falls_back_to_a_user_without_email() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    assert_eq!(
        c.create_user(&NewUser::plain("first", Some("Ann@Example.com")))
            .await
            .unwrap(),
        Created::New
    );
    // Email uniqueness is case-insensitive at the proxy.
    assert_eq!(
        c.create_user(&NewUser::plain(USER, Some("ann@example.COM")))
            .await
            .unwrap(),
        Created::New
    );
    assert_eq!(sim.stats().count("user/new", 409), 1);
    assert_eq!(sim.user(USER).unwrap().email, None);
    assert_eq!(
        sim.user("first").unwrap().email.as_deref(),
        Some("Ann@Example.com")
    );
    // A retry hits the id conflict first: Existing, nothing new.
    assert_eq!(
        c.create_user(&NewUser::plain(USER, Some("ann@example.com")))
            .await
            .unwrap(),
        Created::Existing
    );
    assert_eq!(sim.stats().users, 2);
}

#[tokio::test]
async fn an_answer_lost_after_the_work_was_done_is_transient_and_the_retry_finds_it() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        perform_then_502: true,
        ..Faults::default()
    });
    let c = client(&sim);
    let key = SecretString::from(KEY);
    let models = models();
    let alias = alias();

    let e = c.create_team(&team(&models)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(
        sim.team(TEAM).is_some(),
        "the 502 came after the team was created"
    );
    assert_eq!(
        c.create_team(&team(&models)).await.unwrap(),
        Created::Existing
    );

    let e = c
        .create_user(&NewUser::plain(USER, Some("o@example.com")))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        c.create_user(&NewUser::plain(USER, Some("o@example.com")))
            .await
            .unwrap(),
        Created::Existing
    );

    let e = c.add_team_member(TEAM, USER, None).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        c.add_team_member(TEAM, USER, None).await.unwrap(),
        Created::Existing
    );

    let e = c
        .ensure_key(&new_key(&key, &alias, &models))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(
        c.ensure_key(&new_key(&key, &alias, &models)).await.unwrap(),
        Created::Existing
    );

    assert_one_of_each(&sim);
    assert_eq!(sim.stats().status_count(502), 4);

    let e = c.delete_team(TEAM).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(c.delete_team(TEAM).await.unwrap(), Deleted::AlreadyGone);
    assert_eq!(sim.stats().teams, 0);
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_transient_and_do_nothing() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let models = models();

    sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..6 {
        let e = c.create_team(&team(&models)).await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("team/new"), "{e}");
    }
    assert_eq!(sim.stats().teams, 0, "5xx answered without acting");

    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let e = c.create_team(&team(&models)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(sim.stats().count("team/new", 0), 1, "counted as dropped");
    assert_eq!(sim.stats().teams, 0, "dropped without acting");

    sim.set_faults(Faults::default());
    assert_eq!(c.create_team(&team(&models)).await.unwrap(), Created::New);
}

#[tokio::test]
async fn an_injected_400_on_key_generate_is_permanent() {
    let args = SimulatorArgs {
        port: 0,
        fail: vec![("key/generate".to_string(), 400)],
        ..SimulatorArgs::default()
    };
    let sim = LiteLlmSimulator::start(&args).await.unwrap();
    let c = client(&sim);
    let key = SecretString::from(KEY);
    let models = models();
    let alias = alias();
    c.create_team(&team(&models)).await.unwrap();

    let e = c
        .generate_key(&new_key(&key, &alias, &models))
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(
        matches!(
            e,
            LiteLlmError::Permanent {
                status: 400,
                call: "key/generate",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!c.key_exists(&key).await.unwrap());
    assert_eq!(sim.stats().keys, 0);
}

#[tokio::test]
async fn a_wrong_master_key_is_a_permanent_401_that_says_what_to_check() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let wrong = "sk-wrong-master-key-5678";
    for header in ["x-goog-api-key", "Authorization"] {
        let c = client_with(&sim, header, wrong);
        let e = c.create_team(&team(&models())).await.unwrap_err();
        assert!(
            matches!(e, LiteLlmError::Permanent { status: 401, .. }),
            "{e:?}"
        );
        let text = format!("{e} {e:?}");
        assert!(
            text.contains("LITELLM_MASTER_KEY") && text.contains("LITELLM_AUTH_HEADER"),
            "{text}"
        );
        assert!(text.contains(header), "names the header in use: {text}");
        assert!(
            !text.contains("wrong-master-key") && !text.contains("5678"),
            "{text}"
        );
        assert!(!text.contains(&sim.master_key()), "{text}");
    }
    assert_eq!(sim.stats().teams, 0);
}

#[tokio::test]
async fn every_documented_header_form_authenticates_and_a_bare_authorization_does_not() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let key = sim.master_key();
    let http = reqwest::Client::new();
    let url = format!("{}/team/info?team_id=nope", sim.base_url());
    for (name, value) in [
        ("Authorization", format!("Bearer {key}")),
        ("x-litellm-api-key", key.clone()),
        ("x-goog-api-key", key.clone()),
        ("x-api-key", key.clone()),
        ("api-key", key.clone()),
    ] {
        let resp = http.get(&url).header(name, value).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{name} authenticates");
    }
    let resp = http
        .get(&url)
        .header("Authorization", key.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "Authorization needs Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "auth_error");
    assert_eq!(body["error"]["code"], "401", "code is a string");
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "no key at all");

    // The client's `Authorization` setting sends `Bearer <key>`.
    let c = client_with(&sim, "Authorization", &key);
    assert_eq!(c.create_team(&team(&models())).await.unwrap(), Created::New);
    let c = client_with(&sim, "x-litellm-api-key", &key);
    assert_ne!(
        c.team_owner(TEAM, &json!({})).await.unwrap(),
        TeamOwner::Absent
    );
}

#[tokio::test]
async fn deleting_a_team_takes_its_keys_and_memberships_and_a_second_delete_is_already_gone() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let key = SecretString::from(KEY);
    onboard(&c, &key).await;

    assert_eq!(c.delete_team(TEAM).await.unwrap(), Deleted::Deleted);
    assert!(
        !c.key_exists(&key).await.unwrap(),
        "the team's key went with it"
    );
    let stats = sim.stats();
    assert_eq!(
        (stats.teams, stats.users, stats.memberships, stats.keys),
        (0, 1, 0, 0)
    );
    let u = sim.user(USER).expect("users remain");
    assert!(u.teams.is_empty(), "the user lost the team");
    assert_eq!(c.delete_team(TEAM).await.unwrap(), Deleted::AlreadyGone);

    // A new org with the same id starts clean.
    assert_eq!(c.create_team(&team(&models())).await.unwrap(), Created::New);
}

#[tokio::test]
async fn members_can_be_removed_once_and_member_add_follows_the_proxy() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    onboard(&c, &SecretString::from(KEY)).await;

    assert_eq!(
        c.remove_team_member(TEAM, USER).await.unwrap(),
        Deleted::Deleted
    );
    assert!(sim.user(USER).unwrap().teams.is_empty());
    assert!(sim.team(TEAM).unwrap().members.is_empty());
    // Removing them again: 400 "… not in team …", as the real proxy says.
    let (status, body) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_delete",
        Some(json!({"team_id": TEAM, "user_id": USER})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let message = body["detail"]["error"].as_str().unwrap();
    assert!(
        message.contains("not in team") && message.contains(USER),
        "{message}"
    );
    // By email too: a member added by email is removed by email, once.
    let by_email = json!({"team_id": TEAM, "user_email": "mail@example.com"});
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_add",
        Some(
            json!({"team_id": TEAM, "member": {"user_email": "mail@example.com", "role": "user"}}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_delete",
        Some(by_email.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_delete",
        Some(by_email),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("not in team"),
        "{body}"
    );
    // An unknown team: 404, which the client takes as already gone.
    let (status, body) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_delete",
        Some(json!({"team_id": "no-such-team", "user_id": USER})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["detail"]["error"].is_string(), "{body}");
    assert_eq!(
        c.remove_team_member("no-such-team", USER).await.unwrap(),
        Deleted::AlreadyGone
    );
    assert!(sim.team(TEAM).unwrap().members.is_empty());

    // An unknown user is created by member_add.
    assert_eq!(
        c.add_team_member(TEAM, "ghost", None).await.unwrap(),
        Created::New
    );
    assert_eq!(sim.user("ghost").unwrap().teams, vec![TEAM.to_string()]);

    // An unknown team: 404 with the `detail` envelope, permanent.
    let e = c
        .add_team_member("no-such-team", USER, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, LiteLlmError::Permanent { status: 404, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("Team not found"), "{e}");
    let (status, body) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_add",
        Some(json!({"team_id": "no-such-team", "member": {"user_id": USER, "role": "user"}})),
    )
    .await;
    assert_eq!(status, 404);
    assert!(body["detail"]["error"].is_string(), "{body}");

    // role "admin" needs an enterprise licence.
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/member_add",
        Some(json!({"team_id": TEAM, "member": {"user_id": "boss", "role": "admin"}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(sim.user("boss").is_none());
}

#[tokio::test]
async fn the_key_endpoints_keep_the_real_proxys_quirks() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let post = reqwest::Method::POST;
    // An unknown team is accepted.
    let (status, body) = raw(
        &sim,
        post.clone(),
        "/key/generate",
        Some(json!({"key": KEY, "key_alias": "a1", "team_id": "nobody", "user_id": USER})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], KEY);
    // The same key without an alias: 200, echoed, nothing written.
    let (status, body) = raw(
        &sim,
        post.clone(),
        "/key/generate",
        Some(json!({"key": KEY, "user_id": "someone-else"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["user_id"], "someone-else", "echoes the request");
    assert_eq!(sim.key(KEY).unwrap().user_id.as_deref(), Some(USER));
    // Another key with a used alias: 400.
    let (status, body) = raw(
        &sim,
        post.clone(),
        "/key/generate",
        Some(json!({"key": "sk-another-key-0123456789", "key_alias": "a1"})),
    )
    .await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Key with alias 'a1' already exists"),
        "{message}"
    );
    // Keys must start with sk- and be at least 16 characters.
    for bad in ["pk-0123456789abcdef", "sk-short"] {
        let (status, _) = raw(
            &sim,
            post.clone(),
            "/key/generate",
            Some(json!({"key": bad})),
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }
    assert_eq!(sim.stats().keys, 1);
    // /key/info: 404 "Key not found in database" when absent; by key or token.
    let (status, body) = raw(
        &sim,
        reqwest::Method::GET,
        "/key/info?key=sk-absent-key-0123456789",
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "Key not found in database");
    let token = sim.key(KEY).unwrap().token;
    let (status, body) = raw(
        &sim,
        reqwest::Method::GET,
        &format!("/key/info?key={token}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["info"]["key_alias"], "a1");

    // The client refuses a malformed key before sending it, and never echoes it.
    let c = client(&sim);
    let bad = SecretString::from("pk-not-a-litellm-key-12345");
    let models = models();
    let e = c
        .generate_key(&new_key(&bad, "x", &models))
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert!(!format!("{e} {e:?}").contains("not-a-litellm-key"), "{e}");
}

#[tokio::test]
async fn a_legacy_users_budget_and_keys_move_to_the_personal_team() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let legacy = "legacy-user";
    let keys: Vec<String> = (0..150).map(|i| format!("sk-legacy-key-{i:010}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    sim.seed_user(
        legacy,
        Some("legacy@example.com"),
        Some(25.0),
        5.0,
        &key_refs,
    );

    assert_eq!(
        c.user_info(legacy).await.unwrap(),
        Some(UserInfo {
            max_budget: Some(25.0),
            spend: 5.0
        })
    );
    assert_eq!(c.user_info("nobody").await.unwrap(), None);

    let credits = 20.0;
    let models = models();
    let personal = NewTeam {
        team_id: legacy,
        team_alias: "Legacy's personal org",
        max_budget: Some(credits),
        models: &models,
        metadata: json!({}),
    };
    assert_eq!(c.create_team(&personal).await.unwrap(), Created::New);
    c.update_user_max_budget(legacy, UNLIMITED_MAX_BUDGET)
        .await
        .unwrap();
    assert_eq!(
        c.add_team_member(legacy, legacy, Some(credits))
            .await
            .unwrap(),
        Created::New
    );
    let listed = c.list_user_keys(legacy).await.unwrap();
    assert_eq!(listed.len(), 150, "every page is read");
    assert!(listed.iter().all(|k| k.team_id.is_none()));
    assert!(
        listed.iter().all(|k| !k.token.starts_with("sk-")),
        "tokens, not keys"
    );
    for k in &listed {
        c.move_key_to_team(&k.token, Some(legacy)).await.unwrap();
    }
    let listed = c.list_user_keys(legacy).await.unwrap();
    assert!(listed.iter().all(|k| k.team_id.as_deref() == Some(legacy)));

    let info = c.user_info(legacy).await.unwrap().unwrap();
    assert_eq!(info.max_budget, Some(UNLIMITED_MAX_BUDGET));
    let t = sim.team(legacy).unwrap();
    assert_eq!(t.keys.len(), 150);
    assert_eq!(t.members[0].max_budget_in_team, Some(credits));

    // /user/update upserts, and does not check email uniqueness.
    c.update_user_max_budget("brand-new", 3.0).await.unwrap();
    assert_eq!(sim.user("brand-new").unwrap().max_budget, Some(3.0));
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/user/update",
        Some(json!({"user_id": "brand-new", "user_email": "LEGACY@example.com"})),
    )
    .await;
    assert_eq!(status, 200);

    // Moving a key to a team that does not exist fails permanently.
    let e = c
        .move_key_to_team(&listed[0].token, Some("no-such-team"))
        .await
        .unwrap_err();
    assert!(!e.is_transient(), "{e}");
}

#[tokio::test]
async fn no_key_appears_in_debug_output_or_errors() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let master = sim.master_key();
    let config = LiteLlmConfig {
        base_url: sim.base_url(),
        master_key: SecretString::from(master.clone()),
        auth_header: "Authorization".into(),
        timeout: Duration::from_secs(5),
    };
    let c = LiteLlmClient::new(config.clone()).unwrap();
    let key = SecretString::from(KEY);
    let models = models();
    let alias = alias();
    let nk = new_key(&key, &alias, &models);
    let debug = format!(
        "{c:?} {config:?} {nk:?} {:?} {:?}",
        SimulatorArgs::default(),
        sim
    );
    for secret in [master.as_str(), KEY, "orgkeeper-dev-master"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }

    // Errors from every kind of failure: auth, transport, injected, fault.
    let mut errors = Vec::new();
    let wrong = client_with(&sim, "x-api-key", KEY);
    errors.push(wrong.generate_key(&nk).await.unwrap_err());
    errors.push(wrong.key_exists(&key).await.unwrap_err());
    sim.set_faults(Faults {
        fail: vec![("key/generate".into(), 422), ("key/info".into(), 500)],
        ..Faults::default()
    });
    errors.push(c.generate_key(&nk).await.unwrap_err());
    errors.push(c.key_exists(&key).await.unwrap_err());
    let base = sim.base_url();
    sim.shutdown().await;
    let gone = LiteLlmClient::new(LiteLlmConfig {
        base_url: base,
        master_key: key.clone(),
        auth_header: "Authorization".into(),
        timeout: Duration::from_secs(2),
    })
    .unwrap();
    let e = gone.key_exists(&key).await.unwrap_err();
    assert!(e.is_transient(), "connection refused is transient: {e}");
    errors.push(e);
    for e in &errors {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(key.expose_secret()), "{text}");
        assert!(!text.contains(&master), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}

#[tokio::test]
async fn simulated_latency_does_not_serialize_requests() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_faults(Faults {
        latency_ms: (200, 200),
        ..Faults::default()
    });
    let c = client(&sim);
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.create_user(&NewUser::plain(&format!("user-{i}"), None))
                    .await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), Created::New);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "50 requests of 200 ms took {elapsed:?}"
    );
    assert_eq!(sim.stats().users, 50);
    assert_eq!(sim.stats().succeeded("user/new"), 50);
}

#[tokio::test]
async fn key_delete_takes_keys_tokens_or_aliases_and_404s_when_none_exist() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let post = reqwest::Method::POST;
    let (k1, k2, k3) = (
        "sk-delete-me-one-0123456789",
        "sk-delete-me-two-0123456789",
        "sk-delete-me-three-0123456",
    );
    team_and_key(&sim, k1, "one").await;
    team_and_key(&sim, k2, "two").await;
    team_and_key(&sim, k3, "three").await;
    assert_eq!(sim.team(TEAM).unwrap().keys.len(), 3);
    assert_eq!(
        sim.user_keys(USER).len(),
        3,
        "/key/generate does not create the user"
    );

    // By raw key: 200 with what was asked; gone from the team and the user.
    let (status, body) = raw(
        &sim,
        post.clone(),
        "/key/delete",
        Some(json!({"keys": [k1]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"deleted_keys": [k1]}));
    assert!(!sim.has_key(k1));
    assert_eq!(sim.team(TEAM).unwrap().keys.len(), 2);
    assert_eq!(sim.user_keys(USER).len(), 2);
    // By token.
    let token = sim.key(k2).unwrap().token;
    let (status, body) = raw(
        &sim,
        post.clone(),
        "/key/delete",
        Some(json!({"keys": [token]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted_keys"], json!([token]));
    assert!(!sim.has_key(k2));
    // By alias; the alias is free again afterwards.
    let (status, body) = raw(
        &sim,
        post.clone(),
        "/key/delete",
        Some(json!({"key_aliases": ["three"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted_keys"], json!(["three"]));
    let stats = sim.stats();
    assert_eq!((stats.keys, stats.teams, stats.users), (0, 1, 0));
    assert!(sim.team(TEAM).unwrap().keys.is_empty());
    assert_eq!(sim.user_keys(USER).len(), 0);
    let (status, body) = raw(
        &sim,
        reqwest::Method::GET,
        &format!("/key/list?key_alias=three&team_id={TEAM}"),
        None,
    )
    .await;
    assert_eq!((status, body["total_count"].clone()), (200, json!(0)));
    team_and_key(&sim, "sk-a-new-key-for-alias-3", "three").await;

    // None of them exists (again): 404 in the envelope /key/info uses.
    for gone in [json!({"keys": [k1]}), json!({"key_aliases": ["one"]})] {
        let (status, body) = raw(&sim, post.clone(), "/key/delete", Some(gone)).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "404", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("Key not found"), "{message}");
        assert!(!message.contains(k1), "{message}");
    }
    // Some exist: those are deleted, 200.
    let (status, _) = raw(
        &sim,
        post.clone(),
        "/key/delete",
        Some(json!({"keys": [k1], "key_aliases": ["three"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.stats().keys, 0);
    // Neither field: a validation error.
    let (status, _) = raw(&sim, post.clone(), "/key/delete", Some(json!({}))).await;
    assert_eq!(status, 422);

    let stats = sim.stats();
    assert_eq!(stats.count("key/delete", 200), 4);
    assert_eq!(stats.count("key/delete", 404), 2);
    // GET is not the method.
    let (status, _) = raw(&sim, reqwest::Method::GET, "/key/delete", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn key_delete_takes_injected_faults() {
    let args = SimulatorArgs {
        port: 0,
        fail: vec![("key/delete".to_string(), 500)],
        ..SimulatorArgs::default()
    };
    let sim = LiteLlmSimulator::start(&args).await.unwrap();
    team_and_key(&sim, KEY, "a").await;
    let (status, body) = raw(
        &sim,
        reqwest::Method::POST,
        "/key/delete",
        Some(json!({"keys": [KEY]})),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert!(sim.has_key(KEY), "an injected failure does not act");

    // A lost answer: the first delete acts, then answers 502; the retry 404s.
    sim.set_faults(Faults {
        perform_then_502: true,
        ..Faults::default()
    });
    let delete = json!({"keys": [KEY]});
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/key/delete",
        Some(delete.clone()),
    )
    .await;
    assert_eq!(status, 502);
    assert!(!sim.has_key(KEY));
    let (status, _) = raw(&sim, reqwest::Method::POST, "/key/delete", Some(delete)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn v1_models_answers_a_live_virtual_key_and_401s_an_unknown_one() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    team_and_key(&sim, KEY, "a").await;

    let (status, body) = models_with(&sim, KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "claude-sonnet-4-20250514");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    // The master key works too, and the other header forms.
    let (status, _) = models_with(&sim, &sim.master_key()).await;
    assert_eq!(status, 200);
    let resp = reqwest::Client::new()
        .get(format!("{}/models", sim.base_url()))
        .header("x-litellm-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "/models is the same list");

    // An unknown key, and a deleted one: 401 auth_error.
    let (status, body) = models_with(&sim, "sk-never-issued-0123456789").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "auth_error");
    assert_eq!(body["error"]["code"], "401");
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/key/delete",
        Some(json!({"keys": [KEY]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = models_with(&sim, KEY).await;
    assert_eq!(status, 401, "a deleted key no longer works");
    // A key deleted with its team, likewise.
    team_and_key(&sim, "sk-team-key-0123456789ab", "b").await;
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/delete",
        Some(json!({"team_ids": [TEAM]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(models_with(&sim, "sk-team-key-0123456789ab").await.0, 401);
    // A virtual key is still no admin key.
    let resp = reqwest::Client::new()
        .get(format!("{}/team/info?team_id={TEAM}", sim.base_url()))
        .header("Authorization", "Bearer sk-team-key-0123456789ab")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The served list is configurable; a key restricted to models lists those.
    sim.set_models(&["model-a", "model-b"]);
    let (status, body) = models_with(&sim, &sim.master_key()).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["model-a", "model-b"]);
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/key/generate",
        Some(json!({"key": KEY, "models": ["model-b"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = models_with(&sim, KEY).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["id"], "model-b");

    // Injected faults reach it by its endpoint name.
    sim.set_faults(Faults {
        fail: vec![("v1/models".into(), 503)],
        ..Faults::default()
    });
    assert_eq!(models_with(&sim, KEY).await.0, 503);
    let stats = sim.stats();
    assert_eq!(stats.count("v1/models", 401), 3);
    assert_eq!(stats.count("v1/models", 503), 1);

    // From the command line's settings.
    let args = SimulatorArgs {
        port: 0,
        models: vec!["only-this-one".into()],
        ..SimulatorArgs::default()
    };
    let other = LiteLlmSimulator::start(&args).await.unwrap();
    let (_, body) = models_with(&other, &other.master_key()).await;
    assert_eq!(body["data"][0]["id"], "only-this-one");
}

#[tokio::test]
async fn metadata_round_trips_through_team_info_and_key_info() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let team_meta =
        json!({"version": 4, "model": "litellm_proxy/x", "nested": {"a": [1, null, "b"]}});
    let key_meta = json!({"org": TEAM, "tags": ["x", "y"], "n": 1.5});
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/new",
        Some(json!({"team_id": TEAM, "metadata": team_meta})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/key/generate",
        Some(json!({"key": KEY, "team_id": TEAM, "metadata": key_meta})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = raw(
        &sim,
        reqwest::Method::GET,
        &format!("/team/info?team_id={TEAM}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["team_info"]["metadata"], team_meta);
    assert_eq!(body["keys"][0]["metadata"], key_meta);
    let token = sim.key(KEY).unwrap().token;
    let (status, body) = raw(
        &sim,
        reqwest::Method::GET,
        &format!("/key/info?key={token}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["info"]["metadata"], key_meta);
    assert_eq!(sim.team(TEAM).unwrap().metadata, team_meta);
    assert_eq!(sim.key(KEY).unwrap().metadata, key_meta);
}

#[tokio::test]
async fn every_request_body_and_query_is_kept_per_endpoint() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let key = SecretString::from(KEY);
    onboard(&c, &key).await;

    let teams = sim.requests("team/new");
    assert_eq!(teams.len(), 1);
    assert_eq!(teams[0]["team_id"], TEAM);
    assert_eq!(teams[0]["team_alias"], "Acme");
    assert_eq!(teams[0]["max_budget"], 50.0);
    assert_eq!(teams[0]["models"], json!(models()));
    assert_eq!(
        teams[0]["metadata"],
        json!({"managed_by": "orgkeeper", "org_id": TEAM, "version": 4})
    );
    let users = sim.requests("/user/new");
    assert_eq!(users[0]["user_id"], USER);
    assert_eq!(users[0]["auto_create_key"], false);
    let members = sim.requests("team/member_add");
    assert_eq!(
        members[0]["member"],
        json!({"user_id": USER, "role": "user"})
    );
    assert_eq!(members[0]["max_budget_in_team"], 50.0);
    let generated = sim.requests("key/generate");
    assert_eq!(generated.len(), 1);
    assert_eq!(generated[0]["key_alias"], alias());
    assert_eq!(generated[0]["key"], KEY, "bodies are kept whole");
    // A GET's query, decoded, as an object.
    let infos = sim.requests("key/info");
    assert!(!infos.is_empty());
    assert_eq!(infos[0], json!({"key": hash_key(KEY)}));

    // Failed and dropped requests are kept too, in order.
    sim.set_faults(Faults {
        fail: vec![("team/delete".into(), 503)],
        ..Faults::default()
    });
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/delete",
        Some(json!({"team_ids": ["first"]})),
    )
    .await;
    assert_eq!(status, 503);
    sim.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let _ = c.delete_team("second").await.unwrap_err();
    sim.set_faults(Faults::default());
    let (status, _) = raw(
        &sim,
        reqwest::Method::GET,
        "/key/list?user_id=a%40b.c&page=2&page=3",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let deletes = sim.requests("team/delete");
    assert_eq!(
        deletes,
        vec![
            json!({"team_ids": ["first"]}),
            json!({"team_ids": ["second"]})
        ]
    );
    assert_eq!(
        sim.requests("key/list"),
        vec![json!({"user_id": "a@b.c", "page": ["2", "3"]})]
    );
    assert!(sim.requests("user/update").is_empty());
    // Nothing of it in the simulator's Debug output.
    assert!(!format!("{sim:?}").contains(KEY));
}

#[tokio::test]
async fn a_redirect_fault_answers_307_to_the_same_path_and_query() {
    let args = SimulatorArgs {
        port: 0,
        redirect_to: Some("http://elsewhere.invalid:9/".into()),
        ..SimulatorArgs::default()
    };
    let sim = LiteLlmSimulator::start(&args).await.unwrap();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .post(format!("{}/team/new", sim.base_url()))
        .header("x-litellm-api-key", sim.master_key())
        .json(&json!({"team_id": TEAM}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 307);
    assert_eq!(
        resp.headers()["location"],
        "http://elsewhere.invalid:9/team/new"
    );
    let resp = no_redirects
        .get(format!("{}/key/info?key=abc%20d&x=1", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 307, "before authentication");
    assert_eq!(
        resp.headers()["location"],
        "http://elsewhere.invalid:9/key/info?key=abc%20d&x=1"
    );
    assert_eq!(sim.stats().teams, 0, "a redirect does not act");
    assert_eq!(sim.stats().count("team/new", 307), 1);
    assert_eq!(sim.requests("team/new"), vec![json!({"team_id": TEAM})]);

    // Switched at run time: off, then on to another place.
    sim.set_redirect_to(None);
    let (status, _) = raw(
        &sim,
        reqwest::Method::POST,
        "/team/new",
        Some(json!({"team_id": TEAM})),
    )
    .await;
    assert_eq!(status, 200);
    let target = LiteLlmSimulator::start_local().await.unwrap();
    sim.set_redirect_to(Some(&target.base_url()));
    let resp = no_redirects
        .get(format!("{}/v1/models", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 307);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/v1/models", target.base_url()).as_str()
    );
}

#[tokio::test]
async fn a_team_is_adopted_only_when_its_metadata_says_it_is_ours() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    let ours = json!({"managed_by": "orgkeeper", "org_id": TEAM});
    let foreign = NewTeam {
        metadata: json!({"owner": "another environment"}),
        ..team(&[])
    };
    assert_eq!(c.create_team(&foreign).await.unwrap(), Created::New);
    assert!(matches!(
        c.team_owner(TEAM, &ours).await.unwrap(),
        TeamOwner::Foreign(m) if m.contains("another environment")
    ));
    let adopt = NewTeam {
        metadata: ours.clone(),
        ..team(&[])
    };
    let err = c.create_team(&adopt).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(
        err.to_string().contains(TEAM) && err.to_string().contains("not this organization's"),
        "{err}"
    );
    assert!(
        sim.team(TEAM).is_some(),
        "a refused adoption deletes nothing"
    );

    assert_eq!(c.delete_team(TEAM).await.unwrap(), Deleted::Deleted);
    assert_eq!(c.create_team(&adopt).await.unwrap(), Created::New);
    assert_eq!(
        c.create_team(&adopt).await.unwrap(),
        Created::Existing,
        "our own team is adopted on a retry"
    );
    assert_eq!(c.team_owner(TEAM, &ours).await.unwrap(), TeamOwner::Ours);
    let other_org = json!({"managed_by": "orgkeeper", "org_id": USER});
    assert!(
        matches!(
            c.team_owner(TEAM, &other_org).await.unwrap(),
            TeamOwner::Foreign(_)
        ),
        "orgkeeper's team for another org is not this org's"
    );
}

#[tokio::test]
async fn keys_are_deleted_by_alias_or_by_key_and_already_gone_counts_as_done() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    c.create_team(&team(&[])).await.unwrap();
    let key = SecretString::from(KEY);
    let alias = alias();
    c.generate_key(&new_key(&key, &alias, &[])).await.unwrap();
    assert_eq!(
        c.delete_key_by_alias(&alias).await.unwrap(),
        Deleted::Deleted
    );
    assert!(!sim.has_key(KEY));
    assert_eq!(
        c.delete_key_by_alias(&alias).await.unwrap(),
        Deleted::AlreadyGone
    );

    c.generate_key(&new_key(&key, &alias, &[])).await.unwrap();
    assert_eq!(c.delete_key(&key).await.unwrap(), Deleted::Deleted);
    assert!(!sim.has_key(KEY));
    assert_eq!(c.delete_key(&key).await.unwrap(), Deleted::AlreadyGone);
    let sent = sim.requests("key/delete");
    assert!(
        sent.iter().all(|b| !b.to_string().contains(KEY)),
        "a key is deleted by its token, never sent again: {sent:?}"
    );
}

#[tokio::test]
async fn removing_a_member_twice_or_from_a_missing_team_counts_as_done() {
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let c = client(&sim);
    c.create_team(&team(&[])).await.unwrap();
    c.create_user(&NewUser::plain(USER, None)).await.unwrap();
    c.add_team_member(TEAM, USER, None).await.unwrap();
    assert_eq!(
        c.remove_team_member(TEAM, USER).await.unwrap(),
        Deleted::Deleted
    );
    assert_eq!(
        c.remove_team_member(TEAM, USER).await.unwrap(),
        Deleted::AlreadyGone,
        "400 not in team"
    );
    assert_eq!(
        c.remove_team_member("no-such-team", USER).await.unwrap(),
        Deleted::AlreadyGone,
        "404 unknown team"
    );
}

#[tokio::test]
async fn a_redirecting_proxy_never_gets_the_master_key_to_the_redirect_target() {
    let target = LiteLlmSimulator::start_local().await.unwrap();
    let proxy = LiteLlmSimulator::start_local().await.unwrap();
    proxy.set_redirect_to(Some(&target.base_url()));
    let c = client(&proxy);
    let err = c.create_team(&team(&[])).await.unwrap_err();
    assert!(!err.is_transient(), "a redirect is a configuration error");
    let text = err.to_string();
    assert!(
        text.contains(&proxy.base_url()) && text.contains(&target.base_url()),
        "names the URL and the Location: {text}"
    );
    assert!(text.contains("LITELLM_BASE_URL"), "{text}");
    assert!(!text.contains(&proxy.master_key()), "{text}");
    assert_eq!(
        target.stats().total_requests(),
        0,
        "nothing, and so no master key, reached the redirect target"
    );
}
