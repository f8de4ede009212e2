-- V5: access control — the database roles, the register of tables exempt from
-- row-level security, and default privileges.
--
-- The policies, grants and SECURITY DEFINER settings themselves live in
-- sql/rls.sql (re-applied by `orgkeeper migrate` with the function library),
-- next to the functions they protect.

------------------------------------------------------------------------------
-- roles
------------------------------------------------------------------------------
-- Roles are cluster-global while this migration runs once per database, so
-- they are created only when missing. Several databases of one cluster may
-- be migrated at the same moment (tests do exactly that): a concurrent
-- creator wins and the loser's duplicate error is ignored.
DO $roles$
DECLARE
    v_role record;
BEGIN
    FOR v_role IN
        SELECT * FROM (VALUES
            ('orgkeeper_app',    'NOLOGIN NOBYPASSRLS',
             'orgkeeper: the application. Row-level security confines it to the organizations of the user named by SET LOCAL orgkeeper.user_id; membership changes go through orgkeeper''s SECURITY DEFINER functions. Grant it to the application''s login role.'),
            ('orgkeeper_daemon', 'NOLOGIN BYPASSRLS',
             'orgkeeper: the outbox daemon (orgkeeper listen). Sees every organization. Grant it to the daemon''s login role; row security is bypassed through policies for its members, and through BYPASSRLS after SET ROLE orgkeeper_daemon.'),
            ('orgkeeper_dba',    'NOLOGIN BYPASSRLS',
             'orgkeeper: database administrators running migration and maintenance functions in psql. Sees and may change every row. Grant it to the DBAs'' login roles.')
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

    -- The application role must never bypass row security, whatever a
    -- previous installation in this cluster left behind.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                WHERE rolname = 'orgkeeper_app' AND (rolbypassrls OR rolsuper)) THEN
        ALTER ROLE orgkeeper_app NOSUPERUSER NOBYPASSRLS;
    END IF;
END
$roles$;

------------------------------------------------------------------------------
-- tables
------------------------------------------------------------------------------
CREATE TABLE orgkeeper.rls_exempt (
    table_name text PRIMARY KEY,
    reason     text NOT NULL CONSTRAINT rls_exempt_reason_given CHECK (char_length(btrim(reason)) >= 20)
);
COMMENT ON TABLE orgkeeper.rls_exempt IS
  'The one list of tables in schema orgkeeper that have no row-level security, each with the reason. Every other table must have RLS enabled; tests/row_security.rs checks it. Rows are maintained in sql/rls.sql.';
COMMENT ON COLUMN orgkeeper.rls_exempt.table_name IS 'Table name within schema orgkeeper.';
COMMENT ON COLUMN orgkeeper.rls_exempt.reason IS 'Why the table holds nothing tenant-specific (or is never granted to the application).';

------------------------------------------------------------------------------
-- indexes
------------------------------------------------------------------------------
-- At most one open (neither accepted nor revoked) invitation per address and
-- organization: inviting again replaces the open one instead of piling up
-- valid tokens, and two concurrent invitations cannot both stay open.
CREATE UNIQUE INDEX invitation_one_open_per_email
    ON orgkeeper.invitation (org_id, lower(btrim(email)))
    WHERE accepted_at IS NULL AND revoked_at IS NULL;

------------------------------------------------------------------------------
-- default privileges
------------------------------------------------------------------------------
-- Functions created later by the migrating role are not executable by
-- PUBLIC; sql/rls.sql grants EXECUTE deliberately, function by function.
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
-- DBAs keep full access to what later migrations add.
ALTER DEFAULT PRIVILEGES IN SCHEMA orgkeeper GRANT EXECUTE ON FUNCTIONS TO orgkeeper_dba;
ALTER DEFAULT PRIVILEGES IN SCHEMA orgkeeper GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO orgkeeper_dba;
ALTER DEFAULT PRIVILEGES IN SCHEMA orgkeeper GRANT USAGE, SELECT ON SEQUENCES TO orgkeeper_dba;
