/* agent.h -- what the agent's parts share: the entry point the injector calls, the
 * Python C API resolved at run time, and the request handlers the agent thread runs. */
#ifndef MEMPROF_AGENT_H
#define MEMPROF_AGENT_H

#include <stdint.h>
#include "common/pyabi.h"
#include "common/util.h"
#include "gen/memprof.pb-c.h"

#define AGENT_API __attribute__((visibility("default")))

/* Called by the injector on a hijacked thread of the target; copies arg and
 * starts the agent's own thread, then returns at once. Never runs Python code.
 * arg: space-separated key=value: sock=@ABSTRACT|/path token=HEX pylib=PATH [fd=N]
 *      (what it takes to connect; the tracking settings come over the wire after the hello)
 * Returns 0 started, 1 already running, <0 error. */
AGENT_API int memprof_agent_start(const char *arg);

/* The Python C API, resolved with dlsym from the interpreter's own image
 * (libpython or the executable). NULL when not exported. (pysym.c) */
void *pyapi_sym(const char *name);
/* Where pyapi_sym looks first: the libpython at pylib when it is loaded (never loads it), else nothing more than
 * the global scope; close forgets it. pyapi_sym_lib: that handle, or NULL. */
void pyapi_sym_open(const char *pylib);
void pyapi_sym_close(void);
void *pyapi_sym_lib(void);
/* One row of a table of C-API symbols a part of the agent needs: where its address goes, its name (or the
 * names it has had between versions, "Py_IsFinalizing/_Py_IsFinalizing": the first exported wins), and
 * whether that part can do without it (the slot is then left NULL). */
struct pyapi_symbol {
    void **slot;
    const char *names;
    int optional;
};
#define PYAPI_OPTIONAL 1
/* Resolves every row of a table with pyapi_sym (pysym.c). NULL when every required symbol was found, else
 * the first required row that was not (its names say which). */
const struct pyapi_symbol *pyapi_resolve(const struct pyapi_symbol *table, size_t n);
/* The address of the first of names ("A/B/C") that is exported; NULL when none is. */
void *pyapi_sym_any(const char *names);
/* PY_VERSION_HEX of the running interpreter, e.g. 0x030b07f0. */
uint32_t pyapi_hexversion(void);
/* Its pyabi entry, checked against the interpreter; NULL when there is none,
 * and then pyapi_abi_error() says why in one line. */
const struct pyabi *pyapi_abi(void);
const char *pyapi_abi_error(void);


/* Freeze the hooks and have the agent thread send everything it has now; waits up to wait_s for the
 * write. Any thread, GIL not needed. The process's end calls it (pycall's atexit callback, launch.c's
 * _exit). */
void agent_final_report(double wait_s);

/* Request handlers run on the agent thread with the GIL held (the core takes
 * it (gil.h), measures how long, and fills AgentReply.gil_ms). They fill reply->body,
 * or return -1 with err set. What they allocate into the reply is released by
 * the matching *_free after the reply is sent. */
int census_handle(const Memprof__CensusRequest *req, Memprof__AgentReply *reply, char *err);
void census_free(Memprof__AgentReply *reply);
int backrefs_handle(const Memprof__BackrefsRequest *req, Memprof__AgentReply *reply, char *err);
void backrefs_free(Memprof__AgentReply *reply);

#endif
