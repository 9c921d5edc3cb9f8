# Tally build. `make` builds every binary into build/bin with warnings as
# errors; `make asan` builds the same sources with ASan+UBSan into
# build/asan/bin. See README.md for the other targets.

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

UNIT_SRC  := $(wildcard tests/unit/*.c)
UNIT_BIN  := $(BUILD)/bin/unit-tests

.PHONY: all asan deps test unit integration run stack-up stack-down migrate bench clean check-deps
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

asan:
	$(MAKE) BUILD=build/asan OPT="-O1 -g" \
	  SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
	  all $(if $(UNIT_SRC),build/asan/bin/unit-tests)

# Installs missing Debian packages (apt-get update once, then install).
deps:
	@tools/install-deps.sh

unit: $(UNIT_BIN)
	$(UNIT_BIN)

# The README's test command: packages, both builds, unit tests under plain
# and sanitized builds, then integration tests against a real PostgreSQL and
# the dev broker, driving the sanitized binaries.
test: deps
	$(MAKE) all $(UNIT_BIN)
	$(MAKE) asan
	$(UNIT_BIN)
	build/asan/bin/unit-tests
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
