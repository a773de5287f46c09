/* watch.c -- memprofd serve --watch: attach by policy. Rules (which processes, with what settings) are parsed
 * before the daemon starts; a /proc scan on the loop's timer finds new matching processes and hands each to
 * attach_start(), once: a process is known by pid, start time and command line, and one that was tried (or
 * refused, or attached by hand) is not tried again while it lives. */
#include "daemon/watch.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <pwd.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/attach.h"
#include "daemon/conn.h"
#include "daemon/identity.h"
#include "daemon/logging.h"
#include "daemon/loop.h"
#include "daemon/procinfo.h"
#include "daemon/session.h"
#include "probe/procfs.h"

#define WATCH_SCAN_MS 1000  /* the /proc scan's period */
#define WATCH_KNOWN_MAX 4096 /* matching processes remembered (tried, or waiting for their second scan) */
#define WATCH_TERMS_MAX 16   /* terms of one rule */
#define WATCH_READY_MAX 64   /* settled processes queued for an attach each (one a round of the loop) */

struct rule {
    char *text;
    int has_command, has_uid;
    regex_t command;
    uid_t uid;
    char container[65];           /* an id prefix, lower case; "" when the rule names none */
    char pod[64], pod_namespace[64]; /* shell patterns (fnmatch) of the Kubernetes pod and namespace, or "" */
    Memprof__AttachRequest req;   /* the settings (the pid is filled in per attach) */
    struct rule *next;
};

/* A process as watch.c knows it: a new start time or command line (an exec) makes it another. */
struct known {
    pid_t pid;
    unsigned long long start;
    uint32_t cmd;       /* FNV-1a of its command line */
    unsigned scan;      /* the scan that last saw it match */
    int tried;          /* 1: handed to attach_start, refused, or attached already; 0: seen once, settling */
};

static struct rule *rules, **rules_tail = &rules;
static unsigned n_rules;
static struct known *known;
static size_t n_known, known_cap;
static unsigned scan_no;
/* Settled processes (matched in two scans running), attached one per round of the loop so that a burst of
 * new processes blocks the loop no longer than one attach does; each is checked again before its attach. */
static struct ready {
    struct known k;
    const struct rule *r;
} ready[WATCH_READY_MAX];
static size_t n_ready;
static double next_scan;
static long long timer_id;
static int stopped, at_bound, full_logged;
unsigned watch_max = 64;

int watch_active(void) { return rules != NULL; }

/* ------------------------------------------------------------------ rules */

/* Splits text into terms at blanks; a value may be quoted ('...' or "...") to hold blanks. The terms are
 * written into buf. Returns how many, or -1 with err. */
static int split_terms(const char *text, char *buf, char **terms, char *err)
{
    int n = 0;
    const char *p = text;
    char *o = buf;
    for (;;) {
        char quote = 0;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        if (n == WATCH_TERMS_MAX) {
            mp_err(err, "more than %d terms", WATCH_TERMS_MAX);
            return -1;
        }
        terms[n++] = o;
        while (*p && (quote || (*p != ' ' && *p != '\t'))) {
            if (!quote && (*p == '\'' || *p == '"') && p > text && p[-1] == '=') quote = *p++;
            else if (quote && *p == quote) quote = 0, p++;
            else *o++ = *p++;
        }
        if (quote) {
            mp_err(err, "unterminated %c quote", quote);
            return -1;
        }
        *o++ = 0;
    }
    return n;
}

static int parse_user(struct rule *r, const char *v, char *err)
{
    struct passwd *pw;
    char *end;
    unsigned long u;
    if (!*v) {
        mp_err(err, "user= needs a user name or uid");
        return -1;
    }
    errno = 0;
    u = strtoul(v, &end, 10);
    if (!*end && !errno && isdigit((unsigned char)*v) && u < (uid_t)-1) r->uid = (uid_t)u;
    else if ((pw = getpwnam(v))) r->uid = pw->pw_uid;
    else {
        mp_err(err, "user=%s: no such user", v);
        return -1;
    }
    r->has_uid = 1;
    return 0;
}

static int parse_container(struct rule *r, const char *v, char *err)
{
    size_t n = strlen(v);
    if (n < 4 || n > 64 || strspn(v, "0123456789abcdefABCDEF") != n) {
        mp_err(err, "container=%s: give the container's id or a prefix of it (4 to 64 hex digits, as `podman ps "
               "--no-trunc` or `docker ps --no-trunc` show): its name is not in /proc/PID/cgroup", v);
        return -1;
    }
    for (size_t i = 0; i <= n; i++) r->container[i] = (char)tolower((unsigned char)v[i]);
    return 0;
}

/* pod=PATTERN or namespace=PATTERN into out[64]: a shell pattern of a Kubernetes name (web-*). */
static int parse_k8s(char out[64], const char *term, const char *v, char *err)
{
    size_t n = strlen(v);
    if (out[0]) return mp_err(err, "%s= given twice", term), -1;
    if (n == 0 || n > 63 || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789.-*?[]!") != n)
        return mp_err(err, "%s=%s: give the %s's name or a shell pattern of it (web-*): lower-case letters, digits, "
                      "'.', '-' and * ? [ ], at most 63", term, v, term), -1;
    memcpy(out, v, n + 1);
    return 0;
}

/* A tracking term, "sample-rate=N" or "native": one of memprofd attach's settings, parsed by its table. */
static int parse_setting(struct rule *r, int *method, const char *term, char *err)
{
    const struct opt opts[] = {ATTACH_SETTINGS_OPTS(&r->req, method), {0}};
    char arg[1024], *argv[3] = {(char *)"watch", arg, NULL};
    const char *eq = strchr(term, '=');
    size_t klen = eq ? (size_t)(eq - term) : strlen(term);
    const struct opt *o = NULL;
    int status;
    for (const struct opt *p = opts; p->name && !o; p++)
        if (strlen(p->name) == klen && !strncmp(p->name, term, klen)) o = p;
    if (!o) {
        mp_err(err, "unknown term '%.*s' (command=REGEX, user=NAME, container=ID, pod=NAME, namespace=NAME, or one "
               "of memprofd attach's "
               "settings: sample-rate=BYTES, exact, max-frames=N, interval=MS, no-track, method=M, native, "
               "native-frames)", (int)klen, term);
        return -1;
    }
    if (o->kind == OPT_FLAG && eq) {
        mp_err(err, "%s takes no value (write just '%s')", o->name, o->name);
        return -1;
    }
    if (o->kind != OPT_FLAG && (!eq || !eq[1])) {
        mp_err(err, "%s needs a value (%s=%s)", o->name, o->name, o->arg);
        return -1;
    }
    snprintf(arg, sizeof arg, "--%s", term);
    const struct opt_cmd cmd = {"watch", opts, .err = err};
    if (opts_parse(&cmd, 2, argv, &status) >= 0) return 0;
    if (!strncmp(err, "--", 2)) memmove(err, err + 2, strlen(err + 2) + 1); /* "sample-rate needs ..." */
    return -1;
}

static void rule_free(struct rule *r)
{
    if (r->has_command) regfree(&r->command);
    free(r->text);
    free(r);
}

int watch_add_rule(const char *text, char *err)
{
    char buf[4096], *terms[WATCH_TERMS_MAX];
    int n, method = 0, matchers = 0;
    struct rule *r;
    if (strlen(text) >= sizeof buf) {
        mp_err(err, "longer than %zu characters", sizeof buf - 1);
        return -1;
    }
    if ((n = split_terms(text, buf, terms, err)) < 0) return -1;
    if (n == 0) {
        mp_err(err, "empty rule");
        return -1;
    }
    if (!(r = calloc(1, sizeof *r)) || !(r->text = strdup(text))) {
        free(r);
        mp_err(err, "out of memory");
        return -1;
    }
    memprof__attach_request__init(&r->req);
    for (int i = 0; i < n; i++) {
        const char *t = terms[i];
        int rc = 0;
        if (!strncmp(t, "command=", 8)) {
            int e;
            if (r->has_command || !t[8]) {
                mp_err(err, r->has_command ? "command= given twice" : "command= needs a regular expression");
                rc = -1;
            } else if ((e = regcomp(&r->command, t + 8, REG_EXTENDED | REG_NOSUB))) {
                char why[200];
                regerror(e, &r->command, why, sizeof why);
                mp_err(err, "command=%s: bad regular expression: %s", t + 8, why);
                rc = -1;
            } else {
                r->has_command = 1;
            }
            matchers++;
        } else if (!strncmp(t, "user=", 5)) {
            rc = r->has_uid ? (mp_err(err, "user= given twice"), -1) : parse_user(r, t + 5, err);
            matchers++;
        } else if (!strncmp(t, "container=", 10)) {
            rc = r->container[0] ? (mp_err(err, "container= given twice"), -1) : parse_container(r, t + 10, err);
            matchers++;
        } else if (!strncmp(t, "pod=", 4)) {
            rc = parse_k8s(r->pod, "pod", t + 4, err);
            matchers++;
        } else if (!strncmp(t, "namespace=", 10)) {
            rc = parse_k8s(r->pod_namespace, "namespace", t + 10, err);
            matchers++;
        } else {
            rc = parse_setting(r, &method, t, err);
        }
        if (rc < 0) {
            rule_free(r);
            return -1;
        }
    }
    if (!matchers) {
        mp_err(err, "no command=, user=, container=, pod= or namespace= term: it would attach to every Python "
               "process");
        rule_free(r);
        return -1;
    }
    if (attach_settings_check(&r->req, "", err) < 0) {
        rule_free(r);
        return -1;
    }
    r->req.method = (char *)attach_methods[method];
    *rules_tail = r;
    rules_tail = &r->next;
    n_rules++;
    return 0;
}

int watch_add_file(const char *path, char *err)
{
    char line[4096], why[MP_ERRLEN];
    unsigned lineno = 0, added = 0;
    FILE *f = fopen(path, "re");
    if (!f) {
        mp_errno(err, "--watch-file %s", path);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        char *p = line;
        lineno++;
        if (len == sizeof line - 1 && line[len - 1] != '\n' && !feof(f)) {
            mp_err(err, "%s:%u: longer than %zu characters", path, lineno, sizeof line - 2);
            fclose(f);
            return -1;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = 0;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || *p == '#') continue;
        if (watch_add_rule(p, why) < 0) {
            mp_err(err, "%s:%u: '%s': %s", path, lineno, p, why);
            fclose(f);
            return -1;
        }
        added++;
    }
    if (ferror(f)) {
        mp_errno(err, "--watch-file %s", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    if (!added) {
        mp_err(err, "%s: no rule in it (one a line; # starts a comment)", path);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ the scan */

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static struct known *known_find(pid_t pid)
{
    for (size_t i = 0; i < n_known; i++)
        if (known[i].pid == pid) return &known[i];
    return NULL;
}

/* The first rule cmd (the process's command line) and pid match; the cheap terms first. */
static const struct rule *match(pid_t pid, const char *cmd)
{
    for (const struct rule *r = rules; r; r = r->next) {
        uid_t uid;
        char id[65];
        if (r->has_command && regexec(&r->command, cmd, 0, NULL, 0) != 0) continue;
        if (r->has_uid && (proc_uid(pid, &uid) < 0 || uid != r->uid)) continue;
        if (r->container[0] &&
            (proc_container_id(pid, id) < 0 || strncmp(id, r->container, strlen(r->container)) != 0))
            continue;
        if (r->pod[0] || r->pod_namespace[0]) { /* the dearest: reads the environment of a pod's process */
            struct proc_ident ident;
            proc_ident(pid, &ident);
            if (r->pod[0] && fnmatch(r->pod, ident.pod, 0) != 0) continue;
            if (r->pod_namespace[0] && fnmatch(r->pod_namespace, ident.pod_namespace, 0) != 0) continue;
        }
        return r;
    }
    return NULL;
}

static unsigned watched_live(void)
{
    unsigned n = 0;
    for (struct session *s = sessions; s; s = s->next)
        n += s->watch_rule && (s->state == SESS_ATTACHING || s->state == SESS_ATTACHED || s->state == SESS_DETACHING);
    return n;
}

/* Does its environment say `memprof run` started it (the agent preloaded, its session the run's)? */
static int started_by_run(pid_t pid)
{
    char path[64], buf[65536];
    ssize_t n;
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    if ((n = mp_read_file(path, buf, sizeof buf - 1)) <= 0) return 0;
    buf[n] = 0;
    for (const char *e = buf; e < buf + n; e += strlen(e) + 1)
        if (!strncmp(e, "MEMPROF_RUN=", 12)) return 1;
    return 0;
}

/* Why memprofd must leave pid alone whatever the rules say, or NULL. */
static const char *excluded(pid_t pid, pid_t ppid)
{
    if (pid == getpid()) return "memprofd itself";
    if (ppid == getpid()) return "a child of memprofd";
    if (conn_peer_is_client(pid)) return "a client of memprofd";
    if (started_by_run(pid)) return "started by memprof run (its own session)";
    return NULL;
}

/* A process that matched r in two scans running (not caught in the middle of an exec, nor before its
 * interpreter is up): attach it, or say why not, once. 1 when it is done with (tried), 0 to wait for room. */
static int consider(const struct rule *r, pid_t pid, pid_t ppid, const char *cmd)
{
    char err[MP_ERRLEN];
    const char *why;
    Memprof__AttachRequest req;
    if ((why = excluded(pid, ppid))) {
        server_log("watch: pid %d (%.200s) matches rule '%s' but is %s: left alone", (int)pid, cmd, r->text, why);
        return 1; /* never attached, not even tried */
    }
    if (watched_live() >= watch_max) {
        if (!at_bound)
            server_log("watch: %u watched sessions, the bound (--watch-max): pid %d (%.200s) and other new matching "
                       "processes are attached once a watched session ends",
                       watch_max, (int)pid, cmd);
        at_bound = 1;
        return 0;
    }
    req = r->req;
    req.pid = pid;
    server_log("watch: pid %d (%.200s) matches rule '%s': attaching", (int)pid, cmd, r->text);
    if (attach_start(geteuid(), 0, &req, r->text, err) < 0)
        server_log("watch: pid %d not attached: %s (rule '%s'; not retried)", (int)pid, err, r->text);
    return 1;
}

/* Remember k; at the bound the oldest entry goes (it may be tried again). NULL without memory. */
static struct known *known_add(const struct known *k)
{
    if (n_known == WATCH_KNOWN_MAX) {
        if (!full_logged)
            server_log("watch: %d matching processes remembered, the bound: the oldest are forgotten (and may be "
                       "tried again)", WATCH_KNOWN_MAX);
        full_logged = 1;
        memmove(known, known + 1, (n_known - 1) * sizeof *known);
        n_known--;
    }
    if (n_known == known_cap) {
        size_t ncap = known_cap ? known_cap * 2 : 64;
        struct known *nk = realloc(known, ncap * sizeof *nk);
        if (!nk) return NULL;
        known = nk;
        known_cap = ncap;
    }
    known[n_known] = *k;
    return &known[n_known++];
}

static void scan(void)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    char cmd[4096];
    size_t kept = 0;
    if (!d) return;
    scan_no++;
    if (at_bound && watched_live() < watch_max) at_bound = 0;
    while ((de = readdir(d))) {
        struct procfs_stat st;
        struct known k, *e;
        const struct rule *r;
        struct session *s;
        pid_t pid;
        if (!isdigit((unsigned char)de->d_name[0]) || (pid = mp_parse_pid(de->d_name)) <= 0) continue;
        /* a kernel thread's or a zombie's is empty */
        if (mp_proc_cmdline(pid, cmd, sizeof cmd) < 0 || !cmd[0] || !(r = match(pid, cmd))) continue;
        if (procfs_stat(pid, 0, &st) < 0 || st.state == 'Z' || st.state == 'X' || (st.flags & PROCFS_PF_KTHREAD))
            continue;
        k = (struct known){pid, st.starttime, fnv1a(cmd), scan_no, 0};
        e = known_find(pid);
        if (e && (e->start != k.start || e->cmd != k.cmd)) { /* another process on that pid, or it exec'd */
            *e = k;
            continue;
        }
        if (!e) {
            /* attached already (by hand, by a run): not the watch's to attach again once it is detached */
            s = session_find(pid);
            k.tried = s && (s->state == SESS_ATTACHING || s->state == SESS_ATTACHED || s->state == SESS_DETACHING);
            known_add(&k);
            continue;
        }
        e->scan = scan_no;
        if (!e->tried && !stopped && n_ready < WATCH_READY_MAX) { /* else: the next scan */
            e->tried = 1;
            ready[n_ready++] = (struct ready){*e, r};
        }
    }
    closedir(d);
    /* processes that ended, exec'd into something the rules do not match, or were not seen: forgotten */
    for (size_t i = 0; i < n_known; i++)
        if (known[i].scan == scan_no) known[kept++] = known[i];
    n_known = kept;
}

/* Attach the first queued process if it is still the one that settled (same start time and command line). */
static void attach_next(void)
{
    struct ready q = ready[0];
    struct procfs_stat st;
    struct known *e;
    char cmd[4096];
    memmove(ready, ready + 1, --n_ready * sizeof *ready);
    if (mp_proc_cmdline(q.k.pid, cmd, sizeof cmd) < 0 || fnv1a(cmd) != q.k.cmd || procfs_stat(q.k.pid, 0, &st) < 0 ||
        st.starttime != q.k.start || st.state == 'Z' || st.state == 'X')
        return; /* gone, or exec'd: the next scan sees what it is now */
    if (consider(q.r, q.k.pid, st.ppid, cmd)) return;
    /* at the bound: these wait for a scan after a watched session has ended */
    for (size_t i = 0; i <= n_ready; i++) {
        pid_t pid = i < n_ready ? ready[i].k.pid : q.k.pid;
        if ((e = known_find(pid))) e->tried = 0;
    }
    n_ready = 0;
}

static long on_timer(long long id, void *data)
{
    double now = mp_now();
    long ms;
    (void)id;
    (void)data;
    if (stopped) return LOOP_NOMORE;
    if (n_ready) {
        attach_next();
    } else if (now >= next_scan) {
        scan();
        next_scan = now + WATCH_SCAN_MS / 1000.0;
    }
    if (n_ready) return 1; /* the next one after a round of the loop (its file events first) */
    ms = (long)((next_scan - mp_now()) * 1000.0) + 1;
    return ms < 1 ? 1 : ms;
}

int watch_start(char *err)
{
    if (!rules) return 0;
    stopped = 0;
    n_ready = 0;
    next_scan = 0;
    if ((timer_id = loop_add_timer(0, on_timer, NULL)) < 0) {
        mp_err(err, "out of memory for the watch timer");
        return -1;
    }
    server_log("watch: %u rule%s, /proc scanned every %d ms, at most %u watched sessions", n_rules,
               n_rules == 1 ? "" : "s", WATCH_SCAN_MS, watch_max);
    for (const struct rule *r = rules; r; r = r->next) server_log("watch: rule '%s'", r->text);
    return 0;
}

void watch_stop(void)
{
    stopped = 1;
}

void watch_free(void)
{
    while (rules) {
        struct rule *r = rules;
        rules = r->next;
        rule_free(r);
    }
    rules_tail = &rules;
    n_rules = 0;
    free(known);
    known = NULL;
    n_known = known_cap = 0;
}
