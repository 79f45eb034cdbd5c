# Everything here runs on a fresh machine with only Go installed: tools are
# pinned and fetched through the Go module proxy by `go run`.
GO         ?= go
STATICCHECK = honnef.co/go/tools/cmd/staticcheck@v0.8.2
BENCHSTAT   = golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

.PHONY: build demo demo-fleet test check bench fuzz

build:
	$(GO) build -o bin/corral .

# A rate-limited origin, a herd of 200 pollers, with and without corral.
demo:
	$(GO) run . -demo

# The same herd over 3 replicas, alone and sharing a throwaway redis-server
# (installed from the distribution's packages when it is missing).
demo-fleet:
	scripts/need-redis
	$(GO) run . -demo -demo-replicas 3

# Unit, integration and fuzz-seed tests, with the race detector.
test:
	$(GO) test -race -count=1 ./...

check:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Load comparisons; compare two runs with: go run $(BENCHSTAT) old.txt new.txt
bench:
	$(GO) test -run '^$$' -bench 'Stampede|HotHit|ManyKeys|StoreOverhead|ZipfBudget' -benchmem -count 6 ./bench | tee bench.txt
	# The dashboard is paced at 2,000 polls a second: 8,000 polls is four
	# max-age windows, enough to count refreshes per window.
	$(GO) test -run '^$$' -bench 'Dashboard' -benchtime 8000x -count 6 ./bench | tee -a bench.txt
	$(GO) run $(BENCHSTAT) bench.txt

fuzz:
	$(GO) test ./freshness -run '^$$' -fuzz FuzzEvaluate -fuzztime 60s
	$(GO) test ./proxy -run '^$$' -fuzz FuzzUpstreamRequest -fuzztime 5m
	$(GO) test ./freshness -run '^$$' -fuzz FuzzTargeted -fuzztime 60s
	$(GO) test ./proxy/cache -run '^$$' -fuzz FuzzUnmarshal -fuzztime 60s
	$(GO) test ./proxy/internal/httprule -run '^$$' -fuzz FuzzAcceptListNormalForm -fuzztime 60s
	$(GO) test ./proxy/fleet -run '^$$' -fuzz FuzzParsePurge -fuzztime 60s
