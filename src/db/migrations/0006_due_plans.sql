-- 0006: the retry timer's index is kept out of the due reads (docs/
-- architecture.md "Fair scheduling", "The due queries' plans"). Runs with
-- search_path set to the service's schema.

-- A channel's read ("due deliveries of channel X in next_attempt_at order")
-- must walk delivery_status_channel_due (channel_id, next_attempt_at, id).
-- With few channels PostgreSQL estimates `channel_id = X` to match a large
-- share of the rows (1/ndistinct), and with 0002's plain partial index on
-- next_attempt_at it often chose that index instead, filtering on the
-- channel: every read of a small channel then walked a big channel's whole
-- due backlog (185 ms per read at 310,000, even with fresh statistics).
--
-- The index is the same, with one more predicate that is always true
-- (attempt_count has a CHECK >= 0) and that only the two queries it is for
-- repeat: the retry timer (`db::due::NEXT_DUE_AFTER_SQL`) and the due count
-- (`db::due::NEXT_INDEX_FILTER`). A partial index is used only when the query
-- implies its predicate, so the planner cannot pick it for a read.
DROP INDEX delivery_status_next;
CREATE INDEX delivery_status_next ON delivery_status (next_attempt_at)
    WHERE state IN ('PENDING', 'SENDING', 'RESENDING') AND attempt_count >= 0;
