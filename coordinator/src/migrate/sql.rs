//! Splitting a script into statements, for migrations that opt out of the transaction
//! (`-- transaction: off`): PostgreSQL runs a multi-statement query as one implicit transaction,
//! which `CREATE INDEX CONCURRENTLY` refuses, so such scripts are sent one statement at a time.
use super::files::Db;
use sqlparser::dialect::{PostgreSqlDialect, SQLiteDialect};
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// The statements of `sql`, each with its original text, split at top-level semicolons (string
/// literals, comments, dollar quotes, `CASE … END` and SQLite trigger bodies are kept whole).
pub fn split_statements(sql: &str, db: Db) -> Result<Vec<String>, String> {
    let tokens = match db {
        Db::Sqlite => Tokenizer::new(&SQLiteDialect {}, sql).tokenize_with_location(),
        Db::Postgres => Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location(),
    }
    .map_err(|e| format!("cannot tokenize: {e}"))?;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut statements = Vec::new();
    let (mut start, mut depth, mut first_word, mut in_trigger) = (0, 0i32, None::<String>, false);
    for t in &tokens {
        match &t.token {
            Token::Word(w) if w.quote_style.is_none() => {
                let word = w.value.to_uppercase();
                if first_word.is_none() {
                    first_word = Some(word.clone());
                }
                match word.as_str() {
                    "TRIGGER" if first_word.as_deref() == Some("CREATE") => in_trigger = true,
                    "BEGIN" if in_trigger => depth += 1,
                    "CASE" => depth += 1,
                    "END" => depth -= 1,
                    _ => {}
                }
            }
            Token::SemiColon if depth <= 0 => {
                let end = offset(sql, &line_starts, t.span.start);
                push_statement(&mut statements, &sql[start..end]);
                start = end + 1;
                (depth, first_word, in_trigger) = (0, None, false);
            }
            _ => {}
        }
    }
    push_statement(&mut statements, &sql[start..]);
    Ok(statements)
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    let is_code = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with("--")
    });
    if is_code {
        statements.push(text.trim().to_string());
    }
}

/// Byte offset of a 1-based line/column (columns count characters).
fn offset(sql: &str, line_starts: &[usize], at: Location) -> usize {
    let line_start = line_starts[(at.line as usize).saturating_sub(1)];
    sql[line_start..]
        .char_indices()
        .nth((at.column as usize).saturating_sub(1))
        .map_or(sql.len(), |(i, _)| line_start + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "-- a comment; with a semicolon\nCREATE INDEX CONCURRENTLY i ON items (name);\n\
                   UPDATE items SET name = 'a;b' WHERE id = 1;\n\
                   DO $$ BEGIN PERFORM 1; END $$;\n";
        let statements = split_statements(sql, Db::Postgres).unwrap();
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(statements[0].ends_with("ON items (name)"));
        assert_eq!(statements[1], "UPDATE items SET name = 'a;b' WHERE id = 1");
        assert!(statements[2].contains("PERFORM 1; END"));
    }

    #[test]
    fn keeps_sqlite_trigger_bodies_and_case_whole() {
        let sql = "CREATE TRIGGER t AFTER INSERT ON items BEGIN UPDATE items SET name = CASE WHEN 1 THEN 'x' END; SELECT 1; END;\nSELECT 2";
        let statements = split_statements(sql, Db::Sqlite).unwrap();
        assert_eq!(statements.len(), 2, "{statements:#?}");
        assert!(statements[0].ends_with("SELECT 1; END"));
        assert_eq!(statements[1], "SELECT 2");
    }
}
