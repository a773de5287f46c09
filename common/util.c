/* util.c -- error buffers, clocks, default paths and /proc reading shared by all programs. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void mp_err(char *err, const char *fmt, ...)
{
    va_list ap;
    if (!err) return;
    va_start(ap, fmt);
    vsnprintf(err, MP_ERRLEN, fmt, ap);
    va_end(ap);
}

void mp_errno(char *err, const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    size_t n;
    if (!err) return;
    va_start(ap, fmt);
    vsnprintf(err, MP_ERRLEN, fmt, ap);
    va_end(ap);
    n = strlen(err);
    snprintf(err + n, MP_ERRLEN - n, ": %s", strerror(saved));
    errno = saved;
}

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

double mp_now(void) { return clock_seconds(CLOCK_MONOTONIC); }
double mp_wallclock(void) { return clock_seconds(CLOCK_REALTIME); }

int mp_default_socket(char *out, size_t outlen)
{
    const char *env = getenv("MEMPROF_SOCKET");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int n;
    if (env && *env)
        n = snprintf(out, outlen, "%s", env);
    else if (geteuid() == 0)
        n = snprintf(out, outlen, "/run/memprof/memprofd.sock");
    else if (xdg && *xdg)
        n = snprintf(out, outlen, "%s/memprof/memprofd.sock", xdg);
    else
        n = snprintf(out, outlen, "/tmp/memprof-%u/memprofd.sock", (unsigned)geteuid());
    return (n < 0 || (size_t)n >= outlen) ? -1 : 0;
}

ssize_t mp_read_file(const char *path, char *buf, size_t buflen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t off = 0;
    if (fd < 0) return -1;
    while (off + 1 < buflen) {
        ssize_t r = read(fd, buf + off, buflen - 1 - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        off += (size_t)r;
    }
    close(fd);
    buf[off] = 0;
    return (ssize_t)off;
}

int mp_proc_cmdline(pid_t pid, char *out, size_t outlen)
{
    char path[64];
    ssize_t n;
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    n = mp_read_file(path, out, outlen);
    if (n < 0) return -1;
    while (n > 0 && out[n - 1] == 0) n--;
    for (ssize_t i = 0; i < n; i++)
        if (out[i] == 0) out[i] = ' ';
    out[n] = 0;
    return 0;
}

pid_t mp_parse_pid(const char *s)
{
    char *end;
    long v;
    if (!s || !*s) return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v <= 0 || v > INT_MAX) return -1;
    return (pid_t)v;
}

int mp_mkdirs(const char *dir, mode_t mode)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return (mkdir(buf, mode) < 0 && errno != EEXIST) ? -1 : 0;
}

int mp_token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned diff = (unsigned)(la ^ lb);
    for (size_t i = 0; i < la && i < lb; i++) diff |= (unsigned char)a[i] ^ (unsigned char)b[i];
    return diff == 0 && la == 32;
}

int mp_is_library_file(const char *file)
{
    if (!strncmp(file, "<frozen ", 8)) return 1;
    if (strstr(file, "/site-packages/") || strstr(file, "/dist-packages/")) return 1;
    for (const char *p = file; (p = strstr(p, "/lib")); p++) {
        const char *q = p + 4;
        if (!strncmp(q, "64", 2)) q += 2;
        if (strncmp(q, "/python", 7)) continue;
        q += 7;
        if (*q < '0' || *q > '9') continue;
        while ((*q >= '0' && *q <= '9') || *q == '.') q++;
        if (*q == '/') return 1; /* .../lib/python3.11/json/decoder.py */
    }
    return 0;
}
