# The two set-up commands are `make demo` (the whole pipeline locally) and `make test` (every
# test). Both install what they need into the repo's own .venv first.
SHELL := bash
.PHONY: test lint fmt clippy validate build-lambda check-all demo token grant session dlq local-down smoke bench

## Every test: unit, integration against a private moto server, contract checks; the shipped
## bootstraps (build-lambda) first, for the tests that run the artifact itself.
test: build-lambda
	scripts/with-moto.sh cargo test --workspace --all-targets

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

## The SAM template and the OpenAPI document.
validate:
	@bin=$$(scripts/venv.sh); \
	AWS_DEFAULT_REGION=us-east-1 $$bin/sam validate --lint --template template.yaml; \
	$$bin/openapi-spec-validator openapi.yaml

lint: fmt clippy validate

## Release bootstraps for Lambda, built as sam build builds them (cargo lambda build --release),
## into target/lambda/<function>/bootstrap (x86_64 here; arm64 in the template by default).
FUNCTIONS := enqueue api admin generator sweeper deadletter
build-lambda:
	@bin=$$(scripts/venv.sh); PATH=$$bin:$$PATH cargo lambda build --release --x86-64 $(addprefix -p ,$(FUNCTIONS))

## The whole pipeline locally: moto, the mock provider, every function under cargo lambda watch,
## the gateway, pollers and schedules of template.yaml, a demo run; Ctrl-C stops everything.
## Options go in ARGS, e.g. make demo ARGS="--port 8080 --no-demo".
demo:
	cargo run -p local-stack --bin local -- up $(ARGS)

# Helpers for a running local stack (make demo in another terminal).
LOCAL := cargo run -q -p local-stack --bin local --
## A JWT: make token [U=alice] [ADMIN=1]
token:
	@$(LOCAL) token --user $(or $(U),demo-user) $(if $(ADMIN),--admin)
## Grant credits through the admin route: make grant [U=alice] [N=100]
grant:
	@$(LOCAL) grant --user $(or $(U),demo-user) --amount $(or $(N),100)
## A user's session, or all of them: make session [U=alice] [ID=01...]
session:
	@$(LOCAL) session --user $(or $(U),demo-user) $(ID)
## Dead letters (the admin route; the DLQ messages themselves with ARGS=--raw)
dlq:
	@$(LOCAL) dlq $(ARGS)
## Stop the running local stack.
local-down:
	@$(LOCAL) down

## The load tool's smoke preset against a private local stack, with thresholds.
smoke:
	scripts/smoke.sh

## Every benchmark, then docs/PERFORMANCE.md.
bench:
	scripts/bench.sh
