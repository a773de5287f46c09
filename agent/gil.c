/* gil.c -- the agent thread's way to the GIL (gil.h): PyGILState_Ensure when the interpreter is not
 * finalizing, through the 3.10 gate where that version needs it; a request handler's GIL and its
 * yields. */
#include "agent/gil.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "agent/agent.h"
#include "agent/log.h"
#include "agent/pyapi.h"
#include "common/pyabi.h"
#include "common/util.h"

/* CPython 3.10.8+ (the gh-96387 change to take_gil): a thread waiting for the
 * GIL that has asked the holder to drop it (it does after 5 ms) and then sees
 * the runtime finalizing resets that request through its interpreter state
 * before it exits. If the holder finalized completely before the waiter got
 * the CPU again, that state has been freed (3.10 is the last version with a
 * heap-allocated main interpreter) and the process dies (SIGSEGV in
 * RESET_GIL_DROP_REQUEST): e.g. an embedder holding the GIL while the agent
 * waits in PyGILState_Ensure, then calling Py_FinalizeEx and living on. So on
 * 3.10 the agent makes the thread state PyGILState_Ensure would make, with an
 * on_delete callback: Py_FinalizeEx clears the other threads' states right
 * after it starts finalizing (_PyThreadState_DeleteExcept, GIL held), long
 * before it frees the interpreter. The callback closes the gate and holds
 * finalization there until the agent thread, ended by take_gil, has left it.
 * Versions that need it have PYABI_TSTATE_GATE and the two PyThreadState
 * fields (gilstate_counter, on_delete) in their pyabi entry. */
#define GATE_IN_TAKE 1   /* from making the thread state to holding the GIL */
#define GATE_CLOSED 2    /* the interpreter cleared our thread state: no more takes */
#define GATE_WAIT_S 5.0  /* at most, in the callback */

static atomic_int gil_gate;
static int gil_mode; /* 0 undecided, 1 PyGILState_Ensure alone, 2 the 3.10 way */
static void *gil_tstate;
static const struct pyabi *gil_abi; /* the entry with PYABI_TSTATE_GATE, in mode 2 */
static void *(*ThreadState_New)(void *);
static void *(*InterpreterState_Main)(void);

/* on_delete of the agent's thread state, on the thread clearing it (which
 * holds the GIL): finalization, or PyOS_AfterFork_Child in a forked child. */
static void gil_tstate_cleared(void *unused)
{
    struct timespec ts = {0, 1000000};
    double deadline = mp_now() + GATE_WAIT_S;
    (void)unused;
    if (!(atomic_fetch_or(&gil_gate, GATE_CLOSED) & GATE_IN_TAKE)) return;
    while ((atomic_load(&gil_gate) & GATE_IN_TAKE) && mp_now() < deadline) nanosleep(&ts, NULL);
}

/* On the agent thread's way out (CPython may end it inside PyGILState_Ensure). */
void gil_exit(void)
{
    Dl_info self;
    int g = atomic_fetch_and(&gil_gate, ~GATE_IN_TAKE); /* lets a waiting callback go on */
    /* a thread state left for the interpreter to clear calls back into this
     * library: keep it mapped for good (the process is finalizing) */
    if ((g & GATE_IN_TAKE) && !(g & GATE_CLOSED) && dladdr((void *)gil_tstate_cleared, &self) &&
        self.dli_fname)
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Take the GIL for this thread, unless the interpreter is finalizing: then
 * PyGILState_Ensure may crash (cpython#124619, #132948) or end this thread.
 * The check races with a finalization starting right after it; in that window
 * CPython 3.8-3.13 end the thread inside Ensure (pthread_exit), which
 * the agent thread's cleanup handler turns into a normal agent exit. */
static double gil_t0; /* debug: when the agent last asked for / got the GIL */

static int gil_take_(int *state);
int gil_take(int *state)
{
    int rc;
    gil_t0 = mp_now();
    rc = gil_take_(state);
    if (rc == 0 && agent_debug) {
        double t = mp_now();
        agent_log("gil taken after %.3f ms", (t - gil_t0) * 1e3);
        gil_t0 = t;
    }
    return rc;
}

static int gil_take_(int *state)
{
    void *interp;
    int open = 0;
    if (!gil_mode) {
        const char *v = PY.GetVersion(); /* formats constants: no GIL needed */
        gil_abi = pyabi_for(pyapi_parse_version(v, NULL, 0));
        ThreadState_New = (void *(*)(void *))pyapi_sym("PyThreadState_New");
        InterpreterState_Main = (void *(*)(void))pyapi_sym("PyInterpreterState_Main");
        gil_mode = gil_abi && (gil_abi->caps & PYABI_TSTATE_GATE) && ThreadState_New && InterpreterState_Main ? 2 : 1;
    }
    if (gil_mode == 1) {
        if (pyapi_finalizing()) return -1;
        *state = PY.GILState_Ensure();
        return 0;
    }
    if (!atomic_compare_exchange_strong(&gil_gate, &open, GATE_IN_TAKE)) return -1;
    if (pyapi_finalizing() || !(interp = InterpreterState_Main()) ||
        !(gil_tstate = ThreadState_New(interp))) {
        atomic_fetch_and(&gil_gate, ~GATE_IN_TAKE);
        return -1;
    }
    /* PyThreadState_New bound it to this thread; counter 0 as in Ensure: the
     * matching PyGILState_Release deletes it */
    PYABI_AT(gil_tstate, gil_abi->ts.gilstate_counter, int volatile) = 0;
    PYABI_AT(gil_tstate, gil_abi->ts.on_delete, void * volatile) = (void *)gil_tstate_cleared;
    *state = PY.GILState_Ensure();
    PYABI_AT(gil_tstate, gil_abi->ts.on_delete, void * volatile) = NULL; /* we hold the GIL: no one clears it */
    atomic_fetch_and(&gil_gate, ~GATE_IN_TAKE);
    return 0;
}

void gil_give(int state)
{
    double held = (mp_now() - gil_t0) * 1e3;
    PY.GILState_Release(state);
    if (agent_debug) agent_log("gil held %.3f ms", held);
}

void gil_thread_start(void)
{
    atomic_store(&gil_gate, 0);
    gil_mode = 0;
}

void gil_atfork_child(void) { atomic_store(&gil_gate, 0); }

/* The GIL of the request handler running: its state, whether it is held, and how long the
 * handler gave it back for (gil_yield). Only the agent thread touches them. */
static int locked_state, locked_held;
static double locked_released;
static void *freed_after[16];
static int nfreed_after;

void gil_free_after(void *p)
{
    if (locked_held && nfreed_after < (int)(sizeof freed_after / sizeof freed_after[0])) freed_after[nfreed_after++] = p;
    else free(p);
}

int gil_yield(void (*off)(void *), void *arg)
{
    struct timespec pause = {0, 200000}; /* long enough for a waiting thread to wake and take it */
    double t = mp_now();
    if (!locked_held) return -1;
    gil_give(locked_state);
    locked_held = 0;
    if (off) off(arg);
    nanosleep(&pause, NULL);
    if (gil_take(&locked_state) < 0) return -1;
    locked_held = 1;
    locked_released += mp_now() - t;
    return 0;
}

int gil_handler_enter(void)
{
    if (gil_take(&locked_state) < 0) return -1;
    locked_held = 1;
    locked_released = 0;
    return 0;
}

double gil_handler_released(void) { return locked_released; }

int gil_handler_leave(void)
{
    int held = locked_held;
    if (held) gil_give(locked_state);
    locked_held = 0;
    while (nfreed_after) free(freed_after[--nfreed_after]);
    return held ? 0 : -1;
}
