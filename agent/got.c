/* got.c -- the GOT patcher: points the GOT/PLT entries of loaded libraries for the functions of a
 * table of hooks (native.c's) at the hooks, and puts them back.
 *
 * Which objects: every one dl_iterate_phdr lists but libc and ld.so (their
 * calls are the originals), the vdso, this agent (its calls reach the
 * originals: that is how the hooks call them) and the Python executable or
 * libpython, where only the loader hooks (dlopen) are patched.
 *
 * Which entries: JUMP_SLOT and GLOB_DAT relocations (DT_JMPREL, DT_RELA,
 * DT_REL) of an undefined symbol named as a hook, whose value is libc's
 * function, the global definition (dlsym RTLD_DEFAULT: an LD_PRELOAD'd
 * allocator), the address this agent takes (a non-PIE executable's PLT stub)
 * or still a lazy-binding stub inside the object: another tool's hook is left
 * alone. RELRO pages are made writable for the store and read-only again.
 * Every (address, original) is kept; got_restore walks the objects still
 * loaded and puts back each entry that still holds a hook (an object unloaded
 * meanwhile is never written to).
 *
 * An object whose entries could not be written is told once: at the first
 * scan in got_note, loaded later in got_late_note.
 *
 * Concurrency: patching runs inside dl_iterate_phdr callbacks, which the
 * loader lock serializes. */
#include "agent/got.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/log.h"
#include "common/util.h"

#define REC_SLOTS (1u << 16) /* patched entries kept: (address, original) */

#if defined(__x86_64__)
#define R_JUMP_SLOT R_X86_64_JUMP_SLOT
#define R_GLOB_DAT R_X86_64_GLOB_DAT
#elif defined(__aarch64__)
#define R_JUMP_SLOT R_AARCH64_JUMP_SLOT
#define R_GLOB_DAT R_AARCH64_GLOB_DAT
#else
#error "native.c: relocation types for this architecture"
#endif
#define R_TYPE(info) ELF64_R_TYPE(info)
#define R_SYM(info) ELF64_R_SYM(info)

static struct got_hook *hooks; /* got_init's table */
static size_t nhooks;
static atomic_int patching;    /* cleared by got_restore: a scan waiting for the loader's lock stops */
static unsigned npatched;


/* The definitions a hook may replace: the address this agent takes, the global one, libc's. */
static void table_fill(void)
{
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    for (size_t i = 0; i < nhooks; i++) {
        hooks[i].def = dlsym(RTLD_DEFAULT, hooks[i].name);
        hooks[i].libc = libc ? dlsym(libc, hooks[i].name) : NULL;
        if (!hooks[i].def) hooks[i].def = hooks[i].real;
        if (!hooks[i].libc) hooks[i].libc = hooks[i].real;
    }
    if (libc) dlclose(libc);
}

static int hook_of_name(const char *name)
{
    for (size_t i = 0; i < nhooks; i++)
        if (name[0] == hooks[i].name[0] && !strcmp(name, hooks[i].name)) return (int)i;
    return -1;
}

/* ------------------------------------------------------------ (address, original) */

struct rec {
    uintptr_t addr, orig;
};
static struct rec *recs; /* open addressing on addr; mmap'd */
static unsigned nrecs;

static struct rec *rec_find(uintptr_t addr, int add)
{
    uint32_t mask = REC_SLOTS - 1, i = (uint32_t)((addr >> 3) * 2654435761u) & mask;
    if (!recs) return NULL;
    for (;; i = (i + 1) & mask) {
        if (recs[i].addr == addr) return &recs[i];
        if (!recs[i].addr) break;
    }
    if (!add || nrecs + 1 > REC_SLOTS * 3 / 4) return NULL;
    nrecs++;
    recs[i].addr = addr;
    return &recs[i];
}

/* ------------------------------------------------------------ walking the objects */

static uintptr_t self_base;
static const char *self_name;

int got_classify(const struct dl_phdr_info *info)
{
    const char *name = info->dlpi_name ? info->dlpi_name : "", *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (info->dlpi_addr == self_base || (self_name && !strcmp(name, self_name))) return GOT_SELF;
    if (!strncmp(base, "linux-vdso", 10) || !strncmp(base, "linux-gate", 10)) return GOT_SKIP;
    if (!strncmp(base, "libc.so", 7) || !strncmp(base, "libc-", 5) || !strncmp(base, "ld-linux", 8) ||
        !strncmp(base, "ld-", 3) || !strncmp(base, "ld64", 4))
        return GOT_SKIP;
    if (!name[0] || !strncmp(base, "libpython", 9)) return GOT_LOADER; /* the executable, libpython */
    return GOT_ALL;
}

struct walk {
    int restore;
    int kind;
    uintptr_t base;
    const ElfW(Sym) *symtab;
    const char *strtab;
    uintptr_t relro_lo, relro_hi; /* pages made read-only after relocation */
    const struct dl_phdr_info *info;
    unsigned patched, restored, failed, foreign, allocs, unready; /* allocs: entries of allocation functions patched */
    const char *fail_obj; /* the first object with an entry that could not be written, and why */
    int fail_errno;
    int obj_errno; /* the current object's first failure (0: the patch table was full) */
    int late;      /* a scan after the first: a new failure is told as a late note */
};

static uintptr_t dyn_ptr(const struct walk *w, ElfW(Addr) v)
{
    /* glibc relocates these d_ptr values in place; other loaders may not */
    return v < w->base ? w->base + v : v;
}

static int in_object(const struct walk *w, uintptr_t v)
{
    for (int i = 0; i < w->info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &w->info->dlpi_phdr[i];
        uintptr_t lo = w->base + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && v >= lo && v < lo + ph->p_memsz) return 1;
    }
    return 0;
}

static int entry_write(struct walk *w, uintptr_t addr, uintptr_t val)
{
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = addr & ~(uintptr_t)(ps - 1);
    int ro = page >= w->relro_lo && page < w->relro_hi;
    if (ro && mprotect((void *)page, (size_t)ps, PROT_READ | PROT_WRITE) != 0) {
        if (!w->fail_obj) w->fail_obj = w->info->dlpi_name, w->fail_errno = errno;
        if (!w->obj_errno) w->obj_errno = errno;
        return -1;
    }
    __atomic_store_n((uintptr_t *)addr, val, __ATOMIC_RELEASE);
    if (ro) mprotect((void *)page, (size_t)ps, PROT_READ);
    return 0;
}

static void one_reloc(struct walk *w, ElfW(Addr) offset, ElfW(Xword) info)
{
    unsigned type = (unsigned)R_TYPE(info);
    const ElfW(Sym) *sym;
    uintptr_t addr, cur;
    int h;
    if (type != R_JUMP_SLOT && type != R_GLOB_DAT) return;
    sym = &w->symtab[R_SYM(info)];
    if (!R_SYM(info) || sym->st_shndx != SHN_UNDEF) return;
    h = hook_of_name(w->strtab + sym->st_name);
    if (h < 0) return;
    addr = w->base + offset;
    cur = __atomic_load_n((uintptr_t *)addr, __ATOMIC_ACQUIRE);
    if (w->restore) {
        struct rec *r;
        if (cur != (uintptr_t)hooks[h].hook) return;
        r = rec_find(addr, 0);
        if (entry_write(w, addr, r ? r->orig : (uintptr_t)hooks[h].real) == 0) w->restored++;
        else w->failed++;
        return;
    }
    if (w->kind == GOT_LOADER && !hooks[h].loader) return;
    if (cur == (uintptr_t)hooks[h].hook) return; /* ours already */
    if (cur != (uintptr_t)hooks[h].real && cur != (uintptr_t)hooks[h].def && cur != (uintptr_t)hooks[h].libc &&
        !in_object(w, cur)) {
        w->foreign++;
        return; /* someone else's */
    }
    {
        struct rec *r = rec_find(addr, 1);
        if (!r) {
            w->failed++;
            return;
        }
        r->orig = cur;
    }
    if (entry_write(w, addr, (uintptr_t)hooks[h].hook) == 0) {
        w->patched++;
        w->allocs += !hooks[h].loader;
    } else {
        w->failed++;
    }
}

static int page_writable(uintptr_t addr)
{
    static char buf[8192];
    size_t have = 0;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC), found = -1;
    if (fd < 0) return -1;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
        char *line = buf, *nl;
        if (n <= 0) break;
        have += (size_t)n;
        buf[have] = 0;
        while ((nl = strchr(line, '\n')) != NULL) {
            unsigned long lo, hi;
            char perms[8];
            if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && addr >= lo && addr < hi) {
                found = perms[1] == 'w';
                break;
            }
            line = nl + 1;
        }
        if (found >= 0) break;
        have -= (size_t)(line - buf);
        memmove(buf, line, have);
        if (have >= sizeof buf - 1) have = 0; /* a line longer than the buffer: drop it */
    }
    close(fd);
    return found;
}

/* Objects seen fully relocated (RELRO read-only): they stay so, and need no look at the maps again. An
 * unload (dlpi_subs changes) empties the set: a new object may be loaded at a known one's address. Under
 * the loader's lock. */
#define READY_MAX 512
static uintptr_t ready[READY_MAX];
static unsigned nready;
static unsigned long long ready_subs;

static int relocating(const struct dl_phdr_info *info, uintptr_t relro)
{
    int wr;
    if (info->dlpi_subs != ready_subs) nready = 0, ready_subs = info->dlpi_subs;
    for (unsigned i = 0; i < nready; i++)
        if (ready[i] == relro) return 0;
    if ((wr = page_writable(relro)) == 1) return 1;
    if (wr == 0 && nready < READY_MAX) ready[nready++] = relro;
    return 0;
}

/* Objects with entries that could not be patched, told once each (a scan at every dlopen meets them again):
 * by load address and name. An object unloaded and another loaded at its address under the same name is
 * not told again. Under the loader's lock. */
#define FAILED_MAX 64
static struct {
    uintptr_t base;
    char name[64];
} failed_objs[FAILED_MAX];
static unsigned nfailed_objs, nlate;
static char late_note[512]; /* got_late_note: the last library loaded after the attach that failed */
static atomic_int late_set;

static const char *obj_base(const char *name)
{
    const char *b = strrchr(name, '/');
    return b ? b + 1 : name;
}

/* An object of w had n entries that could not be patched: remember it; a new one found by a late scan
 * becomes the late note (one line: the library and why). */
static void failed_object(struct walk *w, unsigned n)
{
    const char *name = obj_base(w->info->dlpi_name ? w->info->dlpi_name : "");
    for (unsigned i = 0; i < nfailed_objs; i++)
        if (failed_objs[i].base == w->base && !strncmp(failed_objs[i].name, name, sizeof failed_objs[i].name - 1))
            return;
    if (nfailed_objs < FAILED_MAX) {
        failed_objs[nfailed_objs].base = w->base;
        snprintf(failed_objs[nfailed_objs++].name, sizeof failed_objs[0].name, "%s", name);
    }
    if (!w->late) return;
    nlate++;
    snprintf(late_note, sizeof late_note,
             "native: %s, loaded after the attach: %u allocation entr%s could not be patched (its read-only GOT: "
             "%s%s): what it allocates is not seen%s; Python allocations are tracked",
             name[0] ? name : "a library", n, n == 1 ? "y" : "ies", w->obj_errno ? "mprotect: " : "",
             w->obj_errno ? strerror(w->obj_errno) : "the patch table is full",
             nlate > 1 ? " (nor what the other libraries loaded since and not patched allocate)" : "");
    atomic_store(&late_set, 1);
    agent_log("%s", late_note);
}

static int copy_late_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)info, (void)size;
    snprintf(arg, sizeof late_note, "%s", late_note);
    return 1;
}

int got_late_note(char *buf, size_t len)
{
    char copy[sizeof late_note];
    if (!atomic_load(&late_set)) return 0;
    dl_iterate_phdr(copy_late_cb, copy); /* under the loader's lock, as the writers */
    snprintf(buf, len, "%s", copy);
    return buf[0] != 0;
}

static int walk_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    struct walk *w = arg;
    const ElfW(Dyn) *dyn = NULL;
    uintptr_t jmprel = 0, rela = 0, rel = 0;
    size_t pltrelsz = 0, relasz = 0, relsz = 0;
    long pltrel = 0, ps = sysconf(_SC_PAGESIZE);
    unsigned failed0;
    (void)size;
    /* A scan that waited for the loader lock while uninstall restored the
     * entries must not patch them again: patching is cleared before the restore,
     * which holds the same lock. */
    if (!w->restore && !atomic_load(&patching)) return 1;
    w->kind = got_classify(info);
    if (w->kind == GOT_SKIP || w->kind == GOT_SELF) return 0;
    w->base = info->dlpi_addr;
    w->info = info;
    w->relro_lo = w->relro_hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)(w->base + ph->p_vaddr);
        if (ph->p_type == PT_GNU_RELRO) {
            w->relro_lo = (w->base + ph->p_vaddr) & ~(uintptr_t)(ps - 1);
            w->relro_hi = (w->base + ph->p_vaddr + ph->p_memsz) & ~(uintptr_t)(ps - 1);
        }
    }
    if (!dyn) return 0;
    /* dl_iterate_phdr lists an object dlopen (another thread's) has added but not finished relocating:
     * its RELRO pages are still writable then. Making one read-only under the loader's feet would crash
     * it; the object is left for a later scan (agent tick) instead. */
    if (w->relro_hi > w->relro_lo && relocating(info, w->relro_lo)) {
        w->unready++;
        return 0;
    }
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_SYMTAB: w->symtab = (const ElfW(Sym) *)dyn_ptr(w, dyn->d_un.d_ptr); break;
        case DT_STRTAB: w->strtab = (const char *)dyn_ptr(w, dyn->d_un.d_ptr); break;
        case DT_JMPREL: jmprel = dyn_ptr(w, dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
        case DT_PLTREL: pltrel = (long)dyn->d_un.d_val; break;
        case DT_RELA: rela = dyn_ptr(w, dyn->d_un.d_ptr); break;
        case DT_RELASZ: relasz = dyn->d_un.d_val; break;
        case DT_REL: rel = dyn_ptr(w, dyn->d_un.d_ptr); break;
        case DT_RELSZ: relsz = dyn->d_un.d_val; break;
        }
    }
    if (!w->symtab || !w->strtab) return 0;
    failed0 = w->failed;
    w->obj_errno = 0;
    if (jmprel && pltrel == DT_RELA)
        for (size_t i = 0; i < pltrelsz / sizeof(ElfW(Rela)); i++) {
            const ElfW(Rela) *r = (const ElfW(Rela) *)jmprel + i;
            one_reloc(w, r->r_offset, r->r_info);
        }
    if (jmprel && pltrel == DT_REL)
        for (size_t i = 0; i < pltrelsz / sizeof(ElfW(Rel)); i++) {
            const ElfW(Rel) *r = (const ElfW(Rel) *)jmprel + i;
            one_reloc(w, r->r_offset, r->r_info);
        }
    for (size_t i = 0; rela && i < relasz / sizeof(ElfW(Rela)); i++) {
        const ElfW(Rela) *r = (const ElfW(Rela) *)rela + i;
        one_reloc(w, r->r_offset, r->r_info);
    }
    for (size_t i = 0; rel && i < relsz / sizeof(ElfW(Rel)); i++) {
        const ElfW(Rel) *r = (const ElfW(Rel) *)rel + i;
        one_reloc(w, r->r_offset, r->r_info);
    }
    if (!w->restore && w->failed > failed0) failed_object(w, w->failed - failed0);
    return 0;
}

static unsigned long long seen_adds; /* dlpi_adds at the last scan */

static int adds_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    *(unsigned long long *)arg = info->dlpi_adds;
    return 1;
}

static char note[512]; /* got_note: the first problem seen */

void got_scan(int late)
{
    struct walk w;
    unsigned long long adds = 0;
    memset(&w, 0, sizeof w);
    w.late = late;
    dl_iterate_phdr(adds_cb, &adds);
    dl_iterate_phdr(walk_cb, &w);
    seen_adds = w.unready ? adds - 1 : adds; /* an object still being loaded: scan again at the next tick */
    __atomic_add_fetch(&npatched, w.patched, __ATOMIC_RELAXED);
    if (w.failed && !late) {
        const char *obj = w.fail_obj && w.fail_obj[0] ? w.fail_obj : "a library", *base = strrchr(obj, '/');
        agent_log("native: %u GOT entries could not be patched", w.failed);
        if (!note[0]) /* the objects that failed at the attach */
            snprintf(note, sizeof note,
                     "native: %u allocation entr%s of %s%s could not be patched (its read-only GOT: mprotect: %s): "
                     "what it allocates is not seen; Python allocations are tracked",
                     w.failed, w.failed == 1 ? "y" : "ies", base ? base + 1 : obj, w.failed > 1 ? " and others" : "",
                     w.fail_errno ? strerror(w.fail_errno) : "table full");
    }
    if (w.foreign) agent_log("native: %u GOT entries already point elsewhere (another tool's hooks?): left alone", w.foreign);
    if (!late && !npatched && !note[0])
        snprintf(note, sizeof note, "native: no loaded library calls malloc or dlopen through a GOT this agent can "
                                    "patch (statically linked?): only Python allocations are tracked");
}


const char *got_note(void) { return note; }
unsigned got_patched(void) { return __atomic_load_n(&npatched, __ATOMIC_RELAXED); }

int got_init(struct got_hook *table, size_t n, char *err)
{
    Dl_info self;
    if (dladdr((void *)got_init, &self)) {
        self_base = (uintptr_t)self.dli_fbase;
        self_name = self.dli_fname;
    }
    if (!recs) {
        void *m = mmap(NULL, REC_SLOTS * sizeof *recs, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            mp_err(err, "native: no memory for the patch table");
            return -1;
        }
        recs = m;
    }
    hooks = table;
    nhooks = n;
    table_fill();
    /* a previous session's notes (the agent stayed loaded) are not this one's */
    note[0] = 0;
    nfailed_objs = nlate = 0;
    atomic_store(&late_set, 0);
    atomic_store(&patching, 1);
    return 0;
}

void got_rescan(void)
{
    unsigned long long adds = 0;
    dl_iterate_phdr(adds_cb, &adds);
    if (adds != seen_adds) got_scan(1);
}

unsigned got_restore(void)
{
    struct walk w;
    atomic_store(&patching, 0);
    memset(&w, 0, sizeof w);
    w.restore = 1;
    dl_iterate_phdr(walk_cb, &w);
    agent_log("native: %u GOT entries restored%s", w.restored, w.failed ? " (some could not be written)" : "");
    return w.failed;
}
