"""moto, with DynamoDB's isolation.

moto's threaded server applies DynamoDB requests without isolation between threads: a
TransactWriteItems deep-copies the table, and when a condition fails it restores that copy,
undoing writes other threads committed meanwhile. Real DynamoDB never does that (a conditional
write or a transaction is atomic). This launcher runs moto's own WSGI app unchanged, but lets
one DynamoDB request through at a time; SQS long polls and S3 stay concurrent.

    python scripts/moto_server.py --port 0   # prints "moto listening on http://127.0.0.1:PORT"
"""

import argparse
import socket
import sys
import threading

from werkzeug.serving import make_server

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def serialized_dynamodb(app):
    lock = threading.Lock()

    def wrapped(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            with lock:
                # Consume the whole response inside the lock: the work happens lazily.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        args.host,
        args.port,
        serialized_dynamodb(app),
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
