-- V15: a member's own LLM settings (OpenHands' "custom settings"): a
-- migrated user who used their own model or provider keeps them on their
-- membership, while the organization gets the current defaults.

ALTER TABLE orgkeeper.org_member
    ADD COLUMN llm_model            text,
    ADD COLUMN llm_base_url         text,
    ADD COLUMN max_iterations       integer,
    ADD COLUMN llm_api_key_for_byor text;
COMMENT ON COLUMN orgkeeper.org_member.llm_model IS 'The member''s own model, overriding the organization''s; NULL = the organization''s.';
COMMENT ON COLUMN orgkeeper.org_member.llm_base_url IS 'The member''s own LLM base URL (their own provider), overriding the organization''s; NULL = the organization''s.';
COMMENT ON COLUMN orgkeeper.org_member.max_iterations IS 'The member''s own iteration limit; NULL = the organization''s.';
COMMENT ON COLUMN orgkeeper.org_member.llm_api_key_for_byor IS 'The member''s own bring-your-own-key credential, ok2 ciphertext bound to orgkeeper:org_member.llm_api_key_for_byor:<org_id>/<user_id>.';

-- The LiteLLM proxy's URL, recorded by orgkeeper migrate from
-- LITELLM_BASE_URL: a migrated user whose base URL is another one has custom
-- settings.
ALTER TABLE orgkeeper.deployment_setting
    ADD CONSTRAINT deployment_setting_litellm_base_url_http
        CHECK (name <> 'litellm_base_url' OR value ~ '^https?://');
