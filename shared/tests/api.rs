//! The read and admin routes against moto, and the OpenAPI contract checked against real
//! handler responses.

use serde_json::{json, Value};
use shared::routes::{api, enqueue};
use testkit::{admin, image_body, parts, serve, user, Event, World};

async fn call(world: &World, event: Event) -> (u16, Value) {
    serve(&world.state, event).await
}

async fn generate(world: &World, sub: &str, prompt: &str) -> Value {
    let event = Event::new(enqueue::IMAGE_ROUTE, user(sub)).body(image_body(prompt));
    let (status, body) = parts(enqueue::handle(&world.state, event.build()).await);
    assert_eq!(status, 202, "{body}");
    body
}

#[tokio::test]
async fn a_session_is_visible_to_its_owner_only() {
    let world = World::new().await;
    world.grant("owner", 100, None).await;
    let accepted = generate(&world, "owner", "a lake").await;
    let id = accepted["session_id"].as_str().unwrap();
    let get =
        |sub: &'static str| Event::new("GET /api/sessions/{id}", user(sub)).path_param("id", id);

    let (status, session) = call(&world, get("owner")).await;
    assert_eq!(status, 200);
    assert_eq!(session["status"], "queued");
    assert_eq!(session["client_key"], accepted["client_key"]);
    assert_eq!(session["credits_reserved"], 8);
    validate(&session, "Session");

    let (status, body) = call(&world, get("intruder")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = call(
        &world,
        Event::new("GET /api/sessions/{id}", user("owner")).path_param("id", "../../x"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sessions_list_newest_first_with_a_cursor() {
    let world = World::with(|c| c.inflight_cap = 10).await;
    world.grant("lister", 100, None).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(generate(&world, "lister", &format!("p{i}")).await["session_id"].clone());
    }
    ids.reverse();
    let (status, first) = call(
        &world,
        Event::new("GET /api/sessions", user("lister")).query("limit", "2"),
    )
    .await;
    assert_eq!(status, 200);
    validate(&first, "SessionPage");
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, second) = call(
        &world,
        Event::new("GET /api/sessions", user("lister"))
            .query("limit", "3")
            .query("cursor", &cursor),
    )
    .await;
    let seen: Vec<Value> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|s| s["session_id"].clone())
        .collect();
    assert_eq!(seen, ids);
    assert!(second["next_cursor"].is_null());
    // Another user sees none of them.
    let (_, other) = call(&world, Event::new("GET /api/sessions", user("someone"))).await;
    assert_eq!(other["items"], json!([]));
    // A forged cursor is refused.
    let (status, body) = call(
        &world,
        Event::new("GET /api/sessions", user("lister")).query("cursor", "TEVER0VSIzAx"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_cursor"))
    );
}

#[tokio::test]
async fn balance_transactions_and_usage_reflect_the_ledger() {
    let world = World::new().await;
    let soon = shared::clock::now_secs() + 3600;
    world.grant("bal", 50, Some(soon)).await;
    world.grant("bal", 10, None).await;
    let accepted = generate(&world, "bal", "x").await;
    let session = accepted["session_id"].as_str().unwrap();
    shared::ledger::settle(
        world.ddb(),
        world.table(),
        "bal",
        session,
        6,
        shared::ledger::ExpiredShare::Lost,
        vec![],
    )
    .await
    .unwrap();

    let (status, balance) = call(&world, Event::new("GET /api/credits/balance", user("bal"))).await;
    assert_eq!(status, 200);
    validate(&balance, "Balance");
    assert_eq!(
        (
            balance["available"].as_i64(),
            balance["captured"].as_i64(),
            balance["held"].as_i64()
        ),
        (Some(54), Some(6), Some(0))
    );
    assert_eq!(
        balance["lots"][0]["expires_at"], soon,
        "earliest expiry listed first"
    );
    assert_eq!(balance["lots"][0]["remaining"], 44);

    let (status, page) = call(
        &world,
        Event::new("GET /api/credits/transactions", user("bal")),
    )
    .await;
    assert_eq!(status, 200);
    validate(&page, "TransactionPage");
    let kinds: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["release", "capture", "hold", "grant", "grant"]);

    let (status, usage) = call(
        &world,
        Event::new("GET /api/credits/usage/summary", user("bal")),
    )
    .await;
    assert_eq!(status, 200);
    validate(&usage, "UsageSummary");
    assert_eq!(usage["total"], 6);
    assert_eq!(usage["by_model_day"][0]["model"], "seedream-4.0");
    assert_eq!(usage["by_model_day"][0]["sessions"], 1);
    let (status, body) = call(
        &world,
        Event::new("GET /api/credits/usage/summary", user("bal"))
            .query("from", "2026-12-01")
            .query("to", "2026-11-01"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_range"))
    );
}

#[tokio::test]
async fn only_admins_grant_and_a_replayed_grant_grants_once() {
    let world = World::new().await;
    let body = json!({"user_id": "lucky", "amount": 30, "source": "promo"}).to_string();
    let grant = |claims| Event::new("POST /api/admin/credits/grant", claims).body(body.clone());

    let (status, answer) = call(&world, grant(user("lucky"))).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = call(&world, grant(None)).await;
    assert_eq!(status, 401);
    assert!(
        world.keys().await.is_empty(),
        "refused grants write nothing"
    );

    let (status, answer) = call(
        &world,
        grant(admin("root")).header("idempotency-key", "promo-1"),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    validate(&answer, "Grant");
    let (status, again) = call(
        &world,
        grant(admin("root")).header("idempotency-key", "promo-1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["lot_id"], answer["lot_id"]);
    assert_eq!(world.assert_conserved("lucky").await.available, 30);

    for (bad, code) in [
        (
            json!({"user_id": "x", "amount": 0, "source": "s"}),
            "invalid_amount",
        ),
        (
            json!({"user_id": "x", "amount": 5, "source": "s", "expires_at": 1}),
            "invalid_expiry",
        ),
        (
            json!({"user_id": "a#b", "amount": 5, "source": "s"}),
            "invalid_field",
        ),
        (
            json!({"user_id": "x", "amount": 5, "source": "s", "extra": 1}),
            "unknown_field",
        ),
        (
            json!({"user_id": "x", "amount": "5", "source": "s"}),
            "invalid_field",
        ),
    ] {
        let event =
            Event::new("POST /api/admin/credits/grant", admin("root")).body(bad.to_string());
        let (status, answer) = call(&world, event).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad}"
        );
    }
    assert_eq!(world.count("x", "").await, 0);
}

fn grant_event(body: &Value, key: &str) -> Event {
    Event::new("POST /api/admin/credits/grant", admin("root"))
        .body(body.to_string())
        .header("idempotency-key", key)
}

#[tokio::test]
async fn a_replayed_grant_grants_nothing_even_after_its_lot_is_gone() {
    let world = World::new().await;
    let expires_at = shared::clock::now_secs() + 2;
    let body = json!({"user_id": "late", "amount": 3, "source": "promo", "expires_at": expires_at});
    let (status, first) = call(&world, grant_event(&body, "promo-late")).await;
    assert_eq!(status, 201, "{first}");
    // The lot expires and leaves the account (a balance read settles the expiry).
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (status, balance) =
        call(&world, Event::new("GET /api/credits/balance", user("late"))).await;
    assert_eq!(
        (status, balance["available"].as_i64()),
        (200, Some(0)),
        "{balance}"
    );
    assert!(
        world.account("late").await.lots.is_empty(),
        "the lot is gone"
    );

    let request = grant_event(&body, "promo-late").build();
    let response = shared::routes::admin::handle(&world.state, request).await;
    assert_eq!(response.headers()["idempotent-replayed"], "true");
    let (status, again) = parts(response);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["lot_id"], first["lot_id"]);
    assert_eq!(again["available"], 0, "the replay granted nothing");
    let account = world.assert_conserved("late").await;
    assert_eq!((account.granted, account.available), (3, 0));
    assert_eq!(
        world.count("late", "LEDGER#").await,
        2,
        "one grant, one expiry"
    );
}

#[tokio::test]
async fn a_grant_key_reused_for_another_grant_is_refused_and_writes_nothing() {
    let world = World::new().await;
    let body = json!({"user_id": "first", "amount": 30, "source": "promo"});
    let (status, _) = call(&world, grant_event(&body, "promo-2")).await;
    assert_eq!(status, 201);
    let before = world.keys().await;
    for other in [
        json!({"user_id": "second", "amount": 30, "source": "promo"}),
        json!({"user_id": "first", "amount": 31, "source": "promo"}),
        json!({"user_id": "first", "amount": 30, "source": "other"}),
    ] {
        let (status, answer) = call(&world, grant_event(&other, "promo-2")).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused")),
            "{other}"
        );
        validate(&answer, "Error");
    }
    assert_eq!(world.keys().await, before, "refused grants write nothing");
    assert_eq!(world.assert_conserved("first").await.available, 30);
}

#[tokio::test]
async fn concurrent_grants_with_one_key_grant_once() {
    let world = World::new().await;
    let body = json!({"user_id": "racer", "amount": 7, "source": "promo"});
    let answers =
        futures::future::join_all((0..4).map(|_| call(&world, grant_event(&body, "promo-race"))))
            .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 201], "{answers:?}");
    let lots: std::collections::HashSet<&Value> =
        answers.iter().map(|(_, a)| &a["lot_id"]).collect();
    assert_eq!(lots.len(), 1, "every answer names the one lot");
    let account = world.assert_conserved("racer").await;
    assert_eq!((account.granted, account.lots.len()), (7, 1));
}

#[tokio::test]
async fn health_needs_no_identity_and_other_routes_do() {
    let world = World::new().await;
    let (status, body) = call(&world, Event::new("GET /health", None)).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    for route in api::ROUTES[1..]
        .iter()
        .chain(&shared::routes::admin::ROUTES)
    {
        let (status, body) = call(
            &world,
            Event::new(route, None).path_param("id", "01J00000000000000000000000"),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{route}"
        );
        validate(&body, "Error");
    }
}

// ---------------------------------------------------------------------------------------------
// The contract: routes agree across openapi.yaml, template.yaml and the handlers, and real
// responses satisfy the OpenAPI schemas.

fn load_yaml(name: &str) -> serde_yaml::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn openapi() -> Value {
    serde_json::to_value(load_yaml("openapi.yaml")).unwrap()
}

/// Every route each function's handler serves, as `binary: METHOD /path`.
fn handled_routes() -> Vec<String> {
    let functions: [(&str, &[&str]); 3] = [
        ("api", &api::ROUTES),
        ("admin", &shared::routes::admin::ROUTES),
        ("enqueue", &enqueue::ROUTES),
    ];
    let mut handled: Vec<String> = functions
        .iter()
        .flat_map(|(binary, routes)| routes.iter().map(move |r| format!("{binary}: {r}")))
        .collect();
    handled.sort();
    handled
}

/// Every HttpApi event of template.yaml, as `binary: METHOD /path` (the function it invokes).
fn template_routes() -> Vec<String> {
    let mut declared = Vec::new();
    let template = load_yaml("template.yaml");
    for (_, resource) in template["Resources"].as_mapping().unwrap() {
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or("?");
        for (_, event) in events {
            if event["Type"].as_str() == Some("HttpApi") {
                let props = &event["Properties"];
                declared.push(format!(
                    "{binary}: {} {}",
                    props["Method"].as_str().unwrap(),
                    props["Path"].as_str().unwrap()
                ));
            }
        }
    }
    declared.sort();
    declared
}

#[test]
fn openapi_template_and_handlers_declare_the_same_routes() {
    let handled = handled_routes();
    let spec = openapi();
    let mut documented = Vec::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut served: Vec<&str> = handled
        .iter()
        .map(|r| r.split_once(": ").unwrap().1)
        .collect();
    served.sort();
    assert_eq!(documented, served, "openapi.yaml and the handlers disagree");
    // Each route reaches the function whose handler serves it: the admin routes the admin
    // function (the only role that may delete and re-queue), never the api function.
    assert_eq!(
        template_routes(),
        handled,
        "template.yaml and the handlers disagree"
    );
}

/// The IAM actions a function's inline policies allow.
fn allowed_actions(template: &serde_yaml::Value, function: &str) -> Vec<String> {
    let policies = template["Resources"][function]["Properties"]["Policies"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{function} has inline policies"));
    let mut actions = Vec::new();
    for statement in policies
        .iter()
        .flat_map(|p| p["Statement"].as_sequence().cloned().unwrap_or_default())
    {
        match &statement["Action"] {
            serde_yaml::Value::String(one) => actions.push(one.clone()),
            serde_yaml::Value::Sequence(many) => {
                actions.extend(many.iter().filter_map(|a| a.as_str().map(str::to_owned)))
            }
            other => panic!("{function}: unexpected Action {other:?}"),
        }
    }
    actions
}

#[test]
fn only_the_admin_function_may_delete_items_and_the_api_function_cannot_requeue() {
    let template = load_yaml("template.yaml");
    let destructive = ["dynamodb:DeleteItem", "dynamodb:BatchWriteItem"];
    let admin = allowed_actions(&template, "AdminFunction");
    assert!(
        destructive.iter().all(|a| admin.contains(&a.to_string())),
        "{admin:?}"
    );
    for function in ["ApiFunction", "EnqueueFunction"] {
        let actions = allowed_actions(&template, function);
        assert!(
            !actions.iter().any(|a| destructive.contains(&a.as_str())),
            "{function}: {actions:?}"
        );
    }
    let api = allowed_actions(&template, "ApiFunction");
    assert!(!api.iter().any(|a| a.starts_with("sqs:")), "{api:?}");
}

/// Checks `value` against the named schema: types, required properties, no undeclared
/// properties where the schema closes them, enums.
fn validate(value: &Value, schema: &str) {
    let spec = openapi();
    let schema = &spec["components"]["schemas"][schema];
    assert!(!schema.is_null(), "no such schema");
    if let Err(e) = check(&spec, schema, value, "$") {
        panic!("{e}\nvalue: {value:#}");
    }
}

fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap();
        return check(spec, &spec["components"]["schemas"][name], value, at);
    }
    if let Some(options) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        return options
            .iter()
            .any(|o| check(spec, o, value, at).is_ok())
            .then_some(())
            .ok_or(format!("{at}: matches none of oneOf/anyOf"));
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            check(spec, part, value, at)?;
        }
        return Ok(());
    }
    if value.is_null() {
        return if schema["nullable"] == true || schema.get("type").is_none() {
            Ok(())
        } else {
            Err(format!("{at}: null but not nullable"))
        };
    }
    if let Some(choices) = schema["enum"].as_array() {
        if !choices.contains(value) {
            return Err(format!("{at}: {value} not in enum {choices:?}"));
        }
    }
    match schema["type"].as_str() {
        Some("object") => {
            let object = value.as_object().ok_or(format!("{at}: not an object"))?;
            for name in schema["required"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    return Err(format!("{at}: missing required {name}"));
                }
            }
            let properties = schema["properties"].as_object();
            for (name, v) in object {
                match properties.and_then(|p| p.get(name)) {
                    Some(s) => check(spec, s, v, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == false => {
                        return Err(format!("{at}: undeclared property {name}"))
                    }
                    None => {}
                }
            }
            Ok(())
        }
        Some("array") => {
            for (i, item) in value
                .as_array()
                .ok_or(format!("{at}: not an array"))?
                .iter()
                .enumerate()
            {
                check(spec, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        Some("integer") => value
            .as_i64()
            .map(|_| ())
            .ok_or(format!("{at}: not an integer")),
        Some("number") => value
            .as_f64()
            .map(|_| ())
            .ok_or(format!("{at}: not a number")),
        Some("string") => value
            .as_str()
            .map(|_| ())
            .ok_or(format!("{at}: not a string")),
        Some("boolean") => value
            .as_bool()
            .map(|_| ())
            .ok_or(format!("{at}: not a boolean")),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn the_202_and_error_bodies_follow_the_contract() {
    let world = World::new().await;
    world.grant("c", 10, None).await;
    validate(&generate(&world, "c", "x").await, "Accepted");
    let event = Event::new(enqueue::IMAGE_ROUTE, user("c")).body(image_body("y"));
    let (status, body) = parts(enqueue::handle(&world.state, event.build()).await);
    assert_eq!(status, 402);
    validate(&body, "Error");
}

/// A template parameter's default, or a resource property, as a number.
fn template_number(template: &serde_yaml::Value, path: &[&str]) -> i64 {
    let mut node = template;
    for step in path {
        node = &node[*step];
    }
    node.as_i64()
        .unwrap_or_else(|| panic!("{path:?} is not a number"))
}

#[test]
fn the_timeouts_of_the_template_leave_each_repair_to_its_owner() {
    let template = load_yaml("template.yaml");
    let visibility_ms = 1000
        * template_number(
            &template,
            &[
                "Resources",
                "GenerationQueue",
                "Properties",
                "VisibilityTimeout",
            ],
        );
    let receives = template_number(
        &template,
        &[
            "Resources",
            "GenerationQueue",
            "Properties",
            "RedrivePolicy",
            "maxReceiveCount",
        ],
    );
    let parameter = |name: &str| template_number(&template, &["Parameters", name, "Default"]);
    // A handed-back session waits out the visibility timeout for its redelivery: the sweeper
    // must not take it for stuck meanwhile, or every hand-back gets a duplicate message.
    assert!(parameter("StuckQueuedMs") > visibility_ms);
    // Every delivery and the dead-letter consumer finish before the hold times out.
    assert!(parameter("HoldTimeoutMs") > receives * visibility_ms);
    assert!(parameter("HoldTimeoutMs") > parameter("MaxRenderMs"));
}
