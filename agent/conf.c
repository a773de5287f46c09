/* conf.c -- the agent's configuration: the start argument (memprof_agent_start, MEMPROF_RUN), the
 * daemon's TrackingConfig with its limits, and flags from the environment the process started with. */
#include "agent/conf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/defaults.h"

/* Whether NAME is set to something other than "" or "0" in the environment the
 * process started with. /proc/self/environ, not getenv: getenv races with the
 * target's own setenv/putenv (os.environ) and may read a freed array. */
int conf_environ_flag(const char *name)
{
    size_t klen = strlen(name), pos = 0;
    int match = 1, found = 0;
    char buf[4096];
    ssize_t n;
    int fd = open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    while (!found && (n = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n && !found; i++, pos++) {
            char c = buf[i];
            if (c == 0) {
                pos = (size_t)-1; /* ++ makes it 0 */
                match = 1;
            } else if (!match) {
                continue;
            } else if (pos < klen) {
                match = c == name[pos];
            } else if (pos == klen) {
                match = c == '=';
            } else {
                found = c != '0';
                match = 0;
            }
        }
    }
    close(fd);
    return found;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Values cannot hold whitespace; %XX escapes stand for any byte (a path with
 * a space: %20). Decoded in place. */
static int unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '%') {
            int hi = hexval(s[1]), lo = hi < 0 ? -1 : hexval(s[2]);
            if (lo < 0 || (hi == 0 && lo == 0)) return -1;
            *o++ = (char)(hi << 4 | lo);
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
    return 0;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;
    if (*s < '0' || *s > '9') return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || v > max) return -1;
    *out = v;
    return 0;
}

static int copy_value(char *dst, size_t dstlen, const char *val)
{
    size_t n = strlen(val);
    if (n >= dstlen) return -1;
    memcpy(dst, val, n + 1);
    return 0;
}

/* The argument's keys: sock, token, fd (memprofd's socket pair in this process), pylib (the file
 * holding the C API), handle and busy_us (remote-exec), follow (memprof run --follow-fork), debug.
 * Tracking settings are not among them: they come over the wire (conf_tracking). */
static int conf_set(struct agent_conf *c, const char *key, const char *val)
{
    uint64_t v;
    if (!strcmp(key, "sock")) {
        /* "@" alone would be the unnamed abstract address */
        if (!strcmp(val, "@") || !*val) return -1;
        return copy_value(c->sock, sizeof c->sock, val);
    }
    if (!strcmp(key, "token")) return copy_value(c->token, sizeof c->token, val);
    if (!strcmp(key, "pylib")) return copy_value(c->pylib, sizeof c->pylib, val);
    if (!strcmp(key, "handle")) {
        if (parse_u64(val, UINT64_MAX, &c->handle) < 0) return -1;
    } else if (!strcmp(key, "busy_us")) {
        if (parse_u64(val, UINT64_MAX, &c->busy_us) < 0) return -1;
    } else if (!strcmp(key, "fd")) {
        if (parse_u64(val, INT_MAX, &v) < 0) return -1;
        c->fd = (int)v;
    } else if (!strcmp(key, "debug") || !strcmp(key, "follow")) {
        if (parse_u64(val, 1, &v) < 0) return -1;
        *(key[0] == 'd' ? &c->debug : &c->follow) = (int)v;
    }
    /* other keys: from another version of the daemon, ignored */
    return 0;
}

/* "key=value key=value ..." into c; buf is modified. */
int conf_parse(struct agent_conf *c, char *buf)
{
    char *save = NULL, *tok;
    memset(c, 0, sizeof *c);
    c->rate = MP_DEFAULT_SAMPLE_RATE;
    c->frames = MP_DEFAULT_MAX_FRAMES;
    c->interval_ms = MP_DEFAULT_INTERVAL_MS;
    c->track = 0; /* no hook before the daemon's TrackingConfig */
    c->fd = -1;
    for (tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq || eq == tok) return -1;
        *eq = 0;
        if (unescape(eq + 1) < 0 || conf_set(c, tok, eq + 1) < 0) return -1;
    }
    return c->sock[0] ? 0 : -1;
}

/* The daemon's TrackingConfig into conf: 0 is the default, the limits applied (common/defaults.h). */
void conf_tracking(struct agent_conf *c, const Memprof__TrackingConfig *t)
{
    c->track = t->enabled;
    c->exact = t->exact;
    c->native = t->native && !t->exact;
    c->native_frames = c->native && t->native_frames;
    c->rate = t->sample_rate ? t->sample_rate : MP_DEFAULT_SAMPLE_RATE;
    c->frames = !t->max_frames ? MP_DEFAULT_MAX_FRAMES : t->max_frames > MP_MAX_FRAMES ? MP_MAX_FRAMES : t->max_frames;
}

uint32_t conf_interval(uint32_t ms)
{
    return !ms ? MP_DEFAULT_INTERVAL_MS : ms < MP_MIN_INTERVAL_MS ? MP_MIN_INTERVAL_MS
                                        : ms > MP_MAX_INTERVAL_MS ? MP_MAX_INTERVAL_MS : ms;
}
