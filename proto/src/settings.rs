//! A daemon's settings, declared once. Each daemon has one struct that derives both `clap::Args`
//! and serde. Every field is a key of its TOML file, a `--flag`, and a `BLUEGREEN_<BINARY>_<KEY>`
//! environment variable. The variable's name is derived from the field's clap id by [`command`],
//! which also appends the field's default to its help. Defaults live in one TOML document per
//! daemon. [`load`] merges once, in the order defaults < file < environment < flag. This replaced
//! three declarations per setting (flag, file field, validated field) and one hand-written merge
//! line each.
//!
//! Clap ids are the file's key, with `table_key` for a key in a `[table]`, so one name links the
//! flag, the variable, the file key and the default.
use clap::{ArgMatches, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::Path;

/// Why settings could not be loaded: the file (when it is the file's fault) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsError {
    pub file: Option<String>,
    pub reason: String,
}

/// `cli` with every argument's environment variable set to `<env_prefix><ID>` (unless the
/// declaration names one itself), and every help text ending with the argument's default from
/// `defaults`.
pub fn command(cli: clap::Command, env_prefix: &str, defaults: &str) -> clap::Command {
    let defaults = flat_defaults(defaults);
    cli.mut_args(|arg| {
        let id = arg.get_id().as_str().to_string();
        if matches!(id.as_str(), "help" | "version") {
            return arg;
        }
        let arg = if arg.get_env().is_none() {
            arg.env(format!("{env_prefix}{}", id.to_uppercase()))
        } else {
            arg
        };
        match defaults.get(&id).and_then(Value::as_str) {
            Some(default) => {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                arg.help(format!("{help} [default: {default}]"))
            }
            None => arg,
        }
    })
}

/// A daemon's command line (`--config` and its settings): where its variables' names start and
/// its defaults document, so [`Daemon::cli`] and [`Daemon::from_env`] are written once for all.
pub trait Daemon: clap::CommandFactory + FromArgMatches + Sized {
    /// `BLUEGREEN_<BINARY>_`.
    const ENV_PREFIX: &'static str;
    /// Every default, in the file's own format.
    const DEFAULTS: &'static str;

    /// The command line with every setting's variable and default (for `--help` and man pages).
    fn cli() -> clap::Command {
        command(Self::command(), Self::ENV_PREFIX, Self::DEFAULTS)
    }

    /// This process's command line and environment.
    fn from_env() -> Self {
        parse(Self::ENV_PREFIX, Self::DEFAULTS)
    }
}

/// Parses the process's command line with [`command`]'s environment variables.
pub fn parse<C: clap::CommandFactory + FromArgMatches>(env_prefix: &str, defaults: &str) -> C {
    let matches: ArgMatches = command(C::command(), env_prefix, defaults).get_matches();
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The settings: `defaults` (TOML) < the file at `file` < `cli` (the flags and environment clap
/// read; unset fields are `None`). The file's unknown keys and wrong types are refused, naming
/// the file and the key.
pub fn load<S: Serialize + DeserializeOwned + Default>(
    defaults: &str,
    file: Option<&Path>,
    cli: &S,
) -> Result<S, SettingsError> {
    let mut merged = to_json(&parse_toml::<S>(defaults, None)?)?;
    if let Some(path) = file {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError {
            file: Some(shown.clone()),
            reason: e.to_string(),
        })?;
        overlay(
            &mut merged,
            to_json(&parse_toml::<S>(&text, Some(&shown))?)?,
        );
    }
    overlay(&mut merged, to_json(cli)?);
    serde_json::from_value(merged).map_err(|e| SettingsError {
        file: None,
        reason: e.to_string(),
    })
}

/// Every key `S` has, as its default serializes (absent settings are null), in `table.key` form.
pub fn keys<S: Serialize + Default>() -> Vec<String> {
    let mut out = Vec::new();
    let defaults = to_json(&S::default()).expect("unset settings serialize");
    collect_keys(&defaults, "", &mut out);
    out
}

fn collect_keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if v.is_object() {
                collect_keys(v, &key, out);
            } else {
                out.push(key);
            }
        }
    }
}

/// A TOML document as `S`, refusing keys `S` does not have (serde's `deny_unknown_fields` cannot
/// be combined with the flattened etcd settings, so the known keys come from `S`'s default).
fn parse_toml<S: Serialize + DeserializeOwned + Default>(
    text: &str,
    file: Option<&str>,
) -> Result<S, SettingsError> {
    let error = |reason: String| SettingsError {
        file: file.map(str::to_string),
        reason,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| error(e.to_string()))?;
    let known = keys::<S>();
    let mut given = Vec::new();
    collect_toml_keys(&table, "", &mut given);
    let is_known =
        |k: &String| known.contains(k) || known.iter().any(|n| n.starts_with(&format!("{k}.")));
    if let Some(unknown) = given.iter().find(|k| !is_known(k)) {
        return Err(error(format!(
            "unknown key `{unknown}`; the keys are: {}",
            known.join(", ")
        )));
    }
    toml::from_str(text).map_err(|e| {
        // A key deserialized through a flattened struct (the etcd settings) loses its name in
        // the error: find it by reading the keys one at a time.
        let culprit = table.iter().find(|(k, v)| {
            let mut one = toml::Table::new();
            one.insert(k.to_string(), (*v).clone());
            toml::from_str::<S>(&one.to_string()).is_err()
        });
        match culprit {
            Some((k, _)) if !e.to_string().contains(k.as_str()) => error(format!("`{k}`: {e}")),
            _ => error(e.to_string()),
        }
    })
}

fn collect_toml_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            // An empty table is a key too: `[ngnix]` alone must not pass unnoticed.
            toml::Value::Table(inner) if inner.is_empty() => out.push(key),
            toml::Value::Table(inner) => collect_toml_keys(inner, &key, out),
            _ => out.push(key),
        }
    }
}

/// Settings as a JSON value; a path that is not UTF-8 (from a flag or variable) is refused.
fn to_json<S: Serialize>(settings: &S) -> Result<Value, SettingsError> {
    serde_json::to_value(settings).map_err(|e| SettingsError {
        file: None,
        reason: format!("a setting is not valid text: {e}"),
    })
}

/// `top` over `base`: every value `top` sets (not null) replaces `base`'s, tables key by key.
fn overlay(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(base), Value::Object(top)) => {
            for (k, v) in top {
                match base.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => overlay(slot, v),
                    _ if v.is_null() => {}
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, top) if !top.is_null() => *base = top,
        _ => {}
    }
}

/// The defaults document as clap id → shown value (`table.key` becomes `table_key`).
fn flat_defaults(defaults: &str) -> Map<String, Value> {
    let table: toml::Table = toml::from_str(defaults).expect("a daemon's defaults are TOML");
    let mut out = Map::new();
    for (k, v) in table {
        match v {
            toml::Value::Table(inner) => {
                for (ik, iv) in inner {
                    out.insert(format!("{k}_{ik}"), shown(iv));
                }
            }
            v => {
                out.insert(k, shown(v));
            }
        }
    }
    out
}

/// A default as the help shows it: strings bare, lists comma separated (as the flag takes them).
fn shown(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Array(items) => Value::String(
            items
                .into_iter()
                .map(|i| match i {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        other => Value::String(other.to_string()),
    }
}

/// The shown default of clap id `id` in `defaults`, for tests and docs checks.
pub fn default_of(defaults: &str, id: &str) -> Option<String> {
    flat_defaults(defaults)
        .get(id)
        .and_then(|v| v.as_str().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Clone, PartialEq, clap::Parser, Serialize, Deserialize)]
    #[serde(default)]
    struct Demo {
        /// A number.
        #[arg(long)]
        count: Option<u32>,
        /// A name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        table: Inner,
    }

    #[derive(Debug, Default, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
    #[serde(default)]
    struct Inner {
        /// Inside.
        #[arg(id = "table_size", long = "table-size")]
        #[serde(rename = "size")]
        size: Option<u64>,
    }

    const DEFAULTS: &str = "count = 3\nname = \"x\"\n[table]\nsize = 10\n";

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_then_file_then_cli() {
        let f = file("name = \"from-file\"\n[table]\nsize = 20\n");
        let cli = Demo {
            count: Some(7),
            ..Default::default()
        };
        let s = load(DEFAULTS, Some(f.path()), &cli).unwrap();
        assert_eq!(
            s,
            Demo {
                count: Some(7),
                name: Some("from-file".into()),
                table: Inner { size: Some(20) },
            }
        );
        let s = load::<Demo>(DEFAULTS, None, &Demo::default()).unwrap();
        assert_eq!((s.count, s.table.size), (Some(3), Some(10)));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_file_and_the_key() {
        let f = file("cuont = 4\n");
        let err = load(DEFAULTS, Some(f.path()), &Demo::default()).unwrap_err();
        assert_eq!(err.file, Some(f.path().display().to_string()));
        assert!(err.reason.contains("`cuont`"), "{err:?}");
        let f = file("[table]\nsise = 4\n");
        let err = load(DEFAULTS, Some(f.path()), &Demo::default()).unwrap_err();
        assert!(err.reason.contains("`table.sise`"), "{err:?}");
        let f = file("count = \"many\"\n");
        let err = load(DEFAULTS, Some(f.path()), &Demo::default()).unwrap_err();
        assert!(err.reason.contains("count"), "{err:?}");
        let f = file("[tabel]\n");
        let err = load(DEFAULTS, Some(f.path()), &Demo::default()).unwrap_err();
        assert!(err.reason.contains("`tabel`"), "{err:?}");
        let f = file("[table]\n");
        assert!(load(DEFAULTS, Some(f.path()), &Demo::default()).is_ok());
    }

    #[test]
    fn variables_and_help_come_from_the_declaration() {
        use clap::CommandFactory;
        let cmd = command(Demo::command(), "BLUEGREEN_DEMO_", DEFAULTS);
        let arg = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("{id}"))
                .clone()
        };
        assert_eq!(
            arg("count").get_env().and_then(|e| e.to_str()),
            Some("BLUEGREEN_DEMO_COUNT")
        );
        assert_eq!(
            arg("table_size").get_env().and_then(|e| e.to_str()),
            Some("BLUEGREEN_DEMO_TABLE_SIZE")
        );
        assert_eq!(
            arg("table_size").get_help().unwrap().to_string(),
            "Inside [default: 10]"
        );
        assert_eq!(keys::<Demo>(), ["count", "name", "table.size"]);
        assert_eq!(default_of(DEFAULTS, "table_size").as_deref(), Some("10"));
    }
}
