/* demangle.h -- C++ symbol names for display (native frames of memprofd and memprof rss). */
#ifndef MEMPROF_DEMANGLE_H
#define MEMPROF_DEMANGLE_H

#include <stddef.h>

/* A symbol as shown to the user: a C++ name (one starting with _Z) demangled, without its parameter list
 * and return type (np::quicksort<npy::int_tag, int>) -- MEMPROF_DEMANGLE=full keeps them, =no shows the
 * mangled name. Anything else, or a name the demangler refuses, is returned as is (name itself); else
 * out, filled. */
const char *mp_demangle(const char *name, char *out, size_t len);

#endif
