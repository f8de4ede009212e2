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
    SELECT string_agg(format('%I::text = %L', k, v), ' AND ' ORDER BY k) INTO v_filter
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
