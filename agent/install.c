/* install.c -- what the agent puts into the target with the daemon's settings (allocation hooks, native
 * tracking, the atexit callback), and takes out again on every way out. */
#include "agent/install.h"

#include <dlfcn.h>
#include <stdio.h>

#include "agent/agent.h"
#include "agent/gil.h"
#include "agent/hooks.h"
#include "agent/log.h"
#include "agent/native.h"
#include "agent/pycall.h"
#include "agent/state.h"

static char native_off[MP_ERRLEN + 32]; /* why native tracking (or its frames) is off, for the reply to the daemon's TrackingConfig (and a later hello) */

void native_start(void)
{
    char err[MP_ERRLEN];
    if (!agent_conf.native) return;
    if (agent_conf.native_frames && native_frames_enable(err) < 0) {
        agent_log("%s", err);
        snprintf(native_off, sizeof native_off, "%s", err);
    }
    if (native_install(err) < 0) {
        agent_log("native tracking off: %s", err);
        snprintf(native_off, sizeof native_off, "native tracking off: %s", err);
    }
}

const char *agent_native_note(void)
{
    return native_off[0] ? native_off : native_note();
}

void agent_track(void)
{
    struct hooks_conf hc = {.rate = agent_conf.rate, .frames = agent_conf.frames, .exact = agent_conf.exact};
    char err[MP_ERRLEN];
    int state;
    if (!agent_conf.track || gil_take(&state) < 0) return;
    if (hooks_install(&hc, err) < 0) {
        agent_log("allocation tracking off: %s", err);
    } else {
        agent_log("allocation hooks installed (%s, rate %llu)", agent_conf.exact ? "exact" : "sampling",
                  (unsigned long long)agent_conf.rate);
        if (pycall_atexit_register(agent_final_report) < 0) agent_log("no atexit callback: the last figures may be partial");
        native_start();
    }
    gil_give(state);
}

/* Keep this library mapped for good (something in the target still points into it). */
static void pin_self(void)
{
    Dl_info self;
    if (dladdr((void *)pin_self, &self) && self.dli_fname)
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

void agent_undo(void)
{
    int state;
    /* first: the native hooks write into the tables hooks_release frees */
    if (native_uninstall() < 0) pin_self();
    if (hooks_installed() || pycall_atexit_registered()) {
        if (gil_take(&state) == 0) {
            hooks_uninstall();
            /* the callback lives in this library: if it stays registered, so must the library */
            if (pycall_atexit_unregister() < 0) pin_self();
            gil_give(state);
        } else {
            hooks_abandon(); /* finalizing: the process is going away anyway */
            pin_self();
        }
    }
    hooks_release();
}
