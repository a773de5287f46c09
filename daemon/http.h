/* http.h -- memprofd's opt-in HTTP endpoint (libmicrohttpd on the daemon's event loop): /metrics for
 * Prometheus, /debug/pprof/heap for go tool pprof, Parca and Pyroscope, /debug/pprof/ listing sessions. */
#ifndef MEMPROF_HTTP_H
#define MEMPROF_HTTP_H

struct http_config {
    const char *listen;     /* HOST:PORT, [V6]:PORT; NULL: no HTTP endpoint */
    int allow_remote;       /* a non-loopback address is refused without it */
    const char *token_file; /* when set, requests need "Authorization: Bearer <its content>" */
    unsigned top_n;         /* sites and types per process in /metrics */
};
extern struct http_config http_config;

/* Checks the configuration (address, loopback, token file) without starting anything: 0 or -1 with err. */
int http_check(char *err);
/* Listens and joins the event loop (after loop_init); nothing when http_config.listen is NULL. */
int http_start(char *err);
void http_stop(void);

#endif
