/* procfs.c -- the one reader of /proc/PID/stat and /proc/PID/status for memprofd and memprof. */
#include "probe/procfs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

int procfs_parse_stat(const char *buf, struct procfs_stat *st)
{
    const char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    int ppid = 0;
    size_t n;
    memset(st, 0, sizeof *st);
    if (!open || !close || close < open || close[1] != ' ') return -1;
    if (sscanf(close + 2, "%c %d %*d %*d %*d %*d %u", &st->state, &ppid, &st->flags) != 3) {
        st->state = 0;
        return -1;
    }
    st->ppid = (pid_t)ppid;
    /* fields 10 to 21, then the start time */
    if (sscanf(close + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
               &st->starttime) != 1)
        st->starttime = 0;
    n = (size_t)(close - open - 1);
    if (n >= sizeof st->comm) n = sizeof st->comm - 1;
    memcpy(st->comm, open + 1, n);
    st->comm[n] = 0;
    return 0;
}

static void task_path(char *path, size_t len, pid_t pid, pid_t tid, const char *file)
{
    if (tid) snprintf(path, len, "/proc/%d/task/%d/%s", (int)pid, (int)tid, file);
    else snprintf(path, len, "/proc/%d/%s", (int)pid, file);
}

int procfs_stat(pid_t pid, pid_t tid, struct procfs_stat *st)
{
    char path[80], buf[1024];
    task_path(path, sizeof path, pid, tid, "stat");
    if (mp_read_file(path, buf, sizeof buf) <= 0) {
        memset(st, 0, sizeof *st);
        return -1;
    }
    return procfs_parse_stat(buf, st);
}

char procfs_state(pid_t pid, pid_t tid)
{
    struct procfs_stat st;
    return procfs_stat(pid, tid, &st) < 0 ? 0 : st.state;
}

int procfs_status(pid_t pid, pid_t tid, char *buf, size_t len)
{
    char path[80];
    task_path(path, sizeof path, pid, tid, "status");
    return mp_read_file(path, buf, len) <= 0 ? -1 : 0;
}

const char *procfs_field(const char *status, const char *key)
{
    size_t klen = strlen(key);
    const char *line = status;
    while (line) {
        if (!strncmp(line, key, klen) && line[klen] == ':') return line + klen + 1;
        line = strchr(line, '\n');
        if (line) line++;
    }
    return NULL;
}

pid_t procfs_nspid(const char *status)
{
    const char *p = procfs_field(status, "NSpid");
    char *end;
    pid_t last = 0;
    if (!p) return 0;
    for (; *p && *p != '\n'; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        last = (pid_t)v;
    }
    return last;
}

long long procfs_self_caps(void)
{
    char status[8192];
    const char *eff;
    if (procfs_status(getpid(), 0, status, sizeof status) < 0 || !(eff = procfs_field(status, "CapEff"))) return -1;
    return (long long)(strtoull(eff, NULL, 16) & 0x7fffffffffffffffULL);
}
