/* identity.h -- who a process is in a fleet: its container id, and its Kubernetes pod and namespace, read once. */
#ifndef MEMPROF_IDENTITY_H
#define MEMPROF_IDENTITY_H

#include <stddef.h>
#include <sys/types.h>

/* Fixed sizes: a session holds one (its memory stays bounded whatever the target says). */
struct proc_ident {
    char container[13];     /* the container id's first 12 hex digits (as docker/podman ps show it), "" on the host */
    char pod_uid[37];       /* from a kubepods cgroup path, "" when the cgroup is not a pod's */
    char pod[64];           /* the pod's name (its HOSTNAME, set by the runtime), only for a pod */
    char pod_namespace[64]; /* POD_NAMESPACE (downward API) or the service account's namespace file, only for a pod */
};

/* What can be known of pid's identity; best effort: a fact that cannot be read, or does not look like one
 * (the target and its root are not trusted), is left "". Reads /proc/PID/cgroup, and for a pod also
 * /proc/PID/environ and one file under /proc/PID/root. */
void proc_ident(pid_t pid, struct proc_ident *out);
/* The container id in pid's cgroup paths (/proc/PID/cgroup): the last run of exactly 64 hex digits, as
 * docker, podman, containerd and CRI-O name their cgroups, lower case. 0, or -1 when there is none. */
int proc_container_id(pid_t pid, char out[65]);
/* The same from the text of a /proc/PID/cgroup already read (len bytes). */
int cgroup_container_id(const char *buf, size_t len, char out[65]);
#define PROC_CGROUP_MAX 8192 /* bytes of /proc/PID/cgroup read */

#endif
