/* identity.c -- a process's container id (its cgroup), Kubernetes pod uid (a kubepods cgroup), pod name
 * (HOSTNAME) and namespace (POD_NAMESPACE, or the service account's file in its root), for labels. */
#include "daemon/identity.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/util.h"

#define ENVIRON_MAX (4 << 20) /* bytes of /proc/PID/environ read at most (exec's limit is of that order) */
#define SA_NAMESPACE "var/run/secrets/kubernetes.io/serviceaccount/namespace"

/* A Kubernetes name as the kubelet sets it: 1-63 of [a-z0-9.-], starting and ending with [a-z0-9]
 * (a DNS label; '.' allowed as pod names are DNS subdomains). Anything else is not trusted. */
static int k8s_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || !isalnum((unsigned char)s[0]) || !isalnum((unsigned char)s[n - 1])) return 0;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '-' || s[i] == '.')) return 0;
    return 1;
}

/* A pod uid at p: 32 hex digits (a static pod's) or a UUID whose dashes the systemd cgroup driver writes as
 * underscores; not followed by another hex digit. Its length, or 0. */
static size_t pod_uid_at(const char *p, char out[37])
{
    size_t i;
    for (i = 0; i < 36 && p[i]; i++) {
        int sep = i == 8 || i == 13 || i == 18 || i == 23;
        if (sep && (p[i] == '-' || p[i] == '_')) out[i] = '-';
        else if (!sep && isxdigit((unsigned char)p[i])) out[i] = (char)tolower((unsigned char)p[i]);
        else break;
    }
    if (i == 36 && !isxdigit((unsigned char)p[36])) {
        out[36] = 0;
        return 36;
    }
    for (i = 0; i < 32 && isxdigit((unsigned char)p[i]); i++) out[i] = (char)tolower((unsigned char)p[i]);
    if (i == 32 && !isxdigit((unsigned char)p[32])) {
        out[32] = 0;
        return 32;
    }
    out[0] = 0;
    return 0;
}

/* kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice/... (systemd driver) or
 * /kubepods/burstable/pod<UID>/... (cgroupfs driver), in any line of cgroup (a /proc/PID/cgroup's text). */
static void pod_uid_in(const char *cgroup, char out[37])
{
    out[0] = 0;
    for (const char *k = strstr(cgroup, "kubepods"); k; k = strstr(k + 1, "kubepods")) {
        const char *end = strchr(k, '\n');
        for (const char *p = strstr(k, "pod"); p && (!end || p < end); p = strstr(p + 3, "pod"))
            if ((p[-1] == '-' || p[-1] == '/') && pod_uid_at(p + 3, out)) return;
    }
}

/* A value that fits whole, or "" (a cut name would be another's). */
static void keep(char out[64], const char *v) { snprintf(out, 64, "%s", strlen(v) < 64 ? v : ""); }

/* HOSTNAME and POD_NAMESPACE from pid's initial environment, read in pieces (it may be large: a pod's service
 * links), a bounded entry at a time. */
static void environ_of(pid_t pid, char host[64], char ns[64])
{
    char path[64], buf[4096], entry[96];
    size_t elen = 0, total = 0;
    ssize_t n;
    int fd;
    host[0] = ns[0] = 0;
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) return;
    while (total < ENVIRON_MAX && (n = read(fd, buf, sizeof buf)) > 0) {
        total += (size_t)n;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i]) {
                if (elen < sizeof entry - 1) entry[elen] = buf[i];
                elen++;
                continue;
            }
            if (elen < sizeof entry) {
                entry[elen] = 0;
                if (!strncmp(entry, "HOSTNAME=", 9)) keep(host, entry + 9);
                else if (!strncmp(entry, "POD_NAMESPACE=", 14)) keep(ns, entry + 14);
            }
            elen = 0;
        }
    }
    close(fd);
}

/* The service account's namespace file in pid's root. The root is the container's, not ours: the path is
 * resolved as if that root were / (RESOLVE_IN_ROOT: its /var/run -> /run and the kubelet's ..data symlinks
 * are followed, nothing leads out of it, no /proc magic links), and only a small regular file is read. */
static void sa_namespace(pid_t pid, char out[64])
{
    struct open_how how = {.flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
                           .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    char path[64], buf[80];
    struct stat st;
    int root, fd;
    ssize_t n;
    out[0] = 0;
    snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
    if ((root = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) return;
    fd = (int)syscall(SYS_openat2, root, SA_NAMESPACE, &how, sizeof how); /* ENOSYS before Linux 5.6: unknown */
    close(root);
    if (fd < 0) return;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < (off_t)sizeof buf &&
        (n = read(fd, buf, sizeof buf - 1)) > 0) {
        buf[n] = 0;
        while (n && isspace((unsigned char)buf[n - 1])) buf[--n] = 0;
        snprintf(out, 64, "%s", buf);
    }
    close(fd);
}

/* The text of /proc/PID/cgroup (NUL-terminated) and its length; <= 0 when it cannot be read. */
static ssize_t cgroup_text(pid_t pid, char buf[PROC_CGROUP_MAX])
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cgroup", (int)pid);
    return mp_read_file(path, buf, PROC_CGROUP_MAX);
}

void proc_ident(pid_t pid, struct proc_ident *out)
{
    char cgroup[PROC_CGROUP_MAX], id[65];
    ssize_t n;
    memset(out, 0, sizeof *out);
    if ((n = cgroup_text(pid, cgroup)) <= 0) return; /* gone, or no cgroups: nothing known */
    if (cgroup_container_id(cgroup, (size_t)n, id) == 0) snprintf(out->container, sizeof out->container, "%.12s", id);
    pod_uid_in(cgroup, out->pod_uid);
    if (!out->pod_uid[0]) return; /* HOSTNAME is a pod's name only in a pod */
    environ_of(pid, out->pod, out->pod_namespace);
    if (!out->pod_namespace[0]) sa_namespace(pid, out->pod_namespace);
    if (!k8s_name(out->pod)) out->pod[0] = 0;
    if (!k8s_name(out->pod_namespace) || strchr(out->pod_namespace, '.')) out->pod_namespace[0] = 0;
}

int proc_container_id(pid_t pid, char out[65])
{
    char buf[PROC_CGROUP_MAX];
    ssize_t n;
    out[0] = 0;
    if ((n = cgroup_text(pid, buf)) <= 0) return -1;
    return cgroup_container_id(buf, (size_t)n, out);
}

int cgroup_container_id(const char *buf, size_t len, char out[65])
{
    ssize_t n = (ssize_t)len;
    out[0] = 0;
    /* docker-ID.scope, libpod-ID.scope, cri-containerd-ID.scope, crio-ID.scope, /docker/ID, kubepods/.../ID:
     * the last run of exactly 64 hex digits of any hierarchy's path */
    for (ssize_t i = 0, run = 0; i <= n; i++) {
        if (i < n && isxdigit((unsigned char)buf[i])) {
            run++;
            continue;
        }
        if (run == 64) {
            for (int k = 0; k < 64; k++) out[k] = (char)tolower((unsigned char)buf[i - 64 + k]);
            out[64] = 0;
        }
        run = 0;
    }
    return out[0] ? 0 : -1;
}
