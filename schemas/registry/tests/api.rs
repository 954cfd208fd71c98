//! Every endpoint of the REST API with Confluent's status and error codes,
//! against a registry whose state lives in a real Kafka topic.

mod common;

use common::{record, start_registry, state_topic, url};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

struct Api {
    http: Client,
    base: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        if !path.ends_with("/schema") {
            assert_eq!(ct, "application/vnd.schemaregistry.v1+json", "{path}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
}

fn code(v: &Value) -> u64 {
    v["error_code"]
        .as_u64()
        .unwrap_or_else(|| panic!("no error_code in {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_like_confluent() {
    let registry = start_registry(&state_topic().await).await;
    let api = Api {
        http: Client::new(),
        base: url(&registry),
    };
    let v1 = record("User", r#"{"name":"name","type":"string"}"#);
    let v2 = record(
        "User",
        r#"{"name":"name","type":"string"},{"name":"age","type":"int","default":0}"#,
    );
    let breaking = record("User", r#"{"name":"name","type":"long"}"#);

    assert_eq!(api.get("/subjects").await, (StatusCode::OK, json!([])));
    assert_eq!(api.get("/mode").await.1, json!({"mode": "READWRITE"}));
    assert_eq!(api.get("/config").await.1, json!({"compatibilityLevel": "BACKWARD"}));

    // register: same schema, same id; a compatible change gets a new version
    let (s, body) = api.post("/subjects/users-value/versions", json!({"schema": v1})).await;
    assert_eq!(s, StatusCode::OK);
    let id1 = body["id"].as_u64().unwrap();
    // the same schema written differently (whitespace) is recognised by its canonical form
    let v1_spaced = v1.replace(',', " , ");
    assert_eq!(
        api.post("/subjects/users-value/versions", json!({"schema": v1_spaced}))
            .await
            .1["id"],
        id1
    );
    let id2 = api
        .post("/subjects/users-value/versions", json!({"schema": v2}))
        .await
        .1["id"]
        .as_u64()
        .unwrap();
    assert_ne!(id1, id2);
    // the same schema under another subject keeps its id
    assert_eq!(
        api.post("/subjects/other-value/versions", json!({"schema": v1}))
            .await
            .1["id"],
        id1
    );

    // incompatible and invalid schemas
    let (s, body) = api
        .post("/subjects/users-value/versions", json!({"schema": breaking}))
        .await;
    assert_eq!((s, code(&body)), (StatusCode::CONFLICT, 409));
    assert!(body["message"].as_str().unwrap().contains("field `name`"), "{body}");
    let (s, body) = api
        .post("/subjects/users-value/versions", json!({"schema": "{not avro"}))
        .await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, 42201));
    let (s, body) = api
        .post(
            "/subjects/users-value/versions",
            json!({"schema": v1, "schemaType": "PROTOBUF"}),
        )
        .await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, 42201));
    let (s, body) = api.post("/subjects/users-value/versions", json!({"nope": 1})).await;
    assert_eq!((s, code(&body)), (StatusCode::BAD_REQUEST, 400));

    // reads
    assert_eq!(api.get("/subjects").await.1, json!(["other-value", "users-value"]));
    assert_eq!(api.get("/subjects/users-value/versions").await.1, json!([1, 2]));
    let (s, latest) = api.get("/subjects/users-value/versions/latest").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (latest["version"].as_u64(), latest["id"].as_u64()),
        (Some(2), Some(id2))
    );
    assert_eq!(latest["subject"], "users-value");
    assert_eq!(api.get("/subjects/users-value/versions/1").await.1["schema"], json!(v1));
    let (s, raw) = api.get("/subjects/users-value/versions/1/schema").await;
    assert_eq!((s, raw["name"].as_str()), (StatusCode::OK, Some("User")));
    assert_eq!(api.get(&format!("/schemas/ids/{id1}")).await.1, json!({"schema": v1}));
    assert_eq!(api.get(&format!("/schemas/ids/{id1}/schema")).await.1["type"], "record");
    assert_eq!(
        api.get(&format!("/schemas/ids/{id1}/versions")).await.1,
        json!([{"subject": "other-value", "version": 1}, {"subject": "users-value", "version": 1}])
    );

    // not found and invalid version
    let (s, body) = api.get("/subjects/missing/versions").await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40401));
    let (s, body) = api.get("/subjects/users-value/versions/9").await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40402));
    let (s, body) = api.get("/subjects/users-value/versions/zero").await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, 42202));
    let (s, body) = api.get("/schemas/ids/9999").await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40403));

    // lookup
    let (s, found) = api.post("/subjects/users-value", json!({"schema": v2})).await;
    assert_eq!(
        (s, found["version"].as_u64(), found["id"].as_u64()),
        (StatusCode::OK, Some(2), Some(id2))
    );
    let (s, body) = api.post("/subjects/users-value", json!({"schema": breaking})).await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40403));
    let (s, body) = api.post("/subjects/missing", json!({"schema": v1})).await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40401));

    // compatibility checks
    let (s, body) = api
        .post(
            "/compatibility/subjects/users-value/versions/latest?verbose=true",
            json!({"schema": breaking}),
        )
        .await;
    assert_eq!((s, body["is_compatible"].as_bool()), (StatusCode::OK, Some(false)));
    assert!(!body["messages"].as_array().unwrap().is_empty());
    let (_, body) = api
        .post("/compatibility/subjects/users-value/versions/1", json!({"schema": v2}))
        .await;
    assert_eq!(body, json!({"is_compatible": true}));
    let (_, body) = api
        .post("/compatibility/subjects/users-value/versions", json!({"schema": v2}))
        .await;
    assert_eq!(body["is_compatible"], true);

    // config, global and per subject
    let (s, body) = api
        .call(Method::PUT, "/config", Some(json!({"compatibility": "FULL"})))
        .await;
    assert_eq!((s, body), (StatusCode::OK, json!({"compatibility": "FULL"})));
    assert_eq!(api.get("/config").await.1, json!({"compatibilityLevel": "FULL"}));
    let (s, body) = api
        .call(Method::PUT, "/config", Some(json!({"compatibility": "SIDEWAYS"})))
        .await;
    assert_eq!((s, code(&body)), (StatusCode::UNPROCESSABLE_ENTITY, 42203));
    let (s, body) = api.get("/config/users-value").await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40408));
    assert_eq!(
        api.get("/config/users-value?defaultToGlobal=true").await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    api.call(
        Method::PUT,
        "/config/users-value",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(
        api.get("/config/users-value").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    // under NONE the breaking schema registers
    let (s, _) = api
        .post("/subjects/users-value/versions", json!({"schema": breaking}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        api.call(Method::DELETE, "/config/users-value", None).await.1,
        json!({"compatibilityLevel": "NONE"})
    );

    // deletes: soft, then permanent
    let (s, body) = api
        .call(Method::DELETE, "/subjects/users-value/versions/3?permanent=true", None)
        .await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40407));
    assert_eq!(
        api.call(Method::DELETE, "/subjects/users-value/versions/3", None)
            .await
            .1,
        json!(3)
    );
    let (s, body) = api.call(Method::DELETE, "/subjects/users-value/versions/3", None).await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40406));
    assert_eq!(api.get("/subjects/users-value/versions").await.1, json!([1, 2]));
    assert_eq!(
        api.get("/subjects/users-value/versions?deleted=true").await.1,
        json!([1, 2, 3])
    );
    assert_eq!(
        api.call(Method::DELETE, "/subjects/users-value/versions/3?permanent=true", None)
            .await
            .1,
        json!(3)
    );

    let (s, body) = api
        .call(Method::DELETE, "/subjects/other-value?permanent=true", None)
        .await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40405));
    assert_eq!(
        api.call(Method::DELETE, "/subjects/other-value", None).await.1,
        json!([1])
    );
    let (s, body) = api.call(Method::DELETE, "/subjects/other-value", None).await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40404));
    assert_eq!(api.get("/subjects").await.1, json!(["users-value"]));
    assert_eq!(
        api.get("/subjects?deleted=true").await.1,
        json!(["other-value", "users-value"])
    );
    assert_eq!(
        api.call(Method::DELETE, "/subjects/other-value?permanent=true", None)
            .await
            .1,
        json!([1])
    );
    let (s, body) = api.get("/subjects/other-value/versions").await;
    assert_eq!((s, code(&body)), (StatusCode::NOT_FOUND, 40401));
    // an id keeps its meaning after its subjects are gone
    assert_eq!(api.get(&format!("/schemas/ids/{id1}")).await.1, json!({"schema": v1}));

    // operability
    assert_eq!(
        api.http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        api.http
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    registry.stop().await.unwrap();
}
