//! Migration files, made to be read at a glance in review. One file per migration,
//! `<version>_<name>.sql`, a few header comments, then `-- +up` and `-- +down` sections
//! (optionally `-- +up postgres` / `-- +down sqlite` variants where the SQL differs):
//!
//! ```sql
//! -- phase: expand                  (or contract)
//! -- reason: backfill is safe, ...  (needed before an expand file may hold a destructive statement)
//! -- requires: v2                   (contract: every running color must be at least this version)
//! -- transaction: off               (opt out of the per-migration transaction)
//! -- +up
//! ALTER TABLE items ADD COLUMN description TEXT;
//! -- +down
//! ALTER TABLE items DROP COLUMN description;
//! ```
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Expand,
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

impl Db {
    pub fn as_str(self) -> &'static str {
        match self {
            Db::Sqlite => "SQLite",
            Db::Postgres => "PostgreSQL",
        }
    }

    pub fn of_url(url: &str) -> Result<Db, String> {
        if url.starts_with("sqlite:") {
            Ok(Db::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Db::Postgres)
        } else {
            Err(format!(
                "database_url {:?}: only sqlite: and postgres:// are supported",
                redact(url)
            ))
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db` (and `password=` params).
pub fn redact(url: &str) -> String {
    proto::secrets::mask_text(url)
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub any: String,
    pub sqlite: Option<String>,
    pub postgres: Option<String>,
}

impl Script {
    pub fn for_db(&self, db: Db) -> &str {
        match db {
            Db::Sqlite => self.sqlite.as_deref().unwrap_or(&self.any),
            Db::Postgres => self.postgres.as_deref().unwrap_or(&self.any),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub file: PathBuf,
    pub phase: Phase,
    pub reason: Option<String>,
    pub requires: Option<String>,
    pub transactional: bool,
    /// sha256 of the whole file: any edit after apply is detected.
    pub checksum: String,
    pub up: Script,
    pub down: Script,
}

/// Loads every `*.sql` of `dir`, sorted by version. Errors name the file.
pub fn load_dir(dir: &Path) -> Result<Vec<Migration>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("migrations dir {}: {e}", dir.display()))?;
    let mut migrations = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("sql") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            migrations.push(parse(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?);
        }
    }
    migrations.sort_by_key(|m| m.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(format!(
                "{} and {} share version {}",
                pair[0].file.display(),
                pair[1].file.display(),
                pair[0].version
            ));
        }
    }
    Ok(migrations)
}

pub fn parse(path: &Path, text: &str) -> Result<Migration, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let (number, name) = stem
        .split_once('_')
        .ok_or("file name must be <version>_<name>.sql")?;
    let version: i64 = number
        .parse()
        .map_err(|_| format!("file name: {number:?} is not a version number"))?;
    let (mut phase, mut reason, mut requires, mut transactional) = (None, None, None, true);
    let (mut up, mut down) = (Script::default(), Script::default());
    let mut section: Option<(bool, Option<Db>)> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(marker) = trimmed.strip_prefix("-- +") {
            let mut words = marker.split_whitespace();
            let is_up = match words.next() {
                Some("up") => true,
                Some("down") => false,
                other => {
                    return Err(format!(
                        "unknown section marker {other:?}: expected +up or +down"
                    ))
                }
            };
            let db = match words.next() {
                None => None,
                Some("sqlite") => Some(Db::Sqlite),
                Some("postgres") => Some(Db::Postgres),
                Some(other) => return Err(format!("unknown database {other:?} in section marker")),
            };
            section = Some((is_up, db));
            continue;
        }
        match section {
            None => {
                // `-- word: value` is a header (an unknown word is a typo to report); any other
                // comment before the first section is free text for the reviewer.
                let header = trimmed
                    .strip_prefix("--")
                    .and_then(|c| c.split_once(':'))
                    .filter(|(key, _)| {
                        let key = key.trim();
                        !key.is_empty()
                            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                if let Some((key, value)) = header {
                    let value = value.trim().to_string();
                    match key.trim() {
                        "phase" => phase = Some(value),
                        "reason" => reason = Some(value),
                        "requires" => requires = Some(value),
                        "transaction" => {
                            transactional = !matches!(value.as_str(), "off" | "false" | "no")
                        }
                        other => return Err(format!("unknown header {other:?}")),
                    }
                }
            }
            Some((is_up, db)) => {
                let script = if is_up { &mut up } else { &mut down };
                let target = match db {
                    None => &mut script.any,
                    Some(Db::Sqlite) => script.sqlite.get_or_insert_with(String::new),
                    Some(Db::Postgres) => script.postgres.get_or_insert_with(String::new),
                };
                target.push_str(line);
                target.push('\n');
            }
        }
    }
    let phase = match phase.as_deref() {
        Some("expand") => Phase::Expand,
        Some("contract") => Phase::Contract,
        Some(other) => return Err(format!("phase: {other:?} must be expand or contract")),
        None => return Err("phase: missing (-- phase: expand|contract)".into()),
    };
    if up.any.trim().is_empty() && up.sqlite.is_none() && up.postgres.is_none() {
        return Err("-- +up: missing or empty".into());
    }
    if down.any.trim().is_empty() && down.sqlite.is_none() && down.postgres.is_none() {
        return Err("-- +down: missing or empty (every migration needs a way back)".into());
    }
    if phase == Phase::Contract && requires.is_none() {
        return Err(
            "requires: a contract migration must name the oldest app version it is safe with"
                .into(),
        );
    }
    Ok(Migration {
        version,
        name: name.to_string(),
        file: path.to_path_buf(),
        phase,
        reason,
        requires,
        transactional,
        checksum: hex::encode(Sha256::digest(text.as_bytes())),
        up,
        down,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "-- phase: expand\n-- +up\nALTER TABLE items ADD COLUMN description TEXT;\n-- +down\nALTER TABLE items DROP COLUMN description;\n-- +down sqlite\nSELECT 1;\n";

    #[test]
    fn parses_sections_and_variants() {
        let m = parse(Path::new("m/0002_add_description.sql"), FILE).unwrap();
        assert_eq!(
            (m.version, m.name.as_str(), m.phase),
            (2, "add_description", Phase::Expand)
        );
        assert!(m.up.for_db(Db::Postgres).contains("ADD COLUMN"));
        assert_eq!(m.down.for_db(Db::Sqlite).trim(), "SELECT 1;");
        assert!(m.down.for_db(Db::Postgres).contains("DROP COLUMN"));
        assert!(m.transactional);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            ("0002_x.sql", FILE.replace("expand", "sideways"), "phase"),
            (
                "0002_x.sql",
                FILE.replace("-- phase: expand\n", ""),
                "phase: missing",
            ),
            (
                "0002_x.sql",
                FILE.split("-- +down").next().unwrap().to_string(),
                "+down",
            ),
            ("x.sql", FILE.to_string(), "file name"),
            ("0002_x.sql", FILE.replace("expand", "contract"), "requires"),
            (
                "0002_x.sql",
                FILE.replace("-- phase", "-- phaze"),
                "unknown header",
            ),
        ];
        for (name, text, expect) in cases {
            let err = parse(Path::new(name), &text).unwrap_err();
            assert!(err.contains(expect), "{name}: {err}");
        }
    }
}
