-- V8: tenant boundaries against a hostile application user.
--
-- The application role (orgkeeper_app) is the trust boundary: whatever a
-- session granted it can do after SET LOCAL orgkeeper.user_id = '<uuid>' is
-- what a malicious user can do. This migration adds what the policies and
-- functions of sql/ (re-applied by `orgkeeper migrate`) need:
--
-- * org.membership_version: every membership change writes its
--   organization's row, so concurrent membership changes of one organization
--   conflict at every isolation level (sql/ownership.sql).
-- * orgkeeper_identity: the identity-provider sync, the only non-trusted role
--   that may mark an email verified (sql/invitations.sql, sql/rls.sql).
-- * orgkeeper_definer: owner of the SECURITY DEFINER functions, neither
--   superuser nor BYPASSRLS (sql/rls.sql).

------------------------------------------------------------------------------
-- roles
------------------------------------------------------------------------------
-- Cluster-global, created only when missing; a concurrent migration of
-- another database may win the race (see V5).
DO $roles$
DECLARE
    v_role record;
BEGIN
    FOR v_role IN
        SELECT * FROM (VALUES
            ('orgkeeper_identity', 'NOLOGIN NOSUPERUSER NOBYPASSRLS',
             'orgkeeper: the identity-provider sync. Records users'' emails and whether the provider verified them (users.email, users.email_verified); nothing else. Grant it to the sync''s login role.'),
            ('orgkeeper_definer', 'NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE',
             'orgkeeper: owns the SECURITY DEFINER functions (sql/rls.sql), so that they run with table privileges and a row-security policy of their own, never as a superuser. Nobody logs in as it or is granted it.')
        ) AS r (name, attributes, comment)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = v_role.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', v_role.name, v_role.attributes);
                EXECUTE format('COMMENT ON ROLE %I IS %L', v_role.name, v_role.comment);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL; -- created by a concurrent migration of another database
                WHEN insufficient_privilege THEN
                    RAISE EXCEPTION 'cannot create database role %: %', v_role.name, SQLERRM
                        USING ERRCODE = 'insufficient_privilege',
                              HINT = format('run the migration as a superuser, or have one run first: CREATE ROLE %s %s;', v_role.name, v_role.attributes);
            END;
        END IF;
    END LOOP;
END
$roles$;

------------------------------------------------------------------------------
-- columns
------------------------------------------------------------------------------
ALTER TABLE orgkeeper.org ADD COLUMN membership_version bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN orgkeeper.org.membership_version IS
  'Bumped by every change of the organization''s memberships (trigger org_member_bumps_version), so that two transactions changing them conflict on this row: at REPEATABLE READ and SERIALIZABLE the second fails with 40001, at READ COMMITTED it waits and then sees the first.';

ALTER TABLE orgkeeper.users ALTER COLUMN email_verified SET DEFAULT false;
COMMENT ON COLUMN orgkeeper.users.email_verified IS
  'True only when the identity provider verified users.email: set by orgkeeper_identity (the sync) or a trusted role; any other change of email resets it to false. Invitations match verified emails only, and only a verified email is sent to LiteLLM.';
