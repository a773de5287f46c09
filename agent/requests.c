/* requests.c -- the daemon's requests to the agent: one handler each (tracking settings, census,
 * back-references, detach) and the route table that runs them, with the GIL where they need it. */
#include "agent/requests.h"

#include "agent/agent.h"
#include "agent/gil.h"
#include "agent/hooks.h"
#include "agent/install.h"
#include "agent/native.h"
#include "agent/state.h"
#include "common/util.h"

/* A request's handler fills reply (its body) or err; returns 0, -1 (error), or -2 (the interpreter is
 * finalizing: the session ends). */
typedef int request_fn(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err);

static int on_detach(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    static Memprof__DetachReply detach = MEMPROF__DETACH_REPLY__INIT; /* static: the reply points at it until
                                                                       * sent; only the agent thread answers */
    (void)req;
    (void)err;
    agent_undo();
    detach.unloaded = 0; /* the daemon unloads the library once this thread is gone */
    reply->body_case = MEMPROF__AGENT_REPLY__BODY_DETACH;
    reply->detach = &detach;
    return 0;
}

/* The daemon's settings: the first ones install the hooks (nothing is hooked before them); once the
 * hooks are in, only the interval changes. The reply is what is in force. */
static int on_tracking(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    static Memprof__TrackingConfig tracking;
    (void)err;
    agent_conf.interval_ms = conf_interval(req->tracking->interval_ms);
    if (!hooks_installed()) {
        conf_tracking(&agent_conf, req->tracking);
        if (launch_hand_over()) launch_wait(LAUNCH_GOT, mp_now() + LAUNCH_WAIT_S);
        if (!hooks_installed()) agent_track(); /* injected, or the launch gave up waiting */
    }
    memprof__tracking_config__init(&tracking);
    tracking.enabled = hooks_installed();
    tracking.exact = agent_conf.exact;
    tracking.sample_rate = agent_conf.rate;
    tracking.max_frames = agent_conf.frames;
    tracking.interval_ms = agent_conf.interval_ms;
    tracking.native = native_installed();
    tracking.native_frames = native_installed() && agent_conf.native_frames;
    tracking.native_note = (char *)agent_native_note();
    reply->body_case = MEMPROF__AGENT_REPLY__BODY_TRACKING;
    reply->tracking = &tracking;
    return 0;
}

static int on_census(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    return census_handle(req->census, reply, err);
}

static int on_backrefs(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    return backrefs_handle(req->backrefs, reply, err);
}

/* The agent's dispatch table: a new request is a schema entry, one handler and one row. */
static const struct request_route {
    Memprof__AgentRequest__BodyCase body;
    request_fn *fn;
    int needs_gil;                               /* run with the GIL held, timed into gil_ms */
    void (*release)(Memprof__AgentReply *reply); /* frees the reply's body after it was sent */
    int ends_session;
} request_routes[] = {
    {MEMPROF__AGENT_REQUEST__BODY_DETACH, on_detach, 0, NULL, 1},
    {MEMPROF__AGENT_REQUEST__BODY_CENSUS, on_census, 1, census_free, 0},
    {MEMPROF__AGENT_REQUEST__BODY_BACKREFS, on_backrefs, 1, backrefs_free, 0},
    {MEMPROF__AGENT_REQUEST__BODY_TRACKING, on_tracking, 0, NULL, 0},
};

static const struct request_route *request_route(Memprof__AgentRequest__BodyCase body)
{
    const struct request_route *route = NULL;
    for (size_t i = 0; i < sizeof request_routes / sizeof request_routes[0]; i++)
        if (request_routes[i].body == body) route = &request_routes[i];
    return route;
}

/* Run a handler with the GIL held, timing how long it is held. -2 when the interpreter is finalizing. */
static int handle_locked(const struct request_route *r, const Memprof__AgentRequest *req,
                         Memprof__AgentReply *reply, char *err)
{
    int rc;
    double t0;
    if (gil_handler_enter() < 0) {
        mp_err(err, "the Python interpreter is shutting down");
        return -2;
    }
    t0 = mp_now();
    rc = r->fn(req, reply, err);
    reply->gil_ms = (mp_now() - t0 - gil_handler_released()) * 1e3;
    if (gil_handler_leave() < 0) { /* a yield found the interpreter finalizing */
        mp_err(err, "the Python interpreter is shutting down");
        return -2;
    }
    return rc;
}

int request_run(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err, int *stop)
{
    const struct request_route *route = request_route(req->body_case);
    int rc;
    *stop = 0;
    if (!route) {
        mp_err(err, "unknown request (body %d): this agent is older than the daemon", (int)req->body_case);
        return -1;
    }
    rc = route->needs_gil ? handle_locked(route, req, reply, err) : route->fn(req, reply, err);
    *stop = route->ends_session || rc == -2;
    return rc;
}

void request_release(const Memprof__AgentRequest *req, Memprof__AgentReply *reply)
{
    const struct request_route *route = request_route(req->body_case);
    if (route && route->release) route->release(reply);
}
