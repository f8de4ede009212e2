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
  'Daemon: the one list of places holding encrypted secrets: table (in schema orgkeeper), column ("<jsonb column>.<field>" for a text field of a jsonb column), and the primary-key columns whose values, as text joined by "/" in this order, are the row key of the ciphertext''s associated data orgkeeper:<table>.<column>:<row key> (README, "Secrets"). secret_column (secrets_after, swap_secrets, secret_inventory, and the generation of read_secret and replace_secrets) and orgkeeper secrets rotate all read it.';

DROP FUNCTION IF EXISTS orgkeeper.secret_place(text, text);
-- Its result's assign_sql became stored_column and write_sql (a changed
-- result type cannot be replaced in place).
DROP FUNCTION IF EXISTS orgkeeper.secret_column(text, text);

CREATE OR REPLACE FUNCTION orgkeeper.secret_column(p_table text, p_column text,
    OUT key_columns text[], OUT key_types text[], OUT value_sql text, OUT stored_column text, OUT write_sql text)
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
    stored_column := v_stored;
    IF v_field IS NULL THEN
        value_sql := format('%I', v_stored);
        write_sql := '%2$s';
    ELSE
        value_sql := format('(%I ->> %L)', v_stored, v_field);
        write_sql := format('jsonb_set(%%1$s, %L, to_jsonb(%%2$s))', ARRAY[v_field]);
    END IF;
END;
$$;
COMMENT ON FUNCTION orgkeeper.secret_column(text, text) IS
  'Internal: how to reach the secret p_column of p_table (an entry of secret_columns): its key columns and their types, the SQL expression of the ciphertext, the stored column it is written to, and that column''s new value as a template (format() with %1$s for the column''s current value and %2$s for the new ciphertext). Refuses columns that are not encrypted secrets (22023).';

-- read_secret reaches one ciphertext, and secrets.reencrypt reads several
-- per migrated user; replace_secrets swaps a batch of them. Both are
-- generated from secret_columns below: static statements, so a session
-- plans each once and reuses the plan. (Built with EXECUTE at every call,
-- the statement was planned at every call: a read cost ~10x and a
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
  'Internal: raises 22023 for a row key of a secret place (read_secret, replace_secrets) that is not a JSON object of exactly the primary-key columns p_key_columns.';

DO $generate$
DECLARE
    v_read    text := '';
    v_check   text;
    v_p       record;
    -- A column that is no secret is refused by secret_column (22023). One
    -- that secret_columns lists but this body lacks (the list changed and
    -- the library was not applied since) must not read as NULL.
    v_else    CONSTANT text := $t$
        PERFORM orgkeeper.secret_column(p_table, p_column);
        RAISE EXCEPTION '%.% is a secret column, but this function was generated without it', p_table, p_column
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run orgkeeper migrate: it generates read_secret from orgkeeper.secret_columns() again';$t$;
BEGIN
    FOR v_p IN
        SELECT c.table_name, c.column_name, p.value_sql, p.key_columns,
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
END
$generate$;
COMMENT ON FUNCTION orgkeeper.read_secret(text, text, jsonb) IS
  'Daemon: the ciphertext stored at {table, column, key} (NULL when the row or value is gone). key is {primary-key column: value} (22023 otherwise, and for a column that is not a secret). Generated from secret_columns: one static statement per place.';
-- replace_secret (one compare-and-set) gave way to replace_secrets.
DROP FUNCTION IF EXISTS orgkeeper.replace_secret(text, text, jsonb, text, text);

-- replace_secrets swaps many ciphertexts (a batch of secrets.reencrypt
-- actions) in one static statement per table, each row written once with
-- all of its swapped places: a personal org whose four keys are re-encrypted
-- gets one new row version, not four, and fires its row triggers once.
-- Generated from secret_columns as read_secret is.
DO $generate$
DECLARE
    v_places  text[] := '{}';
    v_tables  text := '';
    v_t       record;
    v_p       record;
    v_aggs    text;
    v_sets    text;
    v_checks  text;
    v_value   text;
    -- A row key in its columns' types (so {"id": 5} and {"id": "5"}, or a
    -- uuid in either case, name the same row): a CASE over the tables.
    v_row     text := '';
BEGIN
    FOR v_t IN
        SELECT c.table_name,
               string_agg(format('(s.key ->> %L)::%s AS key_%s', k.name, k.type, k.o), ', ' ORDER BY k.o) AS key_values,
               string_agg(format('(e -> ''key'' ->> %L)::%s', k.name, k.type), ', ' ORDER BY k.o) AS typed_key,
               string_agg(format('key_%s', k.o), ', ' ORDER BY k.o) AS key_list,
               string_agg(format('t.%I = r.key_%s', k.name, k.o), ' AND ' ORDER BY k.o) AS row_match,
               string_agg(format('r.key_%s', k.o), ', ' ORDER BY k.o) AS written_keys,
               string_agg(format('w.key_%s = s.key_%s', k.o, k.o), ' AND ' ORDER BY k.o) AS written_match
          FROM (SELECT DISTINCT ON (c.table_name) c.table_name, c.column_name, c.o
                  FROM orgkeeper.secret_columns() WITH ORDINALITY AS c(table_name, column_name, key_columns, o)
                 ORDER BY c.table_name, c.o) c
         CROSS JOIN LATERAL orgkeeper.secret_column(c.table_name, c.column_name) p
         CROSS JOIN LATERAL unnest(p.key_columns, p.key_types) WITH ORDINALITY AS k(name, type, o)
         GROUP BY c.table_name, c.o
         ORDER BY c.o
    LOOP
        v_row := v_row || format('
                                 WHEN %L THEN jsonb_build_array(%s)', v_t.table_name,
                                 v_t.typed_key);
        v_aggs := '';
        v_checks := '';
        v_sets := '';
        -- One assignment per stored column: several places in one jsonb
        -- column nest their writes.
        FOR v_p IN
            SELECT c.column_name, p.value_sql, p.stored_column, p.write_sql, c.o,
                   row_number() OVER (PARTITION BY p.stored_column ORDER BY c.o) AS nth,
                   count(*) OVER (PARTITION BY p.stored_column) AS in_column
              FROM orgkeeper.secret_columns() WITH ORDINALITY AS c(table_name, column_name, key_columns, o)
             CROSS JOIN LATERAL orgkeeper.secret_column(c.table_name, c.column_name) p
             WHERE c.table_name = v_t.table_name
             ORDER BY min(c.o) OVER (PARTITION BY p.stored_column), c.o
        LOOP
            v_places := v_places || format('%s.%s', v_t.table_name, v_p.column_name);
            v_aggs := v_aggs || format(',
                   min(s.old) FILTER (WHERE s."column" = %1$L) AS old_%2$s,
                   min(s.new) FILTER (WHERE s."column" = %1$L) AS new_%2$s', v_p.column_name, v_p.o);
            v_checks := v_checks || format('
               AND (r.old_%1$s IS NULL OR %2$s = r.old_%1$s)', v_p.o, v_p.value_sql);
            IF v_p.nth = 1 THEN
                v_value := format('t.%I', v_p.stored_column);
            END IF;
            v_value := format('CASE WHEN r.new_%s IS NULL THEN %s ELSE %s END', v_p.o, v_value,
                              format(v_p.write_sql, v_value, format('r.new_%s', v_p.o)));
            IF v_p.nth = v_p.in_column THEN
                v_sets := v_sets || CASE WHEN v_sets = '' THEN '' ELSE ',
                   ' END || format('%I = %s', v_p.stored_column, v_value);
            END IF;
        END LOOP;
        v_tables := v_tables || format($t$
    IF p_swaps @> %1$L THEN
        RETURN QUERY
        WITH s AS (
            SELECT s."column", s.key, s.old, s.new, %2$s
              FROM jsonb_to_recordset(p_swaps) AS s("table" text, "column" text, key jsonb, old text, new text)
             WHERE s."table" = %3$L
        ), r AS (
            SELECT %4$s%5$s
              FROM s GROUP BY %4$s
        ), w AS (
            UPDATE orgkeeper.%3$I t
               SET %6$s
              FROM r
             WHERE %7$s%8$s
            RETURNING %9$s
        )
        SELECT %3$L, s."column", s.key FROM s
         WHERE NOT EXISTS (SELECT 1 FROM w WHERE %10$s);
    END IF;$t$,
            jsonb_build_array(jsonb_build_object('table', v_t.table_name)), v_t.key_values, v_t.table_name,
            v_t.key_list, v_aggs, v_sets, v_t.row_match, v_checks, v_t.written_keys, v_t.written_match);
    END LOOP;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION orgkeeper.replace_secrets(p_swaps jsonb)
RETURNS TABLE (table_name text, column_name text, key jsonb)
LANGUAGE plpgsql AS $body$
-- Generated by sql/secrets.sql from orgkeeper.secret_columns().
#variable_conflict use_column
DECLARE
    v_bad record;
BEGIN
    IF jsonb_typeof(p_swaps) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'replace_secrets takes a JSON array of swaps, not %%', coalesce(jsonb_typeof(p_swaps), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'give [{"table": ..., "column": ..., "key": {...}, "old": ..., "new": ...}, ...]';
    END IF;
    -- The first swap that cannot be made, and why.
    SELECT v.* INTO v_bad
      FROM (SELECT x.ord, x.e ->> 'table' AS tbl, x.e ->> 'column' AS col, x.key, c.key_columns, x.times,
                   CASE WHEN c.table_name IS NULL THEN 'not_secret'
                        WHEN format('%%s.%%s', c.table_name, c.column_name) <> ALL (%1$L::text[]) THEN 'not_generated'
                        WHEN (x.key ?& c.key_columns AND x.key - c.key_columns = '{}') IS NOT TRUE THEN 'bad_key'
                        WHEN jsonb_typeof(x.e -> 'old') IS DISTINCT FROM 'string'
                          OR jsonb_typeof(x.e -> 'new') IS DISTINCT FROM 'string' THEN 'no_value'
                        WHEN x.times > 1 THEN 'twice' END AS fault
              FROM (SELECT e, e -> 'key' AS key, ord,
                           count(*) OVER (PARTITION BY e -> 'table', e -> 'column', CASE e ->> 'table'%3$s END) AS times
                      FROM jsonb_array_elements(p_swaps) WITH ORDINALITY AS a(e, ord)) x
              LEFT JOIN orgkeeper.secret_columns() c ON c.table_name = x.e ->> 'table' AND c.column_name = x.e ->> 'column') v
     WHERE v.fault IS NOT NULL
     ORDER BY v.ord
     LIMIT 1;
    CASE v_bad.fault
    WHEN 'not_secret' THEN
        PERFORM orgkeeper.secret_column(v_bad.tbl, v_bad.col);
    WHEN 'not_generated' THEN
        RAISE EXCEPTION '%%.%% is a secret column, but this function was generated without it', v_bad.tbl, v_bad.col
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run orgkeeper migrate: it generates replace_secrets from orgkeeper.secret_columns() again';
    WHEN 'bad_key' THEN
        PERFORM orgkeeper.refuse_row_key(v_bad.tbl, v_bad.col, v_bad.key, v_bad.key_columns);
    WHEN 'no_value' THEN
        RAISE EXCEPTION 'the swap of %%.%% at %% lacks its old or its new ciphertext', v_bad.tbl, v_bad.col, v_bad.key
            USING ERRCODE = 'null_value_not_allowed', HINT = 'give "old" (the value read) and "new" (the value to write) as strings';
    WHEN 'twice' THEN
        RAISE EXCEPTION 'the swaps name %%.%% at %% %% times', v_bad.tbl, v_bad.col, v_bad.key, v_bad.times
            USING ERRCODE = 'invalid_parameter_value', HINT = 'swap each place once';
    ELSE
        NULL;
    END CASE;%2$s
END;
$body$$f$, v_places, v_tables, v_row);
END
$generate$;
COMMENT ON FUNCTION orgkeeper.replace_secrets(jsonb) IS
  'Daemon: compare-and-set of many ciphertexts, one statement per table: each {table, column, key, old, new} of p_swaps (key as for read_secret) is written only where the value is still old, and a row is written once with all of its swaps or not at all. Returns the swaps that were not written (a value changed meanwhile or the row is gone). Refuses a column that is no secret or a bad key (22023), a place named twice (22023), a missing old or new (22004). Generated from secret_columns.';

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
        'UPDATE orgkeeper.%I SET %I = %s
           FROM jsonb_to_recordset($1) AS s(row_key text[], old_value text, new_value text)
          WHERE %s AND %s = s.old_value
         RETURNING s.row_key',
        p_table, v_col.stored_column, format(v_col.write_sql, quote_ident(v_col.stored_column), 's.new_value'),
        v_match, v_col.value_sql)
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
    v_held     bigint[];  -- positions whose token holds the lease
    v_users    uuid[];    -- each position's user while its migration stands, else NULL
    v_migrated bigint[];  -- the positions with a user there
    v_stale    record;
BEGIN
    -- The daemon's batched write-back (one statement and one commit for the
    -- secrets.reencrypt actions finishing together), set-based: org rows
    -- first, in key order, as every batched write-back; then the actions
    -- whose token holds the lease (hold_actions); every value of the batch
    -- swapped by one compare-and-set per table; the rollback copies, the
    -- completions and the follow-up litellm.verify_key actions in one
    -- statement each.
    PERFORM orgkeeper.lock_actions_orgs(p_ids);
    v_held := orgkeeper.hold_actions(p_ids, p_workers);
    -- A rolled-back migration has put the legacy values back on purpose.
    SELECT array_agg(CASE WHEN u.ord = ANY (v_held)
                           AND EXISTS (SELECT 1 FROM orgkeeper.user_migration m
                                        WHERE m.user_id = a.user_id AND m.status = 'migrated')
                          THEN a.user_id END
                     ORDER BY u.ord)
      INTO v_users
      FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
      LEFT JOIN orgkeeper.pending_external_actions a ON a.id = u.id;
    SELECT coalesce(array_agg(u.ord), '{}') INTO v_migrated
      FROM unnest(v_users) WITH ORDINALITY AS u(user_id, ord)
     WHERE u.user_id IS NOT NULL;
    -- Every value still as it was read, or nothing.
    SELECT * INTO v_stale
      FROM orgkeeper.replace_secrets((
            SELECT coalesce(jsonb_agg(e.swap ORDER BY u.ord, e.nth), '[]')
              FROM unnest(p_swaps) WITH ORDINALITY AS u(swaps, ord)
             CROSS JOIN LATERAL jsonb_array_elements(u.swaps) WITH ORDINALITY AS e(swap, nth)
             WHERE u.ord = ANY (v_migrated)))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%.% at % changed while it was being re-encrypted', v_stale.table_name, v_stale.column_name, v_stale.key
            USING ERRCODE = 'serialization_failure', HINT = 'the daemon retries the action';
    END IF;
    -- The rollback copies of plaintext legacy values, sealed by the daemon
    -- as OpenHands seals credentials, replace the plaintext ones.
    UPDATE orgkeeper.user_migration m
       SET legacy_ciphertext = (
            SELECT jsonb_agg(CASE WHEN s.legacy_sealed IS NULL THEN e
                                  ELSE e || jsonb_build_object('value', s.legacy_sealed) END
                             ORDER BY x.ord)
              FROM jsonb_array_elements(m.legacy_ciphertext) WITH ORDINALITY AS x(e, ord)
              LEFT JOIN jsonb_to_recordset(u.swaps)
                     AS s("table" text, "column" text, key jsonb, old text, legacy_sealed text)
                ON s."table" = e ->> 'table' AND s."column" = e ->> 'column'
               AND s.key ->> 'id' = e ->> 'id' AND s.old = e ->> 'value')
      FROM unnest(v_users, p_swaps) AS u(user_id, swaps)
     WHERE m.user_id = u.user_id AND jsonb_path_exists(u.swaps, '$[*].legacy_sealed');
    -- Every row here is locked by this transaction under its lease: all land.
    PERFORM orgkeeper.complete_actions(
                array_agg(u.id ORDER BY u.ord), array_agg(u.worker ORDER BY u.ord),
                array_agg(CASE WHEN u.ord = ANY (v_migrated) THEN u.result
                               ELSE u.result || jsonb_build_object('skipped', 'the migration was rolled back') END
                          ORDER BY u.ord))
       FROM unnest(p_ids, p_workers, p_results) WITH ORDINALITY AS u(id, worker, result, ord)
      WHERE u.ord = ANY (v_held);
    -- Now that the members' keys are readable, check them (and replace those
    -- the proxy refuses).
    INSERT INTO orgkeeper.pending_external_actions (kind, org_id, user_id, payload)
    SELECT 'litellm.verify_key', u.user_id, u.user_id,
           jsonb_build_object('user_id', u.user_id, 'team_id', u.user_id::text, 'regenerate', true)
      FROM unnest(v_users) WITH ORDINALITY AS u(user_id, ord)
     WHERE u.user_id IS NOT NULL
     ORDER BY u.ord;
    RETURN QUERY
    SELECT u.id, CASE WHEN u.ord = ANY (v_migrated) THEN 'done'
                      WHEN u.ord = ANY (v_held) THEN 'skipped'
                      ELSE 'lease_lost' END
      FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
     ORDER BY u.ord;
END;
$$;
COMMENT ON FUNCTION orgkeeper.record_reencrypted_many(bigint[], text[], jsonb[], jsonb[]) IS
  'Daemon: record_reencrypted for several secrets.reencrypt actions in one statement (element i of each array belongs together; p_swaps[i] is the action''s array of swaps): the organizations'' rows locked first in key order (orgkeeper.lock_actions_orgs); per action, fenced on its own lease, every re-encrypted value swapped in by compare-and-set (orgkeeper.replace_secrets, one statement per table for the whole batch; a plaintext value''s rollback copy replaced by its legacy_sealed form), the action marked done and litellm.verify_key enqueued for the member''s key; a rolled-back migration writes nothing (skipped). A value changed meanwhile rolls the whole statement back (40001; the daemon then writes the rows one at a time, and that action retries). Returns each action''s outcome: done, skipped or lease_lost.';

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
