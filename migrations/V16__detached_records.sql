-- V16: financial records detached from a deleted organization say so, so
-- user migration never takes them for the creator's own legacy records
-- (a legacy row is one that never belonged to an organization).

ALTER TABLE orgkeeper.stripe_customers ADD COLUMN detached_from_org uuid;
ALTER TABLE orgkeeper.billing_sessions ADD COLUMN detached_from_org uuid;
COMMENT ON COLUMN orgkeeper.stripe_customers.detached_from_org IS
  'The organization this customer belonged to before the organization was deleted (org_id is then NULL); NULL for legacy rows that never belonged to one. User migration moves only legacy rows.';
COMMENT ON COLUMN orgkeeper.billing_sessions.detached_from_org IS
  'The organization this session belonged to before the organization was deleted (org_id is then NULL); NULL for legacy rows that never belonged to one. User migration moves only legacy rows, and only they turn BYOR export on.';
