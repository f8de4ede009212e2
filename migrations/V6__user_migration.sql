-- V6: user migration bookkeeping — the per-user migration log and the list of
-- users a back-fill could not migrate. Functions: sql/migration.sql.
--
-- The log records exactly what orgkeeper.migrate_user / migrate_users changed,
-- so that orgkeeper.rollback_user_migration can restore the prior state:
-- which related rows got their org_id (they all had org_id NULL before),
-- which conversation_metadata_saas rows were inserted as copies, the users row
-- as it was before (or that there was none), the legacy ciphertext of related
-- rows handed to the daemon for re-encryption, and the outbox actions.

------------------------------------------------------------------------------
-- the migration log
------------------------------------------------------------------------------
CREATE TABLE orgkeeper.user_migration (
    id                         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                    uuid        NOT NULL,
    org_id                     uuid        NOT NULL,
    status                     text        NOT NULL DEFAULT 'migrated',
    migrated_at                timestamptz NOT NULL DEFAULT now(),
    rolled_back_at             timestamptz,
    users_before               jsonb,
    stripe_customer_ids        bigint[]    NOT NULL DEFAULT '{}',
    slack_user_ids             bigint[]    NOT NULL DEFAULT '{}',
    slack_conversation_ids     bigint[]    NOT NULL DEFAULT '{}',
    api_key_ids                bigint[]    NOT NULL DEFAULT '{}',
    custom_secret_ids          bigint[]    NOT NULL DEFAULT '{}',
    billing_session_ids        text[]      NOT NULL DEFAULT '{}',
    user_repo_ids              bigint[]    NOT NULL DEFAULT '{}',
    gitlab_webhook_ids         bigint[]    NOT NULL DEFAULT '{}',
    saas_conversation_ids      text[]      NOT NULL DEFAULT '{}',
    copied_conversation_ids    text[]      NOT NULL DEFAULT '{}',
    legacy_ciphertext          jsonb       NOT NULL DEFAULT '[]',
    action_ids                 bigint[]    NOT NULL DEFAULT '{}',
    user_version               integer,
    billing_margin             double precision,
    rollback_report            jsonb,
    CONSTRAINT user_migration_status_valid CHECK (status IN ('migrated', 'rolled_back')),
    CONSTRAINT user_migration_rolled_back_iff_time
        CHECK ((status = 'rolled_back') = (rolled_back_at IS NOT NULL)),
    CONSTRAINT user_migration_legacy_ciphertext_is_array CHECK (jsonb_typeof(legacy_ciphertext) = 'array')
);
-- At most one migration in force per user; rolled-back entries stay as history.
CREATE UNIQUE INDEX user_migration_one_active ON orgkeeper.user_migration (user_id) WHERE status = 'migrated';
CREATE INDEX user_migration_user_idx ON orgkeeper.user_migration (user_id);

COMMENT ON TABLE orgkeeper.user_migration IS
  'One row per migration of a legacy user into a personal organization (orgkeeper.migrate_user / migrate_users). Records exactly which rows the migration changed so orgkeeper.rollback_user_migration can restore the prior state; a rollback keeps the row (status rolled_back) as history.';
COMMENT ON COLUMN orgkeeper.user_migration.org_id IS 'The personal organization created (id = user id).';
COMMENT ON COLUMN orgkeeper.user_migration.status IS 'migrated (in force; at most one per user) or rolled_back.';
COMMENT ON COLUMN orgkeeper.user_migration.users_before IS 'to_jsonb of the users row as it was before the migration; NULL = there was none (rollback deletes it).';
COMMENT ON COLUMN orgkeeper.user_migration.stripe_customer_ids IS 'stripe_customers.id of the rows whose org_id the migration set (all were NULL before). Same for the other *_ids columns and their tables.';
COMMENT ON COLUMN orgkeeper.user_migration.billing_session_ids IS 'billing_sessions.id (text) of the rows whose org_id the migration set.';
COMMENT ON COLUMN orgkeeper.user_migration.saas_conversation_ids IS 'conversation_metadata_saas rows of the user that already existed with org_id NULL and were pointed at the org.';
COMMENT ON COLUMN orgkeeper.user_migration.copied_conversation_ids IS 'conversation_metadata_saas rows the migration inserted as copies of conversation_metadata; rollback deletes them.';
COMMENT ON COLUMN orgkeeper.user_migration.legacy_ciphertext IS '[{"table", "column", "id", "value"}]: legacy ciphertext of related rows handed to secrets.reencrypt (custom_secrets.secret_value, gitlab_webhook.webhook_secret), so rollback can put the legacy value back after the daemon re-encrypted it. Ciphertext only; the database never holds a key.';
COMMENT ON COLUMN orgkeeper.user_migration.action_ids IS 'The outbox actions the migration enqueued (litellm.migrate_user, stripe.migrate_customer, secrets.reencrypt), in id order.';
COMMENT ON COLUMN orgkeeper.user_migration.user_version IS 'user_settings.user_version at migration time (becomes org.org_version).';
COMMENT ON COLUMN orgkeeper.user_migration.billing_margin IS 'user_settings.billing_margin at migration time.';
COMMENT ON COLUMN orgkeeper.user_migration.rollback_report IS 'The report orgkeeper.rollback_user_migration returned.';

------------------------------------------------------------------------------
-- users a back-fill could not migrate
------------------------------------------------------------------------------
CREATE TABLE orgkeeper.user_migration_error (
    user_id   uuid PRIMARY KEY,
    sqlstate  text        NOT NULL,
    message   text        NOT NULL,
    hint      text,
    failed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE orgkeeper.user_migration_error IS
  'Users orgkeeper.migrate_users could not migrate, with the reason. migrate_users skips them (so a back-fill always ends); orgkeeper.migrate_user(user_id) tries again, shows the error, and removes the row once it succeeds.';

------------------------------------------------------------------------------
-- back-fill support
------------------------------------------------------------------------------
-- migrate_users walks the not-yet-migrated users in user_id order; the partial
-- index shrinks as users are migrated.
CREATE INDEX user_settings_not_migrated_idx ON orgkeeper.user_settings (user_id) WHERE already_migrated = false;
