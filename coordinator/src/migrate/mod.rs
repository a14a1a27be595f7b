//! Database migrations that keep rollback safe (docs/how-it-works.md, "Database migrations"):
//! expand-only during a deploy, linted statement by statement, recorded in `schema_migrations`,
//! contract gated on what every running color's version can live with. The operator's
//! `coordinator migrate` lives in the command layer.
pub mod expand;
pub mod files;
pub mod gate;
pub mod lint;
pub mod plan;
pub mod runner;
pub mod sql;
pub mod store;
