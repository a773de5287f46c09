/* cmd_session.c -- `memprof status` and `memprof ps`: what the daemon is attached to, and what it could be. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pwd.h>

#include "cli/commands.h"
#include "client/client.h"
#include "common/pyversions.h"
#include "common/version.h"

static const char *about_status =
    "List the daemon's sessions: attached processes and ended ones it keeps.\n";

static const char *example_status =
    "example:\n"
    "  $ memprof status\n"
    "  ID   PID      PYTHON   STATE      MODE      ATTACHED SINCE        STOPPED  COMMAND\n"
    "  3    4242     3.11.2   attached   sampling  2026-11-23 20:31:02   1.10 ms  python3 service.py\n"
    "  4    5120     3.12.3   attached   sampling  2026-11-23 20:32:10   0.95 ms  [pid 1 in cri-containerd-3f2a1b0c9d8e] [pod shop/web-7d4b9-xk2lp] python3 app.py\n"
    "  memprofd 0.5.0\n"
    "\n"
    "ID names a session for `memprof plot/export/diff --session ID`, also once it\n"
    "has ended and its pid has been reused. The line below the table is the daemon's\n"
    "version; an attached agent of another version is named after it, and a session\n"
    "attached by a `memprofd serve --watch` rule names its rule. --json gives each\n"
    "session's agent_version, watch_rule and the daemon_version.\n"
    "\n"
    "A process in a container shows its pid there and which container; one in a\n"
    "Kubernetes pod (a kubepods cgroup) its namespace/pod, read once at the attach\n"
    "(POD_NAMESPACE or the service account's namespace file, and HOSTNAME). --json\n"
    "gives container_id (12 hex digits, as docker/podman ps), pod, namespace and\n"
    "pod_uid (\"\" when unknown).\n";

static const char *about_ps =
    "List the Python processes you may attach to (your own; all for root).\n";

static const char *example_ps =
    "example:\n"
    "  $ memprof ps\n"
    "  PID      USER       PYTHON   RSS         ATTACHED  COMMAND\n"
    "  4242     root       3.11.2   24.1 MiB    yes       python3 service.py\n"
    "  5120     root       3.12.3   31.0 MiB    no        [pid 1 in cri-containerd-3f2a1b0c9d8e] [pod shop/web-7d4b9-xk2lp] python3 app.py\n"
    "\n"
    "--json gives each process's container (the hint shown), container_id, pod,\n"
    "namespace and pod_uid, as memprof status --json.\n";

/* Parse --json / --socket of `memprof NAME`: 0 to go on, or -1 with *status the exit status. */
static int parse_simple(int argc, char **argv, const char *prog, const char *about, const char *more, int *json,
                        int *status)
{
    const struct opt opts[] = {{"json", 0, OPT_FLAG, json, NULL, "one JSON array instead of the table"},
                               CLIENT_SOCKET_OPT,
                               {0}};
    const struct opt_cmd cmd = {prog, opts, .about = about, .more = more};
    return opts_parse(&cmd, argc, argv, status) < 0 ? -1 : 0;
}

static void join_argv(char **argv, size_t n, char *out, size_t len)
{
    out[0] = 0;
    for (size_t i = 0; i < n; i++) {
        if (i) strncat(out, " ", len - strlen(out) - 1);
        strncat(out, argv[i], len - strlen(out) - 1);
    }
}

static int request(int type, Envelope **reply)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__StatusRequest st = MEMPROF__STATUS_REQUEST__INIT;
    Memprof__PsRequest ps = MEMPROF__PS_REQUEST__INIT;
    char err[MP_ERRLEN];
    int fd = client_connect(client_socket_opt, type == MEMPROF__ENVELOPE__MSG_PS, err);
    if (fd < 0) return cli_fail("%s", err);
    env.msg_case = type;
    if (type == MEMPROF__ENVELOPE__MSG_PS) env.ps = &ps;
    else env.status = &st;
    if (client_call(fd, &env, reply, 30000, err) < 0) {
        close(fd);
        return cli_fail("%s", err);
    }
    close(fd);
    return 0;
}

int cmd_status(int argc, char **argv)
{
    Envelope *reply;
    int json = 0, rc;
    char cmd[1024], since[32], where[128], ecmd[4 * sizeof cmd], ever[64], ewhere[4 * sizeof where], who[256],
        ewho[4 * sizeof who];
    if (parse_simple(argc, argv, "memprof status", about_status, example_status, &json, &rc) < 0) return rc;
    if (request(MEMPROF__ENVELOPE__MSG_STATUS, &reply)) return MP_EXIT_FAIL;
    Memprof__StatusReply *r = reply->status_reply;
    const char *dver = r->daemon_version && *r->daemon_version ? r->daemon_version : "unknown";
    if (json) {
        printf("[");
        for (size_t i = 0; i < r->n_sessions; i++) {
            Memprof__SessionInfo *s = r->sessions[i];
            join_argv(s->argv, s->n_argv, cmd, sizeof cmd);
            printf("%s{\"id\": %u, \"pid\": %d, \"python\": ", i ? ", " : "", s->id, s->pid);
            cli_json_str(stdout, s->python_version);
            printf(", \"state\": \"%s\", \"mode\": \"%s\", \"attached_since\": %.3f, \"stop_ms\": %.3f, \"ns_pid\": %d, "
                   "\"container\": ", wire_state_name(s->state), wire_mode_name(s->mode), s->attached_since, s->stop_ms, s->ns_pid ? s->ns_pid : s->pid);
            cli_json_str(stdout, s->container);
            cli_json_identity(stdout, s->container_id, s->pod, s->pod_namespace, s->pod_uid);
            printf(", \"command\": ");
            cli_json_str(stdout, cmd);
            printf(", \"agent_version\": ");
            cli_json_str(stdout, s->agent_version);
            printf(", \"daemon_version\": ");
            cli_json_str(stdout, dver);
            printf(", \"native_note\": ");
            cli_json_str(stdout, s->native_note);
            printf(", \"native_late_note\": ");
            cli_json_str(stdout, s->native_late_note);
            printf(", \"watch_rule\": ");
            cli_json_str(stdout, s->watch_rule);
            printf("}");
        }
        printf("]\n");
        wire_free(reply);
        return 0;
    }
    if (r->n_sessions == 0) {
        printf("no sessions (attach with: memprofd attach --pid PID)\n");
    } else {
        printf("%-4s %-8s %-8s %-10s %-9s %-21s %8s  %s\n", "ID", "PID", "PYTHON", "STATE", "MODE", "ATTACHED SINCE",
               "STOPPED", "COMMAND");
        for (size_t i = 0; i < r->n_sessions; i++) {
            Memprof__SessionInfo *s = r->sessions[i];
            time_t t = (time_t)s->attached_since;
            if (t) strftime(since, sizeof since, "%Y-%m-%d %H:%M:%S", localtime(&t));
            else snprintf(since, sizeof since, "-");
            join_argv(s->argv, s->n_argv, cmd, sizeof cmd);
            cli_container(s->ns_pid, s->container, where, sizeof where);
            printf("%-4u %-8d %-8s %-10s %-9s %-21s %5.2f ms  %s%s%s\n", s->id, s->pid,
                   cli_esc(s->python_version, ever, sizeof ever), wire_state_name(s->state), wire_mode_name(s->mode), since, s->stop_ms,
                   cli_esc(where, ewhere, sizeof ewhere),
                   cli_esc(cli_identity(s->container, s->container_id, s->pod, s->pod_namespace, who, sizeof who), ewho,
                           sizeof ewho),
                   cli_esc(cmd, ecmd, sizeof ecmd));
        }
    }
    /* Versions below the table: the daemon's, and any attached agent that differs. */
    printf("memprofd %s", dver);
    if (strcmp(dver, MEMPROF_VERSION) != 0) printf(" (this memprof is %s)", MEMPROF_VERSION);
    printf("\n");
    for (size_t i = 0; i < r->n_sessions; i++) {
        Memprof__SessionInfo *s = r->sessions[i];
        if (s->state != MEMPROF__SESSION_INFO__STATE__ATTACHED || !*s->agent_version || !strcmp(s->agent_version, dver)) continue;
        printf("session %u (pid %d): agent %s differs from memprofd %s (detach and attach again)\n", s->id, s->pid,
               s->agent_version, dver);
    }
    for (size_t i = 0; i < r->n_sessions; i++) { /* attached by a memprofd serve --watch rule: which */
        Memprof__SessionInfo *s = r->sessions[i];
        char erule[4 * 1024];
        if (s->watch_rule && *s->watch_rule)
            printf("session %u (pid %d): attached by --watch '%s'\n", s->id, s->pid,
                   cli_esc(s->watch_rule, erule, sizeof erule));
    }
    for (size_t i = 0; i < r->n_sessions; i++) { /* --native that could not patch everything: at the attach, since */
        Memprof__SessionInfo *s = r->sessions[i];
        if (s->state != MEMPROF__SESSION_INFO__STATE__ATTACHED) continue;
        if (s->native_note && *s->native_note) printf("session %u (pid %d): %s\n", s->id, s->pid, s->native_note);
        if (s->native_late_note && *s->native_late_note)
            printf("session %u (pid %d): %s\n", s->id, s->pid, s->native_late_note);
    }
    wire_free(reply);
    return 0;
}

/* Jupyter/IPython kernels (ipykernel_launcher, python -m ipykernel): "[kernel] ", or "[kernel: NOTEBOOK] " when the kernel's
 * environment names its notebook (Jupyter server 2.x sets JPY_SESSION_NAME;
 * readable for our own processes, or as root). notebook gets the name or "". */
static const char *kernel_mark(const Memprof__PsEntry *e, char *notebook, size_t nlen, char *buf, size_t len)
{
    char path[64], env[65536];
    size_t n;
    FILE *f;
    buf[0] = notebook[0] = 0;
    if (!e->cmdline || !(strstr(e->cmdline, "ipykernel_launcher") || strstr(e->cmdline, "-m ipykernel "))) return buf;
    snprintf(path, sizeof path, "/proc/%d/environ", e->pid);
    if ((f = fopen(path, "r"))) {
        n = fread(env, 1, sizeof env - 1, f);
        fclose(f);
        env[n] = 0;
        for (size_t i = 0; i < n; i += strlen(env + i) + 1)
            if (!strncmp(env + i, "JPY_SESSION_NAME=", 17) && env[i + 17]) snprintf(notebook, nlen, "%s", env + i + 17);
    }
    snprintf(buf, len, notebook[0] ? "[kernel: %s] " : "[kernel] ", notebook);
    return buf;
}

int cmd_ps(int argc, char **argv)
{
    Envelope *reply;
    int json = 0, rc;
    char rss[32], where[128], ewhere[4 * sizeof where], nb[1024], kmark[1100], ekmark[4 * sizeof kmark], who[256],
        ewho[4 * sizeof who];
    if (parse_simple(argc, argv, "memprof ps", about_ps, example_ps, &json, &rc) < 0) return rc;
    if (request(MEMPROF__ENVELOPE__MSG_PS, &reply)) return MP_EXIT_FAIL;
    Memprof__PsReply *r = reply->ps_reply;
    if (json) {
        printf("[");
        for (size_t i = 0; i < r->n_procs; i++) {
            Memprof__PsEntry *e = r->procs[i];
            printf("%s{\"pid\": %d, \"uid\": %d, \"python\": ", i ? ", " : "", e->pid, e->uid);
            cli_json_str(stdout, e->python_version);
            printf(", \"supported\": %s, \"rss\": %llu, \"attached\": %s, \"ns_pid\": %d, \"container\": ",
                   e->supported ? "true" : "false", (unsigned long long)e->rss_bytes, e->attached ? "true" : "false",
                   e->ns_pid ? e->ns_pid : e->pid);
            cli_json_str(stdout, e->container);
            cli_json_identity(stdout, e->container_id, e->pod, e->pod_namespace, e->pod_uid);
            kernel_mark(e, nb, sizeof nb, kmark, sizeof kmark);
            printf(", \"kernel\": %s, \"notebook\": ", kmark[0] ? "true" : "false");
            cli_json_str(stdout, nb);
            printf(", \"command\": ");
            cli_json_str(stdout, e->cmdline);
            printf("}");
        }
        printf("]\n");
    } else if (r->n_procs == 0) {
        printf("no Python processes you may attach to\n");
    } else {
        printf("%-8s %-10s %-8s %-11s %-9s %s\n", "PID", "USER", "PYTHON", "RSS", "ATTACHED", "COMMAND");
        for (size_t i = 0; i < r->n_procs; i++) {
            Memprof__PsEntry *e = r->procs[i];
            struct passwd *pw = getpwuid((uid_t)e->uid);
            char user[16], ver[40], ever[64], cmd[201];
            snprintf(user, sizeof user, "%s", pw ? pw->pw_name : "?");
            snprintf(ver, sizeof ver, "%s%s", e->python_version, e->supported ? "" : "!");
            printf("%-8d %-10s %-8s %-11s %-9s %s%s%s%s\n", e->pid, user, cli_esc(ver, ever, sizeof ever),
                   cli_bytes((double)e->rss_bytes, rss, sizeof rss), e->attached ? "yes" : "no",
                   cli_esc(cli_container(e->ns_pid, e->container, where, sizeof where), ewhere, sizeof ewhere),
                   cli_esc(cli_identity(e->container, e->container_id, e->pod, e->pod_namespace, who, sizeof who), ewho,
                           sizeof ewho),
                   cli_esc(kernel_mark(e, nb, sizeof nb, kmark, sizeof kmark), ekmark, sizeof ekmark),
                   cli_esc(e->cmdline, cmd, sizeof cmd)); /* the first 200 characters, as before */
        }
        int unsupported = 0;
        for (size_t i = 0; i < r->n_procs; i++) unsupported |= !r->procs[i]->supported;
        if (unsupported) printf("(! = unsupported version; memprof supports Python " MP_PY_RANGE ")\n");
    }
    wire_free(reply);
    return 0;
}
