/* http.c -- memprofd's HTTP endpoint: libmicrohttpd in its external-epoll mode on the daemon's own event loop
 * (its epoll fd is a file event, MHD_get_timeout a timer; run_mhd says why a run may need a second), so no
 * thread, no lock and nothing ever waits on a peer; every client is bounded (connections, idle time, request
 * size). Routes: /metrics, /debug/pprof/ (the sessions, HTML or JSON), /debug/pprof/targets (Prometheus HTTP
 * SD), /debug/pprof/heap and /allocs (?pid=N or ?session=ID). Loopback only unless allowed; an optional bearer
 * token. */
#include "daemon/http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/pprof.h"
#include "common/util.h"
#include "daemon/alloc.h"
#include "daemon/discovery.h"
#include "daemon/logging.h"
#include "daemon/loop.h"
#include "daemon/metrics.h"
#include "daemon/mhd.h"
#include "daemon/session.h"

/* Bounds on what clients may hold. A scraper keeps one connection; a browser a handful. */
#define HTTP_MAX_CONNECTIONS 128 /* all clients together */
/* Per client address: on a loopback listener every local process (the scraper too) is 127.0.0.1 and may
 * pick any other 127.x.y.z, so a lower cap would only let one local user lock the scraper out; the total is
 * the cap there. On an address other hosts reach, one host gets 16 of the 128. */
#define HTTP_MAX_PER_REMOTE_IP 16
#define HTTP_BACKLOG (2 * HTTP_MAX_CONNECTIONS) /* past the limit a client waits in the kernel's queue */
#define HTTP_IDLE_TIMEOUT 5         /* seconds without a byte either way: the connection is closed */
#define HTTP_LOG_BURST 10            /* libmicrohttpd's messages logged a minute */
#define HTTP_MEMORY_LIMIT (16 << 10) /* bytes per connection: a request line and headers past it get 431/414 */

struct http_config http_config = {.top_n = 10};

static struct MHD_Daemon *mhd;
static int mhd_epfd = -1, listen_fd = -1;
static long long mhd_timer;
static char token[256];

/* HOST:PORT or [V6]:PORT into a socket address; 0 or -1 with err. */
static int parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len, char *err)
{
    char host[256], *colon;
    const char *port;
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *ai;
    char *end;
    long p;
    if (snprintf(host, sizeof host, "%s", spec) >= (int)sizeof host) goto bad;
    if (host[0] == '[') {
        char *close = strchr(host, ']');
        if (!close || close[1] != ':') goto bad;
        *close = 0;
        port = close + 2;
        memmove(host, host + 1, strlen(host));
    } else {
        if (!(colon = strrchr(host, ':')) || strchr(host, ':') != colon) goto bad;
        *colon = 0;
        port = colon + 1;
    }
    p = strtol(port, &end, 10);
    if (!*port || *end || p < 1 || p > 65535 || !*host) goto bad;
    if (getaddrinfo(host, port, &hints, &ai) != 0) {
        mp_err(err, "--http %s: '%s' is not an IP address (give e.g. 127.0.0.1:9464 or [::1]:9464)", spec, host);
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return 0;
bad:
    mp_err(err, "--http %s: expected HOST:PORT, e.g. 127.0.0.1:9464 or [::1]:9464", spec);
    return -1;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) return a->s6_addr[12] == 127;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return 0;
}

static int read_token(char *err)
{
    FILE *f;
    size_t n;
    if (!http_config.token_file) return 0;
    if (!(f = fopen(http_config.token_file, "r"))) {
        mp_errno(err, "--http-token-file %s", http_config.token_file);
        return -1;
    }
    n = fread(token, 1, sizeof token - 1, f);
    fclose(f);
    token[n] = 0;
    while (n && isspace((unsigned char)token[n - 1])) token[--n] = 0;
    if (!n || strpbrk(token, " \t\r\n")) {
        mp_err(err, "--http-token-file %s: expected one token of at most %zu characters, without spaces",
               http_config.token_file, sizeof token - 2);
        return -1;
    }
    return 0;
}

int http_check(char *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!http_config.listen) {
        if (http_config.allow_remote || http_config.token_file) {
            mp_err(err, "--http-allow-remote and --http-token-file need --http HOST:PORT");
            return -1;
        }
        return 0;
    }
    if (parse_listen(http_config.listen, &ss, &len, err) < 0 || read_token(err) < 0) return -1;
    if (!is_loopback(&ss) && !http_config.allow_remote) {
        mp_err(err, "--http %s is not a loopback address: anyone who can reach it reads your processes' "
                    "profiles; add --http-allow-remote (and --http-token-file) to serve it anyway",
               http_config.listen);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ responses */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type, void *body, size_t len,
                             int must_free)
{
    struct MHD_Response *r =
        mhd_fn.create_response_from_buffer(len, body, must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ok;
    if (!r) {
        if (must_free) free(body);
        return MHD_NO;
    }
    mhd_fn.add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_UNAUTHORIZED) mhd_fn.add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    ok = mhd_fn.queue_response(c, status, r);
    mhd_fn.destroy_response(r);
    return ok;
}

/* A one-line reason for a 4xx/5xx. */
static enum MHD_Result fail(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static enum MHD_Result fail(struct MHD_Connection *c, unsigned status, const char *fmt, ...)
{
    char *msg;
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (n < 0) return MHD_NO;
    return reply(c, status, "text/plain; charset=utf-8", msg, (size_t)n, 1);
}

/* ------------------------------------------------------------ routes */

struct query {
    const char *pid, *session, *bad_key, *debug, *format;
};

static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct query *q = cls;
    (void)kind;
    if (!strcmp(key, "pid")) q->pid = value ? value : "";
    else if (!strcmp(key, "session")) q->session = value ? value : "";
    else if (!strcmp(key, "debug")) q->debug = value ? value : "";
    else if (!strcmp(key, "format")) q->format = value ? value : "";
    else if (strcmp(key, "gc") && strcmp(key, "seconds") && !q->bad_key) q->bad_key = key; /* Go's, ignored */
    return MHD_YES;
}

static int parse_id(const char *s, long max, long *out)
{
    char *end;
    long v;
    if (!s || !*s || !isdigit((unsigned char)*s)) return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < 1 || v > max) return -1;
    *out = v;
    return 0;
}

static enum MHD_Result route_heap(struct MHD_Connection *c, int allocated, const char *what)
{
    struct query q = {0};
    struct session *s = NULL;
    struct alloc_reply v;
    char err[MP_ERRLEN];
    uint8_t *gz;
    size_t len;
    long id;
    mhd_fn.get_connection_values(c, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    if (q.bad_key) return fail(c, 400, "unknown parameter '%s': give pid=N or session=ID\n", q.bad_key);
    if (q.debug && strcmp(q.debug, "0"))
        return fail(c, 400, "debug=%s: only the binary profile is served (read it with go tool pprof)\n", q.debug);
    if (!q.pid == !q.session)
        return fail(c, 400, "give exactly one of pid=N or session=ID (/debug/pprof/ lists them)\n");
    if (q.pid) {
        if (parse_id(q.pid, 0x7fffffff, &id) < 0) return fail(c, 400, "pid=%s: not a process id\n", q.pid);
        s = session_find((pid_t)id);
        if (!s || s->state == SESS_DETACHED || s->state == SESS_LOST || (s->state != SESS_ATTACHED && !s->alloc))
            return fail(c, 404, "pid %ld: not attached (memprofd attach --pid %ld)\n", id, id);
    } else {
        if (parse_id(q.session, 0xffffffffL, &id) < 0)
            return fail(c, 400, "session=%s: not a session id\n", q.session);
        s = session_by_id((uint32_t)id);
        if (!s || s->state == SESS_ATTACHING || (s->state != SESS_ATTACHED && !s->alloc))
            return fail(c, 404, "session %ld: no such session with allocation data (/debug/pprof/ lists them)\n", id);
    }
    if (alloc_reply_fill(s, 0, &v, err) < 0) return fail(c, 404, "%s\n", err);
    if (pprof_heap(&v.d, allocated, &gz, &len, err) < 0) {
        alloc_reply_free(&v);
        return fail(c, 500, "%s\n", err);
    }
    alloc_reply_free(&v);
    (void)what;
    return reply(c, 200, "application/octet-stream", gz, len, 1);
}

static void html_text(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* ?format=json, or a client that accepts application/json (and not HTML first, as a browser). */
static int wants_json(struct MHD_Connection *c, const struct query *q)
{
    const char *accept = mhd_fn.lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
    const char *json = accept ? strstr(accept, "application/json") : NULL, *html = accept ? strstr(accept, "text/html") : NULL;
    if (q->format) return !strcmp(q->format, "json");
    return json && (!html || json < html);
}

static enum MHD_Result route_index(struct MHD_Connection *c)
{
    struct query q = {0};
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    mhd_fn.get_connection_values(c, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    if (q.format && strcmp(q.format, "json") && strcmp(q.format, "html"))
        return fail(c, 400, "format=%s: give format=json or format=html\n", q.format);
    if (wants_json(c, &q)) {
        if (!(buf = discovery_sessions_json(&len))) return fail(c, 500, "out of memory\n");
        return reply(c, 200, "application/json", buf, len, 1);
    }
    if (!(f = open_memstream(&buf, &len))) return MHD_NO;
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>memprofd: /debug/pprof/</title></head>\n"
          "<body><h1>memprofd /debug/pprof/</h1>\n<p>Heap profiles (pprof) of the processes memprofd is attached "
          "to: <code>go tool pprof URL</code>. Metrics: <a href=\"/metrics\">/metrics</a>. This list as JSON: "
          "<a href=\"?format=json\">?format=json</a>; as Prometheus HTTP service discovery: "
          "<a href=\"targets\">targets</a>.</p>\n"
          "<table border=\"1\" cellpadding=\"4\">\n<tr><th>pid</th><th>session</th><th>state</th><th>Python</th>"
          "<th>container</th><th>pod</th><th>command</th><th>profiles</th></tr>\n",
          f);
    for (const struct session *s = sessions; s; s = s->next) {
        int live = s->state == SESS_ATTACHED;
        if (!live && !s->alloc) continue;
        fprintf(f, "<tr><td>%d</td><td>%u</td><td>%s</td><td>", (int)s->pid, s->id, session_state_name(s->state));
        html_text(f, s->py.version);
        fputs("</td><td>", f);
        html_text(f, s->ident.container);
        fputs("</td><td>", f);
        html_text(f, s->ident.pod_namespace);
        if (s->ident.pod_namespace[0] && s->ident.pod[0]) fputc('/', f);
        html_text(f, s->ident.pod);
        fputs("</td><td>", f);
        for (size_t i = 0; i < s->argc; i++) {
            if (i) fputc(' ', f);
            html_text(f, s->argv[i]);
        }
        if (live)
            fprintf(f, "</td><td><a href=\"heap?pid=%d\">heap</a> <a href=\"allocs?pid=%d\">allocs</a></td></tr>\n",
                    (int)s->pid, (int)s->pid);
        else
            fprintf(f, "</td><td><a href=\"heap?session=%u\">heap</a> <a href=\"allocs?session=%u\">allocs</a></td></tr>\n",
                    s->id, s->id);
    }
    fputs("</table>\n</body></html>\n", f);
    if (fclose(f) != 0) {
        free(buf);
        return MHD_NO;
    }
    return reply(c, 200, "text/html; charset=utf-8", buf, len, 1);
}

/* The Host the scraper used, when it is a plain HOST:PORT (it goes back into the list verbatim), else the
 * address we listen on. */
static const char *scrape_host(struct MHD_Connection *c)
{
    const char *h = mhd_fn.lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    if (!h || !*h || strlen(h) > 255 || strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") != strlen(h))
        return http_config.listen;
    return h;
}

static enum MHD_Result route_targets(struct MHD_Connection *c)
{
    size_t len;
    char *text = discovery_targets(scrape_host(c), &len);
    if (!text) return fail(c, 500, "out of memory\n");
    return reply(c, 200, "application/json", text, len, 1);
}

static enum MHD_Result route_metrics(struct MHD_Connection *c)
{
    struct query q = {0};
    size_t len;
    char *text;
    mhd_fn.get_connection_values(c, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    if (q.bad_key || q.pid || q.session) return fail(c, 400, "/metrics takes no parameters\n");
    if (!(text = metrics_render(http_config.top_n, &len))) return fail(c, 500, "out of memory\n");
    return reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, 1);
}

static int authorized(struct MHD_Connection *c)
{
    const char *h;
    size_t n;
    if (!token[0]) return 1;
    h = mhd_fn.lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    n = strlen(token);
    if (strlen(h) != n) return 0;
    {
        unsigned char diff = 0; /* time independent of where they differ */
        for (size_t i = 0; i < n; i++) diff |= (unsigned char)(h[i] ^ token[i]);
        return diff == 0;
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **state)
{
    (void)cls, (void)version, (void)upload, (void)upload_size, (void)state;
    /* Answered at the first call, on the headers alone: every route is GET, so a body is never read
     * (libmicrohttpd closes the connection after the answer instead) and no client keeps memprofd reading. */
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) return fail(c, 405, "%s: only GET is served\n", method);
    if (!authorized(c)) return fail(c, 401, "a bearer token is required (Authorization: Bearer TOKEN)\n");
    if (!strcmp(url, "/metrics")) return route_metrics(c);
    if (!strcmp(url, "/debug/pprof/heap")) return route_heap(c, 0, "heap");
    if (!strcmp(url, "/debug/pprof/allocs")) return route_heap(c, 1, "allocs");
    if (!strcmp(url, "/debug/pprof/targets")) return route_targets(c);
    if (!strcmp(url, "/debug/pprof/") || !strcmp(url, "/debug/pprof") || !strcmp(url, "/")) return route_index(c);
    return fail(c, 404, "%s: not found (try /metrics, /debug/pprof/ or /debug/pprof/targets)\n", url);
}

/* ------------------------------------------------------------ the loop */

/* libmicrohttpd logs a line per misbehaving client (a request too big, one left unfinished), so any local
 * user could fill the log: HTTP_LOG_BURST lines a minute, then one line counting the rest (written when the
 * next message comes). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    static double window;
    static unsigned logged, dropped;
    double now = mp_now();
    char msg[512];
    size_t n;
    (void)cls;
    if (now - window >= 60) {
        if (dropped) server_log("http: %u more libmicrohttpd messages in the minute before not logged", dropped);
        window = now;
        logged = dropped = 0;
    }
    if (logged++ >= HTTP_LOG_BURST) {
        dropped++;
        return;
    }
    vsnprintf(msg, sizeof msg, fmt, ap);
    n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    server_log("http: %s", msg);
}

static void rearm(void);

static unsigned connections(void)
{
    const union MHD_DaemonInfo *i = mhd_fn.get_daemon_info(mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return i ? i->num_connections : 0;
}

/* One MHD_run, and a second when the first closed connections. Why (libmicrohttpd 0.9.75, MHD_epoll() in
 * daemon.c): whether the listening socket is in MHD's epoll set is decided once, at the top of a run, from
 * the connection count; at the limit it is taken out. Connections that time out or finish later in that
 * run are freed only by the MHD_cleanup_connections() after it, so the run ends below the limit with the
 * listener still out of the set. Then nothing makes MHD's epoll fd readable (new clients wait unseen in the
 * kernel's accept queue) and MHD_get_timeout() has no deadline left once the last connection is gone: the
 * next run, which would put the listener back, never came, and the endpoint hung for good. The second run
 * puts it back (its top sees the lower count) and accepts what is waiting. */
static void run_mhd(void)
{
    unsigned before = connections();
    mhd_fn.run(mhd);
    if (connections() < before) mhd_fn.run(mhd);
}

static long on_timer(long long id, void *data)
{
    (void)data;
    if (id == mhd_timer) mhd_timer = 0;
    run_mhd();
    rearm();
    return LOOP_NOMORE;
}

/* A timer for MHD's next deadline (idle connections, or work it has left ready). */
static void rearm(void)
{
    MHD_UNSIGNED_LONG_LONG ms;
    if (mhd_timer) loop_del_timer(mhd_timer);
    mhd_timer = 0;
    if (mhd_fn.get_timeout(mhd, &ms) == MHD_YES) mhd_timer = loop_add_timer(ms > 60000 ? 60000 : (long)ms, on_timer, NULL);
}

static void on_ready(int fd, int mask, void *data)
{
    (void)fd, (void)mask, (void)data;
    run_mhd();
    rearm();
}

int http_start(char *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    const union MHD_DaemonInfo *info;
    int one = 1;
    if (!http_config.listen) return 0;
    if (http_check(err) < 0 || parse_listen(http_config.listen, &ss, &len, err) < 0 || mhd_load(err) < 0) return -1;
    listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd < 0) {
        mp_errno(err, "http socket");
        return -1;
    }
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listen_fd, (struct sockaddr *)&ss, len) < 0 || listen(listen_fd, HTTP_BACKLOG) < 0) {
        mp_errno(err, "cannot listen on http://%s", http_config.listen);
        close(listen_fd);
        listen_fd = -1;
        return -1;
    }
    mhd = mhd_fn.start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0), 0,
                              NULL, NULL, on_request, NULL,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, /* first: it logs the options after it */
                              MHD_OPTION_LISTEN_SOCKET, listen_fd,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
                              MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                              (unsigned)(is_loopback(&ss) ? HTTP_MAX_CONNECTIONS : HTTP_MAX_PER_REMOTE_IP),
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY_LIMIT, MHD_OPTION_END);
    if (!mhd) {
        mp_err(err, "cannot start the HTTP server on %s (libmicrohttpd refused; see the log above)",
               http_config.listen);
        close(listen_fd);
        listen_fd = -1;
        return -1;
    }
    info = mhd_fn.get_daemon_info(mhd, MHD_DAEMON_INFO_EPOLL_FD);
    mhd_epfd = info ? info->epoll_fd : -1;
    if (mhd_epfd < 0 || loop_add_fd(mhd_epfd, LOOP_READ, on_ready, NULL, err) < 0) {
        if (mhd_epfd < 0) mp_err(err, "libmicrohttpd has no epoll fd");
        http_stop();
        return -1;
    }
    rearm();
    server_log("serving http://%s/metrics and /debug/pprof/%s%s", http_config.listen,
               token[0] ? " (bearer token required)" : "", is_loopback(&ss) ? "" : " to remote hosts");
    if (!is_loopback(&ss))
        fprintf(stderr, "memprofd: warning: --http %s is reachable from other hosts: %s can read every "
                        "attached process's profile%s\n",
                http_config.listen, token[0] ? "they" : "anyone who can reach the address",
                token[0] ? " with the token" : " (no --http-token-file)");
    else if (!token[0] && geteuid() == 0) /* root attaches to everyone's processes; 127.0.0.1 is everyone's */
        fprintf(stderr, "memprofd: warning: --http %s has no --http-token-file: every local user can read the "
                        "profile of every process this root daemon attaches to, whoever owns it\n",
                http_config.listen);
    return 0;
}

void http_stop(void)
{
    if (mhd_timer) loop_del_timer(mhd_timer);
    mhd_timer = 0;
    if (mhd_epfd >= 0) loop_del_fd(mhd_epfd, LOOP_READ | LOOP_WRITE);
    mhd_epfd = -1;
    if (mhd) mhd_fn.stop_daemon(mhd);
    mhd = NULL;
    if (listen_fd >= 0) close(listen_fd);
    listen_fd = -1;
}
