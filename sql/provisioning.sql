-- provisioning.sql — what the daemon reads and writes back for
-- litellm.provision_org. Each write-back is one transaction, fenced on the
-- action's lease, so the org row and the action can never disagree.

-- plpgsql: a SQL function reading a table is not inlined, and one not
-- inlined is planned again at every call (once per provisioning).
CREATE OR REPLACE FUNCTION orgkeeper.verified_email(p_user_id uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT u.email FROM orgkeeper.users u WHERE u.id = p_user_id AND u.email_verified);
END;
$$;
COMMENT ON FUNCTION orgkeeper.verified_email(uuid) IS
  'Daemon: the user''s email if the identity provider verified it (users.email_verified), else NULL. The only email sent to LiteLLM: an address the application merely asserted is never attached to anyone''s LiteLLM user.';

DROP FUNCTION IF EXISTS orgkeeper.provisioning_context(uuid);
CREATE OR REPLACE FUNCTION orgkeeper.provisioning_context(p_org_id uuid, p_default_model text)
RETURNS TABLE (org_name text, org_kind text, owner_id uuid, owner_email text, org_version integer, model text)
LANGUAGE sql STABLE AS $$
    SELECT o.name, o.kind, o.created_by, orgkeeper.verified_email(o.created_by), o.org_version,
           coalesce(o.llm_model, p_default_model, orgkeeper.default_llm_model(NULL))
      FROM orgkeeper.org o
     WHERE o.id = p_org_id AND o.provisioning_status <> 'deprovisioning';
$$;
COMMENT ON FUNCTION orgkeeper.provisioning_context(uuid, text) IS
  'Daemon: what provisioning an organization needs: name (team alias), kind, owner and their verified email (orgkeeper.verified_email), settings version, and its model (its own, else p_default_model = ORGKEEPER_DEFAULT_MODEL, else litellm_proxy/<current version''s model>). No row = the org is gone or being deleted (deprovisioning): the handler gives up and its compensation deletes a team it made.';

-- Lock order everywhere: the org row, then the action row.
CREATE OR REPLACE FUNCTION orgkeeper.lock_action_org(p_action_id bigint) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    SELECT a.org_id INTO v_org_id FROM orgkeeper.pending_external_actions a WHERE a.id = p_action_id;
    PERFORM 1 FROM orgkeeper.org o WHERE o.id = v_org_id FOR NO KEY UPDATE;
    RETURN v_org_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.lock_action_org(bigint) IS
  'Internal: the org_id of an action, after locking that org''s row (FOR NO KEY UPDATE) — the first step of every provisioning write-back, which locks the org row before the action row. NULL when the action does not exist or has no org; the org may be gone (nothing locked).';

-- Several actions: every org row first, in key order (not the batch's or
-- the action ids' order), so that two batches sharing organizations, or a
-- batch and a one-action write-back, cannot deadlock on them.
CREATE OR REPLACE FUNCTION orgkeeper.lock_actions_orgs(p_action_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM orgkeeper.org o
     WHERE o.id IN (SELECT a.org_id FROM orgkeeper.pending_external_actions a WHERE a.id = ANY (p_action_ids))
     ORDER BY o.id
       FOR NO KEY UPDATE;
END;
$$;
COMMENT ON FUNCTION orgkeeper.lock_actions_orgs(bigint[]) IS
  'Internal: locks the org rows of the given actions (FOR NO KEY UPDATE) in key order — the first step of a batched write-back (orgkeeper.lock_action_org for one action), before any action row. Actions without an org, or whose org is gone, lock nothing.';

CREATE OR REPLACE FUNCTION orgkeeper.record_orgs_provisioned(
    p_action_ids bigint[], p_workers text[], p_team_ids text[], p_owners uuid[],
    p_models text[], p_base_urls text[], p_key_ciphertexts text[], p_results jsonb[])
RETURNS TABLE (action_id bigint, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v_held   bigint[];  -- positions whose token holds the lease
    v_active bigint[];  -- of those, the ones whose organization became active
BEGIN
    -- The daemon's batched write-back of litellm.provision_org: one
    -- statement and one commit for the organizations provisioned together,
    -- set-based. Org rows first, in key order; then the actions whose token
    -- holds the lease (hold_actions).
    PERFORM orgkeeper.lock_actions_orgs(p_action_ids);
    v_held := orgkeeper.hold_actions(p_action_ids, p_workers);
    -- A deprovisioning organization is never made active again: its
    -- deletion (queued after this action) deletes the team just made.
    WITH made AS (
        UPDATE orgkeeper.org o
           SET litellm_team_id = u.team_id,
               llm_model = coalesce(o.llm_model, u.model),
               llm_base_url = coalesce(o.llm_base_url, u.base_url),
               provisioning_status = 'active',
               provisioning_error = NULL
          FROM unnest(p_action_ids, p_team_ids, p_models, p_base_urls) WITH ORDINALITY AS u(id, team_id, model, base_url, ord)
          JOIN orgkeeper.pending_external_actions a ON a.id = u.id
         WHERE u.ord = ANY (v_held) AND o.id = a.org_id AND o.provisioning_status <> 'deprovisioning'
        RETURNING o.id
    )
    SELECT coalesce(array_agg(u.ord), '{}') INTO v_active
      FROM unnest(p_action_ids) WITH ORDINALITY AS u(id, ord)
      JOIN orgkeeper.pending_external_actions a ON a.id = u.id
     WHERE u.ord = ANY (v_held) AND a.org_id IN (SELECT made.id FROM made);
    -- Each owner's own key goes to their membership (no key is shared by an
    -- organization's members).
    UPDATE orgkeeper.org_member m
       SET llm_api_key = u.key_ciphertext, updated_at = now()
      FROM unnest(p_action_ids, p_owners, p_key_ciphertexts) WITH ORDINALITY AS u(id, owner, key_ciphertext, ord)
      JOIN orgkeeper.pending_external_actions a ON a.id = u.id
     WHERE u.ord = ANY (v_active) AND m.org_id = a.org_id AND m.user_id = u.owner AND m.status = 'active';
    PERFORM orgkeeper.complete_actions(array_agg(u.id ORDER BY u.ord), array_agg(u.worker ORDER BY u.ord),
                                       array_agg(u.result ORDER BY u.ord))
       FROM unnest(p_action_ids, p_workers, p_results) WITH ORDINALITY AS u(id, worker, result, ord)
      WHERE u.ord = ANY (v_active);
    RETURN QUERY
    SELECT u.id, CASE WHEN u.ord = ANY (v_active) THEN 'done'
                      WHEN u.ord = ANY (v_held) THEN 'org_gone'
                      ELSE 'lease_lost' END
      FROM unnest(p_action_ids) WITH ORDINALITY AS u(id, ord)
     ORDER BY u.ord;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_orgs_provisioned(bigint[], text[], text[], uuid[], text[], text[], text[], jsonb[]) IS
  'Daemon: records several provisioned organizations in one statement (element i of each array belongs together; one action per organization): the organizations'' rows locked first in key order (orgkeeper.lock_actions_orgs), then each action fenced on its own lease; for each, the team id, model and base URL written to the org, the owner''s own encrypted key to their membership (no key is shared by the org''s members), provisioning_status = active, and the action marked done. Returns, per action in the order given: done, org_gone (the org was deleted or is being deleted: nothing written; compensate) or lease_lost (nothing written).';

CREATE OR REPLACE FUNCTION orgkeeper.record_org_provisioned(
    p_action_id bigint, p_worker text, p_team_id text, p_owner uuid,
    p_model text, p_base_url text, p_key_ciphertext text, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    -- One action: the batched write-back with a batch of one (one place for the rules).
    RETURN (SELECT r.outcome FROM orgkeeper.record_orgs_provisioned(
                ARRAY[p_action_id], ARRAY[p_worker], ARRAY[p_team_id], ARRAY[p_owner],
                ARRAY[p_model], ARRAY[p_base_url], ARRAY[p_key_ciphertext], ARRAY[p_result]) r);
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_org_provisioned(bigint, text, text, uuid, text, text, text, jsonb) IS
  'Daemon: orgkeeper.record_orgs_provisioned for one action (the daemon batches its write-backs; this is for a batch of one and older daemons): in one transaction, writes the team id, model and base URL to the org and the owner''s own encrypted key to their membership (no key is shared by the org''s members), sets provisioning_status = active and marks the action done. Returns done, org_gone (the org was deleted or is being deleted: nothing written; compensate) or lease_lost (nothing written).';

CREATE OR REPLACE FUNCTION orgkeeper.record_provisioning_failed(
    p_action_id bigint, p_worker text, p_status text, p_error text, p_cleanup jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    v_org_id := orgkeeper.lock_action_org(p_action_id);
    IF NOT orgkeeper.finish_action(p_action_id, p_worker, p_status, jsonb_build_object('cleanup', p_cleanup)) THEN
        RETURN false;
    END IF;
    UPDATE orgkeeper.org
       SET provisioning_status = 'failed',
           provisioning_error = jsonb_build_object('error', p_error, 'cleanup', p_cleanup, 'action_id', p_action_id)
     WHERE id = v_org_id AND provisioning_status <> 'deprovisioning';
    RETURN true;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_provisioning_failed(bigint, text, text, text, jsonb) IS
  'Daemon: after compensation, ends the provisioning action (compensated, or failed when cleanup failed) and marks its org failed with {"error": original error, "cleanup": cleanup result} (an org being deleted stays deprovisioning). Fenced on the lease.';

CREATE OR REPLACE FUNCTION orgkeeper.record_team_ready(p_action_id bigint, p_worker text, p_team_id text, p_result jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- One action: the batched write-back with a batch of one (one place for the rules).
    RETURN (SELECT r.recorded FROM orgkeeper.record_teams_ready(ARRAY[p_action_id], ARRAY[p_worker],
                                                                ARRAY[p_team_id], ARRAY[p_result]) r);
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_team_ready(bigint, text, text, jsonb) IS
  'Daemon: marks an action that built an org''s LiteLLM team (user migration) done and the org active with its team id (an org being deleted stays deprovisioning), in one transaction. Fenced on the lease. orgkeeper.record_teams_ready for one action (the daemon batches its write-backs; this is for a batch of one and older daemons).';

CREATE OR REPLACE FUNCTION orgkeeper.record_member_keys(
    p_ids bigint[], p_workers text[], p_users uuid[], p_key_ciphertexts text[], p_results jsonb[])
RETURNS TABLE (action_id bigint, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v_held   bigint[];
    v_stored bigint[];
BEGIN
    -- The daemon's batched write-back of members' new keys: one statement
    -- and one commit for the keys made together, set-based. Org rows first,
    -- in key order; then the actions whose token holds the lease
    -- (hold_actions).
    PERFORM orgkeeper.lock_actions_orgs(p_ids);
    v_held := orgkeeper.hold_actions(p_ids, p_workers);
    -- Each key goes to its member's membership of the action's organization,
    -- only while that membership is active.
    WITH stored AS (
        UPDATE orgkeeper.org_member m
           SET llm_api_key = u.key_ciphertext, updated_at = now()
          FROM unnest(p_ids, p_users, p_key_ciphertexts) WITH ORDINALITY AS u(id, user_id, key_ciphertext, ord)
          JOIN orgkeeper.pending_external_actions a ON a.id = u.id
         WHERE u.ord = ANY (v_held)
           AND m.org_id = a.org_id AND m.user_id = u.user_id AND m.status = 'active'
        RETURNING u.ord
    )
    SELECT coalesce(array_agg(stored.ord), '{}') INTO v_stored FROM stored;
    PERFORM orgkeeper.complete_actions(array_agg(u.id), array_agg(u.worker), array_agg(u.result))
       FROM unnest(p_ids, p_workers, p_results) WITH ORDINALITY AS u(id, worker, result, ord)
      WHERE u.ord = ANY (v_stored);
    RETURN QUERY
    SELECT u.id, CASE WHEN u.ord = ANY (v_stored) THEN 'done'
                      WHEN u.ord = ANY (v_held) THEN 'member_gone'
                      ELSE 'lease_lost' END
      FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
     ORDER BY u.ord;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_member_keys(bigint[], text[], uuid[], text[], jsonb[]) IS
  'Daemon: stores members'' own encrypted LiteLLM keys for several litellm.add_member / litellm.verify_key actions in one statement (element i of each array belongs together; one action per membership): the organizations'' rows locked first in key order (orgkeeper.lock_actions_orgs), then each action fenced on its own lease; the key lands on the member''s membership of the action''s organization while it is active, and that action is marked done with its result. Returns, per action in the order given: done, member_gone (the membership is no longer active: nothing written, the action stays running; the handler deletes the key) or lease_lost (nothing written).';

CREATE OR REPLACE FUNCTION orgkeeper.record_member_key(
    p_action_id bigint, p_worker text, p_user uuid, p_key_ciphertext text, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    -- One action: the batched write-back with a batch of one (one place for the rules).
    RETURN (SELECT r.outcome FROM orgkeeper.record_member_keys(ARRAY[p_action_id], ARRAY[p_worker], ARRAY[p_user],
                                                               ARRAY[p_key_ciphertext], ARRAY[p_result]) r);
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_member_key(bigint, text, uuid, text, jsonb) IS
  'Daemon: orgkeeper.record_member_keys for one action (the daemon batches its write-backs; this is for a batch of one and older daemons): stores a member''s own encrypted LiteLLM key on their membership of the action''s organization and marks the action done, in one transaction fenced on the lease. Returns done, member_gone (the membership is no longer active: nothing written, the handler deletes the key) or lease_lost.';

DROP FUNCTION IF EXISTS orgkeeper.member_key_context(uuid, uuid);
CREATE OR REPLACE FUNCTION orgkeeper.member_key_context(p_org_id uuid, p_user_id uuid)
RETURNS TABLE (active boolean, email text, org_status text, org_version integer, model text,
               key_ciphertext text, llm_base_url text)
LANGUAGE sql STABLE AS $$
    SELECT m.status = 'active', orgkeeper.verified_email(m.user_id), o.provisioning_status, o.org_version,
           coalesce(o.llm_model, orgkeeper.default_llm_model(o.org_version)),
           m.llm_api_key, coalesce(m.llm_base_url, o.llm_base_url)
      FROM orgkeeper.org_member m
      JOIN orgkeeper.org o ON o.id = m.org_id
     WHERE m.org_id = p_org_id AND m.user_id = p_user_id;
$$;
COMMENT ON FUNCTION orgkeeper.member_key_context(uuid, uuid) IS
  'Daemon: what litellm.add_member needs about a membership: whether it is still active, the user''s verified email (orgkeeper.verified_email), the organization''s provisioning status (a member joins only a team orgkeeper provisioned), settings version and model, the member''s key ciphertext and the base URL it is used with. No row = the membership is gone.';

CREATE OR REPLACE FUNCTION orgkeeper.rotate_member_keys(org_id uuid, user_id uuid DEFAULT NULL) RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org_id uuid := $1;
    v_user   uuid := $2;
    v_org    orgkeeper.org;
    v_ids    bigint[];
BEGIN
    IF v_org_id IS NULL THEN
        RAISE EXCEPTION 'rotate_member_keys: org_id is NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'name the organization whose members'' LiteLLM keys to replace';
    END IF;
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = v_org_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', v_org_id USING ERRCODE = 'no_data_found';
    END IF;
    IF v_org.provisioning_status <> 'active' THEN
        RAISE EXCEPTION 'organization "%" is %, not active: its keys cannot be rotated', v_org.name, v_org.provisioning_status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'wait for provisioning to finish (orgkeeper actions list --org ...), or retry it';
    END IF;
    IF v_user IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM orgkeeper.org_member m WHERE m.org_id = v_org_id AND m.user_id = v_user AND m.status = 'active') THEN
        RAISE EXCEPTION 'user % is not an active member of organization "%"', v_user, v_org.name
            USING ERRCODE = 'no_data_found',
                  HINT = 'only active members have a key; see orgkeeper.list_members';
    END IF;
    SELECT array_agg(orgkeeper.enqueue_action('litellm.rotate_key', v_org_id, m.user_id,
               jsonb_build_object('user_id', m.user_id, 'team_id', coalesce(v_org.litellm_team_id, v_org.id::text)))
             ORDER BY m.user_id)
      INTO v_ids
      FROM orgkeeper.org_member m
     WHERE m.org_id = v_org_id AND m.status = 'active' AND (v_user IS NULL OR m.user_id = v_user);
    RETURN coalesce(v_ids, '{}');
END;
$$;
COMMENT ON FUNCTION orgkeeper.rotate_member_keys(uuid, uuid) IS
  'DBA: enqueues litellm.rotate_key for every active member of an organization (or only user_id): the daemon stores a new random key for the member first, then deletes the old one at LiteLLM. Returns the action ids. Refuses an unknown organization or a user who is not an active member (P0002) and an organization that is not active (55000).';

CREATE OR REPLACE FUNCTION orgkeeper.record_rotated_key(
    p_action_id bigint, p_worker text, p_user uuid, p_old_ciphertext text, p_new_ciphertext text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    v_org_id := orgkeeper.lock_action_org(p_action_id);
    IF NOT orgkeeper.hold_action(p_action_id, p_worker) THEN
        RETURN 'lease_lost';
    END IF;
    UPDATE orgkeeper.org_member SET llm_api_key = p_new_ciphertext, updated_at = now()
     WHERE org_id = v_org_id AND user_id = p_user AND status = 'active'
       AND llm_api_key IS NOT DISTINCT FROM p_old_ciphertext;
    IF NOT FOUND THEN
        RETURN 'changed';
    END IF;
    UPDATE orgkeeper.pending_external_actions
       SET progress = progress || '{"stored": true}', updated_at = now()
     WHERE id = p_action_id;
    RETURN 'stored';
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_rotated_key(bigint, text, uuid, text, text) IS
  'Daemon: stores a member''s new key in place of the old one (compare-and-set on the old ciphertext, active memberships only) and notes "stored" in the litellm.rotate_key action''s progress, in one transaction fenced on the lease. Returns stored, changed (the membership or its key changed meanwhile: nothing written) or lease_lost.';

CREATE OR REPLACE FUNCTION orgkeeper.verify_member_keys(org_id uuid DEFAULT NULL) RETURNS bigint[]
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF $1 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM orgkeeper.org o WHERE o.id = $1) THEN
        RAISE EXCEPTION 'organization % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    SELECT array_agg(orgkeeper.enqueue_action('litellm.verify_key', m.org_id, m.user_id,
               jsonb_build_object('user_id', m.user_id, 'team_id', coalesce(o.litellm_team_id, o.id::text),
                                  'regenerate', false))
             ORDER BY m.org_id, m.user_id)
      INTO v_ids
      FROM orgkeeper.org_member m
      JOIN orgkeeper.org o ON o.id = m.org_id
     WHERE ($1 IS NULL OR m.org_id = $1) AND m.status = 'active' AND m.llm_api_key IS NOT NULL
       AND o.provisioning_status = 'active';
    RETURN coalesce(v_ids, '{}');
END;
$$;
COMMENT ON FUNCTION orgkeeper.verify_member_keys(uuid) IS
  'DBA: enqueues litellm.verify_key for every active member with a key, of one organization or (NULL) of all active ones: the daemon asks the proxy whether the key still works (GET /v1/models with it; only 401/403 mean invalid) and records {"valid": true | false | null} in the action''s result. Returns the action ids. Unknown organization: P0002.';
