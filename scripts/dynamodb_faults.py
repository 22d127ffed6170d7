"""Fault injection for DynamoDB requests, at the edge every test reaches: the moto launcher.

A test arms a fault with `POST /_faults` (JSON below); the launcher then answers the matching
DynamoDB calls the way DynamoDB does when it is under pressure, before moto sees them, or, for
a lost response, after moto has applied them. Rules are scoped to a table name, so tests
sharing one moto server never see each other's faults. `GET /_faults` lists the rules with how
many calls each has injected; `DELETE /_faults?table=T` drops a table's rules.

    {"table": "t01...-table",        # a table the request names (any item of a transaction)
     "operation": "TransactWriteItems",
     "fault": "throttling",          # see FAULTS
     "skip": 0,                      # let this many matching calls through first
     "count": 1,                     # then inject this many times
     "containing": "provider_task_id"}  # optional: only calls whose request mentions this

Faults (the error types and status codes DynamoDB documents for them):
- throttling: 400 ThrottlingException
- provisioned_throughput: 400 ProvisionedThroughputExceededException
- conflict: 400 TransactionCanceledException, every item's reason TransactionConflict
- in_progress: 400 TransactionInProgressException
- internal: 500 InternalServerError
- lost_response: the request is applied by moto, then the client gets a 500: the write
  committed but the caller cannot know it (as a timeout after commit looks to a client).
- stall: the request is applied by moto and its real answer held back for `stall_ms` (rule
  field, default 6000: longer than the SDK clients' 5 s operation timeout), as a congested
  network or endpoint would: the caller times out on a write that committed.

The SDK retries throttling, 500s and (for transactions) conflicts by itself, up to its attempt
limit, so a test that wants its code to see the fault arms at least that many.
"""

import json
import threading

FAULTS = {
    "throttling": (400, "ThrottlingException", "Rate of requests exceeds the allowed throughput."),
    "provisioned_throughput": (
        400,
        "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API.",
    ),
    "conflict": (400, "TransactionCanceledException", None),
    "in_progress": (
        400,
        "TransactionInProgressException",
        "The transaction with the given request token is already in progress.",
    ),
    "internal": (500, "InternalServerError", "Internal server error"),
    "lost_response": (500, "InternalServerError", "Internal server error"),
    "stall": (200, None, None),
}

_rules = []
_lock = threading.Lock()


def arm(rule):
    """Adds a rule; raises ValueError if it is malformed."""
    if rule.get("fault") not in FAULTS:
        raise ValueError(f"fault must be one of {sorted(FAULTS)}")
    if not rule.get("table") or not rule.get("operation"):
        raise ValueError("table and operation are required")
    entry = {
        "table": rule["table"],
        "operation": rule["operation"],
        "fault": rule["fault"],
        "skip": int(rule.get("skip", 0)),
        "count": int(rule.get("count", 1)),
        "stall_ms": int(rule.get("stall_ms", 6000)),
        "containing": str(rule.get("containing") or ""),
        "seen": 0,
        "injected": 0,
    }
    with _lock:
        _rules.append(entry)
    return entry


def rules():
    with _lock:
        return [dict(r) for r in _rules]


def disarm(table):
    with _lock:
        _rules[:] = [r for r in _rules if r["table"] != table]


def tables_of(body):
    """Every table a request names, transaction items included."""
    names = set()
    if body.get("TableName"):
        names.add(body["TableName"])
    for entry in body.get("TransactItems") or []:
        for op in entry.values():
            if op.get("TableName"):
                names.add(op["TableName"])
    names.update((body.get("RequestItems") or {}).keys())
    return names


def take(operation, body):
    """The rule to inject into this call, if an armed one matches it (counting the call)."""
    tables = tables_of(body)
    text = json.dumps(body)
    with _lock:
        for rule in _rules:
            if rule["operation"] != operation or rule["table"] not in tables:
                continue
            if rule["containing"] not in text:
                continue
            rule["seen"] += 1
            if rule["seen"] > rule["skip"] and rule["injected"] < rule["count"]:
                rule["injected"] += 1
                return dict(rule)
    return None


def response(fault, body):
    """Status and JSON body of the injected answer."""
    status, error_type, message = FAULTS[fault]
    payload = {"__type": f"com.amazonaws.dynamodb.v20120810#{error_type}"}
    if fault == "conflict":
        items = body.get("TransactItems") or []
        payload["CancellationReasons"] = [
            {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
            for _ in items
        ]
        message = (
            "Transaction cancelled, please refer cancellation reasons for specific reasons ["
            + ", ".join("TransactionConflict" for _ in items)
            + "]"
        )
    payload["message"] = message
    return status, json.dumps(payload).encode()
