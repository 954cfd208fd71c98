//! The Confluent Schema Registry REST API over actix-web.

use std::sync::Arc;

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use context_schemas::compat::Compatibility;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::RegistryError;
use crate::registry::{Registry, SubjectVersion, VersionSel};

/// The media type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status_and_code().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (_, code) = self.status_and_code();
        metrics::counter!("registry_errors_total", "code" => code.to_string()).increment(1);
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header(("Content-Type", CONTENT_TYPE));
        if matches!(self, RegistryError::NotReady) {
            response.insert_header(("Retry-After", "1"));
        }
        response.json(json!({"error_code": code, "message": self.to_string()}))
    }
}

type Result<T> = std::result::Result<T, RegistryError>;
type Reg = web::Data<Arc<Registry>>;

fn ok(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Content-Type", CONTENT_TYPE))
        .json(body)
}

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(default, rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn schema_body(body: &[u8]) -> Result<SchemaBody> {
    let parsed: SchemaBody = serde_json::from_slice(body)
        .map_err(|e| RegistryError::BadRequest(format!("the body must be JSON like {{\"schema\": \"...\"}}: {e}")))?;
    if let Some(t) = parsed.schema_type.as_deref() {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(RegistryError::InvalidSchema(format!(
                "Invalid schema: schema type {t} is not supported, only AVRO"
            )));
        }
    }
    if !parsed.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "Invalid schema: schema references are not supported".into(),
        ));
    }
    Ok(parsed)
}

/// Query flags. Clients spell booleans differently (`true`, `True`, `1`).
#[derive(Debug, Deserialize)]
struct Flags {
    #[serde(default, deserialize_with = "lenient_bool")]
    deleted: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    permanent: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    verbose: bool,
    #[serde(default, rename = "defaultToGlobal", deserialize_with = "lenient_bool")]
    default_to_global: bool,
}

fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    let s = String::deserialize(d)?;
    Ok(matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

fn version_json(v: &SubjectVersion) -> Value {
    json!({"subject": v.subject, "version": v.version, "id": v.schema.id, "schema": v.schema.text})
}

fn raw_schema(text: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(text.to_owned())
}

async fn root() -> HttpResponse {
    ok(json!({}))
}

async fn subjects(reg: Reg, flags: web::Query<Flags>) -> Result<HttpResponse> {
    Ok(ok(json!(reg.subjects(flags.deleted)?)))
}

async fn versions(reg: Reg, path: web::Path<String>, flags: web::Query<Flags>) -> Result<HttpResponse> {
    Ok(ok(json!(reg.versions(&path, flags.deleted)?)))
}

async fn register(reg: Reg, path: web::Path<String>, body: web::Bytes) -> Result<HttpResponse> {
    let body = schema_body(&body)?;
    let started = std::time::Instant::now();
    let id = reg.register(&path, &body.schema).await?;
    metrics::histogram!("registry_register_seconds").record(started.elapsed().as_secs_f64());
    Ok(ok(json!({"id": id})))
}

async fn get_version(reg: Reg, path: web::Path<(String, String)>, flags: web::Query<Flags>) -> Result<HttpResponse> {
    let (subject, version) = path.into_inner();
    let v = reg.version(&subject, VersionSel::parse(&version)?, flags.deleted)?;
    Ok(ok(version_json(&v)))
}

async fn get_version_schema(reg: Reg, path: web::Path<(String, String)>) -> Result<HttpResponse> {
    let (subject, version) = path.into_inner();
    let v = reg.version(&subject, VersionSel::parse(&version)?, false)?;
    Ok(raw_schema(&v.schema.text))
}

fn parse_id(id: &str) -> Result<u32> {
    id.parse().map_err(|_| RegistryError::SchemaNotFound(id.to_owned()))
}

async fn schema_by_id(reg: Reg, path: web::Path<String>) -> Result<HttpResponse> {
    let s = reg.schema_by_id_fresh(parse_id(&path)?).await?;
    Ok(ok(json!({"schema": s.text})))
}

async fn schema_by_id_raw(reg: Reg, path: web::Path<String>) -> Result<HttpResponse> {
    let s = reg.schema_by_id_fresh(parse_id(&path)?).await?;
    Ok(raw_schema(&s.text))
}

async fn schema_by_id_versions(reg: Reg, path: web::Path<String>) -> Result<HttpResponse> {
    let usages = reg.usages(parse_id(&path)?)?;
    let list: Vec<Value> = usages
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(json!(list)))
}

async fn lookup(reg: Reg, path: web::Path<String>, flags: web::Query<Flags>, body: web::Bytes) -> Result<HttpResponse> {
    let body = schema_body(&body)?;
    Ok(ok(version_json(&reg.lookup(&path, &body.schema, flags.deleted)?)))
}

async fn compatibility(
    reg: Reg,
    path: web::Path<(String, String)>,
    flags: web::Query<Flags>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (subject, version) = path.into_inner();
    let body = schema_body(&body)?;
    let problems = reg.test_compatibility(&subject, Some(VersionSel::parse(&version)?), &body.schema)?;
    Ok(compat_answer(problems, flags.verbose))
}

async fn compatibility_all(
    reg: Reg,
    path: web::Path<String>,
    flags: web::Query<Flags>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let body = schema_body(&body)?;
    let problems = reg.test_compatibility(&path, None, &body.schema)?;
    Ok(compat_answer(problems, flags.verbose))
}

fn compat_answer(problems: Vec<String>, verbose: bool) -> HttpResponse {
    let mut answer = json!({"is_compatible": problems.is_empty()});
    if verbose {
        answer["messages"] = json!(problems);
    }
    ok(answer)
}

#[derive(Debug, Deserialize)]
struct ConfigBody {
    compatibility: String,
}

fn parse_level(body: &[u8]) -> Result<Compatibility> {
    let body: ConfigBody = serde_json::from_slice(body).map_err(|e| {
        RegistryError::BadRequest(format!(
            "the body must be JSON like {{\"compatibility\": \"FULL\"}}: {e}"
        ))
    })?;
    body.compatibility
        .parse()
        .map_err(|e: String| RegistryError::InvalidCompatibility(format!("Invalid compatibility level: {e}")))
}

async fn get_config(reg: Reg) -> Result<HttpResponse> {
    Ok(ok(json!({"compatibilityLevel": reg.compatibility(None)?.as_str()})))
}

async fn put_config(reg: Reg, body: web::Bytes) -> Result<HttpResponse> {
    let level = parse_level(&body)?;
    reg.set_compatibility(None, level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn get_subject_config(reg: Reg, path: web::Path<String>, flags: web::Query<Flags>) -> Result<HttpResponse> {
    let level = if flags.default_to_global {
        reg.effective_compatibility(&path)?
    } else {
        reg.compatibility(Some(&path))?
    };
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

async fn put_subject_config(reg: Reg, path: web::Path<String>, body: web::Bytes) -> Result<HttpResponse> {
    let level = parse_level(&body)?;
    reg.set_compatibility(Some(&path), level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(reg: Reg, path: web::Path<String>) -> Result<HttpResponse> {
    let previous = reg.delete_compatibility(&path).await?;
    Ok(ok(json!({"compatibilityLevel": previous.as_str()})))
}

async fn delete_subject(reg: Reg, path: web::Path<String>, flags: web::Query<Flags>) -> Result<HttpResponse> {
    Ok(ok(json!(reg.delete_subject(&path, flags.permanent).await?)))
}

async fn delete_version(reg: Reg, path: web::Path<(String, String)>, flags: web::Query<Flags>) -> Result<HttpResponse> {
    let (subject, version) = path.into_inner();
    let v = reg
        .delete_version(&subject, VersionSel::parse(&version)?, flags.permanent)
        .await?;
    Ok(ok(json!(v)))
}

async fn mode() -> HttpResponse {
    ok(json!({"mode": "READWRITE"}))
}

async fn schema_types() -> HttpResponse {
    ok(json!(["AVRO"]))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// Ready once the reader applied what the schemas topic held at start, and
/// while it keeps up: a replica whose reader is more than a couple of seconds
/// behind the topic's end answers 503 with how far, so that a load balancer
/// sends lookups of new ids to a replica that knows them. A broker that cannot
/// be asked for the end leaves it ready: what it has read it still serves.
async fn readyz(reg: Reg) -> HttpResponse {
    let not_ready = |why: String| {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .body(why)
    };
    if !reg.ready() {
        return not_ready("catching up with the schemas topic".into());
    }
    // 0.8 s to read the end and 0.8 s to catch up: an answer within the
    // chart's 2 s probe timeout.
    match reg.behind(std::time::Duration::from_millis(800)).await {
        Ok(0) => {
            metrics::gauge!("registry_reader_behind_records").set(0.0);
            HttpResponse::Ok().body("ready")
        }
        Ok(n) => {
            metrics::gauge!("registry_reader_behind_records").set(n as f64);
            not_ready(format!("{n} records of the schemas topic not applied yet"))
        }
        Err(e) => HttpResponse::Ok().body(format!("ready (the end of the schemas topic is unknown: {e})")),
    }
}

async fn metrics_text(req: HttpRequest) -> HttpResponse {
    let body = req
        .app_data::<web::Data<Option<metrics_exporter_prometheus::PrometheusHandle>>>()
        .and_then(|h| h.as_ref().as_ref().map(|h| h.render()))
        .unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

/// Registers every route of the API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text))
        .route("/mode", web::get().to(mode))
        .route("/schemas/types", web::get().to(schema_types))
        .route("/subjects", web::get().to(subjects))
        .route("/subjects/{subject}", web::post().to(lookup))
        .route("/subjects/{subject}", web::delete().to(delete_subject))
        .route("/subjects/{subject}/versions", web::get().to(versions))
        .route("/subjects/{subject}/versions", web::post().to(register))
        .route("/subjects/{subject}/versions/{version}", web::get().to(get_version))
        .route(
            "/subjects/{subject}/versions/{version}",
            web::delete().to(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            web::get().to(get_version_schema),
        )
        .route("/schemas/ids/{id}", web::get().to(schema_by_id))
        .route("/schemas/ids/{id}/schema", web::get().to(schema_by_id_raw))
        .route("/schemas/ids/{id}/versions", web::get().to(schema_by_id_versions))
        .route(
            "/compatibility/subjects/{subject}/versions",
            web::post().to(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            web::post().to(compatibility),
        )
        .route("/config", web::get().to(get_config))
        .route("/config", web::put().to(put_config))
        .route("/config/{subject}", web::get().to(get_subject_config))
        .route("/config/{subject}", web::put().to(put_subject_config))
        .route("/config/{subject}", web::delete().to(delete_subject_config));
}
