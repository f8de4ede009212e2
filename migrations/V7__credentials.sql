-- V7: credentials never cross a tenant.
--
-- * The database chooses organization ids: the column has no default any
--   more, and the BEFORE INSERT trigger (sql/ownership.sql) fills it — a
--   random UUID for team orgs, the creator's id for personal ones — and
--   refuses an id named by the application.
-- * Every member has their own LiteLLM key (org_member.llm_api_key); no key
--   is shared by the members of an organization.

ALTER TABLE orgkeeper.org ALTER COLUMN id DROP DEFAULT;

COMMENT ON COLUMN orgkeeper.org.id IS
  'Chosen by the database for applications (a random UUID; a personal org''s id is its creator''s). It is also the LiteLLM team id, so it can never be chosen by a tenant.';
COMMENT ON COLUMN orgkeeper.org.llm_api_key IS
  'Not written by orgkeeper: no LiteLLM key is shared by an organization''s members (each member''s own key is org_member.llm_api_key). Kept for the OpenHands schema; an application may store an org-level credential here as ok2 ciphertext bound to this place.';
COMMENT ON COLUMN orgkeeper.org_member.llm_api_key IS
  'The member''s own LiteLLM key in the organization''s team, created when the membership becomes active and deleted at LiteLLM when it stops being active; ok2 ciphertext bound to orgkeeper:org_member.llm_api_key:<org_id>/<user_id> (README, "Secrets").';
