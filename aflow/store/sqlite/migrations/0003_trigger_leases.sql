-- A triggerer holds ONE lease for all the triggers it runs: renewing it updates one row
-- here instead of every trigger row it owns (at 100,000 parked triggers, rewriting each
-- row and its index entry every few seconds cost a tenth of a core). A trigger row is
-- claimable when it has no owner or its owner's lease here has expired.
CREATE TABLE trigger_lease (
    owner        TEXT PRIMARY KEY,
    lease_until  TEXT NOT NULL
);
INSERT INTO trigger_lease (owner, lease_until)
    SELECT owner, MAX(lease_until) FROM trigger
    WHERE owner IS NOT NULL AND lease_until IS NOT NULL
    GROUP BY owner;
UPDATE trigger SET owner = NULL
    WHERE owner IS NOT NULL AND owner NOT IN (SELECT owner FROM trigger_lease);
UPDATE trigger SET lease_until = NULL;
DROP INDEX trigger_unfired;
CREATE INDEX trigger_unfired ON trigger (fired_at, owner);
