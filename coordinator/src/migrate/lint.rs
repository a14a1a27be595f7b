//! The compatibility gate for expand migrations: every statement is parsed with a real SQL parser
//! and refused if the old version of the app could break on the result (docs/how-it-works.md, "Database migrations").
use super::files::Db;
use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, Statement, TableConstraint,
};
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::collections::HashSet;

/// Destructive statements of `sql`, one description each (empty: safe for the old version).
///
/// SQL the parser does not understand (a dialect corner it lacks, or a plain syntax error the
/// database will reject inside the migration's transaction) is not waved through: its tokens are
/// scanned for every keyword a destructive statement needs, and any hit is a finding. Only SQL
/// that cannot even be tokenized is an error.
pub fn destructive_statements(sql: &str, db: Db) -> Result<Vec<String>, String> {
    let parsed = match db {
        Db::Sqlite => Parser::parse_sql(&SQLiteDialect {}, sql),
        Db::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, sql),
    };
    let statements = match parsed {
        Ok(statements) => statements,
        Err(parse_error) => return keyword_scan(sql, db, &parse_error.to_string()),
    };
    // Constraints on a table created by this same migration break nothing that exists.
    let mut new_tables = HashSet::new();
    let mut findings = Vec::new();
    for statement in &statements {
        match statement {
            Statement::CreateTable(ct) => {
                new_tables.insert(ct.name.to_string().to_lowercase());
            }
            Statement::Drop {
                object_type, names, ..
            } => findings.push(format!("DROP {object_type} {}", join(names))),
            Statement::Truncate(_) => findings.push("TRUNCATE".into()),
            Statement::CreateIndex(ci)
                if ci.unique && !new_tables.contains(&ci.table_name.to_string().to_lowercase()) =>
            {
                findings.push(format!(
                    "new UNIQUE index on existing table {}",
                    ci.table_name
                ))
            }
            Statement::AlterTable(at) => {
                let table = at.name.to_string();
                let existing = !new_tables.contains(&table.to_lowercase());
                for op in &at.operations {
                    if let Some(f) = alter_finding(&table, op, existing) {
                        findings.push(f);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(findings)
}

fn alter_finding(table: &str, op: &AlterTableOperation, existing: bool) -> Option<String> {
    match op {
        AlterTableOperation::DropColumn { column_names, .. } => {
            Some(format!("DROP COLUMN {} on {table}", join(column_names)))
        }
        AlterTableOperation::DropConstraint { .. } => None,
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => Some(format!(
            "RENAME COLUMN {old_column_name} TO {new_column_name} on {table}"
        )),
        AlterTableOperation::RenameTable { .. } => Some(format!("RENAME of table {table}")),
        AlterTableOperation::AlterColumn { column_name, op } => match op {
            AlterColumnOperation::SetNotNull => {
                Some(format!("SET NOT NULL on {table}.{column_name}"))
            }
            AlterColumnOperation::SetDataType { .. } => {
                Some(format!("ALTER {table}.{column_name} TYPE"))
            }
            _ => None,
        },
        AlterTableOperation::AddColumn { column_def, .. } => {
            let options: Vec<&ColumnOption> =
                column_def.options.iter().map(|o| &o.option).collect();
            let not_null = options.iter().any(|o| matches!(o, ColumnOption::NotNull));
            let default = options
                .iter()
                .any(|o| matches!(o, ColumnOption::Default(_)));
            (not_null && !default).then(|| {
                format!(
                    "ADD COLUMN {} NOT NULL without a default on {table}",
                    column_def.name
                )
            })
        }
        AlterTableOperation::AddConstraint { constraint, .. } if existing => match constraint {
            TableConstraint::Unique(_) | TableConstraint::PrimaryKey(_) => {
                Some(format!("new UNIQUE constraint on existing table {table}"))
            }
            TableConstraint::Check(_) => {
                Some(format!("new CHECK constraint on existing table {table}"))
            }
            TableConstraint::ForeignKey(_) => {
                Some(format!("new FOREIGN KEY on existing table {table}"))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The fallback for SQL the parser rejects: conservative, so it may refuse a safe statement (the
/// migration's `reason` header is the way past it) but never passes a destructive one.
fn keyword_scan(sql: &str, db: Db, parse_error: &str) -> Result<Vec<String>, String> {
    let tokens = match db {
        Db::Sqlite => Tokenizer::new(&SQLiteDialect {}, sql).tokenize(),
        Db::Postgres => Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize(),
    }
    .map_err(|e| format!("cannot tokenize: {e}"))?;
    let words: Vec<String> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
            _ => None,
        })
        .collect();
    let has = |k: &str| words.iter().any(|w| w == k);
    let not_null = words.windows(2).any(|p| p[0] == "NOT" && p[1] == "NULL");
    let mut risky: Vec<&str> = [
        "DROP",
        "RENAME",
        "TRUNCATE",
        "UNIQUE",
        "CHECK",
        "REFERENCES",
        "FOREIGN",
    ]
    .into_iter()
    .filter(|k| has(k))
    .collect();
    if has("ALTER") && has("TYPE") {
        risky.push("ALTER … TYPE");
    }
    if not_null && !has("DEFAULT") {
        risky.push("NOT NULL without DEFAULT");
    }
    Ok(risky
        .into_iter()
        .map(|k| {
            format!("{k} in SQL the parser could not check statement by statement ({parse_error})")
        })
        .collect())
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(sql: &str) -> Vec<String> {
        let sqlite = destructive_statements(sql, Db::Sqlite).unwrap();
        let postgres = destructive_statements(sql, Db::Postgres).unwrap();
        assert_eq!(sqlite.len(), postgres.len(), "{sql}");
        postgres
    }

    #[test]
    fn safe_expand_statements_pass() {
        assert!(lint("ALTER TABLE items ADD COLUMN description TEXT;").is_empty());
        assert!(lint("ALTER TABLE items ADD COLUMN rank INTEGER NOT NULL DEFAULT 0;").is_empty());
        assert!(lint("CREATE TABLE tags (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL); CREATE UNIQUE INDEX tags_name ON tags (name);").is_empty());
        assert!(
            lint("CREATE INDEX items_name ON items (name); UPDATE items SET name = name;")
                .is_empty()
        );
    }

    #[test]
    fn each_destructive_kind_is_named() {
        let cases = [
            ("DROP TABLE items;", "DROP TABLE items"),
            ("ALTER TABLE items DROP COLUMN name;", "DROP COLUMN name"),
            (
                "ALTER TABLE items RENAME COLUMN name TO title;",
                "RENAME COLUMN",
            ),
            ("ALTER TABLE items RENAME TO things;", "RENAME of table"),
            (
                "ALTER TABLE items ADD COLUMN rank INTEGER NOT NULL;",
                "NOT NULL without a default",
            ),
            ("TRUNCATE items;", "TRUNCATE"),
            (
                "CREATE UNIQUE INDEX items_name ON items (name);",
                "UNIQUE index",
            ),
        ];
        for (sql, expect) in cases {
            let findings = destructive_statements(sql, Db::Sqlite).unwrap();
            assert!(
                findings.iter().any(|f| f.contains(expect)),
                "{sql}: {findings:?}"
            );
        }
        let pg_only = [
            (
                "ALTER TABLE items ALTER COLUMN name TYPE VARCHAR(10);",
                "TYPE",
            ),
            (
                "ALTER TABLE items ALTER COLUMN name SET NOT NULL;",
                "SET NOT NULL",
            ),
            (
                "ALTER TABLE items ADD CONSTRAINT u UNIQUE (name);",
                "UNIQUE constraint",
            ),
            (
                "ALTER TABLE items ADD CONSTRAINT c CHECK (id > 0);",
                "CHECK",
            ),
            (
                "ALTER TABLE items ADD CONSTRAINT f FOREIGN KEY (tag) REFERENCES tags (id);",
                "FOREIGN KEY",
            ),
        ];
        for (sql, expect) in pg_only {
            let findings = destructive_statements(sql, Db::Postgres).unwrap();
            assert!(
                findings.iter().any(|f| f.contains(expect)),
                "{sql}: {findings:?}"
            );
        }
    }

    #[test]
    fn unparsable_sql_is_scanned_for_destructive_keywords() {
        let findings =
            destructive_statements("ALTER TABLE items DROP COLUMN;", Db::Postgres).unwrap();
        assert!(findings[0].starts_with("DROP in SQL the parser could not check"));
        // A plain syntax error with nothing destructive in it is left to the database, which
        // rejects it inside the migration's transaction.
        let typo = "ALTER TABLE items ADD COLUMN d TEXT; INSERT INTO items (name VALUES ('x');";
        assert!(destructive_statements(typo, Db::Sqlite).unwrap().is_empty());
        assert!(destructive_statements("SELECT 'unterminated", Db::Sqlite).is_err());
    }
}
