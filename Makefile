# memprof -- build, test, demo, bench, fuzz, install.
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
# Libraries are asked of pkg-config when a rule runs, not when make parses this
# file: `make demo` installs them (deps) before anything is compiled.
# A library is linked only into the program that uses it.
DAEMON_PKGS = libelf libdw libprotobuf-c
PKG_CFLAGS = $(shell pkg-config --cflags $(DAEMON_PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(DAEMON_PKGS) 2>/dev/null)
PB_LIBS    = $(shell pkg-config --libs libprotobuf-c 2>/dev/null)
# pprof profiles are gzip'd (zlib: memprof and memprofd); memprofd's HTTP endpoint is libmicrohttpd.
Z_CFLAGS   = $(shell pkg-config --cflags zlib 2>/dev/null)
Z_LIBS     = $(shell pkg-config --libs zlib 2>/dev/null)
MHD_CFLAGS = $(shell pkg-config --cflags libmicrohttpd 2>/dev/null)
MHD_LIBS   = $(shell pkg-config --libs libmicrohttpd 2>/dev/null)
CFLAGS  ?= -O2 -g
SANITIZE ?=
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wno-format-truncation -D_GNU_SOURCE -fno-strict-aliasing \
           -I$(BUILD)/gen -Iproto -Icommon $(PKG_CFLAGS) $(SANITIZE)
PYTHON  ?= /usr/bin/python3

GEN      = $(BUILD)/gen/memprof.pb-c.c $(BUILD)/gen/memprof.pb-c.h
# pprof's profile.proto (our copy of its messages) and the profile builder: memprof and memprofd only.
PPROF_SRC = $(BUILD)/gen/profile.pb-c.c common/pprof.c
WIRE_SRC = $(BUILD)/gen/memprof.pb-c.c proto/wire.c common/util.c
# The client library: connect, handshake, typed calls; linked by memprof and memprofd (attach/detach/stop).
CLIENT_SRC = client/client.c client/errors.c
# The option parser (table per command, --help from it) of memprof and memprofd.
OPTS_SRC = common/opts.c
# C++ names of native frames (memprofd, memprof rss): libstdc++'s demangler (build-essential's g++ brings it).
DEMANGLE_SRC = common/demangle.c
DEMANGLE_LIBS = -lstdc++
# Reading a live process from outside (its maps, ELF symbols, memory, CPython version, native names with
# libdwfl): memprofd (attach, native frames) and memprof rss.
PROBE_SRC = $(wildcard probe/*.c)
# The CPython layouts (one entry per minor version, the field accessor, the str decoders): data and inline
# helpers only, linked by the agent, memprofd and memprof.
PYABI_SRC = common/pyabi.c
AGENT_SRC  = $(wildcard agent/*.c)
DAEMON_SRC = $(wildcard daemon/*.c)
CLI_SRC    = $(filter-out cli/main.c,$(wildcard cli/*.c))
HDRS = $(wildcard proto/*.h common/*.h client/*.h probe/*.h agent/*.h daemon/*.h cli/*.h bpf/*.h) $(BUILD)/gen/memprof.pb-c.h \
       $(BUILD)/gen/profile.pb-c.h

BINS = $(BUILD)/memprofd $(BUILD)/memprof $(BUILD)/libmemprof_agent.so
.PHONY: all test unit demo bench fuzz fuzz-long install clean deps deps-test check-fresh test-asan

all: $(BINS)

# What the build and the demo need (make demo), and everything the tests use too (make test).
deps:
	@sh scripts/install-deps.sh build
deps-test:
	@sh scripts/install-deps.sh all

$(BUILD)/gen/memprof.pb-c.c $(BUILD)/gen/memprof.pb-c.h: proto/memprof.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/memprof.proto

$(BUILD)/gen/profile.pb-c.c $(BUILD)/gen/profile.pb-c.h: proto/profile.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/profile.proto

# The flame graph page of `memprof flamegraph`: web/flame.html.in with d3-flame-graph (from npm, pinned by
# web/package-lock.json, installed into $(BUILD)/web) inlined; embedded into memprof by cli/flame_page.S.
FLAMEGRAPH_DIST = $(BUILD)/web/node_modules/d3-flame-graph/dist
$(FLAMEGRAPH_DIST)/d3-flamegraph.min.js: web/package.json web/package-lock.json
	@mkdir -p $(BUILD)/web
	cp web/package.json web/package-lock.json $(BUILD)/web/
	cd $(BUILD)/web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

$(BUILD)/flame.html: web/flame.html.in scripts/inline-page.sh $(FLAMEGRAPH_DIST)/d3-flamegraph.min.js
	sh scripts/inline-page.sh web/flame.html.in $(FLAMEGRAPH_DIST) > $@.tmp && mv $@.tmp $@

$(BUILD)/flame_page.o: cli/flame_page.S $(BUILD)/flame.html
	$(CC) -c -DFLAME_HTML='"$(BUILD)/flame.html"' -o $@ cli/flame_page.S

# The agent runs inside the target: PIC, hidden symbols but its entry point, no
# dependency on Python headers (it resolves the C API at run time). protobuf-c is
# linked in statically (a container's root rarely has libprotobuf-c.so.1); the
# version script keeps its symbols local, which also lets its non-PIC archive link.
PB_STATIC = $(shell pkg-config --variable=libdir libprotobuf-c 2>/dev/null)/libprotobuf-c.a
$(BUILD)/libmemprof_agent.so: $(AGENT_SRC) $(PYABI_SRC) $(WIRE_SRC) $(HDRS) agent/agent.map
	$(CC) $(CFLAGS) -fPIC -shared -fvisibility=hidden -ftls-model=initial-exec -Iagent \
	    -Wl,-soname,libmemprof_agent.so -Wl,--version-script=agent/agent.map -Wl,-z,defs \
	    -o $@ $(AGENT_SRC) $(PYABI_SRC) $(WIRE_SRC) $(PB_STATIC) -lpthread -ldl -lm

$(BUILD)/memprofd: $(DAEMON_SRC) $(CLIENT_SRC) $(OPTS_SRC) $(PROBE_SRC) $(PYABI_SRC) $(WIRE_SRC) $(PPROF_SRC) $(DEMANGLE_SRC) $(HDRS)
	$(CC) $(CFLAGS) $(Z_CFLAGS) $(MHD_CFLAGS) -Idaemon -Iclient -Iprobe -o $@ $(DAEMON_SRC) $(CLIENT_SRC) \
	    $(OPTS_SRC) $(PROBE_SRC) $(PYABI_SRC) \
	    $(WIRE_SRC) $(PPROF_SRC) $(DEMANGLE_SRC) $(PKG_LIBS) $(Z_LIBS) $(MHD_LIBS) $(DEMANGLE_LIBS) -lm

# memprof rss: BPF programs (bpf/*.bpf.c) compiled against the kernel's BTF (vmlinux.h, generated) and loaded by
# memprof through a bpftool skeleton; bpf/build.sh writes rss_config.h saying whether that could be built.
RSS_SRC  = $(PROBE_SRC) $(PYABI_SRC)
RSS_LIBS = $(shell pkg-config --libs libbpf libdw libelf 2>/dev/null)
$(BUILD)/rss.stamp: bpf/rss.bpf.c bpf/rss.h bpf/build.sh
	sh bpf/build.sh $(BUILD)

$(BUILD)/memprof: cli/main.c $(CLI_SRC) $(CLIENT_SRC) $(OPTS_SRC) $(WIRE_SRC) $(PPROF_SRC) $(RSS_SRC) $(HDRS) \
	    $(BUILD)/flame_page.o $(BUILD)/rss.stamp $(DEMANGLE_SRC)
	$(CC) $(CFLAGS) $(Z_CFLAGS) -Icli -Iclient -Iprobe -o $@ cli/main.c $(CLI_SRC) $(CLIENT_SRC) $(OPTS_SRC) \
	    $(WIRE_SRC) $(PPROF_SRC) $(RSS_SRC) $(DEMANGLE_SRC) $(BUILD)/flame_page.o $(PB_LIBS) $(Z_LIBS) $(RSS_LIBS) \
	    $(DEMANGLE_LIBS) -lm

$(BUILD)/test_wire: tests/unit/test_wire.c $(WIRE_SRC) $(HDRS)
	$(CC) $(CFLAGS) -o $@ tests/unit/test_wire.c $(WIRE_SRC) $(PB_LIBS)

# libFuzzer targets (clang only), one per decoder: fuzz_decode, every frame and message a daemon, agent or
# client reads off a socket (wire.c); fuzz_snapshot, the snapshot files `memprof diff` reads (cli/cmd_diff.c);
# fuzz_agent_arg, the agent's start argument and MEMPROF_RUN (agent/agent.c); fuzz_alloc_report, what the
# daemon makes of agents' allocation reports and the views it serves from them (daemon/alloc.c). Each starts
# from its seeds and regression inputs in tests/fuzz/corpus/TARGET.
FUZZ_TARGETS = decode snapshot agent_arg alloc_report
FUZZ_CC = clang -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE -I$(BUILD)/gen -Iproto -Icommon \
          -DMEMPROF_VERSION='"fuzz"'
$(BUILD)/fuzz_decode: tests/fuzz/fuzz_decode.c $(WIRE_SRC) $(HDRS)
	$(FUZZ_CC) -o $@ tests/fuzz/fuzz_decode.c $(WIRE_SRC) $(PB_LIBS)
# (memprof rss as its stub, as in tests/objects: its BPF loader stays out)
$(BUILD)/fuzz_snapshot: tests/fuzz/fuzz_snapshot.c cli/main.c $(CLI_SRC) $(CLIENT_SRC) $(OPTS_SRC) $(WIRE_SRC) $(PPROF_SRC) $(HDRS)
	$(FUZZ_CC) -DMEMPROF_NO_RSS -Icli -Iclient -Dmain=memprof_cli_main -c cli/main.c -o $(BUILD)/fuzz_cli_main.o
	$(FUZZ_CC) -DMEMPROF_NO_RSS -Icli -Iclient -o $@ tests/fuzz/fuzz_snapshot.c $(BUILD)/fuzz_cli_main.o \
	    $(filter-out cli/cmd_diff.c cli/rss_%.c,$(CLI_SRC)) $(CLIENT_SRC) $(OPTS_SRC) $(WIRE_SRC) $(PPROF_SRC) \
	    $(PB_LIBS) $(Z_LIBS) -lm
$(BUILD)/fuzz_agent_arg: tests/fuzz/fuzz_agent_arg.c $(AGENT_SRC) $(PYABI_SRC) $(WIRE_SRC) $(HDRS)
	$(FUZZ_CC) -Iagent -o $@ tests/fuzz/fuzz_agent_arg.c $(filter-out agent/agent.c agent/launch.c,$(AGENT_SRC)) \
	    $(PYABI_SRC) $(WIRE_SRC) $(PB_LIBS) -lpthread -ldl -lm
$(BUILD)/fuzz_alloc_report: tests/fuzz/fuzz_alloc_report.c daemon/alloc.c daemon/session.c $(WIRE_SRC) $(HDRS)
	$(FUZZ_CC) -Idaemon -Iprobe -Iagent -o $@ tests/fuzz/fuzz_alloc_report.c $(WIRE_SRC) $(PB_LIBS) -lm

$(BUILD)/test_procfs: tests/unit/test_procfs.c probe/procfs.c common/util.c $(HDRS)
	$(CC) $(CFLAGS) -Iprobe -o $@ tests/unit/test_procfs.c probe/procfs.c common/util.c

unit: $(BUILD)/test_wire $(BUILD)/test_procfs
	$(BUILD)/test_wire
	$(BUILD)/test_procfs

# The whole suite (tests/: also the C unit tests and every saved fuzz input replayed through its libFuzzer target).
# The Debian sid root it needs is built into MEMPROF_CACHE (default /var/cache/memprof) on the first run;
# MEMPROF_OFFLINE=1 downloads nothing (those tests skip, saying so). MEMPROF_REQUIRE=all[,!PATTERN...] (CI,
# check-fresh): a skip for anything missing fails instead (tests/conftest.py).
test: deps-test all $(BUILD)/test_wire $(BUILD)/test_procfs $(addprefix $(BUILD)/fuzz_,$(FUZZ_TARGETS))
	$(PYTHON) -m pytest -p no:cacheprovider -rsfE tests

# deps first, then a new make for the build, so the libraries it installed are
# the ones the build finds.
demo: deps
	$(MAKE) all
	sh scripts/demo.sh

# The daemon and the CLI built with ASan+UBSan (the agent as usual: it runs inside the target), then the
# integration tests that exercise them; any sanitizer report fails the run.
ASAN_FLAGS = -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
ASAN_TESTS = tests/test_attach.py tests/test_daemon.py tests/test_alloc.py tests/test_plot.py tests/test_objects.py
# ASAN_SELECT=EXPR: only the tests pytest -k EXPR selects (CI: a subset of the interpreters)
ASAN_SELECT ?=
test-asan: $(BUILD)/libmemprof_agent.so
	$(MAKE) BUILD=$(BUILD)/asan SANITIZE="$(ASAN_FLAGS)" $(BUILD)/asan/memprofd $(BUILD)/asan/memprof
	cp $(BUILD)/libmemprof_agent.so $(BUILD)/asan/
	rm -rf $(BUILD)/asan/reports && mkdir -p $(BUILD)/asan/reports
	MEMPROF_BUILD=$(BUILD)/asan ASAN_OPTIONS=log_path=$(abspath $(BUILD))/asan/reports/asan:detect_leaks=1 \
	    UBSAN_OPTIONS=log_path=$(abspath $(BUILD))/asan/reports/ubsan:print_stacktrace=1 \
	    $(PYTHON) -m pytest -p no:cacheprovider -rsfE $(ASAN_TESTS) $(if $(ASAN_SELECT),-k '$(ASAN_SELECT)')
	@if ls $(BUILD)/asan/reports/* >/dev/null 2>&1; then cat $(BUILD)/asan/reports/*; \
	    echo "test-asan: sanitizer reports above" >&2; exit 1; fi
	@echo "test-asan: 0 sanitizer reports"

# The README's two commands on a fresh Debian 12 root, and the .deb on a root without build tools (root only).
check-fresh:
	sh scripts/check-fresh.sh

bench: all
	sh scripts/bench.sh

# make fuzz: 60 s per target; make fuzz-long: 10 minutes per target (FUZZ_SECONDS=N: any other time).
# What a run learns stays in $(BUILD)/fuzz-corpus/TARGET; a crash leaves its input in $(BUILD)/fuzz-crashes/
# (commit it under tests/fuzz/corpus/TARGET with the fix) and fails the run.
FUZZ_SECONDS ?= 60
fuzz: $(addprefix $(BUILD)/fuzz_,$(FUZZ_TARGETS))
	@set -e; mkdir -p $(BUILD)/fuzz-crashes; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(BUILD)/fuzz-corpus/$$t; echo "fuzz_$$t: $(FUZZ_SECONDS) s"; \
	    $(BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 \
	        -artifact_prefix=$(BUILD)/fuzz-crashes/$$t- $(BUILD)/fuzz-corpus/$$t tests/fuzz/corpus/$$t \
	        2>$(BUILD)/fuzz-corpus/$$t.log || { tail -40 $(BUILD)/fuzz-corpus/$$t.log; exit 1; }; \
	    grep -E '^stat::number_of_executed_units|^Done' $(BUILD)/fuzz-corpus/$$t.log; \
	done
fuzz-long:
	$(MAKE) fuzz FUZZ_SECONDS=600

# ---------------------------------------------------------------- install
# Every installed file, once: SOURCE:DESTINATION (under PREFIX):MODE. `install`
# copies these, `uninstall` removes exactly these, `deb` packages them.
INSTALL_FILES = \
    $(BUILD)/memprofd:bin/memprofd:0755 \
    $(BUILD)/memprof:bin/memprof:0755 \
    $(BUILD)/libmemprof_agent.so:lib/memprof/libmemprof_agent.so:0644 \
    $(BUILD)/man/memprof.1:share/man/man1/memprof.1:0644 \
    $(BUILD)/man/memprofd.8:share/man/man8/memprofd.8:0644 \
    scripts/completion.bash:share/bash-completion/completions/memprof:0644 \
    scripts/completion.bash:share/bash-completion/completions/memprofd:0644 \
    $(BUILD)/memprofd.service:lib/systemd/system/memprofd.service:0644 \
    python/memprof/__init__.py:lib/python3/dist-packages/memprof/__init__.py:0644 \
    python/memprof/_agent.py:lib/python3/dist-packages/memprof/_agent.py:0644 \
    python/memprof/magics.py:lib/python3/dist-packages/memprof/magics.py:0644
# Directories that are memprof's alone: uninstall removes them once empty (and
# the Python package's __pycache__, which importing it as root leaves there).
INSTALL_OWN_DIRS = lib/memprof lib/python3/dist-packages/memprof

# Pages and unit name the installed paths and version: filled in here.
SUBST = sed -e 's|@VERSION@|$(MEMPROF_VERSION)|g' -e 's|@PREFIX@|$(PREFIX)|g'
$(BUILD)/man/%: docs/man/% $(BUILD)/version.stamp
	@mkdir -p $(BUILD)/man
	$(SUBST) $< > $@
$(BUILD)/memprofd.service: scripts/memprofd.service.in $(BUILD)/version.stamp
	$(SUBST) $< > $@

install: all $(foreach f,$(INSTALL_FILES),$(word 1,$(subst :, ,$(f))))
	@set -e; for f in $(INSTALL_FILES); do \
	    src=$${f%%:*}; rest=$${f#*:}; dst='$(DESTDIR)$(PREFIX)'/$${rest%%:*}; mode=$${rest#*:}; \
	    echo "install -D -m $$mode $$src $$dst"; install -D -m $$mode "$$src" "$$dst"; \
	done

uninstall:
	@for f in $(INSTALL_FILES); do \
	    rest=$${f#*:}; dst='$(DESTDIR)$(PREFIX)'/$${rest%%:*}; \
	    if [ -e "$$dst" ] || [ -L "$$dst" ]; then echo "rm -f $$dst"; rm -f "$$dst"; fi; \
	done
	@for d in $(INSTALL_OWN_DIRS); do \
	    rm -rf '$(DESTDIR)$(PREFIX)'/$$d/__pycache__; \
	    if [ -d '$(DESTDIR)$(PREFIX)'/$$d ]; then rmdir '$(DESTDIR)$(PREFIX)'/$$d; fi; \
	done

# build/memprof_VERSION_ARCH.deb from a staged `make install PREFIX=/usr` (own build tree).
deb:
	BUILD='$(BUILD)' MEMPROF_VERSION='$(MEMPROF_VERSION)' sh scripts/mkdeb.sh

version:
	@echo $(MEMPROF_VERSION)

clean:
	rm -rf $(BUILD)

# ---------------------------------------------------------------- version
.PHONY: uninstall deb version FORCE
# One place: the VERSION file, plus the commit (and .dirty) inside a git checkout.
# Every program and the agent get it as -DMEMPROF_VERSION, and memprofd the
# agent's installed path; the stamp rebuilds them when either changes.
VERSION_BASE := $(shell cat VERSION)
GIT_DESC     := $(if $(wildcard .git),$(shell git describe --always --dirty --exclude='*' 2>/dev/null))
MEMPROF_VERSION ?= $(VERSION_BASE)$(if $(GIT_DESC),+g$(subst -,.,$(GIT_DESC)))
AGENT_PATH = $(PREFIX)/lib/memprof/libmemprof_agent.so
CFLAGS  += -DMEMPROF_VERSION='"$(MEMPROF_VERSION)"' -DMEMPROF_AGENT_PATH='"$(AGENT_PATH)"'
$(BUILD)/version.stamp: FORCE
	@mkdir -p $(BUILD)
	@echo '$(MEMPROF_VERSION) $(AGENT_PATH)' | cmp -s - $@ || echo '$(MEMPROF_VERSION) $(AGENT_PATH)' > $@
$(BINS) $(BUILD)/test_wire: $(BUILD)/version.stamp
