# The two set-up commands are `make demo` (the whole pipeline locally) and `make test` (every
# test). Both install what they need into the repo's own .venv first.
SHELL := bash
.PHONY: test lint fmt clippy validate build-lambda check-all

## Every test: unit, integration against a private moto server, contract checks.
test:
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

## Release bootstraps for Lambda (x86_64 here; arm64 in the template by default).
build-lambda:
	@bin=$$(scripts/venv.sh); PATH=$$bin:$$PATH cargo lambda build --release --x86-64
