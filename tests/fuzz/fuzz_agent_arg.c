/* fuzz_agent_arg.c -- libFuzzer target: the agent's start argument (memprof_agent_start, MEMPROF_RUN)
 * through its parser, and a TrackingConfig as the daemon sends it through the agent's limits. The input
 * is the argument, then after a NUL byte the TrackingConfig's protobuf bytes. The parser is agent/conf.c,
 * called as the agent calls it (agent_configure, agent/state.c; no agent thread is started). */
#include <stdlib.h>
#include <string.h>

#include "agent/conf.h"
#include "agent/state.h"
#include "common/defaults.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t alen = nul ? (size_t)(nul - data) : size;
    char *arg = malloc(alen + 1);
    Memprof__TrackingConfig *t;
    if (!arg) return 0;
    memcpy(arg, data, alen);
    arg[alen] = 0;
    if (agent_configure(arg) == 0) {
        /* a parsed argument names a socket, and every string in it is terminated in its buffer */
        if (!agent_conf.sock[0] || strcmp(agent_conf.sock, "@") == 0) abort();
        if (strnlen(agent_conf.sock, sizeof agent_conf.sock) == sizeof agent_conf.sock ||
            strnlen(agent_conf.token, sizeof agent_conf.token) == sizeof agent_conf.token ||
            strnlen(agent_conf.pylib, sizeof agent_conf.pylib) == sizeof agent_conf.pylib)
            abort();
        if (agent_conf.track) abort(); /* no tracking setting comes from the argument */
    }
    free(arg);
    if (nul && (t = memprof__tracking_config__unpack(NULL, size - alen - 1, nul + 1))) {
        uint32_t ms = conf_interval(t->interval_ms);
        conf_tracking(&agent_conf, t);
        if (agent_conf.frames < 1 || agent_conf.frames > MP_MAX_FRAMES || !agent_conf.rate ||
            (agent_conf.native && agent_conf.exact) || ms < MP_MIN_INTERVAL_MS || ms > MP_MAX_INTERVAL_MS)
            abort();
        memprof__tracking_config__free_unpacked(t, NULL);
    }
    return 0;
}
