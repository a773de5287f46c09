/* elfsym.c -- a live process's mapped ELF files: /proc/PID/maps, load bias, symbols, memory. */
#include "probe/elfsym.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/util.h"
#include "probe/procfs.h"

#define DELETED_SUFFIX " (deleted)"

const char *path_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

pid_t proc_live_task(pid_t pid)
{
    char path[64], st = procfs_state(pid, pid);
    struct dirent *de;
    pid_t found = pid;
    DIR *d;
    if (st != 'Z' && st != 'X') return pid;
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if (!(d = opendir(path))) return pid;
    while ((de = readdir(d))) {
        pid_t tid = (pid_t)atoi(de->d_name);
        if (tid > 0 && tid != pid && (st = procfs_state(pid, tid)) && st != 'Z' && st != 'X') {
            found = tid;
            break;
        }
    }
    closedir(d);
    return found;
}

int proc_root_check(pid_t pid, char *err)
{
    char path[64], link[PATH_MAX];
    struct stat st;
    ssize_t n;
    snprintf(path, sizeof path, "/proc/%d/root", (int)pid);
    n = readlink(path, link, sizeof link - 1);
    if (n < 0 || stat(path, &st) < 0) {
        if (errno == EACCES || errno == EPERM)
            mp_err(err, "pid %d: permission denied reading its root directory (/proc/%d/root; try as root)", (int)pid,
                   (int)pid);
        else
            mp_err(err, "pid %d: cannot read its root directory (/proc/%d/root: %s); is its container shutting down?",
                   (int)pid, (int)pid, strerror(errno));
        return -1;
    }
    link[n] = 0;
    if (st.st_nlink == 0 || (n > 10 && strcmp(link + n - 10, DELETED_SUFFIX) == 0)) {
        mp_err(err, "pid %d: its root directory %s is gone; its files cannot be read", (int)pid, link);
        return -1;
    }
    return 0;
}

static struct procmap *find_group(struct procmap *maps, int n, const char *path, uint64_t ino)
{
    for (int i = n - 1; i >= 0; i--)
        if (maps[i].ino == ino && strcmp(maps[i].path, path) == 0) return &maps[i];
    return NULL;
}

/* Adds one line of /proc/PID/maps to the per-file groups; 0 when it was not a file. */
static int add_mapping(struct procmap **maps, int *n, int *cap, const char *line)
{
    unsigned long long start, end, off, ino;
    unsigned maj, min;
    char perms[8];
    int pos = 0;
    const char *path;
    size_t len;
    struct procmap *m;

    if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &start, &end, perms, &off, &maj, &min, &ino, &pos) < 7)
        return 0;
    path = line + pos;
    if (path[0] != '/' || ino == 0) return 0; /* anonymous, [heap], [vdso], ... */
    len = strcspn(path, "\n");
    if (len >= sizeof m->path) return 0;

    char buf[PATH_MAX];
    memcpy(buf, path, len);
    buf[len] = 0;
    int deleted = 0;
    size_t sl = strlen(DELETED_SUFFIX);
    if (len > sl && strcmp(buf + len - sl, DELETED_SUFFIX) == 0) {
        buf[len - sl] = 0;
        deleted = 1;
    }
    m = find_group(*maps, *n, buf, ino);
    if (!m) {
        if (*n == *cap) {
            int ncap = *cap ? *cap * 2 : 64;
            struct procmap *nm = realloc(*maps, (size_t)ncap * sizeof *nm);
            if (!nm) return -1;
            *maps = nm;
            *cap = ncap;
        }
        m = &(*maps)[(*n)++];
        memset(m, 0, sizeof *m);
        strcpy(m->path, buf);
        m->lo = start;
        m->hi = end;
        m->first_start = start;
        m->first_end = end;
        m->first_off = off;
        m->ino = ino;
        m->dev_major = maj;
        m->dev_minor = min;
    }
    if (start < m->lo) {
        m->lo = start;
        m->first_start = start;
        m->first_end = end;
        m->first_off = off;
    }
    if (end > m->hi) m->hi = end;
    if (perms[2] == 'x') m->exec = 1;
    m->deleted |= deleted;
    return 0;
}

void proc_target_path(pid_t pid, char *path)
{
    char link[64], root[PATH_MAX];
    ssize_t n;
    snprintf(link, sizeof link, "/proc/%d/root", (int)pid);
    n = readlink(link, root, sizeof root - 1);
    if (n <= 1) return; /* "/" or unreadable */
    root[n] = 0;
    if (strncmp(path, root, (size_t)n) == 0 && path[n] == '/') memmove(path, path + n, strlen(path + n) + 1);
}

int procmaps_read(pid_t pid, struct procmap **out)
{
    char path[64], line[PATH_MAX + 128];
    struct procmap *maps = NULL;
    int n = 0, cap = 0;
    FILE *f;

    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    f = fopen(path, "re");
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {
        if (add_mapping(&maps, &n, &cap, line) < 0) {
            fclose(f);
            free(maps);
            errno = ENOMEM;
            return -1;
        }
    }
    if (ferror(f)) { /* EACCES surfaces on the first read, not on open */
        int e = errno;
        fclose(f);
        free(maps);
        errno = e ? e : EIO;
        return -1;
    }
    fclose(f);
    for (int i = 0; i < n; i++) proc_target_path(pid, maps[i].path);
    *out = maps;
    return n;
}

/* bias = where the lowest mapping is, minus where the ELF says that file offset goes. */
static int compute_bias(struct elfimg *img, char *err)
{
    Elf *elf = img->elf;
    size_t phnum;
    uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE), off = img->map->first_off;
    int have_first = 0;
    GElf_Phdr first;

    if (elf_getphdrnum(elf, &phnum) != 0) {
        mp_err(err, "%s: no program headers: %s", img->map->path, elf_errmsg(-1));
        return -1;
    }
    for (size_t i = 0; i < phnum; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(elf, (int)i, &ph) || ph.p_type != PT_LOAD) continue;
        if (!have_first) {
            first = ph;
            have_first = 1;
        }
        uint64_t seg_off = ph.p_offset & ~(pg - 1);
        if (off >= seg_off && off < ph.p_offset + ph.p_filesz) {
            img->bias = img->map->first_start - ((ph.p_vaddr & ~(pg - 1)) + (off - seg_off));
            return 0;
        }
    }
    if (!have_first) {
        mp_err(err, "%s: no PT_LOAD segment", img->map->path);
        return -1;
    }
    img->bias = img->map->first_start - (first.p_vaddr & ~(pg - 1));
    return 0;
}

/* Same bytes in the file at the mapping's offset as in the target's memory: how we
 * recognise the mapped file when inode numbers differ (overlayfs reports the lower
 * file's inode in maps). The first page holds the ELF and program headers and,
 * usually, the build-id note. */
static int same_first_page(pid_t pid, const struct procmap *map, int fd)
{
    unsigned char a[4096], b[4096];
    size_t n = map->first_end - map->first_start < sizeof a ? map->first_end - map->first_start : sizeof a;
    return pread(fd, a, n, (off_t)map->first_off) == (ssize_t)n && procmem_read(pid, map->first_start, b, n) == 0 &&
           memcmp(a, b, n) == 0;
}

/* The mapped file itself, never a look-alike: by its path in the target's root
 * (/proc/PID/root: the kernel resolves it in the target's mount namespace, so a
 * container's files are found, not the host's) when device and inode match the
 * mapping, or when its first page matches (overlayfs reports the lower file's
 * device and inode in maps); else through /proc/PID/map_files (root only), which
 * is the mapping itself. A "(deleted)" mapping is never looked up by path. */
static int open_mapped(pid_t pid, const struct procmap *map, char *err)
{
    char path[PATH_MAX + 64];
    struct stat st;
    int fd = -1, root_err = 0;

    if (!map->deleted) {
        snprintf(path, sizeof path, "/proc/%d/root%s", (int)pid, map->path);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) root_err = errno;
        if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_ino == map->ino && major(st.st_dev) == map->dev_major &&
            minor(st.st_dev) == map->dev_minor)
            return fd;
        if (fd >= 0 && same_first_page(pid, map, fd)) return fd;
        if (fd >= 0) close(fd);
    }
    snprintf(path, sizeof path, "/proc/%d/map_files/%llx-%llx", (int)pid, (unsigned long long)map->first_start,
             (unsigned long long)map->first_end);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) return fd;
    if (errno != EACCES && errno != EPERM)
        mp_errno(err, "pid %d: cannot open %s", (int)pid, map->path);
    else if (map->deleted)
        mp_err(err, "pid %d: %s was deleted since it was loaded (an upgrade?); restart the process, or run memprofd "
               "as root to read the mapped copy", (int)pid, map->path);
    else if (root_err)
        mp_err(err, "pid %d: cannot open %s in its root (/proc/%d/root): %s", (int)pid, map->path, (int)pid,
               strerror(root_err));
    else
        mp_err(err, "pid %d: %s was replaced on disk since it was loaded; restart the process", (int)pid, map->path);
    return -1;
}

int elfimg_open(pid_t pid, const struct procmap *map, struct elfimg *img, char *err)
{
    GElf_Ehdr eh;

    memset(img, 0, sizeof *img);
    img->fd = -1;
    img->map = map;
    if (elf_version(EV_CURRENT) == EV_NONE) {
        mp_err(err, "libelf: %s", elf_errmsg(-1));
        return -1;
    }
    img->fd = open_mapped(pid, map, err);
    if (img->fd < 0) return -1;
    img->elf = elf_begin(img->fd, ELF_C_READ_MMAP, NULL);
    if (!img->elf || elf_kind(img->elf) != ELF_K_ELF || !gelf_getehdr(img->elf, &eh)) {
        mp_err(err, "%s: not an ELF file", map->path);
        goto fail;
    }
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
        mp_err(err, "%s: not an x86-64 ELF file", map->path);
        goto fail;
    }
    if (compute_bias(img, err) < 0) goto fail;
    return 0;
fail:
    elfimg_close(img);
    return -1;
}

void elfimg_close(struct elfimg *img)
{
    if (img->elf) elf_end(img->elf);
    if (img->fd >= 0) close(img->fd);
    img->elf = NULL;
    img->fd = -1;
}

static Elf_Scn *find_table(Elf *elf, Elf64_Word type, GElf_Shdr *sh)
{
    Elf_Scn *scn = NULL;
    while ((scn = elf_nextscn(elf, scn)))
        if (gelf_getshdr(scn, sh) && sh->sh_type == type) return scn;
    return NULL;
}

static int lookup_in(struct elfimg *img, Elf64_Word type, const char *name, GElf_Sym *out)
{
    GElf_Shdr sh;
    Elf_Scn *scn = find_table(img->elf, type, &sh);
    Elf_Data *d;
    if (!scn || !sh.sh_entsize || !(d = elf_getdata(scn, NULL))) return -1;
    size_t n = sh.sh_size / sh.sh_entsize;
    for (size_t i = 1; i < n; i++) {
        GElf_Sym s;
        const char *nm;
        if (!gelf_getsym(d, (int)i, &s) || s.st_shndx == SHN_UNDEF) continue;
        if (GELF_ST_TYPE(s.st_info) != STT_FUNC && GELF_ST_TYPE(s.st_info) != STT_OBJECT) continue;
        nm = elf_strptr(img->elf, sh.sh_link, s.st_name);
        if (nm && strcmp(nm, name) == 0) {
            *out = s;
            return 0;
        }
    }
    return -1;
}

int elfimg_sym(struct elfimg *img, const char *name, int tables, uint64_t *addr, uint64_t *size)
{
    GElf_Sym s;
    if (lookup_in(img, SHT_DYNSYM, name, &s) < 0 &&
        (tables != ELFSYM_ANY || lookup_in(img, SHT_SYMTAB, name, &s) < 0))
        return -1;
    if (addr) *addr = s.st_value + img->bias;
    if (size) *size = s.st_size;
    return 0;
}

/* "name" or "name.<digits>" (how compilers rename function-level statics). */
static int static_name_matches(const char *nm, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(nm, name, n) != 0) return 0;
    if (nm[n] == 0) return 1;
    if (nm[n] != '.' || !nm[n + 1]) return 0;
    return strspn(nm + n + 1, "0123456789") == strlen(nm + n + 1);
}

int elfimg_file_static(struct elfimg *img, const char *file, const char *name, uint64_t *addr,
                       uint64_t *size)
{
    GElf_Shdr sh;
    Elf_Scn *scn = find_table(img->elf, SHT_SYMTAB, &sh);
    Elf_Data *d;
    int in_file = 0;
    if (!scn || !sh.sh_entsize || !(d = elf_getdata(scn, NULL))) return -1;
    size_t n = sh.sh_size / sh.sh_entsize;
    for (size_t i = 1; i < n; i++) {
        GElf_Sym s;
        const char *nm;
        if (!gelf_getsym(d, (int)i, &s)) continue;
        if (GELF_ST_BIND(s.st_info) != STB_LOCAL) break; /* locals come first */
        nm = elf_strptr(img->elf, sh.sh_link, s.st_name);
        if (!nm) continue;
        if (GELF_ST_TYPE(s.st_info) == STT_FILE) {
            in_file = strcmp(nm, file) == 0;
            continue;
        }
        if (in_file && GELF_ST_TYPE(s.st_info) == STT_OBJECT && s.st_shndx != SHN_UNDEF &&
            static_name_matches(nm, name)) {
            *addr = s.st_value + img->bias;
            *size = s.st_size;
            return 0;
        }
    }
    return -1;
}

const void *elfimg_section(struct elfimg *img, const char *name, size_t *size, uint64_t *addr)
{
    size_t shstrndx;
    Elf_Scn *scn = NULL;
    if (elf_getshdrstrndx(img->elf, &shstrndx) != 0) return NULL;
    while ((scn = elf_nextscn(img->elf, scn))) {
        GElf_Shdr sh;
        const char *nm;
        Elf_Data *d;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type == SHT_NOBITS) continue;
        nm = elf_strptr(img->elf, shstrndx, sh.sh_name);
        if (!nm || strcmp(nm, name) != 0) continue;
        d = elf_getdata(scn, NULL);
        if (!d || !d->d_buf || !d->d_size) return NULL;
        *size = d->d_size;
        if (addr) *addr = sh.sh_addr + img->bias;
        return d->d_buf;
    }
    return NULL;
}

static int procmem_rw(pid_t pid, uint64_t addr, void *buf, size_t len, int write)
{
    struct iovec local = {buf, len}, remote = {(void *)(uintptr_t)addr, len};
    char path[64];
    ssize_t r;
    int fd;

    r = write ? process_vm_writev(pid, &local, 1, &remote, 1, 0) : process_vm_readv(pid, &local, 1, &remote, 1, 0);
    if (r == (ssize_t)len) return 0;
    if (r < 0 && errno == ESRCH) return -1;
    /* Partial, not writable (EFAULT on a read-only page), or no process_vm_*: /proc/PID/mem. */
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    fd = open(path, (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return -1;
    r = write ? pwrite(fd, buf, len, (off_t)addr) : pread(fd, buf, len, (off_t)addr);
    int e = errno;
    close(fd);
    if (r == (ssize_t)len) return 0;
    errno = r < 0 ? e : EFAULT;
    return -1;
}

int procmem_read(pid_t pid, uint64_t addr, void *buf, size_t len)
{
    return procmem_rw(pid, addr, buf, len, 0);
}

int procmem_write(pid_t pid, uint64_t addr, const void *buf, size_t len)
{
    return procmem_rw(pid, addr, (void *)buf, len, 1);
}
