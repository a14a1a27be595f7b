//! What `schema_migrations` and the migration files say together: which migration is applied,
//! pending or failed, and every inconsistency that must stop a migrator before it touches the
//! schema. Pure logic: the database is read by `store`, the files by `files`.
use super::files::{Migration, Phase};
use serde::Serialize;
use std::collections::BTreeMap;

/// One row of `schema_migrations`. Rows are never deleted: a revert sets `reverted_at`, and a
/// later apply of the same version adds a new row, so the table is the database's own history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedRow {
    pub id: i64,
    pub version: i64,
    pub name: String,
    pub phase: String,
    pub checksum: String,
    pub app_version: String,
    pub deploy_id: String,
    pub applied_at: String,
    pub execution_ms: i64,
    pub success: bool,
    pub reverted_at: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    Pending,
    /// A non-transactional migration that failed part-way: its changes may be half there.
    Failed,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub migration: Migration,
    pub state: State,
    /// The newest row for this version, if any (a reverted one included).
    pub row: Option<AppliedRow>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub entries: Vec<Entry>,
    /// Rows applied in the database whose file is gone.
    pub orphans: Vec<AppliedRow>,
    /// Inconsistencies that must stop every migrator, `down` included, each naming the file.
    pub problems: Vec<String>,
    /// Failed non-transactional migrations: they stop `up`, `contract` and `deploy`; `down` is
    /// the way out of them.
    pub failures: Vec<String>,
}

impl Plan {
    pub fn new(files: &[Migration], rows: &[AppliedRow], dir_shown: &str) -> Plan {
        let mut newest: BTreeMap<i64, &AppliedRow> = BTreeMap::new();
        for row in rows {
            if newest.get(&row.version).is_none_or(|r| r.id < row.id) {
                newest.insert(row.version, row);
            }
        }
        let mut plan = Plan::default();
        for m in files {
            let row = newest.remove(&m.version).cloned();
            let state = match &row {
                Some(r) if r.reverted_at.is_none() && r.success => State::Applied,
                Some(r) if r.reverted_at.is_none() => State::Failed,
                _ => State::Pending,
            };
            let file = m.file.display();
            if let (State::Applied | State::Failed, Some(r)) = (state, &row) {
                if r.checksum != m.checksum {
                    plan.problems.push(format!(
                        "{file}: edited after it was applied on {} (checksum was {}, is now {}); \
                         an applied migration must never change: put the change in a new migration",
                        r.applied_at,
                        short(&r.checksum),
                        short(&m.checksum)
                    ));
                }
            }
            if let (State::Failed, Some(r)) = (state, &row) {
                plan.failures.push(format!(
                    "{file}: failed on {} outside a transaction ({}); its changes may be half \
                     applied: repair the schema, then `coordinator migrate down` runs its down \
                     script and marks it reverted",
                    r.applied_at,
                    r.error.as_deref().unwrap_or("no error recorded")
                ));
            }
            plan.entries.push(Entry {
                migration: m.clone(),
                state,
                row,
            });
        }
        for row in newest.into_values() {
            if row.reverted_at.is_none() {
                plan.problems.push(format!(
                    "schema_migrations: version {} ({}) is applied but {dir_shown} has no file \
                     with that version; restore the file (or revert it from the release that has it)",
                    row.version, row.name
                ));
                plan.orphans.push(row.clone());
            }
        }
        if let Some(highest) = plan.highest_applied() {
            let lower: Vec<String> = plan
                .pending()
                .filter(|e| e.migration.version < highest)
                .map(|e| {
                    format!(
                        "{}: version {} is pending but version {highest} is already applied; \
                         migrations apply in version order: give it a version above {highest}",
                        e.migration.file.display(),
                        e.migration.version
                    )
                })
                .collect();
            plan.problems.extend(lower);
        }
        plan
    }

    fn highest_applied(&self) -> Option<i64> {
        self.entries
            .iter()
            .filter(|e| e.state != State::Pending)
            .map(|e| e.migration.version)
            .chain(self.orphans.iter().map(|r| r.version))
            .max()
    }

    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.state == State::Pending)
    }

    /// What `up` and `deploy` apply: pending expand migrations, in order, up to the first
    /// pending contract migration (which only `migrate contract` may run), returned second.
    pub fn expand_run(&self) -> (Vec<&Migration>, Option<&Migration>) {
        let mut run = Vec::new();
        for e in self.pending() {
            if e.migration.phase == Phase::Contract {
                return (run, Some(&e.migration));
            }
            run.push(&e.migration);
        }
        (run, None)
    }

    /// The newest migration that is applied or failed: what `migrate down` reverts.
    pub fn newest_applied(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.state != State::Pending)
    }

    /// Everything that stops a forward migration, one per line; Ok when there is nothing.
    pub fn check(&self) -> Result<(), String> {
        joined(self.problems.iter().chain(&self.failures))
    }

    /// What stops `down`: a failed migration does not, since reverting it is the way out.
    pub fn check_revertible(&self) -> Result<(), String> {
        joined(self.problems.iter())
    }
}

fn joined<'a>(lines: impl Iterator<Item = &'a String>) -> Result<(), String> {
    let lines: Vec<&str> = lines.map(String::as_str).collect();
    if lines.is_empty() {
        Ok(())
    } else {
        Err(lines.join("\n"))
    }
}

fn short(checksum: &str) -> &str {
    &checksum[..checksum.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::files::parse;
    use std::path::Path;

    fn file(version: i64, phase: &str, body: &str) -> Migration {
        let requires = if phase == "contract" {
            "-- requires: v2\n"
        } else {
            ""
        };
        let text = format!("-- phase: {phase}\n{requires}-- +up\n{body}\n-- +down\nSELECT 1;\n");
        parse(Path::new(&format!("m/{version:04}_m{version}.sql")), &text).unwrap()
    }

    fn row(id: i64, m: &Migration, success: bool, reverted: bool) -> AppliedRow {
        AppliedRow {
            id,
            version: m.version,
            name: m.name.clone(),
            phase: m.phase.as_str().into(),
            checksum: m.checksum.clone(),
            app_version: "v1".into(),
            deploy_id: "d".into(),
            applied_at: "2026-11-28T00:00:00Z".into(),
            execution_ms: 1,
            success,
            reverted_at: reverted.then(|| "2026-11-28T00:01:00Z".into()),
            error: (!success).then(|| "boom".into()),
        }
    }

    /// `rollback --to`: an applied contract migration requiring v2 forbids v1, names the file;
    /// a reverted or failed one forbids nothing, and v2 or newer may run.
    #[test]
    fn an_applied_contract_forbids_versions_older_than_it_requires() {
        use crate::migrate::gate::contract_forbids;
        let files = [
            file(1, "expand", "SELECT 1;"),
            file(2, "contract", "SELECT 2;"),
        ];
        let applied = [
            row(1, &files[0], true, false),
            row(2, &files[1], true, false),
        ];
        let why = contract_forbids("v1", &files, &applied);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("0002_m2.sql") && why[0].contains("requires v2"),
            "{why:?}"
        );
        assert!(contract_forbids("v2", &files, &applied).is_empty());
        assert!(contract_forbids("v10", &files, &applied).is_empty());
        for undone in [
            row(2, &files[1], true, true),
            row(2, &files[1], false, false),
        ] {
            let rows = [row(1, &files[0], true, false), undone];
            assert!(contract_forbids("v1", &files, &rows).is_empty());
        }
    }

    #[test]
    fn states_follow_the_newest_row() {
        let files = [
            file(1, "expand", "SELECT 1;"),
            file(2, "expand", "SELECT 2;"),
            file(3, "contract", "SELECT 3;"),
            file(4, "expand", "SELECT 4;"),
        ];
        let rows = [
            row(1, &files[0], true, false),
            row(2, &files[1], true, true),
        ];
        let plan = Plan::new(&files, &rows, "m");
        plan.check().unwrap();
        let states: Vec<State> = plan.entries.iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            [
                State::Applied,
                State::Pending,
                State::Pending,
                State::Pending
            ]
        );
        let (run, stop) = plan.expand_run();
        assert_eq!(run.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
        assert_eq!(stop.map(|m| m.version), Some(3));
        assert_eq!(plan.newest_applied().unwrap().migration.version, 1);
        // Re-applied after a revert: the newest row wins.
        let rows = [
            row(1, &files[0], true, false),
            row(2, &files[1], true, true),
            row(3, &files[1], true, false),
        ];
        assert_eq!(
            Plan::new(&files, &rows, "m").entries[1].state,
            State::Applied
        );
    }

    #[test]
    fn refusals_name_the_file() {
        let files = [
            file(1, "expand", "SELECT 1;"),
            file(2, "expand", "SELECT 2;"),
        ];
        let edited = file(1, "expand", "SELECT 'edited';");
        let drift = Plan::new(&[edited], &[row(1, &files[0], true, false)], "m");
        assert!(drift.problems[0].contains("m/0001_m1.sql: edited after it was applied"));

        let missing = Plan::new(&files[..1], &[row(1, &files[1], true, false)], "m");
        assert!(
            missing.problems[0].contains("version 2 (m2) is applied but m has no file"),
            "{:?}",
            missing.problems
        );

        let lower = Plan::new(&files, &[row(1, &files[1], true, false)], "m");
        assert!(lower.problems[0]
            .contains("m/0001_m1.sql: version 1 is pending but version 2 is already applied"));

        let failed = Plan::new(&files, &[row(1, &files[0], false, false)], "m");
        assert!(failed.failures[0].contains("m/0001_m1.sql: failed on"));
        assert!(failed.problems.is_empty() && failed.check().is_err());
        assert_eq!(failed.entries[0].state, State::Failed);
        assert_eq!(failed.newest_applied().unwrap().migration.version, 1);
    }
}
