/*
 * pickle.c - the safe pickle subset of pickle.h.
 *
 * A small stack machine over the opcodes a torch.save state dict needs. Values
 * are plain records (numbers, strings, tuples, lists, dicts, allowed globals,
 * storages, tensors) allocated from one pool owned by the machine and freed
 * together at the end, so shared and even cyclic references (the memo can make
 * a list contain itself) need no reference counting and cannot leak. Nothing
 * is ever executed: REDUCE on an allowed global builds a record, REDUCE on
 * anything else is refused, BUILD's state is dropped (a state dict's
 * OrderedDict carries only `_metadata` there).
 *
 * Invariants: the stack never holds NULL; a MARK is a distinct value kind that
 * no opcode may consume as an item (TUPLE, SETITEMS, ... stop at it, every
 * other pop refuses it); every read from the stream checks the bytes left.
 */
#include "model/pickle.h"

#include "common/st_err.h"

#include <stdlib.h>
#include <string.h>

/* Bounds that a state dict never reaches and a hostile stream must not pass. */
#define PK_MAX_STACK ((size_t)1 << 20)   /* values on the stack */
#define PK_MAX_MEMO ((size_t)1 << 22)    /* highest memo index + 1 */
#define PK_MAX_VALUES ((size_t)1 << 21)  /* values created in all (a 14B state dict needs ~30k) */
#define PK_MAX_STRING ((size_t)1 << 20)  /* bytes of one string */
#define PK_MAX_GLOBAL 256                /* bytes of a GLOBAL module or name line */

typedef enum {
    V_MARK, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT,
    V_GLOBAL, V_STORAGE, V_TENSOR,
} vkind_t;

/* The globals a state dict may name; anything else is refused. */
typedef enum {
    G_ORDERED_DICT, G_REBUILD_TENSOR_V2, G_REBUILD_TENSOR, G_STORAGE,
} gkind_t;

typedef struct pv pv_t;
struct pv {
    vkind_t kind;
    int64_t i;            /* V_INT, V_BOOL */
    char *s;              /* V_STR (NUL-terminated; embedded NULs refused) */
    pv_t **items;         /* V_TUPLE, V_LIST; V_DICT as key, value, key, value... */
    size_t n, cap;        /* items used / allocated */
    gkind_t g;            /* V_GLOBAL */
    tf_dtype_t dtype;     /* V_GLOBAL of G_STORAGE, V_STORAGE */
    pv_t *storage;        /* V_TENSOR: its V_STORAGE; V_STORAGE: key string */
    int64_t numel;        /* V_STORAGE */
    int64_t offset;       /* V_TENSOR */
    int ndim;             /* V_TENSOR */
    int64_t size[TF_MAX_DIMS], stride[TF_MAX_DIMS];
};

typedef struct {
    const uint8_t *p, *end; /* unread stream */
    pv_t **stack;
    size_t sp, stack_cap;
    pv_t **memo;            /* NULL where unset */
    size_t memo_cap, memo_count;
    pv_t **pool;            /* every value, for freeing */
    size_t n_pool, pool_cap;
    pv_t mark;              /* the one MARK value */
    size_t op_at;           /* stream offset of the opcode being run, for messages */
    int fail;               /* code of the last s_new failure */
    char *err;
} vm_t;

/* Room for one more entry in an array of n of *cap values (doubling, first
 * allocation of `first`): the value pool, a container's items and the stack. */
static int s_room(vm_t *vm, pv_t ***items, size_t *cap, size_t n, size_t first)
{
    if (n < *cap) return ST_OK;
    size_t c = *cap ? *cap * 2 : first;
    pv_t **grown = realloc(*items, c * sizeof *grown);
    if (!grown) return st_fail(vm->err, ST_ENOMEM, "out of memory reading the pickle");
    *items = grown;
    *cap = c;
    return ST_OK;
}

static pv_t *s_new(vm_t *vm, vkind_t kind)
{
    if (vm->n_pool >= PK_MAX_VALUES) {
        vm->fail = st_fail(vm->err, ST_EFORMAT, "pickle creates more than %zu objects", PK_MAX_VALUES);
        return NULL;
    }
    int rc = s_room(vm, &vm->pool, &vm->pool_cap, vm->n_pool, 256);
    if (rc) {
        vm->fail = rc;
        return NULL;
    }
    pv_t *v = calloc(1, sizeof *v);
    if (!v) {
        vm->fail = st_fail(vm->err, ST_ENOMEM, "out of memory reading the pickle");
        return NULL;
    }
    v->kind = kind;
    vm->pool[vm->n_pool++] = v;
    return v;
}

static int s_append(vm_t *vm, pv_t *c, pv_t *item)
{
    int rc = s_room(vm, &c->items, &c->cap, c->n, 4);
    if (rc) return rc;
    c->items[c->n++] = item;
    return ST_OK;
}

static int s_push(vm_t *vm, pv_t *v)
{
    if (!v) return vm->fail; /* s_new already said why */
    if (vm->sp >= PK_MAX_STACK)
        return st_fail(vm->err, ST_EFORMAT, "pickle stack grows beyond %zu entries", PK_MAX_STACK);
    int rc = s_room(vm, &vm->stack, &vm->stack_cap, vm->sp, 64);
    if (rc) return rc;
    vm->stack[vm->sp++] = v;
    return ST_OK;
}

/* Pops one value that is not a MARK. */
static int s_pop(vm_t *vm, pv_t **out)
{
    if (vm->sp == 0 || vm->stack[vm->sp - 1]->kind == V_MARK)
        return st_fail(vm->err, ST_EFORMAT, "pickle pops from an empty stack");
    *out = vm->stack[--vm->sp];
    return ST_OK;
}

static int s_top(vm_t *vm, pv_t **out)
{
    if (vm->sp == 0 || vm->stack[vm->sp - 1]->kind == V_MARK)
        return st_fail(vm->err, ST_EFORMAT, "pickle reads the top of an empty stack");
    *out = vm->stack[vm->sp - 1];
    return ST_OK;
}

/* Finds the topmost MARK: the items above it are stack[*first .. sp). */
static int s_find_mark(vm_t *vm, size_t *first)
{
    for (size_t i = vm->sp; i > 0; i--)
        if (vm->stack[i - 1]->kind == V_MARK) {
            *first = i;
            return ST_OK;
        }
    return st_fail(vm->err, ST_EFORMAT, "pickle uses a MARK that was never set");
}

static int s_need(vm_t *vm, size_t n)
{
    if ((size_t)(vm->end - vm->p) < n)
        return st_fail(vm->err, ST_EFORMAT, "pickle stream ends in the middle of an opcode");
    return ST_OK;
}

static uint64_t s_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* An opcode's k-byte little-endian argument (k = 1, 2, 4 or 8), consumed. */
static int s_arg(vm_t *vm, int k, uint64_t *v)
{
    int rc = s_need(vm, (size_t)k);
    if (rc) return rc;
    *v = s_le(vm->p, k);
    vm->p += k;
    return ST_OK;
}

static int s_memo_put(vm_t *vm, size_t idx)
{
    pv_t *v = NULL;
    int rc = s_top(vm, &v);
    if (rc) return rc;
    if (idx >= PK_MAX_MEMO)
        return st_fail(vm->err, ST_EFORMAT, "pickle memo index %zu is beyond %zu", idx, PK_MAX_MEMO);
    if (idx >= vm->memo_cap) {
        size_t cap = vm->memo_cap ? vm->memo_cap : 64;
        while (cap <= idx) cap *= 2;
        pv_t **grown = realloc(vm->memo, cap * sizeof *grown);
        if (!grown) return st_fail(vm->err, ST_ENOMEM, "out of memory reading the pickle");
        memset(grown + vm->memo_cap, 0, (cap - vm->memo_cap) * sizeof *grown);
        vm->memo = grown;
        vm->memo_cap = cap;
    }
    if (!vm->memo[idx]) vm->memo_count++;
    vm->memo[idx] = v;
    return ST_OK;
}

static int s_memo_get(vm_t *vm, size_t idx)
{
    if (idx >= vm->memo_cap || !vm->memo[idx])
        return st_fail(vm->err, ST_EFORMAT, "pickle refers to memo entry %zu, which was never set",
                       idx);
    return s_push(vm, vm->memo[idx]);
}

static int s_string(vm_t *vm, size_t len)
{
    int rc = s_need(vm, len);
    if (rc) return rc;
    if (len > PK_MAX_STRING)
        return st_fail(vm->err, ST_EFORMAT, "pickle string of %zu bytes is longer than %zu", len,
                       PK_MAX_STRING);
    if (memchr(vm->p, 0, len))
        return st_fail(vm->err, ST_EFORMAT, "pickle string contains a NUL byte");
    pv_t *v = s_new(vm, V_STR);
    if (!v) return vm->fail;
    v->s = malloc(len + 1);
    if (!v->s) return st_fail(vm->err, ST_ENOMEM, "out of memory reading the pickle");
    memcpy(v->s, vm->p, len);
    v->s[len] = 0;
    vm->p += len;
    return s_push(vm, v);
}

static int s_int(vm_t *vm, int64_t x)
{
    pv_t *v = s_new(vm, V_INT);
    if (!v) return vm->fail;
    v->i = x;
    return s_push(vm, v);
}

/* Resolves module.name against the allow-list and pushes the global. */
static int s_global(vm_t *vm, const char *module, const char *name)
{
    static const struct { const char *m, *n; gkind_t g; tf_dtype_t dt; } allowed[] = {
        {"collections", "OrderedDict", G_ORDERED_DICT, TF_F32},
        {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2, TF_F32},
        {"torch._utils", "_rebuild_tensor", G_REBUILD_TENSOR, TF_F32},
        {"torch", "FloatStorage", G_STORAGE, TF_F32},
        {"torch", "HalfStorage", G_STORAGE, TF_F16},
        {"torch", "BFloat16Storage", G_STORAGE, TF_BF16},
        {"torch", "DoubleStorage", G_STORAGE, TF_F64},
        {"torch", "LongStorage", G_STORAGE, TF_I64},
        {"torch", "IntStorage", G_STORAGE, TF_I32},
    };
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (strcmp(module, allowed[i].m) == 0 && strcmp(name, allowed[i].n) == 0) {
            pv_t *v = s_new(vm, V_GLOBAL);
            if (!v) return vm->fail;
            v->g = allowed[i].g;
            v->dtype = allowed[i].dt;
            return s_push(vm, v);
        }
    return st_fail(vm->err, ST_EFORMAT,
                   "refusing pickle global '%.64s %.64s': only the globals of a tensor state dict "
                   "are allowed, and nothing is ever executed", module, name);
}

/* GLOBAL: "module\nname\n" in the stream. */
static int s_global_lines(vm_t *vm)
{
    char parts[2][PK_MAX_GLOBAL + 1];
    for (int k = 0; k < 2; k++) {
        const uint8_t *nl = memchr(vm->p, '\n', (size_t)(vm->end - vm->p));
        if (!nl) return st_fail(vm->err, ST_EFORMAT, "pickle GLOBAL is not terminated");
        size_t len = (size_t)(nl - vm->p);
        if (len > PK_MAX_GLOBAL || memchr(vm->p, 0, len))
            return st_fail(vm->err, ST_EFORMAT, "pickle GLOBAL name is malformed or too long");
        memcpy(parts[k], vm->p, len);
        parts[k][len] = 0;
        vm->p = nl + 1;
    }
    return s_global(vm, parts[0], parts[1]);
}

static int s_int_of(vm_t *vm, const pv_t *v, const char *what, int64_t *out)
{
    if (v->kind != V_INT)
        return st_fail(vm->err, ST_EFORMAT, "pickle tensor record: %s is not an integer", what);
    *out = v->i;
    return ST_OK;
}

/* BINPERSID: ('storage', StorageType, key, location, numel) -> a storage. */
static int s_persid(vm_t *vm)
{
    pv_t *pid;
    int rc = s_pop(vm, &pid);
    if (rc) return rc;
    if (pid->kind != V_TUPLE || pid->n != 5 || pid->items[0]->kind != V_STR ||
        strcmp(pid->items[0]->s, "storage") != 0)
        return st_fail(vm->err, ST_EFORMAT,
                       "pickle persistent id is not a ('storage', type, key, location, numel) tuple");
    pv_t *type = pid->items[1], *key = pid->items[2], *loc = pid->items[3], *n = pid->items[4];
    if (type->kind != V_GLOBAL || type->g != G_STORAGE)
        return st_fail(vm->err, ST_EFORMAT, "pickle storage has no torch storage type");
    if (key->kind != V_STR || !key->s[0] || strchr(key->s, '/') || strstr(key->s, ".."))
        return st_fail(vm->err, ST_EFORMAT, "pickle storage key is not a plain name");
    if (loc->kind != V_STR)
        return st_fail(vm->err, ST_EFORMAT, "pickle storage location is not a string");
    if (n->kind != V_INT || n->i < 0)
        return st_fail(vm->err, ST_EFORMAT, "pickle storage '%s' has no valid size", key->s);
    pv_t *st = s_new(vm, V_STORAGE);
    if (!st) return vm->fail;
    st->dtype = type->dtype;
    st->storage = key;
    st->numel = n->i;
    return s_push(vm, st);
}

static int s_shape(vm_t *vm, const pv_t *t, const char *what, int64_t *out, int *ndim)
{
    if (t->kind != V_TUPLE)
        return st_fail(vm->err, ST_EFORMAT, "pickle tensor record: %s is not a tuple", what);
    if (t->n > TF_MAX_DIMS)
        return st_fail(vm->err, ST_EFORMAT, "pickle tensor has %zu dimensions (at most %d)", t->n,
                       TF_MAX_DIMS);
    for (size_t i = 0; i < t->n; i++) {
        int rc = s_int_of(vm, t->items[i], what, &out[i]);
        if (rc) return rc;
    }
    *ndim = (int)t->n;
    return ST_OK;
}

/* REDUCE: only OrderedDict() and the tensor rebuilders are callable. */
static int s_reduce(vm_t *vm)
{
    pv_t *args, *fn;
    int rc = s_pop(vm, &args);
    if (!rc) rc = s_pop(vm, &fn);
    if (rc) return rc;
    if (fn->kind != V_GLOBAL)
        return st_fail(vm->err, ST_EFORMAT, "pickle calls something that is not an allowed global");
    if (args->kind != V_TUPLE)
        return st_fail(vm->err, ST_EFORMAT, "pickle call arguments are not a tuple");
    if (fn->g == G_ORDERED_DICT) {
        if (args->n != 0)
            return st_fail(vm->err, ST_EFORMAT, "pickle builds an OrderedDict with arguments");
        return s_push(vm, s_new(vm, V_DICT));
    }
    if (fn->g == G_STORAGE)
        return st_fail(vm->err, ST_EFORMAT, "pickle calls a storage class, which a state dict never does");
    /* _rebuild_tensor(storage, offset, size, stride) and _rebuild_tensor_v2(
     * storage, offset, size, stride, requires_grad, backward_hooks[, metadata]) */
    size_t want_lo = fn->g == G_REBUILD_TENSOR ? 4 : 6, want_hi = fn->g == G_REBUILD_TENSOR ? 4 : 7;
    if (args->n < want_lo || args->n > want_hi)
        return st_fail(vm->err, ST_EFORMAT, "pickle rebuilds a tensor with %zu arguments", args->n);
    if (args->items[0]->kind != V_STORAGE)
        return st_fail(vm->err, ST_EFORMAT, "pickle rebuilds a tensor from something not a storage");
    pv_t *t = s_new(vm, V_TENSOR);
    if (!t) return vm->fail;
    t->storage = args->items[0];
    int nd_size, nd_stride;
    rc = s_int_of(vm, args->items[1], "storage offset", &t->offset);
    if (!rc) rc = s_shape(vm, args->items[2], "size", t->size, &nd_size);
    if (!rc) rc = s_shape(vm, args->items[3], "stride", t->stride, &nd_stride);
    if (rc) return rc;
    if (nd_size != nd_stride)
        return st_fail(vm->err, ST_EFORMAT, "pickle tensor has %d sizes but %d strides", nd_size,
                       nd_stride);
    t->ndim = nd_size;
    return s_push(vm, t);
}

/* Items since the last MARK, removed from the stack (the mark too). */
static int s_take_marked(vm_t *vm, pv_t ***items, size_t *n)
{
    size_t first = 0;
    int rc = s_find_mark(vm, &first);
    if (rc) return rc;
    *items = vm->stack + first;
    *n = vm->sp - first;
    vm->sp = first - 1;
    return ST_OK;
}

static int s_tuple_from(vm_t *vm, pv_t **items, size_t n)
{
    pv_t *t = s_new(vm, V_TUPLE);
    if (!t) return vm->fail;
    for (size_t i = 0; i < n; i++) {
        int rc = s_append(vm, t, items[i]);
        if (rc) return rc;
    }
    return s_push(vm, t);
}

static int s_step(vm_t *vm, uint8_t op, pv_t **result)
{
    int rc = ST_OK;
    pv_t *a = NULL, *b = NULL, *c = NULL, **items = NULL;
    size_t n = 0;
    uint64_t u = 0; /* the opcode's argument (s_arg) */
    switch (op) {
    case 0x80: /* PROTO */
        if ((rc = s_need(vm, 1))) return rc;
        if (vm->p[0] < 2 || vm->p[0] > 5)
            return st_fail(vm->err, ST_EFORMAT, "pickle protocol %d is not supported (2 to 5 are)",
                           vm->p[0]);
        vm->p++;
        return ST_OK;
    case 0x95: /* FRAME: a length hint only */
        return s_arg(vm, 8, &u);
    case '}': return s_push(vm, s_new(vm, V_DICT));
    case ']': return s_push(vm, s_new(vm, V_LIST));
    case ')': return s_push(vm, s_new(vm, V_TUPLE));
    case '(': return s_push(vm, &vm->mark);
    case 'N': return s_push(vm, s_new(vm, V_NONE));
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        if (!(a = s_new(vm, V_BOOL))) return vm->fail;
        a->i = op == 0x88;
        return s_push(vm, a);
    case 'q': /* BINPUT */
    case 'r': /* LONG_BINPUT */
        if ((rc = s_arg(vm, op == 'q' ? 1 : 4, &u))) return rc;
        return s_memo_put(vm, (size_t)u);
    case 0x94: /* MEMOIZE */
        return s_memo_put(vm, vm->memo_count);
    case 'h': /* BINGET */
    case 'j': /* LONG_BINGET */
        if ((rc = s_arg(vm, op == 'h' ? 1 : 4, &u))) return rc;
        return s_memo_get(vm, (size_t)u);
    case 0x8c: /* SHORT_BINUNICODE */
    case 'X':  /* BINUNICODE */
        if ((rc = s_arg(vm, op == 0x8c ? 1 : 4, &u))) return rc;
        return s_string(vm, (size_t)u);
    case 0x8d: /* BINUNICODE8 */
        if ((rc = s_arg(vm, 8, &u))) return rc;
        if (u > PK_MAX_STRING) /* before the cast: size_t may be narrower */
            return st_fail(vm->err, ST_EFORMAT, "pickle string of %llu bytes is longer than %zu",
                           (unsigned long long)u, PK_MAX_STRING);
        return s_string(vm, (size_t)u);
    case 'J': /* BININT: signed 32-bit */
        if ((rc = s_arg(vm, 4, &u))) return rc;
        return s_int(vm, (int32_t)(uint32_t)u);
    case 'K': /* BININT1 */
    case 'M': /* BININT2: both unsigned */
        if ((rc = s_arg(vm, op == 'K' ? 1 : 2, &u))) return rc;
        return s_int(vm, (int64_t)u);
    case 0x8a: { /* LONG1: n bytes of two's complement, little-endian */
        if ((rc = s_arg(vm, 1, &u))) return rc;
        int len = (int)u;
        if (len > 8)
            return st_fail(vm->err, ST_EFORMAT, "pickle integer of %d bytes is too large", len);
        if ((rc = s_need(vm, (size_t)len))) return rc;
        uint64_t bits = len ? s_le(vm->p, len) : 0;
        if (len > 0 && len < 8 && (vm->p[len - 1] & 0x80)) bits |= ~(uint64_t)0 << (8 * len);
        vm->p += len;
        int64_t x;
        memcpy(&x, &bits, sizeof x);
        return s_int(vm, x);
    }
    case 'G': /* BINFLOAT: big-endian double, kept only as a placeholder */
        if ((rc = s_arg(vm, 8, &u))) return rc;
        return s_push(vm, s_new(vm, V_FLOAT));
    case 't': /* TUPLE */
        if ((rc = s_take_marked(vm, &items, &n))) return rc;
        return s_tuple_from(vm, items, n);
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: /* TUPLE3 */
        n = (size_t)(op - 0x84);
        if (vm->sp < n) return st_fail(vm->err, ST_EFORMAT, "pickle pops from an empty stack");
        for (size_t i = vm->sp - n; i < vm->sp; i++)
            if (vm->stack[i]->kind == V_MARK)
                return st_fail(vm->err, ST_EFORMAT, "pickle puts a MARK into a tuple");
        vm->sp -= n;
        return s_tuple_from(vm, vm->stack + vm->sp, n);
    case 's': /* SETITEM */
        if ((rc = s_pop(vm, &b)) || (rc = s_pop(vm, &a)) || (rc = s_top(vm, &c))) return rc;
        if (c->kind != V_DICT) return st_fail(vm->err, ST_EFORMAT, "pickle SETITEM on a non-dict");
        if ((rc = s_append(vm, c, a))) return rc;
        return s_append(vm, c, b);
    case 'u': /* SETITEMS */
        if ((rc = s_take_marked(vm, &items, &n)) || (rc = s_top(vm, &c))) return rc;
        if (c->kind != V_DICT) return st_fail(vm->err, ST_EFORMAT, "pickle SETITEMS on a non-dict");
        if (n % 2) return st_fail(vm->err, ST_EFORMAT, "pickle SETITEMS with an odd item count");
        for (size_t i = 0; i < n; i++)
            if ((rc = s_append(vm, c, items[i]))) return rc;
        return ST_OK;
    case 'a': /* APPEND */
        if ((rc = s_pop(vm, &b)) || (rc = s_top(vm, &c))) return rc;
        if (c->kind != V_LIST) return st_fail(vm->err, ST_EFORMAT, "pickle APPEND on a non-list");
        return s_append(vm, c, b);
    case 'e': /* APPENDS */
        if ((rc = s_take_marked(vm, &items, &n)) || (rc = s_top(vm, &c))) return rc;
        if (c->kind != V_LIST) return st_fail(vm->err, ST_EFORMAT, "pickle APPENDS on a non-list");
        for (size_t i = 0; i < n; i++)
            if ((rc = s_append(vm, c, items[i]))) return rc;
        return ST_OK;
    case 'Q': return s_persid(vm);
    case 'R': return s_reduce(vm);
    case 'b': /* BUILD: the state is dropped; nothing is set on anything */
        if ((rc = s_pop(vm, &a)) || (rc = s_top(vm, &c))) return rc;
        if (c->kind != V_DICT && c->kind != V_TENSOR)
            return st_fail(vm->err, ST_EFORMAT, "pickle BUILD on something not a dict or tensor");
        return ST_OK;
    case 'c': return s_global_lines(vm);
    case 0x93: /* STACK_GLOBAL */
        if ((rc = s_pop(vm, &b)) || (rc = s_pop(vm, &a))) return rc;
        if (a->kind != V_STR || b->kind != V_STR)
            return st_fail(vm->err, ST_EFORMAT, "pickle STACK_GLOBAL names are not strings");
        return s_global(vm, a->s, b->s);
    case '.': /* STOP */
        if ((rc = s_pop(vm, result))) return rc;
        return ST_OK;
    default:
        return st_fail(vm->err, ST_EFORMAT,
                       "pickle opcode 0x%02x at byte %zu is outside the state-dict subset", op,
                       vm->op_at);
    }
}

int pickle_state_dict(const uint8_t *data, size_t len, pickle_tensor_fn fn, void *ctx, char *err)
{
    vm_t vm;
    memset(&vm, 0, sizeof vm);
    vm.p = data;
    vm.end = data + len;
    vm.mark.kind = V_MARK;
    vm.err = err;
    pv_t *result = NULL;
    int rc = ST_OK;
    while (!result) {
        if (vm.p >= vm.end) {
            rc = st_fail(err, ST_EFORMAT, "pickle stream ends without STOP");
            goto done;
        }
        vm.op_at = (size_t)(vm.p - data);
        uint8_t op = *vm.p++;
        rc = s_step(&vm, op, &result);
        if (rc) goto done;
    }
    if (result->kind != V_DICT) {
        rc = st_fail(err, ST_EFORMAT, "the pickle is not a state dict (its result is not a dict)");
        goto done;
    }
    for (size_t i = 0; i + 1 < result->n; i += 2) {
        pv_t *k = result->items[i], *v = result->items[i + 1];
        if (k->kind != V_STR) {
            rc = st_fail(err, ST_EFORMAT, "state dict has a key that is not a string");
            goto done;
        }
        if (v->kind != V_TENSOR) {
            rc = st_fail(err, ST_EFORMAT, "state dict entry '%.200s' is not a tensor", k->s);
            goto done;
        }
        pickle_tensor_t t;
        memset(&t, 0, sizeof t);
        t.name = k->s;
        t.storage_key = v->storage->storage->s;
        t.dtype = v->storage->dtype;
        t.storage_numel = v->storage->numel;
        t.offset = v->offset;
        t.ndim = v->ndim;
        for (int d = 0; d < v->ndim; d++) {
            t.size[d] = v->size[d];
            t.stride[d] = v->stride[d];
        }
        rc = fn(ctx, &t, err);
        if (rc) goto done;
    }
done:
    for (size_t i = 0; i < vm.n_pool; i++) {
        free(vm.pool[i]->s);
        free(vm.pool[i]->items);
        free(vm.pool[i]);
    }
    free(vm.pool);
    free(vm.stack);
    free(vm.memo);
    return rc;
}
