/* rss.h -- memprof rss's parts: the BPF programs' loader (rss_trace.c) and the resolver of addresses,
 * Python frames and mappings in the target (rss_sym.c), used by cmd_rss.c. */
#ifndef MEMPROF_CLI_RSS_H
#define MEMPROF_CLI_RSS_H

#include <linux/types.h>
#include <stdint.h>
#include <sys/types.h>

#include "bpf/rss.h"
#include "common/util.h"

struct pyabi;

/* Loads and attaches the programs for cfg->tgid (mounting tracefs for the attach when it is not, and
 * unmounting it again): page fault events on each of its threads, the mapping syscalls and, with rss_stat, the
 * kmem:rss_stat tracepoint (its counters seeded with start_pages). cb gets each event. 0, or -1 with a one-line err. */
struct rss_trace;
typedef int (*rss_event_fn)(void *ctx, const struct rss_event *e);
int rss_trace_open(struct rss_trace **out, const struct rss_cfg *cfg, int rss_stat, const uint64_t start_pages[RSS_NMEMBERS],
                   rss_event_fn cb, void *ctx, char *err);
/* Waits up to timeout_ms (the programs wake it only for 2 MiB of events) and hands over everything waiting:
 * the count, or a negative errno. */
int rss_trace_poll(struct rss_trace *t, int timeout_ms);
/* The kernel side's counters: the target's page faults (all, not only those recorded), lost events. */
void rss_trace_counters(struct rss_trace *t, uint64_t *faults, uint64_t *lost);
/* With rss_stat: the highest RSS (file + anon + shmem) the kernel reported since the last call, in bytes. */
uint64_t rss_trace_peak(struct rss_trace *t);
/* Each thread's sampling period drawn again (a refresh does it). */
void rss_trace_reperiod(struct rss_trace *t);
void rss_trace_close(struct rss_trace *t);
/* The programs for cfg (the rss_stat ones too) loaded into the kernel and unloaded again, attached to nothing:
 * 0, or -1 with err (a verifier's refusal in its own words). */
int rss_trace_check(const struct rss_cfg *cfg, char *err);

/* The Python part of cfg for pid (CPython 3.11+ with its offsets in common/pyabi.c): 0 and *abi, or -1 with
 * why ("Python 3.10: ..."): then native stacks only. version gets "3.11.2" ("" when not Python). */
int rss_python_cfg(pid_t pid, struct rss_cfg *cfg, const struct pyabi **abi, char *version, size_t vlen,
                   char *why);
/* cfg's interpreter offsets from abi (all but runtime): 0, or -1 when abi has no Python frames for rss (before
 * 3.11, or no thread list offsets). */
int rss_cfg_abi(struct rss_cfg *cfg, const struct pyabi *abi);

struct rss_sym;
struct rss_sym *rss_sym_open(pid_t pid, const struct pyabi *abi);
/* "function (module)", or "module+0xOFFSET" when no symbol covers ip; leaf 0 for a return address. */
const char *rss_sym_native(struct rss_sym *s, uint64_t ip, int leaf);
/* A frame's code object and instruction byte offset as file, function (qualname) and line (-1 unknown).
 * 0, or -1 when code is no code object (a stale pointer). */
int rss_sym_python(struct rss_sym *s, uint64_t code, int64_t off, const char **file, const char **func, int *line);
/* The mapping addr is in: its path, "[heap]", "[anon]"... */
const char *rss_sym_mapping(struct rss_sym *s, uint64_t addr);
void rss_sym_close(struct rss_sym *s);

#endif
