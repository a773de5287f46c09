/* install.h -- what the agent puts into the target with the daemon's settings, and takes out again (install.c). */
#ifndef MEMPROF_INSTALL_H
#define MEMPROF_INSTALL_H

/* Install the allocation hooks, with the GIL, when agent_conf asks for them (injected: the daemon's first
 * TrackingConfig), then the atexit callback and native tracking. */
void agent_track(void);
/* Native tracking when agent_conf asks for it (after hooks_install); what went wrong is logged and kept
 * for agent_native_note. */
void native_start(void);
/* Why native tracking (or its frames) is off, for the TrackingConfig reply and the hello; "" when on. */
const char *agent_native_note(void);
/* Remove everything the agent installed in the target (allocator hooks, native hooks, the atexit
 * callback) so that the library can be unloaded, or pin the library when something must stay. On the
 * agent thread without the GIL, on every way out: detach, lost daemon, finalization, errors. Idempotent. */
void agent_undo(void);

#endif
