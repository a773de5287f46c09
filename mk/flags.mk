# flags.mk -- the C flags every Makefile of memprof shares (Makefile, tests/objects, tests/inject): set here only.
# CFLAGS is the user's (optimisation, debug info: `make CFLAGS=-O0`); each Makefile adds BASE_CFLAGS and INCLUDES.
CFLAGS ?= -O2 -g
# Warnings are errors in development and CI builds; WERROR= (empty) keeps them warnings, for a compiler newer than
# the ones memprof is built with here.
WERROR ?= -Werror
WARNINGS = -Wall -Wextra $(WERROR)
# (gcc's only: clang, which builds the fuzz targets, has no such option)
GCC_WARNINGS = -Wno-format-truncation
# The language and the feature macros.
STD_CFLAGS = -std=gnu11 -D_GNU_SOURCE -fno-strict-aliasing
BASE_CFLAGS = $(STD_CFLAGS) $(WARNINGS) $(GCC_WARNINGS)
# Sources include a project header by its path from the checkout's root ("agent/track.h"), a generated one by its
# path from the build tree ("gen/memprof.pb-c.h"): one -iquote for each (quoted includes only: <bpf/libbpf.h> never
# finds the project's bpf/ folder). ROOT: the root, from the including Makefile.
ROOT ?= .
INCLUDES = -iquote $(ROOT) -iquote $(BUILD)
# A dependency file beside each object (OBJ.d): a header's change recompiles exactly the objects that include it;
# -MP keeps a deleted header from breaking the build.
DEPFLAGS = -MMD -MP
# $(call once,VAR,COMMAND): COMMAND's output, run when VAR is first used (not when make parses the Makefile, so
# `make deps` can install a library first) and only then.
once = $(eval $(1) := $$(shell $(2)))$($(1))
