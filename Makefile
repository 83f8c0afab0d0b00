SHELL := /bin/bash
# urbd: `make demo` and `make test` install what they need first.
GO      ?= go
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build deps test unit e2e lint demo bench clean

all: build

build:
	$(GO) build -o bin/urbd ./cmd/urbd

deps:
	./scripts/install-deps.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# unit: every package's tests with the race detector (e2e excluded).
unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

# e2e: real clients, real processes, network namespaces and a real kernel in a VM.
e2e: build
	@set -o pipefail; $(GO) test -count=1 -timeout 35m -v ./e2e/... 2>&1 | tee e2e.log | \
		grep -E '^(--- |ok|FAIL|panic)' ; rc=$$?; ./scripts/e2e-summary.sh e2e.log; exit $$rc

test: deps lint unit e2e

demo: deps build
	./scripts/demo.sh

bench: deps build
	./scripts/bench.sh all

clean:
	rm -rf bin e2e.log
