-- phase: expand
-- The table demo-app v1 reads and writes.
-- +up postgres
CREATE TABLE IF NOT EXISTS items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
-- +up sqlite
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);
-- +down
DROP TABLE items;
