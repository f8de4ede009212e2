-- secrets.sql — where credentials live, for the daemon's re-encryption and
-- for key rotation (orgkeeper secrets rotate).
--
-- The database never decrypts: user migration records where legacy
-- ciphertext now lives ({table, column, key}) and the daemon reads it,
-- re-encrypts it with the current key, and swaps it in only if it is still
-- the value it read (compare-and-set), so a retry or a concurrent writer
-- never loses a value. Rotation walks every secret column the same way.
--
-- orgkeeper.secret_columns() is the one list of secret-holding columns:
-- every function here, and the rotation, read it. Adding a secret column is
-- one line there.

CREATE OR REPLACE FUNCTION orgkeeper.secret_columns()
RETURNS TABLE (table_name text, column_name text, key_columns text[])
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    VALUES
        ('org',                      'llm_api_key',          ARRAY['id']),
        ('org',                      'llm_api_key_for_byor', ARRAY['id']),
        ('org',                      'search_api_key',       ARRAY['id']),
        ('org',                      'sandbox_api_key',      ARRAY['id']),
        ('org_member',               'llm_api_key',          ARRAY['org_id', 'user_id']),
        ('org_member',               'llm_api_key_for_byor', ARRAY['org_id', 'user_id']),
        ('custom_secrets',           'secret_value',         ARRAY['id']),
        ('gitlab_webhook',           'webhook_secret',       ARRAY['id']),
        ('pending_external_actions', 'progress.key',         ARRAY['id'])
$$;
COMMENT ON FUNCTION orgkeeper.secret_columns() IS
  'Daemon: the one list of places holding encrypted secrets: table (in schema orgkeeper), column ("<jsonb column>.<field>" for a text field of a jsonb column), and the primary-key columns whose values, as text joined by "/" in this order, are the row key of the ciphertext''s associated data orgkeeper:<table>.<column>:<row key> (README, "Secrets"). secret_column (secrets_after, swap_secrets, secret_inventory, and the generation of read_secret and replace_secret) and orgkeeper secrets rotate all read it.';

DROP FUNCTION IF EXISTS orgkeeper.secret_place(text, text);

CREATE OR REPLACE FUNCTION orgkeeper.secret_column(p_table text, p_column text,
    OUT key_columns text[], OUT key_types text[], OUT value_sql text, OUT assign_sql text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_stored text := split_part(p_column, '.', 1);
    v_field  text := nullif(split_part(p_column, '.', 2), '');
BEGIN
    SELECT c.key_columns INTO key_columns
      FROM orgkeeper.secret_columns() c
     WHERE c.table_name = p_table AND c.column_name = p_column;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%.% is not a column that holds an encrypted secret', p_table, p_column
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the secret columns are listed by orgkeeper.secret_columns()';
    END IF;
    -- Without the typmod: the types are used in casts, and a cast to
    -- varchar(n) would truncate a key silently.
    SELECT array_agg(format_type(a.atttypid, NULL) ORDER BY k.ord) INTO key_types
      FROM unnest(key_columns) WITH ORDINALITY AS k(name, ord)
      JOIN pg_attribute a ON a.attrelid = format('orgkeeper.%I', p_table)::regclass
                         AND a.attname = k.name AND NOT a.attisdropped;
    IF v_field IS NULL THEN
        value_sql  := format('%I', v_stored);
        assign_sql := format('%I = %%s', v_stored);
    ELSE
        value_sql  := format('(%I ->> %L)', v_stored, v_field);
        assign_sql := format('%I = jsonb_set(%I, %L, to_jsonb(%%s))', v_stored, v_stored, ARRAY[v_field]);
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.secret_column(text, text) IS
  'Internal: how to reach the secret p_column of p_table (an entry of secret_columns): its key columns and their types, the SQL expression of the ciphertext, and an assignment template (format() with one %s for the new value). Refuses columns that are not encrypted secrets (22023).';

-- read_secret and replace_secret reach one ciphertext at a time, and
-- secrets.reencrypt makes several of each per migrated user. They are
-- generated from secret_columns below: one static statement per place, so a
-- session plans each once and reuses the plan. (Built with EXECUTE at every
-- call, the statement was planned at every call: a read cost ~10x and a
-- compare-and-set ~2x what the static statement does.) The generated bodies
-- are in tests/fixtures/orgkeeper_schema.sql and in \sf.
DROP FUNCTION IF EXISTS orgkeeper.secret_row_filter(text, text, jsonb);

CREATE OR REPLACE FUNCTION orgkeeper.refuse_row_key(p_table text, p_column text, p_key jsonb, p_key_columns text[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the row key % does not name a row of orgkeeper.%: the key of %.% is {%}',
                    coalesce(p_key::text, 'NULL'), p_table, p_table, p_column, array_to_string(p_key_columns, ', ')
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'give exactly the primary-key columns, as in orgkeeper.secret_columns(): {"column": value, ...}';
END;
$$;
COMMENT ON FUNCTION orgkeeper.refuse_row_key(text, text, jsonb, text[]) IS
  'Internal: raises 22023 for a row key of a secret place (read_secret, replace_secret) that is not a JSON object of exactly the primary-key columns p_key_columns.';

DO $generate$
DECLARE
    v_read    text := '';
    v_replace text := '';
    v_check   text;
    v_p       record;
    -- A column that is no secret is refused by secret_column (22023). One
    -- that secret_columns lists but these bodies lack (the list changed and
    -- the library was not applied since) must not read as NULL or report a
    -- write that did not happen.
    v_else    CONSTANT text := $t$
        PERFORM orgkeeper.secret_column(p_table, p_column);
        RAISE EXCEPTION '%.% is a secret column, but this function was generated without it', p_table, p_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run orgkeeper migrate: it generates read_secret and replace_secret from orgkeeper.secret_columns() again';$t$;
BEGIN
    FOR v_p IN
        SELECT c.table_name, c.column_name, p.value_sql, p.assign_sql, p.key_columns,
               (SELECT string_agg(format('%I = (p_key ->> %L)::%s', k, k, t), ' AND ' ORDER BY o)
                  FROM unnest(p.key_columns, p.key_types) WITH ORDINALITY AS u(k, t, o)) AS match
          FROM orgkeeper.secret_columns() c
         CROSS JOIN LATERAL orgkeeper.secret_column(c.table_name, c.column_name) p
    LOOP
        v_check := format($t$
    WHEN p_table = %L AND p_column = %L THEN
        IF (p_key ?& %L AND p_key - %L::text[] = '{}') IS NOT TRUE THEN
            PERFORM orgkeeper.refuse_row_key(p_table, p_column, p_key, %L);
        END IF;$t$,
                          v_p.table_name, v_p.column_name, v_p.key_columns, v_p.key_columns, v_p.key_columns);
        v_read := v_read || v_check || format($t$
        RETURN (SELECT %s FROM orgkeeper.%I WHERE %s);$t$,
                          v_p.value_sql, v_p.table_name, v_p.match);
        v_replace := v_replace || v_check || format($t$
        UPDATE orgkeeper.%I SET %s WHERE %s AND %s = p_old;$t$,
                          v_p.table_name, format(v_p.assign_sql, 'p_new'), v_p.match, v_p.value_sql);
    END LOOP;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION orgkeeper.read_secret(p_table text, p_column text, p_key jsonb) RETURNS text
LANGUAGE plpgsql STABLE AS $body$
-- Generated by sql/secrets.sql from orgkeeper.secret_columns().
BEGIN
    CASE%s
    ELSE%s
    END CASE;
END;
$body$$f$, v_read, v_else);
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION orgkeeper.replace_secret(p_table text, p_column text, p_key jsonb, p_old text, p_new text)
RETURNS boolean
LANGUAGE plpgsql AS $body$
-- Generated by sql/secrets.sql from orgkeeper.secret_columns().
BEGIN
    CASE%s
    ELSE%s
    END CASE;
    RETURN FOUND;
END;
$body$$f$, v_replace, v_else);
END
$generate$;
COMMENT ON FUNCTION orgkeeper.read_secret(text, text, jsonb) IS
  'Daemon: the ciphertext stored at {table, column, key} (NULL when the row or value is gone). key is {primary-key column: value} (22023 otherwise, and for a column that is not a secret). Generated from secret_columns: one static statement per place.';
COMMENT ON FUNCTION orgkeeper.replace_secret(text, text, jsonb, text, text) IS
  'Daemon: compare-and-set of one ciphertext: writes p_new only where the value is still p_old. Returns whether it wrote. key as for read_secret (22023 otherwise). Generated from secret_columns: one static statement per place.';

-- Rotation (orgkeeper secrets rotate): keyset pages of one secret column,
-- then a compare-and-set of the re-encrypted values of a page.

CREATE OR REPLACE FUNCTION orgkeeper.secret_inventory()
RETURNS TABLE (table_name text, column_name text, stored bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_col record;
BEGIN
    FOR v_col IN SELECT c.table_name, c.column_name FROM orgkeeper.secret_columns() c LOOP
        table_name  := v_col.table_name;
        column_name := v_col.column_name;
        EXECUTE format('SELECT count(*) FROM orgkeeper.%I WHERE %s IS NOT NULL', v_col.table_name,
                       (orgkeeper.secret_column(v_col.table_name, v_col.column_name)).value_sql)
           INTO stored;
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION orgkeeper.secret_inventory() IS
  'Daemon: every secret column of secret_columns, in its order, with the number of ciphertexts stored there (non-NULL values).';

CREATE OR REPLACE FUNCTION orgkeeper.secrets_after(p_table text, p_column text, p_after text[], p_limit integer)
RETURNS TABLE (row_key text[], value text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_col    record;
    v_keys   text;
    v_texts  text;
    v_cursor text;
BEGIN
    SELECT * INTO v_col FROM orgkeeper.secret_column(p_table, p_column);
    SELECT string_agg(format('%I', k), ', ' ORDER BY o), string_agg(format('%I::text', k), ', ' ORDER BY o),
           string_agg(format('$1[%s]::%s', o, v_col.key_types[o]), ', ' ORDER BY o)
      INTO v_keys, v_texts, v_cursor
      FROM unnest(v_col.key_columns) WITH ORDINALITY AS u(k, o);
    RETURN QUERY EXECUTE format(
        'SELECT ARRAY[%s], %s FROM orgkeeper.%I WHERE %s IS NOT NULL%s ORDER BY %s LIMIT $2',
        v_texts, v_col.value_sql, p_table, v_col.value_sql,
        CASE WHEN p_after IS NULL THEN '' ELSE format(' AND (%s) > (%s)', v_keys, v_cursor) END,
        v_keys)
      USING p_after, p_limit;
END;
$$;
COMMENT ON FUNCTION orgkeeper.secrets_after(text, text, text[], integer) IS
  'Daemon: the next page of at most p_limit stored ciphertexts of p_table.p_column (an entry of secret_columns), in primary-key order after the key p_after (its values as text, in key_columns order; NULL = from the start): each row''s key values as text and the ciphertext. NULL values are skipped.';

CREATE OR REPLACE FUNCTION orgkeeper.swap_secrets(p_table text, p_column text, p_swaps jsonb)
RETURNS TABLE (row_key text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_col   record;
    v_match text;
BEGIN
    SELECT * INTO v_col FROM orgkeeper.secret_column(p_table, p_column);
    SELECT string_agg(format('%I = s.row_key[%s]::%s', k, o, v_col.key_types[o]), ' AND ' ORDER BY o)
      INTO v_match
      FROM unnest(v_col.key_columns) WITH ORDINALITY AS u(k, o);
    RETURN QUERY EXECUTE format(
        'UPDATE orgkeeper.%I SET %s
           FROM jsonb_to_recordset($1) AS s(row_key text[], old_value text, new_value text)
          WHERE %s AND %s = s.old_value
         RETURNING s.row_key',
        p_table, format(v_col.assign_sql, 's.new_value'), v_match, v_col.value_sql)
      USING p_swaps;
END;
$$;
COMMENT ON FUNCTION orgkeeper.swap_secrets(text, text, jsonb) IS
  'Daemon: compare-and-set of a page of re-encrypted ciphertexts of p_table.p_column, in one statement: each {"row_key": [key values as text], "old_value": …, "new_value": …} of p_swaps is written only where the stored value is still old_value (a row changed meanwhile is left alone). Returns the keys of the rows written.';

CREATE OR REPLACE FUNCTION orgkeeper.read_secrets(p_items jsonb)
RETURNS TABLE (item jsonb, value text)
LANGUAGE sql STABLE AS $$
    SELECT i, orgkeeper.read_secret(i ->> 'table', i ->> 'column', i -> 'key')
      FROM jsonb_array_elements(p_items) AS i;
$$;
COMMENT ON FUNCTION orgkeeper.read_secrets(jsonb) IS
  'Daemon: the ciphertext at each {table, column, key} item of p_items, in one round trip.';

CREATE OR REPLACE FUNCTION orgkeeper.record_reencrypted_many(p_ids bigint[], p_workers text[], p_swaps jsonb[], p_results jsonb[])
RETURNS TABLE (action_id bigint, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    v_user          uuid;
    v_swap          jsonb;
    v_done_ids      bigint[] := '{}';
    v_done_workers  text[] := '{}';
    v_done_results  jsonb[] := '{}';
    v_verify_users  uuid[] := '{}';
BEGIN
    -- The daemon's batched write-back (one statement and one commit for the
    -- secrets.reencrypt actions finishing together): each row fenced on its
    -- own lease as record_reencrypted always was; the completions and the
    -- follow-up litellm.verify_key actions in one statement each (one outbox
    -- notification for the batch).
    FOR i IN 1 .. coalesce(cardinality(p_ids), 0) LOOP
        action_id := p_ids[i];
        SELECT a.user_id INTO v_user
          FROM orgkeeper.pending_external_actions a
         WHERE a.id = p_ids[i] AND a.locked_by = p_workers[i] AND a.status = 'running'
           FOR UPDATE;
        IF NOT FOUND THEN
            outcome := 'lease_lost';
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- A rolled-back migration has put the legacy values back on purpose.
        IF NOT EXISTS (SELECT 1 FROM orgkeeper.user_migration m WHERE m.user_id = v_user AND m.status = 'migrated') THEN
            v_done_ids := v_done_ids || p_ids[i];
            v_done_workers := v_done_workers || p_workers[i];
            v_done_results := v_done_results || (p_results[i] || jsonb_build_object('skipped', 'the migration was rolled back'));
            outcome := 'skipped';
            RETURN NEXT;
            CONTINUE;
        END IF;
        FOR v_swap IN SELECT * FROM jsonb_array_elements(p_swaps[i]) LOOP
            IF NOT orgkeeper.replace_secret(v_swap ->> 'table', v_swap ->> 'column', v_swap -> 'key',
                                            v_swap ->> 'old', v_swap ->> 'new') THEN
                RAISE EXCEPTION '%.% changed while it was being re-encrypted', v_swap ->> 'table', v_swap ->> 'column'
                    USING ERRCODE = 'serialization_failure', HINT = 'the daemon retries the action';
            END IF;
        END LOOP;
        -- The rollback copies of plaintext legacy values, sealed by the daemon
        -- as OpenHands seals credentials, replace the plaintext ones.
        IF jsonb_path_exists(p_swaps[i], '$[*].legacy_sealed') THEN
            UPDATE orgkeeper.user_migration m
               SET legacy_ciphertext = (
                    SELECT jsonb_agg(CASE WHEN s.legacy_sealed IS NULL THEN e
                                          ELSE e || jsonb_build_object('value', s.legacy_sealed) END
                                     ORDER BY x.ord)
                      FROM jsonb_array_elements(m.legacy_ciphertext) WITH ORDINALITY AS x(e, ord)
                      LEFT JOIN jsonb_to_recordset(p_swaps[i])
                             AS s("table" text, "column" text, key jsonb, old text, legacy_sealed text)
                        ON s."table" = e ->> 'table' AND s."column" = e ->> 'column'
                       AND s.key ->> 'id' = e ->> 'id' AND s.old = e ->> 'value')
             WHERE m.user_id = v_user;
        END IF;
        v_done_ids := v_done_ids || p_ids[i];
        v_done_workers := v_done_workers || p_workers[i];
        v_done_results := v_done_results || p_results[i];
        v_verify_users := v_verify_users || v_user;
        outcome := 'done';
        RETURN NEXT;
    END LOOP;
    -- Every row here is locked by this transaction under its lease: all land.
    PERFORM orgkeeper.complete_actions(v_done_ids, v_done_workers, v_done_results);
    -- Now that the members' keys are readable, check them (and replace those
    -- the proxy refuses).
    INSERT INTO orgkeeper.pending_external_actions (kind, org_id, user_id, payload)
    SELECT 'litellm.verify_key', u.user_id, u.user_id,
           jsonb_build_object('user_id', u.user_id, 'team_id', u.user_id::text, 'regenerate', true)
      FROM unnest(v_verify_users) WITH ORDINALITY AS u(user_id, ord)
     ORDER BY u.ord;
    RETURN;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_reencrypted_many(bigint[], text[], jsonb[], jsonb[]) IS
  'Daemon: record_reencrypted for several secrets.reencrypt actions in one statement (element i of each array belongs together; p_swaps[i] is the action''s array of swaps): per action, fenced on its own lease, every re-encrypted value swapped in by compare-and-set (a plaintext value''s rollback copy replaced by its legacy_sealed form), the action marked done and litellm.verify_key enqueued for the member''s key; a rolled-back migration writes nothing (skipped). A value changed meanwhile rolls the whole statement back (40001; the daemon then writes the rows one at a time, and that action retries). Returns each action''s outcome: done, skipped or lease_lost.';

CREATE OR REPLACE FUNCTION orgkeeper.record_reencrypted(p_action_id bigint, p_worker text, p_swaps jsonb, p_result jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    -- One action: the batched write-back with a batch of one (one place for the rules).
    RETURN (SELECT r.outcome FROM orgkeeper.record_reencrypted_many(ARRAY[p_action_id], ARRAY[p_worker],
                                                                     ARRAY[p_swaps], ARRAY[p_result]) r);
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_reencrypted(bigint, text, jsonb, jsonb) IS
  'Daemon: record_reencrypted_many for one action (the daemon batches its write-backs; this is for a batch of one and older daemons): swaps in every re-encrypted value of a secrets.reencrypt action by compare-and-set and marks it done, in one transaction fenced on the lease. A swap carrying legacy_sealed (a plaintext legacy value sealed as OpenHands seals credentials) also replaces that value''s rollback copy in user_migration.legacy_ciphertext, so no plaintext copy stays at rest. A value changed meanwhile rolls everything back (40001, retried); a rolled-back migration writes nothing (skipped). Once done it enqueues litellm.verify_key for the member''s key. Returns done, skipped or lease_lost.';

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
    IF EXISTS (SELECT 1 FROM orgkeeper.org o WHERE o.id = v_org_id AND o.provisioning_status = 'deprovisioning') THEN
        RAISE EXCEPTION 'organization % is being deleted', v_org_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'its LiteLLM team and the members'' keys are being deleted with it';
    END IF;
    RETURN v_key;
END;
$$;
COMMENT ON FUNCTION orgkeeper.my_llm_api_key(uuid) IS
  'The acting user''s (orgkeeper.user_id) own LiteLLM key ciphertext in an organization (org_member.llm_api_key of their own active membership; NULL until provisioned). Another member''s key is never returned: the application has no SELECT on key columns. 55000 when the organization is being deleted (deprovisioning); 42501 when orgkeeper.user_id is unset or the user is not an active member; 22004 for NULL.';

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
    -- A personal organization's credentials are its user's own: an admin
    -- they invited does not read them.
    IF v_org.kind = 'personal' AND v_actor <> v_org.created_by THEN
        RAISE EXCEPTION 'org_secrets: the keys of personal organization "%" are its user''s own; user % cannot read them', v_org.name, v_actor
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a member reads their own key with orgkeeper.my_llm_api_key(org_id)';
    END IF;
    RETURN QUERY SELECT v_org.llm_api_key, v_org.llm_api_key_for_byor, v_org.search_api_key, v_org.sandbox_api_key;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_secrets(uuid, uuid) IS
  'The organization-level key ciphertext (org.llm_api_key, llm_api_key_for_byor, search_api_key, sandbox_api_key), for its active owners and admins only — of a personal organization for its user only — (42501 otherwise, and for acting as another user); unknown organization P0002; NULL arguments 22004.';
