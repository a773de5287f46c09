/* session.c -- the session table: creation, lookup, retirement and description; a session's agent token
 * and tracking settings. */
#include "daemon/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/defaults.h"

#define MAX_ENDED_SESSIONS 64

struct session *sessions;
const char *session_agent_lib;

static int live(const struct session *s)
{
    return s->state == SESS_ATTACHING || s->state == SESS_ATTACHED || s->state == SESS_DETACHING;
}

struct session *session_find(pid_t pid)
{
    struct session *ended = NULL;
    for (struct session *s = sessions; s; s = s->next) {
        if (s->pid != pid) continue;
        if (live(s)) return s;
        if (!ended) ended = s;
    }
    return ended;
}

struct session *session_by_id(uint32_t id)
{
    for (struct session *s = sessions; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

struct session *session_of_agent(uint64_t conn_id)
{
    for (struct session *s = sessions; s; s = s->next)
        if (conn_id && s->agent_conn == conn_id) return s;
    return NULL;
}

struct session *session_new(pid_t pid)
{
    static uint32_t last_id;
    struct session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->id = ++last_id;
    s->pid = pid;
    s->state = SESS_ATTACHING;
    memprof__tracking_config__init(&s->track);
    s->next = sessions;
    sessions = s;
    return s;
}

void session_free(struct session *s)
{
    struct session **pp;
    for (pp = &sessions; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    free(s->executable);
    for (size_t i = 0; i < s->argc; i++) free(s->argv[i]);
    free(s->argv);
    free(s);
}

void session_retire(struct session *s, enum sess_state state)
{
    s->state = state;
    s->agent_conn = 0;
    s->deadline = 0;
}

struct session *session_beyond_history(void)
{
    size_t ended = 0;
    for (struct session *s = sessions; s; s = s->next)
        if (!live(s) && ++ended > MAX_ENDED_SESSIONS) return s;
    return NULL;
}

int session_make_token(char out[33])
{
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) return -1;
    for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", rnd[i]);
    return 0;
}

void session_tracking(Memprof__TrackingConfig *t, int enabled, int exact, uint64_t rate, uint32_t frames,
                      uint32_t interval_ms, uint32_t default_interval_ms)
{
    memprof__tracking_config__init(t);
    t->enabled = enabled;
    t->exact = exact;
    t->sample_rate = rate ? rate : MP_DEFAULT_SAMPLE_RATE;
    t->max_frames = frames ? frames : MP_DEFAULT_MAX_FRAMES;
    t->interval_ms = interval_ms ? interval_ms : default_interval_ms;
}

static Memprof__SessionInfo__State session_state_proto(enum sess_state st)
{
    static const Memprof__SessionInfo__State proto[] = {
        MEMPROF__SESSION_INFO__STATE__ATTACHING, MEMPROF__SESSION_INFO__STATE__ATTACHED,
        MEMPROF__SESSION_INFO__STATE__DETACHING, MEMPROF__SESSION_INFO__STATE__DETACHED,
        MEMPROF__SESSION_INFO__STATE__EXITED,    MEMPROF__SESSION_INFO__STATE__LOST};
    return proto[st];
}

const char *session_state_name(enum sess_state st) { return wire_state_name(session_state_proto(st)); }

void session_fill_info(const struct session *s, Memprof__SessionInfo *info)
{
    memprof__session_info__init(info);
    info->id = s->id;
    info->pid = s->pid;
    info->run = s->run;
    info->ppid = s->ppid;
    info->ns_pid = s->ns_pid != s->pid ? s->ns_pid : 0;
    info->container = (char *)s->container;
    info->container_id = (char *)s->ident.container;
    info->pod = (char *)s->ident.pod;
    info->pod_namespace = (char *)s->ident.pod_namespace;
    info->pod_uid = (char *)s->ident.pod_uid;
    info->python_version = (char *)s->py.version;
    info->state = session_state_proto(s->state);
    info->attached_since = s->attached_since;
    info->executable = s->executable ? s->executable : (char *)"";
    info->argv = s->argv;
    info->n_argv = s->argc;
    info->stop_ms = s->stop_ms;
    info->mode = !s->track.enabled ? MEMPROF__SESSION_INFO__MODE__OFF
                 : s->track.exact   ? MEMPROF__SESSION_INFO__MODE__EXACT
                 : s->track.native  ? MEMPROF__SESSION_INFO__MODE__NATIVE
                                    : MEMPROF__SESSION_INFO__MODE__SAMPLING;
    info->sample_rate = s->track.sample_rate;
    info->agent_version = (char *)s->agent_version;
    info->native_note = (char *)s->native_note;
    info->native_late_note = (char *)s->native_late;
    info->watch_rule = (char *)(s->watch_rule ? s->watch_rule : "");
}
