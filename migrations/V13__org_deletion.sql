-- V13: deletion in the open (issue 12, item 3).
--
-- orgkeeper.delete_org no longer removes the row at once: it records who
-- asked and when, sets provisioning_status = 'deprovisioning' and enqueues
-- litellm.deprovision_org. The daemon deletes the organization's LiteLLM
-- team, then (one fenced transaction, orgkeeper.record_org_deleted) writes a
-- tombstone into orgkeeper.org_deleted and deletes the row. A direct DELETE
-- by a trusted role (DBA) stays immediate; its trigger writes the tombstone
-- and enqueues litellm.delete_team (sql/outbox.sql, org_after_delete).

ALTER TABLE orgkeeper.org
    ADD COLUMN deletion_requested_by uuid,
    ADD COLUMN deletion_requested_at timestamptz,
    ADD CONSTRAINT org_deletion_requested_iff_deprovisioning
        CHECK ((provisioning_status = 'deprovisioning') = (deletion_requested_at IS NOT NULL));
COMMENT ON COLUMN orgkeeper.org.deletion_requested_by IS
  'While deprovisioning: the user who asked for the deletion (orgkeeper.delete_org''s actor). NULL otherwise.';
COMMENT ON COLUMN orgkeeper.org.deletion_requested_at IS
  'While deprovisioning: when the deletion was asked for; set exactly when provisioning_status = deprovisioning (CHECK org_deletion_requested_iff_deprovisioning).';

CREATE TABLE orgkeeper.org_deleted (
    entry         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id            uuid        NOT NULL,
    name          text        NOT NULL,
    kind          text        NOT NULL,
    created_by    uuid        NOT NULL,
    deleted_by    uuid,
    deleted_via   text        NOT NULL,
    requested_at  timestamptz NOT NULL,
    deleted_at    timestamptz NOT NULL DEFAULT now(),
    cleanup       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT org_deleted_via_valid CHECK (deleted_via IN ('delete_org', 'direct_delete'))
);
CREATE INDEX org_deleted_id_idx ON orgkeeper.org_deleted (id);
CREATE INDEX org_deleted_at_idx ON orgkeeper.org_deleted (deleted_at);

COMMENT ON TABLE orgkeeper.org_deleted IS
  'Tombstones: one row per deleted organization, kept after the org row is gone, for operators (psql) and audits. Written by orgkeeper.record_org_deleted (the daemon, when a deletion asked through orgkeeper.delete_org finished its cleanup) or by the trigger org_after_delete (a trusted role''s direct DELETE). Row security is enabled and the application role has no policy and no privilege on it: tenants never read tombstones, not even of their own organizations (they may no longer be members of anything the row would name).';
COMMENT ON COLUMN orgkeeper.org_deleted.entry IS 'Surrogate key (a DBA may delete and re-create a personal organization with the same id, so id alone is not unique).';
COMMENT ON COLUMN orgkeeper.org_deleted.id IS 'The deleted organization''s id (= its LiteLLM team id unless litellm_team_id said otherwise; see cleanup.team.team_id).';
COMMENT ON COLUMN orgkeeper.org_deleted.name IS 'Its name at deletion time (the name is free again from then on).';
COMMENT ON COLUMN orgkeeper.org_deleted.kind IS 'personal or team.';
COMMENT ON COLUMN orgkeeper.org_deleted.created_by IS 'Who created it (its first owner).';
COMMENT ON COLUMN orgkeeper.org_deleted.deleted_by IS 'The user who asked for the deletion (orgkeeper.delete_org''s actor); for a direct DELETE, orgkeeper.user_id of that session, usually NULL.';
COMMENT ON COLUMN orgkeeper.org_deleted.deleted_via IS 'delete_org (the deprovisioning state machine) or direct_delete (a trusted role''s DELETE FROM orgkeeper.org; cleanup.role names it).';
COMMENT ON COLUMN orgkeeper.org_deleted.requested_at IS 'When the deletion was asked for (delete_org: when it turned deprovisioning; direct DELETE: = deleted_at).';
COMMENT ON COLUMN orgkeeper.org_deleted.deleted_at IS 'When the row was removed.';
COMMENT ON COLUMN orgkeeper.org_deleted.cleanup IS
  'What was cleaned: {"team": {team_id, team_deleted, team_absent | team_foreign}, "rows": {table: rows deleted, stripe_customers/billing_sessions: rows detached}, "action_id": the outbox action}. For a direct DELETE, "team" is {"status": "enqueued"} until litellm.delete_team finishes and writes its report here.';
