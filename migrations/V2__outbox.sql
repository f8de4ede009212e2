-- V2: the outbox of external actions.
--
-- A row is written in the same transaction as the change that needs an
-- external side effect, so the action exists exactly when the change commits.
-- The daemon claims due rows (FOR UPDATE SKIP LOCKED, with a lease), performs
-- them, and records the outcome fenced on its lease. Functions: sql/outbox.sql.

------------------------------------------------------------------------------
-- tables
------------------------------------------------------------------------------
CREATE TABLE orgkeeper.pending_external_actions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    org_id       uuid,
    user_id      uuid,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status       text        NOT NULL DEFAULT 'pending',
    attempts     integer     NOT NULL DEFAULT 0,
    run_after    timestamptz NOT NULL DEFAULT now(),
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    errors       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    progress     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- Actions of one subject (the org, else the user) run in enqueue order.
    subject      uuid GENERATED ALWAYS AS (coalesce(org_id, user_id)) STORED,
    CONSTRAINT action_kind_format CHECK (kind ~ '^[a-z][a-z_]*\.[a-z][a-z_]*$'),
    CONSTRAINT action_status_valid
        CHECK (status IN ('pending', 'running', 'done', 'failed', 'compensating', 'compensated', 'cancelled')),
    CONSTRAINT action_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT action_has_subject CHECK (org_id IS NOT NULL OR user_id IS NOT NULL),
    -- A lease is a pair, held exactly while a daemon works on the row.
    CONSTRAINT action_lease_is_pair CHECK ((locked_by IS NULL) = (locked_until IS NULL)),
    CONSTRAINT action_lease_only_while_working
        CHECK (locked_by IS NULL OR status IN ('running', 'compensating')),
    CONSTRAINT action_running_has_lease CHECK (status <> 'running' OR locked_by IS NOT NULL),
    -- finished_at is set exactly in the terminal states.
    CONSTRAINT action_finished_iff_terminal
        CHECK ((status IN ('done', 'failed', 'compensated', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT action_errors_is_array CHECK (jsonb_typeof(errors) = 'array')
)
WITH (
    -- Queue tables churn: vacuum early so dead index entries never slow the claim.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05,
    fillfactor = 80
);

-- The claim reads only this small index: rows waiting for a daemon.
CREATE INDEX action_due_idx ON orgkeeper.pending_external_actions (run_after, id)
    WHERE status IN ('pending', 'compensating') AND locked_by IS NULL;
-- Lease rescue reads only rows a daemon holds.
CREATE INDEX action_leased_idx ON orgkeeper.pending_external_actions (locked_until)
    WHERE locked_by IS NOT NULL;
-- Per-subject ordering looks for an earlier unfinished action of the same subject.
CREATE INDEX action_unfinished_subject_idx ON orgkeeper.pending_external_actions (subject, id)
    WHERE status IN ('pending', 'running', 'compensating');
-- Audit look-ups: an org's or a user's history.
CREATE INDEX action_org_idx ON orgkeeper.pending_external_actions (org_id);
CREATE INDEX action_user_idx ON orgkeeper.pending_external_actions (user_id);

COMMENT ON TABLE orgkeeper.pending_external_actions IS
  'Transactional outbox. Each row is one external side effect (LiteLLM, Stripe, secrets) written with the change that needs it. States: pending -> running -> done | pending (retry) | compensating -> compensated | failed; cancelled by an operator. Finished rows stay as the audit trail.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.kind IS 'service.action, e.g. litellm.provision_org; the daemon has one handler per kind.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.org_id IS 'The organization concerned; no foreign key, the action outlives a deleted org. ';
COMMENT ON COLUMN orgkeeper.pending_external_actions.user_id IS 'The user concerned.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.payload IS 'What the handler needs, captured at enqueue time. Never secrets in plain text.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.attempts IS 'Claims so far; bumped by each claim.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.run_after IS 'Not claimed before this time (retry backoff).';
COMMENT ON COLUMN orgkeeper.pending_external_actions.locked_by IS 'The daemon replica holding the lease; every write-back is fenced on it.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.locked_until IS 'Lease expiry; an expired lease is swept back so another replica can take over.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.errors IS 'Every attempt''s error: [{"attempt", "at", "error", "transient"}].';
COMMENT ON COLUMN orgkeeper.pending_external_actions.progress IS 'Checkpoints of a multi-step handler (e.g. the chosen key, encrypted), so a retry resumes instead of repeating.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.result IS 'What the action produced (ids, budgets); for compensation, the cleanup result.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.subject IS 'coalesce(org_id, user_id): an action waits while an earlier action of the same subject is unfinished.';
COMMENT ON COLUMN orgkeeper.pending_external_actions.finished_at IS 'Set exactly when the status is terminal.';
