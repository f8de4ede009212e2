-- V18: the outbox's partial indexes are keyed on columns the daemon's fenced
-- write-backs never test, so the planner reaches a row they write only
-- through its primary key.
--
-- Every write-back (complete, retry, progress, heartbeat, record_*) finds
-- its rows by id and fences on `locked_by = <token>` and often
-- `status = 'running'`. Those conditions imply the old predicates
-- (locked_by IS NOT NULL; status IN pending/running/compensating), so the
-- planner could answer them by scanning a partial index whole and filtering:
-- with statistics taken while few actions were leased or unfinished (they
-- are transient), that is the cheaper-looking plan, and it stays cached in
-- the daemon's sessions. Measured: a completion cost O(leased rows) —
-- ~1.7 ms each with 800 leased — and with an empty queue analyzed, the
-- generic plan chose to scan every unfinished action, backlog included.
--
-- The new predicates hold for exactly the same rows (CHECK
-- action_lease_is_pair: locked_by and locked_until are set together;
-- action_finished_iff_terminal: finished_at is set iff the status is
-- terminal), but nothing a write-back says implies them. The lease sweep
-- (locked_until < now()) and the claim's per-subject check
-- (finished_at IS NULL, sql/outbox.sql) still use them.
--
-- Built in this migration's transaction: writes to the outbox wait for the
-- two index builds (a scan of the table each).

CREATE INDEX action_leased_until_idx ON orgkeeper.pending_external_actions (locked_until)
    WHERE locked_until IS NOT NULL;
DROP INDEX orgkeeper.action_leased_idx;
ALTER INDEX orgkeeper.action_leased_until_idx RENAME TO action_leased_idx;

CREATE INDEX action_unfinished_idx ON orgkeeper.pending_external_actions (subject, id)
    WHERE finished_at IS NULL;
DROP INDEX orgkeeper.action_unfinished_subject_idx;
ALTER INDEX orgkeeper.action_unfinished_idx RENAME TO action_unfinished_subject_idx;
