"""DynamoDB's request validation, applied before moto sees a request.

moto accepts requests that DynamoDB refuses: most visibly, it does not check the expressions of
the items of a TransactWriteItems, so a value left in ExpressionAttributeValues that no
expression uses passes moto and fails on AWS. This module checks every request the way the
DynamoDB API reference and developer guide describe, for every operation and for every item of
TransactWriteItems / TransactGetItems, and answers as DynamoDB does: HTTP 400, a
`ValidationException` whose message is AWS's own text where AWS documents or is known to send
one.

Enforced (each has a test in shared/tests/strict.rs that sends a violating request through the
real SDK):

- ExpressionAttributeNames / ExpressionAttributeValues that no expression of the request
  (or of the transaction item) uses: "Value provided in ExpressionAttribute{Names,Values}
  unused in expressions: keys: {...}"; an empty map: "ExpressionAttribute{Names,Values} must
  not be empty".
- `#name` / `:value` used in an expression but not defined: "Invalid <Kind>Expression: An
  expression attribute {name used in the document path,value used in expression} is not
  defined; ...".
- A reserved word used bare as an attribute name in any expression (moto's copy of DynamoDB's
  list): "Invalid <Kind>Expression: Attribute name is a reserved keyword; reserved keyword: X".
- An expression longer than 4 KB (4096 bytes of the raw string, as sent): "Invalid
  <Kind>Expression: Expression size has exceeded the maximum allowed size; expression size: N".
- TransactWriteItems: more than 100 items; two operations on one item ("Transaction request
  cannot include multiple operations on one item"); more than 4 MB in all.
- TransactGetItems: more than 100 items.
- An item over 400 KB in a Put / PutItem ("Item size has exceeded the maximum allowed size"),
  sized as DynamoDB documents: attribute name lengths plus value lengths; an update whose
  result is over 400 KB is refused after moto applied it (moto_server.py undoes it).
- Key attributes: a Put's item missing a key attribute, a key attribute of the wrong type or an
  empty string / binary, and a Key that names other attributes than the table's key ("The
  provided key element does not match the schema").

Not enforced: expression syntax beyond the tokens above (moto parses it), the 300-operator
limit of an expression, nesting depth (32 levels), the 1 MB query page (moto pages by count), a
ConditionExpression's functions on key attributes, BatchWriteItem / BatchGetItem item limits
(25 / 100) and duplicate keys in one batch.
"""

import json
import re

from moto.dynamodb.parsing.reserved_keywords import ReservedKeywords

RESERVED = {w.upper() for w in ReservedKeywords.get_reserved_keywords()}
# Words of the expression grammar itself: keywords, not attribute names.
GRAMMAR = {"SET", "REMOVE", "ADD", "DELETE", "AND", "OR", "NOT", "BETWEEN", "IN"}
EXPRESSIONS = {
    "UpdateExpression": "UpdateExpression",
    "ConditionExpression": "ConditionExpression",
    "KeyConditionExpression": "KeyConditionExpression",
    "FilterExpression": "FilterExpression",
    "ProjectionExpression": "ProjectionExpression",
}
MAX_TRANSACTION_ITEMS = 100
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
MAX_ITEM_BYTES = 400 * 1024
MAX_EXPRESSION_BYTES = 4096
UNDEFINED = {
    "#": "An expression attribute name used in the document path is not defined; "
    "attribute name: ",
    ":": "An expression attribute value used in expression is not defined; attribute value: ",
}
TOKEN = re.compile(r"([#:]?)([A-Za-z_][A-Za-z0-9_]*)(\s*\()?")


class Invalid(Exception):
    """A request DynamoDB refuses with a ValidationException."""


def check(target, body, key_schema):
    """Raises Invalid if DynamoDB would refuse the request. `key_schema(table)` gives
    [(name, type), ...] of a table's key, or None when the table is unknown."""
    operation = target.split(".", 1)[-1]
    if operation == "TransactWriteItems":
        check_transact_write(body.get("TransactItems") or [], key_schema)
    elif operation == "TransactGetItems":
        items = body.get("TransactItems") or []
        check_count(items)
        for entry in items:
            for op in entry.values():
                check_operation(op, key_schema)
    elif operation in ("PutItem", "GetItem", "UpdateItem", "DeleteItem", "Query", "Scan"):
        check_operation(body, key_schema, put=operation == "PutItem")


def check_transact_write(items, key_schema):
    check_count(items)
    if len(json.dumps(items)) > MAX_TRANSACTION_BYTES:
        raise Invalid("Transaction request size exceeds the maximum of 4 MB")
    seen = set()
    for entry in items:
        (kind, op), = entry.items()
        check_operation(op, key_schema, put=kind == "Put")
        item_key = key_of(op, kind, key_schema)
        if item_key in seen:
            raise Invalid("Transaction request cannot include multiple operations on one item")
        seen.add(item_key)


def check_count(items):
    if len(items) > MAX_TRANSACTION_ITEMS:
        raise Invalid(
            "1 validation error detected: Value at 'transactItems' failed to satisfy "
            f"constraint: Member must have length less than or equal to {MAX_TRANSACTION_ITEMS}"
        )


def key_of(op, kind, key_schema):
    schema = key_schema(op.get("TableName")) or []
    source = op.get("Item") if kind == "Put" else op.get("Key") or {}
    return (op.get("TableName"),) + tuple(
        json.dumps(source.get(name), sort_keys=True) for name, _ in schema
    )


def check_operation(op, key_schema, put=False):
    check_expressions(op)
    schema = key_schema(op.get("TableName"))
    if schema is None:
        return
    if put:
        item = op.get("Item") or {}
        check_key_values(item, schema, missing="in the item")
        if item_size(item) > MAX_ITEM_BYTES:
            raise Invalid("Item size has exceeded the maximum allowed size")
    elif "Key" in op:
        key = op.get("Key") or {}
        if set(key) != {name for name, _ in schema}:
            raise Invalid("The provided key element does not match the schema")
        check_key_values(key, schema, missing=None)


def check_key_values(attrs, schema, missing):
    for name, wanted in schema:
        if name not in attrs:
            raise Invalid(f"One or more parameter values were invalid: Missing the key {name} {missing}")
        (actual, value), = attrs[name].items()
        if actual != wanted:
            if missing is None:
                raise Invalid("The provided key element does not match the schema")
            raise Invalid(
                "One or more parameter values were invalid: Type mismatch for key "
                f"{name} expected: {wanted} actual: {actual}"
            )
        if actual in ("S", "B") and value == "":
            raise Invalid(
                "One or more parameter values are not valid. The AttributeValue for a key "
                f"attribute cannot contain an empty string value. Key: {name}"
            )


def item_size(item):
    """DynamoDB's item size: UTF-8 lengths of attribute names plus their values."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def value_size(value):
    (kind, v), = value.items()
    if kind in ("S", "N", "B"):
        return len(str(v).encode())
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(len(str(x).encode()) for x in v)
    if kind == "L":
        return 3 + sum(1 + value_size(x) for x in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(x) for k, x in v.items())
    return len(json.dumps(v))


def check_expressions(op):
    names = op.get("ExpressionAttributeNames")
    values = op.get("ExpressionAttributeValues")
    for field, given in (("Names", names), ("Values", values)):
        if given is not None and len(given) == 0:
            raise Invalid(f"ExpressionAttribute{field} must not be empty")
    names, values = names or {}, values or {}
    used_names, used_values = set(), set()
    for field, kind in EXPRESSIONS.items():
        expression = op.get(field)
        if expression is None:
            continue
        size = len(expression.encode())
        if size > MAX_EXPRESSION_BYTES:
            raise Invalid(
                f"Invalid {kind}: Expression size has exceeded the maximum allowed size; "
                f"expression size: {size}"
            )
        for sigil, word, call in TOKEN.findall(expression):
            if sigil:
                token = sigil + word
                defined, used = (names, used_names) if sigil == "#" else (values, used_values)
                if token not in defined:
                    raise Invalid(f"Invalid {kind}: {UNDEFINED[sigil]}{token}")
                used.add(token)
            elif not call and word.upper() in RESERVED and word.upper() not in GRAMMAR:
                raise Invalid(
                    f"Invalid {kind}: Attribute name is a reserved keyword; "
                    f"reserved keyword: {word}"
                )
    for field, given, used in (("Names", names, used_names), ("Values", values, used_values)):
        unused = sorted(set(given) - used)
        if unused:
            raise Invalid(
                f"Value provided in ExpressionAttribute{field} unused in expressions: "
                f"keys: {{{', '.join(unused)}}}"
            )
