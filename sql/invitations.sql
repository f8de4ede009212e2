-- invitations.sql — inviting people into an organization by email.
--
-- * The token is 244 random bits (two gen_random_uuid()s, PostgreSQL's strong
--   random source) in hex with the prefix "okinv_" (so secret scanners can
--   spot leaked ones). Only its SHA-256 is stored; the token is shown once.
-- * An invitation carries a role no stronger than the inviter's, an email and
--   an expiry. Inviting the same address again revokes the open one.
-- * Accepting is single-use and checks, in this order: the token, revocation,
--   earlier use, expiry, the accepting user's email (case-insensitive, from
--   orgkeeper.users.email, and verified by the identity provider), and that
--   the inviter still may grant the role.
--   The membership is written in the same transaction; the invitation row is
--   locked, so two concurrent accepts give one membership and one refusal.
--
-- SQLSTATEs: 22004 NULL argument, 22023 invalid email / validity / role,
-- 42501 not allowed (rank, wrong email), P0002 unknown organization /
-- invitation / user, 55000 expired, revoked or used invitation, 23505 already
-- a member.

------------------------------------------------------------------------------
-- helpers
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.invitation_token_hash(p_token text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT sha256(convert_to(btrim(p_token), 'UTF8'));
$$;
COMMENT ON FUNCTION orgkeeper.invitation_token_hash(text) IS
  'The stored form of an invitation token: SHA-256 of its UTF-8 bytes (surrounding spaces ignored).';

CREATE OR REPLACE FUNCTION orgkeeper.invitation_status(p_inv orgkeeper.invitation) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
    SELECT CASE
        WHEN p_inv.accepted_at IS NOT NULL THEN 'accepted'
        WHEN p_inv.revoked_at IS NOT NULL THEN 'revoked'
        WHEN p_inv.expires_at <= now() THEN 'expired'
        ELSE 'pending'
    END;
$$;
COMMENT ON FUNCTION orgkeeper.invitation_status(orgkeeper.invitation) IS
  'accepted, revoked, expired or pending.';

CREATE OR REPLACE FUNCTION orgkeeper.find_invitation(p_token text, p_function text) RETURNS orgkeeper.invitation
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org_id uuid;
    v_inv    orgkeeper.invitation;
BEGIN
    IF p_token IS NULL THEN PERFORM orgkeeper.refuse_null(p_function, 'token'); END IF;
    SELECT i.org_id INTO v_org_id FROM orgkeeper.invitation i
     WHERE i.token_hash = orgkeeper.invitation_token_hash(p_token);
    IF FOUND THEN
        -- Lock order everywhere: the organization, then its invitations
        -- (deleting an organization takes them in that order too).
        PERFORM orgkeeper.lock_org(v_org_id);
        SELECT * INTO v_inv FROM orgkeeper.invitation i
         WHERE i.token_hash = orgkeeper.invitation_token_hash(p_token)
           FOR UPDATE;
    END IF;
    IF v_inv.id IS NULL THEN
        RAISE EXCEPTION '%: no invitation matches this token', p_function
            USING ERRCODE = 'no_data_found',
                  HINT = 'check that the whole token was copied (it starts with okinv_), or ask the organization for a new invitation';
    END IF;
    RETURN v_inv;
END;
$$;
COMMENT ON FUNCTION orgkeeper.find_invitation(text, text) IS
  'The invitation a token belongs to, locked FOR UPDATE after its organization (so accepts and revokes of one invitation run one at a time, without deadlocking against a deletion); raises P0002 when no invitation matches.';

------------------------------------------------------------------------------
-- verified emails
------------------------------------------------------------------------------
-- The application may write its own user's email, so an email is only
-- evidence once the identity provider verified it. users.email_verified is
-- not granted to the application; the sync (orgkeeper_identity) and trusted
-- roles set it, and any other change of the email resets it.
CREATE OR REPLACE FUNCTION orgkeeper.caller_may_verify_email() RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    RETURN orgkeeper.caller_is_trusted() OR pg_has_role(orgkeeper.caller_role(), 'orgkeeper_identity', 'MEMBER');
END;
$$;
COMMENT ON FUNCTION orgkeeper.caller_may_verify_email() IS
  'True when the session''s role may say an email is verified: the identity-provider sync (members of orgkeeper_identity) and trusted roles (orgkeeper.caller_is_trusted).';

CREATE OR REPLACE FUNCTION orgkeeper.users_email_verification() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
BEGIN
    -- Cheapest test first: a row already unverified needs no role lookup.
    IF NEW.email_verified IS DISTINCT FROM false
       AND (TG_OP = 'INSERT' OR NEW.email IS DISTINCT FROM OLD.email)
       AND NOT orgkeeper.caller_may_verify_email() THEN
        NEW.email_verified := false;
    END IF;
    RETURN NEW;
END;
$$;
COMMENT ON FUNCTION orgkeeper.users_email_verification() IS
  'Trigger: a users row written by anyone but the identity sync or a trusted role (orgkeeper.caller_may_verify_email) has an unverified email when it is inserted or its email changes (email_verified = false).';

DROP TRIGGER IF EXISTS users_email_verification ON orgkeeper.users;
CREATE TRIGGER users_email_verification
    BEFORE INSERT OR UPDATE OF email, email_verified ON orgkeeper.users
    FOR EACH ROW EXECUTE FUNCTION orgkeeper.users_email_verification();

------------------------------------------------------------------------------
-- create and list
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.create_invitation(actor uuid, org_id uuid, email text, role text,
                                                       valid_for interval DEFAULT '7 days')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_email  text := btrim($3);
    v_valid  interval := $5;
    v_role   orgkeeper.role;
    v_org    orgkeeper.org;
    v_rank   integer;
    v_member uuid;
    v_open   record;
    v_token  text;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'create_invitation');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('create_invitation', 'org_id'); END IF;
    IF v_email IS NULL THEN PERFORM orgkeeper.refuse_null('create_invitation', 'email'); END IF;
    IF $4 IS NULL THEN PERFORM orgkeeper.refuse_null('create_invitation', 'role'); END IF;
    IF v_valid IS NULL THEN PERFORM orgkeeper.refuse_null('create_invitation', 'valid_for'); END IF;
    IF v_email !~ '^[^@[:space:]]+@[^@[:space:]]+$' OR char_length(v_email) > 320 THEN
        RAISE EXCEPTION 'invitation email % is not an email address', quote_literal(v_email)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'give the invitee''s address, e.g. ada@example.com';
    END IF;
    IF v_valid <= interval '0' OR v_valid > interval '90 days' THEN
        RAISE EXCEPTION 'an invitation must be valid for more than 0 and at most 90 days, not %', v_valid
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'the default is 7 days';
    END IF;
    v_role := orgkeeper.role_by_name($4);
    v_org := orgkeeper.lock_org(v_org_id);
    v_rank := orgkeeper.require_manager(v_actor, v_org, format('invite %s', v_email));
    PERFORM orgkeeper.require_grantable(v_actor, v_rank, v_org, v_role);

    SELECT u.id INTO v_member
      FROM orgkeeper.users u JOIN orgkeeper.org_member m ON m.user_id = u.id
     WHERE m.org_id = v_org_id AND m.status = 'active' AND u.email_verified AND lower(btrim(u.email)) = lower(v_email)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% (user %) is already a member of organization "%"', v_email, v_member, v_org.name
            USING ERRCODE = 'unique_violation',
                  HINT = 'to change their role use orgkeeper.change_member_role';
    END IF;

    -- Inviting again replaces the open invitation (its token stops working),
    -- by the rank rule of revoking it: not an unexpired one for a role, or
    -- from an inviter, that outranks the actor.
    SELECT i.invited_by, r.name AS role_name, r.rank AS role_rank,
           coalesce((SELECT m.role_rank FROM orgkeeper.membership(v_org_id, i.invited_by) m WHERE m.status = 'active'),
                    r.rank) AS inviter_rank
      INTO v_open
      FROM orgkeeper.invitation i JOIN orgkeeper.role r ON r.id = i.role_id
     WHERE i.org_id = v_org_id AND lower(btrim(i.email)) = lower(v_email)
       AND i.accepted_at IS NULL AND i.revoked_at IS NULL AND i.expires_at > now();
    IF FOUND AND least(v_open.role_rank, v_open.inviter_rank) < v_rank THEN
        RAISE EXCEPTION 'user % cannot replace the open invitation of % to organization "%" (role %, from user %), which outranks them',
                v_actor, v_email, v_org.name, v_open.role_name, v_open.invited_by
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s", or invite again once that invitation expired or was revoked', v_org.name);
    END IF;
    UPDATE orgkeeper.invitation i SET revoked_at = now()
     WHERE i.org_id = v_org_id AND lower(btrim(i.email)) = lower(v_email)
       AND i.accepted_at IS NULL AND i.revoked_at IS NULL;

    v_token := 'okinv_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    INSERT INTO orgkeeper.invitation (org_id, email, role_id, token_hash, invited_by, expires_at)
    VALUES (v_org_id, v_email, v_role.id, orgkeeper.invitation_token_hash(v_token), v_actor, now() + v_valid);
    RETURN v_token;
END;
$$;
COMMENT ON FUNCTION orgkeeper.create_invitation(uuid, uuid, text, text, interval) IS
  'Invites an email address into an organization with a role, valid for valid_for (default 7 days, at most 90). Returns the token, shown only this once (only its SHA-256 is stored). Owners and admins only, never for a role that outranks the inviter (42501); bad email, validity or role 22023; the address already belongs to a member 23505; unknown organization P0002. An open invitation for the same address is revoked, unless it is unexpired and its role or its inviter outranks the actor (42501).';

CREATE OR REPLACE FUNCTION orgkeeper.list_invitations(actor uuid, org_id uuid)
RETURNS TABLE (id bigint, email text, role text, status text, invited_by uuid, created_at timestamptz,
               expires_at timestamptz, accepted_by uuid, accepted_at timestamptz, revoked_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor  uuid := $1;
    v_org_id uuid := $2;
    v_org    orgkeeper.org;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'list_invitations');
    IF v_org_id IS NULL THEN PERFORM orgkeeper.refuse_null('list_invitations', 'org_id'); END IF;
    v_org := orgkeeper.find_org(v_org_id);
    PERFORM orgkeeper.require_manager(v_actor, v_org, 'list its invitations');
    RETURN QUERY
        SELECT i.id, i.email, r.name, orgkeeper.invitation_status(i), i.invited_by, i.created_at,
               i.expires_at, i.accepted_by, i.accepted_at, i.revoked_at
          FROM orgkeeper.invitation i JOIN orgkeeper.role r ON r.id = i.role_id
         WHERE i.org_id = v_org_id
         ORDER BY i.created_at DESC, i.id DESC;
END;
$$;
COMMENT ON FUNCTION orgkeeper.list_invitations(uuid, uuid) IS
  'The invitations of an organization, newest first, with their status (pending, expired, accepted, revoked); never the tokens. Owners and admins only (42501); unknown organization P0002.';

------------------------------------------------------------------------------
-- revoke
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.revoke_invitation_row(p_actor uuid, p_inv orgkeeper.invitation, p_function text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_org  orgkeeper.org;
    v_rank integer;
    v_role orgkeeper.role;
BEGIN
    v_org := orgkeeper.lock_org(p_inv.org_id);
    v_rank := orgkeeper.require_manager(p_actor, v_org, format('revoke invitations (%s)', p_inv.email));
    SELECT * INTO v_role FROM orgkeeper.role r WHERE r.id = p_inv.role_id;
    IF v_role.rank < v_rank THEN
        RAISE EXCEPTION 'user % cannot revoke the invitation of % to organization "%" as %, a role that outranks theirs',
                p_actor, p_inv.email, v_org.name, v_role.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('ask an owner of "%s"', v_org.name);
    END IF;
    IF p_inv.accepted_at IS NOT NULL THEN
        RAISE EXCEPTION 'the invitation of % to organization "%" was already accepted (by user % at %)',
                p_inv.email, v_org.name, p_inv.accepted_by, p_inv.accepted_at
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'to take the membership back use orgkeeper.remove_member';
    END IF;
    IF p_inv.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'the invitation of % to organization "%" was already revoked at %', p_inv.email, v_org.name, p_inv.revoked_at
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'nothing to do; it can no longer be accepted';
    END IF;
    UPDATE orgkeeper.invitation i SET revoked_at = now() WHERE i.id = p_inv.id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.revoke_invitation_row(uuid, orgkeeper.invitation, text) IS
  'Revokes a locked invitation after the checks shared by revoke_invitation and revoke_invitation_by_id.';

CREATE OR REPLACE FUNCTION orgkeeper.revoke_invitation(actor uuid, token text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor uuid := $1;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'revoke_invitation');
    PERFORM orgkeeper.revoke_invitation_row(v_actor, orgkeeper.find_invitation($2, 'revoke_invitation'), 'revoke_invitation');
END;
$$;
COMMENT ON FUNCTION orgkeeper.revoke_invitation(uuid, text) IS
  'Revokes an invitation by its token. Owners and admins of its organization only, never an invitation for a role that outranks them (42501); no such invitation P0002; already accepted or revoked 55000. An expired invitation can still be revoked.';

CREATE OR REPLACE FUNCTION orgkeeper.revoke_invitation_by_id(actor uuid, invitation_id bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_actor uuid := $1;
    v_id    bigint := $2;
    v_inv   orgkeeper.invitation;
BEGIN
    PERFORM orgkeeper.check_actor(v_actor, 'revoke_invitation_by_id');
    IF v_id IS NULL THEN PERFORM orgkeeper.refuse_null('revoke_invitation_by_id', 'invitation_id'); END IF;
    SELECT * INTO v_inv FROM orgkeeper.invitation i WHERE i.id = v_id;
    IF FOUND THEN
        PERFORM orgkeeper.lock_org(v_inv.org_id); -- organization first, then the invitation
        SELECT * INTO v_inv FROM orgkeeper.invitation i WHERE i.id = v_id FOR UPDATE;
    END IF;
    IF v_inv.id IS NULL THEN
        RAISE EXCEPTION 'invitation % does not exist', v_id
            USING ERRCODE = 'no_data_found',
                  HINT = 'orgkeeper.list_invitations(actor, org_id) lists an organization''s invitations';
    END IF;
    PERFORM orgkeeper.revoke_invitation_row(v_actor, v_inv, 'revoke_invitation_by_id');
END;
$$;
COMMENT ON FUNCTION orgkeeper.revoke_invitation_by_id(uuid, bigint) IS
  'Revokes an invitation by the id list_invitations shows (admins no longer have the token). Same rules as revoke_invitation.';

------------------------------------------------------------------------------
-- accept
------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgkeeper.accept_invitation(user_id uuid, token text) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, orgkeeper, pg_temp AS $$
DECLARE
    v_user    uuid := $1;
    v_inv     orgkeeper.invitation;
    v_org     orgkeeper.org;
    v_role    orgkeeper.role;
    v_email   text;
    v_verified boolean;
    v_inviter record;
    v_t       record;
BEGIN
    PERFORM orgkeeper.check_actor(v_user, 'accept_invitation');
    v_inv := orgkeeper.find_invitation($2, 'accept_invitation');
    v_org := orgkeeper.lock_org(v_inv.org_id);
    SELECT * INTO v_role FROM orgkeeper.role r WHERE r.id = v_inv.role_id;

    IF v_inv.revoked_at IS NOT NULL THEN
        RAISE EXCEPTION 'the invitation to organization "%" was revoked at %', v_org.name, v_inv.revoked_at
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('ask an owner or admin of "%s" for a new invitation', v_org.name);
    END IF;
    IF v_inv.accepted_at IS NOT NULL THEN
        IF v_inv.accepted_by = v_user THEN
            RAISE EXCEPTION 'user % already accepted the invitation to organization "%" at %', v_user, v_org.name, v_inv.accepted_at
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'nothing to do: the membership exists; an invitation can be used once';
        END IF;
        RAISE EXCEPTION 'the invitation to organization "%" has already been used', v_org.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('an invitation can be used once; ask an owner or admin of "%s" for your own', v_org.name);
    END IF;
    IF v_inv.expires_at <= now() THEN
        RAISE EXCEPTION 'the invitation to organization "%" expired at %', v_org.name, v_inv.expires_at
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('ask an owner or admin of "%s" for a new invitation', v_org.name);
    END IF;

    SELECT u.email, coalesce(u.email_verified, false) INTO v_email, v_verified FROM orgkeeper.users u WHERE u.id = v_user;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % is not known to orgkeeper, so the invitation to organization "%" cannot be matched to their email', v_user, v_org.name
            USING ERRCODE = 'no_data_found',
                  HINT = 'record the user with their email first: INSERT INTO orgkeeper.users (id, email) VALUES (...)';
    END IF;
    IF nullif(btrim(v_email), '') IS NULL THEN
        RAISE EXCEPTION 'user % has no email on record, so the invitation to organization "%" cannot be matched', v_user, v_org.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'set orgkeeper.users.email from the identity provider, then accept again';
    END IF;
    IF NOT v_verified THEN
        RAISE EXCEPTION 'user %''s email is not verified, so the invitation to organization "%" cannot be matched to it', v_user, v_org.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'invitations match only an address the identity provider verified (users.email_verified, set by its sync); verify the address there, then accept again';
    END IF;
    IF lower(btrim(v_email)) <> lower(btrim(v_inv.email)) THEN
        RAISE EXCEPTION 'the invitation to organization "%" was sent to another address than user %''s (%)', v_org.name, v_user, v_email
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('sign in with the invited address, or ask an owner or admin of "%s" to invite %s', v_org.name, v_email);
    END IF;

    -- An invitation is only as good as its inviter's authority today.
    SELECT * INTO v_inviter FROM orgkeeper.membership(v_org.id, v_inv.invited_by);
    IF v_inviter.status IS DISTINCT FROM 'active' OR v_inviter.role_rank > orgkeeper.manager_rank()
       OR v_inviter.role_rank > v_role.rank THEN
        RAISE EXCEPTION 'the invitation to organization "%" is no longer valid: its inviter % may no longer grant role %', v_org.name, v_inv.invited_by, v_role.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('ask a current owner or admin of "%s" for a new invitation', v_org.name);
    END IF;

    SELECT * INTO v_t FROM orgkeeper.membership(v_org.id, v_user);
    IF v_t.status = 'active' THEN
        RAISE EXCEPTION 'user % is already a member of organization "%" (role %)', v_user, v_org.name, v_t.role_name
            USING ERRCODE = 'unique_violation',
                  HINT = 'nothing to do; the invitation was left unused';
    ELSIF v_t.status IS NOT NULL THEN
        UPDATE orgkeeper.org_member m SET role_id = v_role.id, status = 'active', updated_at = now()
         WHERE m.org_id = v_org.id AND m.user_id = v_user;
    ELSE
        INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
        VALUES (v_org.id, v_user, v_role.id, 'active');
    END IF;
    UPDATE orgkeeper.invitation i SET accepted_at = now(), accepted_by = v_user WHERE i.id = v_inv.id;
    UPDATE orgkeeper.users u SET current_org_id = v_org.id, updated_at = now()
     WHERE u.id = v_user AND u.current_org_id IS NULL;
    RETURN v_org.id;
END;
$$;
COMMENT ON FUNCTION orgkeeper.accept_invitation(uuid, text) IS
  'The user accepts an invitation: single-use, writes the active membership with the invited role in this transaction (the member gets their own LiteLLM key: trigger org_member_key_lifecycle enqueues litellm.add_member), returns the org id. '
  'Refusals: no such token or unknown user P0002; revoked, already used, expired, no email on record, an email the identity provider has not verified (users.email_verified), or the inviter may no longer grant the role 55000; the user''s verified email (orgkeeper.users.email, case-insensitive) is not the invited one 42501; already a member 23505.';
