/* procinfo.c -- /proc readers for ownership, liveness and the `memprof ps` listing. */
#include "procinfo.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pyprobe.h"
#include "util.h"

int proc_uid(pid_t pid, uid_t *uid)
{
    char path[64], buf[4096], *p;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    if (mp_read_file(path, buf, sizeof buf) < 0) return -1;
    p = strstr(buf, "\nUid:");
    if (!p) return -1;
    *uid = (uid_t)strtoul(p + 5, NULL, 10);
    return 0;
}

char proc_state(pid_t pid)
{
    char path[64], buf[1024], *p;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (mp_read_file(path, buf, sizeof buf) <= 0) return 0;
    p = strrchr(buf, ')');
    return (p && p[1] == ' ') ? p[2] : 0;
}

pid_t proc_ppid(pid_t pid)
{
    char path[64], buf[1024], *p;
    int ppid = 0;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (mp_read_file(path, buf, sizeof buf) <= 0 || !(p = strrchr(buf, ')'))) return 0;
    if (sscanf(p + 1, " %*c %d", &ppid) != 1) return 0;
    return (pid_t)ppid;
}

int proc_alive(pid_t pid)
{
    char st = proc_state(pid);
    return st && st != 'Z' && st != 'X';
}

int proc_thread_alive(pid_t pid, int tid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d", (int)pid, tid);
    return access(path, F_OK) == 0;
}

unsigned long long proc_rss(pid_t pid)
{
    char path[64], buf[256];
    unsigned long long size = 0, rss = 0;
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    if (mp_read_file(path, buf, sizeof buf) <= 0) return 0;
    if (sscanf(buf, "%llu %llu", &size, &rss) != 2) return 0;
    return rss * (unsigned long long)sysconf(_SC_PAGESIZE);
}

int proc_may_access(uid_t client, pid_t pid, char *err)
{
    uid_t owner;
    if (proc_uid(pid, &owner) < 0) {
        mp_err(err, "pid %d: no such process", (int)pid);
        return -1;
    }
    if (client != 0 && client != owner) {
        mp_err(err, "pid %d: permission denied (owned by uid %u; you may only profile your own processes)",
               (int)pid, (unsigned)owner);
        return -1;
    }
    return 0;
}

static int add_entry(Memprof__PsReply *out, pid_t pid, uid_t uid, const struct pyinfo *py)
{
    Memprof__PsEntry *e = calloc(1, sizeof *e), **np;
    char cmd[4096];
    if (!e) return -1;
    np = realloc(out->procs, (out->n_procs + 1) * sizeof *np);
    if (!np) {
        free(e);
        return -1;
    }
    out->procs = np;
    memprof__ps_entry__init(e);
    e->pid = pid;
    e->uid = (int32_t)uid;
    e->python_version = strdup(py->version);
    e->supported = pyprobe_supported(py);
    e->rss_bytes = proc_rss(pid);
    if (mp_proc_cmdline(pid, cmd, sizeof cmd) < 0) cmd[0] = 0;
    e->cmdline = strdup(cmd);
    e->note = strdup(e->supported ? "" : "unsupported version");
    out->procs[out->n_procs++] = e;
    return 0;
}

int proc_list_python(uid_t client, Memprof__PsReply *out)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    memprof__ps_reply__init(out);
    if (!d) return -1;
    while ((de = readdir(d))) {
        pid_t pid;
        uid_t owner;
        struct pyinfo py;
        char err[MP_ERRLEN];
        if (!isdigit((unsigned char)de->d_name[0])) continue;
        pid = mp_parse_pid(de->d_name);
        if (pid <= 0 || pid == getpid()) continue;
        if (proc_uid(pid, &owner) < 0) continue;
        if (client != 0 && owner != client) continue;
        if (!proc_alive(pid)) continue;
        if (pyprobe(pid, &py, err) < 0) continue;
        add_entry(out, pid, owner, &py);
    }
    closedir(d);
    return 0;
}

void proc_list_free(Memprof__PsReply *out)
{
    for (size_t i = 0; i < out->n_procs; i++) {
        free(out->procs[i]->python_version);
        free(out->procs[i]->cmdline);
        free(out->procs[i]->note);
        free(out->procs[i]);
    }
    free(out->procs);
    out->procs = NULL;
    out->n_procs = 0;
}
