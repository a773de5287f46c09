/* harness.c -- runs agent/census.c and the object commands of cli/ inside a Python
 * process loaded with ctypes, with no injector or daemon: a stub client takes the
 * GIL and calls the handlers the way the agent core does, and passes the replies
 * through the wire encoding. Build: make -C tests/objects. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/agent.h"
#include "client/client.h"
#include "common/util.h"
#include "proto/wire.h"

#define HARNESS_API __attribute__((visibility("default")))

int memprof_cli_main(int argc, char **argv); /* cli/main.c built with -Dmain=memprof_cli_main */

/* ------------------------------------------------ what agent/pyapi.c provides (pyapi_sym: agent/pysym.c, no
 * pylib handle opened, so the global scope) */

uint32_t pyapi_hexversion(void)
{
    const char *(*version)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "Py_GetVersion");
    unsigned a = 0, b = 0, c = 0;
    if (!version || sscanf(version(), "%u.%u.%u", &a, &b, &c) < 2) return 0;
    return a << 24 | b << 16 | c << 8 | 0xf0;
}

const struct pyabi *pyapi_abi(void) { return pyabi_for(pyapi_hexversion()); }

const char *pyapi_abi_error(void) { return "unsupported Python (memprof supports " MP_PY_RANGE ")"; }

/* ------------------------------------------------ the GIL, as agent/gil.c takes it */

static int gil_take(void)
{
    int (*ensure)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    return ensure();
}

static void gil_give(int state)
{
    void (*release)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "PyGILState_Release");
    release(state);
}

static int handler_state;
static double handler_released;

/* gil.c defers these frees until the GIL is given back (a pause the target would see); here nothing waits */
void gil_free_after(void *p) { free(p); }

int gil_yield(void (*off)(void *), void *arg)
{
    double t = mp_now();
    gil_give(handler_state);
    if (off) off(arg);
    handler_state = gil_take();
    handler_released += mp_now() - t;
    return 0;
}

static int run_handler(const Memprof__AgentRequest *req, Memprof__AgentReply *rep, char *err)
{
    int rc;
    double t0;
    handler_state = gil_take();
    handler_released = 0;
    t0 = mp_now();
    if (req->body_case == MEMPROF__AGENT_REQUEST__BODY_CENSUS) rc = census_handle(req->census, rep, err);
    else rc = backrefs_handle(req->backrefs, rep, err);
    rep->gil_ms = (mp_now() - t0 - handler_released) * 1e3;
    gil_give(handler_state);
    return rc;
}

static void release(const Memprof__AgentRequest *req, Memprof__AgentReply *rep)
{
    if (req->body_case == MEMPROF__AGENT_REQUEST__BODY_CENSUS) census_free(rep);
    else backrefs_free(rep);
}

/* ------------------------------------------------ cli/flame_page.S, stubbed (an empty page) */

const char flame_page[] = "";

/* ------------------------------------------------ client/client.c, stubbed */

const char *client_socket_opt;

int client_connect(const char *socket, int spawn, char *err)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    (void)socket;
    (void)spawn;
    if (fd < 0) mp_errno(err, "/dev/null");
    return fd;
}

int client_call(int fd, const Envelope *req, Envelope **reply, int timeout_ms, char *err)
{
    (void)fd, (void)req, (void)reply, (void)timeout_ms;
    mp_err(err, "harness: no daemon");
    return -1;
}

int client_check_agent(const char *lib, char *real, size_t reallen, char *err)
{
    (void)lib, (void)real, (void)reallen;
    mp_err(err, "harness: no agent to load");
    return -1;
}

int client_agent_call(int fd, int pid, Memprof__AgentRequest *req, Envelope **env,
                      Memprof__AgentReply **reply, int timeout_ms, char *err)
{
    Memprof__AgentReply rep = MEMPROF__AGENT_REPLY__INIT;
    Envelope out = MEMPROF__ENVELOPE__INIT;
    uint8_t *buf;
    size_t len;
    int rc;
    (void)fd, (void)timeout_ms;
    if (pid != getpid()) {
        mp_err(err, "harness: pid %d is not this process (%d)", pid, (int)getpid());
        return -1;
    }
    if (run_handler(req, &rep, err) < 0) {
        release(req, &rep);
        return -1;
    }
    out.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_REPLY;
    out.agent_reply = &rep;
    rc = wire_encode(&out, &buf, &len, err);
    release(req, &rep);
    if (rc < 0) return -1;
    rc = wire_decode(buf + WIRE_HDR, len - WIRE_HDR, env, err);
    free(buf);
    if (rc < 0) return -1;
    *reply = (*env)->agent_reply;
    return 0;
}

/* ------------------------------------------------ entry points for ctypes */

/* Run `memprof ARGS...` with stdout/stderr sent to two files; returns the exit code. */
HARNESS_API int harness_cli(const char *out, const char *errpath, int argc, char **argv)
{
    int o = dup(1), e = dup(2), fo, fe, rc;
    fflush(stdout);
    fflush(stderr);
    fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    fe = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1);
    dup2(fe, 2);
    close(fo);
    close(fe);
    rc = memprof_cli_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(o, 1);
    dup2(e, 2);
    close(o);
    close(e);
    return rc;
}

/* A census straight from the handler: "objects bytes gil_ms" then one line per
 * type "name\tmodule\tcount\tbytes". Returns 0, or -1 with the error in out. */
HARNESS_API int harness_census(int all, char *out, size_t outlen)
{
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    Memprof__CensusRequest creq = MEMPROF__CENSUS_REQUEST__INIT;
    Memprof__AgentReply rep = MEMPROF__AGENT_REPLY__INIT;
    char err[MP_ERRLEN] = "";
    size_t n;
    creq.all = all;
    req.body_case = MEMPROF__AGENT_REQUEST__BODY_CENSUS;
    req.census = &creq;
    if (run_handler(&req, &rep, err) < 0) {
        snprintf(out, outlen, "%s", err);
        census_free(&rep);
        return -1;
    }
    n = (size_t)snprintf(out, outlen, "%llu %llu %.3f\n", (unsigned long long)rep.census->objects,
                         (unsigned long long)rep.census->bytes, rep.gil_ms);
    for (size_t i = 0; i < rep.census->n_types && n < outlen; i++) {
        Memprof__TypeCount *t = rep.census->types[i];
        n += (size_t)snprintf(out + n, outlen - n, "%s\t%s\t%llu\t%llu\n", t->name, t->module,
                              (unsigned long long)t->count, (unsigned long long)t->bytes);
    }
    census_free(&rep);
    return 0;
}

static void json_str(char *out, size_t outlen, size_t *n, const char *s)
{
    if (*n < outlen) *n += (size_t)snprintf(out + *n, outlen - *n, "\"");
    for (; *s && *n + 8 < outlen; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') *n += (size_t)snprintf(out + *n, outlen - *n, "\\%c", c);
        else if (c < 0x20) *n += (size_t)snprintf(out + *n, outlen - *n, "\\u%04x", c);
        else out[(*n)++] = (char)c;
    }
    if (*n < outlen) *n += (size_t)snprintf(out + *n, outlen - *n, "\"");
}

#define APPEND(...) \
    do { if (n < outlen) n += (size_t)snprintf(out + n, outlen - n, __VA_ARGS__); } while (0)

/* Back-references straight from the handler, as JSON:
 * {"ok":1,"gil_ms":..,"matched":..,"nodes":[[addr,type,label,depth,start,module,more]...],
 *  "edges":[[src,dst,label]...],"chain":[...],"suggestions":[...]} or {"ok":0,"error":..}. */
HARNESS_API int harness_backrefs(const char *type_name, unsigned long long addr, unsigned max_depth,
                                 unsigned too_many, unsigned max_start, int chain, char *out, size_t outlen)
{
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    Memprof__BackrefsRequest breq = MEMPROF__BACKREFS_REQUEST__INIT;
    Memprof__AgentReply rep = MEMPROF__AGENT_REPLY__INIT;
    Memprof__BackrefsReply *r;
    char err[MP_ERRLEN] = "";
    size_t n = 0;
    int rc;
    breq.type_name = (char *)(type_name ? type_name : "");
    breq.addr = addr;
    breq.max_depth = max_depth;
    breq.too_many = too_many;
    breq.max_start = max_start;
    breq.chain_only = chain;
    req.body_case = MEMPROF__AGENT_REQUEST__BODY_BACKREFS;
    req.backrefs = &breq;
    rc = run_handler(&req, &rep, err);
    r = rep.body_case == MEMPROF__AGENT_REPLY__BODY_BACKREFS ? rep.backrefs : NULL;
    APPEND("{\"ok\": %d, \"gil_ms\": %.3f, \"error\": ", rc == 0, rep.gil_ms);
    json_str(out, outlen, &n, rc < 0 ? err : "");
    if (r) {
        APPEND(", \"matched\": %llu, \"nodes\": [", (unsigned long long)r->matched);
        for (size_t i = 0; i < r->n_nodes; i++) {
            Memprof__GraphNode *g = r->nodes[i];
            APPEND("%s[%llu, ", i ? ", " : "", (unsigned long long)g->addr);
            json_str(out, outlen, &n, g->type_name);
            APPEND(", ");
            json_str(out, outlen, &n, g->label);
            APPEND(", %u, %d, %d, %u]", g->depth, g->start, g->is_module, g->more);
        }
        APPEND("], \"edges\": [");
        for (size_t i = 0; i < r->n_edges; i++) {
            APPEND("%s[%llu, %llu, ", i ? ", " : "", (unsigned long long)r->edges[i]->src,
                   (unsigned long long)r->edges[i]->dst);
            json_str(out, outlen, &n, r->edges[i]->label);
            APPEND("]");
        }
        APPEND("], \"chain\": [");
        for (size_t i = 0; i < r->n_chain; i++) APPEND("%s%llu", i ? ", " : "", (unsigned long long)r->chain[i]);
        APPEND("], \"suggestions\": [");
        for (size_t i = 0; i < r->n_suggestions; i++) {
            APPEND("%s", i ? ", " : "");
            json_str(out, outlen, &n, r->suggestions[i]);
        }
        APPEND("]");
    }
    APPEND("}");
    backrefs_free(&rep);
    return n >= outlen ? -2 : rc;
}
