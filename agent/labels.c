/* labels.c -- short, bounded text about objects for the back-reference graphs and the census:
 * type names, objgraph-style reprs and edge labels ("['key']", ".attr"), read from builtin objects'
 * memory -- never a user __repr__, __eq__ or __hash__. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agent/heap.h"

static const char *const func_attrs[7] = {"__code__",    "__globals__", "__defaults__", "__kwdefaults__",
                                          "__closure__", "__annotations__", "__module__"};

/* ---------------------------------------------------------------- strings */

struct str_view {
    ssize_t len;
    unsigned kind; /* 1, 2 or 4 bytes per code point */
    const unsigned char *data;
};

/* The code points of a str (or subclass), read from its memory. 0 when the
 * string is in a form we do not read (3.8-3.11 not-ready wstr strings). */
static int str_view(pyobj *s, struct str_view *v)
{
    uint32_t state = pyabi_str_state(abi, s);
    unsigned kind = pyabi_str_kind(state);
    v->len = PYABI_AT(s, 0x10, ssize_t);
    v->kind = kind;
    if (kind != 1 && kind != 2 && kind != 4) return 0;
    if (pyabi_str_compact(state)) v->data = (const unsigned char *)s + pyabi_str_data(abi, state);
    else v->data = PYABI_AT(s, abi->str.compact_size, const unsigned char *);
    return v->data != NULL && v->len >= 0;
}

static inline uint32_t str_at(const struct str_view *v, ssize_t i)
{
    if (v->kind == 1) return v->data[i];
    if (v->kind == 2) return ((const uint16_t *)v->data)[i];
    return ((const uint32_t *)v->data)[i];
}

void sb_raw(struct sb *b, const char *s, size_t n)
{
    if (b->n + n >= sizeof b->buf) return;
    memcpy(b->buf + b->n, s, n);
    b->n += n;
    b->buf[b->n] = 0;
    b->chars++;
}

static void sb_cp(struct sb *b, uint32_t cp)
{
    char u[4];
    if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
    if (cp < 0x80) u[0] = (char)cp, sb_raw(b, u, 1);
    else if (cp < 0x800) u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), sb_raw(b, u, 2);
    else if (cp < 0x10000)
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)),
        u[2] = (char)(0x80 | (cp & 0x3f)), sb_raw(b, u, 3);
    else
        u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)),
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f)), sb_raw(b, u, 4);
}

void sb_puts(struct sb *b, const char *s)
{
    for (; *s; s++) sb_raw(b, s, 1);
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    char tmp[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_puts(b, tmp);
}

/* Cut to max code points (objgraph: repr(obj)[:40]). */
static void sb_cut(struct sb *b, size_t max)
{
    size_t chars = 0, i = 0;
    while (i < b->n) {
        unsigned char c = (unsigned char)b->buf[i];
        size_t w = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        if (chars == max) {
            b->n = i;
            b->buf[i] = 0;
            return;
        }
        chars++;
        i += w;
    }
}

/* str -> UTF-8 name (module names, attribute names, __module__). */
void sb_str(struct sb *b, pyobj *s)
{
    struct str_view v;
    if (!s || !(TP_FLAGS(OB_TYPE(s)) & F_UNICODE_SUB) || !str_view(s, &v)) {
        sb_puts(b, "?");
        return;
    }
    for (ssize_t i = 0; i < v.len && b->n < sizeof b->buf - 8; i++) sb_cp(b, str_at(&v, i));
}

static void sb_str_repr(struct sb *b, pyobj *s)
{
    struct str_view v;
    int has_sq = 0, has_dq = 0;
    char q;
    if (!str_view(s, &v)) {
        sb_puts(b, "<str>");
        return;
    }
    for (ssize_t i = 0; i < v.len && i < 64; i++) {
        uint32_t c = str_at(&v, i);
        has_sq |= c == '\'';
        has_dq |= c == '"';
    }
    q = has_sq && !has_dq ? '"' : '\'';
    sb_raw(b, &q, 1);
    for (ssize_t i = 0; i < v.len && b->chars < 48; i++) {
        uint32_t c = str_at(&v, i);
        if (c == (uint32_t)q || c == '\\') sb_printf(b, "\\%c", (char)c);
        else if (c == '\n') sb_puts(b, "\\n");
        else if (c == '\r') sb_puts(b, "\\r");
        else if (c == '\t') sb_puts(b, "\\t");
        else if (c < 0x20 || (c >= 0x7f && c < 0xa0)) sb_printf(b, "\\x%02x", c);
        else if (c >= 0xd800 && c < 0xe000) sb_printf(b, "\\u%04x", c);
        else sb_cp(b, c);
    }
    sb_raw(b, &q, 1);
}

/* Names of a type: __name__ (short: tp_name after its last dot, for static
 * types and PyType_FromSpec heap types alike) and __module__. */
void type_short(char *tp, struct sb *b)
{
    const char *name = TP_NAME(tp), *dot;
    if (!name) name = "?";
    if ((dot = strrchr(name, '.'))) name = dot + 1;
    sb_puts(b, name);
}

void type_module(char *tp, struct sb *b)
{
    const char *name = TP_NAME(tp), *dot;
    if (TP_FLAGS(tp) & F_HEAPTYPE) {
        pyobj *d = TP_DICT(tp), *m;
        if (d && (TP_FLAGS(OB_TYPE(d)) & F_DICT_SUB)) {
            m = api.Dict_GetItemString(d, "__module__");
            if (m && (TP_FLAGS(OB_TYPE(m)) & F_UNICODE_SUB)) sb_str(b, m);
        }
        return;
    }
    if (name && (dot = strrchr(name, '.'))) sb_raw(b, name, (size_t)(dot - name));
    else sb_puts(b, "builtins");
}

/* ---------------------------------------------------------------- labels */

/* Long value for small ints (up to 4 digits of 30 bits); 0 if too big. */
static int long_value(pyobj *o, __int128 *out)
{
    ssize_t nd;
    int neg;
    __int128 v = 0;
    if (abi->caps & PYABI_LONG_TAG) {
        uintptr_t tag = PYABI_AT(o, abi->longobj.tag, uintptr_t);
        nd = (ssize_t)(tag >> 3);
        neg = (tag & 3) == 2;
    } else {
        nd = OB_SIZE(o);
        neg = nd < 0;
        if (neg) nd = -nd;
    }
    if (nd > 4) return 0;
    for (ssize_t i = nd - 1; i >= 0; i--) v = (v << 30) | (PYABI_AT(o, 0x18 + 4 * i, uint32_t) & 0x3fffffff);
    *out = neg ? -v : v;
    return 1;
}

static void sb_int128(struct sb *b, __int128 v)
{
    char tmp[48], *p = tmp + sizeof tmp - 1;
    int neg = v < 0;
    unsigned __int128 u = neg ? (unsigned __int128)(-(v + 1)) + 1 : (unsigned __int128)v;
    *p = 0;
    do {
        *--p = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    if (neg) *--p = '-';
    sb_puts(b, p);
}

static void sb_float(struct sb *b, double d)
{
    char tmp[40];
    if (d != d) {
        sb_puts(b, "nan");
        return;
    }
    if (d > 1.7976931348623157e308 || d < -1.7976931348623157e308) {
        sb_puts(b, d > 0 ? "inf" : "-inf");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, d);
        if (strtod(tmp, NULL) == d) break;
    }
    if (!strpbrk(tmp, ".en")) strcat(tmp, ".0");
    sb_puts(b, tmp);
}

/* A getattr on a builtin type whose attribute is a getset/member of C code. */
static pyobj *builtin_attr(pyobj *o, const char *name)
{
    pyobj *r = api.GetAttrString(o, name);
    if (!r) api.Err_Clear();
    return r;
}

static void sb_attr_str(struct sb *b, pyobj *o, const char *name, int basename)
{
    pyobj *s = builtin_attr(o, name);
    struct sb tmp = {.n = 0};
    const char *p;
    sb_str(&tmp, s);
    if (s) api.DecRef(s);
    p = basename && strrchr(tmp.buf, '/') ? strrchr(tmp.buf, '/') + 1 : tmp.buf;
    sb_puts(b, p);
}

static long attr_long(pyobj *o, const char *name)
{
    pyobj *v = builtin_attr(o, name);
    __int128 x = 0;
    if (!v) return 0;
    if (TP_FLAGS(OB_TYPE(v)) & F_LONG_SUB) long_value(v, &x);
    api.DecRef(v);
    return (long)x;
}

static void frame_label(pyobj *f, struct sb *b)
{
    pyobj *code = builtin_attr(f, "f_code");
    if (code && OB_TYPE(code) == api.code_t) sb_attr_str(b, code, "co_filename", 0);
    else sb_puts(b, "?");
    if (code) api.DecRef(code);
    sb_printf(b, ":%d", api.Frame_GetLineNumber(f));
}

static void function_label(pyobj *fn, struct sb *b)
{
    struct sb name = {.n = 0};
    sb_attr_str(&name, fn, "__name__", 0);
    if (!strcmp(name.buf, "<lambda>")) {
        pyobj *code = api.Func_Get[0] ? api.Func_Get[0](fn) : NULL; /* borrowed */
        sb_puts(b, "lambda: ");
        if (code && OB_TYPE(code) == api.code_t) {
            sb_attr_str(b, code, "co_filename", 1);
            sb_printf(b, ":%ld", attr_long(code, "co_firstlineno"));
        }
        return;
    }
    sb_puts(b, "<function ");
    sb_attr_str(b, fn, "__qualname__", 0);
    sb_printf(b, " at %p>", (void *)fn);
}

/* objgraph's _short_repr, without calling any Python-level repr. */
void obj_label(pyobj *o, struct sb *b)
{
    char *tp = OB_TYPE(o);
    unsigned long fl = TP_FLAGS(tp);
    if (fl & F_TYPE_SUB) type_short((char *)o, b);
    else if (is_sub(tp, api.module_t)) sb_str(b, PYABI_AT(o, abi->module.name, pyobj *));
    else if (is_sub(tp, api.cfunction_t)) {
        char *ml = PYABI_AT(o, 0x10, char *);
        sb_puts(b, ml && PYABI_AT(ml, 0, const char *) ? PYABI_AT(ml, 0, const char *) : "?");
    } else if (tp == api.method_t) {
        pyobj *fn = PYABI_AT(o, 0x10, pyobj *);
        if (fn && OB_TYPE(fn) == api.function_t) sb_attr_str(b, fn, "__name__", 0);
        else sb_puts(b, "method");
        if (PYABI_AT(o, 0x18, pyobj *)) sb_puts(b, " (bound)");
    } else if (tp == api.function_t) function_label(o, b);
    else if (tp == api.frame_t) frame_label(o, b);
    else if (fl & (F_TUPLE_SUB | F_LIST_SUB)) sb_printf(b, "%zd items", OB_SIZE(o));
    else if (fl & F_DICT_SUB) sb_printf(b, "%zd items", PYABI_AT(o, 0x10, ssize_t));
    else if (is_sub(tp, api.set_t)) sb_printf(b, "%zd items", PYABI_AT(o, 0x18, ssize_t));
    else if (fl & F_UNICODE_SUB) sb_str_repr(b, o);
    else if (tp == api.bool_t) sb_puts(b, o == api.true_ ? "True" : "False");
    else if (fl & F_LONG_SUB) {
        __int128 v;
        if (long_value(o, &v)) sb_int128(b, v);
        else sb_puts(b, "<big int>");
    } else if (tp == api.float_t) sb_float(b, PYABI_AT(o, 0x10, double));
    else if (o == api.none) sb_puts(b, "None");
    else if (tp == api.code_t) {
        sb_puts(b, "<code object ");
        sb_attr_str(b, o, "co_name", 0);
        sb_printf(b, " at %p>", (void *)o);
    } else if (fl & F_BYTES_SUB) {
        ssize_t n = OB_SIZE(o);
        const unsigned char *d = (const unsigned char *)o + 0x20;
        sb_puts(b, "b'");
        for (ssize_t i = 0; i < n && b->chars < 48; i++) {
            if (d[i] == '\'' || d[i] == '\\') sb_printf(b, "\\%c", d[i]);
            else if (d[i] >= 0x20 && d[i] < 0x7f) sb_raw(b, (const char *)&d[i], 1);
            else sb_printf(b, "\\x%02x", d[i]);
        }
        sb_puts(b, "'");
    } else {
        struct sb mod = {.n = 0};
        type_module(tp, &mod);
        sb_puts(b, "<");
        if (mod.n && strcmp(mod.buf, "builtins")) sb_printf(b, "%s.", mod.buf);
        type_short(tp, b);
        sb_printf(b, " object at %p>", (void *)o);
    }
    sb_cut(b, 40);
}

/* The dict holding src's attributes, if any (not creating one). */
static pyobj *dict_of(pyobj *src, char *tp)
{
    unsigned long fl = TP_FLAGS(tp);
    ssize_t off;
    if (fl & F_TYPE_SUB) return TP_DICT((char *)src);
    if (is_sub(tp, api.module_t)) return PYABI_AT(src, 0x10, pyobj *);
    if (abi->dict.inst_values != PYABI_VALUES_NONE && (fl & F_MANAGED_DICT)) {
        uintptr_t d = PYABI_AT(src, -24, uintptr_t);
        if (abi->dict.inst_values == PYABI_VALUES_TAGGED && (d & 1)) return NULL; /* values, no dict */
        return (pyobj *)d;
    }
    off = TP_DICTOFFSET(tp);
    if (off > 0) return PYABI_AT(src, off, pyobj *);
    if (off < 0 && !(fl & F_LONG_SUB)) { /* 3.12+ long: ob_size is lv_tag */
        ssize_t n = OB_SIZE(src), size;
        if (n > (1 << 28) || n < -(1 << 28)) return NULL;
        size = TP_BASICSIZE(tp) + (n < 0 ? -n : n) * TP_ITEMSIZE(tp);
        size = (size + 7) & ~(ssize_t)7;
        return PYABI_AT(src, size + off, pyobj *);
    }
    return NULL;
}

/* 3.11+: instance attributes kept as a values array beside the type's shared keys. */
static int managed_attr(pyobj *src, char *tp, pyobj *dst, struct sb *b)
{
    unsigned long fl = TP_FLAGS(tp);
    char *values = NULL, *keys, *entries;
    ssize_t n;
    unsigned kind;
    if (abi->dict.inst_values == PYABI_VALUES_NONE || !(fl & F_MANAGED_DICT) || !(fl & F_HEAPTYPE)) return 0;
    if (abi->dict.inst_values == PYABI_VALUES_PREHEADER) values = PYABI_AT(src, -32, char *);
    else if (abi->dict.inst_values == PYABI_VALUES_TAGGED) {
        uintptr_t d = PYABI_AT(src, -24, uintptr_t);
        if (d & 1) values = (char *)(d + 1); /* stored as values - 1 */
    } else if (fl & F_INLINE_VALUES) {
        values = (char *)src + TP_BASICSIZE(tp);
        if (!PYABI_AT(values, 3, uint8_t)) values = NULL; /* not valid: the dict has them */
    }
    keys = PYABI_AT(tp, abi->type.cached_keys, char *);
    if (!values || !keys) return 0;
    n = PYABI_AT(keys, 24, ssize_t);
    kind = PYABI_AT(keys, 10, uint8_t);
    if (abi->dict.inst_values == PYABI_VALUES_INLINE) {
        if (n > PYABI_AT(values, 0, uint8_t)) n = PYABI_AT(values, 0, uint8_t);
        values += 8;
    }
    entries = keys + 32 + ((size_t)1 << PYABI_AT(keys, 9, uint8_t));
    for (ssize_t i = 0; i < n && i < 4096; i++) {
        if (PYABI_AT(values, 8 * i, pyobj *) != dst) continue;
        sb_puts(b, ".");
        sb_str(b, PYABI_AT(entries, (kind ? 16 : 24) * i + (kind ? 0 : 8), pyobj *));
        return 1;
    }
    return 0;
}

/* Object members (T_OBJECT, T_OBJECT_EX) of tp and its bases: __slots__ and
 * builtin fields such as __func__, __self__, f_back, __globals__. */
static int member_attr(pyobj *src, char *tp, pyobj *dst, struct sb *b)
{
    int depth = 0;
    for (char *t = tp; t && depth < 64; t = TP_BASE(t), depth++) {
        char *m = TP_MEMBERS(t);
        for (int i = 0; m && PYABI_AT(m, 0, const char *) && i < 1000; m += PYABI_MEMBERDEF_SIZE, i++) {
            int type = PYABI_AT(m, 8, int), flags = PYABI_AT(m, 24, int);
            ssize_t off = PYABI_AT(m, 16, ssize_t);
            if ((type != 6 && type != 16) || (flags & 8) || off < 16 || off + 8 > TP_BASICSIZE(tp)) continue;
            if (PYABI_AT(src, off, pyobj *) == dst) {
                sb_printf(b, ".%s", PYABI_AT(m, 0, const char *));
                return 1;
            }
        }
    }
    return 0;
}

static void key_label(pyobj *k, struct sb *b)
{
    char *kt = OB_TYPE(k);
    __int128 v;
    sb_puts(b, "[");
    if (TP_FLAGS(kt) & F_UNICODE_SUB) sb_str_repr(b, k);
    else if ((TP_FLAGS(kt) & F_LONG_SUB) && kt != api.bool_t && long_value(k, &v)) sb_int128(b, v);
    else if (kt == api.float_t) sb_float(b, PYABI_AT(k, 0x10, double));
    else {
        sb_puts(b, "<");
        type_short(kt, b);
        sb_puts(b, ">");
    }
    sb_puts(b, "]");
}

static int special_attr(pyobj *src, char *tp, pyobj *dst, struct sb *b)
{
    const char *name = NULL;
    if (tp == api.function_t) {
        for (int i = 0; i < 7 && !name; i++)
            if (api.Func_Get[i] && api.Func_Get[i](src) == dst) name = func_attrs[i];
    } else if (tp == api.cell_t) {
        if (PYABI_AT(src, 0x10, pyobj *) == dst) name = "cell_contents";
    } else if (tp == api.frame_t) {
        char *f = abi->frameobj.iframe >= 0 ? PYABI_AT(src, abi->frameobj.iframe, char *) : (char *)src;
        if (f && PYABI_AT(f, abi->frameobj.locals, pyobj *) == dst) name = "f_locals";
        else if (f && PYABI_AT(f, abi->frameobj.globals, pyobj *) == dst) name = "f_globals";
    } else if (is_sub(tp, api.cfunction_t)) {
        if (PYABI_AT(src, 0x18, pyobj *) == dst) name = "__self__";
    } else if (TP_FLAGS(tp) & F_TYPE_SUB) {
        if (TP_MRO((char *)src) == dst) name = "__mro__";
        else if (TP_BASES((char *)src) == dst) name = "__bases__";
        else if ((pyobj *)TP_BASE((char *)src) == dst) name = "__base__";
    }
    if (!name) return 0;
    sb_printf(b, ".%s", name);
    return 1;
}

/* How src refers to dst, in Python accessor syntax: ".attr", "['key']", "[3]",
 * ".__dict__"; "(key)" when dst is a dict key; "" when unknown. */
void edge_label(pyobj *src, pyobj *dst, struct sb *b)
{
    char *tp = OB_TYPE(src);
    unsigned long fl = TP_FLAGS(tp);
    if ((TP_FLAGS(OB_TYPE(dst)) & F_DICT_SUB) && dict_of(src, tp) == dst) {
        sb_puts(b, ".__dict__");
        return;
    }
    if (fl & F_DICT_SUB) {
        ssize_t pos = 0;
        pyobj *k, *v;
        while (api.Dict_Next(src, &pos, &k, &v)) {
            if (v == dst) {
                key_label(k, b);
                return;
            }
            if (k == dst) {
                sb_puts(b, "(key)");
                return;
            }
        }
        return;
    }
    if (fl & (F_LIST_SUB | F_TUPLE_SUB)) {
        pyobj **items = (fl & F_LIST_SUB) ? PYABI_AT(src, abi->list.items, pyobj **) : &PYABI_AT(src, abi->tuple.items, pyobj *);
        ssize_t n = OB_SIZE(src);
        for (ssize_t i = 0; items && i < n; i++)
            if (items[i] == dst) {
                sb_printf(b, "[%zd]", i);
                return;
            }
    }
    if (special_attr(src, tp, dst, b)) return;
    if (managed_attr(src, tp, dst, b)) return;
    member_attr(src, tp, dst, b);
}
