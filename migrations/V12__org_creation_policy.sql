-- V12: who may create an organization, as data.
--
-- orgkeeper.org_creation_policy lists the owner emails and the email domains
-- allowed to create team organizations (empty = everyone may), as Agenta's
-- allow-lists of owner emails and domains do. The org insert trigger
-- orgkeeper.org_admit (sql/ownership.sql) checks the creator's **verified**
-- email (users.email_verified) against it, so the policy holds for
-- applications that INSERT directly. Whether personal organizations are
-- withheld too is the deployment setting policy_applies_to_personal_orgs
-- (on | off, default off).
--
-- It replaces orgkeeper.org_creator_allowlist (V4), a list of user ids. Its
-- rows are carried over as the users' emails (the email must still be
-- verified when the user creates an organization). A listed user without any
-- email cannot be carried over: the user is named in a NOTICE and loses the
-- permission. If no listed user has an email the migration fails rather than
-- silently letting everyone create team organizations (an empty policy means
-- everyone): record the emails (or empty the old list), then migrate again.

CREATE TABLE orgkeeper.org_creation_policy (
    kind     text        NOT NULL CONSTRAINT org_creation_policy_kind CHECK (kind IN ('email', 'domain')),
    value    text        NOT NULL,
    added_by text        NOT NULL CONSTRAINT org_creation_policy_added_by_given CHECK (btrim(added_by) <> ''),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value),
    -- Stored as compared: trimmed and lower-cased.
    CONSTRAINT org_creation_policy_normalised CHECK (value = lower(btrim(value)) AND value <> ''),
    CONSTRAINT org_creation_policy_email_format CHECK (kind <> 'email' OR value ~ '^[^@\s]+@[^@\s]+$'),
    CONSTRAINT org_creation_policy_domain_format CHECK (kind <> 'domain' OR value ~ '^[^@\s]+$')
);
COMMENT ON TABLE orgkeeper.org_creation_policy IS
  'Who may create team organizations: allowed owner emails (kind email) and email domains (kind domain, matched exactly against the part after the @). Empty = everyone may. Checked by the org insert trigger (orgkeeper.org_admit) against the creator''s verified email (users.email_verified); personal organizations too when deployment setting policy_applies_to_personal_orgs is on. Managed with `orgkeeper policy allow-email|allow-domain|remove|list` (or orgkeeper.policy_allow / policy_remove), seeded by `orgkeeper migrate` from ORGKEEPER_ALLOWED_OWNER_EMAILS / ORGKEEPER_ALLOWED_DOMAINS. Not readable by the application.';
COMMENT ON COLUMN orgkeeper.org_creation_policy.kind IS 'email: one allowed owner address; domain: every verified address at that domain.';
COMMENT ON COLUMN orgkeeper.org_creation_policy.value IS 'The address or domain, trimmed and lower-cased.';
COMMENT ON COLUMN orgkeeper.org_creation_policy.added_by IS 'Who added it: "orgkeeper migrate (ORGKEEPER_ALLOWED_DOMAINS)", "orgkeeper policy (<role>)", a DBA''s note.';
COMMENT ON COLUMN orgkeeper.org_creation_policy.added_at IS 'When it was added.';

-- Not the application's business (it must not learn who is allowed): row
-- security with no application policy (sql/rls.sql gives the daemon, DBAs
-- and the SECURITY DEFINER functions their service policy) and no grant.
ALTER TABLE orgkeeper.org_creation_policy ENABLE ROW LEVEL SECURITY;

-- The personal-organization switch is a deployment setting.
ALTER TABLE orgkeeper.deployment_setting
    ADD CONSTRAINT deployment_setting_policy_personal_on_off
        CHECK (name <> 'policy_applies_to_personal_orgs' OR value IN ('on', 'off'));
COMMENT ON TABLE orgkeeper.deployment_setting IS
  'Deployment-wide switches that the database itself acts on (in triggers of application transactions), one row per setting. Written by `orgkeeper migrate` from the environment when the variable is set (ORGKEEPER_BILLING -> billing, ORGKEEPER_POLICY_PERSONAL_ORGS -> policy_applies_to_personal_orgs), or by a DBA; a missing row means the setting''s default. Known settings: billing (on | off, default off: a new team organization enqueues stripe.create_customer); policy_applies_to_personal_orgs (on | off, default off: the org-creation policy also withholds personal organizations). Read with orgkeeper.get_deployment_setting(name).';

-- The old allow-list of user ids, carried over as emails.
DO $carry$
DECLARE
    v_listed   integer;
    v_carried  integer;
    v_lost     text;
BEGIN
    SELECT count(*) INTO v_listed FROM orgkeeper.org_creator_allowlist;
    IF v_listed = 0 THEN
        RETURN;
    END IF;
    INSERT INTO orgkeeper.org_creation_policy (kind, value, added_by, added_at)
    SELECT DISTINCT ON (lower(btrim(u.email))) 'email', lower(btrim(u.email)),
           format('V12 migration from org_creator_allowlist (user %s%s)', a.user_id,
                  CASE WHEN a.note IS NOT NULL THEN ': ' || a.note ELSE '' END),
           a.added_at
      FROM orgkeeper.org_creator_allowlist a
      JOIN orgkeeper.users u ON u.id = a.user_id
     WHERE lower(btrim(u.email)) ~ '^[^@\s]+@[^@\s]+$'
     ORDER BY lower(btrim(u.email)), a.added_at
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_carried = ROW_COUNT;
    SELECT string_agg(a.user_id::text, ', ' ORDER BY a.user_id) INTO v_lost
      FROM orgkeeper.org_creator_allowlist a
      LEFT JOIN orgkeeper.users u ON u.id = a.user_id
     WHERE u.email IS NULL OR lower(btrim(u.email)) !~ '^[^@\s]+@[^@\s]+$';
    IF v_carried = 0 THEN
        RAISE EXCEPTION 'V12: orgkeeper.org_creator_allowlist lists % user(s) and none has an email to carry over (%); dropping it would let everyone create team organizations', v_listed, v_lost
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'record those users'' emails in orgkeeper.users, or DELETE FROM orgkeeper.org_creator_allowlist to allow everyone, then run orgkeeper migrate again';
    END IF;
    IF v_lost IS NOT NULL THEN
        RAISE NOTICE 'V12: users without an email lose the permission to create team organizations: %', v_lost;
    END IF;
END
$carry$;

DROP TABLE orgkeeper.org_creator_allowlist;
