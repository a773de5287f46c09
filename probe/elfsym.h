/* elfsym.h -- the ELF files a live process has mapped: where they are (/proc/PID/maps),
 * their load bias, their symbols' run-time addresses, and reading the process's memory. */
#ifndef MEMPROF_ELFSYM_H
#define MEMPROF_ELFSYM_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One file mapped into a process: all its mappings taken together. */
struct procmap {
    char path[PATH_MAX];   /* as the target sees it, " (deleted)" stripped */
    uint64_t lo, hi;       /* lowest start, highest end of its mappings */
    uint64_t first_start;  /* start, end and file offset of its lowest mapping */
    uint64_t first_end;
    uint64_t first_off;
    uint64_t ino;
    unsigned dev_major, dev_minor;
    int deleted;           /* the file was deleted or replaced since it was mapped */
    int exec;              /* one of its mappings is executable */
};

/* A thread of pid to read its maps, files and memory through: pid itself, unless its main
 * thread has exited (a zombie leader has no mm) while other threads run on. */
pid_t proc_live_task(pid_t pid);

/* Can pid's files be read through /proc/PID/root (a container's root; a mount
 * namespace being torn down, a deleted chroot dir)? 0, or -1 with a one-line err. */
int proc_root_check(pid_t pid, char *err);

/* Paths in /proc/PID/maps and /proc/PID/exe are relative to the root of pid's mount
 * namespace, not to pid's root: after a chroot in its own mount namespace they start
 * with the chroot directory. Strips that prefix (readlink /proc/PID/root) so that the
 * path is the one pid itself uses, and /proc/PID/root/<path> names the file. */
void proc_target_path(pid_t pid, char *path);

/* Every file-backed mapping of pid (paths as pid sees them), grouped per file in address order. *out is
 * malloc'ed. Returns the count, or -1 with errno (ENOENT: gone, EACCES: not ours). */
int procmaps_read(pid_t pid, struct procmap **out);

/* The last path component. */
const char *path_base(const char *path);

/* An ELF file mapped in a process, opened from the target's point of view. */
struct elfimg {
    int fd;
    void *elf;             /* Elf * */
    uint64_t bias;         /* run-time address = st_value + bias */
    const struct procmap *map;
};

/* Opens map's file through /proc/PID/root (other mount namespaces), checks it is the
 * mapped file (device and inode, or its first page on overlayfs; falls back to
 * /proc/PID/map_files, the only way for a "(deleted)" mapping) and computes the load bias. */
int elfimg_open(pid_t pid, const struct procmap *map, struct elfimg *img, char *err);
void elfimg_close(struct elfimg *img);

#define ELFSYM_DYNAMIC 1   /* .dynsym only */
#define ELFSYM_ANY     3   /* .dynsym, then .symtab */

/* Run-time address (and size) of a defined function or object symbol. 0 or -1. */
int elfimg_sym(struct elfimg *img, const char *name, int tables, uint64_t *addr, uint64_t *size);

/* A LOCAL object symbol named `name` or `name.N` that follows the STT_FILE symbol
 * `file` in .symtab (a function-level static such as getversion.c's version[]). */
int elfimg_file_static(struct elfimg *img, const char *file, const char *name, uint64_t *addr,
                       uint64_t *size);

/* The bytes of a section as stored in the file (NULL if absent or empty), and where
 * they are in the process (addr may be NULL). */
const void *elfimg_section(struct elfimg *img, const char *name, size_t *size, uint64_t *addr);

/* Read or write the target's memory: process_vm_readv/writev, /proc/PID/mem as a
 * fallback. 0 when all len bytes were transferred, else -1 with errno. */
int procmem_read(pid_t pid, uint64_t addr, void *buf, size_t len);
int procmem_write(pid_t pid, uint64_t addr, const void *buf, size_t len);

#endif
