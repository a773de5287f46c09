/* wire.c -- length-prefixed protobuf framing shared by agent, daemon and CLI. */
#include "proto/wire.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff; p[2] = (v >> 16) & 0xff; p[3] = v >> 24;
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int wire_encode(const Envelope *env, uint8_t **out, size_t *outlen, char *err)
{
    size_t n = memprof__envelope__get_packed_size(env);
    uint8_t *buf;
    if (n > WIRE_MAX_MSG) {
        mp_err(err, "message of %zu bytes exceeds the %u-byte limit", n, WIRE_MAX_MSG);
        return -1;
    }
    buf = malloc(WIRE_HDR + n);
    if (!buf) {
        mp_err(err, "out of memory encoding a %zu-byte message", n);
        return -1;
    }
    put_le32(buf, (uint32_t)n);
    memprof__envelope__pack(env, buf + WIRE_HDR);
    *out = buf;
    *outlen = WIRE_HDR + n;
    return 0;
}

/* Field number 0 does not exist; protobuf-c keeps one spelled in a multi-byte tag as an unknown field and
 * writes it back in one byte, which it then refuses: a message forwarded as decoded (a client's AgentCall to
 * the agent, the agent's reply to the client) would break the connection it is forwarded on. 1: none. */
static int no_field_zero(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0) return 0;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (v[k] && !no_field_zero(v[k])) return 0;
        } else {
            const ProtobufCMessage *sub;
            if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && *(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
            sub = *(const ProtobufCMessage *const *)(base + f->offset);
            if (sub && !no_field_zero(sub)) return 0;
        }
    }
    return 1;
}

/* Upper bound of what protobuf-c allocates to unpack a message of type d from data[0..len): *decoded gets
 * the result's share (the struct, repeated elements, a string's copy, malloc's overhead included), *unknown
 * that of its unknown fields (a record and a copy each), *scan the peak of the ScannedMember records it
 * keeps per field while a message is unpacked (its own, plus the largest of the submessages it unpacks
 * meanwhile). Walks the encoding only; -1 on what unpack would refuse anyway (a truncated field, a group,
 * nesting past 32). */
#define SCAN_COST 32
#define ALLOC_COST 16
#define MAX_NESTING 32
static size_t elt_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32: case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: case PROTOBUF_C_TYPE_FLOAT: case PROTOBUF_C_TYPE_ENUM: case PROTOBUF_C_TYPE_BOOL:
        return 4;
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    default: return 8; /* 64-bit scalars, pointers to strings and messages */
    }
}

static int decoded_cost(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len, int depth,
                        size_t *decoded, size_t *unknown, size_t *scan)
{
    const uint8_t *end = p + len;
    size_t own_scan = 0, sub_scan = 0;
    if (depth > MAX_NESTING) return -1;
    *decoded += d->sizeof_message + ALLOC_COST;
    while (p < end) {
        uint64_t key = 0, n = 0;
        const ProtobufCFieldDescriptor *f;
        const uint8_t *body;
        size_t blen = 0, s = 0;
        for (int sh = 0;; sh += 7) { /* the tag */
            if (p >= end || sh > 63) return -1;
            key |= (uint64_t)(*p & 0x7f) << sh;
            if (!(*p++ & 0x80)) break;
        }
        switch (key & 7) {
        case 0:
            for (int i = 0;; i++) {
                if (p >= end || i > 9) return -1;
                if (!(*p++ & 0x80)) break;
            }
            break;
        case 1: blen = 8; break;
        case 5: blen = 4; break;
        case 2:
            for (int sh = 0;; sh += 7) {
                if (p >= end || sh > 63) return -1;
                n |= (uint64_t)(*p & 0x7f) << sh;
                if (!(*p++ & 0x80)) break;
            }
            if (n > (uint64_t)(end - p)) return -1;
            blen = (size_t)n;
            break;
        default: return -1;
        }
        if (blen > (size_t)(end - p)) return -1;
        body = p;
        p += blen;
        own_scan += SCAN_COST;
        f = key >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3)) : NULL;
        if (!f) {
            *unknown += sizeof(ProtobufCMessageUnknownField) + blen + ALLOC_COST; /* the record, its copy */
            continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            *decoded += (key & 7) == 2 && f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_BYTES &&
                                f->type != PROTOBUF_C_TYPE_MESSAGE
                            ? elt_size(f->type) * blen + ALLOC_COST /* packed: at most one element per byte */
                            : elt_size(f->type) + ALLOC_COST / 2;   /* the array grows by doubling */
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_BYTES) *decoded += blen + 1 + ALLOC_COST;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && (key & 7) == 2) {
            if (decoded_cost(f->descriptor, body, blen, depth + 1, decoded, unknown, &s) < 0) return -1;
            if (s > sub_scan) sub_scan = s;
        }
    }
    *scan = own_scan + sub_scan;
    return 0;
}

int wire_decode(const uint8_t *payload, size_t len, Envelope **env, char *err)
{
    size_t cost = 0, unknown = 0, scan = 0, limit;
    *env = NULL;
    if (len > WIRE_MAX_MSG) {
        mp_err(err, "message of %zu bytes exceeds the %u-byte limit", len, WIRE_MAX_MSG);
        return -1;
    }
    if (decoded_cost(&memprof__envelope__descriptor, payload, len, 0, &cost, &unknown, &scan) < 0) {
        mp_err(err, "malformed message (%zu bytes do not decode)", len);
        return -1;
    }
    if (unknown > WIRE_UNKNOWN_RATIO * len + WIRE_DECODE_SLACK) {
        mp_err(err, "message of %zu bytes: its unknown fields would take %zu bytes decoded, over the limit of %zu",
               len, unknown, WIRE_UNKNOWN_RATIO * len + WIRE_DECODE_SLACK);
        return -1;
    }
    cost += unknown + scan;
    limit = WIRE_DECODE_RATIO * len + WIRE_DECODE_SLACK;
    if (limit > WIRE_DECODE_MAX) limit = WIRE_DECODE_MAX;
    if (cost > limit) {
        mp_err(err, "message of %zu bytes would take %zu bytes decoded, over the limit of %zu", len, cost, limit);
        return -1;
    }
    *env = memprof__envelope__unpack(NULL, len, payload);
    if (!*env) {
        mp_err(err, "malformed message (%zu bytes do not decode)", len);
        return -1;
    }
    if (!no_field_zero(&(*env)->base)) {
        memprof__envelope__free_unpacked(*env, NULL);
        *env = NULL;
        mp_err(err, "malformed message (field number 0)");
        return -1;
    }
    /* An envelope whose only field is unknown comes from a newer peer: the caller answers it. */
    if ((*env)->msg_case == MEMPROF__ENVELOPE__MSG__NOT_SET && !(*env)->base.n_unknown_fields) {
        memprof__envelope__free_unpacked(*env, NULL);
        *env = NULL;
        mp_err(err, "malformed message (empty envelope)");
        return -1;
    }
    return 0;
}

void wire_free(Envelope *env)
{
    if (env) memprof__envelope__free_unpacked(env, NULL);
}

void wire_rbuf_free(struct wire_rbuf *rb)
{
    free(rb->buf);
    memset(rb, 0, sizeof *rb);
}

ssize_t wire_rbuf_fill(struct wire_rbuf *rb, int fd, char *err)
{
    /* a peer held to small frames gets a buffer of one frame; others room for more than one per read */
    size_t limit = rb->max ? rb->max + WIRE_HDR : WIRE_MAX_MSG + WIRE_HDR + 65536;
    ssize_t r;
    if (rb->cap - rb->len < 65536 && rb->cap < limit) {
        size_t ncap = rb->cap ? rb->cap * 2 : 4096;
        uint8_t *nb;
        if (ncap > limit) ncap = limit;
        nb = realloc(rb->buf, ncap);
        if (!nb) {
            mp_err(err, "out of memory for a receive buffer");
            return -1;
        }
        rb->buf = nb;
        rb->cap = ncap;
    }
    if (rb->len >= rb->cap) {
        mp_err(err, "peer sent more than one maximal message without a break");
        errno = EMSGSIZE;
        return -1;
    }
    do
        r = read(fd, rb->buf + rb->len, rb->cap - rb->len);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) mp_errno(err, "read");
        return -1;
    }
    rb->len += (size_t)r;
    return r;
}

int wire_take(struct wire_rbuf *rb, Envelope **env, char *err)
{
    uint32_t n;
    *env = NULL;
    if (rb->len < WIRE_HDR) return 0;
    n = get_le32(rb->buf);
    if (n > (rb->max ? rb->max : WIRE_MAX_MSG)) {
        mp_err(err, "frame announces %u bytes, over the %zu-byte limit", n, rb->max ? rb->max : WIRE_MAX_MSG);
        return -1;
    }
    if (rb->len < WIRE_HDR + (size_t)n) return 0;
    if (wire_decode(rb->buf + WIRE_HDR, n, env, err) < 0) return -1;
    memmove(rb->buf, rb->buf + WIRE_HDR + n, rb->len - WIRE_HDR - n);
    rb->len -= WIRE_HDR + n;
    return 1;
}

static int wait_fd(int fd, short events, double deadline, char *err)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int ms = -1, r;
        if (deadline > 0) {
            double left = deadline - mp_now();
            if (left <= 0) {
                mp_err(err, "timed out");
                return -1;
            }
            ms = (int)(left * 1000) + 1;
        }
        r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            mp_errno(err, "poll");
            return -1;
        }
        if (r == 0) continue;
        return 0;
    }
}

int wire_write_all(int fd, const uint8_t *buf, size_t len, int timeout_ms, char *err)
{
    double deadline = timeout_ms < 0 ? 0 : mp_now() + timeout_ms / 1000.0;
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline, err) < 0) return -1;
            continue;
        }
        if (w < 0) {
            mp_errno(err, "send");
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

int wire_send(int fd, const Envelope *env, int timeout_ms, char *err)
{
    uint8_t *buf;
    size_t len;
    int rc;
    if (wire_encode(env, &buf, &len, err) < 0) return -1;
    rc = wire_write_all(fd, buf, len, timeout_ms, err);
    free(buf);
    return rc;
}

static int read_exact(int fd, uint8_t *buf, size_t len, double deadline, char *err)
{
    size_t off = 0;
    while (off < len) {
        ssize_t r;
        /* Wait first, so a blocking fd honours the deadline too. */
        if (deadline > 0 && wait_fd(fd, POLLIN, deadline, err) < 0) return -1;
        r = read(fd, buf + off, len - off);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLIN, deadline, err) < 0) return -1;
            continue;
        }
        if (r < 0) {
            mp_errno(err, "read");
            return -1;
        }
        if (r == 0) {
            mp_err(err, "connection closed by peer");
            return -1;
        }
        off += (size_t)r;
    }
    return 0;
}

int wire_recv(int fd, Envelope **env, int timeout_ms, char *err)
{
    double deadline = timeout_ms < 0 ? 0 : mp_now() + timeout_ms / 1000.0;
    uint8_t hdr[WIRE_HDR], *buf;
    uint32_t n;
    int rc;
    *env = NULL;
    if (read_exact(fd, hdr, WIRE_HDR, deadline, err) < 0) return -1;
    n = get_le32(hdr);
    if (n > WIRE_MAX_MSG) {
        mp_err(err, "frame announces %u bytes, over the %u-byte limit", n, WIRE_MAX_MSG);
        return -1;
    }
    buf = malloc(n ? n : 1);
    if (!buf) {
        mp_err(err, "out of memory for a %u-byte message", n);
        return -1;
    }
    rc = read_exact(fd, buf, n, deadline, err);
    if (rc == 0) rc = wire_decode(buf, n, env, err);
    free(buf);
    return rc;
}

const char *wire_name(const Envelope *env)
{
    const ProtobufCFieldDescriptor *f;
    if (!env) return "(none)";
    f = protobuf_c_message_descriptor_get_field(&memprof__envelope__descriptor, env->msg_case);
    return f ? f->name : "(unknown)";
}

const char *wire_state_name(Memprof__SessionInfo__State st)
{
    switch (st) {
    case MEMPROF__SESSION_INFO__STATE__ATTACHING: return "attaching";
    case MEMPROF__SESSION_INFO__STATE__ATTACHED: return "attached";
    case MEMPROF__SESSION_INFO__STATE__DETACHING: return "detaching";
    case MEMPROF__SESSION_INFO__STATE__DETACHED: return "detached";
    case MEMPROF__SESSION_INFO__STATE__EXITED: return "exited";
    case MEMPROF__SESSION_INFO__STATE__LOST: return "lost";
    default: return "unknown";
    }
}

const char *wire_mode_name(Memprof__SessionInfo__Mode mode)
{
    switch (mode) {
    case MEMPROF__SESSION_INFO__MODE__OFF: return "off";
    case MEMPROF__SESSION_INFO__MODE__SAMPLING: return "sampling";
    case MEMPROF__SESSION_INFO__MODE__EXACT: return "exact";
    case MEMPROF__SESSION_INFO__MODE__NATIVE: return "native";
    default: return "unknown";
    }
}
