-- outbox.sql — enqueueing, claiming and recording external actions.
--
-- The daemon only calls these functions; every write-back is fenced on the
-- lease token (locked_by, "<worker>/<attempt>", set by the claim): a task
-- whose lease expired cannot overwrite the one that took the action over.
-- The fenced functions take that token as p_worker and return whether the
-- fence held.

------------------------------------------------------------------------------
-- enqueue and notify
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.enqueue_action(p_kind text, p_org_id uuid, p_user_id uuid, p_payload jsonb DEFAULT '{}'::jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
-- plpgsql rather than SQL: a SQL function whose body is an INSERT is
-- planned again at every call; plpgsql keeps the plan for the session.
DECLARE
    v_id bigint;
BEGIN
    INSERT INTO orgkeeper.pending_external_actions (kind, org_id, user_id, payload)
    VALUES (p_kind, p_org_id, p_user_id, coalesce(p_payload, '{}'::jsonb))
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.enqueue_action(text, uuid, uuid, jsonb) IS
  'Adds an external action to the outbox in the caller''s transaction; the daemon is notified when it commits. Returns the action id.';

-- The advisory lock key of the wake-up handshake ("okwake").
CREATE OR REPLACE FUNCTION orgkeeper.wakeup_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 121398893359973::bigint $$;
COMMENT ON FUNCTION orgkeeper.wakeup_lock_key() IS
  'Internal: the advisory lock key of the wake-up handshake between inserting transactions (shared, until they end) and a daemon about to wait (orgkeeper.inserts_settled).';

CREATE OR REPLACE FUNCTION orgkeeper.notify_actions() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_ids    jsonb;
    v_locked boolean;
BEGIN
    -- Held until this transaction ends: a daemon about to wait first waits
    -- for it (orgkeeper.inserts_settled), so its last claim sees these rows
    -- — or, if it started waiting before this point, the check below sees
    -- it waiting and notifies. Tried, never waited for: any role can take an
    -- advisory lock, and a session holding this key exclusively (a daemon's
    -- inserts_settled for an instant, or a hostile one for ever) must not
    -- block every insert. Without the lock the handshake cannot see this
    -- transaction, so it notifies whether or not a daemon is recorded waiting.
    v_locked := pg_try_advisory_xact_lock_shared(orgkeeper.wakeup_lock_key());
    -- Notify only a waiting daemon: a notifying commit holds a cluster-wide
    -- lock through its commit, which would serialise busy inserters.
    IF v_locked AND NOT EXISTS (SELECT 1 FROM orgkeeper.daemon_waiting WHERE until > now()) THEN
        RETURN NULL;
    END IF;
    -- One notification per statement, carrying ids only (never payloads or secrets).
    SELECT jsonb_agg(id ORDER BY id) INTO v_ids
      FROM (SELECT id FROM new_actions WHERE status = 'pending' ORDER BY id LIMIT 100) s;
    IF v_ids IS NOT NULL THEN
        PERFORM pg_notify('orgkeeper_actions', jsonb_build_object('ids', v_ids)::text);
    END IF;
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.notify_actions() IS
  'Statement trigger: tries the wake-up lock (shared, until the transaction ends; never waits for it) and, while a daemon is waiting (orgkeeper.daemon_waiting) or when the lock was taken exclusively by someone else, NOTIFY orgkeeper_actions with {"ids": [...]} (at most 100 ids). Together with orgkeeper.inserts_settled no committed action waits for the poll while a daemon is idle, and no session holding the advisory key blocks inserts.';

CREATE OR REPLACE FUNCTION orgkeeper.daemon_waits(p_worker text, p_for interval) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO orgkeeper.daemon_waiting (worker, until) VALUES (p_worker, now() + p_for)
    ON CONFLICT (worker) DO UPDATE SET until = EXCLUDED.until;
$$;
COMMENT ON FUNCTION orgkeeper.daemon_waits(text, interval) IS
  'Daemon: replica p_worker has free slots and nothing to claim, and waits for a NOTIFY (or its poll) for at most p_for. Run in its own transaction, before orgkeeper.inserts_settled and a last claim.';

CREATE OR REPLACE FUNCTION orgkeeper.daemon_busy(p_worker text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM orgkeeper.daemon_waiting WHERE worker = p_worker;
$$;
COMMENT ON FUNCTION orgkeeper.daemon_busy(text) IS
  'Daemon: replica p_worker has no free slot (or stops): inserts need not notify it.';

CREATE OR REPLACE FUNCTION orgkeeper.inserts_settled() RETURNS boolean
LANGUAGE sql AS $$
    SELECT pg_try_advisory_xact_lock(orgkeeper.wakeup_lock_key());
$$;
COMMENT ON FUNCTION orgkeeper.inserts_settled() IS
  'Daemon: true when no transaction that inserted actions is still open (the wake-up lock is free; taken and released within this statement). A daemon that recorded itself waiting claims once more after this is true; while it is false, committing inserts are about to appear, so it claims again shortly.';

DROP TRIGGER IF EXISTS actions_notify_insert ON orgkeeper.pending_external_actions;
CREATE TRIGGER actions_notify_insert
    AFTER INSERT ON orgkeeper.pending_external_actions
    REFERENCING NEW TABLE AS new_actions
    FOR EACH STATEMENT EXECUTE FUNCTION orgkeeper.notify_actions();

CREATE OR REPLACE FUNCTION orgkeeper.org_after_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_team   text := coalesce(OLD.litellm_team_id, OLD.id::text);
    v_action bigint;
BEGIN
    -- orgkeeper.record_org_deleted (deletion.sql) deletes a deprovisioning
    -- organization after the daemon dealt with its team, and writes the
    -- tombstone itself.
    IF current_setting('orgkeeper.finishing_deletion', true) = OLD.id::text THEN
        RETURN NULL;
    END IF;
    -- A direct DELETE by a trusted role (the application has no DELETE
    -- privilege; orgkeeper.delete_org does not delete): immediate, as the DBA
    -- asked. The team id is the org id; it is deleted even if provisioning is
    -- still in flight: the deletion waits for the provisioning action (same
    -- subject).
    v_action := orgkeeper.enqueue_action('litellm.delete_team', OLD.id, OLD.created_by,
        jsonb_build_object('team_id', v_team, 'org_name', OLD.name));
    INSERT INTO orgkeeper.org_deleted (id, name, kind, created_by, deleted_by, deleted_via, requested_at, cleanup)
    VALUES (OLD.id, OLD.name, OLD.kind, OLD.created_by,
            coalesce(OLD.deletion_requested_by, orgkeeper.current_app_user()), 'direct_delete',
            coalesce(OLD.deletion_requested_at, now()),
            jsonb_build_object('team', jsonb_build_object('team_id', v_team, 'status', 'enqueued'),
                               'action_id', v_action, 'role', orgkeeper.caller_role(),
                               'was', OLD.provisioning_status));
    RETURN NULL;
END;
$$;
COMMENT ON FUNCTION orgkeeper.org_after_delete() IS
  'Trigger: a direct DELETE of an organization (trusted roles only) enqueues litellm.delete_team with the team id, so the team is removed even though the org row is gone, and writes its tombstone into orgkeeper.org_deleted (deleted_via = direct_delete; the team''s outcome is added by orgkeeper.record_team_deleted). Does nothing for the deletion that orgkeeper.record_org_deleted finishes (it writes its own tombstone).';

DROP TRIGGER IF EXISTS org_after_delete ON orgkeeper.org;
CREATE TRIGGER org_after_delete
    AFTER DELETE ON orgkeeper.org
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.org_after_delete();

------------------------------------------------------------------------------
-- claim (daemon)
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.claim_actions(p_worker text, p_limit integer, p_lease interval)
RETURNS SETOF orgkeeper.pending_external_actions
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT a.id
          FROM orgkeeper.pending_external_actions a
         WHERE a.status IN ('pending', 'compensating')
           AND a.locked_by IS NULL
           AND a.run_after <= now()
           -- The first unfinished (pending, running, compensating: the
           -- predicate of action_unfinished_subject_idx, V18) action of its
           -- subject. A scalar subquery, not NOT EXISTS: PostgreSQL turns
           -- NOT EXISTS into an anti-join whose plan follows the statistics,
           -- and with statistics taken while the queue was idle (everything
           -- finished) it chose a full scan of the unfinished actions for
           -- every candidate: ~540 ms instead of ~1 ms per claim after a
           -- burst of 8,000 actions. A scalar subquery stays a per-candidate
           -- probe of that index, whatever the statistics say.
           AND a.id = (SELECT min(e.id) FROM orgkeeper.pending_external_actions e
                        WHERE e.subject = a.subject AND e.finished_at IS NULL)
         ORDER BY a.run_after, a.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    )
    UPDATE orgkeeper.pending_external_actions a
       SET status = CASE WHEN a.status = 'pending' THEN 'running' ELSE a.status END,
           -- The lease token names the replica and the claim, so a replica's
           -- stale task from an earlier claim cannot pass the fence either.
           locked_by = p_worker || '/' || (a.attempts + 1),
           locked_until = now() + p_lease,
           attempts = a.attempts + 1,
           updated_at = now()
      FROM due
     WHERE a.id = due.id
    RETURNING a.*;
END;
$$;
COMMENT ON FUNCTION orgkeeper.claim_actions(text, integer, interval) IS
  'Daemon: leases up to p_limit due actions to replica p_worker in one statement (FOR UPDATE SKIP LOCKED), bumping attempts; locked_by becomes the lease token "<worker>/<attempt>" that every fenced write must present. An action waits while an earlier action of the same subject is unfinished.';

CREATE OR REPLACE FUNCTION orgkeeper.sweep_expired_leases() RETURNS integer
LANGUAGE sql AS $$
    WITH swept AS (
        UPDATE orgkeeper.pending_external_actions
           SET status = CASE WHEN status = 'running' THEN 'pending' ELSE status END,
               locked_by = NULL, locked_until = NULL, updated_at = now()
         WHERE locked_by IS NOT NULL AND locked_until < now()
        RETURNING 1
    )
    SELECT count(*)::integer FROM swept;
$$;
COMMENT ON FUNCTION orgkeeper.sweep_expired_leases() IS
  'Daemon: returns actions whose lease expired (a crashed or frozen replica) to the queue; returns how many.';

------------------------------------------------------------------------------
-- record outcomes (daemon; every one fenced on the lease)
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.error_entry(p_attempts integer, p_error text, p_transient boolean) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_array(jsonb_build_object(
        'attempt', p_attempts, 'at', to_jsonb(statement_timestamp()), 'error', p_error, 'transient', p_transient));
$$;
COMMENT ON FUNCTION orgkeeper.error_entry(integer, text, boolean) IS
  'One element for the errors history of an action: attempt number, time, message, and whether it was transient.';

-- The claim and the write-backs are plpgsql. A SQL function that is not
-- inlined (an UPDATE never is) is planned again at every call, which cost
-- more than the write itself, and with a generic plan: the claim's chose a
-- merge join over the whole primary key, ~100 ms per claim with 500,000
-- rows. plpgsql plans each statement with the call's values until a generic
-- plan is as cheap (the claim's never is: it stays ~2 ms), then keeps that.
--
-- The write-backs of a claim batch are written in one statement each
-- (src/outbox/batch.rs): element i of each array belongs together, and each
-- row is fenced on its own lease token, so a stale token writes nothing for
-- its row while the others land; the functions return the ids whose fence held.
CREATE OR REPLACE FUNCTION orgkeeper.save_progress_many(p_ids bigint[], p_workers text[], p_progress jsonb[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE orgkeeper.pending_external_actions a
       SET progress = a.progress || u.progress, updated_at = now()
      FROM unnest(p_ids, p_workers, p_progress) AS u(id, worker, progress)
     WHERE a.id = u.id AND a.locked_by = u.worker
    RETURNING a.id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.save_progress_many(bigint[], text[], jsonb[]) IS
  'Daemon: merges checkpoint data into the progress of several actions in one statement (element i of each array belongs together), each while its token holds the lease. Returns the ids whose lease held; the others are left unchanged.';

-- The one-action forms below stay for daemons of the previous release during
-- a rolling upgrade, and for the handlers' own write-backs in SQL.
CREATE OR REPLACE FUNCTION orgkeeper.save_progress(p_id bigint, p_worker text, p_progress jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM orgkeeper.save_progress_many(ARRAY[p_id], ARRAY[p_worker], ARRAY[p_progress]));
END;
$$;
COMMENT ON FUNCTION orgkeeper.save_progress(bigint, text, jsonb) IS
  'Daemon: merges checkpoint data into progress while p_worker holds the lease (orgkeeper.save_progress_many for one action). False = lease lost.';

CREATE OR REPLACE FUNCTION orgkeeper.hold_action(p_id bigint, p_worker text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1
       FROM orgkeeper.pending_external_actions
      WHERE id = p_id AND locked_by = p_worker AND status = 'running'
        FOR UPDATE;
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION orgkeeper.hold_action(bigint, text) IS
  'Daemon: locks a running action row while p_worker still holds its lease (the fence of the one-action write-backs that do more than complete it; the batched ones fence every row of the batch in one statement); false = lease lost, nothing to write. Callers lock the org row first (orgkeeper.lock_action_org).';

CREATE OR REPLACE FUNCTION orgkeeper.hold_actions(p_ids bigint[], p_workers text[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    -- Positions, not ids: a stale task's row for the same action (an
    -- earlier lease of this replica) can never borrow the live row's fence.
    RETURN (SELECT coalesce(array_agg(h.ord), '{}')
              FROM (SELECT u.ord
                      FROM orgkeeper.pending_external_actions a
                      JOIN unnest(p_ids, p_workers) WITH ORDINALITY AS u(id, worker, ord) ON u.id = a.id
                     WHERE a.locked_by = u.worker AND a.status = 'running'
                     ORDER BY a.id
                       FOR UPDATE OF a) h);
END;
$$;
COMMENT ON FUNCTION orgkeeper.hold_actions(bigint[], text[]) IS
  'Daemon: orgkeeper.hold_action for a batch (element i of each array belongs together): locks, in id order, the running action rows whose token still holds the lease and returns their positions in the arrays (1-based); the fence of the batched write-backs. Callers lock the org rows first (orgkeeper.lock_actions_orgs).';

CREATE OR REPLACE FUNCTION orgkeeper.complete_actions(p_ids bigint[], p_workers text[], p_results jsonb[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE orgkeeper.pending_external_actions a
       SET status = 'done', result = u.result, locked_by = NULL, locked_until = NULL,
           finished_at = now(), updated_at = now()
      FROM unnest(p_ids, p_workers, p_results) AS u(id, worker, result)
     WHERE a.id = u.id AND a.locked_by = u.worker AND a.status = 'running'
    RETURNING a.id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.complete_actions(bigint[], text[], jsonb[]) IS
  'Daemon: marks several running actions done with their results in one statement (element i of each array belongs together), each only while its token holds the lease. Returns the ids whose lease held; nothing is written for the others.';

CREATE OR REPLACE FUNCTION orgkeeper.complete_action(p_id bigint, p_worker text, p_result jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM orgkeeper.complete_actions(ARRAY[p_id], ARRAY[p_worker], ARRAY[p_result]));
END;
$$;
COMMENT ON FUNCTION orgkeeper.complete_action(bigint, text, jsonb) IS
  'Daemon: marks a running action done with its result, if p_worker still holds the lease (orgkeeper.complete_actions for one action; the handlers'' own write-backs call it in their transaction). False = lease lost, nothing written.';

CREATE OR REPLACE FUNCTION orgkeeper.retry_actions_later(p_ids bigint[], p_workers text[], p_errors text[], p_delays interval[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE orgkeeper.pending_external_actions a
       SET status = CASE WHEN a.status = 'running' THEN 'pending' ELSE a.status END,
           run_after = now() + u.delay,
           last_error = u.error,
           errors = a.errors || orgkeeper.error_entry(a.attempts, u.error, true),
           locked_by = NULL, locked_until = NULL, updated_at = now()
      FROM unnest(p_ids, p_workers, p_errors, p_delays) AS u(id, worker, error, delay)
     WHERE a.id = u.id AND a.locked_by = u.worker
    RETURNING a.id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.retry_actions_later(bigint[], text[], text[], interval[]) IS
  'Daemon: records a transient error for several actions in one statement (element i of each array belongs together) and releases each to run again after its delay (backoff), each only while its token holds the lease. Returns the ids whose lease held.';

CREATE OR REPLACE FUNCTION orgkeeper.retry_action_later(p_id bigint, p_worker text, p_error text, p_delay interval) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM orgkeeper.retry_actions_later(ARRAY[p_id], ARRAY[p_worker], ARRAY[p_error], ARRAY[p_delay]));
END;
$$;
COMMENT ON FUNCTION orgkeeper.retry_action_later(bigint, text, text, interval) IS
  'Daemon: records a transient error and releases the action to run again after p_delay (orgkeeper.retry_actions_later for one action). Fenced on the lease.';

CREATE OR REPLACE FUNCTION orgkeeper.begin_compensation(p_id bigint, p_worker text, p_error text) RETURNS boolean
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE orgkeeper.pending_external_actions
           SET status = 'compensating',
               last_error = p_error,
               errors = errors || orgkeeper.error_entry(attempts, p_error, false),
               result = jsonb_build_object('error', p_error),
               updated_at = now()
         WHERE id = p_id AND locked_by = p_worker AND status = 'running'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM u);
$$;
COMMENT ON FUNCTION orgkeeper.begin_compensation(bigint, text, text) IS
  'Daemon: records a permanent failure and moves the action to compensating (keeping the lease) before cleanup starts, so a crash mid-cleanup resumes cleanup.';

CREATE OR REPLACE FUNCTION orgkeeper.finish_action(p_id bigint, p_worker text, p_status text, p_result jsonb, p_error text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF p_status NOT IN ('failed', 'compensated') THEN
        RAISE EXCEPTION 'finish_action: status must be failed or compensated, not %', quote_nullable(p_status)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE orgkeeper.pending_external_actions
       SET status = p_status,
           result = coalesce(result, '{}'::jsonb) || coalesce(p_result, '{}'::jsonb),
           last_error = coalesce(p_error, last_error),
           errors = CASE WHEN p_error IS NULL THEN errors
                         ELSE errors || orgkeeper.error_entry(attempts, p_error, false) END,
           locked_by = NULL, locked_until = NULL, finished_at = now(), updated_at = now()
     WHERE id = p_id AND locked_by = p_worker AND status IN ('running', 'compensating');
    RETURN FOUND;
END;
$$;
COMMENT ON FUNCTION orgkeeper.finish_action(bigint, text, text, jsonb, text) IS
  'Daemon: ends an action as failed or compensated, merging p_result (e.g. the cleanup outcome) and recording p_error. Fenced on the lease.';

CREATE OR REPLACE FUNCTION orgkeeper.release_action(p_id bigint, p_worker text) RETURNS boolean
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE orgkeeper.pending_external_actions
           SET status = CASE WHEN status = 'running' THEN 'pending' ELSE status END,
               locked_by = NULL, locked_until = NULL, run_after = now(), updated_at = now()
         WHERE id = p_id AND locked_by = p_worker
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM u);
$$;
COMMENT ON FUNCTION orgkeeper.release_action(bigint, text) IS
  'Daemon: hands an unfinished action back to the queue at shutdown (its attempt stays counted: it may have had external effects). Fenced on the lease.';

CREATE OR REPLACE FUNCTION orgkeeper.extend_lease(p_id bigint, p_worker text, p_lease interval) RETURNS boolean
LANGUAGE sql AS $$
    WITH u AS (
        UPDATE orgkeeper.pending_external_actions
           SET locked_until = now() + p_lease
         WHERE id = p_id AND locked_by = p_worker
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM u);
$$;
COMMENT ON FUNCTION orgkeeper.extend_lease(bigint, text, interval) IS
  'Daemon: heartbeat of a running action: pushes its lease expiry to now() + p_lease while the token still holds it. False = the lease was lost; the daemon abandons the action.';

------------------------------------------------------------------------------
-- operators
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.retry_action(action_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_action orgkeeper.pending_external_actions;
BEGIN
    -- Lock order everywhere: the org row, then the action row.
    PERFORM 1 FROM orgkeeper.org
     WHERE id = (SELECT org_id FROM orgkeeper.pending_external_actions WHERE id = action_id)
       FOR NO KEY UPDATE;
    SELECT * INTO v_action FROM orgkeeper.pending_external_actions WHERE id = action_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action % does not exist', coalesce(action_id::text, 'NULL')
            USING ERRCODE = 'no_data_found', HINT = 'list actions with: orgkeeper actions list';
    END IF;
    IF v_action.status NOT IN ('failed', 'compensated', 'cancelled') THEN
        RAISE EXCEPTION 'action % (%) is %, only failed, compensated or cancelled actions can be retried', action_id, v_action.kind, v_action.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE orgkeeper.pending_external_actions
       SET status = 'pending', attempts = 0, run_after = now(), finished_at = NULL, updated_at = now()
     WHERE id = action_id;
    IF v_action.kind IN ('litellm.provision_org', 'litellm.migrate_user') THEN
        UPDATE orgkeeper.org SET provisioning_status = 'pending', provisioning_error = NULL
         WHERE id = v_action.org_id AND provisioning_status = 'failed';
    END IF;
    PERFORM pg_notify('orgkeeper_actions', jsonb_build_object('ids', jsonb_build_array(action_id))::text);
END;
$$;
COMMENT ON FUNCTION orgkeeper.retry_action(bigint) IS
  'Operator: puts a failed, compensated or cancelled action back to pending with a fresh attempt budget (its error history is kept). A retried provisioning or user migration sets its org back to pending.';

CREATE OR REPLACE FUNCTION orgkeeper.cancel_action(action_id bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_action orgkeeper.pending_external_actions;
BEGIN
    SELECT * INTO v_action FROM orgkeeper.pending_external_actions WHERE id = action_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'action % does not exist', coalesce(action_id::text, 'NULL') USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT (v_action.status = 'failed' OR (v_action.status = 'pending' AND v_action.attempts = 0)) THEN
        RAISE EXCEPTION 'action % (%) is % after % attempt(s); only actions that never ran, or failed ones, can be cancelled',
                action_id, v_action.kind, v_action.status, v_action.attempts
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'an action that already ran may have had external effects: let it finish, or wait until it fails and cancel it then';
    END IF;
    UPDATE orgkeeper.pending_external_actions
       SET status = 'cancelled', finished_at = now(), updated_at = now()
     WHERE id = action_id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.cancel_action(bigint) IS
  'Operator: gives up on an action that never ran, or a failed one (cancelled is terminal; retry_action can revive it). Refuses (55000) an action that may have had external effects.';
