"""moto, as strict as DynamoDB, with its isolation, and transactions that cost what they touch.

Every DynamoDB request is first validated the way DynamoDB validates it (strict_dynamodb.py
lists the rules enforced and those that are not): moto accepts requests that AWS refuses, and a
test that passes only because of that proves nothing. Tests can also arm DynamoDB's pressure
faults (throttling, transaction conflicts, a lost response...) per table at `/_faults`
(dynamodb_faults.py).

Two faults of moto's threaded server, both fixed here without changing its DynamoDB semantics:

1. It applies DynamoDB requests without isolation between threads: a TransactWriteItems
   deep-copies the table, and when a condition fails it restores that copy, undoing writes
   other threads committed meanwhile. Real DynamoDB never does that (a conditional write or a
   transaction is atomic). This launcher lets one DynamoDB request through at a time; SQS long
   polls and S3 stay concurrent.
2. That deep copy of the whole table makes every transaction slower as the table grows (40-57
   ms at 1,200 items). With requests serialized, a rollback only has to restore the items the
   transaction touched, so only those are copied.

And one kindness: moto checks an item's size only when a top-level attribute is set, so an
update that grows a map (`SET lots.#id = :lot`) past DynamoDB's 400 KB item limit passes. Here
every update's result is measured as DynamoDB measures items and refused beyond the limit
("Item size to update has exceeded the maximum allowed size"; in a transaction its
cancellation reason is a ValidationError), leaving the item as it was.

    python scripts/moto_server.py --port 0   # prints "moto listening on http://127.0.0.1:PORT"
"""

import argparse
import io
import json
import os
import sys
import threading
import time

from werkzeug.serving import make_server

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dynamodb_faults  # noqa: E402
import strict_dynamodb  # noqa: E402


def install_item_level_rollback():
    """Snapshot and restore only the items a transaction touches (see point 2 above)."""
    import copy

    import moto.dynamodb.models as models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    class TablesAreNotCopied:
        def deepcopy(self, value, memo=None):
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

        def __getattr__(self, name):
            return getattr(copy, name)

    models.copy = TablesAreNotCopied()
    backend = models.DynamoDBBackend
    transact = backend.transact_write_items

    def transact_write_items(self, transact_items):
        snapshots = {}
        for entry in transact_items:
            op_type, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName"))
            if table is None:
                continue
            attrs = op.get("Item") if op_type == "Put" else op.get("Key")
            try:
                hash_key = DynamoType(attrs[table.hash_key_attr])
                range_key = (
                    DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
                )
            except (KeyError, TypeError):
                continue
            key = (table.name, hash_key, range_key)
            if key not in snapshots:
                before = copy.deepcopy(table.get_item(hash_key, range_key))
                snapshots[key] = (table, hash_key, range_key, before)
        try:
            return transact(self, transact_items)
        except Exception:
            for table, hash_key, range_key, before in snapshots.values():
                restore(table, hash_key, range_key, before)
            raise

    backend.transact_write_items = transact_write_items


def restore(table, hash_key, range_key, before):
    """Puts an item back as it was (`None`: it did not exist)."""
    table.delete_item(hash_key, range_key)
    if before is not None:
        if range_key is None:
            table.items[hash_key] = before
        else:
            table.items[hash_key][range_key] = before


def install_item_size_limit():
    """Refuses an update whose result is over 400 KB, as DynamoDB does (see point 3 above)."""
    import copy

    import moto.dynamodb.models as models
    from moto.dynamodb.exceptions import ItemSizeToUpdateTooLarge

    backend = models.DynamoDBBackend
    update = backend.update_item

    def update_item(self, table_name, key, *args, **kwargs):
        table = self.get_table(table_name)
        hash_key, range_key = self.get_keys_value(table, key)
        before = copy.deepcopy(table.get_item(hash_key, range_key))
        item = update(self, table_name, key, *args, **kwargs)
        attributes = item.to_json()["Attributes"]
        if strict_dynamodb.item_size(attributes) > strict_dynamodb.MAX_ITEM_BYTES:
            restore(table, hash_key, range_key, before)
            raise ItemSizeToUpdateTooLarge()
        return item

    backend.update_item = update_item


def key_schema_of(environ):
    """A lookup of a table's key schema in moto's backend for the request's region."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    auth = environ.get("HTTP_AUTHORIZATION", "")
    region = "us-east-1"
    if "Credential=" in auth:
        parts = auth.split("Credential=", 1)[1].split("/")
        if len(parts) > 2:
            region = parts[2]

    def lookup(table_name):
        table = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].tables.get(table_name)
        if table is None:
            return None
        schema = [(table.hash_key_attr, table.hash_key_type)]
        if table.range_key_attr:
            schema.append((table.range_key_attr, table.range_key_type))
        return schema

    return lookup


def json_answer(start_response, status, body, content_type="application/x-amz-json-1.0"):
    reasons = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}
    start_response(
        f"{status} {reasons.get(status, '')}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


def validation_error(start_response, message):
    body = json.dumps(
        {"__type": "com.amazonaws.dynamodb.v20120810#ValidationException", "message": message}
    ).encode()
    return json_answer(start_response, 400, body)


def fault_control(environ, start_response):
    """`/_faults`: arm (POST), list (GET) or drop (DELETE ?table=) injected DynamoDB faults."""
    method = environ["REQUEST_METHOD"]
    if method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            rule = dynamodb_faults.arm(json.loads(environ["wsgi.input"].read(length)))
        except (ValueError, TypeError) as e:
            return json_answer(start_response, 400, json.dumps({"error": str(e)}).encode())
        return json_answer(start_response, 200, json.dumps(rule).encode(), "application/json")
    if method == "DELETE":
        query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
        dynamodb_faults.disarm(query.get("table", ""))
    body = json.dumps(dynamodb_faults.rules()).encode()
    return json_answer(start_response, 200, body, "application/json")


def inject(fault, body, start_response, apply):
    """Answers with an injected fault; a lost response is applied first."""
    if fault == "lost_response":
        apply()
    status, payload = dynamodb_faults.response(fault, body)
    return json_answer(start_response, status, payload)


def strict_serialized_dynamodb(app):
    """Validates each DynamoDB request as DynamoDB does, then lets one through at a time."""
    lock = threading.Lock()

    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") == "/_faults":
            return fault_control(environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("DynamoDB_"):
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        stall_ms = 0
        with lock:
            try:
                body = json.loads(raw or b"{}")
                strict_dynamodb.check(target, body, key_schema_of(environ))
            except strict_dynamodb.Invalid as e:
                return validation_error(start_response, str(e))
            except ValueError:
                body = {}  # not JSON: moto answers as DynamoDB would
            rule = dynamodb_faults.take(target.split(".", 1)[-1], body)
            if rule and rule["fault"] == "stall":
                stall_ms = rule["stall_ms"]
            elif rule:
                # A lost response's write is applied; moto's own answer is thrown away.
                apply = lambda: list(app(environ, lambda *_: None))  # noqa: E731
                return inject(rule["fault"], body, start_response, apply)
            # Consume the whole response inside the lock: the work happens lazily.
            answer = list(app(environ, start_response))
        # A stalled answer is held outside the lock: other requests go on meanwhile.
        time.sleep(stall_ms / 1000)
        return answer

    return wrapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    install_item_level_rollback()
    install_item_size_limit()
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        args.host,
        args.port,
        strict_serialized_dynamodb(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    host, port = server.socket.getsockname()[:2]
    print(f"moto listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
