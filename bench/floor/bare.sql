-- The org INSERT with its logic taken out, for bench/floor/run.sh: the
-- rows the design requires (the org, its owner's membership, the owner's
-- current org, the provisioning action) written by two bare triggers, with
-- the schema's indexes, constraints and foreign keys as they are. No checks
-- (creator, policy, names, trust), no notify, no key lifecycle, no
-- membership version. Installed in the benchmark's own database only.
CREATE FUNCTION public.floor_before() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.id := gen_random_uuid();
    NEW.org_version := 1;
    RETURN NEW;
END $$;

CREATE FUNCTION public.floor_after() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO orgkeeper.org_member (org_id, user_id, role_id, status)
    VALUES (NEW.id, NEW.created_by, (SELECT id FROM orgkeeper.role WHERE name = 'owner'), 'active');
    UPDATE orgkeeper.users SET current_org_id = NEW.id, updated_at = now()
     WHERE id = NEW.created_by AND current_org_id IS NULL;
    INSERT INTO orgkeeper.pending_external_actions (kind, org_id, user_id, payload)
    VALUES ('litellm.provision_org', NEW.id, NEW.created_by, '{}');
    RETURN NULL;
END $$;

CREATE TRIGGER zz_floor_before BEFORE INSERT ON orgkeeper.org FOR EACH ROW EXECUTE FUNCTION public.floor_before();
CREATE TRIGGER zz_floor_after AFTER INSERT ON orgkeeper.org FOR EACH ROW EXECUTE FUNCTION public.floor_after();
ALTER TABLE orgkeeper.org DISABLE TRIGGER zz_floor_before, DISABLE TRIGGER zz_floor_after;
