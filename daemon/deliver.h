/* deliver.h -- getting the agent's bytes and a socket into a target whatever its filesystem
 * and network namespace: memfd filling, a private copy in its /tmp, pidfd_getfd. */
#ifndef MEMPROF_DELIVER_H
#define MEMPROF_DELIVER_H

#include <limits.h>
#include <stddef.h>
#include <sys/types.h>

/* A library read into memory before the target is stopped: its segments, without the
 * debug info and section headers past them (the loader reads only segments). */
struct libbytes {
    void *data;
    size_t len;
    char base[NAME_MAX + 1]; /* its file name: the memfd's name, the copy's name */
};
int deliver_read_lib(const char *path, struct libbytes *lb, char *err);
void deliver_free_lib(struct libbytes *lb);

/* A file's identity as /proc/PID/maps shows it: what a failed dlopen may leave mapped. */
struct fileid {
    unsigned dev_major, dev_minor;
    unsigned long long ino;
};

/* Writes the library into the target's descriptor fd (a memfd) through /proc/TID/fd (pid
 * may be any live thread of the target; so for deliver_tmp_copy); *id: the memfd's. */
int deliver_fill_memfd(pid_t pid, int fd, const struct libbytes *lb, struct fileid *id, char *err);

/* The library as /tmp/.memprof-XXXXXXXXXXXX/<base> in the target's root, made as the
 * target's uid, 0444 in a 0711 directory. deliver_tmp_remove deletes both. Refused
 * when its /tmp is mounted noexec (dlopen could not map it). */
struct tmpcopy {
    int tmpfd, dirfd;
    char name[32];   /* the directory's name in /tmp */
    char path[320];  /* the library's path as the target sees it */
    struct fileid id;
};
int deliver_tmp_copy(pid_t pid, const struct libbytes *lb, struct tmpcopy *tc, char *err);
void deliver_tmp_remove(struct tmpcopy *tc);

/* A pidfd of the process pid (opened before the target is stopped), or -1. */
int deliver_pidfd(pid_t pid, char *err);
/* A duplicate of the target's descriptor fd in this process (pidfd_getfd), or -1. */
int deliver_take_fd(int pidfd, int fd, char *err);

#endif
