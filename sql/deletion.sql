-- deletion.sql — deleting an organization in the open (issue 12, item 3).
--
-- The flow (README, "How it works"):
--
-- 1. orgkeeper.delete_org (members.sql) checks the rules, moves users whose
--    current organization it is elsewhere, detaches the financial rows and
--    deletes the organization's own related rows (orgkeeper.release_org_rows),
--    then sets provisioning_status = 'deprovisioning' with
--    deletion_requested_by/_at, and enqueues litellm.deprovision_org — all in
--    the caller's transaction. From then on the organization is invisible to
--    the application (row security: orgkeeper.rls_member_org_ids and friends
--    skip it; list_orgs omits it), every management function refuses it
--    (orgkeeper.find_org: 55000 "organization … is being deleted"), and yet
--    nothing is freed: the row keeps its name taken (org_name_unique_ci) and
--    its id, memberships and invitations stay until the row goes.
-- 2. The daemon (src/outbox/handlers/deprovision_org.rs) reads
--    orgkeeper.deprovisioning_context, deletes the LiteLLM team if it is the
--    one orgkeeper made for this organization (a foreign team is left and
--    reported), then calls orgkeeper.record_org_deleted: one transaction,
--    fenced on the lease, that writes the tombstone into orgkeeper.org_deleted,
--    deletes the row (memberships and invitations cascade) and marks the
--    action done.
-- 3. A permanent failure of the cleanup ends the action 'failed' (nothing to
--    compensate: the team call is idempotent); the org stays 'deprovisioning'
--    and invisible to tenants, and `orgkeeper actions list --status failed`
--    shows it to operators; `orgkeeper actions retry <id>` runs it again.
--
-- A direct DELETE FROM orgkeeper.org by a trusted role (the application has
-- no DELETE privilege) stays immediate, as before: the DBA chose to remove
-- the row now. Its AFTER DELETE trigger (outbox.sql, org_after_delete)
-- writes the tombstone (deleted_via = direct_delete) and enqueues
-- litellm.delete_team, whose write-back (orgkeeper.record_team_deleted) adds
-- the team's outcome to the tombstone. Turning a DBA's DELETE into an UPDATE
-- behind their back ("DELETE 0") would surprise more than it protects.

------------------------------------------------------------------------------
-- related rows
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.release_org_rows(p_org_id uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_rows  jsonb := '{}'::jsonb;
    v_n     bigint;
BEGIN
    -- Related rows (their foreign keys RESTRICT on purpose): billing and
    -- financial records are kept and detached; the organization's own data goes.
    UPDATE orgkeeper.stripe_customers t SET org_id = NULL, detached_from_org = p_org_id, updated_at = now() WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('stripe_customers_detached', v_n); END IF;
    UPDATE orgkeeper.billing_sessions t SET org_id = NULL, detached_from_org = p_org_id, updated_at = now() WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('billing_sessions_detached', v_n); END IF;
    DELETE FROM orgkeeper.api_keys t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('api_keys', v_n); END IF;
    DELETE FROM orgkeeper.custom_secrets t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('custom_secrets', v_n); END IF;
    DELETE FROM orgkeeper.slack_users t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('slack_users', v_n); END IF;
    DELETE FROM orgkeeper.slack_conversation t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('slack_conversation', v_n); END IF;
    DELETE FROM orgkeeper.user_repos t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('user_repos', v_n); END IF;
    DELETE FROM orgkeeper.gitlab_webhook t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('gitlab_webhook', v_n); END IF;
    DELETE FROM orgkeeper.conversation_metadata_saas t WHERE t.org_id = p_org_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN v_rows := v_rows || jsonb_build_object('conversation_metadata_saas', v_n); END IF;
    RETURN v_rows;
END;
$$;
COMMENT ON FUNCTION orgkeeper.release_org_rows(uuid) IS
  'Internal (delete_org, record_org_deleted): detaches the organization''s financial records (stripe_customers, billing_sessions: org_id = NULL, detached_from_org = the org, user_id still says whose) and deletes its own data (api_keys, custom_secrets, slack_users, slack_conversation, user_repos, gitlab_webhook, conversation_metadata_saas). Returns {table: rows} for the tables it touched.';

------------------------------------------------------------------------------
-- the daemon's side of litellm.deprovision_org
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.deprovisioning_context(p_org_id uuid)
RETURNS TABLE (team_id text, provisioning_status text, org_name text)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(o.litellm_team_id, o.id::text), o.provisioning_status, o.name
      FROM orgkeeper.org o
     WHERE o.id = p_org_id;
$$;
COMMENT ON FUNCTION orgkeeper.deprovisioning_context(uuid) IS
  'Daemon: what litellm.deprovision_org needs about an organization: its LiteLLM team id (litellm_team_id, else the org id), its provisioning status (the team is deleted only while it is deprovisioning) and name. No row = the org is gone (a DBA deleted it directly; its trigger wrote the tombstone and enqueued litellm.delete_team).';

CREATE OR REPLACE FUNCTION orgkeeper.record_org_deleted(p_action_id bigint, p_worker text, p_team jsonb)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_action  orgkeeper.pending_external_actions;
    v_org     orgkeeper.org;
    v_late    jsonb;
    v_cleanup jsonb;
BEGIN
    -- Lock order everywhere: the org row, then the action row. The org row
    -- is locked FOR UPDATE: it is about to be deleted.
    SELECT * INTO v_action FROM orgkeeper.pending_external_actions a WHERE a.id = p_action_id;
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = v_action.org_id FOR UPDATE;
    IF NOT orgkeeper.hold_action(p_action_id, p_worker) THEN
        RETURN 'lease_lost';
    END IF;
    IF v_org.id IS NULL THEN
        -- Deleted directly meanwhile: that DELETE wrote the tombstone.
        PERFORM orgkeeper.complete_action(p_action_id, p_worker,
            jsonb_build_object('team', p_team, 'org_gone', true));
        RETURN 'org_gone';
    END IF;
    IF v_org.provisioning_status <> 'deprovisioning' THEN
        RETURN 'not_deprovisioning';
    END IF;
    -- Rows the daemon itself attached after delete_org (e.g. a Stripe
    -- customer whose creation was already queued) are released the same way.
    v_late := orgkeeper.release_org_rows(v_org.id);
    v_cleanup := jsonb_build_object('team', p_team,
                                    'rows', coalesce(v_action.payload -> 'rows', '{}'::jsonb),
                                    'action_id', p_action_id);
    IF v_late <> '{}'::jsonb THEN
        v_cleanup := v_cleanup || jsonb_build_object('rows_released_at_deletion', v_late);
    END IF;
    INSERT INTO orgkeeper.org_deleted (id, name, kind, created_by, deleted_by, deleted_via, requested_at, cleanup)
    VALUES (v_org.id, v_org.name, v_org.kind, v_org.created_by, v_org.deletion_requested_by, 'delete_org',
            v_org.deletion_requested_at, v_cleanup);
    -- The tombstone is written: org_after_delete must neither write another
    -- nor enqueue litellm.delete_team (the team was just dealt with).
    PERFORM set_config('orgkeeper.finishing_deletion', v_org.id::text, true);
    DELETE FROM orgkeeper.org o WHERE o.id = v_org.id;
    PERFORM set_config('orgkeeper.finishing_deletion', '', true);
    PERFORM orgkeeper.complete_action(p_action_id, p_worker, v_cleanup);
    RETURN 'done';
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_org_deleted(bigint, text, jsonb) IS
  'Daemon: finishes litellm.deprovision_org after the team''s cleanup (p_team: its report) in one transaction fenced on the lease: releases related rows attached meanwhile, writes the tombstone into orgkeeper.org_deleted, deletes the org row (memberships and invitations cascade) and marks the action done with the cleanup. Returns done, org_gone (a DBA deleted the row directly; the action is done), not_deprovisioning (nothing written) or lease_lost (nothing written). SECURITY DEFINER: the daemon role itself deletes nothing.';

CREATE OR REPLACE FUNCTION orgkeeper.record_team_deleted(p_action_id bigint, p_worker text, p_result jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
BEGIN
    SELECT a.org_id INTO v_org_id FROM orgkeeper.pending_external_actions a WHERE a.id = p_action_id;
    IF NOT orgkeeper.complete_action(p_action_id, p_worker, p_result) THEN
        RETURN false;
    END IF;
    UPDATE orgkeeper.org_deleted d
       SET cleanup = d.cleanup || jsonb_build_object('team', p_result)
     WHERE d.id = v_org_id AND d.cleanup ->> 'action_id' = p_action_id::text;
    RETURN true;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_team_deleted(bigint, text, jsonb) IS
  'Daemon: marks litellm.delete_team done with the team''s report and writes that report into the tombstone of the direct DELETE that enqueued it (cleanup.team), in one transaction fenced on the lease. False = lease lost, nothing written.';
