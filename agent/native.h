/* native.h -- native allocations: hooks for malloc & co. in the GOTs of loaded libraries (got.c),
 * feeding the recorder (track.h). */
#ifndef MEMPROF_NATIVE_H
#define MEMPROF_NATIVE_H

#include <stddef.h>
#include <stdint.h>

/* Patch the GOT entries of every loaded library but libc, ld.so, the vdso,
 * this agent and the Python executable/libpython (whose allocations the PyMem
 * hooks count); after hooks_install (sampling). 0, or -1 with err. Any thread. */
int native_install(char *err);
/* With native_install: also unwind each sampled allocation's native call chain
 * (libgcc's unwinder). Before native_install; -1 with err when no unwinder. */
int native_frames_enable(char *err);
/* One line for the user when native tracking is off or partial ("" when all
 * is well): what could not be patched and why. Valid after native_install. */
const char *native_note(void);
/* A library loaded after native_install (dlopen, or found by native_rescan) that could not be patched:
 * one line naming it and why (the last such library), copied into buf; 0 when there was none. Any
 * thread but a hook's (takes the loader's lock). */
int native_late_note(char *buf, size_t len);
/* Patch libraries loaded since (the dlopen hook does it too). Agent thread. */
void native_rescan(void);
/* Put back every GOT entry still ours in a loaded library, then wait until no
 * thread runs hook code: 0, or -1 when threads stayed inside (keep the library
 * loaded). Idempotent. */
int native_uninstall(void);
int native_installed(void);
/* In a forked child: only this thread survives (no hook code runs elsewhere). */
void native_atfork_child(void);

#endif
