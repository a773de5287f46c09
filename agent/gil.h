/* gil.h -- the agent thread's way to the GIL: taken only while the interpreter is not finalizing (on
 * 3.10 through a gate that holds finalization until the agent has left PyGILState_Ensure), and given
 * back for a moment by request handlers that work in slices. */
#ifndef MEMPROF_GIL_H
#define MEMPROF_GIL_H

/* Take the GIL for this thread, unless the interpreter is finalizing: 0 with *state for gil_give, or -1. */
int gil_take(int *state);
void gil_give(int state);
/* On the agent thread's way out (CPython may end it inside PyGILState_Ensure). */
void gil_exit(void);
/* A new agent thread: the gate open, the way decided again at the first take. */
void gil_thread_start(void);
/* In a forked child: no agent thread here to wait for. */
void gil_atfork_child(void);

/* A request handler's GIL (agent thread only): taken by gil_handler_enter (0, or -1 when finalizing),
 * given back by gil_handler_leave (0, or -1 when a gil_yield found the interpreter finalizing: then it
 * is not held). gil_handler_released: the seconds the handler gave it back for, so far. */
int gil_handler_enter(void);
double gil_handler_released(void);
int gil_handler_leave(void);

/* For a handler that works in slices: give the GIL back to the target's threads for a moment
 * (running off(arg) meanwhile, when not NULL: work that needs no Python object) and take it again
 * (the time between is not counted in gil_ms). 0 with the GIL held again; -1 when the interpreter
 * is finalizing: then the GIL is not held, and the handler must return at once without touching
 * any Python object (what it holds is left to the exiting process). */
int gil_yield(void (*off)(void *), void *arg);

/* Memory a handler is done with, freed once it has given the GIL back (unmapping a table of millions
 * of entries takes tens of milliseconds: the target would wait for it); at once outside a handler. */
void gil_free_after(void *p);

#endif
