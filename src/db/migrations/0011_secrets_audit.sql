-- 0011: secrets kept secret and the audit trail (docs/security.md). Runs
-- with search_path set to the service's schema. Upgrading a database that
-- holds channels adds two empty tables and changes no row: `migrate`
-- encrypts existing signing secrets and header values afterwards, in small
-- steps, when `[secrets] key_file` is set (the values carry their key id,
-- so plain and encrypted rows live side by side meanwhile).

-- A key rotation's bridges: each key wrapped (sealed) under the other, so
-- that an instance still configured with either key reads values sealed
-- under both while `secrets rotate-key` re-encrypts and the instances move
-- to the new key file. Removed by the rotation that finishes (see
-- docs/security.md).
CREATE TABLE secret_key_bridge (
    key_id     text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    wrapped_by text NOT NULL CHECK (wrapped_by ~ '^[0-9a-f]{16}$'),
    wrapped    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, wrapped_by),
    CHECK (key_id <> wrapped_by)
);

-- The audit trail: one row per change made through either door, written in
-- the change's own transaction. The actor is a token (its id and name) or
-- the command line (`cli` and the OS user).
CREATE TABLE audit (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    namespace   text,
    actor_kind  text NOT NULL CHECK (actor_kind IN ('token', 'cli')),
    actor_id    uuid,
    actor_name  text NOT NULL,
    operation   text NOT NULL,
    object_kind text NOT NULL,
    object_id   text
);
-- A namespace's trail, newest first, by keyset; and pruning by age.
CREATE INDEX audit_namespace_at ON audit (namespace, at DESC, id DESC);
CREATE INDEX audit_at ON audit (at);
