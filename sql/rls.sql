-- rls.sql — row-level security and privileges for the three database roles
-- (created in migrations/V5__access_control.sql):
--
-- * orgkeeper_app    the application. Confined by row-level security to the
--                    organizations of the user named by orgkeeper.user_id
--                    (SET LOCAL orgkeeper.user_id = '<uuid>' per transaction).
--                    Memberships, invitations and deletions go through the
--                    SECURITY DEFINER functions of members.sql / invitations.sql.
-- * orgkeeper_daemon the outbox daemon: reads everything, writes back results.
-- * orgkeeper_dba    DBAs: everything, through the functions or directly.
--
-- The daemon and DBA roles bypass row security twice over: BYPASSRLS (in
-- effect after SET ROLE, since role attributes are not inherited) and a
-- permissive "service" policy on every table (in effect for login roles that
-- are merely members of them). The application role has neither.
--
-- Tables without row security are listed, with the reason, in
-- orgkeeper.rls_exempt (maintained below; tests/it/row_security.rs checks that
-- every other table has it enabled).
--
-- This file is re-applied whenever the library changes: policies are dropped
-- and re-created, the application's privileges are revoked and re-granted.

------------------------------------------------------------------------------
-- functions that write other tables run as their owner
------------------------------------------------------------------------------
-- The triggers of ownership.sql / outbox.sql insert memberships and
-- outbox rows and read names and the org-creation policy the application cannot see;
-- they run as the table owner, with a pinned search_path. (ownership.sql
-- re-creates them with CREATE OR REPLACE, which resets these settings, and
-- this file runs after it.)
ALTER FUNCTION orgkeeper.org_before_write() SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp;
ALTER FUNCTION orgkeeper.org_after_insert() SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp;
ALTER FUNCTION orgkeeper.org_after_delete() SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp;
ALTER FUNCTION orgkeeper.check_owner_at_commit() SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp;
ALTER FUNCTION orgkeeper.assert_org_has_owner(uuid) SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp;

------------------------------------------------------------------------------
-- policy helpers
------------------------------------------------------------------------------
-- SECURITY DEFINER so that a policy on org_member can look at org_member
-- without recursing into its own policy. Used as
-- "org_id IN (SELECT orgkeeper.rls_member_org_ids())", evaluated once per query.
--
-- An organization being deleted (provisioning_status = 'deprovisioning',
-- deletion.sql) counts for none of these: from delete_org's commit on, the
-- application sees nothing of it, nor of its rows, nor (through it) of its
-- members, and cannot make it anyone's current organization.
CREATE OR REPLACE FUNCTION orgkeeper.rls_member_org_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT m.org_id FROM orgkeeper.org_member m JOIN orgkeeper.org g ON g.id = m.org_id
     WHERE m.user_id = (SELECT orgkeeper.current_app_user()) AND m.status = 'active'
       AND g.provisioning_status <> 'deprovisioning';
$$;
COMMENT ON FUNCTION orgkeeper.rls_member_org_ids() IS
  'Row security: the organizations in which orgkeeper.user_id is an active member (none when it is unset), except organizations being deleted (deprovisioning).';

CREATE OR REPLACE FUNCTION orgkeeper.rls_admin_org_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT m.org_id FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
      JOIN orgkeeper.org g ON g.id = m.org_id
     WHERE m.user_id = (SELECT orgkeeper.current_app_user()) AND m.status = 'active'
       AND r.rank <= orgkeeper.manager_rank() AND g.provisioning_status <> 'deprovisioning';
$$;
COMMENT ON FUNCTION orgkeeper.rls_admin_org_ids() IS
  'Row security: the organizations in which orgkeeper.user_id is an active owner or admin, except organizations being deleted (deprovisioning).';

CREATE OR REPLACE FUNCTION orgkeeper.rls_co_member_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT DISTINCT o.user_id
      FROM orgkeeper.org_member m JOIN orgkeeper.org_member o ON o.org_id = m.org_id
      JOIN orgkeeper.org g ON g.id = m.org_id
     WHERE m.user_id = (SELECT orgkeeper.current_app_user()) AND m.status = 'active'
       AND g.provisioning_status <> 'deprovisioning';
$$;
COMMENT ON FUNCTION orgkeeper.rls_co_member_ids() IS
  'Row security: the users who share an organization with orgkeeper.user_id (whose users rows it may read).';

CREATE OR REPLACE FUNCTION orgkeeper.rls_managed_members() RETURNS TABLE (org_id uuid, user_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT o.org_id, o.user_id
      FROM orgkeeper.org_member m
      JOIN orgkeeper.role r ON r.id = m.role_id
      JOIN orgkeeper.org_member o ON o.org_id = m.org_id
      JOIN orgkeeper.role ro ON ro.id = o.role_id
      JOIN orgkeeper.org g ON g.id = m.org_id
     WHERE m.user_id = (SELECT orgkeeper.current_app_user()) AND m.status = 'active'
       AND r.rank <= orgkeeper.manager_rank() AND ro.rank >= r.rank
       AND g.provisioning_status <> 'deprovisioning';
$$;
COMMENT ON FUNCTION orgkeeper.rls_managed_members() IS
  'Row security: (org, user) of every member that orgkeeper.user_id manages — in organizations where it is an active owner or admin, the members of the same or a weaker rank (themselves included).';

-- The row being inserted is not in the table yet when its policies are
-- checked, so this cannot look at the org row itself. It answers for the
-- caller's own organizations only: for any id but one of an organization
-- orgkeeper.user_id created that has members, it is true, so calling it
-- tells nothing about other organizations (the policy's created_by test
-- makes it irrelevant for them).
CREATE OR REPLACE FUNCTION orgkeeper.rls_org_has_no_members(p_org_id uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT NOT EXISTS (SELECT 1 FROM orgkeeper.org_member m JOIN orgkeeper.org o ON o.id = m.org_id
                        WHERE m.org_id = p_org_id AND o.created_by = (SELECT orgkeeper.current_app_user()));
$$;
COMMENT ON FUNCTION orgkeeper.rls_org_has_no_members(uuid) IS
  'Row security, with created_by = orgkeeper.user_id in the org_app_select policy: false only for an organization orgkeeper.user_id created that has memberships, so INSERT ... RETURNING works for its creator (the owner row is added after the check) while an organization the creator left stays hidden. True for every other id, existing or not: no existence oracle.';

------------------------------------------------------------------------------
-- the exemption register (the one place that lists tables without RLS)
------------------------------------------------------------------------------
DELETE FROM orgkeeper.rls_exempt
 WHERE table_name NOT IN ('role', 'sql_library', 'schema_history', 'rls_exempt', 'settings_version', 'daemon_waiting');
INSERT INTO orgkeeper.rls_exempt (table_name, reason) VALUES
    ('role',           'global role catalog (owner, admin, member and their ranks): no tenant data, and every role resolves role names from it'),
    ('sql_library',    'bookkeeping of orgkeeper migrate (the applied library checksum): no tenant data, not granted to the application'),
    ('schema_history', 'refinery''s history of versioned migrations: no tenant data, not granted to the application'),
    ('rls_exempt',     'this register itself: no tenant data, not granted to the application'),
    ('settings_version', 'the catalog of OpenHands settings versions and their default models: no tenant data, readable by every role'),
    ('daemon_waiting', 'which daemon replicas wait for work: no tenant data, not granted to the application')
ON CONFLICT (table_name) DO UPDATE SET reason = EXCLUDED.reason;

------------------------------------------------------------------------------
-- row-level security on every other table
------------------------------------------------------------------------------
DO $rls$
DECLARE
    v_table text;
BEGIN
    -- DDL already in place is skipped: each statement here takes an ACCESS
    -- EXCLUSIVE lock on its table, which queues every tenant's queries
    -- behind it (see MigrateLimits in src/db.rs).
    FOR v_table IN
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'orgkeeper'::regnamespace AND c.relkind IN ('r', 'p')
           AND c.relname NOT IN (SELECT e.table_name FROM orgkeeper.rls_exempt e)
           AND (NOT c.relrowsecurity
                OR NOT EXISTS (SELECT 1 FROM pg_policies p
                                WHERE p.schemaname = 'orgkeeper' AND p.tablename = c.relname
                                  AND p.policyname = c.relname || '_service'
                                  AND 'orgkeeper_definer' = ANY (p.roles)))
         ORDER BY 1
    LOOP
        EXECUTE format('ALTER TABLE orgkeeper.%I ENABLE ROW LEVEL SECURITY', v_table);
        -- Members of the daemon and DBA roles see and change every row.
        EXECUTE format('DROP POLICY IF EXISTS %I ON orgkeeper.%I', v_table || '_service', v_table);
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I AS PERMISSIVE FOR ALL TO orgkeeper_daemon, orgkeeper_dba, orgkeeper_definer USING (true) WITH CHECK (true)',
                       v_table || '_service', v_table);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_service', v_table,
                       'The daemon and DBAs (and their members), and the SECURITY DEFINER functions (owned by orgkeeper_definer, which check their callers themselves), are not confined by row security.');
    END LOOP;
END
$rls$;

-- Organizations: members see them; anyone may create one they own (the
-- creator sees it during the inserting statement, before the owner row
-- exists); owners and admins may update the settings the application owns.
DROP POLICY IF EXISTS org_app_select ON orgkeeper.org;
CREATE POLICY org_app_select ON orgkeeper.org FOR SELECT TO orgkeeper_app
    USING (id IN (SELECT orgkeeper.rls_member_org_ids())
           OR (created_by = (SELECT orgkeeper.current_app_user()) AND orgkeeper.rls_org_has_no_members(id)));
COMMENT ON POLICY org_app_select ON orgkeeper.org IS 'The application sees the organizations its user is an active member of.';

DROP POLICY IF EXISTS org_app_insert ON orgkeeper.org;
CREATE POLICY org_app_insert ON orgkeeper.org FOR INSERT TO orgkeeper_app
    WITH CHECK (created_by = (SELECT orgkeeper.current_app_user()));
COMMENT ON POLICY org_app_insert ON orgkeeper.org IS 'The application creates organizations owned by its user only (the trigger orgkeeper.org_admit says so first, then checks that the user exists and applies the org-creation policy).';

DROP POLICY IF EXISTS org_app_update ON orgkeeper.org;
CREATE POLICY org_app_update ON orgkeeper.org FOR UPDATE TO orgkeeper_app
    USING (id IN (SELECT orgkeeper.rls_admin_org_ids()))
    WITH CHECK (id IN (SELECT orgkeeper.rls_admin_org_ids()));
COMMENT ON POLICY org_app_update ON orgkeeper.org IS 'Owners and admins update their organizations'' settings; deletion only through orgkeeper.delete_org.';

-- Memberships: visible within one's organizations; written only by functions.
DROP POLICY IF EXISTS org_member_app_select ON orgkeeper.org_member;
CREATE POLICY org_member_app_select ON orgkeeper.org_member FOR SELECT TO orgkeeper_app
    USING (org_id IN (SELECT orgkeeper.rls_member_org_ids()));
COMMENT ON POLICY org_member_app_select ON orgkeeper.org_member IS 'The application sees the memberships of its user''s organizations; changes go through add_member, change_member_role, remove_member, leave_org and invitations.';

-- Users: one's own row and those of fellow members.
DROP POLICY IF EXISTS users_app_select ON orgkeeper.users;
CREATE POLICY users_app_select ON orgkeeper.users FOR SELECT TO orgkeeper_app
    USING (id = (SELECT orgkeeper.current_app_user()) OR id IN (SELECT orgkeeper.rls_co_member_ids()));
COMMENT ON POLICY users_app_select ON orgkeeper.users IS 'The application sees its user''s row and the rows of users sharing an organization with it.';

DROP POLICY IF EXISTS users_app_insert ON orgkeeper.users;
CREATE POLICY users_app_insert ON orgkeeper.users FOR INSERT TO orgkeeper_app
    WITH CHECK (id = (SELECT orgkeeper.current_app_user())
                AND (current_org_id IS NULL OR current_org_id IN (SELECT orgkeeper.rls_member_org_ids())));
COMMENT ON POLICY users_app_insert ON orgkeeper.users IS 'The application records its own user only.';

DROP POLICY IF EXISTS users_app_update ON orgkeeper.users;
CREATE POLICY users_app_update ON orgkeeper.users FOR UPDATE TO orgkeeper_app
    USING (id = (SELECT orgkeeper.current_app_user()))
    WITH CHECK (id = (SELECT orgkeeper.current_app_user())
                AND (current_org_id IS NULL OR current_org_id IN (SELECT orgkeeper.rls_member_org_ids())));
COMMENT ON POLICY users_app_update ON orgkeeper.users IS 'The application updates its own user only, and can only switch to an organization the user belongs to.';

DROP POLICY IF EXISTS users_identity ON orgkeeper.users;
CREATE POLICY users_identity ON orgkeeper.users FOR ALL TO orgkeeper_identity USING (true) WITH CHECK (true);
COMMENT ON POLICY users_identity ON orgkeeper.users IS 'The identity-provider sync records every user''s email and its verification (its column grants allow nothing else).';

-- Invitations: owners and admins see their organizations'' (never the token hash).
DROP POLICY IF EXISTS invitation_app_select ON orgkeeper.invitation;
CREATE POLICY invitation_app_select ON orgkeeper.invitation FOR SELECT TO orgkeeper_app
    USING (org_id IN (SELECT orgkeeper.rls_admin_org_ids()));
COMMENT ON POLICY invitation_app_select ON orgkeeper.invitation IS 'Owners and admins see their organizations'' invitations; they are created, revoked and accepted through functions.';

CREATE OR REPLACE FUNCTION orgkeeper.refuse_row_of_another_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_user uuid := orgkeeper.current_app_user();
BEGIN
    IF NEW.user_id IS DISTINCT FROM v_user AND NOT orgkeeper.caller_is_trusted() THEN
        RAISE EXCEPTION 'user % cannot write a % row that belongs to user %', coalesce(v_user::text, '(none: orgkeeper.user_id is not set)'),
                TG_TABLE_NAME, coalesce(NEW.user_id::text, 'nobody')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('rows of %s belong to their user: write your own (user_id = orgkeeper.user_id); owners and admins may delete the rows of members they manage; nothing was changed', TG_TABLE_NAME);
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION orgkeeper.refuse_row_of_another_user() IS
  'Trigger on the user-owned tables (custom_secrets, api_keys, gitlab_webhook, slack_users, user_repos): refuses (42501, with a hint) an insert, or a change of user_id, by an untrusted session of a row whose user_id is not orgkeeper.user_id, before the row-security policies would refuse it without one.';

-- Related tables: the rows of one's organizations. (Rows with org_id NULL —
-- legacy, not yet migrated, or detached from a deleted organization — are
-- visible to no application user.) Three kinds:
--
-- * shared by the organization, read and written by its members:
--   slack_conversation, conversation_metadata_saas;
-- * financial records, read-only for the application (written by the
--   billing path: the daemon and DBAs): stripe_customers, billing_sessions;
-- * owned by a user (user_id): written only by that user; owners and admins
--   may delete the rows of members they manage (same or weaker rank); who
--   else may read them is decided per table, below.
DO $related$
DECLARE
    v_table  text;
    v_policy text;
    v_reader text;
    v_why    text;
BEGIN
    -- Start from no application policy on these tables.
    FOR v_table, v_policy IN
        SELECT p.tablename, p.policyname FROM pg_policies p
         WHERE p.schemaname = 'orgkeeper' AND p.policyname LIKE p.tablename || '\_app%'
           AND p.tablename IN ('stripe_customers', 'slack_users', 'slack_conversation', 'api_keys', 'custom_secrets',
                               'billing_sessions', 'user_repos', 'gitlab_webhook', 'conversation_metadata_saas')
    LOOP
        EXECUTE format('DROP POLICY %I ON orgkeeper.%I', v_policy, v_table);
    END LOOP;

    FOREACH v_table IN ARRAY ARRAY['slack_conversation', 'conversation_metadata_saas'] LOOP
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I FOR ALL TO orgkeeper_app '
                       'USING (org_id IN (SELECT orgkeeper.rls_member_org_ids())) '
                       'WITH CHECK (org_id IN (SELECT orgkeeper.rls_member_org_ids()))', v_table || '_app', v_table);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_app', v_table,
                       'Shared by the organization: its members read and write the rows of their organizations only; a row cannot be moved into another organization.');
    END LOOP;

    FOREACH v_table IN ARRAY ARRAY['stripe_customers', 'billing_sessions'] LOOP
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I FOR SELECT TO orgkeeper_app '
                       'USING (org_id IN (SELECT orgkeeper.rls_member_org_ids()))', v_table || '_app_select', v_table);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_app_select', v_table,
                       'Financial records: members read their organizations'' rows; only the billing path (the daemon, DBAs) writes them.');
    END LOOP;

    FOR v_table, v_reader, v_why IN
        SELECT * FROM (VALUES
            ('custom_secrets', 'managed', 'Secrets (ciphertext) are read by their user, and by the owners and admins who manage that user (same or weaker rank), since they may delete them; never by other members.'),
            ('api_keys',       'managed', 'API keys (hashes, names, expiry) are read by their user and by the owners and admins who manage that user, who may revoke them; never by other members.'),
            ('gitlab_webhook', 'managed', 'GitLab webhooks (their secret is ciphertext) are read by the user who installed them and by the owners and admins who manage that user; never by other members.'),
            ('user_repos',     'managed', 'A user''s repository access is read by that user and by the owners and admins who manage them; never by other members.'),
            ('slack_users',    'org',     'Slack identity links are read by every member of the organization (they map Slack users to members); each is written by its own user only.')
        ) AS t (name, reader, why)
    LOOP
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I FOR SELECT TO orgkeeper_app USING (%s)',
                       v_table || '_app_select', v_table,
                       CASE v_reader
                           WHEN 'org' THEN 'org_id IN (SELECT orgkeeper.rls_member_org_ids())'
                           ELSE 'org_id IN (SELECT orgkeeper.rls_member_org_ids()) AND (user_id = (SELECT orgkeeper.current_app_user()) '
                                'OR (org_id, user_id) IN (SELECT m.org_id, m.user_id FROM orgkeeper.rls_managed_members() m))'
                       END);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_app_select', v_table, v_why);
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I FOR INSERT TO orgkeeper_app '
                       'WITH CHECK (user_id = (SELECT orgkeeper.current_app_user()) AND org_id IN (SELECT orgkeeper.rls_member_org_ids()))',
                       v_table || '_app_insert', v_table);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_app_insert', v_table,
                       'A user creates rows of their own only (user_id = orgkeeper.user_id), in organizations they are an active member of.');
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I FOR UPDATE TO orgkeeper_app '
                       'USING (user_id = (SELECT orgkeeper.current_app_user()) AND org_id IN (SELECT orgkeeper.rls_member_org_ids())) '
                       'WITH CHECK (user_id = (SELECT orgkeeper.current_app_user()) AND org_id IN (SELECT orgkeeper.rls_member_org_ids()))',
                       v_table || '_app_update', v_table);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_app_update', v_table,
                       'A user changes their own rows only, and cannot hand them to someone else or to an organization they are not an active member of.');
        EXECUTE format('CREATE POLICY %I ON orgkeeper.%I FOR DELETE TO orgkeeper_app '
                       'USING (org_id IN (SELECT orgkeeper.rls_member_org_ids()) AND (user_id = (SELECT orgkeeper.current_app_user()) '
                       'OR (org_id, user_id) IN (SELECT m.org_id, m.user_id FROM orgkeeper.rls_managed_members() m)))',
                       v_table || '_app_delete', v_table);
        EXECUTE format('COMMENT ON POLICY %I ON orgkeeper.%I IS %L', v_table || '_app_delete', v_table,
                       'A user deletes their own rows; owners and admins also those of the members they manage (same or weaker rank).');
        -- The policies refuse rows of someone else; the trigger says so first, with a hint.
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON orgkeeper.%I', v_table || '_owned_by_writer', v_table);
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE OF user_id ON orgkeeper.%I '
                       'FOR EACH ROW EXECUTE FUNCTION orgkeeper.refuse_row_of_another_user()',
                       v_table || '_owned_by_writer', v_table);
    END LOOP;
END
$related$;

-- No application policy (so no application access, whatever is granted):
-- org_creation_policy (which emails and domains may create organizations: the
-- application must not learn it), deployment_setting, pending_external_actions,
-- user_settings, conversation_metadata, org_deleted (tombstones are for
-- operators: the application never reads them, not even of organizations its
-- user deleted).

------------------------------------------------------------------------------
-- privileges
------------------------------------------------------------------------------
-- Start from nothing, then grant deliberately.
REVOKE ALL ON ALL TABLES IN SCHEMA orgkeeper FROM PUBLIC, orgkeeper_app, orgkeeper_daemon, orgkeeper_identity, orgkeeper_definer;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA orgkeeper FROM PUBLIC, orgkeeper_app, orgkeeper_daemon, orgkeeper_identity, orgkeeper_definer;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA orgkeeper FROM PUBLIC, orgkeeper_app, orgkeeper_daemon, orgkeeper_identity, orgkeeper_definer;
GRANT USAGE ON SCHEMA orgkeeper TO orgkeeper_app, orgkeeper_daemon, orgkeeper_dba, orgkeeper_identity, orgkeeper_definer;

-- The application ----------------------------------------------------------
GRANT SELECT ON orgkeeper.role, orgkeeper.settings_version TO orgkeeper_app;
-- Key ciphertext (the org and org_member columns orgkeeper.secret_columns()
-- lists) is not the application's to read: a member
-- reads their own key through orgkeeper.my_llm_api_key(org_id), owners and
-- admins the organization's keys through orgkeeper.org_secrets(actor,
-- org_id) (secrets.sql). Nor is org.provisioning_error (the proxy's words):
-- owners and admins read it through orgkeeper.org_provisioning_error(actor,
-- org_id). Every other column is granted, including columns added later
-- (this runs on every `orgkeeper migrate`).
DO $columns$
DECLARE
    v_table text;
    v_cols  text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['org', 'org_member'] LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
          FROM pg_attribute a
         WHERE a.attrelid = format('orgkeeper.%I', v_table)::regclass AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT 1 FROM orgkeeper.secret_columns() c
                            WHERE c.table_name = v_table AND c.column_name = a.attname)
           AND (v_table, a.attname) <> ('org', 'provisioning_error');
        EXECUTE format('GRANT SELECT (%s) ON orgkeeper.%I TO orgkeeper_app', v_cols, v_table);
    END LOOP;
END
$columns$;
-- Settings the application owns; keys, billing, provisioning and identity
-- columns are written by the daemon and the functions only.
GRANT INSERT (id, name, kind, created_by, contact_name, contact_email, conversation_expiration, agent, max_iterations,
              security_analyzer, confirmation_mode, llm_model, llm_base_url, enable_default_condenser,
              enable_proactive_conversation_starters, sandbox_base_container_image, sandbox_runtime_container_image,
              mcp_config, enable_solvability_analysis, condenser_max_size)
    ON orgkeeper.org TO orgkeeper_app;
GRANT UPDATE (name, contact_name, contact_email, conversation_expiration, agent, max_iterations,
              security_analyzer, confirmation_mode, llm_model, llm_base_url, enable_default_condenser,
              enable_proactive_conversation_starters, sandbox_base_container_image, sandbox_runtime_container_image,
              mcp_config, enable_solvability_analysis, condenser_max_size)
    ON orgkeeper.org TO orgkeeper_app;
GRANT SELECT ON orgkeeper.users TO orgkeeper_app;
GRANT INSERT (id, email, current_org_id, accepted_tos, enable_sound_notifications, language, user_consents_to_analytics)
    ON orgkeeper.users TO orgkeeper_app;
GRANT UPDATE (email, current_org_id, accepted_tos, enable_sound_notifications, language, user_consents_to_analytics)
    ON orgkeeper.users TO orgkeeper_app;
GRANT SELECT (id, org_id, email, role_id, invited_by, created_at, expires_at, accepted_at, accepted_by, revoked_at)
    ON orgkeeper.invitation TO orgkeeper_app;
-- Financial records: read only (the billing path — the daemon, DBAs —
-- writes Stripe customers and billing sessions).
GRANT SELECT ON orgkeeper.stripe_customers, orgkeeper.billing_sessions TO orgkeeper_app;
-- The organization's and its users' own data. Identity columns (id) are the
-- database's to choose: they are not granted, so neither an explicit id nor
-- OVERRIDING SYSTEM VALUE is accepted from the application (pre-claimed ids
-- would make other tenants' inserts fail), and no sequence is granted (an
-- identity column's default needs none).
DO $writable$
DECLARE
    v_table text;
    v_cols  text;
BEGIN
    FOREACH v_table IN ARRAY ARRAY['slack_users', 'slack_conversation', 'api_keys', 'custom_secrets',
                                   'user_repos', 'gitlab_webhook', 'conversation_metadata_saas'] LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO v_cols
          FROM pg_attribute a
         WHERE a.attrelid = format('orgkeeper.%I', v_table)::regclass AND a.attnum > 0 AND NOT a.attisdropped
           AND a.attidentity = '' AND a.attgenerated = '';
        EXECUTE format('GRANT SELECT, DELETE, INSERT (%1$s), UPDATE (%1$s) ON orgkeeper.%2$I TO orgkeeper_app', v_cols, v_table);
    END LOOP;
END
$writable$;

GRANT EXECUTE ON FUNCTION
    orgkeeper.create_org(text, uuid, text),
    orgkeeper.create_personal_org(uuid),
    orgkeeper.role_id(text),
    orgkeeper.current_app_user(),
    orgkeeper.rls_member_org_ids(),
    orgkeeper.rls_admin_org_ids(),
    orgkeeper.rls_co_member_ids(),
    orgkeeper.rls_org_has_no_members(uuid),
    orgkeeper.rls_managed_members(),
    orgkeeper.rename_org(uuid, uuid, text),
    orgkeeper.delete_org(uuid, uuid),
    orgkeeper.transfer_ownership(uuid, uuid, uuid, text),
    orgkeeper.add_member(uuid, uuid, uuid, text),
    orgkeeper.change_member_role(uuid, uuid, uuid, text),
    orgkeeper.remove_member(uuid, uuid, uuid),
    orgkeeper.leave_org(uuid, uuid),
    orgkeeper.accept_membership(uuid, uuid),
    orgkeeper.decline_membership(uuid, uuid),
    orgkeeper.list_orgs(uuid),
    orgkeeper.list_members(uuid, uuid),
    orgkeeper.create_invitation(uuid, uuid, text, text, interval),
    orgkeeper.list_invitations(uuid, uuid),
    orgkeeper.revoke_invitation(uuid, text),
    orgkeeper.revoke_invitation_by_id(uuid, bigint),
    orgkeeper.accept_invitation(uuid, text),
    orgkeeper.my_llm_api_key(uuid),
    orgkeeper.org_provisioning_error(uuid, uuid),
    orgkeeper.org_secrets(uuid, uuid)
    TO orgkeeper_app;

-- The identity-provider sync -------------------------------------------------
-- Records users and their emails, and whether the provider verified them.
GRANT SELECT (id, email, email_verified), INSERT (id, email, email_verified), UPDATE (email, email_verified)
    ON orgkeeper.users TO orgkeeper_identity;

-- The daemon ---------------------------------------------------------------
-- Reads everything and writes results back; deletes nothing.
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA orgkeeper TO orgkeeper_daemon;
REVOKE INSERT, UPDATE ON orgkeeper.role, orgkeeper.settings_version, orgkeeper.rls_exempt, orgkeeper.sql_library, orgkeeper.schema_history,
                         orgkeeper.org_creation_policy, orgkeeper.invitation, orgkeeper.deployment_setting FROM orgkeeper_daemon;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA orgkeeper TO orgkeeper_daemon;
-- ... except its own waiting mark (orgkeeper.daemon_busy).
GRANT DELETE ON orgkeeper.daemon_waiting TO orgkeeper_daemon;
-- The daemon may execute:
--  * every function whose COMMENT starts with "Daemon:" (claim, record,
--    sweep, read_secret, ...). This file runs last in the library, so a
--    "Daemon:" function added to any sql/*.sql file is granted by the next
--    `orgkeeper migrate` without being listed here;
--  * the helpers below, which the daemon's functions (running as the daemon,
--    they are not SECURITY DEFINER) or its handlers call. This list is the
--    one place that names them: a "Daemon:" function that calls another
--    orgkeeper function needs it to be "Daemon:" too or to be listed here.
--    tests/it/row_security.rs checks that every orgkeeper function a "Daemon:"
--    function calls is executable by the daemon.
DO $daemon$
DECLARE
    v_helpers CONSTANT text[] := ARRAY[
        'enqueue_action',    -- handlers enqueue follow-up actions
        'role_id',           -- resolves role names (the catalog is no secret)
        'error_entry',       -- retry_actions_later / begin_compensation / finish_action
        'current_app_user',  -- the acting user of a session (NULL for the daemon)
        'secret_column',     -- secrets_after / swap_secrets / secret_inventory / read_secret /
                             -- replace_secrets (their refusal of a column that is not a secret)
        'refuse_row_key',    -- read_secret / replace_secrets
        'lock_action_org',   -- the one-action write-backs that lock the org row first (record_provisioning_failed, ...)
        'lock_actions_orgs', -- the batched write-backs (record_orgs_provisioned, record_teams_ready, record_member_keys, record_reencrypted_many)
        'default_llm_model', -- provisioning_context: the model path of a settings version
        'wakeup_lock_key',   -- inserts_settled: the wake-up handshake's lock
        'release_org_rows'   -- record_org_deleted (SECURITY DEFINER, so it runs as orgkeeper_definer;
                             -- listed for the check in tests/it/row_security.rs; the daemon role deletes nothing)
    ];
    v_fn      regprocedure;
    v_missing text;
BEGIN
    SELECT string_agg(h, ', ') INTO v_missing
      FROM unnest(v_helpers) AS h
     WHERE NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'orgkeeper'::regnamespace AND p.proname = h);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'rls.sql: daemon helper function(s) % do not exist', v_missing
            USING HINT = 'update the helper list in sql/rls.sql when renaming or removing a function';
    END IF;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'orgkeeper'::regnamespace
           AND (obj_description(p.oid, 'pg_proc') LIKE 'Daemon:%' OR p.proname = ANY (v_helpers))
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO orgkeeper_daemon', v_fn);
    END LOOP;
END
$daemon$;

-- DBAs ---------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orgkeeper TO orgkeeper_dba;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA orgkeeper TO orgkeeper_dba;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA orgkeeper TO orgkeeper_dba;

-- The SECURITY DEFINER functions ---------------------------------------------
-- They run as orgkeeper_definer, not as whoever ran `orgkeeper migrate`
-- (a superuser in the README's flow): a bug or an injection in one of them
-- gets the table privileges below and the service policy, never superuser
-- powers, BYPASSRLS, or ownership of the tables (no DDL, no disabling row
-- security). The one exception: refresh_growing_statistics runs ANALYZE,
-- which PostgreSQL 15 allows only to a table's owner; it is executable by
-- DBAs only.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orgkeeper TO orgkeeper_definer;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA orgkeeper TO orgkeeper_definer;
DO $definer$
DECLARE
    v_fn regprocedure;
BEGIN
    IF NOT pg_has_role(current_user, 'orgkeeper_definer', 'MEMBER') THEN
        RAISE EXCEPTION 'role % cannot hand orgkeeper''s SECURITY DEFINER functions to orgkeeper_definer', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('run orgkeeper migrate as a superuser, or first: GRANT orgkeeper_definer TO %I;', current_user);
    END IF;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'orgkeeper'::regnamespace AND p.prosecdef
           AND p.proname <> 'refresh_growing_statistics'
           AND p.proowner <> 'orgkeeper_definer'::regrole
    LOOP
        EXECUTE format('ALTER FUNCTION %s OWNER TO orgkeeper_definer', v_fn);
    END LOOP;
END
$definer$;
