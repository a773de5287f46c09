/* alloc_view.h -- the allocation data layer of the CLI: a session's AllocData (or a snapshot file)
 * as frames and stacks, summed into rows by line or function; used by top, lines, snapshot, diff, growth. */
#ifndef MEMPROF_ALLOC_VIEW_H
#define MEMPROF_ALLOC_VIEW_H

#include <stdio.h>

#include "gen/memprof.pb-c.h"

enum by { BY_LINE, BY_FUNCTION };
enum sort { SORT_OWN, SORT_TOTAL, SORT_RATE, SORT_ALLOCS, SORT_N };

struct frame {
    int used;
    char *file, *func;
    unsigned line, first;
    int lib; /* library code (mp_is_library_file) */
};

/* One stack with its figures, frames as indexes into the frame table. */
struct stack {
    unsigned *frames;
    size_t n;
    double live, ab, ac, fb, fc, rate, peak;
    int native; /* allocations by C code under these frames (memprofd attach --native) */
};

/* A snapshot: from the daemon (AllocData) or from a snapshot file. */
struct view {
    int pid;
    char state[16], mode[16], python[32], command[512], where[128]; /* where: cli_container */
    int exited, exact; /* the session ended with its process; exact mode (else sampling) */
    double rss, samples_rate, alloc_rate, overhead, ts, first_ts, peak_live;
    double samples, dropped, rate_bytes;
    double live_python, live_native; /* tracked live split, before any --native-only */
    int has_native;
    char native_note[512], native_late[512]; /* --native: what could not be patched, at the attach and since */
    struct frame *frames;
    size_t nframes;
    struct stack *stacks;
    size_t nstacks;
};

/* A row: one line or one function, summed. */
struct alloc_row {
    char *key; /* "file\tline" or "file\tfunc\tfirst" */
    unsigned frame;
    double own, total, rate, allocs;
    size_t last_stack; /* to count a stack once in total */
    double own_native;  /* the part of own allocated by C code */
};
extern const char *sort_names[SORT_N];
/* --native-only (top, lines): keep only what C code allocated (memprofd attach --native) */
extern int alloc_native_only;
/* Fold constructors: what __init__/__new__ allocate is shown at the line that
 * created the object, since whoever keeps the object holds that memory (--no-fold clears it). */
extern int alloc_fold_ctors;
/* Show library frames (stdlib, site-/dist-packages) as they are: by default what
 * library code allocates is shown at the innermost line of the user's code under
 * it, where there is one (--libraries sets it). */
extern int alloc_show_libraries;

/* Whether want names the function called have (on 3.11+ a qualified name,
 * "Class.method", "outer.<locals>.inner"; co_name before): 2 if it is have,
 * 1 if it is have's last dotted part(s) ("__init__", "Class.__init__"), or,
 * have being unqualified (Python 3.10 and older), have is want's last part; else 0. */
int alloc_name_match(const char *have, const char *want);
void view_free(struct view *v);
/* Make room for frame id in v: 0, or -1 (an id out of range, no memory). */
int frame_slot(struct view *v, unsigned id);
/* Frame id's text (a file or a message may define an id twice: the last one stands). */
void frame_set(struct view *v, unsigned id, const char *file, const char *func, unsigned line, unsigned first);
void view_frames(struct view *v, const Memprof__AllocData *d);
void view_from_data(struct view *v, const Memprof__AllocData *d);
double view_live(const struct view *v);
/* pid's allocation data from the daemon into v, for a command: 0, or the exit status after printing the error
 * (cli_fail_call). */
int view_get(int pid, struct view *v);

/* v's stacks summed by line or function, sorted: *out (rows_free it), the number of rows. */
size_t rows_build(const struct view *v, enum by by, enum sort sort, struct alloc_row **out);
void rows_free(struct alloc_row *rows, size_t n);
/* "file:line (func)" or "func (file:first)", escaped for a table. */
void location(const struct view *v, const struct alloc_row *r, enum by by, char *out, size_t len);

#endif
