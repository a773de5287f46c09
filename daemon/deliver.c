/* deliver.c -- the host side of loading the agent into a target that may live in a container:
 * the library's bytes, written into a memfd of the target or into a private copy in the
 * target's /tmp, and one end of a socket taken out of the target (pidfd_getfd). */
#include "daemon/deliver.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/util.h"
#include "probe/elfsym.h"
#include "probe/procfs.h"

/* Drops what the loader never reads: the bytes past the last segment's file extent
 * (debug info, .symtab, section headers), when the section headers are among them. Less
 * to write while the target is stopped. */
static void trim_to_segments(struct libbytes *lb)
{
    Elf64_Ehdr *eh = lb->data;
    uint64_t end;
    if (lb->len < sizeof *eh || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phoff > lb->len ||
        eh->e_phnum > (lb->len - eh->e_phoff) / sizeof(Elf64_Phdr))
        return;
    end = eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr);
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, (char *)lb->data + eh->e_phoff + i * sizeof ph, sizeof ph);
        if (ph.p_offset > lb->len || ph.p_filesz > lb->len - ph.p_offset) return;
        if (ph.p_offset + ph.p_filesz > end) end = ph.p_offset + ph.p_filesz;
    }
    if (end >= lb->len || eh->e_shoff < end) return;
    eh->e_shoff = 0;
    eh->e_shnum = 0;
    eh->e_shstrndx = SHN_UNDEF;
    lb->len = (size_t)end;
}

int deliver_read_lib(const char *path, struct libbytes *lb, char *err)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    memset(lb, 0, sizeof *lb);
    if (fd < 0 || fstat(fd, &st) < 0) {
        mp_errno(err, "cannot read the library %s", path);
        if (fd >= 0) close(fd);
        return -1;
    }
    lb->len = (size_t)st.st_size;
    lb->data = malloc(lb->len ? lb->len : 1);
    if (!lb->data) {
        close(fd);
        mp_err(err, "out of memory");
        return -1;
    }
    for (size_t off = 0; off < lb->len;) {
        ssize_t r = read(fd, (char *)lb->data + off, lb->len - off);
        if (r <= 0) {
            mp_errno(err, "cannot read the library %s", path);
            close(fd);
            deliver_free_lib(lb);
            return -1;
        }
        off += (size_t)r;
    }
    close(fd);
    trim_to_segments(lb);
    snprintf(lb->base, sizeof lb->base, "%s", path_base(path));
    return 0;
}

void deliver_free_lib(struct libbytes *lb)
{
    free(lb->data);
    lb->data = NULL;
}

static int write_all(int fd, const void *buf, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t r = write(fd, (const char *)buf + off, len - off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        off += (size_t)r;
    }
    return 0;
}

static void file_id(int fd, struct fileid *id)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (fstat(fd, &st) == 0) {
        id->dev_major = major(st.st_dev);
        id->dev_minor = minor(st.st_dev);
        id->ino = (unsigned long long)st.st_ino;
    }
}

int deliver_fill_memfd(pid_t pid, int fd, const struct libbytes *lb, struct fileid *id, char *err)
{
    char path[64];
    int w;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    w = open(path, O_WRONLY | O_CLOEXEC);
    if (w < 0) {
        mp_errno(err, "opening its memfd %s", path);
        return -1;
    }
    file_id(w, id);
    if (write_all(w, lb->data, lb->len) < 0) {
        mp_errno(err, "writing the library into its memfd %s", path);
        close(w);
        return -1;
    }
    close(w);
    return 0;
}

/* fsuid and fsgid of pid (the 4th fields of Uid: and Gid:). */
static int target_fsids(pid_t pid, uid_t *uid, gid_t *gid)
{
    char buf[4096];
    const char *u, *g;
    unsigned a[4], b[4];
    if (procfs_status(pid, 0, buf, sizeof buf) < 0 || !(u = procfs_field(buf, "Uid")) ||
        !(g = procfs_field(buf, "Gid")) || sscanf(u, "%u %u %u %u", &a[0], &a[1], &a[2], &a[3]) != 4 ||
        sscanf(g, "%u %u %u %u", &b[0], &b[1], &b[2], &b[3]) != 4)
        return -1;
    *uid = a[3];
    *gid = b[3];
    return 0;
}

/* The directory is made as the target's uid: readable by it, and creatable on a /tmp
 * that belongs to a user namespace where our uid is not mapped. Only single path
 * components are created or opened below the target's /tmp (O_NOFOLLOW): a symlink
 * planted in the container cannot redirect us into the host's files. */
int deliver_tmp_copy(pid_t pid, const struct libbytes *lb, struct tmpcopy *tc, char *err)
{
    char path[64];
    unsigned char rnd[6];
    uid_t uid, old_uid;
    gid_t gid, old_gid;
    int rootfd, fd = -1, rc = -1, e = 0;
    const char *step = "";

    memset(tc, 0, sizeof *tc);
    tc->tmpfd = tc->dirfd = -1;
    if (target_fsids(pid, &uid, &gid) < 0 || getrandom(rnd, sizeof rnd, 0) != sizeof rnd) {
        mp_err(err, "pid %d: cannot read its credentials", (int)pid);
        return -1;
    }
    snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
    rootfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) {
        mp_errno(err, "pid %d: cannot open its root %s", (int)pid, path);
        return -1;
    }
    tc->tmpfd = openat(rootfd, "tmp", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    close(rootfd);
    if (tc->tmpfd < 0) {
        mp_errno(err, "pid %d: no /tmp directory in its root", (int)pid);
        return -1;
    }
    struct statvfs vfs;
    if (fstatvfs(tc->tmpfd, &vfs) == 0 && (vfs.f_flag & ST_NOEXEC)) {
        mp_err(err, "pid %d: its /tmp is mounted noexec", (int)pid);
        deliver_tmp_remove(tc);
        return -1;
    }
    snprintf(tc->name, sizeof tc->name, ".memprof-%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
             rnd[5]);
    snprintf(tc->path, sizeof tc->path, "/tmp/%s/%s", tc->name, lb->base);
    old_gid = (gid_t)setfsgid(gid);
    old_uid = (uid_t)setfsuid(uid);
    /* setfsuid says nothing when it fails: ask again (-1 never takes, and answers the current one). Without
     * CAP_SETUID/CAP_SETGID (a container's root with capabilities dropped) the files would be ours, and the
     * target, another uid, could not load them: refuse here, so that `auto` goes by ptrace and memfd. */
    if ((uid_t)setfsuid((uid_t)-1) != uid || (gid_t)setfsgid((gid_t)-1) != gid) {
        setfsuid(old_uid);
        setfsgid(old_gid);
        mp_err(err, "pid %d: cannot write into its /tmp as its uid %u: this memprofd lacks CAP_SETUID or CAP_SETGID",
               (int)pid, (unsigned)uid);
        deliver_tmp_remove(tc);
        return -1;
    }
    if (mkdirat(tc->tmpfd, tc->name, 0711) < 0) {
        e = errno, step = "creating a directory in";
    } else if ((tc->dirfd = openat(tc->tmpfd, tc->name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        e = errno, step = "opening the directory it made in";
    } else if ((fd = openat(tc->dirfd, lb->base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444)) < 0) {
        e = errno, step = "creating the library in";
    } else if (write_all(fd, lb->data, lb->len) < 0 || fchmod(fd, 0444) < 0) {
        e = errno, step = "writing the library into";
    } else {
        file_id(fd, &tc->id);
        rc = 0;
    }
    if (fd >= 0) close(fd);
    setfsuid(old_uid);
    setfsgid(old_gid);
    if (rc < 0) {
        mp_err(err, "pid %d: %s its /tmp: %s", (int)pid, step, strerror(e));
        deliver_tmp_remove(tc);
    }
    return rc;
}

void deliver_tmp_remove(struct tmpcopy *tc)
{
    if (tc->dirfd >= 0) {
        char base[NAME_MAX + 1];
        snprintf(base, sizeof base, "%s", path_base(tc->path));
        unlinkat(tc->dirfd, base, 0);
        close(tc->dirfd);
        tc->dirfd = -1;
    }
    if (tc->tmpfd >= 0) {
        if (tc->name[0]) unlinkat(tc->tmpfd, tc->name, AT_REMOVEDIR);
        close(tc->tmpfd);
        tc->tmpfd = -1;
    }
}

int deliver_pidfd(pid_t pid, char *err)
{
#if defined(SYS_pidfd_open) && defined(SYS_pidfd_getfd)
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) mp_errno(err, "pidfd_open");
    return pidfd;
#else
    (void)pid;
    mp_err(err, "pidfd_open unknown to this build");
    return -1;
#endif
}

int deliver_take_fd(int pidfd, int fd, char *err)
{
#if defined(SYS_pidfd_getfd)
    int ours = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    if (ours < 0) mp_errno(err, "pidfd_getfd (Linux >= 5.6, ptrace rights)");
    return ours;
#else
    (void)pidfd, (void)fd;
    mp_err(err, "pidfd_getfd unknown to this build");
    return -1;
#endif
}
