/* discovery.c -- the sessions as JSON for /debug/pprof/?format=json, and as Prometheus HTTP service discovery
 * (/debug/pprof/targets) for Prometheus, Parca and Grafana Alloy to find one pprof target per process. */
#include "daemon/discovery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/session.h"

/* Length of the valid UTF-8 sequence at s (1-4; no overlong forms, surrogates or code points past U+10FFFF),
 * or 0. */
static size_t utf8_len(const unsigned char *s)
{
    size_t n = s[0] < 0x80 ? 1 : s[0] >= 0xc2 && s[0] <= 0xdf ? 2 : s[0] >= 0xe0 && s[0] <= 0xef ? 3
             : s[0] >= 0xf0 && s[0] <= 0xf4                   ? 4
                                                              : 0;
    if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) || (s[0] == 0xf0 && s[1] < 0x90) ||
        (s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

/* s as a JSON string: the target's command line may hold any bytes, so control characters are escaped and a
 * byte that is not UTF-8 becomes U+FFFD (a strict decoder would refuse the whole list otherwise). */
static void json_str(FILE *f, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    fputc('"', f);
    while (*p) {
        size_t n;
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p++);
        else if (*p < 0x20 || *p == 0x7f) fprintf(f, "\\u%04x", *p++);
        else if (*p < 0x80) fputc(*p++, f);
        else if ((n = utf8_len(p))) fwrite(p, 1, n, f), p += n;
        else fputs("\\ufffd", f), p++;
    }
    fputc('"', f);
}

static void command(FILE *f, const struct session *s)
{
    char *cmd = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&cmd, &len);
    if (m) {
        for (size_t i = 0; i < s->argc; i++) fprintf(m, "%s%s", i ? " " : "", s->argv[i]);
        fclose(m);
    }
    json_str(f, cmd ? cmd : "");
    free(cmd);
}

/* Closes f, whose buffer is *buf (set by the close): it, or NULL. */
static char *done(FILE *f, char **buf)
{
    if (fclose(f) == 0) return *buf;
    free(*buf);
    return NULL;
}

char *discovery_sessions_json(size_t *len)
{
    char *buf = NULL;
    int n = 0;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    fputs("[", f);
    for (const struct session *s = sessions; s; s = s->next) {
        int live = s->state == SESS_ATTACHED;
        const char *by = live ? "pid" : "session";
        unsigned key = live ? (unsigned)s->pid : s->id;
        if (!live && !s->alloc) continue; /* as the HTML index: what has a profile to serve */
        fprintf(f, "%s\n{\"pid\": %d, \"session\": %u, \"state\": \"%s\", \"python\": ", n++ ? "," : "", (int)s->pid,
                s->id, session_state_name(s->state));
        json_str(f, s->py.version);
        fputs(", \"command\": ", f);
        command(f, s);
        fputs(", \"container\": ", f);
        json_str(f, s->ident.container);
        fputs(", \"pod\": ", f);
        json_str(f, s->ident.pod);
        fputs(", \"namespace\": ", f);
        json_str(f, s->ident.pod_namespace);
        fputs(", \"pod_uid\": ", f);
        json_str(f, s->ident.pod_uid);
        fprintf(f, ", \"heap\": \"/debug/pprof/heap?%s=%u\", \"allocs\": \"/debug/pprof/allocs?%s=%u\"}", by, key, by,
                key);
    }
    fputs("\n]\n", f);
    return done(f, &buf);
}

static void label(FILE *f, const char *name, const char *value)
{
    if (!value || !*value) return; /* an empty label is no label to Prometheus */
    fprintf(f, ", \"%s\": ", name);
    json_str(f, value);
}

char *discovery_targets(const char *host, size_t *len)
{
    char *buf = NULL;
    int n = 0;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    fputs("[", f);
    for (const struct session *s = sessions; s; s = s->next) {
        if (s->state != SESS_ATTACHED) continue;
        fprintf(f, "%s\n{\"targets\": [", n++ ? "," : "");
        json_str(f, host);
        fprintf(f, "], \"labels\": {\"__param_pid\": \"%d\", \"pid\": \"%d\"", (int)s->pid, (int)s->pid);
        label(f, "container", s->ident.container);
        label(f, "pod", s->ident.pod);
        label(f, "namespace", s->ident.pod_namespace);
        fputs("}}", f);
    }
    fputs("\n]\n", f);
    return done(f, &buf);
}
