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

------------------------------------------------------------------------------
-- deployment settings (migrations/V10: orgkeeper.deployment_setting)
------------------------------------------------------------------------------
-- Generic: any setting the database acts on is read through this function
-- (billing below; an org-creation policy seeded from the environment may
-- follow). `orgkeeper migrate` writes the rows from the environment
-- (src/db.rs apply_deployment_settings).
-- plpgsql, planned once per session (a SQL function with a sub-select is
-- planned at every call), and without a SET clause (each one costs a
-- search_path change on the way in and out; org inserts read settings):
-- every name is schema-qualified instead, the operator included.
-- billing_enabled and policy_applies_to_personal_orgs (SQL-standard
-- bodies) depend on it: a DROP FUNCTION of it (to change its signature)
-- needs CASCADE, and the library must create them again after it.
CREATE OR REPLACE FUNCTION orgkeeper.get_deployment_setting(p_name text, p_default text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT s.value FROM orgkeeper.deployment_setting s WHERE s.name OPERATOR(pg_catalog.=) p_name),
                    p_default);
END;
$$;
COMMENT ON FUNCTION orgkeeper.get_deployment_setting(text, text) IS
  'The value of a deployment setting (table orgkeeper.deployment_setting), or p_default when it was never set. Not granted to the application; SECURITY DEFINER triggers read settings through it.';

-- SQL-standard body: bound at CREATE and inlined into its callers.
CREATE OR REPLACE FUNCTION orgkeeper.billing_enabled() RETURNS boolean
LANGUAGE sql STABLE
RETURN orgkeeper.get_deployment_setting('billing', 'off') = 'on';
COMMENT ON FUNCTION orgkeeper.billing_enabled() IS
  'True when deployment setting billing is on (ORGKEEPER_BILLING=on at the last orgkeeper migrate that set it, or a DBA''s UPDATE); off when never set.';

------------------------------------------------------------------------------
-- a billing customer for every new team organization (stripe.create_customer)
------------------------------------------------------------------------------
-- Fires after org_after_insert (triggers of one event fire in name order),
-- so the owner's users row exists and the provisioning action comes first;
-- both share the org as subject, so the customer is created once
-- provisioning has finished (whatever its outcome).
CREATE OR REPLACE FUNCTION orgkeeper.org_billing_customer() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_email text;
BEGIN
    IF NEW.kind <> 'team' OR NOT orgkeeper.billing_enabled() THEN
        RETURN NULL;
    END IF;
    -- Only a verified address goes to Stripe; without one the customer is
    -- created without an email.
    SELECT CASE WHEN u.email_verified THEN nullif(btrim(u.email), '') END INTO v_email
      FROM orgkeeper.users u WHERE u.id = NEW.created_by;
    -- The customer's parameters are fixed here, once: every attempt of the
    -- action sends the same ones, as Stripe requires of a reused
    -- Idempotency-Key (a later rename does not change this action).
    PERFORM orgkeeper.enqueue_action('stripe.create_customer', NEW.id, NEW.created_by,
        jsonb_build_object('org_id', NEW.id, 'owner_id', NEW.created_by, 'name', NEW.name, 'email', v_email));
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_billing_customer() IS
  'Trigger: when deployment setting billing is on, a new team organization enqueues stripe.create_customer {org_id, owner_id, name, email} (email: the owner''s address only when users.email_verified, else null). Personal organizations get none.';

DROP TRIGGER IF EXISTS org_billing_customer ON orgkeeper.org;
CREATE TRIGGER org_billing_customer
    AFTER INSERT ON orgkeeper.org
    FOR EACH ROW WHEN (NEW.kind = 'team')
    EXECUTE FUNCTION orgkeeper.org_billing_customer();

CREATE OR REPLACE FUNCTION orgkeeper.billing_customer_context(p_org_id uuid)
RETURNS TABLE (org_name text, org_kind text, recorded_customer_ids text[])
LANGUAGE sql STABLE AS $$
    SELECT o.name, o.kind,
           coalesce((SELECT array_agg(s.stripe_customer_id ORDER BY s.id)
                       FROM orgkeeper.stripe_customers s WHERE s.org_id = o.id), '{}')
      FROM orgkeeper.org o
     WHERE o.id = p_org_id AND o.provisioning_status <> 'deprovisioning';
$$;
COMMENT ON FUNCTION orgkeeper.billing_customer_context(uuid) IS
  'Daemon: what stripe.create_customer checks before calling Stripe: the organization''s name and kind and the Stripe customers already recorded for it (oldest first). No row = the organization is gone or being deleted (deprovisioning).';

CREATE OR REPLACE FUNCTION orgkeeper.record_billing_customer(
    p_action_id bigint, p_worker text, p_customer_id text, p_user_id uuid, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_org_id uuid;
    v_org_exists boolean;
BEGIN
    IF p_customer_id IS NULL OR p_customer_id = '' THEN
        RAISE EXCEPTION 'record_billing_customer: the Stripe customer id is empty'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- Lock order everywhere: the org row (serialises this organization's
    -- customer writes and its deletion), then the action row.
    v_org_id := orgkeeper.lock_action_org(p_action_id);
    IF NOT orgkeeper.hold_action(p_action_id, p_worker) THEN
        RETURN 'lease_lost';
    END IF;
    -- An organization being deleted (deprovisioning) counts as gone: its
    -- customers were detached by delete_org.
    v_org_exists := EXISTS (SELECT 1 FROM orgkeeper.org o
                             WHERE o.id = v_org_id AND o.provisioning_status <> 'deprovisioning');
    IF v_org_exists THEN
        INSERT INTO orgkeeper.stripe_customers (user_id, org_id, stripe_customer_id)
        SELECT p_user_id, v_org_id, p_customer_id
         WHERE NOT EXISTS (SELECT 1 FROM orgkeeper.stripe_customers s
                            WHERE s.org_id = v_org_id AND s.stripe_customer_id = p_customer_id);
    ELSE
        -- The organization was deleted while Stripe answered: keep the
        -- customer as a detached financial record, as delete_org does with
        -- the customers of an organization it deletes.
        INSERT INTO orgkeeper.stripe_customers (user_id, org_id, detached_from_org, stripe_customer_id)
        SELECT p_user_id, NULL, v_org_id, p_customer_id
         WHERE NOT EXISTS (SELECT 1 FROM orgkeeper.stripe_customers s
                            WHERE s.org_id IS NULL AND s.stripe_customer_id = p_customer_id);
    END IF;
    PERFORM orgkeeper.complete_action(p_action_id, p_worker,
        coalesce(p_result, '{}'::jsonb) || jsonb_build_object('recorded', CASE WHEN v_org_exists THEN 'org' ELSE 'detached' END));
    RETURN CASE WHEN v_org_exists THEN 'done' ELSE 'org_gone' END;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_billing_customer(bigint, text, text, uuid, jsonb) IS
  'Daemon: records the Stripe customer of a stripe.create_customer action in stripe_customers (user_id = p_user_id, org_id = the action''s org; no second row for the same org and customer) and marks the action done, in one transaction fenced on the lease. Returns done, org_gone (the org was deleted or is being deleted meanwhile: the customer is recorded detached, org_id NULL, and the action is done) or lease_lost (nothing written).';
