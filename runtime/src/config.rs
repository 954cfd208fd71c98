//! Layered configuration, the same for every service: built-in defaults,
//! then a TOML file, then environment variables.
//!
//! - Every key of the file can be overridden by `<PREFIX><KEY>` in upper
//!   case, a nested key by `<PREFIX><SECTION>_<KEY>` and also by
//!   `<PREFIX><KEY>` when no other key has that name (`INGEST_MAX_EVENTS`
//!   sets `limits.max_events`).
//! - Types come from the service's configuration struct (figment extracts
//!   it); durations are written the humantime way: `250ms`, `10s`, `5m`,
//!   `2h`, `30d`, `1h 30m`.
//! - Unknown keys in the file and malformed values anywhere refuse the
//!   start, every problem listed at once with where it came from. An unknown
//!   variable with the service's prefix is only warned about: one
//!   environment is often shared by several programs.
//! - Renamed keys keep working under their old name with a deprecation
//!   warning ([`Renamed`]).
//! - A key whose name says it is secret (`password`, `secret`, `token`) never
//!   has its value printed, not even in an error; hold it in a [`Secret`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// `#[serde(with = "context_runtime::config::duration")]` on a `Duration`
/// key: written `250ms`, `10s`, `5m`, `30d`.
pub use humantime_serde as duration;

/// The configuration struct of a service.
pub trait ServiceConfig: Serialize + DeserializeOwned + Default {
    /// Prefix of its environment variables, such as `INGEST_`.
    const ENV_PREFIX: &'static str;
    /// Keys that were renamed, still read under their old name.
    const RENAMED: &'static [Renamed] = &[];
    /// Fills in what depends on the machine once everything is read (an
    /// empty `transactional_id` becomes `<service>-<host name>`).
    fn complete(&mut self) {}

    /// Checks that span keys or ranges types cannot express: every problem.
    fn check(&self) -> Vec<String> {
        Vec::new()
    }

    /// `self` when [`ServiceConfig::check`] finds nothing (for configurations
    /// built in code, such as tests').
    fn checked(self) -> Result<Self, ConfigError> {
        let problems = self.check();
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// `#[serde(with = "context_runtime::config::text")]` on a key whose type
/// reads with `FromStr` and writes with `Display` (an enum of levels).
pub mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A key that was renamed: `old` is still read, with a deprecation warning,
/// and `convert` turns its value into one for `new`.
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
    pub convert: fn(Value) -> Value,
}

/// A renamed key holding milliseconds whose new key is a duration.
pub fn millis_to_duration(v: Value) -> Value {
    match v.to_num_lossy().and_then(|n| n.to_u128_lossy()) {
        Some(ms) => Value::from(format!("{ms}ms")),
        None => v,
    }
}

/// A loaded configuration and the warnings worth logging once telemetry runs.
#[derive(Debug)]
pub struct Loaded<T> {
    pub config: T,
    pub warnings: Vec<String>,
}

/// Every problem found, each naming its key and where the value came from.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// A password or token: shown as `***` by `Debug` and `Display`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Reads `file` (if any) and the process environment.
pub fn load<T: ServiceConfig>(file: Option<&Path>) -> Result<Loaded<T>, ConfigError> {
    load_from(file, process_env::<T>())
}

/// The process environment with `T`'s prefix. Read without `std::env::vars`,
/// which panics on a variable that is not UTF-8 anywhere in the environment;
/// such a variable of this service is kept, with its bytes replaced, so that
/// its key reports the problem.
pub fn process_env<T: ServiceConfig>() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| {
            let k = k.to_string_lossy();
            k.starts_with(T::ENV_PREFIX)
                .then(|| (k.into_owned(), v.to_string_lossy().into_owned()))
        })
        .collect()
}

/// [`load`] with the environment given (tests).
pub fn load_from<T: ServiceConfig>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded<T>, ConfigError> {
    let defaults = serde_json::to_value(T::default()).expect("a configuration's defaults serialize");
    let keys = Keys::of::<T>(&defaults);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();

    if let Some(path) = file {
        let source = format!("file {}", path.display());
        match std::fs::read_to_string(path) {
            Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
            Ok(text) => match Toml::string(&text).data() {
                Err(e) => problems.push(format!("{}: {}", path.display(), syntax_error(&e.kind.to_string()))),
                Ok(mut profiles) => {
                    let dict = profiles.remove(&Profile::Default).unwrap_or_default();
                    let mut leaves = Vec::new();
                    flatten("", dict, &keys.maps, &mut leaves);
                    for (key, value) in leaves {
                        match keys.resolve(&key, value, &mut warnings) {
                            Some((key, value)) => layers.push(Layer {
                                key,
                                value,
                                source: source.clone(),
                            }),
                            None => problems.push(keys.unknown(&key, &source)),
                        }
                    }
                }
            },
        }
    }

    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with(T::ENV_PREFIX)).collect();
    env.sort();
    for (var, raw) in env {
        if let Some((map, name)) = keys.map_entry(&var) {
            let mut dict = Dict::new();
            dict.insert(name, Value::from(raw));
            layers.push(Layer {
                key: map,
                value: Value::from(dict),
                source: format!("variable {var}"),
            });
            continue;
        }
        let Some(key) = keys.by_env.get(&var) else {
            warnings.push(format!("{var} is not a configuration variable and is ignored"));
            continue;
        };
        let value = if keys.text.contains(key.as_str()) {
            Value::from(raw)
        } else {
            raw.parse::<Value>().unwrap_or_else(|never| match never {})
        };
        if let Some((key, value)) = keys.resolve(key, value, &mut warnings) {
            layers.push(Layer {
                key,
                value,
                source: format!("variable {var}"),
            });
        }
    }

    // Extract; a value that does not fit its key is reported and dropped, and
    // the extraction repeated, so every problem is listed in one answer.
    let config = loop {
        let mut figment = Figment::from(Serialized::defaults(&defaults));
        for layer in &layers {
            figment = figment.merge(Serialized::default(&layer.key, &layer.value));
        }
        match figment.extract::<T>() {
            Ok(config) => break Some(config),
            Err(errors) => {
                let before = layers.len();
                for e in errors {
                    let key = e.path.join(".");
                    // The layer in effect is the last one naming the key.
                    match layers.iter().rposition(|l| l.key == key) {
                        Some(i) => {
                            let layer = layers.remove(i);
                            problems.push(format!("{key} (from {}): {}", layer.source, describe(&key, &e.kind)));
                        }
                        None => problems.push(format!("{key}: {}", describe(&key, &e.kind))),
                    }
                }
                if layers.len() == before {
                    break None;
                }
            }
        }
    };
    let mut config = config;
    if let Some(config) = &mut config {
        config.complete();
        problems.extend(config.check());
    }
    match config {
        Some(config) if problems.is_empty() => Ok(Loaded { config, warnings }),
        _ => Err(ConfigError(problems)),
    }
}

impl<T> Loaded<T> {
    /// Logs the warnings; call it once telemetry is set up.
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("configuration: {w}");
        }
    }
}

/// [`load`] for a `main`: every problem printed to stderr, exit code 2.
pub fn load_or_exit<T: ServiceConfig>(service: &str, file: Option<&Path>) -> Result<Loaded<T>, std::process::ExitCode> {
    load::<T>(file).map_err(|e| {
        eprintln!(
            "{service}: the configuration is invalid ({} problem(s)):\n{e}",
            e.0.len()
        );
        std::process::ExitCode::from(2)
    })
}

/// Environment pairs from literals, for [`load_from`] in tests.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The `--check-config FILE` flag every service's command line has
/// (`#[command(flatten)]`); [`check_file`] does the work.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArg {
    /// Validate a configuration file, with this service's environment
    /// variables applied: every problem at once (exit 2), or the settings
    /// with secrets hidden (exit 0). Starts nothing.
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<std::path::PathBuf>,
}

/// What `--check-config <file>` prints and exits with: the file (and the
/// environment) validated without starting anything.
pub fn check_file<T: ServiceConfig + fmt::Debug>(path: &Path) -> std::process::ExitCode {
    match load::<T>(Some(path)) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: valid", path.display());
            println!("{}", redact_urls(&format!("{:#?}", loaded.config)));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {} problem(s)\n{e}", path.display(), e.0.len());
            std::process::ExitCode::from(2)
        }
    }
}

struct Layer {
    key: String,
    value: Value,
    source: String,
}

fn is_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    ["password", "secret", "token"].iter().any(|s| last.contains(s))
}

/// A TOML syntax error without the quoted line it points at (that line may
/// hold a password): where it is and what is wrong.
fn syntax_error(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.starts_with(|c: char| c.is_ascii_digit()))
        .filter(|l| !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(": ")
}

/// `text` with the password of every `scheme://user:password@host` URL
/// replaced by `***`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '/' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn describe(key: &str, kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        // Without a path (a key of a flattened table, such as
        // `registry_password`) the value may be a secret: not shown.
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if key.is_empty() => {
            format!("a value (not shown) is not {expected}")
        }
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) if is_secret(key) => {
            format!("the value (not shown) is not {expected}")
        }
        other => other.to_string(),
    }
}

/// The leaves of a file's table. A table that is an open map (such as
/// `[kafka.properties]`) stays one key per entry, its entry's dotted name
/// kept whole (`"linger.ms" = 5` and `linger.ms = 5` alike).
fn flatten(prefix: &str, dict: Dict, maps: &std::collections::HashSet<String>, out: &mut Vec<(String, Value)>) {
    for (k, v) in dict {
        let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        match v {
            Value::Dict(_, inner) if maps.contains(&key) => {
                let mut entries = Vec::new();
                flatten("", inner, &std::collections::HashSet::new(), &mut entries);
                for (name, value) in entries {
                    let mut one = Dict::new();
                    one.insert(name, value);
                    out.push((key.clone(), Value::from(one)));
                }
            }
            Value::Dict(_, inner) => flatten(&key, inner, maps, out),
            other => out.push((key, other)),
        }
    }
}

/// Kinds of leaf keys: text (or absent by default), any other value, an open map.
const TEXT: u8 = 0;
const OTHER: u8 = 1;
const MAP: u8 = 2;

/// The keys of a configuration, from its defaults.
struct Keys {
    /// Every leaf key path.
    all: Vec<String>,
    /// Keys whose values are text (or absent by default), so an environment
    /// value is taken as written, never as a number.
    text: std::collections::HashSet<String>,
    /// Variable name → key path, renamed keys included.
    by_env: BTreeMap<String, String>,
    /// Tables whose keys are free (empty objects in the defaults): each
    /// with the variable prefix of its entries.
    maps: std::collections::HashSet<String>,
    map_vars: Vec<(String, String)>,
    renamed: &'static [Renamed],
}

impl Keys {
    fn of<T: ServiceConfig>(defaults: &serde_json::Value) -> Keys {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, u8)>) {
            match v {
                serde_json::Value::Object(map) if map.is_empty() && !prefix.is_empty() => {
                    out.push((prefix.to_string(), MAP));
                }
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                serde_json::Value::String(_) | serde_json::Value::Null => out.push((prefix.to_string(), TEXT)),
                _ => out.push((prefix.to_string(), OTHER)),
            }
        }
        let mut leaves = Vec::new();
        walk("", defaults, &mut leaves);
        let all: Vec<String> = leaves.iter().map(|(k, _)| k.clone()).collect();
        let text = leaves
            .iter()
            .filter(|(_, t)| *t == TEXT)
            .map(|(k, _)| k.clone())
            .collect();
        let maps: std::collections::HashSet<String> = leaves
            .iter()
            .filter(|(_, t)| *t == MAP)
            .map(|(k, _)| k.clone())
            .collect();
        let var = |key: &str| format!("{}{}", T::ENV_PREFIX, key.replace('.', "_").to_uppercase());
        let map_vars = maps.iter().map(|m| (format!("{}_", var(m)), m.clone())).collect();
        let mut by_env = BTreeMap::new();
        let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
        let names: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|k| !maps.contains(*k))
            .chain(T::RENAMED.iter().map(|r| r.old))
            .collect();
        for key in &names {
            // A renamed key whose variable is also a current key's
            // (`kafka_bootstrap` and `kafka.bootstrap`) leaves it to the
            // current one.
            by_env.entry(var(key)).or_insert_with(|| key.to_string());
            let short = last(key);
            if key.contains('.') && names.iter().filter(|k| last(k) == short).count() == 1 {
                by_env.entry(var(&short)).or_insert_with(|| key.to_string());
            }
        }
        Keys {
            all,
            text,
            by_env,
            maps,
            map_vars,
            renamed: T::RENAMED,
        }
    }

    /// An entry of an open map by its variable: `INGEST_KAFKA_PROPERTIES_LINGER_MS`
    /// is `linger.ms` of `kafka.properties` (underscores read as dots).
    fn map_entry(&self, var: &str) -> Option<(String, String)> {
        self.map_vars.iter().find_map(|(prefix, map)| {
            let name = var.strip_prefix(prefix.as_str())?;
            (!name.is_empty()).then(|| (map.clone(), name.to_lowercase().replace('_', ".")))
        })
    }

    /// The key and value in effect for `key`: itself when known, its new
    /// name when renamed (with a warning), `None` when unknown.
    fn resolve(&self, key: &str, value: Value, warnings: &mut Vec<String>) -> Option<(String, Value)> {
        if let Some(r) = self.renamed.iter().find(|r| r.old == key) {
            warnings.push(format!("`{}` is deprecated, write `{}` instead", r.old, r.new));
            return Some((r.new.to_string(), (r.convert)(value)));
        }
        self.all.iter().any(|k| k == key).then(|| (key.to_string(), value))
    }

    fn unknown(&self, key: &str, source: &str) -> String {
        let section = key.rsplit_once('.').map(|(s, _)| s).unwrap_or("");
        let siblings: Vec<&str> = self
            .all
            .iter()
            .filter(|k| k.rsplit_once('.').map(|(s, _)| s).unwrap_or("") == section)
            .map(String::as_str)
            .collect();
        format!(
            "{key} (from {source}): unknown key; known here: {}",
            siblings.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        listen: std::net::SocketAddr,
        name: String,
        workers: usize,
        #[serde(with = "duration")]
        timeout: Duration,
        tls_cert: Option<std::path::PathBuf>,
        password: Secret,
        limits: DemoLimits,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct DemoLimits {
        max_events: usize,
    }

    impl Default for DemoLimits {
        fn default() -> Self {
            DemoLimits { max_events: 10 }
        }
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                listen: "127.0.0.1:80".parse().unwrap(),
                name: "a".into(),
                workers: 2,
                timeout: Duration::from_secs(10),
                tls_cert: None,
                password: Secret::default(),
                limits: DemoLimits::default(),
            }
        }
    }

    impl ServiceConfig for Demo {
        const ENV_PREFIX: &'static str = "DEMO_";
        const RENAMED: &'static [Renamed] = &[Renamed {
            old: "timeout_ms",
            new: "timeout",
            convert: millis_to_duration,
        }];
        fn check(&self) -> Vec<String> {
            if self.workers == 0 {
                vec!["workers must be above 0".into()]
            } else {
                Vec::new()
            }
        }
    }

    fn file(text: &str) -> tempfile_lite::Path {
        tempfile_lite::Path::with(text)
    }

    /// A file removed when dropped, without a dev-dependency.
    mod tempfile_lite {
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn with(text: &str) -> Path {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "context-config-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                Path(p)
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    use super::vars as env;

    #[test]
    fn defaults_then_file_then_environment() {
        let f = file("name = \"from-file\"\nworkers = 3\n[limits]\nmax_events = 5\n");
        let c = load_from::<Demo>(Some(&f.0), env(&[("DEMO_WORKERS", "4"), ("DEMO_TIMEOUT", "1m 30s")]))
            .unwrap()
            .config;
        assert_eq!((c.name.as_str(), c.workers, c.limits.max_events), ("from-file", 4, 5));
        assert_eq!(c.timeout, Duration::from_secs(90));
        // A nested key by its full name and, being unique, by its own name.
        let by_full = load_from::<Demo>(None, env(&[("DEMO_LIMITS_MAX_EVENTS", "7")])).unwrap();
        let by_short = load_from::<Demo>(None, env(&[("DEMO_MAX_EVENTS", "8")])).unwrap();
        assert_eq!(
            (by_full.config.limits.max_events, by_short.config.limits.max_events),
            (7, 8)
        );
        // Text keys take digits as text; an absent-by-default path takes any text.
        let c = load_from::<Demo>(None, env(&[("DEMO_NAME", "123"), ("DEMO_TLS_CERT", "/c.pem")])).unwrap();
        assert_eq!(c.config.name, "123");
        assert_eq!(c.config.tls_cert.as_deref(), Some(Path::new("/c.pem")));
    }

    #[test]
    fn every_problem_is_listed_at_once_with_its_source() {
        let f = file("workers = \"many\"\nlissen = \"x\"\n[limits]\nmax_event = 1\n");
        let err = load_from::<Demo>(
            Some(&f.0),
            env(&[
                ("DEMO_TIMEOUT", "soon"),
                ("DEMO_LISTEN", "nowhere"),
                ("DEMO_UNRELATED", "1"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 5, "{text}");
        for needle in [
            "workers (from file",
            "lissen (from file",
            "limits.max_event (from file",
            "known here: limits.max_events",
            "timeout (from variable DEMO_TIMEOUT)",
            "listen (from variable DEMO_LISTEN)",
        ] {
            assert!(text.contains(needle), "{needle} missing in:\n{text}");
        }
        // Checks across keys run on what parsed, and join the list.
        let err = load_from::<Demo>(None, env(&[("DEMO_WORKERS", "0"), ("DEMO_TIMEOUT", "x")])).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }

    #[test]
    fn unknown_variables_warn_and_renamed_keys_still_work() {
        let f = file("timeout_ms = 2500\n");
        let loaded = load_from::<Demo>(Some(&f.0), env(&[("DEMO_COLOUR", "red")])).unwrap();
        assert_eq!(loaded.config.timeout, Duration::from_millis(2500));
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings.iter().any(|w| w.contains("`timeout_ms` is deprecated")));
        assert!(loaded.warnings.iter().any(|w| w.contains("DEMO_COLOUR")));
        let by_env = load_from::<Demo>(None, env(&[("DEMO_TIMEOUT_MS", "40")])).unwrap();
        assert_eq!(by_env.config.timeout, Duration::from_millis(40));
    }

    #[test]
    fn secrets_are_never_printed() {
        let f = file("password = 123456789\n");
        let err = load_from::<Demo>(Some(&f.0), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("password") && !err.contains("123456789"), "{err}");
        let c = load_from::<Demo>(None, env(&[("DEMO_PASSWORD", "hunter2")]))
            .unwrap()
            .config;
        assert_eq!(c.password.expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn passwords_in_urls_and_broken_lines_are_not_printed() {
        assert_eq!(
            redact_urls("url: \"http://app:s3cret@ch:8123/db\", other: https://h/x"),
            "url: \"http://app:***@ch:8123/db\", other: https://h/x"
        );
        let f = file("password = \"ab\\q\"\n");
        let err = load_from::<Demo>(Some(&f.0), Vec::new()).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("ab\\q"), "{err}");
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct WithKafka {
        kafka: crate::kafka::KafkaSettings,
    }

    impl ServiceConfig for WithKafka {
        const ENV_PREFIX: &'static str = "DEMO_";
        const RENAMED: &'static [Renamed] = &[crate::kafka::KAFKA_BOOTSTRAP_RENAMED];
        fn check(&self) -> Vec<String> {
            self.kafka.check("kafka")
        }
    }

    #[test]
    fn the_kafka_table_with_free_properties_from_file_and_environment() {
        let f = file(
            "[kafka]\nbootstrap = \"b1:9092,b2:9092\"\nsecurity_protocol = \"sasl_ssl\"\n\
             sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"svc\"\n\
             [kafka.properties]\n\"linger.ms\" = 20\nsocket.keepalive.enable = true\n",
        );
        let c = load_from::<WithKafka>(
            Some(&f.0),
            env(&[
                ("DEMO_KAFKA_SASL_PASSWORD", "pw"),
                ("DEMO_KAFKA_PROPERTIES_CLIENT_ID", "from-env"),
            ]),
        )
        .unwrap()
        .config;
        let k = &c.kafka;
        assert_eq!(k.bootstrap, "b1:9092,b2:9092");
        assert_eq!(k.security_protocol, crate::kafka::SecurityProtocol::SaslSsl);
        assert_eq!(k.sasl_password.expose(), "pw");
        let props: Vec<(&str, &str)> = k.properties.iter().map(|(a, b)| (a.as_str(), b.0.as_str())).collect();
        assert_eq!(
            props,
            [
                ("client.id", "from-env"),
                ("linger.ms", "20"),
                ("socket.keepalive.enable", "true")
            ]
        );
        let client = k.client();
        assert_eq!(client.get("linger.ms"), Some("20"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        // The old key and its variable still work; the variable is the new key's.
        let old = file("kafka_bootstrap = \"old:9092\"\n");
        let loaded = load_from::<WithKafka>(Some(&old.0), Vec::new()).unwrap();
        assert_eq!(loaded.config.kafka.bootstrap, "old:9092");
        assert!(loaded
            .warnings
            .iter()
            .any(|w| w.contains("`kafka_bootstrap` is deprecated")));
        let by_env = load_from::<WithKafka>(None, env(&[("DEMO_KAFKA_BOOTSTRAP", "env:9092")])).unwrap();
        assert_eq!(by_env.config.kafka.bootstrap, "env:9092");
        assert!(by_env.warnings.is_empty(), "{:?}", by_env.warnings);
        // An owned setting is refused, naming why.
        let owned = file("[kafka.properties]\nacks = \"1\"\n");
        let err = load_from::<WithKafka>(Some(&owned.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.properties.acks is refused"), "{err}");
        // An unknown key of the table is still unknown.
        let typo = file("[kafka]\nbootstrapp = \"x\"\n");
        let err = load_from::<WithKafka>(Some(&typo.0), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.bootstrapp") && err.contains("known here"), "{err}");
    }

    #[test]
    fn a_missing_or_broken_file_is_a_problem() {
        let err = load_from::<Demo>(Some(Path::new("/nonexistent/x.toml")), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("cannot read /nonexistent/x.toml"), "{err}");
        let f = file("workers = = 2");
        assert_eq!(load_from::<Demo>(Some(&f.0), Vec::new()).unwrap_err().0.len(), 1);
    }
}
