/* native.c -- native allocations: hooks for malloc, free, mmap & co., which
 * sample by bytes (the same Poisson sampler and weights as the PyMem hooks)
 * into the recorder (track.c), passing their unwound native frames in. got.c
 * points the GOT/PLT entries of loaded libraries at them.
 *
 * Which objects (got.c): every loaded one but libc and ld.so, the vdso, this
 * agent and the Python executable or libpython: CPython's own malloc calls
 * serve its RAW domain, which the PyMem hooks count already. Of those only
 * dlopen is patched, so that extension modules imported later are patched as
 * they load.
 *
 * The dlopen hook searches a bare name as its caller would (dlopen_as) and
 * patches what got loaded. A library loaded otherwise (dlmopen, a dlsym'd
 * dlopen) is patched by native_rescan (agent tick): what it allocated before
 * is not seen. An object whose entries could not be written is told once:
 * at the attach in native_note (the TrackingConfig reply), loaded later in
 * native_late_note (sent with every AllocReport from then on).
 *
 * Concurrency: the hooks' fast paths count bytes down in a
 * thread-local and call the original; the slow paths (sample, free of a
 * sampled block) are counted in `inflight` so uninstall can wait for them.
 *
 * Native frames (--native-frames): a sampled allocation's native call chain is
 * unwound with libgcc's _Unwind_Backtrace (the .eh_frame CFI every Debian
 * object carries; frame pointers are not kept by Debian's python3.11 or numpy,
 * so walking them would give wrong chains). libgcc_s is loaded when asked for.
 * The chain starts at the hooked call's caller and ends at the first frame in
 * the Python executable or libpython (the Python frames take over there), or
 * after TRACK_MAX_NATIVE frames. Only raw return addresses: the daemon names them. */
#include "agent/native.h"

#include <dlfcn.h>
#include <errno.h>
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

#include "agent/got.h"
#include "agent/log.h"
#include "agent/track.h"
#include "common/util.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

static __thread int64_t countdown;
static __thread int started; /* the thread has drawn its first gap (hit) */
static atomic_int active;    /* sampling (else the hooks only pass through) */
static atomic_int inflight;
static int installed;

/* ------------------------------------------------------------ native frames */

typedef _Unwind_Reason_Code (*backtrace_fn)(_Unwind_Trace_Fn, void *);
typedef uintptr_t (*getip_fn)(struct _Unwind_Context *);
static backtrace_fn unwind_backtrace; /* non-NULL: native frames on */
static getip_fn unwind_getip;
static uintptr_t self_base, self_lo, self_hi; /* this agent's text: its frames are skipped */
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

/* The calling thread's native return addresses from the hooked call's caller
 * outwards, up to the first frame inside the Python interpreter (its frames
 * are the Python stack) or max; how many. 0 when native frames are off. With
 * the recorder's guard set (the unwinder may allocate). */
static int unwind(uint64_t *pcs, int max)
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
static void record(void *p, size_t size)
{
    uint64_t pcs[TRACK_MAX_NATIVE];
    int npcs;
    if (!track_enter()) return;
    npcs = unwind(pcs, TRACK_MAX_NATIVE); /* first: the hook's frames are the innermost */
    track_native_alloc(p, size, pcs, npcs);
    track_leave();
}

static void hit(void *p, size_t size)
{
    if (!started) {
        started = 1;
        countdown = track_next_gap() - (int64_t)size;
        if (countdown > 0) return;
    }
    countdown = track_next_gap();
    if (p && atomic_load_explicit(&active, memory_order_relaxed)) record(p, size);
}

#define COUNT(size) likely((countdown -= (int64_t)(size)) > 0)
#define ENTER() atomic_fetch_add_explicit(&inflight, 1, memory_order_acquire)
#define LEAVE() atomic_fetch_sub_explicit(&inflight, 1, memory_order_release)

static void forget(const void *p)
{
    if (atomic_load_explicit(&active, memory_order_relaxed)) track_native_free(p);
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
    if (old && track_maybe_sampled(old)) forget(old);
    p = realloc(old, n);
    if (due) hit(p, n);
    LEAVE();
    return p;
}
static void *h_realloc(void *old, size_t n)
{
    int more = COUNT(n);
    if (likely(more && (!old || !track_maybe_sampled(old)))) return realloc(old, n);
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
    if (likely(!p || !track_maybe_sampled(p))) {
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
 * (the recorder is entered reentrancy-guarded and takes a spinlock only with
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
    if (likely(!track_maybe_sampled(addr))) return munmap(addr, len);
    return munmap_slow(addr, len);
}

static void *h_mremap(void *old, size_t olen, size_t nlen, int flags, ...)
{
    void *naddr = NULL, *p;
    int more = COUNT(nlen), tracked = track_maybe_sampled(old);
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
    if (h && atomic_load(&active)) got_scan(1);
    LEAVE();
    return h;
}

/* ------------------------------------------------------------ the table of hooks */

/* One row per hooked function: its name, the hook, the function this agent's own calls reach (what
 * the hook calls), and whether it is the loader's (patched in the interpreter's objects too). */
#define NATIVE_HOOKS(X)                                                                                   \
    X(malloc, h_malloc, malloc, 0)                                                                        \
    X(calloc, h_calloc, calloc, 0)                                                                        \
    X(realloc, h_realloc, realloc, 0)                                                                     \
    X(reallocarray, h_reallocarray, reallocarray, 0)                                                      \
    X(free, h_free, free, 0)                                                                              \
    X(posix_memalign, h_posix_memalign, posix_memalign, 0)                                                \
    X(aligned_alloc, h_aligned_alloc, aligned_alloc, 0)                                                   \
    X(memalign, h_memalign, memalign, 0)                                                                  \
    X(valloc, h_valloc, valloc, 0)                                                                        \
    X(pvalloc, h_pvalloc, pvalloc, 0)                                                                     \
    X(mmap, h_mmap, mmap, 0)                                                                              \
    X(mmap64, h_mmap, mmap, 0) /* LP64: the same function as mmap */                                      \
    X(munmap, h_munmap, munmap, 0)                                                                        \
    X(mremap, h_mremap, mremap, 0)                                                                        \
    X(dlopen, h_dlopen, dlopen, 1)

static struct got_hook hooks[] = {
#define X(name, hook, real, loader) {#name, (void *)hook, (void *)real, loader, NULL, NULL},
    NATIVE_HOOKS(X)
#undef X
};

/* ------------------------------------------------------------ install / remove */

/* This agent's text and the interpreter's objects, for the unwinder. */
static int ranges_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
    uintptr_t lo, hi;
    int kind = got_classify(info);
    (void)size, (void)arg;
    load_range(info, &lo, &hi);
    if (info->dlpi_addr == self_base) self_lo = lo, self_hi = hi;
    else if (kind == GOT_LOADER && ninterp < MAX_INTERP) interp_lo[ninterp] = lo, interp_hi[ninterp++] = hi;
    return 0;
}

int native_installed(void) { return installed; }
void native_atfork_child(void) { atomic_store(&inflight, 0); }
const char *native_note(void) { return got_note(); }
int native_late_note(char *buf, size_t len) { return got_late_note(buf, len); }

int native_install(char *err)
{
    Dl_info self;
    if (installed) return 0;
    if (track_native_ready(err) < 0) return -1;
    if (dladdr((void *)native_install, &self)) self_base = (uintptr_t)self.dli_fbase;
    if (got_init(hooks, sizeof hooks / sizeof hooks[0], err) < 0) return -1;
    ninterp = 0;
    dl_iterate_phdr(ranges_cb, NULL);
    atomic_store(&active, 1);
    installed = 1;
    got_scan(0);
    agent_log("native: %u GOT entries patched%s", got_patched(), unwind_backtrace ? ", native frames on" : "");
    return 0;
}

void native_rescan(void)
{
    if (installed) got_rescan();
}

int native_uninstall(void)
{
    unsigned failed;
    if (!installed) return 0;
    atomic_store(&active, 0);
    failed = got_restore();
    installed = 0;
    if (track_quiesce(&inflight) < 0) return -1; /* the slow paths, then the fast paths' grace period */
    return failed ? -1 : 0;
}
