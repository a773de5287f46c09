/* wire.h -- framing of memprof messages: 4-byte little-endian length, then one
 * protobuf-encoded Envelope. The size cap is checked before anything is allocated. */
#ifndef MEMPROF_WIRE_H
#define MEMPROF_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include "common/util.h"
#include "gen/memprof.pb-c.h"

#define MEMPROF_PROTOCOL 1
#define WIRE_MAX_MSG (16u << 20) /* 16 MiB: a census or graph of a big heap fits */
#define WIRE_HDR 4
/* What a decoded message may cost in memory, estimated from its encoding before protobuf-c unpacks it
 * (protobuf-c allocates per field: a 3-byte unknown field costs ~75 bytes, a 2-byte empty submessage ~150):
 * at most WIRE_DECODE_RATIO times its size (a legitimate report of one-frame stacks comes near 20) and
 * WIRE_DECODE_MAX in all, of which unknown fields (a newer peer's) at most WIRE_UNKNOWN_RATIO times. */
#define WIRE_DECODE_RATIO 32
#define WIRE_UNKNOWN_RATIO 4
#define WIRE_DECODE_SLACK (64u << 10)
#define WIRE_DECODE_MAX ((size_t)128 << 20)

typedef Memprof__Envelope Envelope;

/* A repeated message field's storage: n zeroed messages (calloc'd, room for n + 1: never 0 bytes) and as many
 * pointers for the field to hold. True when both were allocated; on false, free both (either may be NULL). */
#define WIRE_ARRAYS(msgs, ptrs, n) \
    ((msgs) = calloc((n) + 1, sizeof *(msgs)), (ptrs) = calloc((n) + 1, sizeof *(ptrs)), (msgs) && (ptrs))

/* Encode env as one frame into a malloc'd buffer. */
int wire_encode(const Envelope *env, uint8_t **out, size_t *outlen, char *err);

/* Decode one payload (without the length header). An envelope holding only a message this build does not
 * know decodes with msg_case MEMPROF__ENVELOPE__MSG__NOT_SET (the receiver says "unsupported"). A payload
 * whose decoded form would cost more than the WIRE_DECODE_* bounds above is refused before anything is
 * allocated. */
int wire_decode(const uint8_t *payload, size_t len, Envelope **env, char *err);
void wire_free(Envelope *env);

/* A growable receive buffer for non-blocking readers. */
struct wire_rbuf {
    uint8_t *buf;
    size_t len, cap;
    size_t max; /* largest frame payload accepted (0: WIRE_MAX_MSG); the buffer never grows past one */
};
void wire_rbuf_free(struct wire_rbuf *rb);
/* Append what can be read from fd now. Returns bytes read, 0 on EOF, -1 on
 * error (EAGAIN gives -1 with errno EAGAIN and no message). Refuses to grow
 * past one maximal frame (rb->max). */
ssize_t wire_rbuf_fill(struct wire_rbuf *rb, int fd, char *err);
/* Take one complete frame off the front: 1 = *env set, 0 = need more bytes,
 * -1 = malformed or oversized: over rb->max (the connection must be dropped). */
int wire_take(struct wire_rbuf *rb, Envelope **env, char *err);

/* Blocking helpers with a deadline (timeout_ms < 0: wait forever). */
int wire_send(int fd, const Envelope *env, int timeout_ms, char *err);
int wire_recv(int fd, Envelope **env, int timeout_ms, char *err);
/* Write a whole buffer to a (possibly non-blocking) fd within timeout_ms. */
int wire_write_all(int fd, const uint8_t *buf, size_t len, int timeout_ms, char *err);

/* Short name of the envelope's message, for logs and errors. */
const char *wire_name(const Envelope *env);

/* A session's state and tracking mode as programs print them: "attached", "sampling"...
 * ("unknown" for a value this build does not know). */
const char *wire_state_name(Memprof__SessionInfo__State st);
const char *wire_mode_name(Memprof__SessionInfo__Mode mode);

#endif
