-- provisioning.sql — what the daemon reads and writes back for
-- litellm.provision_org. Each write-back is one transaction, fenced on the
-- action's lease, so the org row and the action can never disagree.

CREATE OR REPLACE FUNCTION orgkeeper.verified_email(p_user_id uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT u.email FROM orgkeeper.users u WHERE u.id = p_user_id AND u.email_verified;
$$;
COMMENT ON FUNCTION orgkeeper.verified_email(uuid) IS
  'Daemon: the user''s email if the identity provider verified it (users.email_verified), else NULL. The only email sent to LiteLLM: an address the application merely asserted is never attached to anyone''s LiteLLM user.';

CREATE OR REPLACE FUNCTION orgkeeper.provisioning_context(p_org_id uuid)
RETURNS TABLE (org_name text, org_kind text, owner_id uuid, owner_email text)
LANGUAGE sql STABLE AS $$
    SELECT o.name, o.kind, o.created_by, orgkeeper.verified_email(o.created_by)
      FROM orgkeeper.org o
     WHERE o.id = p_org_id;
$$;
COMMENT ON FUNCTION orgkeeper.provisioning_context(uuid) IS
  'Daemon: what provisioning an organization needs (name for the team alias, owner and their verified email, orgkeeper.verified_email). No row = the org is gone.';

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

CREATE OR REPLACE FUNCTION orgkeeper.record_org_provisioned(
    p_action_id bigint, p_worker text, p_team_id text, p_owner uuid,
    p_model text, p_base_url text, p_key_ciphertext text, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    v_org_id := orgkeeper.lock_action_org(p_action_id);
    PERFORM 1
       FROM orgkeeper.pending_external_actions
      WHERE id = p_action_id AND locked_by = p_worker AND status = 'running'
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'lease_lost';
    END IF;
    UPDATE orgkeeper.org
       SET litellm_team_id = p_team_id,
           llm_model = coalesce(llm_model, p_model),
           llm_base_url = coalesce(llm_base_url, p_base_url),
           llm_api_key = p_key_ciphertext,
           provisioning_status = 'active',
           provisioning_error = NULL
     WHERE id = v_org_id;
    IF NOT FOUND THEN
        RETURN 'org_gone';
    END IF;
    UPDATE orgkeeper.org_member SET llm_api_key = p_key_ciphertext, updated_at = now()
     WHERE org_id = v_org_id AND user_id = p_owner;
    PERFORM orgkeeper.complete_action(p_action_id, p_worker, p_result);
    RETURN 'done';
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_org_provisioned(bigint, text, text, uuid, text, text, text, jsonb) IS
  'Daemon: in one transaction, writes the team id, model, base URL and encrypted key to the org and its owner''s membership, sets provisioning_status = active and marks the action done. Returns done, org_gone (nothing written; compensate) or lease_lost (nothing written).';

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
     WHERE id = v_org_id;
    RETURN true;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_provisioning_failed(bigint, text, text, text, jsonb) IS
  'Daemon: after compensation, ends the provisioning action (compensated, or failed when cleanup failed) and marks its org failed with {"error": original error, "cleanup": cleanup result}. Fenced on the lease.';

CREATE OR REPLACE FUNCTION orgkeeper.record_team_ready(p_action_id bigint, p_worker text, p_team_id text, p_result jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    v_org_id := orgkeeper.lock_action_org(p_action_id);
    IF NOT orgkeeper.complete_action(p_action_id, p_worker, p_result) THEN
        RETURN false;
    END IF;
    UPDATE orgkeeper.org
       SET litellm_team_id = p_team_id, provisioning_status = 'active', provisioning_error = NULL
     WHERE id = v_org_id;
    RETURN true;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_team_ready(bigint, text, text, jsonb) IS
  'Daemon: marks an action that built an org''s LiteLLM team (user migration) done and the org active with its team id, in one transaction. Fenced on the lease.';
