-- V17: the outbox lists the action kinds it accepts, as it lists its
-- statuses: the same names as the daemon's ActionKind (src/outbox/kind.rs;
-- tests/it/schema.rs compares the two), so a kind without a handler cannot
-- be enqueued. The list replaces the format check it makes redundant.
--
-- NOT VALID then VALIDATE: the check of existing rows takes only a SHARE
-- UPDATE EXCLUSIVE lock, so the daemon keeps working during it.

ALTER TABLE orgkeeper.pending_external_actions
    DROP CONSTRAINT action_kind_format,
    ADD CONSTRAINT action_kind_known CHECK (kind IN (
        'litellm.provision_org',
        'litellm.delete_team',
        'litellm.deprovision_org',
        'litellm.add_member',
        'litellm.remove_member',
        'litellm.rotate_key',
        'litellm.verify_key',
        'litellm.set_budget',
        'litellm.migrate_user',
        'litellm.rollback_user',
        'stripe.create_customer',
        'stripe.migrate_customer',
        'stripe.rollback_customer',
        'secrets.reencrypt'
    )) NOT VALID;

ALTER TABLE orgkeeper.pending_external_actions VALIDATE CONSTRAINT action_kind_known;

COMMENT ON COLUMN orgkeeper.pending_external_actions.kind IS
  'service.action, e.g. litellm.provision_org; one of the kinds CHECK action_kind_known lists, each with one handler in the daemon (ActionKind).';
