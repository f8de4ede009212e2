-- policy.sql — who may create an organization (orgkeeper.org_creation_policy, V12).
--
-- * The policy is data: allowed owner emails and email domains, each with
--   who added it and when. Empty = everyone may create team organizations.
-- * The org insert trigger orgkeeper.org_admit (ownership.sql) calls
--   check_creation_policy for team organizations, and for personal ones when
--   deployment setting policy_applies_to_personal_orgs is on, whoever
--   inserts (the policy is about the owner, so trusted roles creating an
--   organization on a user's behalf are subject to it too).
-- * The creator's email counts only when verified (users.email_verified,
--   written by the identity-provider sync): anyone can type an address.
-- * A refusal names the creator's email domain and who can grant access,
--   never which emails or domains are allowed. The application can neither
--   read nor write the table (row security without an application policy,
--   nothing granted; sql/rls.sql).

-- SQL-standard body: bound at CREATE and inlined into its callers.
CREATE OR REPLACE FUNCTION orgkeeper.policy_applies_to_personal_orgs() RETURNS boolean
LANGUAGE sql STABLE
RETURN orgkeeper.get_deployment_setting('policy_applies_to_personal_orgs', 'off') = 'on';
COMMENT ON FUNCTION orgkeeper.policy_applies_to_personal_orgs() IS
  'True when deployment setting policy_applies_to_personal_orgs is on (ORGKEEPER_POLICY_PERSONAL_ORGS=on at the last orgkeeper migrate that set it, or a DBA''s UPDATE): the org-creation policy then also withholds personal organizations (signup, create_personal_org, user migration) from users it does not allow. Off when never set.';

CREATE OR REPLACE FUNCTION orgkeeper.email_domain(p_email text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT nullif(substring(lower(btrim(p_email)) FROM '@([^@]*)$'), '');
$$;
COMMENT ON FUNCTION orgkeeper.email_domain(text) IS
  'The lower-cased domain of an email address (the part after its last @); NULL when there is none.';

-- plpgsql: planned once per session, not at every org insert.
CREATE OR REPLACE FUNCTION orgkeeper.creation_policy_allows(p_email text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    RETURN NOT EXISTS (SELECT 1 FROM orgkeeper.org_creation_policy)
        OR EXISTS (SELECT 1 FROM orgkeeper.org_creation_policy p
                    WHERE (p.kind = 'email' AND p.value = lower(btrim(p_email)))
                       OR (p.kind = 'domain' AND p.value = orgkeeper.email_domain(p_email)));
END;
$$;
COMMENT ON FUNCTION orgkeeper.creation_policy_allows(text) IS
  'Internal: true when the org-creation policy is empty, or allows this (verified) email address — listed itself, or its domain listed. NULL allows nothing unless the policy is empty.';

CREATE OR REPLACE FUNCTION orgkeeper.check_creation_policy(p_user uuid, p_kind text, p_org_name text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_email  text;
    v_what   text := CASE p_kind WHEN 'personal' THEN 'a personal organization' ELSE format('organization "%s"', p_org_name) END;
BEGIN
    -- An empty policy (the default) allows everyone: no user lookup.
    IF NOT EXISTS (SELECT 1 FROM orgkeeper.org_creation_policy) THEN
        RETURN;
    END IF;
    SELECT u.email INTO v_email FROM orgkeeper.users u WHERE u.id = p_user AND u.email_verified;
    IF orgkeeper.creation_policy_allows(v_email) THEN
        RETURN;
    END IF;
    IF orgkeeper.email_domain(v_email) IS NULL THEN
        RAISE EXCEPTION 'user % may not create %: organization creation is restricted to allowed email addresses and domains, and the user has no verified email address', p_user, v_what
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'verify the email address with the identity provider; if it is still refused, an operator or DBA of this deployment can grant access (orgkeeper policy allow-email or allow-domain); nothing was changed';
    END IF;
    RAISE EXCEPTION 'user % may not create %: the email domain "%" is not allowed to create organizations', p_user, v_what, orgkeeper.email_domain(v_email)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'an operator or DBA of this deployment can grant access to the address or its domain (orgkeeper policy allow-email or allow-domain); nothing was changed';
END;
$$;
COMMENT ON FUNCTION orgkeeper.check_creation_policy(uuid, text, text) IS
  'Internal (org insert trigger orgkeeper.org_admit): raises 42501 unless the org-creation policy allows the user''s verified email. The message names the user''s email domain (or says there is no verified email) and that an operator or DBA grants access; it never says which emails or domains are allowed.';

CREATE OR REPLACE FUNCTION orgkeeper.policy_allow(kind text, value text, added_by text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_kind  text := lower(btrim($1));
    v_value text := lower(btrim($2));
    v_by    text := nullif(btrim($3), '');
    v_added integer;
BEGIN
    IF v_kind IS NULL OR v_kind NOT IN ('email', 'domain') THEN
        RAISE EXCEPTION 'policy_allow: kind must be ''email'' or ''domain'', not %', coalesce(quote_literal($1), 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'nothing was changed';
    END IF;
    IF v_value IS NULL OR v_value = ''
       OR (v_kind = 'email' AND v_value !~ '^[^@\s]+@[^@\s]+$')
       OR (v_kind = 'domain' AND v_value !~ '^[^@\s]+$') THEN
        RAISE EXCEPTION 'policy_allow: % is not an % %', coalesce(quote_literal($2), 'NULL'),
                CASE v_kind WHEN 'email' THEN 'email' ELSE 'email domain' END,
                CASE v_kind WHEN 'email' THEN 'address (name@domain)' ELSE '(example.com, without @)' END
            USING ERRCODE = 'invalid_parameter_value', HINT = 'nothing was changed';
    END IF;
    IF v_by IS NULL THEN
        RAISE EXCEPTION 'policy_allow: say who adds % %', v_kind, v_value
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass a note such as your name or ticket as added_by; nothing was changed';
    END IF;
    INSERT INTO orgkeeper.org_creation_policy (kind, value, added_by)
    VALUES (v_kind, v_value, v_by)
    ON CONFLICT ON CONSTRAINT org_creation_policy_pkey DO NOTHING;
    GET DIAGNOSTICS v_added = ROW_COUNT;
    RETURN v_added > 0;
END;
$$;
COMMENT ON FUNCTION orgkeeper.policy_allow(text, text, text) IS
  'DBAs: allows an owner email (kind email) or every verified address of a domain (kind domain) to create organizations; trimmed and lower-cased. Returns false when it was already allowed (its added_by is kept). Note: the first entry turns the policy on — from then on only listed emails and domains may create team organizations. Refuses a bad kind or value (22023) and a missing added_by (22004).';

CREATE OR REPLACE FUNCTION orgkeeper.policy_remove(kind text, value text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_removed integer;
BEGIN
    DELETE FROM orgkeeper.org_creation_policy p
     WHERE p.kind = lower(btrim($1)) AND p.value = lower(btrim($2));
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed > 0;
END;
$$;
COMMENT ON FUNCTION orgkeeper.policy_remove(text, text) IS
  'DBAs: removes an allowed email (kind email) or domain (kind domain) from the org-creation policy; returns false when it was not there. Removing the last entry lets everyone create team organizations again. An entry still in ORGKEEPER_ALLOWED_OWNER_EMAILS / ORGKEEPER_ALLOWED_DOMAINS comes back at the next orgkeeper migrate.';
