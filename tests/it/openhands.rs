//! Stories about working with a real OpenHands deployment's LiteLLM proxy:
//! the request bodies are the ones OpenHands sends (checked field by field
//! against what the simulator received), and settings versions are data that
//! decide what a new organization gets.

use crate::support::{daemon_config, daemon_settings, user, wait_until, TestDaemon, TestDb};
use orgkeeper::litellm::LiteLlmSimulator;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// Runs a daemon with `adjust`ed settings until every action finished.
async fn provision(
    db: &TestDb,
    sim: &LiteLlmSimulator,
    adjust: impl FnOnce(&mut orgkeeper::config::ProvisioningDefaults),
) {
    let key = orgkeeper::secrets::generate_key();
    let mut config = daemon_config(
        &db.url,
        sim,
        &key,
        daemon_settings("w1", Duration::from_secs(5)),
    );
    adjust(&mut config.litellm.provisioning);
    let daemon = TestDaemon::start(config);
    wait_until(LONG, "every action to finish", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orgkeeper.pending_external_actions WHERE finished_at IS NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == 0
    })
    .await;
    daemon.stop().await;
}

/// The one body the simulator received at `endpoint` whose `field` is `value`.
fn body(sim: &LiteLlmSimulator, endpoint: &str, field: &str, value: &str) -> Value {
    let found: Vec<Value> = sim
        .requests(endpoint)
        .into_iter()
        .filter(|b| b[field] == value)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{endpoint} with {field} = {value}: {found:?}"
    );
    found.into_iter().next().unwrap()
}

#[tokio::test]
async fn provisioning_sends_the_bodies_openhands_sends() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let owner = user(&db, "owner@example.com").await;
    let member = user(&db, "member@example.com").await;
    let team_org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Acme', $1)")
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let personal: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_personal_org($1)")
        .bind(member)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(team_org)
        .bind(member)
        .execute(&db.pool)
        .await
        .unwrap();
    sim.set_models(&["claude-opus-4-5-20251101"]);
    provision(&db, &sim, |d| {
        d.model = None;
        d.legacy_team_id = None;
    })
    .await;

    let model = "litellm_proxy/claude-opus-4-5-20251101";
    let team = body(&sim, "team/new", "team_id", &team_org.to_string());
    assert_eq!(team["team_alias"], "Acme");
    assert_eq!(team["models"], json!([]), "every model the proxy serves");
    assert!(
        team.get("max_budget").is_none(),
        "no budget configured: omitted"
    );
    assert_eq!(team["spend"], 0);
    assert_eq!(team["metadata"]["version"], 5);
    assert_eq!(team["metadata"]["model"], model);
    assert_eq!(team["metadata"]["managed_by"], "orgkeeper");
    assert_eq!(team["metadata"]["org_id"], team_org.to_string());
    let personal_team = body(&sim, "team/new", "team_id", &personal.to_string());
    assert_eq!(personal_team["team_alias"], "Personal Workspace");

    let new_user = body(&sim, "user/new", "user_id", &owner.to_string());
    assert_eq!(new_user["user_email"], "owner@example.com");
    assert_eq!(new_user["models"], json!([]));
    assert_eq!(new_user["teams"], json!([]), "no legacy team configured");
    assert_eq!(new_user["auto_create_key"], false);
    assert_eq!(new_user["send_invite_email"], false);
    assert_eq!(new_user["metadata"], json!({"version": 5, "model": model}));

    let joined: Vec<Value> = sim
        .requests("team/member_add")
        .into_iter()
        .filter(|b| b["team_id"] == team_org.to_string())
        .collect();
    assert_eq!(joined.len(), 2, "the owner, then the member");
    for (b, who) in joined.iter().zip([owner, member]) {
        assert_eq!(
            b["member"],
            json!({"user_id": who.to_string(), "role": "user"})
        );
    }

    let keys: Vec<Value> = sim
        .requests("key/generate")
        .into_iter()
        .filter(|b| b["team_id"] == team_org.to_string())
        .collect();
    assert_eq!(keys.len(), 2);
    for (k, who) in keys.iter().zip([owner, member]) {
        assert_eq!(k["user_id"], who.to_string());
        assert_eq!(
            k["key_alias"],
            format!("OpenHands Cloud - user {who} - org {team_org}")
        );
        assert_eq!(k["models"], json!([]));
        assert!(k["key"].as_str().unwrap().starts_with("sk-"));
    }

    let (version, llm_model, agent, margin): (i32, String, String, f64) = sqlx::query_as(
        "SELECT org_version, llm_model, agent, billing_margin FROM orgkeeper.org WHERE id = $1",
    )
    .bind(team_org)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (version, llm_model.as_str(), agent.as_str(), margin),
        (5, model, "CodeActAgent", 1.0)
    );
}

#[tokio::test]
async fn allowed_models_and_the_legacy_team_reach_teams_keys_and_users() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let owner = user(&db, "owner@example.com").await;
    let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Restricted', $1)")
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let legacy = "legacy-default-team";
    orgkeeper::litellm::LiteLlmClient::new(orgkeeper::litellm::LiteLlmConfig::new(
        sim.base_url(),
        sim.master_key_secret(),
    ))
    .unwrap()
    .create_team(&orgkeeper::litellm::NewTeam {
        team_id: legacy,
        team_alias: "legacy",
        max_budget: None,
        models: &[],
        metadata: json!({}),
    })
    .await
    .unwrap();
    provision(&db, &sim, |d| {
        d.allowed_models = vec!["claude-a".into(), "claude-b".into()];
        d.legacy_team_id = Some(legacy.into());
        d.model = Some("litellm_proxy/claude-a".into());
    })
    .await;
    let allowed = json!(["claude-a", "claude-b"]);
    assert_eq!(
        body(&sim, "team/new", "team_id", &org.to_string())["models"],
        allowed
    );
    assert_eq!(
        body(&sim, "key/generate", "team_id", &org.to_string())["models"],
        allowed
    );
    let u = body(&sim, "user/new", "user_id", &owner.to_string());
    assert_eq!(u["teams"], json!([legacy]));
    assert_eq!(u["models"], json!([]), "users are not restricted");
    assert_eq!(u["metadata"]["model"], "litellm_proxy/claude-a");
}

#[tokio::test]
async fn a_new_settings_version_is_one_insert_and_upgrades_move_models_that_follow() {
    let db = TestDb::migrated().await;
    let owner = user(&db, "owner@example.com").await;
    let mut orgs = Vec::new();
    for (name, model) in [
        ("Follows", None),
        ("Chose", Some("litellm_proxy/my-own-model")),
    ] {
        let org: Uuid = sqlx::query_scalar(
            "INSERT INTO orgkeeper.org (name, created_by, llm_model) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(owner)
        .bind(model)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        orgs.push(org);
    }
    // Provisioning stored the default model on the one that had none.
    sqlx::query("UPDATE orgkeeper.org SET llm_model = orgkeeper.default_llm_model(org_version) WHERE id = $1")
        .bind(orgs[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let current: i32 = sqlx::query_scalar("SELECT orgkeeper.current_settings_version()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(current, 5);
    let report: Value = sqlx::query_scalar("SELECT orgkeeper.upgrade_org_settings($1)")
        .bind(orgs[0])
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(report["status"], "current");

    sqlx::query(
        "INSERT INTO orgkeeper.settings_version (version, default_model) VALUES (6, 'claude-next')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for org in &orgs {
        let report: Value = sqlx::query_scalar("SELECT orgkeeper.upgrade_org_settings($1)")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(report["status"], "upgraded", "{report}");
    }
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT org_version, llm_model FROM orgkeeper.org WHERE id = ANY($1) ORDER BY name DESC",
    )
    .bind(&orgs)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (6, "litellm_proxy/claude-next".to_string()),
            (6, "litellm_proxy/my-own-model".to_string())
        ],
        "the default model follows; a chosen one stays"
    );
    let fresh: i32 = sqlx::query_scalar(
        "INSERT INTO orgkeeper.org (name, created_by) VALUES ('Newest', $1) RETURNING org_version",
    )
    .bind(owner)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(fresh, 6, "new organizations start at the current version");

    let err = sqlx::query("SELECT orgkeeper.upgrade_org_settings($1)")
        .bind(Uuid::new_v4())
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(crate::support::db_error(&err).0, "P0002");
}

#[tokio::test]
async fn a_top_up_reaches_the_team_and_every_member_and_a_payment_enables_byor_export() {
    let db = TestDb::migrated().await;
    let sim = LiteLlmSimulator::start_local().await.unwrap();
    let owner = user(&db, "owner@example.com").await;
    let member = user(&db, "member@example.com").await;
    let org: Uuid = sqlx::query_scalar("SELECT orgkeeper.create_org('Paying', $1)")
        .bind(owner)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT orgkeeper.add_member($1, $2, $3, 'member')")
        .bind(owner)
        .bind(org)
        .bind(member)
        .execute(&db.pool)
        .await
        .unwrap();
    provision(&db, &sim, |_| {}).await;

    for (budget, code) in [(-1.0, "22023"), (f64::NAN, "22023")] {
        let err = sqlx::query("SELECT orgkeeper.set_org_budget($1, $2)")
            .bind(org)
            .bind(budget)
            .execute(&db.pool)
            .await
            .unwrap_err();
        assert_eq!(crate::support::db_error(&err).0, code);
    }
    let err = sqlx::query("SELECT orgkeeper.set_org_budget($1, 5)")
        .bind(Uuid::new_v4())
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(crate::support::db_error(&err).0, "P0002");

    sqlx::query("SELECT orgkeeper.set_org_budget($1, 50)")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    provision(&db, &sim, |_| {}).await;
    let team = sim.team(&org.to_string()).unwrap();
    assert_eq!(team.max_budget, Some(50.0));
    assert_eq!(team.members.len(), 2);
    assert!(
        team.members
            .iter()
            .all(|m| m.max_budget_in_team == Some(50.0)),
        "{team:?}"
    );
    let updates = sim.requests("team/member_update");
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0]["max_budget_in_team"], 50.0);

    let byor = || async {
        sqlx::query_scalar::<_, bool>("SELECT byor_export_enabled FROM orgkeeper.org WHERE id = $1")
            .bind(org)
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    sqlx::query("INSERT INTO orgkeeper.billing_sessions (user_id, org_id, status) VALUES ($1, $2, 'in_progress')")
        .bind(owner)
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!byor().await, "a session in progress changes nothing");
    sqlx::query("UPDATE orgkeeper.billing_sessions SET status = 'completed' WHERE org_id = $1")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(byor().await, "a completed payment enables BYOR export");
}
