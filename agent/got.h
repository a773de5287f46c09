/* got.h -- the GOT patcher: points the GOT/PLT entries of loaded libraries for named functions at
 * hooks, keeps every (address, original), and puts them back. native.c gives it its table of hooks. */
#ifndef MEMPROF_GOT_H
#define MEMPROF_GOT_H

#include <link.h>
#include <stddef.h>
#include <stdint.h>

struct got_hook {
    const char *name;
    void *hook;
    void *real;  /* the address this agent's code takes (a non-PIE executable's PLT stub, maybe) */
    int loader;  /* dlopen: patched in the interpreter's objects too (extension modules load through it) */
    void *def;   /* dlsym(RTLD_DEFAULT): the definition (an LD_PRELOAD'd allocator's, maybe); got_init */
    void *libc;  /* libc's own; got_init */
};

/* What is patched in a loaded object: nothing (libc, ld.so, the vdso; GOT_SELF: this agent), only the
 * loader hooks (GOT_LOADER: the Python executable, libpython), or every hook. */
enum { GOT_SKIP, GOT_SELF, GOT_LOADER, GOT_ALL };
int got_classify(const struct dl_phdr_info *info);

/* Take the table (kept, not copied) and forget a previous session's notes. 0, or -1 with err. */
int got_init(struct got_hook *hooks, size_t n, char *err);
/* Patch every loaded object (late: a scan after the first, whose failures are late notes). */
void got_scan(int late);
/* got_scan(1) when objects were loaded since the last scan. */
void got_rescan(void);
/* Stop patching, then put back every entry still ours in a loaded object; the entries that could
 * not be written (0: all were). Under the loader's lock: a scan waiting for it patches nothing. */
unsigned got_restore(void);
/* Entries patched since the library was loaded (for the log). */
unsigned got_patched(void);

/* One line for the user when entries could not be patched at the first scan ("" when all is well). */
const char *got_note(void);
/* A library loaded after the first scan that could not be patched: one line naming it and why (the
 * last such library), copied into buf; 0 when there was none. Any thread but a hook's (takes the
 * loader's lock). */
int got_late_note(char *buf, size_t len);

#endif
