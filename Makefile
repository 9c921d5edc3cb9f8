# Tally build. `make` builds every binary into build/bin with warnings as
# errors; `make asan` builds the same sources with ASan+UBSan into
# build/asan/bin; `make fuzz` builds the libFuzzer targets of tests/fuzz
# with clang into build/fuzz and runs each for FUZZ_SECONDS. See README.md
# for the other targets.

CC      ?= cc
PKGS    := rdkafka libpq libmicrohttpd jansson libcurl
WARN    := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes \
           -Wmissing-prototypes -Wformat=2 -Wvla -Werror
DEFS    := -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
OPT     ?= -O2 -g
SAN     :=
BUILD   ?= build
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS_ALL = $(WARN) $(DEFS) $(OPT) $(SAN) -Icommon $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS_ALL = $(PKG_LIBS) -lpthread -lm

COMMON_SRC  := $(wildcard common/*.c)
COMMON_LIB  := $(BUILD)/lib/libtally-common.a

# Each service's folder, less its main.c, is a static library that its
# binary and its unit tests link; the folders are wildcards, so a new .c file
# needs no change here. The tools are one binary per folder.
SERVICES := collector api reporter ingest
TOOLS    := devbroker loadgen migrate healthcheck
SVC_SRC   = $(filter-out services/$(1)/main.c,$(wildcard services/$(1)/*.c))
SVC_LIB   = $(BUILD)/lib/libtally-$(1).a
BINARIES := $(SERVICES) $(TOOLS)
BIN_FILES := $(BINARIES:%=$(BUILD)/bin/tally-%)

# Unit tests: one Check binary per folder of tests/unit (common and each
# service), linked against that folder's library (+ common). A service's
# tests see its private headers through -Iservices/<svc>.
UNIT_DIRS  := common $(SERVICES)
UNIT_BINS  := $(UNIT_DIRS:%=$(BUILD)/bin/unit-%)
UNIT_RUN   := tests/unit/run.c
UNIT_SRC    = $(wildcard tests/unit/$(1)/*.c) $(UNIT_RUN)
# Every unit test reaches tests/unit/run.h; a service's tests its headers.
$(BUILD)/obj/tests/unit/%.o: CFLAGS_ALL += -Itests/unit
$(foreach s,$(SERVICES),$(eval $(BUILD)/obj/tests/unit/$(s)/%.o: CFLAGS_ALL += -Iservices/$(s)))

.PHONY: all asan deps test unit fuzz fuzz-build integration run stack-up stack-down migrate bench \
        clean check-deps
all: check-deps $(BIN_FILES)

# A newcomer's plain `make` on a machine without the libraries gets a hint
# instead of a wall of missing-header errors.
check-deps:
	@pkg-config --exists $(PKGS) 2>/dev/null || { \
	  echo "missing build dependencies: run 'make deps' (or 'make test' / 'make run', which install them)"; exit 1; }

# Any header change rebuilds every object (coarse but never stale).
HEADERS = $(wildcard common/*.h services/*/*.h tools/*/*.h tests/unit/*.h tests/unit/*/*.h)

$(BUILD)/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(COMMON_LIB): $(COMMON_SRC:%.c=$(BUILD)/obj/%.o)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

define service_rules
$(call SVC_LIB,$(1)): $(patsubst %.c,$(BUILD)/obj/%.o,$(call SVC_SRC,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@
	ar rcs $$@ $$^

$(BUILD)/bin/tally-$(1): $(BUILD)/obj/services/$(1)/main.o $(call SVC_LIB,$(1)) $(COMMON_LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SAN) -o $$@ $$^ $$(LDLIBS_ALL)

$(BUILD)/bin/unit-$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(call UNIT_SRC,$(1))) \
                        $(call SVC_LIB,$(1)) $(COMMON_LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SAN) -o $$@ $$^ $$(LDLIBS_ALL) $$(shell pkg-config --libs check)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rules,$(s))))

# The dashboard's pages, scripts and vendored chart library, embedded in
# tally-api (services/api/dashassets.h) by a generator run at build time.
DASH_FILES := $(shell find services/api/dashboard -type f 2>/dev/null)
$(BUILD)/gen/dashassets.c: tools/embed-assets.py $(DASH_FILES)
	@mkdir -p $(dir $@)
	python3 tools/embed-assets.py services/api/dashboard $@
$(BUILD)/gen/dashassets.o: $(BUILD)/gen/dashassets.c services/api/dashassets.h
	$(CC) $(CFLAGS_ALL) -Iservices/api -c -o $@ $<
$(call SVC_LIB,api): $(BUILD)/gen/dashassets.o

define tool_rules
$(BUILD)/bin/tally-$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard tools/$(1)/*.c)) $(COMMON_LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SAN) -o $$@ $$^ $$(LDLIBS_ALL)
endef
$(foreach t,$(TOOLS),$(eval $(call tool_rules,$(t))))

$(BUILD)/bin/unit-common: $(patsubst %.c,$(BUILD)/obj/%.o,$(call UNIT_SRC,common)) $(COMMON_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS_ALL) $(shell pkg-config --libs check)

# GCC's -fsanitize=undefined leaves out float-cast-overflow (a double too
# large for the integer it is cast to), so it is named on its own; clang's
# undefined group already has it.
ASAN_SAN := -fsanitize=address,undefined,float-cast-overflow \
            -fno-sanitize-recover=undefined,float-cast-overflow -fno-omit-frame-pointer

asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -g" SAN="$(ASAN_SAN)" \
	  all $(UNIT_DIRS:%=build/asan/bin/unit-%)

# ---- fuzzing: libFuzzer targets (tests/fuzz/*.c, one binary each) --------
# clang instruments the common sources, the api's text and model modules
# (the apimodel, query and canonpath targets' subject) and ingest's batch
# splitter (the batch target's) for coverage, ASan and UBSan; they go into
# an archive so each target links only the modules it calls.
# `make fuzz` runs every target for FUZZ_SECONDS on a temporary copy of its
# seed corpus (tests/fuzz/corpus/<name>); crashes, timeouts and failed
# properties go to FUZZ_FINDINGS (git-ignored) and fail the run.
FUZZ_CC       ?= clang-14
FUZZ_SECONDS  ?= 60
FUZZ_TEST_SECONDS ?= 15
FUZZ_FINDINGS ?= tests/fuzz/findings
FUZZ_DIR      := $(BUILD)/fuzz
FUZZ_SRC      := $(wildcard tests/fuzz/*.c)
FUZZ_NAMES    := $(notdir $(FUZZ_SRC:.c=))
FUZZ_TARGETS  ?= $(FUZZ_NAMES)
# Every sanitizer report aborts, so libFuzzer saves the input that caused it.
FUZZ_SAN      := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS    = $(WARN) $(DEFS) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link -Icommon \
                 -Iservices/api -Iservices/ingest $(PKG_CFLAGS)
FUZZ_API_SRC  := services/api/apimodel.c services/api/apitext.c services/api/apiroute.c \
                 services/api/sigv4.c services/ingest/ingestbody.c
FUZZ_LIB      := $(FUZZ_DIR)/libtally-fuzz.a
# Kept after linking, so that a rebuild compiles only what changed.
.SECONDARY: $(FUZZ_NAMES:%=$(FUZZ_DIR)/obj/tests/fuzz/%.o)

$(FUZZ_DIR)/obj/%.o: %.c $(wildcard common/*.h services/api/*.h services/ingest/*.h tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_LIB): $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(COMMON_SRC) $(FUZZ_API_SRC))
	rm -f $@
	ar rcs $@ $^

$(FUZZ_DIR)/bin/fuzz-%: $(FUZZ_DIR)/obj/tests/fuzz/%.o $(FUZZ_LIB)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_ALL)

fuzz-build: check-deps
	@command -v $(FUZZ_CC) >/dev/null || { \
	  echo "$(FUZZ_CC) not found: run 'make deps' (clang-14, libclang-rt-14-dev)"; exit 1; }
	$(MAKE) $(FUZZ_NAMES:%=$(FUZZ_DIR)/bin/fuzz-%)

fuzz: fuzz-build
	tests/fuzz/run.sh --bin $(FUZZ_DIR)/bin --seconds $(FUZZ_SECONDS) \
	  --findings $(FUZZ_FINDINGS) $(FUZZ_TARGETS)

# Installs missing Debian packages (apt-get update once, then install).
deps:
	@tools/install-deps.sh

# Builds and runs the unit-test binaries (unit-common, unit-api,
# unit-collector, unit-reporter, unit-ingest); stops at the first that fails.
unit: $(UNIT_BINS)
	$(foreach t,$(UNIT_BINS),$(t) &&) true

# The README's test command: packages, both builds, unit tests under plain
# and sanitized builds, every fuzz target for FUZZ_TEST_SECONDS (15 s), then
# integration tests against a real PostgreSQL and the dev broker, driving
# the sanitized binaries.
test: deps
	$(MAKE) all $(UNIT_BINS)
	$(MAKE) asan
	$(foreach t,$(UNIT_BINS),$(t) &&) true
	$(foreach t,$(UNIT_DIRS:%=build/asan/bin/unit-%),$(t) &&) true
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_TEST_SECONDS)
	python3 tests/stripe/test_standin.py
	python3 tests/integration/run.py --bin build/bin --asan-bin build/asan/bin
	python3 tests/api/run.py --asan-bin build/asan/bin
	python3 tests/e2e/run.py --bin build/bin
	promtool check config deploy/prometheus/prometheus.yml deploy/prometheus/prometheus-compose.yml
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules_test.yml
	python3 tests/prometheus/run.py --bin build/bin
	python3 tests/ingest/run.py --bin build/bin --asan-bin build/asan/bin
	python3 tests/aws/run.py --bin build/bin --asan-bin build/asan/bin
	python3 tests/migrate/run.py
	python3 tests/image/run.py
	python3 tests/gateway/run.py --bin build/asan/bin
	python3 tests/webhooks/run.py --bin build/asan/bin
	python3 tests/alerts/run.py --bin build/bin --asan-bin build/asan/bin
	python3 tests/dashboard/run.py --bin build/bin
	python3 tests/replicas/run.py --bin build/asan/bin

integration: all
	python3 tests/integration/run.py --bin build/bin --asan-bin build/asan/bin

# The whole system on embedded defaults, with demo data and traffic; Ctrl-C stops it.
run: deps all
	@tools/run.sh

stack-up: deps all
	@tools/stack.sh up .tally

stack-down:
	@tools/stack.sh down .tally

migrate:
	@tools/migrate.sh

bench: deps all
	python3 bench/run.py --bin build/bin

# The container image tally:local (deploy/Dockerfile) with docker or podman;
# makes the Debian base image with debootstrap when none can be pulled. See
# deploy/README.md.
.PHONY: image
image:
	deploy/image.sh build

# The gateway image tally-gateway:local (deploy/gateway/Dockerfile: nginx and
# rsyslog), through the same script, engine and base image.
.PHONY: gateway-image
gateway-image:
	deploy/image.sh gateway

clean:
	rm -rf build
