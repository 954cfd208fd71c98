//! Who may do what with the registry: HTTP basic authentication against a
//! users file, and three roles.
//!
//! - `read`: every `GET` (schemas, subjects, versions, config, mode);
//! - `write`: also register a schema, look one up (`POST /subjects/X`) and
//!   test compatibility (`POST /compatibility/…`);
//! - `admin`: also change the config or the mode and delete.
//!
//! `/`, `/healthz`, `/readyz` and `/metrics` need no credentials (probes
//! and Prometheus). Missing or wrong credentials answer 401 with
//! `WWW-Authenticate: Basic`, a role too low 403, both with Confluent's
//! error body. `anonymous = "read"` lets requests without credentials read.
//!
//! The users file (TOML) is reloaded when its content changes, never
//! swapping in an empty, unreadable or broken one
//! ([`context_runtime::watched`]):
//!
//! ```toml
//! [[users]]
//! name = "sink"
//! role = "read"
//! password_hash = "pbkdf2-sha256$20000$<salt hex>$<hash hex>"
//! ```
//!
//! `schema-registry hash-password` prints a `password_hash` for a password
//! read on stdin. A verified password is remembered (by a SHA-256 of name,
//! password and stored hash) so that only the first request of a client
//! pays for the key derivation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use base64::Engine;
use context_runtime::watched::{Entries, Watched};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A user's role; each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// Who may call without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Nobody: every call but the probes needs credentials.
    #[default]
    None,
    /// Anyone may read.
    Read,
}

/// The `[auth]` table of the registry's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The users file; without one the registry is open to anyone who
    /// reaches it (and says so at start).
    pub users_file: Option<PathBuf>,
    pub anonymous: Anonymous,
}

/// The iterations [`hash_password`] uses. The registry's passwords are
/// machine credentials: generate them (`openssl rand -hex 24`) rather than
/// choose them, and this count is plenty.
pub const ITERATIONS: u32 = 20_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    role: Role,
    password_hash: String,
}

struct Hash {
    iterations: u32,
    salt: Vec<u8>,
    key: Vec<u8>,
    text: String,
}

/// The users of one file's content.
pub struct Users {
    by_name: HashMap<String, (Role, Hash)>,
    /// SHA-256 of (name, password, stored hash) of passwords verified.
    verified: Mutex<HashMap<[u8; 32], Role>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<(&str, Role)> = self.by_name.iter().map(|(n, (r, _))| (n.as_str(), *r)).collect();
        names.sort();
        f.debug_struct("Users").field("users", &names).finish()
    }
}

impl Entries for Users {
    fn entries(&self) -> usize {
        self.by_name.len()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn derive(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut key);
    key
}

/// A `password_hash` for `password`: PBKDF2-HMAC-SHA256 with a random salt,
/// written `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no random salt: {e}"))?;
    Ok(format!(
        "pbkdf2-sha256${ITERATIONS}${}${}",
        hex(&salt),
        hex(&derive(password, &salt, ITERATIONS))
    ))
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    let mut parts = text.split('$');
    let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(key), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("password_hash must read pbkdf2-sha256$<iterations>$<salt hex>$<hash hex> (schema-registry hash-password makes one)".into());
    };
    let iterations: u32 = iterations
        .parse()
        .ok()
        .filter(|i| *i >= 1000)
        .ok_or("password_hash: iterations must be a number of at least 1000")?;
    let salt = unhex(salt).ok_or("password_hash: the salt is not hex")?;
    let key = unhex(key)
        .filter(|k| k.len() == 32)
        .ok_or("password_hash: the hash is not 32 bytes of hex")?;
    Ok(Hash {
        iterations,
        salt,
        key,
        text: text.to_owned(),
    })
}

impl Users {
    /// Parses a users file: every problem at once.
    pub fn parse(text: &str) -> Result<Users, String> {
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut problems = Vec::new();
        let mut by_name = HashMap::new();
        for (i, u) in file.users.into_iter().enumerate() {
            if u.name.is_empty() || u.name.contains(':') {
                problems.push(format!("users[{i}]: a name is not empty and holds no ':'"));
                continue;
            }
            match parse_hash(&u.password_hash) {
                Err(e) => problems.push(format!("user {}: {e}", u.name)),
                Ok(hash) => {
                    if by_name.insert(u.name.clone(), (u.role, hash)).is_some() {
                        problems.push(format!("user {} is listed twice", u.name));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Users {
            by_name,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The role of `name` when `password` was verified before (no key
    /// derivation: cheap).
    pub fn remembered(&self, name: &str, password: &str) -> Option<Role> {
        let (_, hash) = self.by_name.get(name)?;
        let memo = Self::memo(name, password, hash);
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&memo)
            .copied()
    }

    fn memo(name: &str, password: &str, hash: &Hash) -> [u8; 32] {
        Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.text.as_bytes())
            .finalize()
            .into()
    }

    /// The role of `name` when `password` is theirs. An unknown name costs
    /// a derivation too, so that names cannot be told apart by time.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let Some((role, hash)) = self.by_name.get(name) else {
            let _ = derive(password, b"no such user", ITERATIONS);
            return None;
        };
        let memo = Self::memo(name, password, hash);
        if let Some(r) = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(&memo) {
            return Some(*r);
        }
        let key = derive(password, &hash.salt, hash.iterations);
        if !bool::from(key.as_slice().ct_eq(&hash.key)) {
            return None;
        }
        // Bounded: one entry per user and password that was right.
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() < 4 * self.by_name.len() + 16 {
            verified.insert(memo, *role);
        }
        Some(*role)
    }
}

/// The registry's guard: the users in use and who may call anonymously.
#[derive(Clone)]
pub struct Guard {
    users: Watched<Users>,
    anonymous: Anonymous,
    /// Key derivations at once: a flood of wrong passwords gets 429, not
    /// both cores.
    derivations: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Key derivations the registry runs at once.
pub const MAX_DERIVATIONS: usize = 2;

impl Guard {
    /// Loads the users file (refusing the start when it is unreadable,
    /// broken or empty) and watches it.
    pub fn start(path: &Path, anonymous: Anonymous) -> Result<Guard, String> {
        let users = Watched::load(path, "users file", Users::parse)?;
        users.watch(path.to_owned(), std::time::Duration::from_secs(2), |u, path| {
            tracing::info!(users = u.entries(), file = %path.display(), "reloaded the registry's users");
        });
        tracing::info!(users = users.current().entries(), file = %path.display(), anonymous = ?anonymous, "the registry requires credentials");
        Ok(Guard {
            users,
            anonymous,
            derivations: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_DERIVATIONS)),
        })
    }
}

/// The role a request needs; `None` for the probes.
pub fn needed(method: &Method, path: &str) -> Option<Role> {
    let path = path.trim_end_matches('/');
    if matches!(path, "" | "/healthz" | "/readyz" | "/metrics") && method == Method::GET {
        return None;
    }
    Some(if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else if method == Method::POST && (path.starts_with("/subjects/") || path.starts_with("/compatibility/")) {
        Role::Write
    } else {
        // PUT /config, PUT /mode, every DELETE, and anything new.
        Role::Admin
    })
}

/// `user:password` of a basic `Authorization` header.
fn basic(req: &ServiceRequest) -> Option<(String, String)> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn refuse(status: u16, code: u32, message: String) -> HttpResponse {
    let mut r = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("a status"));
    r.insert_header(("Content-Type", crate::api::CONTENT_TYPE));
    if status == 401 {
        r.insert_header(("WWW-Authenticate", "Basic realm=\"schema-registry\", charset=\"UTF-8\""));
    }
    metrics::counter!("registry_auth_refused_total", "status" => status.to_string()).increment(1);
    r.json(serde_json::json!({"error_code": code, "message": message}))
}

/// The middleware: lets a request through when its credentials carry the
/// role it needs.
pub async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let Some(need) = needed(req.method(), req.path()) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let credentials = basic(&req);
    let anonymous = credentials.is_none();
    let role = match credentials {
        Some((user, password)) => {
            let users = guard.users.current();
            let role = match users.remembered(&user, &password) {
                Some(role) => Some(role),
                None => {
                    let Ok(permit) = guard.derivations.clone().try_acquire_owned() else {
                        let mut r = refuse(429, 42901, "Too many sign-ins being checked; retry shortly".into());
                        r.headers_mut().insert(
                            actix_web::http::header::RETRY_AFTER,
                            actix_web::http::header::HeaderValue::from_static("1"),
                        );
                        return Ok(req.into_response(r));
                    };
                    // The key derivation is CPU work: off the reactor.
                    web::block(move || {
                        let _permit = permit;
                        users.verify(&user, &password)
                    })
                    .await
                    .ok()
                    .flatten()
                }
            };
            match role {
                Some(role) => role,
                None => {
                    let r = refuse(401, 40101, "Unauthorized: unknown user or wrong password".into());
                    return Ok(req.into_response(r));
                }
            }
        }
        None if guard.anonymous == Anonymous::Read => Role::Read,
        None => {
            let r = refuse(
                401,
                40101,
                "Unauthorized: this registry requires HTTP basic authentication".into(),
            );
            return Ok(req.into_response(r));
        }
    };
    if role < need && anonymous {
        // Credentials could help: ask for them.
        let r = refuse(
            401,
            40101,
            format!(
                "Unauthorized: {} {} needs credentials with the {} role",
                req.method(),
                req.path(),
                need.name()
            ),
        );
        return Ok(req.into_response(r));
    }
    if role < need {
        let r = refuse(
            403,
            40301,
            format!(
                "Forbidden: {} {} needs the {} role; these credentials have {}",
                req.method(),
                req.path(),
                need.name(),
                role.name()
            ),
        );
        return Ok(req.into_response(r));
    }
    next.call(req).await.map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_files_are_checked() {
        let hash = hash_password("s3cret").unwrap();
        let text = format!("[[users]]\nname = \"a\"\nrole = \"write\"\npassword_hash = \"{hash}\"\n");
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.verify("a", "s3cret"), Some(Role::Write));
        assert_eq!(users.verify("a", "s3cret"), Some(Role::Write)); // remembered
        assert_eq!(users.verify("a", "wrong"), None);
        assert_eq!(users.verify("b", "s3cret"), None);
        let twice = format!("{text}{text}");
        assert!(Users::parse(&twice).unwrap_err().contains("listed twice"));
        let bad = "[[users]]\nname = \"a\"\nrole = \"root\"\npassword_hash = \"x\"\n";
        assert!(Users::parse(bad).is_err());
        let plain = "[[users]]\nname = \"a\"\nrole = \"read\"\npassword_hash = \"hunter2\"\n";
        assert!(Users::parse(plain).unwrap_err().contains("pbkdf2-sha256$"));
    }

    #[test]
    fn roles_follow_the_method_and_path() {
        use Method as M;
        assert_eq!(needed(&M::GET, "/healthz"), None);
        assert_eq!(needed(&M::GET, "/subjects"), Some(Role::Read));
        assert_eq!(needed(&M::GET, "/config"), Some(Role::Read));
        assert_eq!(needed(&M::POST, "/subjects/a-value/versions"), Some(Role::Write));
        assert_eq!(needed(&M::POST, "/subjects/a-value"), Some(Role::Write));
        assert_eq!(
            needed(&M::POST, "/compatibility/subjects/a/versions/latest"),
            Some(Role::Write)
        );
        assert_eq!(needed(&M::PUT, "/config"), Some(Role::Admin));
        assert_eq!(needed(&M::PUT, "/config/a-value"), Some(Role::Admin));
        assert_eq!(needed(&M::DELETE, "/subjects/a-value"), Some(Role::Admin));
        assert_eq!(needed(&M::PUT, "/mode"), Some(Role::Admin));
    }
}
