-- V9: OpenHands' settings versions as data, and what a new organization gets.
--
-- Each settings version names the default model of its time; the highest is
-- current. New organizations start at the current version with OpenHands'
-- defaults (agent CodeActAgent, billing margin 1.0); the daemon stores the
-- model path (ORGKEEPER_DEFAULT_MODEL, else litellm_proxy/<current model>).
-- A DBA adds a version with one INSERT and moves organizations forward with
-- orgkeeper.upgrade_org_settings(org).

CREATE TABLE orgkeeper.settings_version (
    version       integer     PRIMARY KEY CONSTRAINT settings_version_positive CHECK (version > 0),
    default_model text        NOT NULL CONSTRAINT settings_version_model_given CHECK (btrim(default_model) <> ''),
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE orgkeeper.settings_version IS
  'OpenHands settings versions and the default model of each (without the litellm_proxy/ prefix). The highest version is current: new organizations start there. Add one with INSERT INTO orgkeeper.settings_version (version, default_model) VALUES (6, ''…''); then orgkeeper.upgrade_org_settings(org) moves organizations forward.';
COMMENT ON COLUMN orgkeeper.settings_version.default_model IS 'The model name the proxy serves, e.g. claude-sonnet-4-20250514; organizations store it as litellm_proxy/<name>.';

INSERT INTO orgkeeper.settings_version (version, default_model) VALUES
    (1, 'claude-3-5-sonnet-20241022'),
    (2, 'claude-3-7-sonnet-20250219'),
    (3, 'claude-sonnet-4-20250514'),
    (4, 'claude-sonnet-4-20250514'),
    (5, 'claude-opus-4-5-20251101');

-- The insert trigger fills org_version with the current version.
ALTER TABLE orgkeeper.org ALTER COLUMN org_version DROP DEFAULT;
ALTER TABLE orgkeeper.org ALTER COLUMN agent SET DEFAULT 'CodeActAgent';
ALTER TABLE orgkeeper.org ALTER COLUMN billing_margin SET DEFAULT 1.0;
COMMENT ON COLUMN orgkeeper.org.org_version IS
  'Settings version (orgkeeper.settings_version): the current one for new organizations, the user''s user_version for migrated personal ones; orgkeeper.upgrade_org_settings moves it forward.';
