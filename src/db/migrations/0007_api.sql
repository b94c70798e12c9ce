-- 0007: the management API (docs/api.md). Runs with search_path set to the
-- service's schema. Upgrading a database that holds events adds two empty
-- tables and one index on event (built while `event` takes no inserts:
-- about 1 s per million events, see docs/operations.md).

-- Bearer tokens. Only the SHA-256 of a token is stored; the token itself is
-- printed once by `token create`. A token is either an admin token
-- (namespace NULL, every namespace) or bound to one namespace.
CREATE TABLE api_token (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (name <> ''),
    namespace   text CHECK (namespace <> ''),
    admin       boolean NOT NULL DEFAULT false,
    read_only   boolean NOT NULL DEFAULT false,
    token_hash  bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CHECK (admin = (namespace IS NULL))
);

-- Idempotency keys of `POST /v1/namespaces/{ns}/events`: the first answer
-- to a key, kept 24 h, so that a retried POST returns it and enqueues
-- nothing. `request_hash` is the SHA-256 of the request's JSON body.
CREATE TABLE idempotency_key (
    namespace    text NOT NULL,
    key          text NOT NULL CHECK (key <> '' AND octet_length(key) <= 255),
    request_hash bytea NOT NULL,
    status       integer NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, key)
);
CREATE INDEX idempotency_key_created ON idempotency_key (created_at);

-- The API's event log: a namespace's events newest first, by keyset.
CREATE INDEX event_namespace_created ON event (namespace, created_at DESC, id DESC);
