-- The floor of user migration's database side (`bench migrate`): the rows
-- migrate_users must write for the users in the temporary table
-- floor_users (user_id, email) — their users rows, personal orgs and owner
-- memberships, ~20 legacy rows each re-pointed at the org, the copies of
-- their conversations, the outbox actions and the migration log — with the
-- schema's indexes, constraints and foreign keys but none of the logic:
-- every user trigger of the tables written is disabled (no org admission,
-- no name or trust checks, no key lifecycle, no membership version, no
-- notify, no legacy-row checks), nothing is validated, aggregated for the
-- log or recorded for a rollback. The caller runs it in a transaction and
-- rolls it back.

ALTER TABLE orgkeeper.users DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.org DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.org_member DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.pending_external_actions DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.stripe_customers DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.slack_users DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.slack_conversation DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.api_keys DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.custom_secrets DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.billing_sessions DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.user_repos DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.gitlab_webhook DISABLE TRIGGER USER;
ALTER TABLE orgkeeper.conversation_metadata_saas DISABLE TRIGGER USER;

INSERT INTO orgkeeper.users (id, email)
SELECT u.user_id, u.email FROM floor_users u ORDER BY u.user_id
ON CONFLICT (id) DO NOTHING;
INSERT INTO orgkeeper.org (id, name, kind, created_by, contact_email, org_version)
SELECT u.user_id, 'floor ' || u.user_id, 'personal', u.user_id, u.email, 1 FROM floor_users u ORDER BY u.user_id;
INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
SELECT u.user_id, u.user_id, (SELECT r.id FROM orgkeeper.role r WHERE r.name = 'owner'), 'active'
  FROM floor_users u ORDER BY u.user_id;
UPDATE orgkeeper.users t SET current_org_id = t.id FROM floor_users u WHERE t.id = u.user_id;

WITH p AS (SELECT array_agg(user_id) AS users FROM floor_users),
sc AS (UPDATE orgkeeper.stripe_customers t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
su AS (UPDATE orgkeeper.slack_users t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
sv AS (UPDATE orgkeeper.slack_conversation t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
ak AS (UPDATE orgkeeper.api_keys t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
cs AS (UPDATE orgkeeper.custom_secrets t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
bs AS (UPDATE orgkeeper.billing_sessions t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
ur AS (UPDATE orgkeeper.user_repos t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
gw AS (UPDATE orgkeeper.gitlab_webhook t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
sm AS (UPDATE orgkeeper.conversation_metadata_saas t SET org_id = t.user_id FROM p
        WHERE t.user_id = ANY (p.users) AND t.org_id IS NULL RETURNING 1),
cp AS (INSERT INTO orgkeeper.conversation_metadata_saas (conversation_id, user_id, org_id, created_at)
       SELECT c.conversation_id, c.user_id, c.user_id, c.created_at
         FROM orgkeeper.conversation_metadata c, p WHERE c.user_id = ANY (p.users)
       ON CONFLICT (conversation_id) DO NOTHING RETURNING 1)
SELECT (SELECT count(*) FROM sc) + (SELECT count(*) FROM su) + (SELECT count(*) FROM sv)
     + (SELECT count(*) FROM ak) + (SELECT count(*) FROM cs) + (SELECT count(*) FROM bs)
     + (SELECT count(*) FROM ur) + (SELECT count(*) FROM gw) + (SELECT count(*) FROM sm)
     + (SELECT count(*) FROM cp);

-- litellm.migrate_user and secrets.reencrypt for everyone, and
-- stripe.migrate_customer for half (as the generated users have).
INSERT INTO orgkeeper.pending_external_actions (kind, org_id, user_id)
SELECT k.kind, u.user_id, u.user_id
  FROM floor_users u,
       unnest(ARRAY['litellm.migrate_user', 'stripe.migrate_customer', 'secrets.reencrypt']) WITH ORDINALITY AS k(kind, ord)
 WHERE k.kind <> 'stripe.migrate_customer' OR get_byte(uuid_send(u.user_id), 15) % 2 = 0
 ORDER BY u.user_id, k.ord;
INSERT INTO orgkeeper.user_migration (user_id, org_id)
SELECT u.user_id, u.user_id FROM floor_users u ORDER BY u.user_id;
UPDATE orgkeeper.user_settings s SET already_migrated = true FROM floor_users u WHERE s.user_id = u.user_id;
