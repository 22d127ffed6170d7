//! The strict emulator (scripts/strict_dynamodb.py) refuses what DynamoDB refuses, with
//! DynamoDB's error: each rule gets a violating request through the real SDK, and valid
//! requests still pass. Nothing a refused request carried is written.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use shared::table::{key, number, string, Item};
use testkit::World;

/// The error code and message of a refused request.
fn refusal<E: ProvideErrorMetadata, R>(
    result: Result<impl std::fmt::Debug, SdkError<E, R>>,
) -> (String, String) {
    let error = result.expect_err("DynamoDB refuses this request");
    let service = error
        .as_service_error()
        .expect("a service error, not a transport one");
    (
        service.code().unwrap_or_default().to_owned(),
        service.message().unwrap_or_default().to_owned(),
    )
}

fn validation(message: &str) -> (String, String) {
    ("ValidationException".to_owned(), message.to_owned())
}

async fn transact(
    world: &World,
    items: Vec<TransactWriteItem>,
) -> Result<
    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
    SdkError<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>,
> {
    world
        .ddb()
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await
}

fn item(pk: &str, sk: &str) -> Item {
    key(pk, sk)
}

fn put(world: &World, item: Item) -> TransactWriteItem {
    TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(world.table())
                .set_item(Some(item))
                .build()
                .unwrap(),
        )
        .build()
}

fn update(
    world: &World,
    key: Item,
    expression: &str,
    values: &[(&str, AttributeValue)],
) -> TransactWriteItem {
    let mut update = Update::builder()
        .table_name(world.table())
        .set_key(Some(key))
        .update_expression(expression);
    for (name, value) in values {
        update = update.expression_attribute_values(*name, value.clone());
    }
    TransactWriteItem::builder()
        .update(update.build().unwrap())
        .build()
}

#[tokio::test]
async fn an_unused_value_in_a_transaction_item_is_refused_and_nothing_is_written() {
    let world = World::new().await;
    let result = transact(
        &world,
        vec![
            put(&world, item("U#a", "A")),
            update(
                &world,
                key("U#a", "B"),
                "SET n = :n",
                &[(":n", number(1)), (":true", AttributeValue::Bool(true))],
            ),
        ],
    )
    .await;
    assert_eq!(
        refusal(result),
        validation(
            "Value provided in ExpressionAttributeValues unused in expressions: keys: {:true}"
        )
    );
    assert!(world.keys().await.is_empty());
}

#[tokio::test]
async fn unused_and_undefined_names_and_values_are_refused() {
    let world = World::new().await;
    let base = || {
        world
            .ddb()
            .update_item()
            .table_name(world.table())
            .set_key(Some(key("U#a", "A")))
    };
    let cases = [
        (
            base()
                .update_expression("SET n = :n")
                .expression_attribute_values(":n", number(1))
                .expression_attribute_names("#unused", "x"),
            "Value provided in ExpressionAttributeNames unused in expressions: keys: {#unused}",
        ),
        (
            base()
                .update_expression("SET n = :n")
                .condition_expression("n < :missing")
                .expression_attribute_values(":n", number(1)),
            "Invalid ConditionExpression: An expression attribute value used in expression is \
             not defined; attribute value: :missing",
        ),
        (
            base()
                .update_expression("SET #n = :n")
                .expression_attribute_values(":n", number(1)),
            "Invalid UpdateExpression: An expression attribute name used in the document path \
             is not defined; attribute name: #n",
        ),
        (
            base()
                .update_expression("SET n = :n")
                .set_expression_attribute_values(Some(Default::default())),
            "ExpressionAttributeValues must not be empty",
        ),
    ];
    for (request, message) in cases {
        assert_eq!(refusal(request.send().await), validation(message));
    }
    assert!(world.keys().await.is_empty());
}

#[tokio::test]
async fn a_reserved_word_used_bare_is_refused_and_its_alias_passes() {
    let world = World::new().await;
    let bare = world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(key("U#a", "A")))
        .update_expression("SET status = :s")
        .expression_attribute_values(":s", string("queued"))
        .send()
        .await;
    assert_eq!(
        refusal(bare),
        validation("Invalid UpdateExpression: Attribute name is a reserved keyword; reserved keyword: status")
    );
    assert!(world.keys().await.is_empty());
    world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(key("U#a", "A")))
        .update_expression("SET #status = :s")
        .condition_expression("attribute_not_exists(pk)")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":s", string("queued"))
        .send()
        .await
        .expect("an aliased reserved word passes");
    assert_eq!(world.keys().await, vec![("U#a".into(), "A".into())]);
}

#[tokio::test]
async fn transactions_within_dynamodbs_limits_pass_and_beyond_them_are_refused() {
    let world = World::new().await;
    let twice = transact(
        &world,
        vec![
            put(&world, item("U#a", "A")),
            update(&world, key("U#a", "A"), "SET n = :n", &[(":n", number(1))]),
        ],
    )
    .await;
    assert_eq!(
        refusal(twice),
        validation("Transaction request cannot include multiple operations on one item")
    );
    let too_many = transact(
        &world,
        (0..101)
            .map(|i| put(&world, item("U#a", &format!("S{i:03}"))))
            .collect(),
    )
    .await;
    assert_eq!(
        refusal(too_many),
        validation("1 validation error detected: Value at 'transactItems' failed to satisfy constraint: Member must have length less than or equal to 100")
    );
    // Eleven items of 390 KB: each one fits an item, together they pass 4 MB.
    let big = |i: usize| {
        let mut item = item("U#a", &format!("B{i:02}"));
        item.insert("blob".into(), string("x".repeat(390 * 1024)));
        put(&world, item)
    };
    let too_large = transact(&world, (0..11).map(big).collect()).await;
    assert_eq!(
        refusal(too_large),
        validation("Transaction request size exceeds the maximum of 4 MB")
    );
    assert!(world.keys().await.is_empty());
    transact(
        &world,
        (0..100)
            .map(|i| put(&world, item("U#a", &format!("S{i:03}"))))
            .collect(),
    )
    .await
    .expect("100 items on distinct keys pass");
    assert_eq!(world.keys().await.len(), 100);
}

#[tokio::test]
async fn an_item_over_400_kb_is_refused() {
    let world = World::new().await;
    let mut item = item("U#a", "A");
    item.insert("blob".into(), string("x".repeat(400 * 1024)));
    let result = world
        .ddb()
        .put_item()
        .table_name(world.table())
        .set_item(Some(item.clone()))
        .send()
        .await;
    assert_eq!(
        refusal(result),
        validation("Item size has exceeded the maximum allowed size")
    );
    // moto counts item sizes a little more generously than DynamoDB's 409,600 bytes.
    item.insert("blob".into(), string("x".repeat(390 * 1024)));
    world
        .ddb()
        .put_item()
        .table_name(world.table())
        .set_item(Some(item))
        .send()
        .await
        .expect("an item under 400 KB passes");
}

#[tokio::test]
async fn key_attributes_must_be_present_typed_and_not_empty() {
    let world = World::new().await;
    let put_item = |item: Item| {
        world
            .ddb()
            .put_item()
            .table_name(world.table())
            .set_item(Some(item))
            .send()
    };
    let mut missing = Item::new();
    missing.insert("pk".into(), string("U#a"));
    assert_eq!(
        refusal(put_item(missing).await),
        validation("One or more parameter values were invalid: Missing the key sk in the item")
    );
    let mut mistyped = item("U#a", "A");
    mistyped.insert("sk".into(), number(1));
    assert_eq!(
        refusal(put_item(mistyped).await),
        validation("One or more parameter values were invalid: Type mismatch for key sk expected: S actual: N")
    );
    assert_eq!(
        refusal(put_item(item("", "A")).await),
        validation("One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty string value. Key: pk")
    );
    let mut extra = key("U#a", "A");
    extra.insert("other".into(), string("x"));
    let get = world
        .ddb()
        .get_item()
        .table_name(world.table())
        .set_key(Some(extra))
        .send()
        .await;
    assert_eq!(
        refusal(get),
        validation("The provided key element does not match the schema")
    );
    assert!(world.keys().await.is_empty());
}

#[tokio::test]
async fn an_expression_over_4_kb_is_refused_and_one_of_4_kb_passes() {
    let world = World::new().await;
    // `SET <name> = :v`, exactly `size` bytes long.
    let expression = |size: usize| format!("SET {} = :v", "a".repeat(size - 9));
    let send = |expression: String| {
        world
            .ddb()
            .update_item()
            .table_name(world.table())
            .set_key(Some(key("U#a", "A")))
            .update_expression(expression)
            .expression_attribute_values(":v", number(1))
            .send()
    };
    assert_eq!(
        refusal(send(expression(4097)).await),
        validation(
            "Invalid UpdateExpression: Expression size has exceeded the maximum allowed size; \
             expression size: 4097"
        )
    );
    let in_transaction = transact(
        &world,
        vec![update(
            &world,
            key("U#a", "B"),
            &expression(5000),
            &[(":v", number(1))],
        )],
    )
    .await;
    assert_eq!(
        refusal(in_transaction).1,
        "Invalid UpdateExpression: Expression size has exceeded the maximum allowed size; \
         expression size: 5000"
    );
    assert!(world.keys().await.is_empty());
    send(expression(4096)).await.expect("4096 bytes pass");
    assert_eq!(world.keys().await.len(), 1);
}

/// Grows `U#a / A` by one map entry of `kb` KB under `lots`, alone or in a transaction.
async fn grow_lots(world: &World, entry: &str, kb: usize, in_transaction: bool) -> bool {
    let expression = format!("SET lots.{entry} = :blob");
    let blob = string("x".repeat(kb * 1024));
    if in_transaction {
        let grow = update(world, item("U#a", "A"), &expression, &[(":blob", blob)]);
        return transact(world, vec![grow]).await.is_ok();
    }
    let result = world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(item("U#a", "A")))
        .update_expression(expression)
        .expression_attribute_values(":blob", blob)
        .send()
        .await;
    if let Err(e) = &result {
        let service = e.as_service_error().expect("a service error");
        assert_eq!(service.code(), Some("ValidationException"));
        assert_eq!(
            service.message(),
            Some("Item size to update has exceeded the maximum allowed size")
        );
    }
    result.is_ok()
}

#[tokio::test]
async fn an_update_that_grows_an_item_past_400_kb_is_refused_and_changes_nothing() {
    let world = World::new().await;
    let mut account = item("U#a", "A");
    account.insert("lots".into(), AttributeValue::M(Default::default()));
    world
        .ddb()
        .put_item()
        .table_name(world.table())
        .set_item(Some(account))
        .send()
        .await
        .unwrap();
    // Each entry alone is small; moto checks only top-level attributes, DynamoDB the item.
    for (i, entry) in ["a", "b", "c"].iter().enumerate() {
        assert!(grow_lots(&world, entry, 120, i % 2 == 1).await, "{entry}");
    }
    assert!(!grow_lots(&world, "d", 120, false).await);
    assert!(!grow_lots(&world, "d", 120, true).await);
    let stored = world
        .ddb()
        .get_item()
        .table_name(world.table())
        .set_key(Some(item("U#a", "A")))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let lots = stored["lots"].as_m().unwrap();
    let mut names: Vec<_> = lots.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"], "the refused updates wrote nothing");
}
