-- billing.sql — what billing changes in an organization: a completed
-- billing session enables BYOR export, and a top-up moves the team's budget
-- at LiteLLM (through the outbox).

CREATE OR REPLACE FUNCTION orgkeeper.billing_session_completed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    IF NEW.status = 'completed' AND NEW.org_id IS NOT NULL THEN
        UPDATE orgkeeper.org o SET byor_export_enabled = true
         WHERE o.id = NEW.org_id AND NOT o.byor_export_enabled;
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.billing_session_completed() IS
  'Trigger: a completed billing session of an organization turns its byor_export_enabled on (as OpenHands does after a payment).';

DROP TRIGGER IF EXISTS billing_session_completed ON orgkeeper.billing_sessions;
CREATE TRIGGER billing_session_completed
    AFTER INSERT OR UPDATE OF status, org_id ON orgkeeper.billing_sessions
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.billing_session_completed();

CREATE OR REPLACE FUNCTION orgkeeper.set_org_budget(org_id uuid, max_budget double precision) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org orgkeeper.org;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'set_org_budget: org_id is NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'name the organization whose LiteLLM budget to set';
    END IF;
    IF $2 IS NOT NULL AND ($2 < 0 OR $2 = 'NaN'::double precision OR $2 = 'Infinity'::double precision) THEN
        RAISE EXCEPTION 'set_org_budget: a budget must be a finite amount of USD >= 0, not %', $2
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'pass NULL for an unlimited budget';
    END IF;
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = $1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF v_org.provisioning_status NOT IN ('pending', 'active') THEN
        RAISE EXCEPTION 'organization "%" is %: its budget cannot be set', v_org.name, v_org.provisioning_status
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'retry its provisioning first (orgkeeper actions list --org ...)';
    END IF;
    RETURN orgkeeper.enqueue_action('litellm.set_budget', v_org.id, NULL,
        jsonb_build_object('team_id', coalesce(v_org.litellm_team_id, v_org.id::text), 'max_budget', $2));
END;
$$;
COMMENT ON FUNCTION orgkeeper.set_org_budget(uuid, double precision) IS
  'Billing / DBA: propagates a top-up: enqueues litellm.set_budget, which sets the team''s max_budget at LiteLLM, then every active member''s max_budget_in_team (NULL = unlimited). Returns the action id. Refuses NULL org (22004), a negative or non-finite budget (22023), an unknown organization (P0002), one that is failed or being deleted (55000).';
