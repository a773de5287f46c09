/* main.c -- memprof, the command line: dispatches to one file per group of commands. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "client/client.h"
#include "common/version.h"

struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
};

static const struct command commands[] = {
    {"run", cmd_run, "run a Python program profiled from its first line; @profile reports (like memory_profiler)"},
    {"status", cmd_status, "sessions of the daemon: pid, Python, state, attached since"},
    {"ps", cmd_ps, "Python processes you may attach to, with RSS and version"},
    {"types", cmd_types, "object census by type (like objgraph.show_most_common_types)"},
    {"growth", cmd_growth, "streaming per-type count/size changes (like objgraph.show_growth)"},
    {"backrefs", cmd_backrefs, "back-reference graph to DOT/PNG/SVG (like objgraph.show_backrefs)"},
    {"chain", cmd_chain, "shortest reference chain from a module to an object"},
    {"top", cmd_top, "live view of allocations and live memory by line or function"},
    {"lines", cmd_lines, "memory_profiler-style line-by-line report for one function"},
    {"snapshot", cmd_snapshot, "save a process's allocation data to a file"},
    {"diff", cmd_diff, "what grew between two snapshots, or over the last N seconds, by line and function"},
    {"plot", cmd_plot, "RSS and tracked heap over time, peaks named, as an SVG (like mprof plot)"},
    {"export", cmd_export, "a session's allocation data as JSON, collapsed stacks, pprof or speedscope"},
    {"rss", cmd_rss, "where RSS comes from, seen from eBPF with nothing injected: faults and mappings by Python line"},
    {"flamegraph", cmd_flamegraph, "an interactive flame graph of live (or allocated) bytes as one HTML file"},
    {"ipython-path", cmd_ipython_path, "where the IPython extension is (%load_ext memprof: %memit, %mprun)"},
    {"inproc", cmd_inproc, NULL},
    {"mprun-data", cmd_mprun_data, NULL},
};

static void usage(FILE *f)
{
    fputs("usage: memprof COMMAND [OPTIONS]\n\n"
          "Memory profiler for live Python processes. Attach first with\n"
          "`memprofd attach --pid PID`; then:\n\n",
          f);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].summary) fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fputs("\nRun `memprof COMMAND --help` for a command's options. Every command takes\n"
          "--socket PATH to talk to a daemon other than the default one.\n"
          "`memprof --version` prints the version.\n"
          "\n" MP_EXIT_HELP "    (memprof run exits with its program's status)\n",
          f);
}

int cli_fail(const char *fmt, ...)
{
    va_list ap;
    char msg[2048], line[4 * sizeof msg];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "memprof: %s\n", cli_esc(msg, line, sizeof line)); /* one line, whatever it quotes */
    return MP_EXIT_FAIL;
}

int cli_fail_call(const char *err)
{
    cli_fail("%s", err);
    return client_exit_status(client_error_code());
}

const char *cli_esc(const char *s, char *out, size_t len)
{
    size_t o = 0;
    if (!len) return out;
    for (const unsigned char *u = (const unsigned char *)(s ? s : ""); *u; u++) {
        char esc[5];
        const char *piece = esc;
        if (*u == '\n') piece = "\\n";
        else if (*u == '\t') piece = "\\t";
        else if (*u == '\r') piece = "\\r";
        else if (*u < 0x20 || *u == 0x7f) snprintf(esc, sizeof esc, "\\x%02x", *u);
        else esc[0] = (char)*u, esc[1] = 0;
        size_t n = strlen(piece);
        if (o + n >= len) break; /* cut before an escape, never inside one */
        memcpy(out + o, piece, n);
        o += n;
    }
    out[o] = 0;
    return out;
}

const char *cli_container(int ns_pid, const char *container, char *buf, size_t len)
{
    buf[0] = 0;
    if (ns_pid > 0 && container && *container)
        snprintf(buf, len, "[pid %d in %s] ", ns_pid, container);
    else if (ns_pid > 0)
        snprintf(buf, len, "[pid %d in its pid namespace] ", ns_pid);
    else if (container && *container)
        snprintf(buf, len, "[in %s] ", container);
    return buf;
}

const char *cli_identity(const char *hint, const char *container_id, const char *pod, const char *ns, char *buf,
                         size_t len)
{
    int id = container_id && *container_id && !(hint && strstr(hint, container_id));
    int k8s = (pod && *pod) || (ns && *ns);
    buf[0] = 0;
    if (id || k8s)
        snprintf(buf, len, "[%s%s%s%s%s%s%s] ", id ? "container " : "", id ? container_id : "", id && k8s ? ", " : "",
                 k8s ? "pod " : "", ns ? ns : "", ns && *ns && pod && *pod ? "/" : "", k8s && pod ? pod : "");
    return buf;
}

void cli_json_identity(FILE *f, const char *container_id, const char *pod, const char *ns, const char *pod_uid)
{
    fputs(", \"container_id\": ", f);
    cli_json_str(f, container_id ? container_id : "");
    fputs(", \"pod\": ", f);
    cli_json_str(f, pod ? pod : "");
    fputs(", \"namespace\": ", f);
    cli_json_str(f, ns ? ns : "");
    fputs(", \"pod_uid\": ", f);
    cli_json_str(f, pod_uid ? pod_uid : "");
}

const char *cli_bytes(double n, char *buf, size_t len)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double a = n < 0 ? -n : n;
    while (a >= 1024 && u < 4) {
        a /= 1024;
        n /= 1024;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%.0f %s", n, units[u]);
    else snprintf(buf, len, "%.1f %s", n, units[u]);
    return buf;
}

void cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04x", ch); /* JSON must; DEL kept off terminals too */
        else fputc(ch, f);
    }
    fputc('"', f);
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;
    signal(SIGPIPE, SIG_IGN);
    if (!cmd || !strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(cmd ? stdout : stderr);
        return cmd ? MP_EXIT_OK : MP_EXIT_USAGE;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("memprof %s\n", MEMPROF_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "memprof: unknown command '%s' (try memprof --help)\n", cmd);
    return MP_EXIT_USAGE;
}
