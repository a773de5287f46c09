# memprof -- build, test, demo, bench, fuzz, install.
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
# Libraries are asked of pkg-config when a rule runs, not when make parses this
# file: `make demo` installs them (deps) before anything is compiled.
# A library is linked only into the program that uses it.
DAEMON_PKGS = libelf libprotobuf-c
PKG_CFLAGS = $(shell pkg-config --cflags $(DAEMON_PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(DAEMON_PKGS) 2>/dev/null)
PB_LIBS    = $(shell pkg-config --libs libprotobuf-c 2>/dev/null)
CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -fno-strict-aliasing \
           -I$(BUILD)/gen -Iproto -Icommon $(PKG_CFLAGS)
PYTHON  ?= /usr/bin/python3

GEN      = $(BUILD)/gen/memprof.pb-c.c $(BUILD)/gen/memprof.pb-c.h
WIRE_SRC = $(BUILD)/gen/memprof.pb-c.c proto/wire.c common/util.c
AGENT_SRC  = $(wildcard agent/*.c)
DAEMON_SRC = $(wildcard daemon/*.c)
CLI_SRC    = $(filter-out cli/main.c,$(wildcard cli/*.c))
HDRS = $(wildcard proto/*.h common/*.h agent/*.h daemon/*.h cli/*.h) $(BUILD)/gen/memprof.pb-c.h

BINS = $(BUILD)/memprofd $(BUILD)/memprof $(BUILD)/libmemprof_agent.so
.PHONY: all test unit demo bench fuzz install clean deps check-fresh
all: $(BINS)

deps:
	@sh scripts/install-deps.sh

$(BUILD)/gen/memprof.pb-c.c $(BUILD)/gen/memprof.pb-c.h: proto/memprof.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/memprof.proto

# The agent runs inside the target: PIC, hidden symbols but its entry point, no
# dependency on Python headers (it resolves the C API at run time). protobuf-c is
# linked in statically (a container's root rarely has libprotobuf-c.so.1); the
# version script keeps its symbols local, which also lets its non-PIC archive link.
PB_STATIC = $(shell pkg-config --variable=libdir libprotobuf-c 2>/dev/null)/libprotobuf-c.a
$(BUILD)/libmemprof_agent.so: $(AGENT_SRC) $(WIRE_SRC) $(HDRS) agent/agent.map
	$(CC) $(CFLAGS) -fPIC -shared -fvisibility=hidden -ftls-model=initial-exec -Iagent \
	    -Wl,-soname,libmemprof_agent.so -Wl,--version-script=agent/agent.map -Wl,-z,defs \
	    -o $@ $(AGENT_SRC) $(WIRE_SRC) $(PB_STATIC) -lpthread -ldl -lm

# The daemon shares the agent's CPython ABI table (pyabi.c: data only).
$(BUILD)/memprofd: $(DAEMON_SRC) cli/client.c agent/pyabi.c $(WIRE_SRC) $(HDRS)
	$(CC) $(CFLAGS) -Idaemon -Icli -Iagent -o $@ $(DAEMON_SRC) cli/client.c agent/pyabi.c $(WIRE_SRC) $(PKG_LIBS) -lm

$(BUILD)/memprof: cli/main.c $(CLI_SRC) $(WIRE_SRC) $(HDRS)
	$(CC) $(CFLAGS) -Icli -o $@ cli/main.c $(CLI_SRC) $(WIRE_SRC) $(PB_LIBS) -lm

$(BUILD)/test_wire: tests/unit/test_wire.c $(WIRE_SRC) $(HDRS)
	$(CC) $(CFLAGS) -o $@ tests/unit/test_wire.c $(WIRE_SRC) $(PB_LIBS)

# libFuzzer target for the daemon's message decoding (clang only).
$(BUILD)/fuzz_decode: tests/fuzz/fuzz_decode.c $(WIRE_SRC) $(HDRS)
	clang -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE \
	    -I$(BUILD)/gen -Iproto -Icommon -o $@ tests/fuzz/fuzz_decode.c $(WIRE_SRC) $(PB_LIBS)

unit: $(BUILD)/test_wire
	$(BUILD)/test_wire

test: all $(BUILD)/test_wire
	$(PYTHON) -m pytest -p no:cacheprovider -rs tests

# deps first, then a new make for the build, so the libraries it installed are
# the ones the build finds.
demo: deps
	$(MAKE) all
	sh scripts/demo.sh

# The README's two commands on a fresh Debian 12 root, and the .deb on a root without build tools (root only).
check-fresh:
	sh scripts/check-fresh.sh

bench: all
	sh scripts/bench.sh

fuzz: $(BUILD)/fuzz_decode
	@mkdir -p $(BUILD)/fuzz-corpus
	$(BUILD)/fuzz_decode -max_total_time=60 -max_len=65536 $(BUILD)/fuzz-corpus

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/memprof
	install -m 0755 $(BUILD)/memprofd $(BUILD)/memprof $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(BUILD)/libmemprof_agent.so $(DESTDIR)$(PREFIX)/lib/memprof/

clean:
	rm -rf $(BUILD)
