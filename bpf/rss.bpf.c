/* rss.bpf.c -- memprof rss in the kernel: one process's page faults, mmap/munmap/mremap/brk and rss_stat.
 * Sampled faults and the mappings go into a ring buffer with the user stack and (CPython 3.11+) the Python
 * frames. GPL: the kernel lends its tracing helpers only to GPL-compatible programs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "rss.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct rss_cfg cfg = {};

/* Read by memprof rss (bss): */
__u64 faults_seen;          /* every page fault of the target */
__u64 events_lost;          /* ring buffer full */
__u64 rss[RSS_NMEMBERS];    /* bytes per rss_stat member, as last reported */
__u64 rss_seen[RSS_NMEMBERS]; /* 1: rss[m] holds a value */
__u32 mm_id;                /* the target's mm (rss_stat's hashed id), once seen */
__u32 mm_known;

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 8 << 20);
} events SEC(".maps");

struct sys_args {
    __u64 a0, a1, a2;
};
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct sys_args);
} inflight SEC(".maps");

static __always_inline int is_target(__u32 *tid)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct bpf_pidns_info ns;
    *tid = (__u32)id;
    if (!cfg.matchns_ino) return (id >> 32) == cfg.tgid;
    /* the helper answers only for a task's own pid namespace: the target's, with its pid there */
    return !bpf_get_ns_current_pid_tgid(cfg.matchns_dev, cfg.matchns_ino, &ns, sizeof ns) && ns.tgid == cfg.ns_tgid;
}

static __always_inline __u64 rd(__u64 addr)
{
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof v, (void *)addr);
    return v;
}

/* The event is built here (too big for the BPF stack), then copied into the ring buffer. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rss_event);
} scratch SEC(".maps");

/* The Python walk runs in bpf_loop callbacks: the verifier checks each once, whatever the count. */
struct walk {
    __u64 ts, found, frame;
    __u32 tid, n;
};

/* The faulting thread's PyThreadState: the interpreter's thread list, matched by native thread id. */
static long thread_step(__u32 i, void *c)
{
    struct walk *w = c;
    if (!w->ts) return 1;
    if ((__u32)rd(w->ts + cfg.ts_native_tid) == w->tid) {
        w->found = w->ts;
        return 1;
    }
    w->ts = rd(w->ts + cfg.ts_next);
    return 0;
}

/* One _PyInterpreterFrame: its code object and instruction offset (Python frames only), then the caller's. */
static long frame_step(__u32 i, void *c)
{
    struct walk *w = c;
    __u32 zero = 0;
    struct rss_event *e;
    __u8 owner = 0;
    __u64 code, instr;
    if (!w->frame || w->n >= RSS_MAX_PYFRAMES || !(e = bpf_map_lookup_elem(&scratch, &zero))) return 1;
    code = rd(w->frame + cfg.fr_code) & ~cfg.exec_tag;
    instr = rd(w->frame + cfg.fr_instr);
    if (cfg.fr_owner >= 0) bpf_probe_read_user(&owner, 1, (void *)(w->frame + cfg.fr_owner));
    if (code && owner < cfg.first_not_python) {
        e->pycode[w->n & (RSS_MAX_PYFRAMES - 1)] = code;
        e->pyoff[w->n & (RSS_MAX_PYFRAMES - 1)] = (__s64)(instr - (code + cfg.code_adaptive));
        w->n++;
    }
    w->frame = rd(w->frame + cfg.fr_back);
    return 0;
}

static __always_inline int py_walk(__u32 tid)
{
    struct walk w = {.tid = tid};
    struct bpf_pidns_info ns;
    __u64 interp;
    if (!cfg.runtime || !(interp = rd(cfg.runtime + cfg.rt_interp_head))) return 0;
    if (cfg.pidns_ino) { /* a target in a container knows its threads by their ids there */
        if (bpf_get_ns_current_pid_tgid(cfg.pidns_dev, cfg.pidns_ino, &ns, sizeof ns)) return 0;
        w.tid = ns.pid;
    }
    w.ts = rd(interp + cfg.interp_threads_head);
    bpf_loop(RSS_MAX_THREADS, thread_step, &w, 0);
    if (!w.found) return 0;
    if (cfg.ts_current_frame >= 0)
        w.frame = rd(w.found + cfg.ts_current_frame);
    else
        w.frame = rd(rd(w.found + cfg.ts_cframe) + cfg.cframe_current);
    bpf_loop(RSS_MAX_PYVISIT, frame_step, &w, 0);
    return (int)w.n;
}

static __always_inline void emit(void *ctx, __u32 kind, __u32 tid, __u64 addr, __u64 len, __u64 addr2, __u64 len2)
{
    __u32 zero = 0;
    __u64 flags;
    struct rss_event *e = bpf_map_lookup_elem(&scratch, &zero);
    if (!e) return;
    e->kind = kind;
    e->tid = tid;
    e->ts = bpf_ktime_get_ns();
    e->addr = addr;
    e->len = len;
    e->addr2 = addr2;
    e->len2 = len2;
    e->nstack = bpf_get_stack(ctx, e->stack, sizeof e->stack, BPF_F_USER_STACK);
    e->npy = py_walk(tid);
    /* memprof rss reads at least every 100 ms: a wakeup per event would cost the target more than the event */
    flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > (1 << 20) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    if (bpf_ringbuf_output(&events, e, sizeof *e, flags)) __sync_fetch_and_add(&events_lost, 1);
}

SEC("tracepoint/exceptions/page_fault_user")
int on_fault(struct trace_event_raw_exceptions *ctx)
{
    __u32 tid;
    __u32 every = cfg.sample_every ? cfg.sample_every : 1;
    if (!is_target(&tid)) return 0;
    __sync_fetch_and_add(&faults_seen, 1);
    if (every > 1 && bpf_get_prandom_u32() % every) return 0; /* at random: no aliasing with a loop's stride */
    emit(ctx, RSS_FAULT, tid, ctx->address, (__u64)every * RSS_PAGE, 0, 0);
    return 0;
}

/* nargs: a syscall tracepoint's record has only its own arguments (reading past them fails the attach) */
static __always_inline int enter(struct trace_event_raw_sys_enter *ctx, int nargs)
{
    __u32 tid;
    struct sys_args a = {};
    if (!is_target(&tid)) return 0;
    a.a0 = ctx->args[0];
    if (nargs > 1) a.a1 = ctx->args[1];
    if (nargs > 2) a.a2 = ctx->args[2];
    bpf_map_update_elem(&inflight, &tid, &a, BPF_ANY);
    return 0;
}

/* The syscall's arguments saved at entry, when it succeeded (ret not an -errno). */
static __always_inline struct sys_args *exited(struct trace_event_raw_sys_exit *ctx, __u32 *tid)
{
    struct sys_args *a;
    if (!is_target(tid)) return 0;
    a = bpf_map_lookup_elem(&inflight, tid);
    if (!a) return 0;
    if (ctx->ret < 0 && ctx->ret > -4096) {
        bpf_map_delete_elem(&inflight, tid);
        return 0;
    }
    return a;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int on_mmap_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 2); }
SEC("tracepoint/syscalls/sys_enter_munmap")
int on_munmap_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 2); }
SEC("tracepoint/syscalls/sys_enter_mremap")
int on_mremap_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 3); }
SEC("tracepoint/syscalls/sys_enter_brk")
int on_brk_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 1); }

SEC("tracepoint/syscalls/sys_exit_mmap")
int on_mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    emit(ctx, RSS_MMAP, tid, (__u64)ctx->ret, a->a1, 0, 0);
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_munmap")
int on_munmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    emit(ctx, RSS_MUNMAP, tid, a->a0, a->a1, 0, 0);
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_mremap")
int on_mremap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    emit(ctx, RSS_MREMAP, tid, a->a0, a->a1, (__u64)ctx->ret, a->a2);
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_brk")
int on_brk_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    if (a->a0) emit(ctx, RSS_BRK, tid, a->a0, 0, (__u64)ctx->ret, 0); /* brk(0) only asks */
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

/* RSS counters of the target's mm: first known from its own threads (curr), then by mm_id, which also
 * catches changes made by others (reclaim, the exit of its last thread). */
SEC("tracepoint/kmem/rss_stat")
int on_rss_stat(struct trace_event_raw_rss_stat *ctx)
{
    __u32 tid;
    int m = ctx->member;
    if (!mm_known) {
        if (!ctx->curr || !is_target(&tid)) return 0;
        mm_id = ctx->mm_id;
        mm_known = 1;
    } else if (ctx->mm_id != mm_id) {
        return 0;
    }
    if (m < 0 || m >= RSS_NMEMBERS) return 0;
    rss[m] = ctx->size;
    rss_seen[m] = 1;
    return 0;
}
