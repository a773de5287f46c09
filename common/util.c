/* util.c -- error buffers, clocks, default paths and /proc reading shared by all programs. */
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
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
    else if (xdg && *xdg == '/') /* the XDG spec: a relative value is ignored */
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

/* mkdir -p: missing parents 0755, the last component with mode. */
static int mp_mkdirs(const char *dir, mode_t mode)
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

const char *mp_user_name(uid_t uid, char *out, size_t outlen)
{
    struct passwd pw, *res = NULL;
    char buf[1024];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res)
        snprintf(out, outlen, "%s (uid %u)", res->pw_name, (unsigned)uid);
    else
        snprintf(out, outlen, "uid %u", (unsigned)uid);
    return out;
}

/* Why dir, as fstat'ed, cannot be trusted with the daemon's socket and log, or NULL: docs/security.md. */
static const char *dir_fault(const struct stat *st, int daemon, char *fix, size_t fixlen, const char *dir)
{
    uid_t me = geteuid();
    const char *elsewhere = "use a directory of your own: --socket, MEMPROF_SOCKET or XDG_RUNTIME_DIR";
    if (!S_ISDIR(st->st_mode)) {
        snprintf(fix, fixlen, "%s", elsewhere);
        return S_ISLNK(st->st_mode) ? "it is a symlink, not a directory" : "it is not a directory";
    }
    if (st->st_uid != me && (daemon || st->st_uid != 0)) {
        snprintf(fix, fixlen, "its owner or root must remove it, or %s", elsewhere);
        return "it is not yours, and whoever owns it could stand in for memprofd";
    }
    if (st->st_mode & (daemon ? 077 : 022)) {
        snprintf(fix, fixlen, "chmod 700 %s", dir);
        return daemon ? "it must be 700 (private)" : "others can write in it, so they could stand in for memprofd";
    }
    return NULL;
}

int mp_open_socket_dir(const char *dir, int create, int daemon, char *err)
{
    struct stat st;
    char who[160], fix[PATH_MAX + 128];
    const char *why;
    int fd;
    if (create && mp_mkdirs(dir, 0700) < 0) {
        mp_errno(err, "cannot create socket directory %s", dir);
        return -1;
    }
    /* O_PATH|O_NOFOLLOW: the directory itself (a symlink is opened as one and refused below), then fstat and every
     * later openat on this fd see the same inode, whatever is renamed meanwhile */
    fd = open(dir, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        mp_errno(err, "cannot open socket directory %s", dir);
        return -1;
    }
    if (fstat(fd, &st) < 0) {
        mp_errno(err, "socket directory %s", dir);
        close(fd);
        return -1;
    }
    if ((why = dir_fault(&st, daemon, fix, sizeof fix, dir))) {
        mp_err(err, "socket directory %s has mode %03o and owner %s: %s; refusing it (%s)", dir,
               (unsigned)(st.st_mode & 0777), mp_user_name(st.st_uid, who, sizeof who), why, fix);
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
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
