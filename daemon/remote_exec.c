/* remote_exec.c -- PEP 768 attach: a script in the target's /tmp, its path and the pending flag written
 * into the main thread's state through _Py_DebugOffsets, as sys.remote_exec() does. */
#include "daemon/remote_exec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/pyabi.h"
#include "common/util.h"
#include "probe/elfsym.h"

#define SCRIPT_NAME "attach.py"
#define EVAL_PLEASE_STOP_BIT 32 /* _PY_EVAL_PLEASE_STOP_BIT (1 << 5), 3.14 and 3.15 */

/* The interpreter's own offsets (the table only says where they sit in _Py_DebugOffsets). */
struct rx_offsets {
    uint64_t interp, tstate;          /* main interpreter, its main thread state */
    uint64_t eval_breaker, support, pending, path, path_size;
    int enabled;                      /* config.remote_debug */
};

static uint64_t u64_at(const unsigned char *buf, int pos)
{
    uint64_t v;
    memcpy(&v, buf + pos, sizeof v);
    return v;
}

static int read_offsets(pid_t pid, const struct pyinfo *py, struct rx_offsets *o, char *why)
{
    const struct pyabi *abi = pyabi_for((uint32_t)py->major << 24 | (uint32_t)py->minor << 16);
    const struct pyabi_dbg *d;
    unsigned char buf[4096];
    if (!abi || !(abi->caps & PYABI_REMOTE_EXEC) || !py->runtime) {
        mp_err(why, "Python %d.%d has no remote debugging (PEP 768 is 3.14+)", py->major, py->minor);
        return -1;
    }
    d = &abi->dbg;
    if ((size_t)d->size > sizeof buf || procmem_read(pid, py->runtime, buf, (size_t)d->size) < 0 ||
        memcmp(buf, "xdebugpy", 8) != 0) {
        mp_err(why, "cannot read its _Py_DebugOffsets");
        return -1;
    }
    o->eval_breaker = u64_at(buf, d->rx_eval_breaker);
    o->support = u64_at(buf, d->rx_support);
    o->pending = u64_at(buf, d->rx_pending_call);
    o->path = u64_at(buf, d->rx_script_path);
    o->path_size = u64_at(buf, d->rx_script_path_size);
    if (procmem_read(pid, py->runtime + u64_at(buf, d->rt_interpreters_head), &o->interp, 8) < 0 || !o->interp ||
        procmem_read(pid, o->interp + u64_at(buf, d->rx_enabled), &o->enabled, sizeof o->enabled) < 0 ||
        procmem_read(pid, o->interp + u64_at(buf, d->interp_threads_main), &o->tstate, 8) < 0) {
        mp_err(why, "cannot read its interpreter state");
        return -1;
    }
    return 0;
}

static int same_netns(pid_t pid)
{
    char path[64];
    struct stat a, b;
    snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
    if (stat(path, &a) < 0 || stat("/proc/self/ns/net", &b) < 0) return 0;
    return a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

static int agent_mapped(pid_t pid)
{
    char path[64];
    char line[4096];
    FILE *f;
    int found = 0;
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    if (!(f = fopen(path, "re"))) return 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, "libmemprof_agent") != NULL;
    fclose(f);
    return found;
}

int rx_usable(pid_t pid, const struct pyinfo *py, char *why)
{
    struct rx_offsets o;
    if (read_offsets(pid, py, &o, why) < 0) return -1;
    if (o.enabled != 1) {
        mp_err(why, "remote debugging is disabled in it (-X disable-remote-debug or PYTHON_DISABLE_REMOTE_DEBUG)");
        return -1;
    }
    if (!o.tstate) {
        mp_err(why, "its main thread has no thread state");
        return -1;
    }
    /* the script connects to memprofd's abstract socket by name */
    if (!same_netns(pid)) {
        mp_err(why, "it is in another network namespace (the agent could not reach memprofd's socket)");
        return -1;
    }
    if (agent_mapped(pid)) {
        mp_err(why, "an agent library is already mapped in it");
        return -1;
    }
    return 0;
}

/* s as a Python bytes literal. */
static int py_bytes(char *out, size_t outlen, const char *s)
{
    size_t n = 0;
    if (outlen < 4) return -1;
    out[n++] = 'b';
    out[n++] = '\'';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (n + 5 >= outlen) return -1;
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') out[n++] = (char)c;
        else n += (size_t)snprintf(out + n, outlen - n, "\\x%02x", c);
    }
    out[n++] = '\'';
    out[n] = 0;
    return 0;
}

/* The script runs on the main thread with the GIL, in a namespace of its own. It
 * first claims itself by unlinking its file: exactly one of the script and a
 * withdrawing daemon (rx_cancel) succeeds in that. It reports how long it held the
 * main thread (busy_us) and ctypes' dlopen handle (for the unload at detach). */
static int write_script(struct rx *rx, const char *arg, char *err)
{
    char script_path[400], lib_lit[1400], arg_lit[8192], path_lit[1400], text[12288];
    struct stat st;
    int fd, n, rc = -1, e = 0;
    uid_t old_uid;
    gid_t old_gid;
    snprintf(script_path, sizeof script_path, "/tmp/%s/" SCRIPT_NAME, rx->tc.name);
    if (py_bytes(lib_lit, sizeof lib_lit, rx->tc.path) < 0 || py_bytes(arg_lit, sizeof arg_lit, arg) < 0 ||
        py_bytes(path_lit, sizeof path_lit, script_path) < 0) {
        mp_err(err, "remote-exec: the agent's arguments are too long");
        return -1;
    }
    n = snprintf(text, sizeof text,
                 "import time as _t\n"
                 "_t0 = _t.perf_counter()\n"
                 "try:\n"
                 "    import os as _os\n"
                 "    _os.unlink(%s)\n"
                 "except OSError:\n"
                 "    pass\n"
                 "else:\n"
                 "    try:\n"
                 "        import ctypes as _c\n"
                 "        _lib = _c.CDLL(_os.fsdecode(%s))\n"
                 "        _lib.memprof_agent_start.argtypes = [_c.c_char_p]\n"
                 "        _lib.memprof_agent_start(%s + b' handle=%%d busy_us=%%d' %% "
                 "(_lib._handle, int((_t.perf_counter() - _t0) * 1e6)))\n"
                 "    except Exception:\n"
                 "        pass\n",
                 path_lit, lib_lit, arg_lit);
    if (n < 0 || (size_t)n >= sizeof text) {
        mp_err(err, "remote-exec: script too long");
        return -1;
    }
    /* made as the owner of the directory deliver_tmp_copy made (the target's uid) */
    if (fstatat(rx->tc.dirfd, "", &st, AT_EMPTY_PATH) < 0) {
        mp_errno(err, "remote-exec: its /tmp directory");
        return -1;
    }
    old_gid = (gid_t)setfsgid(st.st_gid);
    old_uid = (uid_t)setfsuid(st.st_uid);
    fd = openat(rx->tc.dirfd, SCRIPT_NAME, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
    if (fd < 0) e = errno;
    else if (write(fd, text, (size_t)n) != n) e = errno ? errno : EIO;
    else rc = 0;
    if (fd >= 0) close(fd);
    setfsuid(old_uid);
    setfsgid(old_gid);
    if (rc < 0) mp_err(err, "remote-exec: writing the script into its /tmp: %s", strerror(e));
    return rc;
}

int rx_start(pid_t pid, const struct pyinfo *py, const char *lib, const char *arg, struct rx *rx, char *err)
{
    struct rx_offsets o;
    struct libbytes lb;
    char why[MP_ERRLEN], path[400];
    uint64_t breaker;
    int one = 1;
    memset(rx, 0, sizeof *rx);
    if (read_offsets(pid, py, &o, why) < 0) {
        mp_err(err, "pid %d: %s", (int)pid, why);
        return -1;
    }
    if (deliver_read_lib(lib, &lb, err) < 0) return -1;
    if (deliver_tmp_copy(pid, &lb, &rx->tc, err) < 0) {
        deliver_free_lib(&lb);
        return -1;
    }
    deliver_free_lib(&lb);
    rx->active = 1;
    snprintf(path, sizeof path, "/tmp/%s/" SCRIPT_NAME, rx->tc.name);
    if (strlen(path) + 1 > o.path_size) {
        mp_err(err, "pid %d: remote-exec: script path too long", (int)pid);
        goto fail;
    }
    if (write_script(rx, arg, err) < 0) goto fail;
    /* as Python/remote_debugging.c: path, pending flag, then the eval breaker bit */
    rx->pending_addr = o.tstate + o.support + o.pending;
    if (procmem_write(pid, o.tstate + o.support + o.path, path, strlen(path) + 1) < 0 ||
        procmem_write(pid, rx->pending_addr, &one, sizeof one) < 0 ||
        procmem_read(pid, o.tstate + o.eval_breaker, &breaker, sizeof breaker) < 0) {
        mp_errno(err, "pid %d: remote-exec: writing the request into its thread state", (int)pid);
        goto fail;
    }
    /* read-modify-write from outside, as CPython's own sys.remote_exec does: a bit
     * the interpreter sets in the microseconds between our read and write is lost
     * (a GIL drop request is repeated every switch interval; a pending signal
     * would wait for the next eval-breaker check) */
    breaker |= EVAL_PLEASE_STOP_BIT;
    if (procmem_write(pid, o.tstate + o.eval_breaker, &breaker, sizeof breaker) < 0) {
        mp_errno(err, "pid %d: remote-exec: setting its eval breaker", (int)pid);
        rx_cancel(pid, rx);
        goto fail;
    }
    rx->deadline = mp_now() + RX_SAFE_POINT_S;
    return 0;
fail:
    if (rx->pending_addr) rx_cancel(pid, rx);
    rx_done(rx);
    return -1;
}

int rx_poll(pid_t pid, struct rx *rx)
{
    int pending = 1;
    if (!rx->active) return 0;
    if (!rx->taken && procmem_read(pid, rx->pending_addr, &pending, sizeof pending) == 0 && pending == 0)
        rx->taken = 1;
    return rx->taken;
}

int rx_cancel(pid_t pid, struct rx *rx)
{
    int zero = 0;
    if (!rx->active || rx->taken) return 0;
    procmem_write(pid, rx->pending_addr, &zero, sizeof zero);
    /* the interpreter may have taken it just before: then whoever unlinks the
     * script first decides (when we cannot, it may still run: wait for it) */
    if (unlinkat(rx->tc.dirfd, SCRIPT_NAME, 0) == 0) return 1;
    rx->taken = 1;
    return 0;
}

void rx_done(struct rx *rx)
{
    if (!rx->active) return;
    unlinkat(rx->tc.dirfd, SCRIPT_NAME, 0);
    deliver_tmp_remove(&rx->tc);
    rx->active = 0;
}
