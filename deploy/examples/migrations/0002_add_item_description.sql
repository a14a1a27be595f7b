-- phase: expand
-- demo-app v2 (FEATURE_FLAG_NEW_API=1) reads and writes items.description. Nullable and without
-- a constraint, so v1, which never names the column, keeps working: v1 and v2 can run side by side.
-- +up
ALTER TABLE items ADD COLUMN description TEXT;
-- +down
ALTER TABLE items DROP COLUMN description;
