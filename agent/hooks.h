/* hooks.h -- allocation tracking in the target: the PyMem allocator wrappers (sampling or exact), the
 * front-end that feeds the recorder (track.h) with Python's allocations. */
#ifndef MEMPROF_HOOKS_H
#define MEMPROF_HOOKS_H

#include <stdint.h>

struct hooks_conf {
    uint64_t rate;   /* mean bytes between samples */
    uint32_t frames; /* max frames per sample */
    int exact;
};

/* Wrap the RAW, MEM and OBJ allocators. With the GIL held. */
int hooks_install(const struct hooks_conf *c, char *err);
/* Put the saved allocators back (GIL held) when nobody wrapped ours since;
 * else make ours pass straight through and keep the library loaded. Idempotent. */
void hooks_uninstall(void);
/* After hooks_uninstall, without the GIL: wait until no thread runs wrapper
 * code, then free the recorder's tables (or keep the library loaded if that never happens). */
void hooks_release(void);
/* When the GIL cannot be taken (finalizing): pass through, keep the library. */
void hooks_abandon(void);
/* In a forked child: wrappers pass straight through from now on. */
void hooks_atfork_child(void);
/* A forked child that is a session of its own (memprof run --follow-fork):
 * keep tracking, with empty deltas and block tables. */
void hooks_atfork_follow(void);
/* At the process's exit: stop counting (the final figures are what was live
 * when shutdown began, not what finalization frees); the wrappers pass
 * through, the tables stay for the last report. Any thread. */
void hooks_freeze(void);
int hooks_frozen(void);
int hooks_installed(void);

#endif
