/* procinfo.c -- /proc readers for ownership, liveness and the `memprof ps` listing. */
#include "daemon/procinfo.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/identity.h"
#include "probe/procfs.h"
#include "probe/pyprobe.h"

int proc_uid(pid_t pid, uid_t *uid)
{
    char buf[4096];
    const char *p;
    if (procfs_status(pid, 0, buf, sizeof buf) < 0 || !(p = procfs_field(buf, "Uid"))) return -1;
    *uid = (uid_t)strtoul(p, NULL, 10);
    return 0;
}

char proc_state(pid_t pid) { return procfs_state(pid, 0); }

pid_t proc_ppid(pid_t pid)
{
    struct procfs_stat st;
    return procfs_stat(pid, 0, &st) < 0 ? 0 : st.ppid;
}

int proc_alive(pid_t pid)
{
    char st = proc_state(pid);
    return st && st != 'Z' && st != 'X';
}

int proc_exiting(pid_t pid)
{
    struct procfs_stat st;
    return procfs_stat(pid, 0, &st) < 0 || st.state == 'Z' || st.state == 'X' || (st.flags & PROCFS_PF_EXITING);
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

/* The NSpid: of a process (tid 0) or thread: its last field, or 0. */
static pid_t nspid_of(pid_t pid, pid_t tid)
{
    char buf[4096];
    return procfs_status(pid, tid, buf, sizeof buf) < 0 ? 0 : procfs_nspid(buf);
}

pid_t proc_ns_pid(pid_t pid)
{
    pid_t n = nspid_of(pid, 0);
    return n > 0 ? n : pid;
}

pid_t proc_host_tid(pid_t pid, pid_t ns_tid)
{
    char path[96];
    struct dirent *de;
    pid_t found = 0;
    DIR *d;
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if (!(d = opendir(path))) return 0;
    while (!found && (de = readdir(d))) {
        int tid = atoi(de->d_name);
        if (tid <= 0) continue;
        if (nspid_of(pid, tid) == ns_tid) found = tid;
    }
    closedir(d);
    return found;
}

static int same_ns(pid_t pid, const char *ns)
{
    char a[64], b[64];
    struct stat sa, sb;
    snprintf(a, sizeof a, "/proc/%d/ns/%s", (int)pid, ns);
    snprintf(b, sizeof b, "/proc/self/ns/%s", ns);
    if (stat(a, &sa) < 0 || stat(b, &sb) < 0) return 1; /* unknown: say nothing */
    return sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev;
}

/* The unified (v2) cgroup path of pid from /proc/PID/cgroup, else the first line's. */
static void cgroup_of(pid_t pid, char *out, size_t outlen)
{
    char path[64], buf[8192], *line, *save = NULL;
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    out[0] = 0;
    if (mp_read_file(path, buf, sizeof buf) <= 0) return;
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *p = strchr(line, ':');
        char *q = p ? strchr(p + 1, ':') : NULL;
        if (!q) continue;
        if (!out[0] || strncmp(line, "0::", 3) == 0) snprintf(out, outlen, "%s", q + 1);
    }
}

void proc_container(pid_t pid, char *out, size_t outlen)
{
    static const char *nss[] = {"mnt", "pid", "net", "user"};
    char cg[4096], ours[4096], diff[64] = "";
    out[0] = 0;
    for (size_t i = 0; i < sizeof nss / sizeof nss[0]; i++)
        if (!same_ns(pid, nss[i])) snprintf(diff + strlen(diff), sizeof diff - strlen(diff), "%s%s", diff[0] ? "," : "", nss[i]);
    if (!diff[0]) return;
    cgroup_of(pid, cg, sizeof cg);
    cgroup_of(getpid(), ours, sizeof ours);
    if (cg[0] && strcmp(cg, "/") != 0 && strcmp(cg, ours) != 0) {
        char last[256], *dot;
        size_t run = 0, start = 0;
        const char *b = strrchr(cg, '/');
        snprintf(last, sizeof last, "%s", b && b[1] ? b + 1 : cg);
        if ((dot = strstr(last, ".scope")) && !dot[6]) *dot = 0;
        /* a container id: a run of 32+ hex digits, cut to 12 */
        for (size_t i = 0; last[i]; i++) {
            if (isxdigit((unsigned char)last[i])) {
                if (!run++) start = i;
                if (run >= 32 && !isxdigit((unsigned char)last[i + 1])) {
                    memmove(last + start + 12, last + i + 1, strlen(last + i + 1) + 1);
                    break;
                }
            } else {
                run = 0;
            }
        }
        snprintf(out, outlen, "%s", last);
        return;
    }
    snprintf(out, outlen, "ns:%s", diff);
}

int proc_may_access(uid_t client, pid_t pid, char *err)
{
    uid_t owner;
    if (proc_uid(pid, &owner) < 0) {
        mp_err(err, "pid %d: no such process", (int)pid);
        return -1;
    }
    if (client != 0 && client != owner && !same_ns(pid, "user")) {
        mp_err(err, "pid %d: permission denied (owned by uid %u, in a user namespace: a rootless container's); "
               "run memprofd as root or as uid %u", (int)pid, (unsigned)owner, (unsigned)owner);
        return -1;
    }
    if (client != 0 && client != owner) {
        mp_err(err, "pid %d: permission denied (owned by uid %u; you may only profile your own processes)",
               (int)pid, (unsigned)owner);
        return -1;
    }
    return 0;
}

Memprof__ErrorReply__Code proc_error_code(pid_t pid, Memprof__ErrorReply__Code otherwise)
{
    char path[64];
    int fd;
    if (!proc_alive(pid)) return MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS;
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return errno == EACCES || errno == EPERM ? MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED
                                                 : proc_alive(pid) ? otherwise
                                                                   : MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS;
    close(fd);
    /* a process that is not dumpable keeps its maps readable but not its exe (nor its memory) */
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    {
        char target[16];
        if (readlink(path, target, sizeof target) < 0 && (errno == EACCES || errno == EPERM))
            return MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED;
    }
    return otherwise;
}

static int add_entry(Memprof__PsReply *out, pid_t pid, uid_t uid, const struct pyinfo *py)
{
    Memprof__PsEntry *e = calloc(1, sizeof *e), **np;
    struct proc_ident id;
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
    e->ns_pid = proc_ns_pid(pid);
    if (e->ns_pid == pid) e->ns_pid = 0;
    proc_container(pid, cmd, sizeof cmd);
    e->container = strdup(cmd);
    proc_ident(pid, &id);
    e->container_id = strdup(id.container);
    e->pod = strdup(id.pod);
    e->pod_namespace = strdup(id.pod_namespace);
    e->pod_uid = strdup(id.pod_uid);
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
        free(out->procs[i]->container);
        free(out->procs[i]->container_id);
        free(out->procs[i]->pod);
        free(out->procs[i]->pod_namespace);
        free(out->procs[i]->pod_uid);
        free(out->procs[i]);
    }
    free(out->procs);
    out->procs = NULL;
    out->n_procs = 0;
}
