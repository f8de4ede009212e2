-- V10: deployment settings the database must see, and billing customers for
-- new team organizations.
--
-- Some switches of a deployment decide what happens inside an application's
-- own transaction (an INSERT into orgkeeper.org fires the triggers), where no
-- environment variable can reach. They live in orgkeeper.deployment_setting:
-- one row per setting, written by `orgkeeper migrate` from the environment
-- (ORGKEEPER_BILLING → billing) or by a DBA, read by the library's triggers
-- through orgkeeper.get_deployment_setting(name). A missing row means the
-- documented default of that setting.
--
-- To add a setting: pick a lower-case name, add a CHECK constraint for its
-- values below (in a new migration), read it with get_deployment_setting,
-- and, if operators set it from the environment, add it to
-- DeploymentSettingsArgs in src/config.rs.

CREATE TABLE orgkeeper.deployment_setting (
    name   text        PRIMARY KEY
                       CONSTRAINT deployment_setting_name_format CHECK (name ~ '^[a-z][a-z0-9_.]{0,62}$'),
    value  text        NOT NULL,
    set_by text,
    set_at timestamptz NOT NULL DEFAULT now(),
    -- One constraint per known setting; unknown names are accepted (a newer
    -- binary may know them).
    CONSTRAINT deployment_setting_billing_on_off CHECK (name <> 'billing' OR value IN ('on', 'off'))
);
COMMENT ON TABLE orgkeeper.deployment_setting IS
  'Deployment-wide switches that the database itself acts on (in triggers of application transactions), one row per setting. Written by `orgkeeper migrate` from the environment when the variable is set (ORGKEEPER_BILLING -> billing), or by a DBA; a missing row means the setting''s default. Known settings: billing (on | off, default off: a new team organization enqueues stripe.create_customer). Read with orgkeeper.get_deployment_setting(name).';
COMMENT ON COLUMN orgkeeper.deployment_setting.name IS 'The setting, lower case (e.g. billing).';
COMMENT ON COLUMN orgkeeper.deployment_setting.value IS 'Its value as text; each known setting has a CHECK constraint on its values.';
COMMENT ON COLUMN orgkeeper.deployment_setting.set_by IS 'Who set it last: "orgkeeper migrate (ORGKEEPER_BILLING)", or a DBA''s note.';
COMMENT ON COLUMN orgkeeper.deployment_setting.set_at IS 'When the value last changed.';

-- No tenant data, but not the application's business either: row security
-- with no application policy (sql/rls.sql gives the daemon and DBAs their
-- service policy), and nothing granted to the application. The triggers
-- that read it are SECURITY DEFINER.
ALTER TABLE orgkeeper.deployment_setting ENABLE ROW LEVEL SECURITY;

-- stripe_customers keeps no unique constraint on (org_id, stripe_customer_id):
-- legacy data may hold duplicate rows, which user migration moves as they
-- are. The billing write-back (orgkeeper.record_billing_customer) inserts a
-- pair only when absent, under the lock of the organization's row, which
-- serialises every writer of one organization's customers.
COMMENT ON TABLE orgkeeper.stripe_customers IS
  'Stripe customer of a user (legacy) or of an organization. A new team organization''s customer is created by the daemon (stripe.create_customer, when deployment setting billing is on) and recorded here with user_id = its creator.';
