-- members.sql — organization management: rename, delete, transfer ownership,
-- add / change / remove members, leave, and the listings behind the CLI.
--
-- Every function here takes the acting user explicitly and enforces the
-- rules whoever calls it:
--
-- * The actor is the session's user. When the application has set
--   orgkeeper.user_id (SET LOCAL orgkeeper.user_id = '…'), the actor must be
--   that user; callers restricted by row security (the application role) must
--   set it. Trusted callers (DBAs, the daemon, superusers) may act for anyone.
-- * Rank (role.rank, lower = more authority): only owners and admins manage an
--   organization; nobody grants a role that outranks their own; nobody
--   changes or removes a member who outranks them; the last active owner
--   cannot leave, be removed or be demoted (the deferred trigger in
--   ownership.sql also fails such a COMMIT; these functions refuse early).
-- * Refusals raise a message naming the organization, user and role, a
--   fitting SQLSTATE and a HINT: 22004 NULL argument, 22023 invalid value,
--   42501 not allowed, P0002 unknown organization / membership, 23505 already
--   a member, 23514 last owner / last or personal organization.
--
-- The functions are SECURITY DEFINER (they see past row-level security to
-- check the rules) with a pinned search_path; sql/rls.sql grants EXECUTE.

------------------------------------------------------------------------------
-- the acting user
------------------------------------------------------------------------------
-- No EXCEPTION block (each call would start a subtransaction): the text is
-- checked against the forms uuid_in accepts (32 hex digits in groups of
-- four, a hyphen allowed between groups but not after the last; optionally
-- in braces) before the cast.
CREATE OR REPLACE FUNCTION orgkeeper.current_app_user() RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_setting text := nullif(btrim(current_setting('orgkeeper.user_id', true)), '');
BEGIN
    IF v_setting IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_setting !~* '^(\{[0-9a-f]{4}(-?[0-9a-f]{4}){7}\}|[0-9a-f]{4}(-?[0-9a-f]{4}){7})$' THEN
        RAISE EXCEPTION 'orgkeeper.user_id is set to %, which is not a UUID', quote_literal(v_setting)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'set it to the acting user''s id: SET LOCAL orgkeeper.user_id = ''<uuid>''';
    END IF;
    RETURN v_setting::uuid;
END;
$$;
COMMENT ON FUNCTION orgkeeper.current_app_user() IS
  'The user the application acts for in this transaction: the custom setting orgkeeper.user_id as a UUID (any spelling PostgreSQL reads as one: hyphens, braces, upper case; surrounding spaces ignored), NULL when unset, empty or blank. Row-level security policies and the management functions read it. Raises 22023 when it is not a UUID.';

-- A SQL-standard body: parsed once, at CREATE, with its references bound
-- then (no search_path at call time can redirect them), and inlined into
-- its callers: no SET clause, no planning per call. Inside a SECURITY
-- DEFINER function current_user is the owner, but the "role" setting still
-- holds what the session chose with SET ROLE.
CREATE OR REPLACE FUNCTION orgkeeper.caller_role() RETURNS name
LANGUAGE sql STABLE
RETURN CASE WHEN current_setting('role') IN ('none', '') THEN session_user
            ELSE current_setting('role')::name END;
COMMENT ON FUNCTION orgkeeper.caller_role() IS
  'The role the session acts as (SET ROLE, else the login role), even inside SECURITY DEFINER functions.';

-- plpgsql rather than SQL: a SQL function with a SET clause is never
-- inlined and is planned again at every call, while plpgsql keeps its plan
-- for the session; the role is resolved once (in a WHERE clause a
-- non-inlined function is called once per pg_roles row). On the org insert
-- path this is ~10x cheaper.
CREATE OR REPLACE FUNCTION orgkeeper.caller_is_trusted() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_role name := orgkeeper.caller_role();
BEGIN
    RETURN coalesce((
        SELECT r.rolsuper OR r.rolbypassrls
               OR pg_has_role(r.oid, 'orgkeeper_dba', 'MEMBER')
               OR pg_has_role(r.oid, 'orgkeeper_daemon', 'MEMBER')
          FROM pg_roles r WHERE r.rolname = v_role), false);
END;
$$;
COMMENT ON FUNCTION orgkeeper.caller_is_trusted() IS
  'True when the session''s role is not confined by row security: a superuser, a BYPASSRLS role, or a member of orgkeeper_dba or orgkeeper_daemon. Such callers may act for any user.';

CREATE OR REPLACE FUNCTION orgkeeper.check_actor(p_actor uuid, p_function text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_session uuid := orgkeeper.current_app_user();
BEGIN
    IF p_actor IS NULL THEN
        RAISE EXCEPTION '%: the acting user is NULL', p_function
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'pass the id of the user on whose behalf the change is made';
    END IF;
    IF v_session IS NOT NULL THEN
        IF v_session <> p_actor THEN
            RAISE EXCEPTION '%: user % cannot act as user % (orgkeeper.user_id is %)', p_function, v_session, p_actor, v_session
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'pass the session''s own user id as the actor; acting for another user is refused';
        END IF;
        RETURN;
    END IF;
    IF NOT orgkeeper.caller_is_trusted() THEN
        RAISE EXCEPTION '%: role % must name its user in orgkeeper.user_id before acting as user %', p_function, orgkeeper.caller_role(), p_actor
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('start the transaction with: SET LOCAL orgkeeper.user_id = %L', p_actor);
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.check_actor(uuid, text) IS
  'Refuses a NULL actor (22004), an actor other than orgkeeper.user_id when it is set (42501, no impersonation), and callers confined by row security that did not set orgkeeper.user_id (42501).';

CREATE OR REPLACE FUNCTION orgkeeper.refuse_null(p_function text, p_argument text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: % is NULL', p_function, p_argument
        USING ERRCODE = 'null_value_not_allowed',
              HINT = format('pass a value for %s; nothing was changed', p_argument);
END;
$$;
COMMENT ON FUNCTION orgkeeper.refuse_null(text, text) IS
  'Raises 22004 naming the function and its NULL argument.';

------------------------------------------------------------------------------
-- organizations, memberships and ranks
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.find_org(p_org_id uuid) RETURNS orgkeeper.org
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org orgkeeper.org;
BEGIN
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = p_org_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', p_org_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'check the id; orgkeeper.list_orgs(actor) lists the organizations a user belongs to';
    END IF;
    -- Deletion in the open (deletion.sql): a deprovisioning organization
    -- still exists (its name and id stay taken) but nothing may act on it.
    -- Only the id is named: the caller may not be a member.
    IF v_org.provisioning_status = 'deprovisioning' THEN
        RAISE EXCEPTION 'organization % is being deleted', p_org_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'its deletion was asked for and is being carried out; nothing can change it any more';
    END IF;
    RETURN v_org;
END;
$$;
COMMENT ON FUNCTION orgkeeper.find_org(uuid) IS
  'Returns the organization row; raises P0002 when it does not exist and 55000 ("organization … is being deleted") when it is deprovisioning. Every management function reads its organization through this (or lock_org).';

CREATE OR REPLACE FUNCTION orgkeeper.lock_org(p_org_id uuid) RETURNS orgkeeper.org
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    -- The same lock as the owner check at COMMIT: membership changes of one
    -- organization run one at a time, so the early rank and last-owner
    -- checks see what the COMMIT will see.
    PERFORM 1 FROM orgkeeper.org o WHERE o.id = p_org_id FOR NO KEY UPDATE;
    RETURN orgkeeper.find_org(p_org_id);
END;
$$;
COMMENT ON FUNCTION orgkeeper.lock_org(uuid) IS
  'Returns the organization row locked against concurrent membership changes; raises P0002 when it does not exist.';

CREATE OR REPLACE FUNCTION orgkeeper.membership(p_org_id uuid, p_user_id uuid,
    OUT role_name text, OUT role_rank integer, OUT status text)
LANGUAGE sql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT r.name, r.rank, m.status
      FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
     WHERE m.org_id = p_org_id AND m.user_id = p_user_id;
$$;
COMMENT ON FUNCTION orgkeeper.membership(uuid, uuid) IS
  'The role name, rank and status of a user in an organization; all NULL when not a member.';

CREATE OR REPLACE FUNCTION orgkeeper.role_by_name(p_name text) RETURNS orgkeeper.role
LANGUAGE sql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT * FROM orgkeeper.role r WHERE r.id = orgkeeper.role_id(p_name);
$$;
COMMENT ON FUNCTION orgkeeper.role_by_name(text) IS
  'The role row for a name (case-insensitive); raises 22023 listing the roles when it does not exist.';

CREATE OR REPLACE FUNCTION orgkeeper.manager_rank() RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT r.rank FROM orgkeeper.role r WHERE r.name = 'admin';
$$;
COMMENT ON FUNCTION orgkeeper.manager_rank() IS
  'The weakest rank that may manage an organization (the admin role''s, resolved by name): owners, admins and custom roles ranked between them.';

CREATE OR REPLACE FUNCTION orgkeeper.require_member(p_actor uuid, p_org orgkeeper.org, p_doing text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_m record;
BEGIN
    SELECT * INTO v_m FROM orgkeeper.membership(p_org.id, p_actor);
    IF v_m.status IS NULL THEN
        -- A non-member learns neither the name nor anything else about it.
        RAISE EXCEPTION 'user % is not a member of organization %, so cannot %', p_actor, p_org.id, p_doing
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only members of an organization can do this; ask one of its owners or admins to add you';
    ELSIF v_m.status <> 'active' THEN
        RAISE EXCEPTION 'user %''s membership in organization "%" is %, so they cannot %', p_actor, p_org.name, v_m.status, p_doing
            USING ERRCODE = 'insufficient_privilege',
                  HINT = CASE v_m.status
                      WHEN 'invited' THEN format('accept it first: SELECT orgkeeper.accept_membership(%L, %L)', p_actor, p_org.id)
                      ELSE format('ask an owner or admin of "%s" to re-activate the membership', p_org.name) END;
    END IF;
    RETURN v_m.role_rank;
END;
$$;
COMMENT ON FUNCTION orgkeeper.require_member(uuid, orgkeeper.org, text) IS
  'Returns the actor''s rank in the organization; raises 42501 when the actor is not an active member.';

CREATE OR REPLACE FUNCTION orgkeeper.require_manager(p_actor uuid, p_org orgkeeper.org, p_doing text) RETURNS integer
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_rank integer := orgkeeper.require_member(p_actor, p_org, p_doing);
BEGIN
    IF v_rank > orgkeeper.manager_rank() THEN
        RAISE EXCEPTION 'user % has role % in organization "%"; only owners and admins can %',
                p_actor, (SELECT m.role_name FROM orgkeeper.membership(p_org.id, p_actor) m), p_org.name, p_doing
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner or admin of "%s" to do it', p_org.name);
    END IF;
    RETURN v_rank;
END;
$$;
COMMENT ON FUNCTION orgkeeper.require_manager(uuid, orgkeeper.org, text) IS
  'Returns the actor''s rank; raises 42501 unless the actor is an active owner or admin of the organization.';

CREATE OR REPLACE FUNCTION orgkeeper.require_grantable(p_actor uuid, p_actor_rank integer, p_org orgkeeper.org, p_role orgkeeper.role)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    IF p_role.rank < p_actor_rank THEN
        RAISE EXCEPTION 'user % (role %) cannot grant role % in organization "%": it outranks their own',
                p_actor, (SELECT m.role_name FROM orgkeeper.membership(p_org.id, p_actor) m), p_role.name, p_org.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('grant a role at or below your own, or ask an owner of "%s"', p_org.name);
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.require_grantable(uuid, integer, orgkeeper.org, orgkeeper.role) IS
  'Raises 42501 when the role outranks (is stronger than) the actor''s own rank: nobody grants more authority than they have.';

CREATE OR REPLACE FUNCTION orgkeeper.active_owner_count(p_org_id uuid) RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT count(*)::integer
      FROM orgkeeper.org_member m JOIN orgkeeper.role r ON r.id = m.role_id
     WHERE m.org_id = p_org_id AND m.status = 'active' AND r.name = 'owner';
$$;
COMMENT ON FUNCTION orgkeeper.active_owner_count(uuid) IS
  'Number of active owners of an organization.';

CREATE OR REPLACE FUNCTION orgkeeper.refuse_last_owner(p_org orgkeeper.org, p_user_id uuid, p_doing text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_m record;
BEGIN
    SELECT * INTO v_m FROM orgkeeper.membership(p_org.id, p_user_id);
    IF v_m.role_name = 'owner' AND v_m.status = 'active' AND orgkeeper.active_owner_count(p_org.id) <= 1 THEN
        RAISE EXCEPTION 'user % is the last owner of organization "%" and cannot %', p_user_id, p_org.name, p_doing
            USING ERRCODE = 'check_violation',
                  HINT = 'transfer ownership first (orgkeeper.transfer_ownership), or delete the organization (orgkeeper.delete_org)';
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.refuse_last_owner(orgkeeper.org, uuid, text) IS
  'Raises 23514 when the user is the organization''s only active owner (the early, clear form of the COMMIT-time owner check).';

------------------------------------------------------------------------------
-- every active member has their own LiteLLM key
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.org_member_key_lifecycle() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_was_active boolean := TG_OP <> 'INSERT' AND OLD.status = 'active';
    v_is_active  boolean := TG_OP <> 'DELETE' AND NEW.status = 'active';
    v_moved      boolean := TG_OP = 'UPDATE' AND (NEW.org_id, NEW.user_id) IS DISTINCT FROM (OLD.org_id, OLD.user_id);
    v_org        orgkeeper.org;
BEGIN
    IF v_was_active AND (NOT v_is_active OR v_moved) THEN
        -- Gone with its organization: deleting the team deletes every key.
        SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = OLD.org_id;
        -- ... and with an organization being deleted (the team's deletion
        -- covers them too).
        IF FOUND AND v_org.provisioning_status <> 'deprovisioning' THEN
            PERFORM orgkeeper.enqueue_action('litellm.remove_member', OLD.org_id, OLD.user_id,
                jsonb_build_object('user_id', OLD.user_id, 'team_id', coalesce(v_org.litellm_team_id, v_org.id::text)));
        END IF;
        IF TG_OP = 'UPDATE' THEN
            NEW.llm_api_key := NULL;
        END IF;
    END IF;
    IF v_is_active AND (NOT v_was_active OR v_moved) THEN
        SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = NEW.org_id;
        -- The creator of an organization still being provisioned gets their
        -- key from litellm.provision_org (or, for a migrated user, keeps theirs).
        IF NOT (NEW.user_id = v_org.created_by AND v_org.provisioning_status = 'pending')
           AND v_org.provisioning_status <> 'deprovisioning' THEN
            PERFORM orgkeeper.enqueue_action('litellm.add_member', NEW.org_id, NEW.user_id,
                jsonb_build_object('user_id', NEW.user_id, 'team_id', coalesce(v_org.litellm_team_id, v_org.id::text)));
        END IF;
    END IF;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_member_key_lifecycle() IS
  'Trigger: a membership that becomes active enqueues litellm.add_member (the member joins the team and gets a key of their own); one that stops being active (disabled, invited, deleted, moved) enqueues litellm.remove_member (their key is deleted at LiteLLM and they leave the team) and forgets its key ciphertext. Nothing is enqueued for memberships of an organization being deleted (deprovisioning) or deleted with it (the team''s deletion covers them), nor for the creator of an organization still pending (provisioning gives them their key). Payload {"user_id", "team_id"}.';

DROP TRIGGER IF EXISTS org_member_key_lifecycle ON orgkeeper.org_member;
CREATE TRIGGER org_member_key_lifecycle
    BEFORE INSERT OR UPDATE OF status, org_id, user_id OR DELETE ON orgkeeper.org_member
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.org_member_key_lifecycle();

CREATE OR REPLACE FUNCTION orgkeeper.relocate_current_org(p_org_id uuid, p_user_id uuid DEFAULT NULL) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    WITH moved AS (
        UPDATE orgkeeper.users u
           SET current_org_id = (
                   SELECT m.org_id
                     FROM orgkeeper.org_member m
                     JOIN orgkeeper.org o ON o.id = m.org_id
                    WHERE m.user_id = u.id AND m.status = 'active' AND m.org_id <> p_org_id
                      AND o.provisioning_status <> 'deprovisioning'
                    ORDER BY (m.org_id = u.id) DESC, m.created_at, m.org_id
                    LIMIT 1),
               updated_at = now()
         WHERE u.current_org_id = p_org_id AND (p_user_id IS NULL OR u.id = p_user_id)
        RETURNING 1
    )
    SELECT count(*)::integer FROM moved;
$$;
COMMENT ON FUNCTION orgkeeper.relocate_current_org(uuid, uuid) IS
  'Moves users whose current organization is p_org_id (all of them, or only p_user_id) to their personal organization, else to their oldest other active membership (never one being deleted), else to none. Returns how many moved.';

CREATE OR REPLACE FUNCTION orgkeeper.drop_membership(p_org orgkeeper.org, p_user_id uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    -- The key lifecycle trigger deletes the member's LiteLLM key.
    DELETE FROM orgkeeper.org_member m WHERE m.org_id = p_org.id AND m.user_id = p_user_id;
    -- Keys the member made for this organization must stop working with it.
    DELETE FROM orgkeeper.api_keys k WHERE k.org_id = p_org.id AND k.user_id = p_user_id;
    PERFORM orgkeeper.relocate_current_org(p_org.id, p_user_id);
END;
$$;
COMMENT ON FUNCTION orgkeeper.drop_membership(orgkeeper.org, uuid) IS
  'Removes a membership with its consequences: the member''s API keys for the organization are deleted, their current organization moves elsewhere, and (trigger org_member_key_lifecycle) litellm.remove_member is enqueued.';

------------------------------------------------------------------------------
-- organizations
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.rename_org(actor uuid, org_id uuid, new_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_name   text := $3;
    v_org    orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'rename_org');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('rename_org', 'org_id'); END IF;
    IF v_name IS NULL THEN PERFORM orgkeeper.refuse_null('rename_org', 'new_name'); END IF;
    v_org := orgkeeper.lock_org(v_org_id);
    PERFORM orgkeeper.require_manager(v_actor, v_org, format('rename it to "%s"', v_name));
    -- The org trigger trims and validates the name and refuses duplicates.
    UPDATE orgkeeper.org o SET name = v_name WHERE o.id = v_org_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.rename_org(uuid, uuid, text) IS
  'Renames an organization. Owners and admins only (42501); the name rules of a direct UPDATE apply: trimmed, 1..255 characters (23514), unique case-insensitively (23505). Unknown organization: P0002.';

CREATE OR REPLACE FUNCTION orgkeeper.delete_org(actor uuid, org_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_org    orgkeeper.org;
    v_m      record;
    v_last   uuid[];
    v_rows   jsonb;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'delete_org');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('delete_org', 'org_id'); END IF;
    v_org := orgkeeper.lock_org(v_org_id);
    -- The strongest row lock now: no membership can be added (its foreign
    -- key check takes KEY SHARE) between the checks below and the state
    -- change. A second delete_org of the same organization waits in
    -- lock_org, then is refused (55000, being deleted) — as is every other
    -- management function from then on.
    PERFORM 1 FROM orgkeeper.org o WHERE o.id = v_org_id FOR UPDATE;
    PERFORM orgkeeper.require_member(v_actor, v_org, 'delete it');
    SELECT * INTO v_m FROM orgkeeper.membership(v_org_id, v_actor);
    IF v_m.role_name <> 'owner' THEN
        RAISE EXCEPTION 'user % has role % in organization "%"; only its owners can delete it', v_actor, v_m.role_name, v_org.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s" to delete it (orgkeeper.list_members shows them)', v_org.name);
    END IF;
    IF v_org.kind = 'personal' THEN
        RAISE EXCEPTION 'organization "%" is the personal organization of user % and cannot be deleted', v_org.name, v_org.created_by
            USING ERRCODE = 'check_violation',
                  HINT = 'only team organizations can be deleted; a personal organization lives as long as its user';
    END IF;

    -- Nobody may be left without any organization. The members' users rows
    -- are locked first (in id order): two deletions of organizations sharing
    -- a member run one after the other, and the check sees the other's outcome.
    PERFORM 1 FROM orgkeeper.users u
     WHERE u.id IN (SELECT m.user_id FROM orgkeeper.org_member m WHERE m.org_id = v_org_id AND m.status = 'active')
     ORDER BY u.id
       FOR NO KEY UPDATE;
    SELECT array_agg(m.user_id ORDER BY m.user_id) INTO v_last
      FROM orgkeeper.org_member m
     WHERE m.org_id = v_org_id AND m.status = 'active'
       AND NOT EXISTS (SELECT 1 FROM orgkeeper.org_member o JOIN orgkeeper.org x ON x.id = o.org_id
                        WHERE o.user_id = m.user_id AND o.org_id <> v_org_id AND o.status = 'active'
                          AND x.provisioning_status <> 'deprovisioning');
    IF v_actor = ANY (v_last) THEN
        RAISE EXCEPTION 'organization "%" is the last organization of user %, who cannot delete it', v_org.name, v_actor
            USING ERRCODE = 'check_violation',
                  HINT = 'create or join another organization first';
    ELSIF v_last IS NOT NULL THEN
        RAISE EXCEPTION 'organization "%" is the last organization of % member(s) (%) and cannot be deleted',
                v_org.name, cardinality(v_last), array_to_string(v_last[1:5], ', ') || CASE WHEN cardinality(v_last) > 5 THEN ', …' ELSE '' END
            USING ERRCODE = 'check_violation',
                  HINT = 'remove those members first (orgkeeper.remove_member), or let them join another organization';
    END IF;

    -- Users working in it move to their personal (else another) organization.
    PERFORM orgkeeper.relocate_current_org(v_org_id);

    -- Related rows, as before: financial records detached, the
    -- organization's own data deleted (deletion.sql, release_org_rows).
    v_rows := orgkeeper.release_org_rows(v_org_id);

    -- Deletion in the open (deletion.sql): the row stays, deprovisioning,
    -- until the daemon has deleted the LiteLLM team; then
    -- orgkeeper.record_org_deleted writes the tombstone and deletes the row
    -- (memberships and invitations cascade). Members' LiteLLM keys go with
    -- the team; org_member_key_lifecycle enqueues nothing per member.
    UPDATE orgkeeper.org o
       SET provisioning_status = 'deprovisioning',
           deletion_requested_by = v_actor,
           deletion_requested_at = now()
     WHERE o.id = v_org_id;
    PERFORM orgkeeper.enqueue_action('litellm.deprovision_org', v_org_id, v_actor,
        jsonb_build_object('team_id', coalesce(v_org.litellm_team_id, v_org_id::text),
                           'org_name', v_org.name, 'requested_by', v_actor, 'rows', v_rows));
END;
$$;
COMMENT ON FUNCTION orgkeeper.delete_org(uuid, uuid) IS
  'Deletes a team organization. Owners only (42501); refused for personal organizations and when it is the last organization of the actor or of any other active member (23514); unknown organization: P0002. '
  'Related rows: stripe_customers and billing_sessions are financial records and are kept, detached (org_id = NULL, user_id still says whose); '
  'api_keys, custom_secrets, slack_users, slack_conversation, user_repos, gitlab_webhook and conversation_metadata_saas belong to the organization and are deleted (an installed GitLab webhook stays at GitLab). '
  'Users whose current organization it was move to their personal organization. The organization then becomes deprovisioning (deletion_requested_by/_at record who asked and when) and litellm.deprovision_org is enqueued: from this commit on the application sees nothing of it and every management function refuses it (55000), while its name and id stay taken. '
  'The daemon deletes its LiteLLM team (only if orgkeeper made it for this organization), then writes the tombstone (orgkeeper.org_deleted) and deletes the row with its memberships and invitations. A cleanup that fails for good leaves the action failed and the organization deprovisioning, for operators (orgkeeper actions list --status failed; retry). Refused again while deprovisioning (55000).';

-- V12 added keep_as (the signature changes, so the old one is dropped).
DROP FUNCTION IF EXISTS orgkeeper.transfer_ownership(uuid, uuid, uuid);
CREATE OR REPLACE FUNCTION orgkeeper.transfer_ownership(actor uuid, org_id uuid, new_owner uuid, keep_as text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_new    uuid := $3;
    v_org    orgkeeper.org;
    v_m      record;
    v_t      record;
    v_keep   orgkeeper.role;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'transfer_ownership');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('transfer_ownership', 'org_id'); END IF;
    IF v_new IS NULL THEN PERFORM orgkeeper.refuse_null('transfer_ownership', 'new_owner'); END IF;
    v_org := orgkeeper.lock_org(v_org_id);
    PERFORM orgkeeper.require_member(v_actor, v_org, 'transfer its ownership');
    SELECT * INTO v_m FROM orgkeeper.membership(v_org_id, v_actor);
    IF v_m.role_name <> 'owner' THEN
        RAISE EXCEPTION 'user % has role % in organization "%"; only an owner can transfer its ownership', v_actor, v_m.role_name, v_org.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s" to transfer it', v_org.name);
    END IF;
    IF v_new = v_actor THEN
        RAISE EXCEPTION 'user % already owns organization "%"; transferring it to themselves changes nothing', v_actor, v_org.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'name the member who should become the owner';
    END IF;
    SELECT * INTO v_t FROM orgkeeper.membership(v_org_id, v_new);
    IF v_t.status IS NULL THEN
        RAISE EXCEPTION 'user % is not a member of organization "%"; ownership can only go to an existing member', v_new, v_org.name
            USING ERRCODE = 'no_data_found',
                  HINT = 'add them first (orgkeeper.add_member or an invitation), then transfer';
    ELSIF v_t.status <> 'active' THEN
        RAISE EXCEPTION 'user %''s membership in organization "%" is %; ownership can only go to an active member', v_new, v_org.name, v_t.status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'the membership must be active first (an invited user accepts it with orgkeeper.accept_membership; a DBA''s orgkeeper.add_member re-activates it), then transfer';
    ELSIF v_t.role_name = 'owner' THEN
        RAISE EXCEPTION 'user % is already an owner of organization "%"', v_new, v_org.name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'to step down yourself use orgkeeper.change_member_role or orgkeeper.leave_org';
    END IF;
    -- The role the acting owner keeps: by default the new owner's previous
    -- one (a swap, as Agenta does); else the one asked for. Rank rules: an
    -- owner may grant any role, so an owner may keep any (the owner role too:
    -- then the organization has two owners).
    IF keep_as IS NULL THEN
        v_keep := orgkeeper.role_by_name(v_t.role_name);
    ELSE
        BEGIN
            v_keep := orgkeeper.role_by_name(keep_as);
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE EXCEPTION 'transfer_ownership: the acting owner cannot keep role "%": no such role (organization "%")', keep_as, v_org.name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'keep_as is a role name: ' || (SELECT string_agg(r.name, ', ' ORDER BY r.rank) FROM orgkeeper.role r)
                             || ', or NULL to take the new owner''s previous role; nothing was changed';
        END;
        PERFORM orgkeeper.require_grantable(v_actor, v_m.role_rank, v_org, v_keep);
    END IF;
    UPDATE orgkeeper.org_member m SET role_id = orgkeeper.role_id('owner'), updated_at = now()
     WHERE m.org_id = v_org_id AND m.user_id = v_new;
    UPDATE orgkeeper.org_member m SET role_id = v_keep.id, updated_at = now()
     WHERE m.org_id = v_org_id AND m.user_id = v_actor AND m.role_id IS DISTINCT FROM v_keep.id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.transfer_ownership(uuid, uuid, uuid, text) IS
  'Makes an existing active member the owner. The acting owner takes the new owner''s previous role (a swap), or keep_as when given (a role name; an owner may keep any role, owner included). Only an owner may (42501); the new owner must be a member (P0002), active (55000), not the actor nor already an owner (22023); an unknown keep_as role: 22023, nothing changed; unknown organization: P0002.';

------------------------------------------------------------------------------
-- members
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.add_member(actor uuid, org_id uuid, user_id uuid, role text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_user   uuid := $3;
    v_role   orgkeeper.role;
    v_org    orgkeeper.org;
    v_rank   integer;
    v_t      record;
    -- Only trusted roles make someone a member outright; for the
    -- application the user must consent (orgkeeper.accept_membership).
    v_status text := CASE WHEN orgkeeper.caller_is_trusted() THEN 'active' ELSE 'invited' END;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'add_member');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('add_member', 'org_id'); END IF;
    IF v_user IS NULL THEN PERFORM orgkeeper.refuse_null('add_member', 'user_id'); END IF;
    IF $4 IS NULL THEN PERFORM orgkeeper.refuse_null('add_member', 'role'); END IF;
    v_role := orgkeeper.role_by_name($4);
    v_org := orgkeeper.lock_org(v_org_id);
    v_rank := orgkeeper.require_manager(v_actor, v_org, format('add members (user %s)', v_user));
    PERFORM orgkeeper.require_grantable(v_actor, v_rank, v_org, v_role);

    SELECT * INTO v_t FROM orgkeeper.membership(v_org_id, v_user);
    IF v_t.status = 'active' THEN
        RAISE EXCEPTION 'user % is already a member of organization "%" (role %)', v_user, v_org.name, v_t.role_name
            USING ERRCODE = 'unique_violation',
                  HINT = 'to change their role use orgkeeper.change_member_role';
    ELSIF v_t.status IS NOT NULL THEN
        -- A disabled or invited membership gets the new role (and the new
        -- status), unless it carries a role that outranks the actor.
        IF v_t.role_rank < v_rank THEN
            RAISE EXCEPTION 'user % cannot re-activate user %''s % membership in organization "%", whose role % outranks theirs',
                    v_actor, v_user, v_t.status, v_org.name, v_t.role_name
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('ask an owner of "%s"', v_org.name);
        END IF;
        UPDATE orgkeeper.org_member m SET role_id = v_role.id, status = v_status, updated_at = now()
         WHERE m.org_id = v_org_id AND m.user_id = v_user;
    ELSE
        -- Users are created on demand: the id is the identity provider's
        -- subject. The row holds nothing but the id: the user's email,
        -- settings and current organization are theirs to set.
        INSERT INTO orgkeeper.users (id) VALUES (v_user) ON CONFLICT ON CONSTRAINT users_pkey DO NOTHING;
        INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
        VALUES (v_org_id, v_user, v_role.id, v_status);
    END IF;
    IF v_status = 'active' THEN
        UPDATE orgkeeper.users u SET current_org_id = v_org_id, updated_at = now()
         WHERE u.id = v_user AND u.current_org_id IS NULL;
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.add_member(uuid, uuid, uuid, text) IS
  'Adds a user (created on demand, with nothing but the id) with a role. Called by the application the membership is invited: it counts for nothing until the user accepts it (orgkeeper.accept_membership) and never changes the user''s current organization; trusted roles (orgkeeper.caller_is_trusted: DBAs, the daemon) add an active member. An active member gets their own LiteLLM key (trigger org_member_key_lifecycle enqueues litellm.add_member). Owners and admins only, never granting a role that outranks the actor (42501); unknown role 22023; already an active member 23505; a disabled or invited membership gets the new role and status. Unknown organization: P0002.';

CREATE OR REPLACE FUNCTION orgkeeper.change_member_role(actor uuid, org_id uuid, user_id uuid, role text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_user   uuid := $3;
    v_role   orgkeeper.role;
    v_org    orgkeeper.org;
    v_rank   integer;
    v_t      record;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'change_member_role');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('change_member_role', 'org_id'); END IF;
    IF v_user IS NULL THEN PERFORM orgkeeper.refuse_null('change_member_role', 'user_id'); END IF;
    IF $4 IS NULL THEN PERFORM orgkeeper.refuse_null('change_member_role', 'role'); END IF;
    v_role := orgkeeper.role_by_name($4);
    v_org := orgkeeper.lock_org(v_org_id);
    v_rank := orgkeeper.require_manager(v_actor, v_org, format('change member roles (user %s to %s)', v_user, v_role.name));
    SELECT * INTO v_t FROM orgkeeper.membership(v_org_id, v_user);
    IF v_t.status IS NULL THEN
        RAISE EXCEPTION 'user % is not a member of organization "%"', v_user, v_org.name
            USING ERRCODE = 'no_data_found',
                  HINT = 'add them with orgkeeper.add_member or invite them';
    END IF;
    IF v_t.role_rank < v_rank THEN
        RAISE EXCEPTION 'user % (role %) cannot change the role of user % (role %) in organization "%", who outranks them',
                v_actor, (SELECT m.role_name FROM orgkeeper.membership(v_org_id, v_actor) m), v_user, v_t.role_name, v_org.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s"', v_org.name);
    END IF;
    PERFORM orgkeeper.require_grantable(v_actor, v_rank, v_org, v_role);
    IF v_t.role_name = v_role.name THEN
        RETURN; -- already so
    END IF;
    IF v_t.role_name = 'owner' THEN
        PERFORM orgkeeper.refuse_last_owner(v_org, v_user, format('be demoted to %s', v_role.name));
    END IF;
    UPDATE orgkeeper.org_member m SET role_id = v_role.id, updated_at = now()
     WHERE m.org_id = v_org_id AND m.user_id = v_user;
END;
$$;
COMMENT ON FUNCTION orgkeeper.change_member_role(uuid, uuid, uuid, text) IS
  'Changes a member''s role. Owners and admins only; nobody changes a member who outranks them or grants a role that outranks their own (42501); the last owner cannot be demoted (23514); unknown role 22023; not a member or unknown organization P0002. Setting the current role is a no-op.';

CREATE OR REPLACE FUNCTION orgkeeper.leave_org(actor uuid, org_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_org    orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'leave_org');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('leave_org', 'org_id'); END IF;
    v_org := orgkeeper.lock_org(v_org_id);
    IF (SELECT m.status FROM orgkeeper.membership(v_org_id, v_actor) m) IS NULL THEN
        RAISE EXCEPTION 'user % is not a member of organization %, so cannot leave it', v_actor, v_org_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'orgkeeper.list_orgs(actor) lists the organizations the user belongs to';
    END IF;
    PERFORM orgkeeper.refuse_last_owner(v_org, v_actor, 'leave it');
    PERFORM orgkeeper.drop_membership(v_org, v_actor);
END;
$$;
COMMENT ON FUNCTION orgkeeper.leave_org(uuid, uuid) IS
  'The actor leaves an organization (any role): their API keys for it are deleted, their current organization moves elsewhere, litellm.remove_member is enqueued. The last owner cannot leave (23514); not a member or unknown organization: P0002.';

CREATE OR REPLACE FUNCTION orgkeeper.remove_member(actor uuid, org_id uuid, user_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_user   uuid := $3;
    v_org    orgkeeper.org;
    v_rank   integer;
    v_t      record;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'remove_member');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('remove_member', 'org_id'); END IF;
    IF v_user IS NULL THEN PERFORM orgkeeper.refuse_null('remove_member', 'user_id'); END IF;
    IF v_user = v_actor THEN
        PERFORM orgkeeper.leave_org(v_actor, v_org_id);
        RETURN;
    END IF;
    v_org := orgkeeper.lock_org(v_org_id);
    v_rank := orgkeeper.require_manager(v_actor, v_org, format('remove members (user %s)', v_user));
    SELECT * INTO v_t FROM orgkeeper.membership(v_org_id, v_user);
    IF v_t.status IS NULL THEN
        RAISE EXCEPTION 'user % is not a member of organization "%"', v_user, v_org.name
            USING ERRCODE = 'no_data_found',
                  HINT = 'orgkeeper.list_members(actor, org_id) lists its members';
    END IF;
    IF v_t.role_rank < v_rank THEN
        RAISE EXCEPTION 'user % (role %) cannot remove user % (role %) from organization "%", who outranks them',
                v_actor, (SELECT m.role_name FROM orgkeeper.membership(v_org_id, v_actor) m), v_user, v_t.role_name, v_org.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s"', v_org.name);
    END IF;
    PERFORM orgkeeper.refuse_last_owner(v_org, v_user, 'be removed');
    PERFORM orgkeeper.drop_membership(v_org, v_user);
END;
$$;
COMMENT ON FUNCTION orgkeeper.remove_member(uuid, uuid, uuid) IS
  'Removes a member: their API keys for the organization are deleted, their current organization moves elsewhere, litellm.remove_member is enqueued. Owners and admins only, never someone who outranks them (42501); the last owner cannot be removed (23514); not a member or unknown organization P0002. Removing oneself is leave_org.';

CREATE OR REPLACE FUNCTION orgkeeper.org_provisioning_error(actor uuid, org_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor($1, 'org_provisioning_error');
    IF $2 IS NULL THEN PERFORM orgkeeper.refuse_null('org_provisioning_error', 'org_id'); END IF;
    v_org := orgkeeper.find_org($2);
    PERFORM orgkeeper.require_manager($1, v_org, 'read why its provisioning failed');
    RETURN v_org.provisioning_error;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_provisioning_error(uuid, uuid) IS
  'org.provisioning_error (the LiteLLM proxy''s own words on a failed provisioning, which the application role cannot select) for the organization''s active owners and admins; 42501 for anyone else; unknown organization P0002; NULL arguments 22004.';

------------------------------------------------------------------------------
-- consent: the user accepts or declines a membership they were added to
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.lock_invited_membership(p_user uuid, p_org_id uuid, p_function text) RETURNS orgkeeper.org
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor(p_user, p_function);
    IF p_org_id IS NULL THEN PERFORM orgkeeper.refuse_null(p_function, 'org_id'); END IF;
    -- The organization first (the lock order of every membership change).
    PERFORM 1 FROM orgkeeper.org o WHERE o.id = p_org_id FOR NO KEY UPDATE;
    SELECT o.* INTO v_org
      FROM orgkeeper.org o JOIN orgkeeper.org_member m ON m.org_id = o.id
     WHERE o.id = p_org_id AND m.user_id = p_user AND m.status = 'invited';
    IF NOT FOUND THEN
        -- Whether the organization exists is not told to someone not invited.
        RAISE EXCEPTION '%: user % has no pending invitation to organization %; nothing changed', p_function, p_user, p_org_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'orgkeeper.list_orgs(user_id) lists the user''s memberships, the invited ones with status invited';
    END IF;
    IF v_org.provisioning_status = 'deprovisioning' THEN
        RAISE EXCEPTION '%: organization % is being deleted; nothing changed', p_function, p_org_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'its memberships go with it';
    END IF;
    RETURN v_org;
END;
$$;
COMMENT ON FUNCTION orgkeeper.lock_invited_membership(uuid, uuid, text) IS
  'Internal: checks that the user acts for themselves (orgkeeper.check_actor) and returns the organization, locked, in which they have an invited membership; raises P0002 (without telling whether the organization exists) otherwise, and 55000 when the organization is being deleted.';

CREATE OR REPLACE FUNCTION orgkeeper.accept_membership(user_id uuid, org_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_user uuid := $1;
    v_org  orgkeeper.org := orgkeeper.lock_invited_membership($1, $2, 'accept_membership');
BEGIN
    UPDATE orgkeeper.org_member m SET status = 'active', updated_at = now()
     WHERE m.org_id = v_org.id AND m.user_id = v_user;
    -- The user's own choice: their first organization becomes the current one.
    UPDATE orgkeeper.users u SET current_org_id = v_org.id, updated_at = now()
     WHERE u.id = v_user AND u.current_org_id IS NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.accept_membership(uuid, uuid) IS
  'The user accepts the membership orgkeeper.add_member invited them to: it becomes active (with the role it was given), and the organization becomes their current one if they had none. Only the user themselves (42501 for anyone else); no invited membership in that organization P0002; NULL arguments 22004.';

CREATE OR REPLACE FUNCTION orgkeeper.decline_membership(user_id uuid, org_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    PERFORM orgkeeper.drop_membership(orgkeeper.lock_invited_membership($1, $2, 'decline_membership'), $1);
END;
$$;
COMMENT ON FUNCTION orgkeeper.decline_membership(uuid, uuid) IS
  'The user declines the membership orgkeeper.add_member invited them to: it is deleted. Only the user themselves (42501 for anyone else); no invited membership in that organization P0002; NULL arguments 22004.';

------------------------------------------------------------------------------
-- listings
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.list_orgs(actor uuid)
RETURNS TABLE (org_id uuid, name text, kind text, role text, status text, is_current boolean,
               provisioning_status text, members integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor uuid := $1;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'list_orgs');
    -- Invited: what the user needs to decide (name, kind, role), nothing of
    -- the organization's inside. Disabled: not listed.
    RETURN QUERY
        SELECT o.id, o.name, o.kind, r.name, m.status,
               coalesce(u.current_org_id = o.id, false),
               CASE WHEN m.status = 'active' THEN o.provisioning_status END,
               CASE WHEN m.status = 'active' THEN
                   (SELECT count(*)::integer FROM orgkeeper.org_member c WHERE c.org_id = o.id AND c.status = 'active') END
          FROM orgkeeper.org_member m
          JOIN orgkeeper.org o ON o.id = m.org_id
          JOIN orgkeeper.role r ON r.id = m.role_id
          LEFT JOIN orgkeeper.users u ON u.id = m.user_id
         WHERE m.user_id = v_actor AND m.status IN ('active', 'invited')
           AND o.provisioning_status <> 'deprovisioning'
         ORDER BY o.kind = 'personal' DESC, lower(o.name);
END;
$$;
COMMENT ON FUNCTION orgkeeper.list_orgs(uuid) IS
  'The organizations the actor belongs to, with their role, membership status, whether it is their current one, provisioning status and active member count; memberships the actor was invited to (orgkeeper.accept_membership) with name, kind and role only; disabled memberships and organizations being deleted (deprovisioning) are not listed.';

CREATE OR REPLACE FUNCTION orgkeeper.list_members(actor uuid, org_id uuid)
RETURNS TABLE (user_id uuid, email text, role text, rank integer, status text, joined_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_org    orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'list_members');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('list_members', 'org_id'); END IF;
    v_org := orgkeeper.find_org(v_org_id);
    PERFORM orgkeeper.require_member(v_actor, v_org, 'list its members');
    RETURN QUERY
        SELECT m.user_id, u.email, r.name, r.rank, m.status, m.created_at
          FROM orgkeeper.org_member m
          JOIN orgkeeper.role r ON r.id = m.role_id
          LEFT JOIN orgkeeper.users u ON u.id = m.user_id
         WHERE m.org_id = v_org_id
         ORDER BY r.rank, m.created_at, m.user_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.list_members(uuid, uuid) IS
  'The members of an organization (user, email, role, rank, status, since when), strongest role first. Any active member may list (else 42501); unknown organization: P0002.';
