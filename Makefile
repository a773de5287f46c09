# memprof -- build, test, demo, bench, fuzz, install.
PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
# CFLAGS, the warnings (-Werror; WERROR= to relax), the dependency files: shared with tests/objects and tests/inject.
include mk/flags.mk
.DEFAULT_GOAL := all
# Libraries are asked of pkg-config when a rule first needs them, not when make parses this file: `make demo`
# installs them (deps) before anything is compiled. A library is linked only into the program that uses it.
DAEMON_PKGS = libelf libdw libprotobuf-c
PKG_CFLAGS = $(call once,PKG_CFLAGS,pkg-config --cflags $(DAEMON_PKGS) 2>/dev/null)
PKG_LIBS   = $(call once,PKG_LIBS,pkg-config --libs $(DAEMON_PKGS) 2>/dev/null)
PB_LIBS    = $(call once,PB_LIBS,pkg-config --libs libprotobuf-c 2>/dev/null)
# pprof profiles are gzip'd (zlib: memprof and memprofd); memprofd's HTTP endpoint is libmicrohttpd.
Z_CFLAGS   = $(call once,Z_CFLAGS,pkg-config --cflags zlib 2>/dev/null)
Z_LIBS     = $(call once,Z_LIBS,pkg-config --libs zlib 2>/dev/null)
# memprofd loads libmicrohttpd when --http asks for it (daemon/mhd.c), by the soname of the one pkg-config finds:
# its other commands start without it and the TLS libraries it links.
MHD_CFLAGS = $(call once,MHD_CFLAGS,pkg-config --cflags libmicrohttpd 2>/dev/null)
MHD_LIBDIR = $(call once,MHD_LIBDIR,pkg-config --variable=libdir libmicrohttpd 2>/dev/null)
MHD_SONAME = $(call once,MHD_SONAME,objdump -p $(MHD_LIBDIR)/libmicrohttpd.so 2>/dev/null | sed -n 's/^ *SONAME *//p')
# make test-asan: the sanitizers, in compiling and linking memprofd and memprof (in a build tree of their own).
SANITIZE ?=
PYTHON  ?= /usr/bin/python3

# ---------------------------------------------------------------- sources
# What each program links, as source files: a whole folder by wildcard (a new .c there needs no edit here), a list
# where a program takes only some files of a folder.
# pprof's profile.proto (our copy of its messages) and the profile builder: memprof and memprofd only.
PPROF_SRC = $(BUILD)/gen/profile.pb-c.c common/pprof.c
WIRE_SRC = $(BUILD)/gen/memprof.pb-c.c proto/wire.c common/util.c
# The client library: connect, handshake, typed calls; linked by memprof and memprofd (attach/detach/stop).
CLIENT_SRC = $(wildcard client/*.c)
# The option parser (table per command, --help from it) of memprof and memprofd.
OPTS_SRC = common/opts.c
# C++ names of native frames (memprofd, memprof rss): libstdc++'s demangler (build-essential's g++ brings it).
DEMANGLE_SRC = common/demangle.c
DEMANGLE_LIBS = -lstdc++
# Reading a live process from outside (its maps, ELF symbols, memory, CPython version, native names with
# libdwfl): memprofd (attach, native frames) and memprof rss.
PROBE_SRC = $(wildcard probe/*.c)
AGENT_SRC  = $(wildcard agent/*.c)
DAEMON_SRC = $(wildcard daemon/*.c)
CLI_SRC    = $(filter-out cli/main.c,$(wildcard cli/*.c))
# The CPython layouts (one entry per minor version, the field accessor, the str decoders): data and inline
# helpers only, linked by the agent, memprofd and memprof.
PYABI_SRC = common/pyabi.c
MEMPROFD_SRC = $(DAEMON_SRC) $(CLIENT_SRC) $(OPTS_SRC) $(PROBE_SRC) $(PYABI_SRC) $(WIRE_SRC) $(PPROF_SRC) $(DEMANGLE_SRC)
RSS_SRC  = $(PROBE_SRC) $(PYABI_SRC)
MEMPROF_SRC = cli/main.c $(CLI_SRC) $(CLIENT_SRC) $(OPTS_SRC) $(WIRE_SRC) $(PPROF_SRC) $(RSS_SRC) $(DEMANGLE_SRC)

# ---------------------------------------------------------------- objects
# One object per source, with its dependency file (-MMD) beside it, in a tree per set of flags: obj/host (memprofd,
# memprof, test_wire), obj/pic (the agent: position-independent, hidden symbols), obj/fuzz (clang, libFuzzer).
# A source's object is obj/TREE/ + its path, .o for .c; a generated one's is obj/TREE/gen/ + its name.
OBJ = $(BUILD)/obj
objs = $(foreach s,$(2),$(if $(filter $(BUILD)/gen/%,$(s)),$(OBJ)/$(1)/gen/$(notdir $(s:.c=.o)),$(OBJ)/$(1)/$(s:.c=.o)))
VERSION_CFLAGS = -DMEMPROF_VERSION='"$(MEMPROF_VERSION)"' -DMEMPROF_AGENT_PATH='"$(AGENT_PATH)"'
COMMON_CFLAGS = $(CFLAGS) $(BASE_CFLAGS) $(INCLUDES) $(PKG_CFLAGS) $(SANITIZE) $(VERSION_CFLAGS)
COMPILE.host = $(CC) $(COMMON_CFLAGS) $(Z_CFLAGS) $(MHD_CFLAGS) $(DEPFLAGS)
# The agent runs inside the target: PIC, hidden symbols but its entry point, no dependency on Python headers (it
# resolves the C API at run time).
COMPILE.pic = $(CC) $(COMMON_CFLAGS) -fPIC -fvisibility=hidden -ftls-model=initial-exec $(DEPFLAGS)
# libFuzzer targets: clang, ASan+UBSan, the version "fuzz", memprof without rss (its BPF loader stays out).
FUZZ_CC = clang
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined $(STD_CFLAGS) $(WARNINGS) $(INCLUDES) \
              -DMEMPROF_VERSION='"fuzz"'
# FUZZ_NO_RSS: the objects of memprof's files (and the harness that includes one), built without rss.
COMPILE.fuzz = $(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_NO_RSS) $(DEPFLAGS)
$(OBJ)/fuzz/cli/%.o $(OBJ)/fuzz/tests/fuzz/fuzz_snapshot.o: FUZZ_NO_RSS = -DMEMPROF_NO_RSS
# (fuzz_snapshot calls memprof's main under another name)
$(OBJ)/fuzz/cli/main.o: FUZZ_NO_RSS = -DMEMPROF_NO_RSS -Dmain=memprof_cli_main
$(OBJ)/host/daemon/mhd.o: COMPILE.host += -DMEMPROF_MHD_SONAME='"$(MHD_SONAME)"'

# The generated headers exist before any object compiles (order-only: their dependency files take over after).
GEN_HDRS = $(BUILD)/gen/memprof.pb-c.h $(BUILD)/gen/profile.pb-c.h $(BUILD)/gen/rss_config.h
define OBJ_RULES
$$(OBJ)/$(1)/%.o: %.c | $$(GEN_HDRS)
	@mkdir -p $$(@D)
	$$(COMPILE.$(1)) -c -o $$@ $$<
$$(OBJ)/$(1)/gen/%.o: $$(BUILD)/gen/%.c | $$(GEN_HDRS)
	@mkdir -p $$(@D)
	$$(COMPILE.$(1)) -c -o $$@ $$<
endef
$(foreach t,host pic fuzz,$(eval $(call OBJ_RULES,$(t))))
# The files that print the version or the agent's path: rebuilt when either changes (version.stamp, below).
VERSION_SRC := $(shell grep -lE '"common/version\.h"|MEMPROF_VERSION|MEMPROF_AGENT_PATH' $(wildcard */*.c) /dev/null)
$(call objs,host,$(VERSION_SRC)) $(call objs,pic,$(VERSION_SRC)): $(BUILD)/version.stamp

AGENT_OBJS    = $(call objs,pic,$(AGENT_SRC) $(PYABI_SRC) $(WIRE_SRC))
MEMPROFD_OBJS = $(call objs,host,$(MEMPROFD_SRC))
MEMPROF_OBJS  = $(call objs,host,$(MEMPROF_SRC))
TEST_WIRE_OBJS = $(call objs,host,tests/unit/test_wire.c $(WIRE_SRC))
TEST_PROCFS_OBJS = $(call objs,host,tests/unit/test_procfs.c probe/procfs.c common/util.c)
TEST_ASET_OBJS = $(call objs,host,tests/unit/test_aset.c agent/aset.c)
$(TEST_ASET_OBJS): COMPILE.host += -DAS_MAX_REGIONS=4096u

BINS = $(BUILD)/memprofd $(BUILD)/memprof $(BUILD)/libmemprof_agent.so
.PHONY: all test unit demo bench fuzz fuzz-long install clean deps deps-test check-fresh test-asan

all: $(BINS)

# What the build and the demo need (make demo), and everything the tests use too (make test).
deps:
	@sh scripts/install-deps.sh build
deps-test:
	@sh scripts/install-deps.sh all

$(BUILD)/gen/memprof.pb-c.c $(BUILD)/gen/memprof.pb-c.h &: proto/memprof.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/memprof.proto

$(BUILD)/gen/profile.pb-c.c $(BUILD)/gen/profile.pb-c.h &: proto/profile.proto
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

# protobuf-c is linked into the agent statically (a container's root rarely has libprotobuf-c.so.1); the version
# script keeps its symbols local, which also lets its non-PIC archive link.
PB_STATIC = $(call once,PB_LIBDIR,pkg-config --variable=libdir libprotobuf-c 2>/dev/null)/libprotobuf-c.a
$(BUILD)/libmemprof_agent.so: $(AGENT_OBJS) agent/agent.map
	$(CC) $(CFLAGS) $(SANITIZE) $(LDFLAGS) -fPIC -shared -Wl,-soname,libmemprof_agent.so \
	    -Wl,--version-script=agent/agent.map -Wl,-z,defs -o $@ $(AGENT_OBJS) $(PB_STATIC) -lpthread -ldl -lm

$(BUILD)/memprofd: $(MEMPROFD_OBJS)
	$(CC) $(CFLAGS) $(SANITIZE) $(LDFLAGS) -o $@ $(MEMPROFD_OBJS) $(PKG_LIBS) $(Z_LIBS) $(DEMANGLE_LIBS) -ldl -lm

# memprof rss: BPF programs (bpf/*.bpf.c) compiled against the kernel's BTF (vmlinux.h, generated) and loaded by
# memprof through a bpftool skeleton; bpf/build.sh writes rss_config.h saying whether that could be built (and the
# stamp only if it could: without, every make looks again, after make deps say).
RSS_LIBS = $(call once,RSS_LIBS,pkg-config --libs libbpf libdw libelf 2>/dev/null)
$(BUILD)/rss.stamp: bpf/rss.bpf.c bpf/rss.h bpf/build.sh
	sh bpf/build.sh $(BUILD)
$(BUILD)/gen/rss_config.h $(BUILD)/gen/rss.skel.h: $(BUILD)/rss.stamp ;

$(BUILD)/memprof: $(MEMPROF_OBJS) $(BUILD)/flame_page.o
	$(CC) $(CFLAGS) $(SANITIZE) $(LDFLAGS) -o $@ $(MEMPROF_OBJS) $(BUILD)/flame_page.o $(PB_LIBS) $(Z_LIBS) \
	    $(RSS_LIBS) $(DEMANGLE_LIBS) -lm

$(BUILD)/test_wire: $(TEST_WIRE_OBJS)
	$(CC) $(CFLAGS) $(SANITIZE) $(LDFLAGS) -o $@ $(TEST_WIRE_OBJS) $(PB_LIBS)
$(BUILD)/test_procfs: $(TEST_PROCFS_OBJS)
	$(CC) $(CFLAGS) $(SANITIZE) $(LDFLAGS) -o $@ $(TEST_PROCFS_OBJS)
$(BUILD)/test_aset: $(TEST_ASET_OBJS)
	$(CC) $(CFLAGS) $(SANITIZE) $(LDFLAGS) -o $@ $(TEST_ASET_OBJS)

# libFuzzer targets (clang only), one per decoder: fuzz_decode, every frame and message a daemon, agent or
# client reads off a socket (wire.c); fuzz_snapshot, the snapshot files `memprof diff` reads (cli/cmd_diff.c);
# fuzz_agent_arg, the agent's start argument and MEMPROF_RUN (agent/state.c, agent/conf.c); fuzz_alloc_report, what the
# daemon makes of agents' allocation reports and the views it serves from them (daemon/alloc.c). Each starts
# from its seeds and regression inputs in tests/fuzz/corpus/TARGET.
FUZZ_TARGETS = decode snapshot agent_arg alloc_report
FUZZ_decode_OBJS = $(call objs,fuzz,tests/fuzz/fuzz_decode.c $(WIRE_SRC))
FUZZ_decode_LIBS = $(PB_LIBS)
# (memprof rss as its stub, as in tests/objects: its BPF loader stays out; the harness includes cmd_diff.c)
FUZZ_snapshot_OBJS = $(call objs,fuzz,tests/fuzz/fuzz_snapshot.c cli/main.c \
    $(filter-out cli/cmd_diff.c cli/rss_%.c,$(CLI_SRC)) $(CLIENT_SRC) probe/procfs.c $(OPTS_SRC) $(WIRE_SRC) $(PPROF_SRC))
FUZZ_snapshot_LIBS = $(PB_LIBS) $(Z_LIBS) -lm
# (the agent without launch.c: its constructor and _exit wrapper stay out)
FUZZ_agent_arg_OBJS = $(call objs,fuzz,tests/fuzz/fuzz_agent_arg.c \
    $(filter-out agent/launch.c,$(AGENT_SRC)) $(PYABI_SRC) $(WIRE_SRC))
FUZZ_agent_arg_LIBS = $(PB_LIBS) -lpthread -ldl -lm
# (the daemon's allocation views with the real transport under them; only what reads the target is stubbed)
FUZZ_ALLOC_SRC = daemon/alloc.c daemon/session.c daemon/conn.c daemon/loop.c daemon/logging.c
FUZZ_alloc_report_OBJS = $(call objs,fuzz,tests/fuzz/fuzz_alloc_report.c $(FUZZ_ALLOC_SRC) $(WIRE_SRC))
FUZZ_alloc_report_LIBS = $(PB_LIBS) -lm
.SECONDEXPANSION:
$(addprefix $(BUILD)/fuzz_,$(FUZZ_TARGETS)): $(BUILD)/fuzz_%: $$(FUZZ_$$*_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(FUZZ_$*_OBJS) $(FUZZ_$*_LIBS)

ALL_OBJS = $(AGENT_OBJS) $(MEMPROFD_OBJS) $(MEMPROF_OBJS) $(TEST_WIRE_OBJS) $(TEST_PROCFS_OBJS) $(TEST_ASET_OBJS) \
           $(foreach t,$(FUZZ_TARGETS),$(FUZZ_$(t)_OBJS))
-include $(sort $(ALL_OBJS:.o=.d))

unit: $(BUILD)/test_wire $(BUILD)/test_procfs $(BUILD)/test_aset
	$(BUILD)/test_wire
	$(BUILD)/test_procfs
	$(BUILD)/test_aset

# The whole suite (tests/: also the C unit tests and every saved fuzz input replayed through its libFuzzer target).
# The Debian sid root it needs is built into MEMPROF_CACHE (default /var/cache/memprof) on the first run;
# MEMPROF_OFFLINE=1 downloads nothing (those tests skip, saying so). MEMPROF_REQUIRE=all[,!PATTERN...] (CI,
# check-fresh): a skip for anything missing fails instead (tests/conftest.py).
test: deps-test all $(BUILD)/test_wire $(BUILD)/test_procfs $(BUILD)/test_aset $(addprefix $(BUILD)/fuzz_,$(FUZZ_TARGETS))
	$(PYTHON) -m pytest -p no:cacheprovider -rsfE --durations=15 tests

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

# The OCI image localhost/memprof:VERSION (and :latest), offline: a Debian 12 minbase root with the .deb, imported
# with podman import (scripts/mkimage.sh; root). PODMAN='podman --root DIR' imports elsewhere. Containerfile builds
# the same from debian:bookworm-slim where a registry is at hand.
PODMAN ?= podman
image: deb
	PODMAN='$(PODMAN)' sh scripts/mkimage.sh $(BUILD)/memprof_$(MEMPROF_VERSION)_$$(dpkg-architecture -qDEB_HOST_ARCH).deb

version:
	@echo $(MEMPROF_VERSION)

clean:
	rm -rf $(BUILD)

# ---------------------------------------------------------------- version
.PHONY: uninstall deb image version FORCE
# One place: the VERSION file, plus the commit (and .dirty) inside a git checkout.
# Every object gets it as -DMEMPROF_VERSION, and the agent's installed path as
# -DMEMPROF_AGENT_PATH; the stamp rebuilds the objects of the files that use
# either (VERSION_SRC) when it changes.
VERSION_BASE := $(shell cat VERSION)
GIT_DESC     := $(if $(wildcard .git),$(shell git describe --always --dirty --exclude='*' 2>/dev/null))
MEMPROF_VERSION ?= $(VERSION_BASE)$(if $(GIT_DESC),+g$(subst -,.,$(GIT_DESC)))
AGENT_PATH = $(PREFIX)/lib/memprof/libmemprof_agent.so
$(BUILD)/version.stamp: FORCE
	@mkdir -p $(BUILD)
	@echo '$(MEMPROF_VERSION) $(AGENT_PATH)' | cmp -s - $@ || echo '$(MEMPROF_VERSION) $(AGENT_PATH)' > $@
