/* pyprobe.c -- is a process CPython, and which version: read from the target's memory. */
#include "probe/pyprobe.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/pyabi.h"
#include "common/util.h"
#include "probe/elfsym.h"
#include "probe/procfs.h"

/* Whether CAP_SYS_PTRACE (19) is in this process's effective set, from /proc/self/status: 1, 0, or -1 unknown. */
static int have_sys_ptrace(void)
{
    long long caps = procfs_self_caps();
    return caps < 0 ? -1 : (int)(caps >> 19 & 1);
}

static void perm_denied(pid_t pid, char *err)
{
    /* Root in a container without the capability (podman's, Docker's and Kubernetes' defaults omit it): the target
     * is another uid's, or holds capabilities this process lacks. Say which capability and how it is granted. */
    if (geteuid() == 0 && have_sys_ptrace() == 0)
        mp_err(err, "pid %d: permission denied: this memprofd lacks CAP_SYS_PTRACE, which a process of another uid or "
                    "one not dumpable needs (a container's default capabilities omit it): run its container with --cap-add SYS_PTRACE (podman, docker), kubectl debug "
                    "--profile=general, or securityContext.capabilities.add: [SYS_PTRACE]", (int)pid);
    else if (geteuid() == 0) /* "try as root" would be no help: say what stands in the way */
        mp_err(err, "pid %d: permission denied even as root: the process is not dumpable (prctl PR_SET_DUMPABLE 0, "
                    "a setuid program, init) and this memprofd lacks CAP_SYS_PTRACE over it (another user namespace, "
                    "or the capability dropped)", (int)pid);
    else
        mp_err(err, "pid %d: permission denied (you may only profile your own processes; try as root)", (int)pid);
}

/* Exists, not a zombie, not a kernel thread: from /proc/PID/stat. */
static int check_stat(pid_t pid, pid_t task, char *err)
{
    struct procfs_stat st;
    if (procfs_stat(task, 0, &st) < 0) {
        mp_err(err, "pid %d: no such process", (int)pid);
        return -1;
    }
    if (st.state == 'Z' || st.state == 'X') {
        mp_err(err, "pid %d: is a zombie (it has exited)", (int)pid);
        return -1;
    }
    if (st.flags & PROCFS_PF_KTHREAD) {
        mp_err(err, "pid %d: is a kernel thread", (int)pid);
        return -1;
    }
    return 0;
}

static void access_error(pid_t pid, int e, char *err)
{
    if (e == EACCES || e == EPERM)
        perm_denied(pid, err);
    else if (e == ENOENT || e == ESRCH)
        mp_err(err, "pid %d: no such process", (int)pid);
    else
        mp_err(err, "pid %d: cannot read its memory map: %s", (int)pid, strerror(e));
}

/* Parses "3.9.18 ..." or "3.13.0rc1 ..." into info; 0 when it looks like a version. */
static int parse_version_string(const char *s, struct pyinfo *info)
{
    int ma, mi, mc, n = 0;
    if (sscanf(s, "%d.%d.%d%n", &ma, &mi, &mc, &n) != 3 || ma < 2 || ma > 9 || mi < 0 || mi > 99 || mc < 0 ||
        mc > 99)
        return -1;
    while (s[n] && isalnum((unsigned char)s[n]) && n < (int)sizeof info->version - 2) n++;
    if (s[n] == '+') n++;
    info->major = ma;
    info->minor = mi;
    info->micro = mc;
    snprintf(info->version, sizeof info->version, "%.*s", n, s);
    return 0;
}

/* (1) Python >= 3.11 exports `const unsigned long Py_Version = PY_VERSION_HEX`. */
static int version_from_hex(pid_t pid, struct elfimg *img, struct pyinfo *info, int *io_err)
{
    uint64_t addr, v;
    static const char *levels[16] = {[0xA] = "a", [0xB] = "b", [0xC] = "rc"};
    if (elfimg_sym(img, "Py_Version", ELFSYM_DYNAMIC, &addr, NULL) < 0) return -1;
    if (procmem_read(pid, addr, &v, sizeof v) < 0) {
        *io_err = errno;
        return -1;
    }
    unsigned ma = (v >> 24) & 0xff, mi = (v >> 16) & 0xff, mc = (v >> 8) & 0xff, lvl = (v >> 4) & 0xf,
             ser = v & 0xf;
    if (ma != 3 || mi > 99 || (lvl != 0xF && !levels[lvl])) return -1;
    info->major = (int)ma;
    info->minor = (int)mi;
    info->micro = (int)mc;
    if (lvl == 0xF)
        snprintf(info->version, sizeof info->version, "%u.%u.%u", ma, mi, mc);
    else
        snprintf(info->version, sizeof info->version, "%u.%u.%u%s%u", ma, mi, mc, levels[lvl], ser);
    return 0;
}

/* (2) The static buffer Py_GetVersion() fills ("3.9.18 (main, ...) [GCC ...]"), found in
 * .symtab after the STT_FILE symbol for getversion.c. Empty before initialization. */
static int version_from_buffer(pid_t pid, struct elfimg *img, struct pyinfo *info, int *io_err)
{
    uint64_t addr, size;
    char buf[64];
    if (elfimg_file_static(img, "getversion.c", "version", &addr, &size) < 0) return -1;
    if (size < 32 || size > 4096) return -1;
    if (procmem_read(pid, addr, buf, sizeof buf) < 0) {
        *io_err = errno;
        return -1;
    }
    buf[sizeof buf - 1] = 0;
    return parse_version_string(buf, info);
}

static int is_version_literal(const char *s, size_t len)
{
    int ma, mi, mc, n = 0;
    if (len < 5 || len > 16 || !isdigit((unsigned char)s[0]) || s[1] != '.') return 0;
    if (sscanf(s, "%d.%d.%d%n", &ma, &mi, &mc, &n) != 3 || (ma != 2 && ma != 3)) return 0;
    for (size_t i = (size_t)n; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '+') return 0;
    return 1;
}

/* (3a) Stripped image without Py_Version: Py_GetVersion()'s code loads the address of
 * the PY_VERSION literal (lea disp32(%rip) in PIC code, mov $imm32 in non-PIE code). */
static int version_from_code(pid_t pid, struct elfimg *img, struct pyinfo *info)
{
    uint64_t fn, size;
    unsigned char code[512];
    if (elfimg_sym(img, "Py_GetVersion", ELFSYM_DYNAMIC, &fn, &size) < 0 || size < 8) return -1;
    if (size > sizeof code) size = sizeof code;
    if (procmem_read(pid, fn, code, size) < 0) return -1;
    for (uint64_t i = 0; i + 7 <= size; i++) {
        uint64_t target;
        if ((code[i] & 0xf8) == 0x48 && code[i + 1] == 0x8d && (code[i + 2] & 0xc7) == 0x05) {
            int32_t disp;
            memcpy(&disp, code + i + 3, 4);
            target = fn + i + 7 + (int64_t)disp;
        } else if (code[i] >= 0xb8 && code[i] <= 0xbf && img->bias == 0) {
            uint32_t imm;
            memcpy(&imm, code + i + 1, 4);
            target = imm;
        } else {
            continue;
        }
        char buf[24];
        if (procmem_read(pid, target, buf, sizeof buf) < 0) continue;
        buf[sizeof buf - 1] = 0;
        if (is_version_literal(buf, strlen(buf))) return parse_version_string(buf, info);
    }
    return -1;
}

/* (3b) Last resort: a PY_VERSION literal in .rodata nearest to the format Py_GetVersion()
 * uses. The linker may have merged it into the tail of a longer string (a path ending in
 * "/3.9.18"), so tails count. The file's bytes are the mapped, read-only ones. */
static int version_from_rodata(struct elfimg *img, struct pyinfo *info)
{
    static const char fmt[] = "%.80s (%.80s) %.80s";
    size_t size, best_dist = (size_t)-1;
    const char *ro = elfimg_section(img, ".rodata", &size, NULL), *f, *best = NULL;
    if (!ro || !(f = memmem(ro, size, fmt, sizeof fmt))) return -1;
    for (size_t i = 0; i < size;) {
        size_t len = strnlen(ro + i, size - i), j = len;
        const char *s = ro + i;
        while (j > 0 && (isalnum((unsigned char)s[j - 1]) || s[j - 1] == '.' || s[j - 1] == '+')) j--;
        while (j < len && !isdigit((unsigned char)s[j])) j++;
        if (is_version_literal(s + j, len - j)) {
            size_t d = s + j > f ? (size_t)(s + j - f) : (size_t)(f - s - j);
            if (d < best_dist) {
                best_dist = d;
                best = s + j;
            }
        }
        i += len + 1;
    }
    return best ? parse_version_string(best, info) : -1;
}

/* The file name may only confirm what memory said: libpython3.9.so / python3.9. */
static int name_disagrees(const char *path, const struct pyinfo *info)
{
    const char *b = path_base(path);
    int ma, mi;
    if (sscanf(b, "libpython%d.%d", &ma, &mi) != 2 && sscanf(b, "python%d.%d", &ma, &mi) != 2) return 0;
    return ma != info->major || mi != info->minor;
}

static int read_version(pid_t pid, pid_t task, struct elfimg *img, struct pyinfo *info, char *err)
{
    int io_err = 0;
    if (version_from_hex(task, img, info, &io_err) < 0 && version_from_buffer(task, img, info, &io_err) < 0 &&
        version_from_code(task, img, info) < 0 && version_from_rodata(img, info) < 0) {
        if (io_err)
            access_error(pid, io_err, err);
        else
            mp_err(err, "pid %d: cannot tell the Python version of %s", (int)pid, img->map->path);
        return -1;
    }
    if (name_disagrees(img->map->path, info)) {
        mp_err(err, "pid %d: read Python %s from memory but the file is %s; not trusting either", (int)pid,
               info->version, img->map->path);
        return -1;
    }
    return 0;
}

/* 3.13+: the interpreter describes its own layout in _Py_DebugOffsets at the
 * start of _PyRuntime; what memprof's table says must agree before anything is
 * injected. Also tells a free-threaded build (other object header). A verdict
 * goes to info->abi_error; nothing here fails the probe itself. */
static void check_abi(pid_t task, struct elfimg *img, struct pyinfo *info)
{
    const struct pyabi *abi = pyabi_for((uint32_t)info->major << 24 | (uint32_t)info->minor << 16);
    unsigned char buf[4096];
    uint64_t addr;
    uint32_t hex = (uint32_t)info->major << 24 | (uint32_t)info->minor << 16 | (uint32_t)info->micro << 8;
    if (!abi || !(abi->caps & PYABI_DEBUG_OFFSETS)) return;
    if ((size_t)abi->dbg.size > sizeof buf) return;
    if (elfimg_sym(img, "_PyRuntime", ELFSYM_ANY, &addr, NULL) < 0) {
        mp_err(info->abi_error, "Python %s: no _PyRuntime symbol; cannot check its layout", info->version);
        return;
    }
    if (procmem_read(task, addr, buf, (size_t)abi->dbg.size) < 0) {
        mp_err(info->abi_error, "Python %s: cannot read _PyRuntime: %s", info->version, strerror(errno));
        return;
    }
    info->runtime = addr;
    pyabi_check_debug_offsets(abi, hex, buf, (size_t)abi->dbg.size, info->abi_error);
}

static int is_libpython(const char *path)
{
    const char *b = path_base(path);
    return strncmp(b, "libpython", 9) == 0 && strstr(b, ".so");
}

/* Opens m when it defines the Python C API; 1 if so, 0 if not, -1 on error. */
static int open_if_python(pid_t pid, const struct procmap *m, struct elfimg *img, char *err)
{
    if (elfimg_open(pid, m, img, err) < 0) return -1;
    if (elfimg_sym(img, "Py_GetVersion", ELFSYM_DYNAMIC, NULL, NULL) == 0) return 1;
    elfimg_close(img);
    return 0;
}

int pyprobe(pid_t pid, struct pyinfo *info, char *err)
{
    struct procmap *maps = NULL;
    char exe[PATH_MAX], path[64], why[MP_ERRLEN] = "", oerr[MP_ERRLEN];
    struct elfimg img;
    ssize_t len;
    pid_t task;
    int n, rc = -1, found = 0;

    memset(info, 0, sizeof *info);
    if (pid <= 0) {
        mp_err(err, "pid %d: no such process", (int)pid);
        return -1;
    }
    task = proc_live_task(pid);
    if (check_stat(pid, task, err) < 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/exe", (int)task);
    len = readlink(path, exe, sizeof exe - 1);
    if (len < 0 && (errno == EACCES || errno == EPERM)) {
        perm_denied(pid, err);
        return -1;
    }
    if (len < 0) {
        if (check_stat(pid, task, err) < 0) return -1; /* exited meanwhile */
        mp_err(err, "pid %d: is a kernel thread", (int)pid);
        return -1;
    }
    exe[len] = 0;
    if (len > 10 && strcmp(exe + len - 10, " (deleted)") == 0) exe[len - 10] = 0;
    proc_target_path(task, exe);
    n = procmaps_read(task, &maps);
    if (n < 0) {
        access_error(pid, errno, err);
        return -1;
    }
    if (n == 0) {
        mp_err(err, "pid %d: is a kernel thread", (int)pid);
        goto out;
    }
    /* libpython first (pyenv, most distros), then an executable that exports the C API
     * (Debian's /usr/bin/python3.X links libpython statically). */
    for (int pass = 0; pass < 2 && !found; pass++) {
        for (int i = 0; i < n && !found; i++) {
            const struct procmap *m = &maps[i];
            int r;
            if (pass == 0 ? !is_libpython(m->path) : strcmp(m->path, exe) != 0) continue;
            if (m->deleted) {
                snprintf(why, sizeof why, "; %.300s was deleted or replaced since it started, restart it", m->path);
                continue;
            }
            r = open_if_python(task, m, &img, oerr);
            if (r < 0) {
                snprintf(why, sizeof why, "; %.400s", oerr);
                continue;
            }
            if (r == 0) continue;
            found = 1;
            if (read_version(pid, task, &img, info, err) == 0) {
                snprintf(info->pylib, sizeof info->pylib, "%s", m->path);
                info->shared = pass == 0;
                check_abi(task, &img, info);
                rc = 0;
            }
            elfimg_close(&img);
        }
    }
    if (!found) mp_err(err, "pid %d: not a Python process (no libpython or Python C API found)%s", (int)pid, why);
out:
    free(maps);
    return rc;
}

int pyprobe_supported(const struct pyinfo *info)
{
    return pyabi_supported(info->major, info->minor) && !info->abi_error[0];
}
