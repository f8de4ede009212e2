-- migration.sql — moving pre-organization (legacy) users into personal orgs.
--
--   orgkeeper.migrate_user(user_id)            one user, one transaction, jsonb report
--   orgkeeper.migrate_users(batch_size)        a batch of users, set-based, for back-fills
--   orgkeeper.verify_user_migration(user_id)   one row per check
--   orgkeeper.rollback_user_migration(user_id) undo the database side, enqueue the external reversals
--
-- Concurrency: every function that changes a user first locks the user's
-- user_settings row (waiting at most 30 s, SQLSTATE 55P03 naming the user and
-- the holder otherwise). Only trusted roles can lock it, so the application
-- cannot block a migration. migrate_users skips rows another session holds
-- (SKIP LOCKED), so any number of sessions can back-fill side by side. Run
-- these functions in READ COMMITTED (the default).
--
-- What a migration changes is recorded in orgkeeper.user_migration (V6), which
-- is what makes an exact rollback possible. Legacy rows are never deleted.
--
-- External halves go through the outbox; all of one user's actions have the
-- personal org (= the user id) as their subject, so they run in id order:
--   litellm.migrate_user, stripe.migrate_customer, secrets.reencrypt   (migration)
--   litellm.rollback_user, stripe.rollback_customer, litellm.delete_team (rollback)
-- Payload shapes are documented on the functions that enqueue them.

------------------------------------------------------------------------------
-- small helpers
------------------------------------------------------------------------------
-- Until V8 a user was locked with an advisory lock on a hash of the id,
-- which any role can take (the application could block a user's migration).
DROP FUNCTION IF EXISTS orgkeeper.user_lock_key(uuid);

CREATE OR REPLACE FUNCTION orgkeeper.is_legacy_ciphertext(p_value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_value IS NOT NULL AND p_value <> '' AND p_value NOT LIKE 'ok1:%' AND p_value NOT LIKE 'ok2:%';
$$;
COMMENT ON FUNCTION orgkeeper.is_legacy_ciphertext(text) IS
  'True when a secret column holds a legacy value (OpenHands'' base64-wrapped Fernet token, or a plaintext credential) rather than orgkeeper''s ciphertext, which starts with "ok2:" (or "ok1:" before place binding); NULL and empty mean no secret.';

-- The legacy tables' comments (V3) predate reading OpenHands' own format.
COMMENT ON COLUMN orgkeeper.user_settings.llm_api_key IS
  'The legacy application''s value as OpenHands stores it: a base64-wrapped Fernet token under its jwt_secret (ORGKEEPER_LEGACY_JWT_SECRET), or a plaintext; moved as it is on migration and re-encrypted by the daemon (secrets.reencrypt).';
COMMENT ON TABLE orgkeeper.custom_secrets IS
  'User-defined secrets; secret_value is orgkeeper''s AEAD ciphertext ("ok2:"), or, for a user not yet migrated, the legacy application''s value (a base64-wrapped Fernet token or a plaintext).';
COMMENT ON TABLE orgkeeper.gitlab_webhook IS
  'GitLab webhooks installed for a user; webhook_secret is orgkeeper''s AEAD ciphertext ("ok2:"), or, for a user not yet migrated, the legacy application''s value (a base64-wrapped Fernet token or a plaintext).';

CREATE OR REPLACE FUNCTION orgkeeper.is_transient_sqlstate(p_sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(p_sqlstate, 2) IN ('40', '53', '57', '58') OR p_sqlstate = '55P03';
$$;
COMMENT ON FUNCTION orgkeeper.is_transient_sqlstate(text) IS
  'True for errors that say nothing about the data and may not happen again: transaction rollback (40xxx: serialization failure, deadlock), insufficient resources (53xxx), operator intervention (57xxx), system errors (58xxx) and lock timeouts (55P03). migrate_users re-raises these instead of recording the user as unmigratable.';

CREATE OR REPLACE FUNCTION orgkeeper.lock_user_for_migration(p_user_id uuid) RETURNS void
LANGUAGE plpgsql
SET lock_timeout = '30s'
AS $$
DECLARE
    v_holder text;
BEGIN
    -- The user_settings row: only trusted roles may lock it (the application
    -- has no privilege on the table), so only a migration can hold it.
    PERFORM 1 FROM orgkeeper.user_settings s WHERE s.user_id = p_user_id FOR UPDATE;
EXCEPTION WHEN lock_not_available THEN
    SELECT string_agg(format('pid %s (role %s, %s since %s)', a.pid, a.usename, a.state, a.xact_start), ', ')
      INTO v_holder
      FROM orgkeeper.user_settings s
      JOIN pg_locks l ON l.locktype = 'transactionid' AND l.transactionid = s.xmax AND l.granted
      JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE s.user_id = p_user_id;
    RAISE EXCEPTION 'user %: another session is migrating or rolling back this user (its user_settings row was not free within 30 s; held by %); nothing changed',
            p_user_id, coalesce(v_holder, 'a session that has just ended')
        USING ERRCODE = 'lock_not_available',
              HINT = 'try again when the other session has finished, or end it with SELECT pg_terminate_backend(<pid>)';
END;
$$;
COMMENT ON FUNCTION orgkeeper.lock_user_for_migration(uuid) IS
  'Locks the user''s user_settings row (which only trusted roles can lock), waiting at most 30 s; raises 55P03 naming the user and the session holding it when it cannot be had. Nothing to lock (no user_settings row) is not an error.';

CREATE OR REPLACE FUNCTION orgkeeper.migration_blocker(p_user_id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT format('user %s has a personal organization "%s" that the migration cannot adopt: %s', p_user_id, o.name,
                       concat_ws('; ',
                           CASE WHEN o.provisioning_status = 'deprovisioning' THEN 'it is being deleted' END,
                           (SELECT 'it has other members (' || string_agg(m.user_id::text || ' ' || m.status, ', ' ORDER BY m.user_id) || ')'
                              FROM orgkeeper.org_member m WHERE m.org_id = o.id AND m.user_id <> p_user_id),
                           (SELECT 'it has open invitations (' || string_agg(i.email, ', ' ORDER BY i.id) || ')'
                              FROM orgkeeper.invitation i
                             WHERE i.org_id = o.id AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now())))
           FROM orgkeeper.org o
          WHERE o.kind = 'personal' AND o.created_by = p_user_id
            AND (o.provisioning_status = 'deprovisioning'
                 OR EXISTS (SELECT 1 FROM orgkeeper.org_member m WHERE m.org_id = o.id AND m.user_id <> p_user_id)
                 OR EXISTS (SELECT 1 FROM orgkeeper.invitation i
                             WHERE i.org_id = o.id AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now()))),
        (SELECT format('user %s has migration #%s in force but user_settings.already_migrated is false', p_user_id, m.id)
           FROM orgkeeper.user_migration m WHERE m.user_id = p_user_id AND m.status = 'migrated'));
$$;
COMMENT ON FUNCTION orgkeeper.migration_blocker(uuid) IS
  'Why a not-yet-migrated user cannot be migrated, or NULL when nothing blocks it: a migration log entry in force, or a personal organization the migration cannot adopt (being deleted, other members, open invitations). A personal organization of the user alone is adopted.';

CREATE OR REPLACE FUNCTION orgkeeper.migration_settings_columns() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['agent', 'max_iterations', 'security_analyzer', 'confirmation_mode', 'llm_model', 'llm_base_url',
                 'llm_api_key_for_byor', 'remote_runtime_resource_factor', 'enable_default_condenser',
                 'condenser_max_size', 'billing_margin', 'enable_proactive_conversation_starters',
                 'enable_solvability_analysis', 'sandbox_base_container_image', 'sandbox_runtime_container_image',
                 'mcp_config', 'search_api_key', 'sandbox_api_key', 'max_budget_per_task', 'byor_export_enabled'];
$$;
COMMENT ON FUNCTION orgkeeper.migration_settings_columns() IS
  'Internal: the organization settings a migration fills from user_settings in a personal organization it adopts (only where the organization has none), and that its rollback restores. Not llm_api_key: the user''s LiteLLM key is their membership''s, never the organization''s.';

CREATE OR REPLACE FUNCTION orgkeeper.has_custom_llm_settings(p_settings orgkeeper.user_settings) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- OpenHands' rule: a base URL other than the LiteLLM proxy's (as
    -- orgkeeper migrate recorded it from LITELLM_BASE_URL; any base URL when
    -- none was recorded), or a model other than the default of the user's
    -- settings version (compared by its last path segment). plpgsql, not
    -- SQL: get_deployment_setting comes later in the library (billing.sql).
    RETURN coalesce(
        (nullif(btrim(p_settings.llm_base_url), '') IS NOT NULL
         AND rtrim(btrim(p_settings.llm_base_url), '/')
             IS DISTINCT FROM orgkeeper.get_deployment_setting('litellm_base_url', NULL))
        OR (nullif(btrim(p_settings.llm_model), '') IS NOT NULL
            AND EXISTS (SELECT 1 FROM orgkeeper.settings_version v
                         WHERE v.version = p_settings.user_version
                           AND v.default_model <> regexp_replace(btrim(p_settings.llm_model), '^.*/', ''))),
        false);
END;
$$;
COMMENT ON FUNCTION orgkeeper.has_custom_llm_settings(orgkeeper.user_settings) IS
  'Whether a legacy user had their own LLM settings (OpenHands'' rule): llm_base_url set and not the LiteLLM proxy''s (deployment setting litellm_base_url), or llm_model''s last path segment not the default model of their settings version. Such a user keeps model, base URL, iteration limit and BYOR key on their membership; the organization gets the current defaults.';

CREATE OR REPLACE FUNCTION orgkeeper.conversation_conflicts(p_user_id uuid)
RETURNS TABLE (conversation_id text, org_id uuid, user_id uuid)
LANGUAGE sql STABLE AS $$
    SELECT c.conversation_id, x.org_id, x.user_id
      FROM orgkeeper.conversation_metadata c
      JOIN orgkeeper.conversation_metadata_saas x ON x.conversation_id = c.conversation_id
     WHERE c.user_id = p_user_id AND (x.org_id IS DISTINCT FROM p_user_id OR x.user_id IS DISTINCT FROM p_user_id)
       -- rows with org_id NULL of the user are adopted by the migration, not conflicts
       AND NOT (x.org_id IS NULL AND x.user_id = p_user_id)
     ORDER BY c.conversation_id;
$$;
COMMENT ON FUNCTION orgkeeper.conversation_conflicts(uuid) IS
  'The legacy conversations of a user whose id is already taken in conversation_metadata_saas by another organization or user (the application chooses conversation ids): migration cannot copy them and reports them as conflicts (migrate_user''s report, verify_user_migration), never as copied.';

CREATE OR REPLACE FUNCTION orgkeeper.refresh_growing_statistics() RETURNS text[]
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp
AS $$
DECLARE
    r      record;
    v_done text[] := '{}';
BEGIN
    -- A back-fill usually starts with these tables empty. Plans cached by a
    -- session (the org triggers', the foreign-key checks') made while a table
    -- was tiny scan it sequentially, and keep doing so as it grows by
    -- thousands of rows a second, until its statistics change. So while a
    -- table is small, ANALYZE it whenever it has doubled since it was last
    -- analyzed; that invalidates the stale plans. Skipped when another
    -- session is analyzing or vacuuming it (its ANALYZE will do).
    FOR r IN
        SELECT c.oid, c.relname, c.relpages,
               pg_relation_size(c.oid) / current_setting('block_size')::bigint AS pages
          FROM pg_class c
         WHERE c.oid IN ('orgkeeper.org'::regclass, 'orgkeeper.org_member'::regclass, 'orgkeeper.users'::regclass)
    LOOP
        IF r.relpages < 10000 AND r.pages >= 2 * r.relpages + 8
           AND NOT EXISTS (SELECT 1 FROM pg_locks l
                            WHERE l.locktype = 'relation' AND l.relation = r.oid
                              AND l.mode = 'ShareUpdateExclusiveLock' AND l.pid <> pg_backend_pid()) THEN
            EXECUTE format('ANALYZE orgkeeper.%I', r.relname);
            v_done := v_done || r.relname::text;
        END IF;
    END LOOP;
    RETURN v_done;
END;
$$;
COMMENT ON FUNCTION orgkeeper.refresh_growing_statistics() IS
  'Used by migrate_users: ANALYZEs org, org_member and users while they are small and have doubled since their last ANALYZE, so that plans cached at the start of a back-fill (when they were empty) are replaced by index plans. Returns the tables analyzed.';

------------------------------------------------------------------------------
-- the set-based core
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.migrate_locked_users(p_users uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_users_before jsonb;
    v_orgs_before  jsonb;
    v_fill         text;
    v_prev_skip    text;
    v_count        integer;
BEGIN
    IF coalesce(cardinality(p_users), 0) = 0 THEN
        RETURN 0;
    END IF;

    -- The users rows as they were (almost always none), for an exact rollback.
    SELECT coalesce(jsonb_object_agg(u.id::text, to_jsonb(u)), '{}'::jsonb) INTO v_users_before
      FROM orgkeeper.users u WHERE u.id = ANY (p_users);
    -- Personal orgs that exist already (created at first login) are adopted:
    -- their settings are filled from user_settings only where they have none,
    -- and kept as they were for a rollback.
    SELECT coalesce(jsonb_object_agg(o.id::text, to_jsonb(o)), '{}'::jsonb) INTO v_orgs_before
      FROM orgkeeper.org o WHERE o.id = ANY (p_users) AND o.kind = 'personal';
    IF v_orgs_before <> '{}'::jsonb THEN
        SELECT string_agg(format('%1$I = coalesce(o.%1$I, s.%1$I)', c), ', ') INTO v_fill
          FROM unnest(orgkeeper.migration_settings_columns()) AS c
         WHERE c <> 'byor_export_enabled';
        EXECUTE format(
            'UPDATE orgkeeper.org o SET %s, byor_export_enabled = o.byor_export_enabled OR EXISTS (
                 SELECT 1 FROM orgkeeper.billing_sessions b
                  WHERE b.user_id = s.user_id AND b.org_id IS NULL AND b.detached_from_org IS NULL AND b.status = ''completed'')
               FROM orgkeeper.user_settings s
              WHERE s.user_id = o.id AND o.id = ANY ($1) AND o.kind = ''personal''', v_fill)
          USING p_users;
    END IF;

    -- Users rows first: an organization's creator must exist (org_admit).
    -- users.current_org_id points at the personal org once it exists (the
    -- org insert trigger sets it for users without one; the UPDATE below for
    -- users rows that existed before).
    INSERT INTO orgkeeper.users AS t
           (id, email, language, accepted_tos, enable_sound_notifications,
            user_consents_to_analytics)
    SELECT n.user_id, n.email, n.language, n.accepted_tos, coalesce(n.enable_sound_notifications, false),
           n.user_consents_to_analytics
      FROM orgkeeper.user_settings n
     WHERE n.user_id = ANY (p_users)
     ORDER BY n.user_id
    ON CONFLICT (id) DO UPDATE
       SET email = coalesce(t.email, EXCLUDED.email),
           language = coalesce(t.language, EXCLUDED.language),
           accepted_tos = coalesce(t.accepted_tos, EXCLUDED.accepted_tos),
           user_consents_to_analytics = coalesce(t.user_consents_to_analytics, EXCLUDED.user_consents_to_analytics),
           updated_at = now();

    -- The personal orgs. The org insert trigger adds the owner membership;
    -- provisioning is left to litellm.migrate_user (see org_after_insert in
    -- ownership.sql).
    v_prev_skip := current_setting('orgkeeper.skip_provision', true);
    PERFORM set_config('orgkeeper.skip_provision', 'on', true);
    WITH s AS MATERIALIZED (
        SELECT st.*,
               -- BYOR export from the user's own legacy billing history only:
               -- sessions of an organization (org_id set) are not the user's.
               EXISTS (SELECT 1 FROM orgkeeper.billing_sessions b
                        WHERE b.user_id = st.user_id AND b.org_id IS NULL AND b.detached_from_org IS NULL
                          AND b.status = 'completed') AS byor,
               orgkeeper.has_custom_llm_settings(st) AS custom
          FROM orgkeeper.user_settings st
         WHERE st.user_id = ANY (p_users)
    )
    INSERT INTO orgkeeper.org (
        id, name, kind, created_by, contact_email,
        agent, max_iterations, security_analyzer, confirmation_mode,
        llm_model, llm_base_url, llm_api_key, llm_api_key_for_byor,
        remote_runtime_resource_factor, enable_default_condenser, condenser_max_size,
        billing_margin, enable_proactive_conversation_starters, enable_solvability_analysis,
        sandbox_base_container_image, sandbox_runtime_container_image,
        org_version, mcp_config, search_api_key, sandbox_api_key, max_budget_per_task,
        byor_export_enabled)
    -- No id: the insert trigger gives a personal org its creator's id (and
    -- refuses one named by an untrusted caller, such as an application whose
    -- user's first login runs this migration).
    SELECT NULL::uuid, orgkeeper.personal_org_name(n.user_id), 'personal', n.user_id, n.email,
           -- A user with custom settings keeps them on the membership (below);
           -- the organization gets the current defaults.
           n.agent, CASE WHEN n.custom THEN NULL ELSE n.max_iterations END,
           n.security_analyzer, coalesce(n.confirmation_mode, false),
           CASE WHEN n.custom THEN orgkeeper.default_llm_model(NULL) ELSE n.llm_model END,
           CASE WHEN n.custom THEN orgkeeper.get_deployment_setting('litellm_base_url', NULL) ELSE n.llm_base_url END,
           -- The user's LiteLLM key goes to their membership (below), never
           -- to the organization, whose other admins could read it.
           NULL, CASE WHEN n.custom THEN NULL ELSE n.llm_api_key_for_byor END,
           n.remote_runtime_resource_factor, coalesce(n.enable_default_condenser, true), n.condenser_max_size,
           n.billing_margin, coalesce(n.enable_proactive_conversation_starters, true),
           coalesce(n.enable_solvability_analysis, false),
           n.sandbox_base_container_image, n.sandbox_runtime_container_image,
           CASE WHEN n.custom THEN orgkeeper.current_settings_version() ELSE n.user_version END,
           n.mcp_config, n.search_api_key, n.sandbox_api_key, n.max_budget_per_task,
           n.byor
      FROM s n
     WHERE NOT (v_orgs_before ? n.user_id::text)
     ORDER BY n.user_id;
    PERFORM set_config('orgkeeper.skip_provision', coalesce(v_prev_skip, ''), true);
    -- The setting is honoured for trusted callers only; an application whose
    -- user's first login runs this migration (create_personal_org) got a
    -- litellm.provision_org for each org inserted above. The migration
    -- provisions them itself (litellm.migrate_user, with the credits, and
    -- failing for good for a user LiteLLM does not know): those actions,
    -- uncommitted and never seen by anyone, go.
    DELETE FROM orgkeeper.pending_external_actions a
     WHERE a.kind = 'litellm.provision_org' AND a.org_id = ANY (p_users)
       AND a.status = 'pending' AND a.attempts = 0 AND NOT (v_orgs_before ? a.org_id::text);
    UPDATE orgkeeper.users u SET current_org_id = u.id, updated_at = now()
     WHERE u.id = ANY (p_users) AND u.current_org_id IS DISTINCT FROM u.id;

    -- Custom settings stay the user's own, on their membership of the
    -- personal org the migration created.
    UPDATE orgkeeper.org_member m
       SET llm_model = s.llm_model, llm_base_url = s.llm_base_url, max_iterations = s.max_iterations,
           llm_api_key_for_byor = s.llm_api_key_for_byor
      FROM orgkeeper.user_settings s
     WHERE s.user_id = ANY (p_users) AND NOT (v_orgs_before ? s.user_id::text)
       AND m.org_id = s.user_id AND m.user_id = s.user_id
       AND orgkeeper.has_custom_llm_settings(s);

    -- The user's LiteLLM key (legacy ciphertext) becomes the owner membership's key.
    UPDATE orgkeeper.org_member m
       SET llm_api_key = s.llm_api_key
      FROM orgkeeper.user_settings s
     WHERE s.user_id = ANY (p_users)
       AND m.org_id = s.user_id AND m.user_id = s.user_id
       AND nullif(s.llm_api_key, '') IS NOT NULL
       AND m.llm_api_key IS NULL; -- an adopted org's member keeps the key provisioning gave them

    -- Related rows, conversation copies, outbox actions and the log: one
    -- statement, set-based over the batch.
    WITH b AS (
        SELECT s.user_id, s.email, s.user_version, s.billing_margin,
               s.llm_api_key, s.llm_api_key_for_byor, s.search_api_key, s.sandbox_api_key,
               orgkeeper.has_custom_llm_settings(s) AND o.llm_api_key_for_byor IS NULL AS custom,
               o.name AS org_name, coalesce(o.llm_model, orgkeeper.default_llm_model(o.org_version)) AS model
          FROM orgkeeper.user_settings s
          JOIN orgkeeper.org o ON o.id = s.user_id
         WHERE s.user_id = ANY (p_users) AND o.id = ANY (p_users)
    ),
    -- Legacy rows only: never rows detached from a deleted organization.
    sc AS (UPDATE orgkeeper.stripe_customers t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL AND t.detached_from_org IS NULL
        RETURNING t.user_id, t.id, t.stripe_customer_id),
    su AS (UPDATE orgkeeper.slack_users t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.id),
    sv AS (UPDATE orgkeeper.slack_conversation t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.id),
    ak AS (UPDATE orgkeeper.api_keys t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.id),
    cs AS (UPDATE orgkeeper.custom_secrets t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.id, t.secret_value),
    bs AS (UPDATE orgkeeper.billing_sessions t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL AND t.detached_from_org IS NULL
        RETURNING t.user_id, t.id),
    ur AS (UPDATE orgkeeper.user_repos t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.id),
    gw AS (UPDATE orgkeeper.gitlab_webhook t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.id, t.webhook_secret),
    sm AS (UPDATE orgkeeper.conversation_metadata_saas t SET org_id = t.user_id
            WHERE t.user_id = ANY (p_users) AND t.org_id IS NULL
        RETURNING t.user_id, t.conversation_id),
    cp AS (INSERT INTO orgkeeper.conversation_metadata_saas (conversation_id, user_id, org_id, created_at)
           SELECT c.conversation_id, c.user_id, c.user_id, c.created_at
             FROM orgkeeper.conversation_metadata c
            WHERE c.user_id = ANY (p_users)
           ON CONFLICT (conversation_id) DO NOTHING
        RETURNING user_id, conversation_id),
    -- Where legacy ciphertext now lives; the daemon re-encrypts it.
    secrets AS (
        SELECT b.user_id, 2 AS ord, CASE WHEN b.custom THEN 'org_member' ELSE 'org' END AS tbl,
               'llm_api_key_for_byor' AS col,
               CASE WHEN b.custom THEN jsonb_build_object('org_id', b.user_id, 'user_id', b.user_id)
                    ELSE jsonb_build_object('id', b.user_id) END AS row_key, NULL::text AS legacy, NULL::bigint AS row_id
          FROM b WHERE orgkeeper.is_legacy_ciphertext(b.llm_api_key_for_byor)
        UNION ALL
        SELECT b.user_id, 3, 'org', 'search_api_key', jsonb_build_object('id', b.user_id), NULL, NULL
          FROM b WHERE orgkeeper.is_legacy_ciphertext(b.search_api_key)
        UNION ALL
        SELECT b.user_id, 4, 'org', 'sandbox_api_key', jsonb_build_object('id', b.user_id), NULL, NULL
          FROM b WHERE orgkeeper.is_legacy_ciphertext(b.sandbox_api_key)
        UNION ALL
        SELECT b.user_id, 5, 'org_member', 'llm_api_key',
               jsonb_build_object('org_id', b.user_id, 'user_id', b.user_id), NULL, NULL
          FROM b WHERE orgkeeper.is_legacy_ciphertext(b.llm_api_key)
        UNION ALL
        SELECT cs.user_id, 6, 'custom_secrets', 'secret_value', jsonb_build_object('id', cs.id), cs.secret_value, cs.id
          FROM cs WHERE orgkeeper.is_legacy_ciphertext(cs.secret_value)
        UNION ALL
        SELECT gw.user_id, 7, 'gitlab_webhook', 'webhook_secret', jsonb_build_object('id', gw.id), gw.webhook_secret, gw.id
          FROM gw WHERE orgkeeper.is_legacy_ciphertext(gw.webhook_secret)
    ),
    act AS (
        INSERT INTO orgkeeper.pending_external_actions (kind, org_id, user_id, payload)
        SELECT a.kind, a.user_id, a.user_id, a.payload
          FROM (
            SELECT b.user_id, 1 AS ord, 0::bigint AS sub, 'litellm.migrate_user' AS kind,
                   jsonb_build_object(
                       'user_id', b.user_id,
                       'org_id', b.user_id,
                       'team_alias', b.org_name,
                       'email', b.email,
                       'user_version', b.user_version,
                       'billing_margin', b.billing_margin,
                       'model', b.model,
                       'apply_margin', (b.user_version < 4 AND b.billing_margin IS NOT NULL
                                        AND b.billing_margin NOT IN (0, 1.0)),
                       'unlimited_budget', 1000000000.0) AS payload
              FROM b
            UNION ALL
            SELECT sc.user_id, 2, sc.id, 'stripe.migrate_customer',
                   jsonb_build_object(
                       'stripe_customer_id', sc.stripe_customer_id,
                       'org_id', sc.user_id,
                       'user_id', sc.user_id,
                       'email', b.email)
              FROM sc JOIN b ON b.user_id = sc.user_id
            UNION ALL
            -- The member's key is checked and replaced when invalid or
            -- missing — here when nothing needs re-encrypting, else by
            -- secrets.reencrypt once it succeeded (record_reencrypted).
            SELECT b.user_id, 4, 0, 'litellm.verify_key',
                   jsonb_build_object('user_id', b.user_id, 'team_id', b.user_id::text, 'regenerate', true)
              FROM b
             WHERE NOT EXISTS (SELECT 1 FROM secrets x WHERE x.user_id = b.user_id)
            UNION ALL
            SELECT x.user_id, 3, 0, 'secrets.reencrypt',
                   jsonb_build_object(
                       'user_id', x.user_id,
                       'org_id', x.user_id,
                       'items', jsonb_agg(jsonb_build_object('table', x.tbl, 'column', x.col, 'key', x.row_key)
                                          ORDER BY x.ord, x.row_id))
              FROM secrets x
             GROUP BY x.user_id
          ) a
         ORDER BY a.user_id, a.ord, a.sub
        RETURNING id, user_id
    )
    INSERT INTO orgkeeper.user_migration (
        user_id, org_id, users_before,
        stripe_customer_ids, slack_user_ids, slack_conversation_ids, api_key_ids, custom_secret_ids,
        billing_session_ids, user_repo_ids, gitlab_webhook_ids, saas_conversation_ids, copied_conversation_ids,
        legacy_ciphertext, action_ids, user_version, billing_margin, org_before)
    SELECT b.user_id, b.user_id, v_users_before -> b.user_id::text,
           coalesce(sc_a.ids, '{}'), coalesce(su_a.ids, '{}'), coalesce(sv_a.ids, '{}'),
           coalesce(ak_a.ids, '{}'), coalesce(cs_a.ids, '{}'), coalesce(bs_a.ids, '{}'),
           coalesce(ur_a.ids, '{}'), coalesce(gw_a.ids, '{}'), coalesce(sm_a.ids, '{}'),
           coalesce(cp_a.ids, '{}'), coalesce(lc_a.items, '[]'), coalesce(act_a.ids, '{}'),
           b.user_version, b.billing_margin, v_orgs_before -> b.user_id::text
      FROM b
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM sc GROUP BY user_id) sc_a ON sc_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM su GROUP BY user_id) su_a ON su_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM sv GROUP BY user_id) sv_a ON sv_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM ak GROUP BY user_id) ak_a ON ak_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM cs GROUP BY user_id) cs_a ON cs_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM bs GROUP BY user_id) bs_a ON bs_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM ur GROUP BY user_id) ur_a ON ur_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM gw GROUP BY user_id) gw_a ON gw_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(conversation_id ORDER BY conversation_id) AS ids FROM sm GROUP BY user_id) sm_a
             ON sm_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(conversation_id ORDER BY conversation_id) AS ids FROM cp GROUP BY user_id) cp_a
             ON cp_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id,
                        jsonb_agg(jsonb_build_object('table', tbl, 'column', col, 'id', row_id, 'value', legacy)
                                  ORDER BY ord, row_id) AS items
                   FROM secrets WHERE legacy IS NOT NULL GROUP BY user_id) lc_a ON lc_a.user_id = b.user_id
      LEFT JOIN (SELECT user_id, array_agg(id ORDER BY id) AS ids FROM act GROUP BY user_id) act_a ON act_a.user_id = b.user_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;

    UPDATE orgkeeper.user_settings SET already_migrated = true WHERE user_id = ANY (p_users);
    RETURN v_count;
END;
$$;
COMMENT ON FUNCTION orgkeeper.migrate_locked_users(uuid[]) IS
  'Internal core of migrate_user / migrate_users: migrates the given users set-based. The caller must hold their user_settings row locks and have checked they are eligible (already_migrated = false, no blocker). Returns how many were migrated. Enqueues per user: litellm.migrate_user {user_id, org_id, team_alias, email, user_version, model, billing_margin, apply_margin (below version 4, margin not NULL, 0 or 1.0), unlimited_budget}; per moved stripe_customers row stripe.migrate_customer {stripe_customer_id, org_id, user_id, email}; when legacy ciphertext moved, secrets.reencrypt {user_id, org_id, items: [{table, column, key}]}; litellm.verify_key {user_id, team_id, regenerate: true} (the member keeps a working key, else gets a new one) when nothing needs re-encrypting, else secrets.reencrypt enqueues it once done.';

CREATE OR REPLACE FUNCTION orgkeeper.user_migration_report(p_log orgkeeper.user_migration) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'status', 'migrated',
        'user_id', p_log.user_id,
        'org_id', p_log.org_id,
        'org_name', (SELECT o.name FROM orgkeeper.org o WHERE o.id = p_log.org_id),
        'migration_id', p_log.id,
        'migrated_at', p_log.migrated_at,
        'moved', jsonb_build_object(
            'stripe_customers', cardinality(p_log.stripe_customer_ids),
            'slack_users', cardinality(p_log.slack_user_ids),
            'slack_conversation', cardinality(p_log.slack_conversation_ids),
            'api_keys', cardinality(p_log.api_key_ids),
            'custom_secrets', cardinality(p_log.custom_secret_ids),
            'billing_sessions', cardinality(p_log.billing_session_ids),
            'user_repos', cardinality(p_log.user_repo_ids),
            'gitlab_webhook', cardinality(p_log.gitlab_webhook_ids),
            'conversation_metadata_saas', cardinality(p_log.saas_conversation_ids)),
        'conversations_copied', cardinality(p_log.copied_conversation_ids),
        'conflicts', jsonb_build_object('conversation_metadata_saas', coalesce((
            SELECT jsonb_agg(jsonb_build_object('conversation_id', c.conversation_id, 'org_id', c.org_id, 'user_id', c.user_id)
                             ORDER BY c.conversation_id)
              FROM orgkeeper.conversation_conflicts(p_log.user_id) c), '[]'::jsonb)),
        'users_row', CASE WHEN p_log.users_before IS NULL THEN 'created' ELSE 'updated' END,
        'org_version', p_log.user_version,
        'billing_margin', p_log.billing_margin,
        'byor_export_enabled', (SELECT o.byor_export_enabled FROM orgkeeper.org o WHERE o.id = p_log.org_id),
        'legacy_secrets', coalesce((
            SELECT jsonb_array_length(a.payload -> 'items')
              FROM orgkeeper.pending_external_actions a
             WHERE a.id = ANY (p_log.action_ids) AND a.kind = 'secrets.reencrypt'), 0),
        'actions', coalesce((
            SELECT jsonb_agg(jsonb_build_object('id', a.id, 'kind', a.kind, 'status', a.status) ORDER BY a.id)
              FROM orgkeeper.pending_external_actions a
             WHERE a.id = ANY (p_log.action_ids)), '[]'::jsonb));
$$;
COMMENT ON FUNCTION orgkeeper.user_migration_report(orgkeeper.user_migration) IS
  'The jsonb report of a migration log entry: org, rows moved per table, conversations copied, legacy secrets handed to the daemon, and the outbox actions with their ids.';

CREATE OR REPLACE FUNCTION orgkeeper.record_teams_ready(p_ids bigint[], p_workers text[], p_team_ids text[], p_results jsonb[])
RETURNS TABLE (action_id bigint, recorded boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_done bigint[];
BEGIN
    -- The daemon's batched write-back of litellm.migrate_user: one statement
    -- and one commit for the actions finishing together, and set-based (a
    -- loop over the one-action write-back cost about three times as much).
    -- The organizations' rows are locked first, in key order, as
    -- lock_action_org does for one action (org row, then action row).
    PERFORM orgkeeper.lock_actions_orgs(p_ids);
    -- Each action is completed only while its token holds the lease, and
    -- only those organizations become active with their team (an org being
    -- deleted stays deprovisioning).
    SELECT coalesce(array_agg(d.id), '{}') INTO v_done
      FROM orgkeeper.complete_actions(p_ids, p_workers, p_results) AS d(id);
    UPDATE orgkeeper.org o
       SET litellm_team_id = u.team_id, provisioning_status = 'active', provisioning_error = NULL
      FROM unnest(p_ids, p_team_ids) AS u(id, team_id)
      JOIN orgkeeper.pending_external_actions a ON a.id = u.id
     WHERE u.id = ANY (v_done) AND o.id = a.org_id AND o.provisioning_status <> 'deprovisioning';
    RETURN QUERY
    SELECT u.id, u.id = ANY (v_done) FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord) ORDER BY u.ord;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_teams_ready(bigint[], text[], text[], jsonb[]) IS
  'Daemon: orgkeeper.record_team_ready for several litellm.migrate_user actions in one statement (element i of each array belongs together; the ids are distinct): the organizations'' rows locked first in key order, each action marked done only while its own token holds the lease, and the organization of each such action made active with its team id (one being deleted stays deprovisioning). Returns, per action in the order given, whether it was recorded (false = lease lost, nothing written for it).';

------------------------------------------------------------------------------
-- one user
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.migrate_user(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
SET lock_timeout = '30s'
AS $$
#variable_conflict use_column
DECLARE
    v_user    uuid := migrate_user.user_id;
    v_flag    boolean;
    v_blocker text;
    v_log     orgkeeper.user_migration;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'migrate_user needs a user id (got NULL); nothing changed'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM orgkeeper.lock_user_for_migration(v_user);

    SELECT s.already_migrated INTO v_flag FROM orgkeeper.user_settings s WHERE s.user_id = v_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object(
            'status', 'not_found',
            'user_id', v_user,
            'detail', CASE WHEN EXISTS (SELECT 1 FROM orgkeeper.users u WHERE u.id = v_user)
                           THEN 'no user_settings row: the user already lives in the organization model and has nothing to migrate; nothing changed'
                           ELSE 'no user_settings row for this user; nothing changed' END);
    END IF;
    IF v_flag IS NULL THEN
        RAISE EXCEPTION 'user %: user_settings.already_migrated is NULL, so it is unknown whether this user was migrated; nothing changed', v_user
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('if the user was never migrated: UPDATE orgkeeper.user_settings SET already_migrated = false WHERE user_id = %L; then migrate again (set it to true instead if it was migrated by other means)', v_user);
    END IF;
    IF v_flag THEN
        SELECT * INTO v_log FROM orgkeeper.user_migration m WHERE m.user_id = v_user AND m.status = 'migrated';
        RETURN jsonb_strip_nulls(jsonb_build_object(
            'status', 'already_migrated',
            'user_id', v_user,
            'org_id', coalesce(v_log.org_id, (SELECT u.current_org_id FROM orgkeeper.users u WHERE u.id = v_user)),
            'migration_id', v_log.id,
            'migrated_at', v_log.migrated_at,
            'detail', CASE WHEN v_log.id IS NULL THEN 'marked migrated without a migration log (migrated by other means); nothing changed'
                           ELSE 'nothing changed' END));
    END IF;

    v_blocker := orgkeeper.migration_blocker(v_user);
    IF v_blocker IS NOT NULL THEN
        RAISE EXCEPTION '%; nothing changed', v_blocker
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'inspect the personal organization and the orgkeeper.user_migration log; if the user is in fact migrated, set user_settings.already_migrated = true';
    END IF;

    -- Personal org names are the user's id (user_<id>_org), so no concurrent
    -- session can take this one.
    PERFORM orgkeeper.migrate_locked_users(ARRAY[v_user]);
    DELETE FROM orgkeeper.user_migration_error e WHERE e.user_id = v_user;
    SELECT * INTO v_log FROM orgkeeper.user_migration m WHERE m.user_id = v_user AND m.status = 'migrated';
    RETURN orgkeeper.user_migration_report(v_log);
END;
$$;
COMMENT ON FUNCTION orgkeeper.migrate_user(uuid) IS
  'Migrates one legacy user into a personal organization (id = user id) in the caller''s transaction: settings copied from user_settings, users row and owner membership, related rows pointed at the org, conversations copied to conversation_metadata_saas, legacy rows kept, user_settings.already_migrated = true, and the external halves enqueued (litellm.migrate_user, stripe.migrate_customer, secrets.reencrypt). Returns a jsonb report: status migrated (with rows moved per table, the action ids, and conflicts: legacy conversations whose id another organization or user already holds, which were not copied), already_migrated or not_found (nothing changed). A personal organization that already exists (created at first login) is adopted: its settings are filled only where it has none. Raises 22004 for NULL, 55P03 when another session holds the user''s migration lock for 30 s, 55000 when already_migrated is NULL or the existing personal organization cannot be adopted (other members, open invitations, being deleted: the message says which). Everything is recorded in orgkeeper.user_migration for orgkeeper.rollback_user_migration.';

------------------------------------------------------------------------------
-- a batch of users (back-fill)
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.migrate_users(batch_size integer) RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '30s'
AS $$
#variable_conflict use_column
DECLARE
    v_batch      integer := migrate_users.batch_size;
    v_users      uuid[];
    v_n          integer := 0;
    v_user       uuid;
    v_state      text;
    v_msg        text;
    v_hint       text;
BEGIN
    IF v_batch IS NULL THEN
        RAISE EXCEPTION 'migrate_users needs a batch size (got NULL); nothing changed'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF v_batch < 1 THEN
        RAISE EXCEPTION 'migrate_users batch size must be at least 1 (got %); nothing changed', v_batch
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    LOOP
        -- The next not-yet-migrated users in id order whose user_settings
        -- row nobody else holds; users other sessions work on are skipped.
        SELECT coalesce(array_agg(x.user_id ORDER BY x.user_id), '{}') INTO v_users
          FROM (SELECT s.user_id FROM orgkeeper.user_settings s
                 WHERE s.already_migrated = false
                   AND NOT EXISTS (SELECT 1 FROM orgkeeper.user_migration_error e WHERE e.user_id = s.user_id)
                 ORDER BY s.user_id
                 LIMIT v_batch
                   FOR UPDATE SKIP LOCKED) x;
        IF cardinality(v_users) = 0 THEN
            RETURN 0;
        END IF;

        -- Users that cannot be migrated are recorded with the reason and
        -- skipped from now on, so a back-fill always ends.
        WITH blocked AS (
            -- migration_blocker (a SQL function that is not inlined, so
            -- planned at every call) only for the few users with a personal
            -- org or a migration log entry: for any other it is NULL.
            SELECT u.user_id,
                   CASE WHEN EXISTS (SELECT 1 FROM orgkeeper.org o
                                      WHERE o.kind = 'personal' AND o.created_by = u.user_id)
                          OR EXISTS (SELECT 1 FROM orgkeeper.user_migration m
                                      WHERE m.user_id = u.user_id AND m.status = 'migrated')
                        THEN orgkeeper.migration_blocker(u.user_id) END AS reason
              FROM unnest(v_users) AS u(user_id)
        ), rec AS (
            INSERT INTO orgkeeper.user_migration_error (user_id, sqlstate, message, hint)
            SELECT b.user_id, '55000', b.reason,
                   'inspect the personal organization and the orgkeeper.user_migration log; orgkeeper.migrate_user(user_id) retries one user'
              FROM blocked b WHERE b.reason IS NOT NULL
            ON CONFLICT (user_id) DO UPDATE
               SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, hint = EXCLUDED.hint, failed_at = now()
            RETURNING user_id
        )
        SELECT coalesce(array_agg(b.user_id ORDER BY b.user_id) FILTER (WHERE b.reason IS NULL), '{}') INTO v_users
          FROM blocked b;
        -- Nothing migratable in this walk (all recorded, or migrated
        -- meanwhile by others): walk again, those are excluded now.
        EXIT WHEN cardinality(v_users) > 0;
    END LOOP;
    PERFORM orgkeeper.refresh_growing_statistics();

    BEGIN
        v_n := orgkeeper.migrate_locked_users(v_users);
    EXCEPTION WHEN OTHERS THEN
        -- Something in one user's data broke the set-based batch: migrate
        -- one by one and record whoever still fails.
        v_n := 0;
        FOREACH v_user IN ARRAY v_users LOOP
            BEGIN
                v_n := v_n + orgkeeper.migrate_locked_users(ARRAY[v_user]);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT;
                -- A deadlock, serialization failure, lock timeout, lack of
                -- resources or operator intervention says nothing about the
                -- user: fail the call (the caller's transaction rolls back)
                -- rather than record the user as unmigratable, so that the
                -- next back-fill retries it.
                IF orgkeeper.is_transient_sqlstate(v_state) THEN
                    RAISE;
                END IF;
                INSERT INTO orgkeeper.user_migration_error (user_id, sqlstate, message, hint)
                VALUES (v_user, v_state, v_msg, nullif(v_hint, ''))
                ON CONFLICT (user_id) DO UPDATE
                   SET sqlstate = EXCLUDED.sqlstate, message = EXCLUDED.message, hint = EXCLUDED.hint, failed_at = now();
            END;
        END LOOP;
    END;
    RETURN v_n;
END;
$$;
COMMENT ON FUNCTION orgkeeper.migrate_users(integer) IS
  'Back-fill: migrates up to batch_size users whose user_settings.already_migrated is false (NULL means "unknown" and is never picked: orgkeeper.migrate_user explains it), set-based, in the caller''s transaction, with the same per-user log and actions as migrate_user. Users locked by another session are skipped, so several sessions can run it side by side. Users that cannot be migrated are recorded in orgkeeper.user_migration_error and skipped from then on; transient errors (orgkeeper.is_transient_sqlstate: deadlock, serialization failure, lock timeout, resources, operator intervention) are raised instead, recording nothing, so that a later call retries. Returns how many were migrated; 0 = nothing left this session can take. Raises 22004 / 22023 for a NULL or non-positive batch size.';

------------------------------------------------------------------------------
-- verification
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.verify_user_migration(user_id uuid)
RETURNS TABLE (check_name text, ok boolean, detail text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_user     uuid := verify_user_migration.user_id;
    v_flag     boolean;
    v_log      orgkeeper.user_migration;
    v_org      orgkeeper.org;
    v_current  uuid;
    v_has_user boolean;
    v_text     text;
    v_n        bigint;
    v_m        bigint;
    v_action   orgkeeper.pending_external_actions;
    v_checks   text[] := ARRAY['migration_recorded', 'personal_org', 'current_org_is_personal',
                               'owner_membership_active', 'related_rows_have_org', 'conversations_copied',
                               'external_actions_done', 'litellm_budget_unlimited', 'no_legacy_ciphertext'];
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'verify_user_migration needs a user id (got NULL)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT s.already_migrated INTO v_flag FROM orgkeeper.user_settings s WHERE s.user_id = v_user;
    IF NOT FOUND THEN
        RETURN QUERY SELECT c, false, format('no user_settings row for user %s: not a legacy user', v_user)
                       FROM unnest(v_checks) AS c;
        RETURN;
    END IF;
    SELECT * INTO v_log FROM orgkeeper.user_migration m WHERE m.user_id = v_user AND m.status = 'migrated';
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = v_user AND o.kind = 'personal';
    SELECT u.current_org_id, true INTO v_current, v_has_user FROM orgkeeper.users u WHERE u.id = v_user;

    -- 1. the migration is recorded
    check_name := 'migration_recorded';
    ok := v_flag IS TRUE AND v_log.id IS NOT NULL;
    detail := CASE
        WHEN ok THEN format('migration #%s at %s', v_log.id, v_log.migrated_at)
        WHEN v_flag IS NULL THEN 'user_settings.already_migrated is NULL'
        WHEN NOT v_flag THEN 'user_settings.already_migrated is false: the user is not migrated'
        ELSE 'user_settings.already_migrated is true but there is no migration log entry (migrated by other means)' END;
    RETURN NEXT;

    -- 2. the personal org exists
    check_name := 'personal_org';
    ok := v_org.id IS NOT NULL;
    detail := CASE WHEN ok THEN format('personal organization "%s" (%s)', v_org.name, v_org.id)
                   ELSE format('no personal organization with id %s', v_user) END;
    RETURN NEXT;

    -- 3. the current org is the personal org
    check_name := 'current_org_is_personal';
    ok := v_current IS NOT DISTINCT FROM v_user AND v_org.id IS NOT NULL;
    detail := CASE WHEN ok THEN 'users.current_org_id is the personal organization'
                   WHEN v_has_user IS NULL THEN 'no users row'
                   WHEN v_current IS NULL THEN 'users.current_org_id is NULL'
                   ELSE format('users.current_org_id is %s, not the personal organization %s', v_current, v_user) END;
    RETURN NEXT;

    -- 4. active owner membership
    check_name := 'owner_membership_active';
    SELECT m.status || ' ' || r.name INTO v_text
      FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
     WHERE m.org_id = v_user AND m.user_id = v_user;
    ok := coalesce(v_text = 'active owner', false);
    detail := CASE WHEN ok THEN 'active owner of the personal organization'
                   WHEN v_text IS NULL THEN 'no membership in the personal organization'
                   ELSE format('membership is %s, not active owner', v_text) END;
    RETURN NEXT;

    -- 5. no related row of the user without an org
    check_name := 'related_rows_have_org';
    SELECT string_agg(format('%s: %s', t.name, t.n), ', ' ORDER BY t.name) INTO v_text
      FROM (
        SELECT 'stripe_customers' AS name, count(*) AS n FROM orgkeeper.stripe_customers x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'slack_users', count(*) FROM orgkeeper.slack_users x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'slack_conversation', count(*) FROM orgkeeper.slack_conversation x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'api_keys', count(*) FROM orgkeeper.api_keys x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'custom_secrets', count(*) FROM orgkeeper.custom_secrets x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'billing_sessions', count(*) FROM orgkeeper.billing_sessions x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'user_repos', count(*) FROM orgkeeper.user_repos x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'gitlab_webhook', count(*) FROM orgkeeper.gitlab_webhook x WHERE x.user_id = v_user AND x.org_id IS NULL
        UNION ALL SELECT 'conversation_metadata_saas', count(*) FROM orgkeeper.conversation_metadata_saas x WHERE x.user_id = v_user AND x.org_id IS NULL
      ) t
     WHERE t.n > 0;
    ok := v_text IS NULL;
    detail := CASE WHEN ok THEN 'every related row of the user points at an organization'
                   ELSE 'rows without org_id: ' || v_text END;
    RETURN NEXT;

    -- 6. conversations copied
    check_name := 'conversations_copied';
    SELECT count(*), count(x.conversation_id) INTO v_n, v_m
      FROM orgkeeper.conversation_metadata c
      LEFT JOIN orgkeeper.conversation_metadata_saas x
             ON x.conversation_id = c.conversation_id AND x.org_id = v_user AND x.user_id = v_user
     WHERE c.user_id = v_user;
    SELECT string_agg(format('%s (organization %s, user %s)', c.conversation_id, coalesce(c.org_id::text, 'none'), c.user_id), ', ')
      INTO v_text
      FROM orgkeeper.conversation_conflicts(v_user) c;
    ok := coalesce(v_n = v_m AND v_org.id IS NOT NULL AND v_text IS NULL, false);
    detail := format('legacy conversations: %s, in conversation_metadata_saas for the personal organization: %s', v_n, v_m)
              || coalesce('; conflict, owned by another organization or user: ' || v_text, '');
    RETURN NEXT;

    -- 7. the migration's external actions are done
    check_name := 'external_actions_done';
    IF v_log.id IS NULL THEN
        ok := false;
        detail := 'no migration log entry, so no actions to check';
    ELSE
        SELECT count(*), count(*) FILTER (WHERE a.status = 'done'),
               string_agg(format('#%s %s %s (attempts %s%s)', a.id, a.kind, a.status, a.attempts,
                                 coalesce(': ' || a.last_error, '')), '; ' ORDER BY a.id)
                   FILTER (WHERE a.status <> 'done')
          INTO v_n, v_m, v_text
          FROM orgkeeper.pending_external_actions a
         WHERE a.id = ANY (v_log.action_ids);
        ok := v_n = v_m AND v_n = cardinality(v_log.action_ids);
        detail := CASE WHEN ok THEN format('%s of %s actions done', v_m, v_n)
                       ELSE format('%s of %s actions done; not done: %s', v_m, cardinality(v_log.action_ids),
                                   coalesce(v_text, 'some action rows are missing')) END;
    END IF;
    RETURN NEXT;

    -- 8. the user's own LiteLLM budget is the unlimited sentinel
    check_name := 'litellm_budget_unlimited';
    IF v_log.id IS NOT NULL THEN
        SELECT * INTO v_action FROM orgkeeper.pending_external_actions a
         WHERE a.id = ANY (v_log.action_ids) AND a.kind = 'litellm.migrate_user'
         ORDER BY a.id DESC LIMIT 1;
    END IF;
    ok := coalesce(v_action.status = 'done'
          AND v_action.result ? 'user_max_budget'
          AND (jsonb_typeof(v_action.result -> 'user_max_budget') = 'null'
               OR (jsonb_typeof(v_action.result -> 'user_max_budget') = 'number'
                   AND (v_action.result ->> 'user_max_budget')::numeric = 1000000000)), false);
    detail := CASE
        WHEN v_action.id IS NULL THEN 'no litellm.migrate_user action recorded'
        WHEN v_action.status <> 'done' THEN format('litellm.migrate_user #%s is %s%s', v_action.id, v_action.status,
                                                   coalesce(': ' || v_action.last_error, ''))
        WHEN ok THEN format('user max_budget %s (unlimited), team credits %s',
                            v_action.result -> 'user_max_budget', coalesce(v_action.result -> 'credits', 'null'::jsonb))
        WHEN NOT (v_action.result ? 'user_max_budget') THEN format('litellm.migrate_user #%s recorded no user_max_budget in its result', v_action.id)
        ELSE format('user max_budget is %s, not the unlimited sentinel 1000000000.0', v_action.result -> 'user_max_budget') END;
    RETURN NEXT;

    -- 9. no legacy-scheme ciphertext where the migration put credentials
    check_name := 'no_legacy_ciphertext';
    SELECT string_agg(l.place, ', ' ORDER BY l.ord, l.place) INTO v_text
      FROM (
        SELECT 1 AS ord, 'org.llm_api_key' AS place FROM orgkeeper.org o WHERE o.id = v_user AND orgkeeper.is_legacy_ciphertext(o.llm_api_key)
        UNION ALL SELECT 2, 'org.llm_api_key_for_byor' FROM orgkeeper.org o WHERE o.id = v_user AND orgkeeper.is_legacy_ciphertext(o.llm_api_key_for_byor)
        UNION ALL SELECT 2, 'org_member.llm_api_key_for_byor' FROM orgkeeper.org_member m
                   WHERE m.org_id = v_user AND m.user_id = v_user AND orgkeeper.is_legacy_ciphertext(m.llm_api_key_for_byor)
        UNION ALL SELECT 3, 'org.search_api_key' FROM orgkeeper.org o WHERE o.id = v_user AND orgkeeper.is_legacy_ciphertext(o.search_api_key)
        UNION ALL SELECT 4, 'org.sandbox_api_key' FROM orgkeeper.org o WHERE o.id = v_user AND orgkeeper.is_legacy_ciphertext(o.sandbox_api_key)
        UNION ALL SELECT 5, 'org_member.llm_api_key' FROM orgkeeper.org_member m
                   WHERE m.org_id = v_user AND m.user_id = v_user AND orgkeeper.is_legacy_ciphertext(m.llm_api_key)
        UNION ALL SELECT 6, format('custom_secrets.secret_value (id %s)', c.id) FROM orgkeeper.custom_secrets c
                   WHERE c.user_id = v_user AND c.org_id = v_user AND orgkeeper.is_legacy_ciphertext(c.secret_value)
        UNION ALL SELECT 7, format('gitlab_webhook.webhook_secret (id %s)', g.id) FROM orgkeeper.gitlab_webhook g
                   WHERE g.user_id = v_user AND g.org_id = v_user AND orgkeeper.is_legacy_ciphertext(g.webhook_secret)
      ) l;
    ok := v_text IS NULL AND v_org.id IS NOT NULL;
    v_action := NULL;
    SELECT * INTO v_action FROM orgkeeper.pending_external_actions a
     WHERE v_log.id IS NOT NULL AND a.id = ANY (v_log.action_ids) AND a.kind = 'secrets.reencrypt'
     ORDER BY a.id DESC LIMIT 1;
    detail := CASE
        WHEN v_org.id IS NULL THEN 'no personal organization'
        WHEN ok THEN 'every migrated credential is orgkeeper ciphertext (ok2:, or ok1: awaiting orgkeeper secrets rotate)'
        ELSE 'legacy ciphertext in ' || v_text
             || coalesce(format(' (secrets.reencrypt #%s is %s)', v_action.id, v_action.status), '') END;
    RETURN NEXT;
END;
$$;
COMMENT ON FUNCTION orgkeeper.verify_user_migration(uuid) IS
  'One row per check of a user''s migration (check_name, ok, detail): migration_recorded, personal_org, current_org_is_personal, owner_membership_active, related_rows_have_org, conversations_copied, external_actions_done (the migration''s outbox actions), litellm_budget_unlimited (the litellm.migrate_user result records user_max_budget = 1000000000.0), no_legacy_ciphertext (credentials start with "ok2:" or "ok1:"). A failing row''s detail says what is wrong. Unknown user: every check fails naming why. Read-only.';

------------------------------------------------------------------------------
-- rollback
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.rollback_user_migration(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql
SET lock_timeout = '30s'
AS $$
#variable_conflict use_column
DECLARE
    v_user       uuid := rollback_user_migration.user_id;
    v_flag       boolean;
    v_log        orgkeeper.user_migration;
    v_org        orgkeeper.org;
    v_text       text;
    v_before     jsonb;
    v_cols       text;
    v_restored   jsonb;
    v_cancelled  jsonb;
    v_enqueued   jsonb := '[]'::jsonb;
    v_email      text;
    v_migrate    orgkeeper.pending_external_actions;
    v_id         bigint;
    v_removed    integer;
    v_max_id     bigint;
    v_secrets    integer;
    v_users_row  text;
    v_report     jsonb;
    r            record;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'rollback_user_migration needs a user id (got NULL); nothing changed'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM orgkeeper.lock_user_for_migration(v_user);

    SELECT s.already_migrated, s.email INTO v_flag, v_email
      FROM orgkeeper.user_settings s WHERE s.user_id = v_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'not_found', 'user_id', v_user,
                                  'detail', 'no user_settings row for this user; nothing changed');
    END IF;
    SELECT * INTO v_log FROM orgkeeper.user_migration m
     WHERE m.user_id = v_user AND m.status = 'migrated' FOR UPDATE;
    IF NOT FOUND THEN
        IF v_flag THEN
            RAISE EXCEPTION 'user % is marked migrated but has no migration log entry (migrated by other means), so there is nothing to restore from; nothing changed', v_user
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'only migrations made by orgkeeper.migrate_user / migrate_users can be rolled back';
        END IF;
        RETURN jsonb_build_object('status', 'not_migrated', 'user_id', v_user,
                                  'detail', 'the user is not migrated; nothing changed');
    END IF;
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = v_log.org_id FOR UPDATE;

    -- Refusals: anything the migration did not create that depends on the org
    -- or on the users row would be lost or broken by undoing it.
    SELECT string_agg(format('%s (%s)', coalesce(u.email, m.user_id::text), m.status), ', ' ORDER BY m.user_id) INTO v_text
      FROM orgkeeper.org_member m LEFT JOIN orgkeeper.users u ON u.id = m.user_id
     WHERE m.org_id = v_log.org_id AND m.user_id <> v_user;
    IF v_text IS NOT NULL THEN
        RAISE EXCEPTION 'cannot roll back user %: the personal organization "%" has other members: %; nothing changed', v_user, v_org.name, v_text
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'remove the other members first (orgkeeper.remove_member), then roll back';
    END IF;
    SELECT string_agg(i.email, ', ' ORDER BY i.id) INTO v_text
      FROM orgkeeper.invitation i
     WHERE i.org_id = v_log.org_id AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now();
    IF v_text IS NOT NULL THEN
        RAISE EXCEPTION 'cannot roll back user %: the personal organization "%" has open invitations (%); nothing changed', v_user, v_org.name, v_text
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'revoke them first (orgkeeper.revoke_invitation), then roll back';
    END IF;
    IF v_log.users_before IS NULL THEN
        SELECT string_agg(o.name, ', ' ORDER BY o.name) INTO v_text
          FROM orgkeeper.org_member m JOIN orgkeeper.org o ON o.id = m.org_id
         WHERE m.user_id = v_user AND m.org_id <> v_log.org_id;
        IF v_text IS NOT NULL THEN
            RAISE EXCEPTION 'cannot roll back user %: since the migration the user joined other organizations (%), and had no users row before; nothing changed', v_user, v_text
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'remove those memberships first, then roll back';
        END IF;
    END IF;
    SELECT string_agg(format('%s: %s', t.name, t.n), ', ' ORDER BY t.name) INTO v_text
      FROM (
        SELECT 'stripe_customers' AS name, count(*) AS n FROM orgkeeper.stripe_customers x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.stripe_customer_ids))
        UNION ALL SELECT 'slack_users', count(*) FROM orgkeeper.slack_users x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.slack_user_ids))
        UNION ALL SELECT 'slack_conversation', count(*) FROM orgkeeper.slack_conversation x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.slack_conversation_ids))
        UNION ALL SELECT 'api_keys', count(*) FROM orgkeeper.api_keys x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.api_key_ids))
        UNION ALL SELECT 'custom_secrets', count(*) FROM orgkeeper.custom_secrets x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.custom_secret_ids))
        UNION ALL SELECT 'billing_sessions', count(*) FROM orgkeeper.billing_sessions x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.billing_session_ids))
        UNION ALL SELECT 'user_repos', count(*) FROM orgkeeper.user_repos x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.user_repo_ids))
        UNION ALL SELECT 'gitlab_webhook', count(*) FROM orgkeeper.gitlab_webhook x
         WHERE x.org_id = v_log.org_id AND NOT (x.id = ANY (v_log.gitlab_webhook_ids))
        UNION ALL SELECT 'conversation_metadata_saas', count(*) FROM orgkeeper.conversation_metadata_saas x
         WHERE x.org_id = v_log.org_id
           AND NOT (x.conversation_id = ANY (v_log.saas_conversation_ids || v_log.copied_conversation_ids))
      ) t
     WHERE t.n > 0;
    IF v_text IS NOT NULL THEN
        RAISE EXCEPTION 'cannot roll back user %: the personal organization "%" has rows the migration did not put there (%); nothing changed', v_user, v_org.name, v_text
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'they were created in the organization model after the migration; move or delete them first';
    END IF;

    -- Outbox: actions of the migration that never started are cancelled (they
    -- had no external effect); the others get their reversal, enqueued before
    -- the org is deleted so that litellm.delete_team (from the org delete
    -- trigger) runs after litellm.rollback_user: same subject, id order.
    WITH c AS (
        UPDATE orgkeeper.pending_external_actions a
           SET status = 'cancelled', finished_at = now(), updated_at = now(),
               result = coalesce(a.result, '{}'::jsonb) || jsonb_build_object('cancelled_by', 'rollback_user_migration')
         WHERE a.id = ANY (v_log.action_ids) AND a.status = 'pending' AND a.attempts = 0 AND a.errors = '[]'::jsonb
        RETURNING a.id, a.kind
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('id', c.id, 'kind', c.kind) ORDER BY c.id), '[]'::jsonb)
      INTO v_cancelled FROM c;

    FOR r IN
        SELECT a.* FROM orgkeeper.pending_external_actions a
         WHERE a.id = ANY (v_log.action_ids)
           AND a.kind IN ('litellm.migrate_user', 'stripe.migrate_customer')
           AND NOT (a.status = 'cancelled' AND a.attempts = 0 AND a.errors = '[]'::jsonb)
         ORDER BY a.id
    LOOP
        IF r.kind = 'litellm.migrate_user' THEN
            v_id := orgkeeper.enqueue_action('litellm.rollback_user', v_log.org_id, v_user, jsonb_build_object(
                'user_id', v_user,
                'org_id', v_log.org_id,
                'team_id', coalesce(v_org.litellm_team_id, v_log.org_id::text),
                'email', v_email,
                'migrate_action_id', r.id,
                'adopted', v_log.org_before IS NOT NULL,
                'unlimited_budget', 1000000000.0));
            v_enqueued := v_enqueued || jsonb_build_object('id', v_id, 'kind', 'litellm.rollback_user');
        ELSE
            v_id := orgkeeper.enqueue_action('stripe.rollback_customer', v_log.org_id, v_user, jsonb_build_object(
                'stripe_customer_id', r.payload ->> 'stripe_customer_id',
                'org_id', v_log.org_id,
                'user_id', v_user,
                'email', v_email,
                'migrate_action_id', r.id));
            v_enqueued := v_enqueued || jsonb_build_object('id', v_id, 'kind', 'stripe.rollback_customer');
        END IF;
    END LOOP;

    -- Related rows back to org_id NULL (only those still in the personal org).
    WITH sc AS (UPDATE orgkeeper.stripe_customers t SET org_id = NULL
                 WHERE t.id = ANY (v_log.stripe_customer_ids) AND t.org_id = v_log.org_id RETURNING 1),
         su AS (UPDATE orgkeeper.slack_users t SET org_id = NULL
                 WHERE t.id = ANY (v_log.slack_user_ids) AND t.org_id = v_log.org_id RETURNING 1),
         sv AS (UPDATE orgkeeper.slack_conversation t SET org_id = NULL
                 WHERE t.id = ANY (v_log.slack_conversation_ids) AND t.org_id = v_log.org_id RETURNING 1),
         ak AS (UPDATE orgkeeper.api_keys t SET org_id = NULL
                 WHERE t.id = ANY (v_log.api_key_ids) AND t.org_id = v_log.org_id RETURNING 1),
         cs AS (UPDATE orgkeeper.custom_secrets t SET org_id = NULL
                 WHERE t.id = ANY (v_log.custom_secret_ids) AND t.org_id = v_log.org_id RETURNING 1),
         bs AS (UPDATE orgkeeper.billing_sessions t SET org_id = NULL
                 WHERE t.id = ANY (v_log.billing_session_ids) AND t.org_id = v_log.org_id RETURNING 1),
         ur AS (UPDATE orgkeeper.user_repos t SET org_id = NULL
                 WHERE t.id = ANY (v_log.user_repo_ids) AND t.org_id = v_log.org_id RETURNING 1),
         gw AS (UPDATE orgkeeper.gitlab_webhook t SET org_id = NULL
                 WHERE t.id = ANY (v_log.gitlab_webhook_ids) AND t.org_id = v_log.org_id RETURNING 1),
         sm AS (UPDATE orgkeeper.conversation_metadata_saas t SET org_id = NULL
                 WHERE t.conversation_id = ANY (v_log.saas_conversation_ids) AND t.org_id = v_log.org_id RETURNING 1)
    SELECT jsonb_build_object(
               'stripe_customers', (SELECT count(*) FROM sc),
               'slack_users', (SELECT count(*) FROM su),
               'slack_conversation', (SELECT count(*) FROM sv),
               'api_keys', (SELECT count(*) FROM ak),
               'custom_secrets', (SELECT count(*) FROM cs),
               'billing_sessions', (SELECT count(*) FROM bs),
               'user_repos', (SELECT count(*) FROM ur),
               'gitlab_webhook', (SELECT count(*) FROM gw),
               'conversation_metadata_saas', (SELECT count(*) FROM sm))
      INTO v_restored;

    -- Legacy ciphertext the daemon may have re-encrypted goes back as it was.
    v_secrets := 0;
    FOR r IN SELECT * FROM jsonb_to_recordset(v_log.legacy_ciphertext) AS x("table" text, "column" text, id bigint, value text)
    LOOP
        IF r."table" = 'custom_secrets' AND r."column" = 'secret_value' THEN
            UPDATE orgkeeper.custom_secrets t SET secret_value = r.value
             WHERE t.id = r.id AND t.secret_value IS DISTINCT FROM r.value;
        ELSIF r."table" = 'gitlab_webhook' AND r."column" = 'webhook_secret' THEN
            UPDATE orgkeeper.gitlab_webhook t SET webhook_secret = r.value
             WHERE t.id = r.id AND t.webhook_secret IS DISTINCT FROM r.value;
        ELSE
            CONTINUE;
        END IF;
        IF FOUND THEN
            v_secrets := v_secrets + 1;
        END IF;
    END LOOP;

    DELETE FROM orgkeeper.conversation_metadata_saas t
     WHERE t.conversation_id = ANY (v_log.copied_conversation_ids) AND t.org_id = v_log.org_id;
    GET DIAGNOSTICS v_removed = ROW_COUNT;

    IF v_log.org_before IS NOT NULL THEN
        -- An adopted personal org stays, with its settings as they were
        -- (litellm.rollback_user keeps the user in its team).
        SELECT string_agg(quote_ident(c), ', ') INTO v_cols
          FROM unnest(orgkeeper.migration_settings_columns()) AS c;
        EXECUTE format('UPDATE orgkeeper.org o SET (%1$s) = (SELECT %1$s FROM jsonb_populate_record(NULL::orgkeeper.org, $1)) WHERE o.id = $2', v_cols)
          USING v_log.org_before, v_log.org_id;
    ELSE
        -- The personal org (its memberships cascade; the delete trigger enqueues
        -- litellm.delete_team, which removes the team after litellm.rollback_user).
        SELECT coalesce(max(a.id), 0) INTO v_max_id FROM orgkeeper.pending_external_actions a;
        DELETE FROM orgkeeper.org o WHERE o.id = v_log.org_id;
        SELECT coalesce(jsonb_agg(jsonb_build_object('id', a.id, 'kind', a.kind) ORDER BY a.id), '[]'::jsonb)
          INTO v_report
          FROM orgkeeper.pending_external_actions a
         WHERE a.id > v_max_id AND a.org_id = v_log.org_id AND a.kind = 'litellm.delete_team';
        v_enqueued := v_enqueued || v_report;
    END IF;

    -- The users row: removed, or put back exactly as it was.
    IF v_log.users_before IS NULL THEN
        DELETE FROM orgkeeper.users u WHERE u.id = v_user;
        v_users_row := 'deleted';
    ELSE
        v_before := v_log.users_before;
        IF v_before ->> 'current_org_id' IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM orgkeeper.org o WHERE o.id = (v_before ->> 'current_org_id')::uuid) THEN
            v_before := jsonb_set(v_before, '{current_org_id}', 'null'::jsonb);
        END IF;
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
          FROM pg_attribute a
         WHERE a.attrelid = 'orgkeeper.users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attname <> 'id' AND a.attgenerated = '';
        EXECUTE format('UPDATE orgkeeper.users u SET (%1$s) = (SELECT %1$s FROM jsonb_populate_record(NULL::orgkeeper.users, $1)) WHERE u.id = $2', v_cols)
          USING v_before, v_user;
        v_users_row := 'restored';
    END IF;

    UPDATE orgkeeper.user_settings s SET already_migrated = false WHERE s.user_id = v_user;

    v_report := jsonb_build_object(
        'status', 'rolled_back',
        'user_id', v_user,
        'org_id', v_log.org_id,
        'org_name', v_org.name,
        'org', CASE WHEN v_log.org_before IS NOT NULL THEN 'restored' ELSE 'deleted' END,
        'migration_id', v_log.id,
        'restored', v_restored,
        'conversation_copies_removed', v_removed,
        'legacy_ciphertext_restored', v_secrets,
        'users_row', v_users_row,
        'actions_cancelled', v_cancelled,
        'actions_enqueued', v_enqueued);
    UPDATE orgkeeper.user_migration m
       SET status = 'rolled_back', rolled_back_at = now(), rollback_report = v_report
     WHERE m.id = v_log.id;
    RETURN v_report;
END;
$$;
COMMENT ON FUNCTION orgkeeper.rollback_user_migration(uuid) IS
  'Undoes a migration made by migrate_user / migrate_users from its orgkeeper.user_migration log: related rows back to org_id NULL, conversation copies removed, legacy ciphertext put back, personal org (and membership) deleted — or, when the migration adopted an existing one, its settings restored and the org kept —, users row deleted or restored as it was, user_settings.already_migrated = false. Migration actions that never started are cancelled; for the others it enqueues litellm.rollback_user {user_id, org_id, team_id, email, migrate_action_id, adopted, unlimited_budget} and stripe.rollback_customer {stripe_customer_id, org_id, user_id, email, migrate_action_id}; deleting the org enqueues litellm.delete_team after them. Returns a jsonb report (status rolled_back, not_migrated or not_found). Refuses with 55000 (nothing changed) when the org gained other members, open invitations or rows created after the migration, or the user joined other orgs; 55P03 when another session holds the user''s lock for 30 s; 22004 for NULL.';

------------------------------------------------------------------------------
-- privileges
------------------------------------------------------------------------------
-- These functions are for DBAs (and the CLI running as one); the application
-- and the daemon do not migrate users. Functions are not executable by PUBLIC
-- (V5 default privileges), and sql/rls.sql runs before this file, so the
-- DBA role's EXECUTE is granted here.
REVOKE EXECUTE ON FUNCTION
    orgkeeper.is_legacy_ciphertext(text),
    orgkeeper.is_transient_sqlstate(text),
    orgkeeper.lock_user_for_migration(uuid),
    orgkeeper.migration_blocker(uuid),
    orgkeeper.refresh_growing_statistics(),
    orgkeeper.conversation_conflicts(uuid),
    orgkeeper.migrate_locked_users(uuid[]),
    orgkeeper.user_migration_report(orgkeeper.user_migration),
    orgkeeper.migrate_user(uuid),
    orgkeeper.migrate_users(integer),
    orgkeeper.verify_user_migration(uuid),
    orgkeeper.rollback_user_migration(uuid)
FROM PUBLIC;
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'orgkeeper_dba') THEN
        GRANT EXECUTE ON FUNCTION
            orgkeeper.is_legacy_ciphertext(text),
            orgkeeper.is_transient_sqlstate(text),
            orgkeeper.lock_user_for_migration(uuid),
            orgkeeper.migration_blocker(uuid),
            orgkeeper.refresh_growing_statistics(),
            orgkeeper.conversation_conflicts(uuid),
            orgkeeper.migrate_locked_users(uuid[]),
            orgkeeper.user_migration_report(orgkeeper.user_migration),
            orgkeeper.migrate_user(uuid),
            orgkeeper.migrate_users(integer),
            orgkeeper.verify_user_migration(uuid),
            orgkeeper.rollback_user_migration(uuid)
        TO orgkeeper_dba;
        GRANT SELECT, INSERT, UPDATE, DELETE ON orgkeeper.user_migration, orgkeeper.user_migration_error TO orgkeeper_dba;
    END IF;
END
$grants$;
