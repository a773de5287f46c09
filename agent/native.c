/* native.c -- native allocations: the GOT/PLT entries of loaded libraries for
 * malloc, free, mmap & co. point at hooks here, which sample by bytes (the same
 * Poisson sampler and weights as the PyMem hooks) into hooks.c's tables.
 *
 * Which objects: every one dl_iterate_phdr lists but libc and ld.so (their
 * calls are the originals), the vdso, this agent (its calls reach the
 * originals: that is how the hooks call them) and the Python executable or
 * libpython: CPython's own malloc calls serve its RAW domain, which the PyMem
 * hooks count already. Of those only dlopen is patched, so that extension
 * modules imported later are patched as they load.
 *
 * Which entries: JUMP_SLOT and GLOB_DAT relocations (DT_JMPREL, DT_RELA,
 * DT_REL) of an undefined symbol named as a hook, whose value is libc's
 * function, the global definition (dlsym RTLD_DEFAULT: an LD_PRELOAD'd
 * allocator), the address this agent takes (a non-PIE executable's PLT stub)
 * or still a lazy-binding stub inside the object: another tool's hook is left
 * alone. The hooks call what this agent's own calls reach. RELRO pages are made writable for the
 * store and read-only again. Every (address, original) is kept; uninstall
 * walks the objects still loaded and puts back each entry that still holds a
 * hook (an object unloaded meanwhile is never written to).
 *
 * The dlopen hook searches a bare name as its caller would (dlopen_as) and
 * patches what got loaded. A library loaded otherwise (dlmopen, a dlsym'd
 * dlopen) is patched by native_rescan (agent tick): what it allocated before
 * is not seen. An object whose entries could not be written is told once:
 * at the attach in native_note (the TrackingConfig reply), loaded later in
 * native_late_note (sent with every AllocReport from then on).
 *
 * Concurrency: patching runs inside dl_iterate_phdr callbacks, which the
 * loader lock serializes. The hooks' fast paths count bytes down in a
 * thread-local and call the original; the slow paths (sample, free of a
 * sampled block) are counted in `inflight` so uninstall can wait for them.
 *
 * Native frames (--native-frames): a sampled allocation's native call chain is
 * unwound with libgcc's _Unwind_Backtrace (the .eh_frame CFI every Debian
 * object carries; frame pointers are not kept by Debian's python3.11 or numpy,
 * so walking them would give wrong chains). libgcc_s is loaded when asked for.
 * The chain starts at the hooked call's caller and ends at the first frame in
 * the Python executable or libpython (the Python frames take over there), or
 * after MAX_NATIVE frames. Only raw return addresses: the daemon names them. */
#include "native.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <unwind.h>

#include "agent.h"
#include "hooks.h"
#include "util.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

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

static __thread int64_t countdown;
static __thread int started; /* the thread has drawn its first gap (hit) */
static atomic_int active;    /* sampling (else the hooks only pass through) */
static atomic_int inflight;
static int installed;
static unsigned npatched;

/* ------------------------------------------------------------ native frames */

typedef _Unwind_Reason_Code (*backtrace_fn)(_Unwind_Trace_Fn, void *);
typedef uintptr_t (*getip_fn)(struct _Unwind_Context *);
static backtrace_fn unwind_backtrace; /* non-NULL: native frames on */
static getip_fn unwind_getip;
static uintptr_t self_lo, self_hi;    /* this agent's text: its frames are skipped */
#define MAX_INTERP 4
static uintptr_t interp_lo[MAX_INTERP], interp_hi[MAX_INTERP]; /* the executable, libpython */
static int ninterp;

struct unwind_state {
    uint64_t *pcs;
    int n, max;
};

static int in_interp(uintptr_t pc)
{
    for (int i = 0; i < ninterp; i++)
        if (pc >= interp_lo[i] && pc < interp_hi[i]) return 1;
    return 0;
}

static _Unwind_Reason_Code unwind_one(struct _Unwind_Context *ctx, void *arg)
{
    struct unwind_state *u = arg;
    uintptr_t pc = unwind_getip(ctx);
    if (!pc) return _URC_END_OF_STACK;
    if (pc >= self_lo && pc < self_hi) return _URC_NO_REASON; /* the hook and its callees */
    if (in_interp(pc)) return _URC_END_OF_STACK;
    u->pcs[u->n++] = pc;
    return u->n < u->max ? _URC_NO_REASON : _URC_END_OF_STACK;
}

int native_unwind(uint64_t *pcs, int max)
{
    struct unwind_state u = {pcs, 0, max};
    if (!unwind_backtrace || max <= 0) return 0;
    unwind_backtrace(unwind_one, &u);
    return u.n;
}

/* The address range of an object's PT_LOAD segments. */
static void load_range(const struct dl_phdr_info *info, uintptr_t *lo, uintptr_t *hi)
{
    *lo = UINTPTR_MAX, *hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD) continue;
        if (info->dlpi_addr + ph->p_vaddr < *lo) *lo = info->dlpi_addr + ph->p_vaddr;
        if (info->dlpi_addr + ph->p_vaddr + ph->p_memsz > *hi) *hi = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
    }
}

int native_frames_enable(char *err)
{
    void *h = dlopen("libgcc_s.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!h) h = dlopen("libgcc_s.so.1", RTLD_NOW);
    if (!h || !(unwind_getip = (getip_fn)dlsym(h, "_Unwind_GetIP"))) {
        mp_err(err, "native frames off: no unwinder (libgcc_s.so.1: %s)", h ? "no _Unwind_GetIP" : dlerror());
        return -1;
    }
    unwind_backtrace = (backtrace_fn)dlsym(h, "_Unwind_Backtrace");
    if (!unwind_backtrace) {
        mp_err(err, "native frames off: no _Unwind_Backtrace in libgcc_s.so.1");
        return -1;
    }
    return 0; /* libgcc_s stays loaded (this handle is never closed) */
}

/* ------------------------------------------------------------ the hooks */

/* A countdown hit for p of size bytes: sample it, draw the next gap. A
 * thread's first call finds the countdown at 0: it draws its first gap and
 * samples only if this allocation reaches it (as if the gap had been drawn
 * before; dropping the first hit would miss, say, a thread's first 10 MB array). */
static void hit(void *p, size_t size)
{
    if (!started) {
        started = 1;
        countdown = hooks_next_gap() - (int64_t)size;
        if (countdown > 0) return;
    }
    countdown = hooks_next_gap();
    if (p && atomic_load_explicit(&active, memory_order_relaxed)) hooks_native_alloc(p, size);
}

#define COUNT(size) likely((countdown -= (int64_t)(size)) > 0)
#define ENTER() atomic_fetch_add_explicit(&inflight, 1, memory_order_acquire)
#define LEAVE() atomic_fetch_sub_explicit(&inflight, 1, memory_order_release)

static void forget(const void *p)
{
    if (atomic_load_explicit(&active, memory_order_relaxed)) hooks_native_free(p);
}

static __attribute__((noinline)) void *malloc_slow(size_t n)
{
    void *p;
    ENTER();
    p = malloc(n);
    hit(p, n);
    LEAVE();
    return p;
}
static void *h_malloc(size_t n)
{
    if (COUNT(n)) return malloc(n);
    return malloc_slow(n);
}

static __attribute__((noinline)) void *calloc_slow(size_t n, size_t e)
{
    void *p;
    ENTER();
    p = calloc(n, e);
    hit(p, n * e);
    LEAVE();
    return p;
}
static void *h_calloc(size_t n, size_t e)
{
    size_t size;
    if (__builtin_mul_overflow(n, e, &size) || COUNT(size)) return calloc(n, e);
    return calloc_slow(n, e);
}

/* The old block is forgotten before the call: once realloc returns, its
 * address may already be another thread's. If realloc fails the old block
 * lives on unaccounted (out of memory: rare, and only an estimate is lost). */
static __attribute__((noinline)) void *realloc_slow(void *old, size_t n, int due)
{
    void *p;
    ENTER();
    if (old && hooks_maybe_sampled(old)) forget(old);
    p = realloc(old, n);
    if (due) hit(p, n);
    LEAVE();
    return p;
}
static void *h_realloc(void *old, size_t n)
{
    int more = COUNT(n);
    if (likely(more && (!old || !hooks_maybe_sampled(old)))) return realloc(old, n);
    return realloc_slow(old, n, !more);
}

static void *h_reallocarray(void *old, size_t n, size_t e)
{
    size_t size;
    if (__builtin_mul_overflow(n, e, &size)) {
        errno = ENOMEM;
        return NULL;
    }
    return h_realloc(old, size);
}

static __attribute__((noinline)) void free_slow(void *p)
{
    ENTER();
    forget(p);
    free(p);
    LEAVE();
}
static void h_free(void *p)
{
    if (likely(!p || !hooks_maybe_sampled(p))) {
        free(p);
        return;
    }
    free_slow(p);
}

static __attribute__((noinline)) int posix_memalign_slow(void **pp, size_t a, size_t n)
{
    int rc;
    ENTER();
    rc = posix_memalign(pp, a, n);
    hit(rc ? NULL : *pp, n);
    LEAVE();
    return rc;
}
static int h_posix_memalign(void **pp, size_t a, size_t n)
{
    if (COUNT(n)) return posix_memalign(pp, a, n);
    return posix_memalign_slow(pp, a, n);
}

/* aligned_alloc, memalign, valloc, pvalloc: one shape */
enum { AL_ALIGNED, AL_MEMALIGN, AL_VALLOC, AL_PVALLOC };
static void *al_call(int kind, size_t a, size_t n)
{
    switch (kind) {
    case AL_ALIGNED: return aligned_alloc(a, n);
    case AL_MEMALIGN: return memalign(a, n);
    case AL_VALLOC: return valloc(n);
    default: return pvalloc(n);
    }
}
static __attribute__((noinline)) void *al_slow(int kind, size_t a, size_t n)
{
    void *p;
    ENTER();
    p = al_call(kind, a, n);
    hit(p, n);
    LEAVE();
    return p;
}
static void *h_aligned_alloc(size_t a, size_t n) { return COUNT(n) ? aligned_alloc(a, n) : al_slow(AL_ALIGNED, a, n); }
static void *h_memalign(size_t a, size_t n) { return COUNT(n) ? memalign(a, n) : al_slow(AL_MEMALIGN, a, n); }
static void *h_valloc(size_t n) { return COUNT(n) ? valloc(n) : al_slow(AL_VALLOC, 0, n); }
static void *h_pvalloc(size_t n) { return COUNT(n) ? pvalloc(n) : al_slow(AL_PVALLOC, 0, n); }

/* Anonymous mappings only: a file mapping is the file's pages, not a heap.
 * A munmap of a sampled mapping's start forgets all of it (a partial unmap
 * is rare). The slow paths never allocate: mmap stays async-signal-safe
 * (hooks_native_alloc is reentrancy-guarded and takes a spinlock only with
 * the guard set, so a signal handler on the same thread passes through). */
static __attribute__((noinline)) void *mmap_slow(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *p;
    ENTER();
    p = mmap(addr, len, prot, flags, fd, off);
    hit(p == MAP_FAILED ? NULL : p, len);
    LEAVE();
    return p;
}
static void *h_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!(flags & MAP_ANONYMOUS) || COUNT(len)) return mmap(addr, len, prot, flags, fd, off);
    return mmap_slow(addr, len, prot, flags, fd, off);
}

static __attribute__((noinline)) int munmap_slow(void *addr, size_t len)
{
    int rc;
    ENTER();
    forget(addr);
    rc = munmap(addr, len);
    LEAVE();
    return rc;
}
static int h_munmap(void *addr, size_t len)
{
    if (likely(!hooks_maybe_sampled(addr))) return munmap(addr, len);
    return munmap_slow(addr, len);
}

static void *h_mremap(void *old, size_t olen, size_t nlen, int flags, ...)
{
    void *naddr = NULL, *p;
    int more = COUNT(nlen), tracked = hooks_maybe_sampled(old);
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        naddr = va_arg(ap, void *);
        va_end(ap);
    }
    if (likely(more && !tracked)) return mremap(old, olen, nlen, flags, naddr);
    ENTER();
    if (tracked) forget(old);
    p = mremap(old, olen, nlen, flags, naddr);
    if (!more) hit(p == MAP_FAILED ? NULL : p, nlen);
    LEAVE();
    return p;
}

static void scan_all(int late);

/* dlopen as the caller would have: ld.so searches a bare name with the
 * caller's DT_RPATH/DT_RUNPATH (and $ORIGIN), and a call from here would use
 * this agent's. An object already loaded is found by name as before; else the
 * caller's search path (dlinfo RTLD_DI_SERINFO on its link map) is tried in
 * order, then dlopen's own (ld.so.cache, default directories). */
static void *dlopen_as(const char *file, int mode, const void *caller)
{
    Dl_info di;
    struct link_map *lm = NULL;
    Dl_serinfo size, *si;
    void *h;
    if (!file || strchr(file, '/')) return dlopen(file, mode);
    if ((h = dlopen(file, (mode & ~RTLD_NOLOAD) | RTLD_NOLOAD)) != NULL) {
        dlclose(h);
        return dlopen(file, mode);
    }
    if (!dladdr1(caller, &di, (void **)&lm, RTLD_DL_LINKMAP) || !lm || dlinfo(lm, RTLD_DI_SERINFOSIZE, &size) != 0)
        return dlopen(file, mode);
    si = malloc(size.dls_size);
    if (!si) return dlopen(file, mode);
    memcpy(si, &size, sizeof size); /* dls_size and dls_cnt, as dlinfo wants them */
    if (dlinfo(lm, RTLD_DI_SERINFO, si) == 0) {
        for (unsigned i = 0; i < si->dls_cnt; i++) {
            char path[4096];
            if (snprintf(path, sizeof path, "%s/%s", si->dls_serpath[i].dls_name, file) >= (int)sizeof path ||
                access(path, F_OK) != 0)
                continue;
            if ((h = dlopen(path, mode)) != NULL) break;
        }
    }
    free(si);
    return h ? h : dlopen(file, mode);
}

static void *h_dlopen(const char *file, int mode)
{
    void *h;
    ENTER();
    h = dlopen_as(file, mode, __builtin_return_address(0));
    if (h && atomic_load(&active)) scan_all(1);
    LEAVE();
    return h;
}

/* ------------------------------------------------------------ the table of hooks */

struct hook {
    const char *name;
    void *hook;
    void *real; /* the address this agent's code takes (a non-PIE executable's PLT stub, maybe) */
    void *def;  /* dlsym(RTLD_DEFAULT): the definition (an LD_PRELOAD'd allocator's, maybe) */
    void *libc; /* libc's own */
};
static struct hook hooks[] = {
    {.name = "malloc", .hook = (void *)h_malloc},
    {.name = "calloc", .hook = (void *)h_calloc},
    {.name = "realloc", .hook = (void *)h_realloc},
    {.name = "reallocarray", .hook = (void *)h_reallocarray},
    {.name = "free", .hook = (void *)h_free},
    {.name = "posix_memalign", .hook = (void *)h_posix_memalign},
    {.name = "aligned_alloc", .hook = (void *)h_aligned_alloc},
    {.name = "memalign", .hook = (void *)h_memalign},
    {.name = "valloc", .hook = (void *)h_valloc},
    {.name = "pvalloc", .hook = (void *)h_pvalloc},
    {.name = "mmap", .hook = (void *)h_mmap},
    {.name = "mmap64", .hook = (void *)h_mmap}, /* LP64: the same function as mmap */
    {.name = "munmap", .hook = (void *)h_munmap},
    {.name = "mremap", .hook = (void *)h_mremap},
    {.name = "dlopen", .hook = (void *)h_dlopen},
};
#define NHOOKS (sizeof hooks / sizeof hooks[0])
#define HOOK_DLOPEN (NHOOKS - 1)

static void hooks_fill(void)
{
    void *r[NHOOKS] = {(void *)malloc, (void *)calloc, (void *)realloc, (void *)reallocarray, (void *)free,
                       (void *)posix_memalign, (void *)aligned_alloc, (void *)memalign, (void *)valloc,
                       (void *)pvalloc, (void *)mmap, (void *)mmap, (void *)munmap, (void *)mremap,
                       (void *)dlopen};
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    for (size_t i = 0; i < NHOOKS; i++) {
        hooks[i].real = r[i];
        hooks[i].def = dlsym(RTLD_DEFAULT, hooks[i].name);
        hooks[i].libc = libc ? dlsym(libc, hooks[i].name) : NULL;
        if (!hooks[i].def) hooks[i].def = r[i];
        if (!hooks[i].libc) hooks[i].libc = r[i];
    }
    if (libc) dlclose(libc);
}

static int hook_of_name(const char *name)
{
    for (size_t i = 0; i < NHOOKS; i++)
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

enum { OBJ_SKIP, OBJ_DLOPEN_ONLY, OBJ_ALL };

static uintptr_t self_base;
static const char *self_name;

static int classify(const struct dl_phdr_info *info)
{
    const char *name = info->dlpi_name ? info->dlpi_name : "", *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (info->dlpi_addr == self_base || (self_name && !strcmp(name, self_name))) return OBJ_SKIP;
    if (!strncmp(base, "linux-vdso", 10) || !strncmp(base, "linux-gate", 10)) return OBJ_SKIP;
    if (!strncmp(base, "libc.so", 7) || !strncmp(base, "libc-", 5) || !strncmp(base, "ld-linux", 8) ||
        !strncmp(base, "ld-", 3) || !strncmp(base, "ld64", 4))
        return OBJ_SKIP;
    if (!name[0] || !strncmp(base, "libpython", 9)) return OBJ_DLOPEN_ONLY; /* the executable, libpython */
    return OBJ_ALL;
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
    int late;      /* a scan after native_install's: a new failure is told as a late note */
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

static int got_write(struct walk *w, uintptr_t addr, uintptr_t val)
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
        if (got_write(w, addr, r ? r->orig : (uintptr_t)hooks[h].real) == 0) w->restored++;
        else w->failed++;
        return;
    }
    if (w->kind == OBJ_DLOPEN_ONLY && h != (int)HOOK_DLOPEN) return;
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
    if (got_write(w, addr, (uintptr_t)hooks[h].hook) == 0) {
        w->patched++;
        w->allocs += h != (int)HOOK_DLOPEN;
    } else {
        w->failed++;
    }
}

static int ranges_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    uintptr_t lo, hi;
    int kind = classify(info);
    (void)size, (void)arg;
    load_range(info, &lo, &hi);
    if (info->dlpi_addr == self_base) self_lo = lo, self_hi = hi;
    else if (kind == OBJ_DLOPEN_ONLY && ninterp < MAX_INTERP) interp_lo[ninterp] = lo, interp_hi[ninterp++] = hi;
    return 0;
}

/* Whether the page at addr is writable now, from /proc/self/maps (-1: not found). Under the loader's
 * lock (dl_iterate_phdr): the static buffer is not shared. No allocation. */
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
static char late_note[512]; /* native_late_note: the last library loaded after the attach that failed */
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

int native_late_note(char *buf, size_t len)
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
     * entries must not patch them again: active is cleared before the restore,
     * which holds the same lock. */
    if (!w->restore && !atomic_load(&active)) return 1;
    w->kind = classify(info);
    if (w->kind == OBJ_SKIP) return 0;
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

static char note[512]; /* native_note: the first problem seen */

static void scan_all(int late)
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
}

const char *native_note(void) { return note; }

/* ------------------------------------------------------------ install / remove */

int native_installed(void) { return installed; }
void native_atfork_child(void) { atomic_store(&inflight, 0); }
unsigned native_patched(void) { return npatched; }

int native_install(char *err)
{
    Dl_info self;
    if (installed) return 0;
    if (hooks_native_ready(err) < 0) return -1;
    if (dladdr((void *)native_install, &self)) {
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
    hooks_fill();
    /* a previous session's notes (the agent stayed loaded) are not this one's */
    note[0] = 0;
    nfailed_objs = nlate = 0;
    atomic_store(&late_set, 0);
    ninterp = 0;
    dl_iterate_phdr(ranges_cb, NULL);
    atomic_store(&active, 1);
    installed = 1;
    scan_all(0);
    agent_log("native: %u GOT entries patched%s", npatched, unwind_backtrace ? ", native frames on" : "");
    if (!npatched && !note[0])
        snprintf(note, sizeof note, "native: no loaded library calls malloc or dlopen through a GOT this agent can "
                                    "patch (statically linked?): only Python allocations are tracked");
    return 0;
}

void native_rescan(void)
{
    unsigned long long adds = 0;
    if (!installed) return;
    dl_iterate_phdr(adds_cb, &adds);
    if (adds != seen_adds) scan_all(1);
}

int native_uninstall(void)
{
    struct walk w;
    if (!installed) return 0;
    atomic_store(&active, 0);
    memset(&w, 0, sizeof w);
    w.restore = 1;
    dl_iterate_phdr(walk_cb, &w);
    installed = 0;
    agent_log("native: %u GOT entries restored%s", w.restored, w.failed ? " (some could not be written)" : "");
    if (hooks_quiesce(&inflight) < 0) return -1; /* the slow paths, then the fast paths' grace period */
    return w.failed ? -1 : 0;
}
