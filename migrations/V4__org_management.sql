-- V4: organization management — who may create team organizations, and invitations.
-- Functions: sql/members.sql, sql/invitations.sql.

------------------------------------------------------------------------------
-- tables
------------------------------------------------------------------------------
CREATE TABLE orgkeeper.org_creator_allowlist (
    user_id  uuid PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now(),
    note     text
);
COMMENT ON TABLE orgkeeper.org_creator_allowlist IS
  'Optional allow-list of users who may create team organizations. Empty = everyone may. Personal organizations are never restricted.';

CREATE TABLE orgkeeper.invitation (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES orgkeeper.org (id) ON DELETE CASCADE,
    email       text        NOT NULL,
    role_id     integer     NOT NULL REFERENCES orgkeeper.role (id),
    token_hash  bytea       NOT NULL CONSTRAINT invitation_token_unique UNIQUE,
    invited_by  uuid        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by uuid,
    revoked_at  timestamptz,
    CONSTRAINT invitation_email_nonempty CHECK (btrim(email) <> ''),
    CONSTRAINT invitation_used_once CHECK (accepted_at IS NULL OR revoked_at IS NULL),
    CONSTRAINT invitation_accept_pair CHECK ((accepted_at IS NULL) = (accepted_by IS NULL))
);
CREATE INDEX invitation_org_idx ON orgkeeper.invitation (org_id);
COMMENT ON TABLE orgkeeper.invitation IS
  'Invitations to join an organization. Only the SHA-256 of the token is stored; accepting is single-use, checks expiry and email, and writes the membership in the same transaction.';
COMMENT ON COLUMN orgkeeper.invitation.token_hash IS 'sha256 of the token handed to the invitee; the token itself is never stored.';
