-- ownership.sql — the organization invariants.
--
-- * The role catalog's system rows cannot change.
-- * Organization names are trimmed, 1..255 characters, unique case-insensitively.
-- * Personal organizations have id = created_by, one per user.
-- * Inserting an organization makes its creator the owner and enqueues its
--   LiteLLM provisioning, in the inserting transaction.
-- * A deferred constraint trigger fails the COMMIT of any transaction that
--   leaves an organization without an active owner.

------------------------------------------------------------------------------
-- role catalog
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.protect_system_roles() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- System rows: frozen.
    IF TG_OP <> 'INSERT' AND OLD.is_system THEN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'role "%" is a system role and cannot be deleted', OLD.name
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF NEW.name IS DISTINCT FROM OLD.name OR NEW.rank IS DISTINCT FROM OLD.rank
           OR NEW.is_system IS DISTINCT FROM OLD.is_system OR NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'role "%" is a system role and cannot be renamed, re-ranked or unprotected', OLD.name
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    -- Custom rows, inserted or updated: never system, never at or above the owner.
    IF NEW.is_system THEN
        RAISE EXCEPTION 'role "%" cannot be % a system role', NEW.name,
                        CASE TG_OP WHEN 'INSERT' THEN 'added as' ELSE 'made' END
            USING ERRCODE = 'restrict_violation',
                  HINT = 'system roles (owner, admin, member) ship with orgkeeper; custom roles have is_system = false';
    END IF;
    IF NEW.rank <= (SELECT r.rank FROM orgkeeper.role r WHERE r.name = 'owner') THEN
        RAISE EXCEPTION 'role "%" cannot outrank the owner role (rank % <= owner rank)', NEW.name, NEW.rank
            USING ERRCODE = 'check_violation',
                  HINT = 'lower rank = more authority; a custom role needs a rank greater than the owner''s';
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION orgkeeper.protect_system_roles() IS
  'Trigger: refuses to rename, re-rank, unprotect or delete system roles (owner, admin, member), and refuses custom roles — inserted or updated — that are marked system or would outrank or equal the owner.';

DROP TRIGGER IF EXISTS role_protect_system ON orgkeeper.role;
CREATE TRIGGER role_protect_system
    BEFORE INSERT OR UPDATE OR DELETE ON orgkeeper.role
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.protect_system_roles();

CREATE OR REPLACE FUNCTION orgkeeper.role_id(p_name text) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_id integer;
BEGIN
    SELECT id INTO v_id FROM orgkeeper.role WHERE name = lower(btrim(p_name));
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'role "%" does not exist', p_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'roles: ' || (SELECT string_agg(name, ', ' ORDER BY rank) FROM orgkeeper.role);
    END IF;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.role_id(text) IS
  'Resolves a role by name (case-insensitive); raises 22023 naming the known roles when it does not exist. Roles are never referenced by hard-coded id.';

------------------------------------------------------------------------------
-- organization rows: names and kinds
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.org_before_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_clash text;
BEGIN
    IF NEW.name IS NULL THEN
        RAISE EXCEPTION 'organization % needs a name', NEW.id
            USING ERRCODE = 'not_null_violation';
    END IF;
    -- Whitespace: space, tab, LF, CR, form feed and vertical tab. PostgreSQL
    -- has no \v escape (E'\v' is the letter v), so the vertical tab is \x0B;
    -- the same set is in the CHECK org_name_trimmed_nonempty (V1).
    NEW.name := btrim(NEW.name, E' \t\n\r\f\x0B');
    IF NEW.name = '' THEN
        RAISE EXCEPTION 'organization % needs a name that is not empty or blank', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF char_length(NEW.name) > 255 THEN
        RAISE EXCEPTION 'organization name "%..." is % characters long; the limit is 255', left(NEW.name, 40), char_length(NEW.name)
            USING ERRCODE = 'check_violation';
    END IF;

    IF TG_OP = 'INSERT' AND NEW.org_version IS NULL THEN
        NEW.org_version := orgkeeper.current_settings_version();
    END IF;

    IF TG_OP = 'INSERT' THEN
        -- The org id is the LiteLLM team id: a tenant that could choose it
        -- could adopt or delete a team that is not its own.
        IF NEW.id IS NULL THEN
            NEW.id := CASE WHEN NEW.kind = 'personal' THEN NEW.created_by ELSE gen_random_uuid() END;
        ELSIF NOT orgkeeper.caller_is_schema_trusted() THEN
            RAISE EXCEPTION 'an application cannot choose an organization''s id; omit id (organization "%")', NEW.name
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'insert without id: the database chooses it (a personal organization''s id is its creator''s); read it back with RETURNING id';
        END IF;
    END IF;

    IF TG_OP = 'UPDATE' THEN
        IF NEW.id <> OLD.id OR NEW.kind <> OLD.kind OR NEW.created_by <> OLD.created_by THEN
            RAISE EXCEPTION 'organization "%": id, kind and created_by cannot change', OLD.name
                USING ERRCODE = 'restrict_violation',
                      HINT = 'to hand the organization to someone else use orgkeeper.transfer_ownership()';
        END IF;
        NEW.updated_at := now();
        IF NEW.name = OLD.name THEN
            RETURN NEW;
        END IF;
    END IF;

    SELECT name INTO v_clash FROM orgkeeper.org WHERE lower(name) = lower(NEW.name) AND id <> NEW.id;
    IF FOUND THEN
        RAISE EXCEPTION 'an organization named "%" already exists', v_clash
            USING ERRCODE = 'unique_violation',
                  HINT = 'organization names are compared case-insensitively, ignoring surrounding spaces; choose another name';
    END IF;

    IF TG_OP = 'INSERT' AND NEW.kind = 'personal' THEN
        IF NEW.id <> NEW.created_by THEN
            RAISE EXCEPTION 'personal organization "%" must have id = created_by (% <> %)', NEW.name, NEW.id, NEW.created_by
                USING ERRCODE = 'check_violation',
                      HINT = 'use orgkeeper.create_personal_org(user_id), or insert with id set to the user''s id';
        END IF;
        SELECT name INTO v_clash FROM orgkeeper.org WHERE kind = 'personal' AND created_by = NEW.created_by;
        IF FOUND THEN
            RAISE EXCEPTION 'user % already has a personal organization "%"', NEW.created_by, v_clash
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_before_write() IS
  'Trigger: starts a new organization at the current settings version unless given one, chooses its id (random; a personal org''s is its creator''s) and refuses one named by an untrusted caller (42501), trims and validates organization names (23502/23514), refuses case-insensitive duplicates (23505), enforces personal org rules, keeps id/kind/created_by immutable. Runs after orgkeeper.org_admit (creator exists, org-creation policy, reserved names).';

-- Who may create (an existing user the org-creation policy allows), and
-- which names nobody may take, is decided before
-- anything about existing names is (org_before_write): a refused creator
-- learns nothing from a name clash. Triggers of one event fire in name order,
-- and org_admit sorts before org_before_write.
CREATE OR REPLACE FUNCTION orgkeeper.org_admit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_name text := lower(btrim(NEW.name, E' \t\n\r\f\x0B'));
BEGIN
    IF TG_OP = 'INSERT' AND NEW.created_by IS NOT NULL THEN
        -- The application creates organizations for its own user only (the
        -- org_app_insert policy says so too, but only after these checks):
        -- asked about anyone else, the checks below would tell whether that
        -- user exists and whether their email domain may create.
        IF NEW.created_by IS DISTINCT FROM orgkeeper.current_app_user()
           AND NOT orgkeeper.caller_is_schema_trusted() THEN
            RAISE EXCEPTION 'organization "%" cannot be created for user %: the application creates organizations for its own user only (orgkeeper.user_id is %)',
                    NEW.name, NEW.created_by, coalesce(orgkeeper.current_app_user()::text, 'not set')
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'set created_by to the session''s user (SET LOCAL orgkeeper.user_id = ''<uuid>'' at the start of the transaction)';
        END IF;
        -- The creator becomes the owner: a user the database knows, not one
        -- invented here without an email.
        IF NOT EXISTS (SELECT 1 FROM orgkeeper.users u WHERE u.id = NEW.created_by) THEN
            RAISE EXCEPTION 'user % does not exist: insert the users row first (cannot create organization "%")', NEW.created_by, NEW.name
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'INSERT INTO orgkeeper.users (id, email) VALUES (...) first (the identity-provider sync records verified emails), then create the organization; nothing was changed';
        END IF;
        IF NEW.kind = 'team' OR orgkeeper.policy_applies_to_personal_orgs() THEN
            PERFORM orgkeeper.check_creation_policy(NEW.created_by, NEW.kind, NEW.name);
        END IF;
    END IF;
    IF v_name ~ '^user_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}_org$'
       AND NOT (NEW.kind = 'personal' AND v_name = orgkeeper.personal_org_name(NEW.created_by)) THEN
        RAISE EXCEPTION 'organization name "%" is reserved for the personal organization of user %', NEW.name, substr(v_name, 6, 36)
            USING ERRCODE = 'check_violation',
                  HINT = 'names of the form user_<id>_org belong to personal organizations; choose another name';
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_admit() IS
  'Trigger, before org_before_write looks at existing names: refuses (42501) an application inserting an organization for a user other than orgkeeper.user_id; refuses a creator without a users row (23503 "user <id> does not exist: insert the users row first"); applies the org-creation policy (orgkeeper.check_creation_policy, 42501) to team organizations, and to personal ones when deployment setting policy_applies_to_personal_orgs is on — for every caller, trusted ones included; keeps the personal-organization names user_<id>_org for the personal organization of that user (23514), so nobody can squat them.';

DROP TRIGGER IF EXISTS org_admit ON orgkeeper.org;
CREATE TRIGGER org_admit
    BEFORE INSERT OR UPDATE OF name ON orgkeeper.org
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.org_admit();

-- llm_base_url decides where members' LiteLLM keys are sent: the
-- application may change it for an owner only (admins change the other
-- settings). Trusted roles (the daemon's write-back, DBAs) may.
CREATE OR REPLACE FUNCTION orgkeeper.org_llm_base_url_owner_only() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor uuid := orgkeeper.current_app_user();
    v_m     record;
BEGIN
    IF NEW.llm_base_url IS NOT DISTINCT FROM OLD.llm_base_url OR orgkeeper.caller_is_trusted() THEN
        RETURN NEW;
    END IF;
    SELECT * INTO v_m FROM orgkeeper.membership(NEW.id, v_actor);
    IF v_m.role_name IS DISTINCT FROM 'owner' OR v_m.status IS DISTINCT FROM 'active' THEN
        RAISE EXCEPTION 'user % (role %) cannot change llm_base_url of organization "%": only its owners can, since it decides where members'' keys are sent',
                v_actor, coalesce(v_m.role_name, 'none'), OLD.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s"; nothing was changed', OLD.name);
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_llm_base_url_owner_only() IS
  'Trigger: refuses (42501) a change of org.llm_base_url unless orgkeeper.user_id is an active owner of the organization or the caller is trusted (orgkeeper.caller_is_trusted: the daemon''s write-back, DBAs).';

DROP TRIGGER IF EXISTS org_llm_base_url_owner_only ON orgkeeper.org;
CREATE TRIGGER org_llm_base_url_owner_only
    BEFORE UPDATE OF llm_base_url ON orgkeeper.org
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.org_llm_base_url_owner_only();

DROP TRIGGER IF EXISTS org_before_write ON orgkeeper.org;
CREATE TRIGGER org_before_write
    BEFORE INSERT OR UPDATE ON orgkeeper.org
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.org_before_write();

------------------------------------------------------------------------------
-- ownership on insert
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.org_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
    VALUES (NEW.id, NEW.created_by, orgkeeper.role_id('owner'), 'active');
    UPDATE orgkeeper.users SET current_org_id = NEW.id, updated_at = now()
     WHERE id = NEW.created_by AND current_org_id IS NULL;
    -- User migration (sql/migration.sql) provisions the personal orgs it
    -- creates through litellm.migrate_user, which creates the team with the
    -- user's remaining credits; it sets the transaction-local setting
    -- orgkeeper.skip_provision = 'on' around its INSERT (and resets it), so
    -- that no second, conflicting team is created here. Any session can set
    -- a custom setting, so it is honoured only for trusted callers (those
    -- that may run the migration); for the application it is ignored.
    IF NOT orgkeeper.provisioning_skipped() THEN
        PERFORM orgkeeper.enqueue_action('litellm.provision_org', NEW.id, NEW.created_by, '{}'::jsonb);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_after_insert() IS
  'Trigger: gives a new organization its owner (created_by, role resolved by name), makes it the owner''s current org if they had none, and enqueues litellm.provision_org unless orgkeeper.provisioning_skipped() (user migration provisions its personal orgs through litellm.migrate_user).';

CREATE OR REPLACE FUNCTION orgkeeper.provisioning_skipped() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    IF coalesce(current_setting('orgkeeper.skip_provision', true), '') <> 'on' THEN
        RETURN false;
    END IF;
    RETURN orgkeeper.caller_is_schema_trusted();
END;
$$;
-- plpgsql rather than SQL: caller_is_trusted is defined later in the library
-- (members.sql), and a SQL function body is checked when it is created.
CREATE OR REPLACE FUNCTION orgkeeper.caller_is_schema_trusted() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    -- orgkeeper.caller_is_trusted (members.sql), or the owner of the schema's
    -- tables (the role that runs `orgkeeper migrate`).
    RETURN orgkeeper.caller_is_trusted()
        OR pg_has_role(orgkeeper.caller_role(),
                       (SELECT c.relowner FROM pg_class c WHERE c.oid = 'orgkeeper.org'::regclass), 'MEMBER');
END;
$$;
COMMENT ON FUNCTION orgkeeper.caller_is_schema_trusted() IS
  'Internal: true for callers that may do what the design reserves for trusted code (choose an org id, skip provisioning): orgkeeper.caller_is_trusted(), or a member of the role owning the schema''s tables. Never true for the application role.';

COMMENT ON FUNCTION orgkeeper.provisioning_skipped() IS
  'Internal: true when the transaction-local setting orgkeeper.skip_provision is ''on'' (set by user migration around its INSERT of personal orgs) and the session''s role is trusted (orgkeeper.caller_is_trusted(), or a member of the tables'' owner). The setting is ignored for the application role, so it cannot skip the provisioning of its organizations.';

DROP TRIGGER IF EXISTS org_after_insert ON orgkeeper.org;
CREATE TRIGGER org_after_insert
    AFTER INSERT ON orgkeeper.org
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.org_after_insert();

------------------------------------------------------------------------------
-- the owner invariant, checked at COMMIT
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.assert_org_has_owner(p_org_id uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_name text;
BEGIN
    -- The row lock serialises concurrent checks of one org, so two
    -- transactions cannot each demote "the other" owner.
    SELECT name INTO v_name FROM orgkeeper.org WHERE id = p_org_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN; -- the organization itself is gone
    END IF;
    IF NOT EXISTS (
        SELECT 1
          FROM orgkeeper.org_member m
          JOIN orgkeeper.role r ON r.id = m.role_id
         WHERE m.org_id = p_org_id AND m.status = 'active' AND r.name = 'owner'
    ) THEN
        RAISE EXCEPTION 'organization "%" (%) would be left without an active owner', v_name, p_org_id
            USING ERRCODE = 'check_violation',
                  HINT = 'make another member owner in the same transaction (orgkeeper.transfer_ownership), or delete the organization';
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.assert_org_has_owner(uuid) IS
  'Raises 23514 naming the organization when it exists and has no active owner member.';

CREATE OR REPLACE FUNCTION orgkeeper.check_owner_at_commit() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM orgkeeper.assert_org_has_owner(OLD.org_id);
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.check_owner_at_commit() IS
  'Deferred constraint trigger on org_member: at COMMIT, every organization whose memberships changed must still have an active owner (an inserted one gets its owner from org_after_insert in the same statement).';

-- No check is queued for an inserted organization: org_after_insert gives
-- it an active owner in the inserting statement (or the statement fails),
-- and whatever later removes or demotes that owner fires
-- org_member_keeps_owner (deleting the organization takes its members
-- with it). The check runs only when a membership changed.
DROP TRIGGER IF EXISTS org_has_owner ON orgkeeper.org;

DROP TRIGGER IF EXISTS org_member_keeps_owner ON orgkeeper.org_member;
CREATE CONSTRAINT TRIGGER org_member_keeps_owner
    AFTER UPDATE OF org_id, role_id, status OR DELETE ON orgkeeper.org_member
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.check_owner_at_commit();

-- The COMMIT-time check reads memberships with the transaction's snapshot,
-- which at REPEATABLE READ is older than a concurrent transaction's commit:
-- two owners could each leave, or each demote "the other", and both pass.
-- Locking the org row does not help there (a lock is no update, so it raises
-- no serialization failure). Writing it does: every membership change
-- updates its organization's row, so of two transactions changing one
-- organization's memberships the second fails with 40001 at REPEATABLE READ
-- and SERIALIZABLE, and waits for the first (then sees it) at READ COMMITTED.
CREATE OR REPLACE FUNCTION orgkeeper.bump_membership_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_orgs uuid[];
    v_org  uuid;
BEGIN
    -- The membership's organization; a moved membership's two, in key
    -- order, so that two opposite moves lock them in the same order.
    v_orgs := CASE
        WHEN TG_OP = 'INSERT' THEN ARRAY[NEW.org_id]
        WHEN TG_OP = 'DELETE' OR NEW.org_id = OLD.org_id THEN ARRAY[OLD.org_id]
        ELSE ARRAY[least(OLD.org_id, NEW.org_id), greatest(OLD.org_id, NEW.org_id)]
    END;
    -- One key per statement, never "id IN (OLD.org_id, NEW.org_id)": with
    -- two keys, while org is small (a young deployment, or before its first
    -- ANALYZE), the cheapest plan is a sequential scan, and a session that
    -- cached that plan kept scanning the whole table at every membership
    -- change as it grew. With one key the primary key wins at any size.
    -- An org row this transaction already wrote needs no second write: that
    -- write is the conflict. Two cases are recognised by the row's xmin,
    -- which nobody can forge: the top-level transaction wrote it (an org
    -- inserted in this transaction with its creator's membership, or one it
    -- already bumped), or the subtransaction that wrote this membership did
    -- (the same, inside an exception block or a savepoint, as
    -- migrate_users inserts its personal orgs): xmin equals the membership
    -- row's own. An org row written in another of this transaction's
    -- subtransactions is bumped as before. The membership's lookup is an
    -- InitPlan, run lazily at its first reference, i.e. only when the
    -- first test did not already reject the row (speed only: either order
    -- gives the same answer).
    FOREACH v_org IN ARRAY v_orgs LOOP
        UPDATE orgkeeper.org o SET membership_version = o.membership_version + 1
         WHERE o.id = v_org AND o.xmin <> pg_current_xact_id()::xid
           AND o.xmin <> coalesce((SELECT m.xmin FROM orgkeeper.org_member m
                                    WHERE m.org_id = NEW.org_id AND m.user_id = NEW.user_id),
                                  pg_current_xact_id()::xid);
    END LOOP;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.bump_membership_version() IS
  'Trigger: every insert, delete or change of org_id, user_id, role_id or status of a membership bumps org.membership_version of its organization (a moved membership: both, in key order, by primary key), so concurrent membership changes of one organization conflict on the org row (40001 at REPEATABLE READ / SERIALIZABLE, serialised at READ COMMITTED) and the owner check at COMMIT cannot be outrun.';

DROP TRIGGER IF EXISTS org_member_bumps_version ON orgkeeper.org_member;
CREATE TRIGGER org_member_bumps_version
    AFTER INSERT OR DELETE OR UPDATE OF org_id, user_id, role_id, status ON orgkeeper.org_member
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.bump_membership_version();

------------------------------------------------------------------------------
-- creation functions
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.create_org(name text, owner uuid, kind text DEFAULT 'team') RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    IF owner IS NULL THEN
        RAISE EXCEPTION 'organization "%" needs an owner (owner is NULL)', name
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF kind IS NULL OR kind NOT IN ('team', 'personal') THEN
        RAISE EXCEPTION 'organization kind must be ''team'' or ''personal'', not %', coalesce(quote_literal(kind), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO orgkeeper.org (name, kind, created_by)
    VALUES (name, kind, owner)
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.create_org(text, uuid, text) IS
  'Creates an organization owned by owner (personal: id = owner). Same rules as a direct INSERT: the owner membership and the LiteLLM provisioning action are written in this transaction. Returns the org id.';

-- Until V8 personal organizations were named after the user's email, and a
-- clash told whether an email had an account.
DROP FUNCTION IF EXISTS orgkeeper.personal_org_name(uuid, text);
CREATE OR REPLACE FUNCTION orgkeeper.personal_org_name(p_user_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'user_' || p_user_id::text || '_org';
$$;
COMMENT ON FUNCTION orgkeeper.personal_org_name(uuid) IS
  'The name of a user''s personal organization: user_<id>_org (as OpenHands names them). It says nothing about the user''s email, and orgkeeper.org_admit reserves it for that user, so it never clashes.';

-- SECURITY DEFINER like the management functions. Row security does not
-- apply inside, so check_actor enforces what the org_app_insert policy does:
-- the application creates its own user's personal org only.
CREATE OR REPLACE FUNCTION orgkeeper.create_personal_org(user_id uuid) RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp
AS $$
DECLARE
    v_email text;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'create_personal_org needs a user id (got NULL)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM orgkeeper.check_actor(user_id, 'create_personal_org');
    -- A legacy user's first login migrates them (as OpenHands does): the
    -- migration creates the personal org with their settings, credits and keys.
    IF EXISTS (SELECT 1 FROM orgkeeper.user_settings s
                WHERE s.user_id = create_personal_org.user_id AND s.already_migrated = false) THEN
        PERFORM orgkeeper.migrate_user(user_id);
        RETURN user_id;
    END IF;
    SELECT u.email INTO v_email FROM orgkeeper.users u WHERE u.id = create_personal_org.user_id;
    INSERT INTO orgkeeper.org (name, kind, created_by, contact_email)
    VALUES (orgkeeper.personal_org_name(user_id), 'personal', user_id, v_email);
    RETURN user_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.create_personal_org(uuid) IS
  'Creates the user''s personal organization (id = user id, named user_<id>_org); for a legacy user not yet migrated (user_settings.already_migrated = false) it runs orgkeeper.migrate_user instead, which creates it with their settings — the application''s way to migrate a user at first login. Refuses a second one (23505), and (42501) an application session creating one for a user other than orgkeeper.user_id. Returns the org id.';
