-- V14: user migration adopts a personal organization that already exists
-- (created at first login, before the user was migrated), as OpenHands does:
-- "if the user already has a personal organization, skip creation and
-- proceed". The log keeps the organization as it was, so a rollback puts it
-- back instead of deleting it.

ALTER TABLE orgkeeper.user_migration ADD COLUMN org_before jsonb;
COMMENT ON COLUMN orgkeeper.user_migration.org_before IS
  'The personal organization as it was when the migration adopted it (it existed before the migration); NULL when the migration created it. A rollback restores its settings from here and keeps it.';
