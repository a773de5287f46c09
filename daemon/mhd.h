/* mhd.h -- libmicrohttpd, loaded when the HTTP endpoint is asked for (mhd_load), and called through mhd_fn:
 * memprofd's other commands, the client's attach and detach among them, start without it and the TLS stack it
 * links (ten libraries, about a millisecond of CPU per start, on a machine where a target's threads may be
 * waiting for that CPU). The types are the header's own (typeof), so a call is checked as a direct one. */
#ifndef MEMPROF_DAEMON_MHD_H
#define MEMPROF_DAEMON_MHD_H

#include <microhttpd.h>

#define MHD_FNS(X)                                                                                               \
    X(add_response_header) X(create_response_from_buffer) X(destroy_response) X(get_connection_values)          \
    X(get_daemon_info) X(get_timeout) X(lookup_connection_value) X(queue_response) X(run) X(start_daemon)        \
    X(stop_daemon)

struct mhd_fns {
#define MHD_FIELD(name) __typeof__(&MHD_##name) name;
    MHD_FNS(MHD_FIELD)
#undef MHD_FIELD
};
extern struct mhd_fns mhd_fn;

/* Loads the library once: 0, or -1 and err (it is not installed). */
int mhd_load(char *err);

#endif
