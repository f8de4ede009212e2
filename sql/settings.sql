-- settings.sql — OpenHands' settings versions (migrations/V9): the current
-- version, the default model path, and moving an organization forward.

-- plpgsql: an aggregate keeps a SQL function from being inlined, and a
-- non-inlined SQL function is planned again at every call (every org insert).
CREATE OR REPLACE FUNCTION orgkeeper.current_settings_version() RETURNS integer
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT max(version) FROM orgkeeper.settings_version);
END;
$$;
COMMENT ON FUNCTION orgkeeper.current_settings_version() IS
  'The current (highest) settings version; new organizations start there.';

-- plpgsql for the same reason (every provisioning and migrated user reads it).
CREATE OR REPLACE FUNCTION orgkeeper.default_llm_model(p_version integer DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT 'litellm_proxy/' || v.default_model
              FROM orgkeeper.settings_version v
             WHERE v.version = coalesce(p_version, (SELECT max(version) FROM orgkeeper.settings_version)));
END;
$$;
COMMENT ON FUNCTION orgkeeper.default_llm_model(integer) IS
  'The model path (litellm_proxy/<model>) of a settings version, of the current one when NULL; NULL for an unknown version.';

CREATE OR REPLACE FUNCTION orgkeeper.upgrade_org_settings(org_id uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org     orgkeeper.org;
    v_current integer := orgkeeper.current_settings_version();
    v_follows boolean;
BEGIN
    IF $1 IS NULL THEN
        RAISE EXCEPTION 'upgrade_org_settings: org_id is NULL' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'name the organization to move to the current settings version';
    END IF;
    SELECT * INTO v_org FROM orgkeeper.org o WHERE o.id = $1 FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % does not exist', $1 USING ERRCODE = 'no_data_found';
    END IF;
    IF v_org.org_version >= v_current THEN
        RETURN jsonb_build_object('status', 'current', 'org_version', v_org.org_version);
    END IF;
    -- The model follows the version unless the organization chose its own:
    -- one other than its version's default (or none yet).
    v_follows := v_org.llm_model IS NULL OR v_org.llm_model = orgkeeper.default_llm_model(v_org.org_version);
    UPDATE orgkeeper.org o
       SET org_version = v_current,
           llm_model = CASE WHEN v_follows THEN orgkeeper.default_llm_model(v_current) ELSE o.llm_model END
     WHERE o.id = v_org.id;
    RETURN jsonb_build_object('status', 'upgraded', 'from_version', v_org.org_version, 'org_version', v_current,
                              'model_followed', v_follows,
                              'llm_model', CASE WHEN v_follows THEN orgkeeper.default_llm_model(v_current) ELSE v_org.llm_model END);
END;
$$;
COMMENT ON FUNCTION orgkeeper.upgrade_org_settings(uuid) IS
  'DBA: moves an organization whose settings version is behind to the current one; its model follows (litellm_proxy/<current default>) unless it set its own. Returns {"status": "upgraded" | "current", ...}. Unknown organization: P0002; NULL: 22004.';
