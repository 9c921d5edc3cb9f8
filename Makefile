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
COMMON_OBJ  := $(COMMON_SRC:%.c=$(BUILD)/obj/%.o)

# One binary per folder: name -> sources.
BIN_collector := $(wildcard services/collector/*.c)
BIN_devbroker := $(wildcard tools/devbroker/*.c)
BIN_loadgen   := $(wildcard tools/loadgen/*.c)
BIN_api       := $(wildcard services/api/*.c)
BIN_reporter  := $(wildcard services/reporter/*.c)
BINARIES      := collector devbroker loadgen api reporter
BIN_FILES     := $(BINARIES:%=$(BUILD)/bin/tally-%)

UNIT_SRC  := $(wildcard tests/unit/*.c tests/unit/common/*.c)
UNIT_BIN  := $(BUILD)/bin/unit-tests
# Tests in subfolders share tests/unit/suites.h.
$(BUILD)/obj/tests/unit/%.o: CFLAGS_ALL += -Itests/unit

.PHONY: all asan deps test unit fuzz fuzz-build integration run stack-up stack-down migrate bench \
        clean check-deps
all: check-deps $(BIN_FILES)

# A newcomer's plain `make` on a machine without the libraries gets a hint
# instead of a wall of missing-header errors.
check-deps:
	@pkg-config --exists $(PKGS) 2>/dev/null || { \
	  echo "missing build dependencies: run 'make deps' (or 'make test' / 'make run', which install them)"; exit 1; }

$(BUILD)/obj/%.o: %.c $(wildcard common/*.h services/*/*.h tools/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

define binary_rule
$(BUILD)/bin/tally-$(1): $(BIN_$(1):%.c=$(BUILD)/obj/%.o) $(COMMON_OBJ)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SAN) -o $$@ $$^ $$(LDLIBS_ALL)
endef
$(foreach b,$(BINARIES),$(eval $(call binary_rule,$(b))))

$(UNIT_BIN): $(UNIT_SRC:%.c=$(BUILD)/obj/%.o) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS_ALL) $(shell pkg-config --libs check)

# GCC's -fsanitize=undefined leaves out float-cast-overflow (a double too
# large for the integer it is cast to), so it is named on its own; clang's
# undefined group already has it.
ASAN_SAN := -fsanitize=address,undefined,float-cast-overflow \
            -fno-sanitize-recover=undefined,float-cast-overflow -fno-omit-frame-pointer

asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -g" SAN="$(ASAN_SAN)" \
	  all $(if $(UNIT_SRC),build/asan/bin/unit-tests)

# ---- fuzzing: libFuzzer targets (tests/fuzz/*.c, one binary each) --------
# clang instruments the common sources for coverage, ASan and UBSan; they go
# into an archive so each target links only the modules it calls.
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
                 $(PKG_CFLAGS)
FUZZ_LIB      := $(FUZZ_DIR)/libtally-common.a
# Kept after linking, so that a rebuild compiles only what changed.
.SECONDARY: $(FUZZ_NAMES:%=$(FUZZ_DIR)/obj/tests/fuzz/%.o)

$(FUZZ_DIR)/obj/%.o: %.c $(wildcard common/*.h tests/fuzz/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_LIB): $(COMMON_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
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

unit: $(UNIT_BIN)
	$(UNIT_BIN)

# The README's test command: packages, both builds, unit tests under plain
# and sanitized builds, every fuzz target for FUZZ_TEST_SECONDS (15 s), then
# integration tests against a real PostgreSQL and the dev broker, driving
# the sanitized binaries.
test: deps
	$(MAKE) all $(UNIT_BIN)
	$(MAKE) asan
	$(UNIT_BIN)
	build/asan/bin/unit-tests
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_TEST_SECONDS)
	python3 tests/stripe/test_standin.py
	python3 tests/integration/run.py --bin build/bin --asan-bin build/asan/bin
	python3 tests/api/run.py --asan-bin build/asan/bin
	python3 tests/e2e/run.py --bin build/bin

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

clean:
	rm -rf build
