-- phase: contract
-- requires: v2
-- v1 inserts items without a description, so NOT NULL may only come once no color runs v1 (the
-- rollback target included). v2 always writes one; rows from the v1 days are backfilled first.
-- +up postgres
UPDATE items SET description = '' WHERE description IS NULL;
ALTER TABLE items ALTER COLUMN description SET NOT NULL;
-- +down postgres
ALTER TABLE items ALTER COLUMN description DROP NOT NULL;
-- +up sqlite
-- SQLite cannot add NOT NULL to a column: the table is rebuilt, inside the migration's transaction.
UPDATE items SET description = '' WHERE description IS NULL;
CREATE TABLE items_contracted (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, description TEXT NOT NULL);
INSERT INTO items_contracted (id, name, description) SELECT id, name, description FROM items;
DROP TABLE items;
ALTER TABLE items_contracted RENAME TO items;
-- +down sqlite
CREATE TABLE items_expanded (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, description TEXT);
INSERT INTO items_expanded (id, name, description) SELECT id, name, description FROM items;
DROP TABLE items;
ALTER TABLE items_expanded RENAME TO items;
