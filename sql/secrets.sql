-- secrets.sql — where credentials live, for the daemon's re-encryption.
--
-- The database never decrypts: user migration records where legacy
-- ciphertext now lives ({table, column, key}) and the daemon reads it,
-- re-encrypts it with the current key, and swaps it in only if it is still
-- the value it read (compare-and-set), so a retry or a concurrent writer
-- never loses a value.

CREATE OR REPLACE FUNCTION orgkeeper.secret_row_filter(p_table text, p_column text, p_key jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_filter text;
BEGIN
    IF (p_table, p_column) NOT IN (
        ('org', 'llm_api_key'), ('org', 'llm_api_key_for_byor'), ('org', 'search_api_key'), ('org', 'sandbox_api_key'),
        ('org_member', 'llm_api_key'), ('custom_secrets', 'secret_value'), ('gitlab_webhook', 'webhook_secret')) THEN
        RAISE EXCEPTION '%.% is not a column that holds an encrypted secret', p_table, p_column
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('%I = %L', k, v), ' AND ' ORDER BY k) INTO v_filter
      FROM jsonb_each_text(p_key) AS e(k, v);
    IF v_filter IS NULL THEN
        RAISE EXCEPTION 'no row key given for %.%', p_table, p_column USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_filter;
END;
$$;
COMMENT ON FUNCTION orgkeeper.secret_row_filter(text, text, jsonb) IS
  'Internal: the WHERE clause selecting one secret-holding row from a {column: value} key; refuses columns that are not encrypted secrets.';

CREATE OR REPLACE FUNCTION orgkeeper.read_secret(p_table text, p_column text, p_key jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_value text;
BEGIN
    EXECUTE format('SELECT %I FROM orgkeeper.%I WHERE %s', p_column, p_table,
                   orgkeeper.secret_row_filter(p_table, p_column, p_key))
       INTO v_value;
    RETURN v_value;
END;
$$;
COMMENT ON FUNCTION orgkeeper.read_secret(text, text, jsonb) IS
  'Daemon: the ciphertext stored at {table, column, key} (NULL when the row or value is gone).';

CREATE OR REPLACE FUNCTION orgkeeper.replace_secret(p_table text, p_column text, p_key jsonb, p_old text, p_new text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_rows integer;
BEGIN
    EXECUTE format('UPDATE orgkeeper.%I SET %I = $2 WHERE %s AND %I = $1', p_table, p_column,
                   orgkeeper.secret_row_filter(p_table, p_column, p_key), p_column)
      USING p_old, p_new;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows > 0;
END;
$$;
COMMENT ON FUNCTION orgkeeper.replace_secret(text, text, jsonb, text, text) IS
  'Daemon: compare-and-set of one ciphertext: writes p_new only where the value is still p_old. Returns whether it wrote.';

CREATE OR REPLACE FUNCTION orgkeeper.read_secrets(p_items jsonb)
RETURNS TABLE (item jsonb, value text)
LANGUAGE sql STABLE AS $$
    SELECT i, orgkeeper.read_secret(i ->> 'table', i ->> 'column', i -> 'key')
      FROM jsonb_array_elements(p_items) AS i;
$$;
COMMENT ON FUNCTION orgkeeper.read_secrets(jsonb) IS
  'Daemon: the ciphertext at each {table, column, key} item of p_items, in one round trip.';

CREATE OR REPLACE FUNCTION orgkeeper.record_reencrypted(p_action_id bigint, p_worker text, p_swaps jsonb, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_user uuid;
    v_swap jsonb;
BEGIN
    SELECT user_id INTO v_user
      FROM orgkeeper.pending_external_actions
     WHERE id = p_action_id AND locked_by = p_worker AND status = 'running'
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'lease_lost';
    END IF;
    -- A rolled-back migration has put the legacy values back on purpose.
    IF NOT EXISTS (SELECT 1 FROM orgkeeper.user_migration WHERE user_id = v_user AND status = 'migrated') THEN
        PERFORM orgkeeper.complete_action(p_action_id, p_worker,
            p_result || jsonb_build_object('skipped', 'the migration was rolled back'));
        RETURN 'skipped';
    END IF;
    FOR v_swap IN SELECT * FROM jsonb_array_elements(p_swaps) LOOP
        IF NOT orgkeeper.replace_secret(v_swap ->> 'table', v_swap ->> 'column', v_swap -> 'key',
                                        v_swap ->> 'old', v_swap ->> 'new') THEN
            RAISE EXCEPTION '%.% changed while it was being re-encrypted', v_swap ->> 'table', v_swap ->> 'column'
                USING ERRCODE = 'serialization_failure', HINT = 'the daemon retries the action';
        END IF;
    END LOOP;
    PERFORM orgkeeper.complete_action(p_action_id, p_worker, p_result);
    RETURN 'done';
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_reencrypted(bigint, text, jsonb, jsonb) IS
  'Daemon: swaps in every re-encrypted value of a secrets.reencrypt action by compare-and-set and marks it done, in one transaction fenced on the lease. A value changed meanwhile rolls everything back (40001, retried); a rolled-back migration writes nothing (skipped). Returns done, skipped or lease_lost.';

------------------------------------------------------------------------------
-- who reads which ciphertext (the application role has no SELECT on key
-- columns; sql/rls.sql)
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.my_llm_api_key(org_id uuid) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_user   uuid := orgkeeper.current_app_user();
    v_org_id uuid := $1;
    v_key    text;
BEGIN
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'my_llm_api_key: orgkeeper.user_id is not set, so there is no "my" key in organization %', v_org_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'start the transaction with: SET LOCAL orgkeeper.user_id = ''<uuid of the acting user>''';
    END IF;
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('my_llm_api_key', 'org_id'); END IF;
    SELECT m.llm_api_key INTO v_key FROM orgkeeper.org_member m
     WHERE m.org_id = v_org_id AND m.user_id = v_user AND m.status = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'my_llm_api_key: user % is not an active member of organization %', v_user, v_org_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a member reads only their own key, in an organization they are an active member of';
    END IF;
    RETURN v_key;
END;
$$;
COMMENT ON FUNCTION orgkeeper.my_llm_api_key(uuid) IS
  'The acting user''s (orgkeeper.user_id) own LiteLLM key ciphertext in an organization (org_member.llm_api_key of their own active membership; NULL until provisioned). Another member''s key is never returned: the application has no SELECT on key columns. 42501 when orgkeeper.user_id is unset or the user is not an active member; 22004 for NULL.';

CREATE OR REPLACE FUNCTION orgkeeper.org_secrets(actor uuid, org_id uuid)
RETURNS TABLE (llm_api_key text, llm_api_key_for_byor text, search_api_key text, sandbox_api_key text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor uuid := $1;
    v_org   orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'org_secrets');
    IF $2 IS NULL THEN PERFORM orgkeeper.refuse_null('org_secrets', 'org_id'); END IF;
    v_org := orgkeeper.find_org($2);
    PERFORM orgkeeper.require_manager(v_actor, v_org, 'read its keys');
    RETURN QUERY SELECT v_org.llm_api_key, v_org.llm_api_key_for_byor, v_org.search_api_key, v_org.sandbox_api_key;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_secrets(uuid, uuid) IS
  'The organization-level key ciphertext (org.llm_api_key, llm_api_key_for_byor, search_api_key, sandbox_api_key), for its active owners and admins only (42501 otherwise, and for acting as another user); unknown organization P0002; NULL arguments 22004.';
