/* fuzz_agent_arg.c -- libFuzzer target: the agent's start argument (memprof_agent_start, MEMPROF_RUN)
 * through its parser, and a TrackingConfig as the daemon sends it through the agent's limits. The input
 * is the argument, then after a NUL byte the TrackingConfig's protobuf bytes. The parser is agent/conf.c;
 * configure and conf are static in agent/agent.c: the file is compiled into this one (no agent thread
 * is started). */
#include "../../agent/agent.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t alen = nul ? (size_t)(nul - data) : size;
    char *arg = malloc(alen + 1);
    Memprof__TrackingConfig *t;
    if (!arg) return 0;
    memcpy(arg, data, alen);
    arg[alen] = 0;
    if (configure(arg) == 0) {
        /* a parsed argument names a socket, and every string in it is terminated in its buffer */
        if (!conf.sock[0] || strcmp(conf.sock, "@") == 0) abort();
        if (strnlen(conf.sock, sizeof conf.sock) == sizeof conf.sock ||
            strnlen(conf.token, sizeof conf.token) == sizeof conf.token ||
            strnlen(conf.pylib, sizeof conf.pylib) == sizeof conf.pylib)
            abort();
        if (conf.track) abort(); /* no tracking setting comes from the argument */
    }
    free(arg);
    if (nul && (t = memprof__tracking_config__unpack(NULL, size - alen - 1, nul + 1))) {
        uint32_t ms = conf_interval(t->interval_ms);
        conf_tracking(&conf, t);
        if (conf.frames < 1 || conf.frames > MP_MAX_FRAMES || !conf.rate || (conf.native && conf.exact) ||
            ms < MP_MIN_INTERVAL_MS || ms > MP_MAX_INTERVAL_MS)
            abort();
        memprof__tracking_config__free_unpacked(t, NULL);
    }
    return 0;
}
