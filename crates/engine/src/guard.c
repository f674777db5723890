/*
 * A damaged data file ends a call with an error, never the process.
 *
 * LMDB trusts the pages of its file. A page whose header or nodes were
 * overwritten sends its code through memory outside the page (SIGSEGV, or
 * SIGBUS past the end of the file), into one of its own assertions (which
 * abort), or, when it changes the page, to copy it by the bounds its header
 * gives into memory of its own, overwriting the process's memory.
 *
 * So the engine calls LMDB through the functions below. Each marks the
 * calling thread as inside a guarded call and calls LMDB; a SIGSEGV or
 * SIGBUS raised in that thread meanwhile, or an assertion of LMDB's, jumps
 * back here, and the call returns LOS_FAULT with what happened. Only C
 * frames (these functions and LMDB's) lie between the jump and its target.
 * A read holds no lock and changes nothing shared, so its transaction can
 * still be ended. A write that faults leaves its transaction half done, with
 * LMDB's temporary cursors possibly still linked to it, so it can neither be
 * committed nor aborted: the engine abandons it and the environment (see
 * guard.rs). A fault in a thread that is not inside a guarded call goes to
 * the handler installed before (Python's faulthandler, or the default
 * action).
 *
 * And the pages themselves are checked (los_page_ok): each page a key or
 * value is read from, before the key or value is handed back, and before a
 * write transaction changes anything, the pages it may copy or change
 * (los_check_writes). A bit per page of the map remembers the pages found
 * whole, so each is checked once.
 *
 * A read of one key is looked up here rather than by mdb_get (los_lookup,
 * below), over pages checked the same way.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* LMDB's types, as its header declares them (the ABI is fixed). */
typedef struct MDB_env MDB_env;
typedef struct MDB_txn MDB_txn;
typedef struct MDB_cursor MDB_cursor;
typedef struct MDB_stat MDB_stat;
typedef unsigned int MDB_dbi;
typedef struct MDB_val {
    size_t mv_size;
    void *mv_data;
} MDB_val;

int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, int op);
int mdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat);
int mdb_cursor_put(MDB_cursor *cursor, MDB_val *key, MDB_val *data, unsigned int flags);
int mdb_cursor_del(MDB_cursor *cursor, unsigned int flags);
int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags);
int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data);
int mdb_txn_commit(MDB_txn *txn);
int mdb_drop(MDB_txn *txn, MDB_dbi dbi, int del);
typedef void MDB_assert_func(MDB_env *env, const char *msg);
int mdb_env_set_assert(MDB_env *env, MDB_assert_func *func);
MDB_env *mdb_txn_env(MDB_txn *txn);
int mdb_env_get_fd(MDB_env *env, int *fd);
int mdb_env_get_path(MDB_env *env, const char **path);
MDB_txn *mdb_cursor_txn(MDB_cursor *cursor);
MDB_dbi mdb_cursor_dbi(MDB_cursor *cursor);
size_t mdb_txn_id(MDB_txn *txn);
char *mdb_version(int *major, int *minor, int *patch);

/* Returned by a guarded call that met damage; outside LMDB's codes. */
#define LOS_FAULT (-30600)
#define LOS_NOTFOUND (-30798) /* MDB_NOTFOUND */

/* What a guarded call met: the signal (0 for a length that runs off the
 * map, -1 for an LMDB assertion), the address, and LMDB's assertion text. */
struct los_fault {
    int sig;
    void *addr;
    char msg[256];
};

struct los_guard {
    sigjmp_buf jump;
    struct los_fault *fault;
};

/* The guarded call under way in this thread, if any. initial-exec: read in
 * a signal handler, where a lazily allocated thread-local is not safe. */
static __thread struct los_guard *los_current __attribute__((tls_model("initial-exec")));

static struct sigaction los_before_segv, los_before_bus;
static pthread_mutex_t los_install_lock = PTHREAD_MUTEX_INITIALIZER;

static void los_on_signal(int sig, siginfo_t *info, void *context) {
    struct los_guard *g = los_current;
    if (g != NULL) {
        los_current = NULL;
        g->fault->sig = sig;
        g->fault->addr = info != NULL ? info->si_addr : NULL;
        siglongjmp(g->jump, 1);
    }
    struct sigaction *before = sig == SIGBUS ? &los_before_bus : &los_before_segv;
    if (before->sa_flags & SA_SIGINFO) {
        if (before->sa_sigaction != NULL) {
            before->sa_sigaction(sig, info, context);
            return;
        }
    } else if (before->sa_handler != SIG_DFL && before->sa_handler != SIG_IGN) {
        before->sa_handler(sig);
        return;
    }
    /* Not ours and nobody else's: put the default action back; returning
     * runs the faulting instruction again, which then takes it. */
    sigaction(sig, before, NULL);
}

static void los_on_assert(MDB_env *env, const char *msg) {
    (void)env;
    struct los_guard *g = los_current;
    if (g == NULL) {
        return; /* LMDB prints the message and aborts, as before */
    }
    los_current = NULL;
    g->fault->sig = -1;
    g->fault->addr = NULL;
    snprintf(g->fault->msg, sizeof g->fault->msg, "%s", msg);
    siglongjmp(g->jump, 1);
}

static int los_install_one(int sig, struct sigaction *before) {
    struct sigaction now;
    if (sigaction(sig, NULL, &now) != 0) {
        return -1;
    }
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == los_on_signal) {
        return 0;
    }
    struct sigaction mine;
    memset(&mine, 0, sizeof mine);
    mine.sa_sigaction = los_on_signal;
    /* NODEFER: the jump out of the handler leaves nothing blocked. */
    mine.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&mine.sa_mask);
    *before = now;
    return sigaction(sig, &mine, NULL);
}

/* Install the handlers (again, if another handler replaced them since) and
 * the assertion hook of `env`. 0 on success, else -1 with errno set. */
int los_guard_env(MDB_env *env) {
    pthread_mutex_lock(&los_install_lock);
    int rc = los_install_one(SIGSEGV, &los_before_segv);
    if (rc == 0) {
        rc = los_install_one(SIGBUS, &los_before_bus);
    }
    pthread_mutex_unlock(&los_install_lock);
    if (rc == 0 && env != NULL) {
        mdb_env_set_assert(env, los_on_assert);
    }
    return rc;
}

/* Where the map is, for the checks below. `base` is 0 until found (see
 * los_locate); `size` is the map's size and `psize` LMDB's page size. `bits`
 * holds a bit per page of the map, set once the page was checked (see
 * los_page_ok), shared by every thread; NULL checks no page. */
struct los_map {
    uintptr_t base;
    size_t size;
    size_t psize;
    uint64_t *bits;
    size_t nbits;
    size_t outside; /* a write transaction's: what lies outside the map is LMDB's own */
};

/* LMDB's file format (version 1, 64-bit): every page begins with a 16-byte
 * header: its number (8 bytes), 2 unused bytes, its flags (2), and for
 * branch and leaf pages the offsets of the free space's two ends (2 + 2),
 * for an overflow page the count of pages it spans (4). Branch and leaf
 * pages then hold the 2-byte offsets of their nodes, in key order; a node is
 * 8 bytes of header (for a leaf node the data's size in its first 4 bytes,
 * for a branch node the child's page number in its first 6; the node's
 * flags; the key's size), then the key, then for a leaf node its data, or
 * where the data is elsewhere, the number of the overflow page (F_BIGDATA)
 * or a table's record (F_SUBDATA, 48 bytes, its root page at byte 40).
 * The meta pages (0 and 1) hold, after the page header, the magic number,
 * the version, and the records of the free-page tree (at 40) and the main
 * tree (at 88); the transaction number is at 144. */
#define LOS_MAGIC 0xBEEFC0DEu
#define LOS_VERSION 1u
#define LOS_HDR 16u
#define LOS_NODE 8u
#define LOS_LINE 64u /* a line of memory, as the CPU fetches it */
#define LOS_P_BRANCH 0x01u
#define LOS_P_LEAF 0x02u
#define LOS_P_OVERFLOW 0x04u
#define LOS_P_META 0x08u
#define LOS_P_LEAF2 0x20u
#define LOS_P_SUBP 0x40u
#define LOS_F_BIGDATA 0x01u
#define LOS_F_SUBDATA 0x02u
#define LOS_F_DUPDATA 0x04u
#define LOS_DB_SIZE 48u
#define LOS_NO_PAGE UINT64_MAX
#define LOS_MAX_DEPTH 32

static uint16_t los_u16(uintptr_t at) { return *(const volatile uint16_t *)at; }
static uint32_t los_u32(uintptr_t at) { return *(const volatile uint32_t *)at; }
static uint64_t los_u64(uintptr_t at) {
    uint64_t v;
    memcpy(&v, (const void *)at, sizeof v);
    return v;
}

static int los_is_meta(uintptr_t page) {
    return los_u32(page + 16) == LOS_MAGIC && los_u32(page + 20) == LOS_VERSION;
}

/* Find the map from `p`, a pointer into one of its pages: the page that
 * holds `p` (for a value in an overflow page, the first 16 bytes of the
 * page are its header) records its own number, so the map begins that many
 * pages before it, where both meta pages must be. A damaged page gives a
 * place that fails those checks, and 0. */
static uintptr_t los_locate(uintptr_t p, const struct los_map *map) {
    size_t psize = map->psize;
    if (psize < 512 || (psize & (psize - 1)) != 0 || p < LOS_HDR) {
        return 0;
    }
    uintptr_t page = (p - LOS_HDR) & ~(uintptr_t)(psize - 1);
    uint64_t pgno = los_u64(page);
    if (pgno > (page / psize) || pgno >= map->size / psize) {
        return 0;
    }
    uintptr_t base = page - (uintptr_t)pgno * psize;
    if (!los_is_meta(base) || !los_is_meta(base + psize)) {
        return 0;
    }
    return base;
}

/* `x` over the page size: a shift when the size is a power of two (always,
 * for a map found by los_locate), which is on every read's path, where a
 * 64-bit division costs tens of cycles. */
static inline uint64_t los_in_pages(const struct los_map *m, uint64_t x) {
    size_t p = m->psize;
    if (p != 0 && (p & (p - 1)) == 0) {
        return x >> __builtin_ctzl(p);
    }
    return x / p;
}

static inline uint64_t los_pages(const struct los_map *m) { return los_in_pages(m, m->size); }

static inline int los_seen(const struct los_map *m, uint64_t pgno) {
    if (m->bits == NULL || pgno >= m->nbits) {
        return 0;
    }
    return (int)((__atomic_load_n(&m->bits[pgno >> 6], __ATOMIC_RELAXED) >> (pgno & 63)) & 1);
}

/* A page found whole before: los_page_ok's first answer without the call,
 * for the paths every read takes. */
static inline int los_known_whole(const struct los_map *m, uint64_t pgno) {
    return pgno >= 2 && pgno < los_pages(m) && los_seen(m, pgno);
}

static void los_mark(const struct los_map *m, uint64_t pgno) {
    if (m->bits != NULL && pgno < m->nbits) {
        __atomic_fetch_or(&m->bits[pgno >> 6], (uint64_t)1 << (pgno & 63), __ATOMIC_RELAXED);
    }
}

/* 8 bytes at `at` as a number that orders as the bytes do. */
static inline uint64_t los_be64(uintptr_t at) {
    uint64_t v;
    memcpy(&v, (const void *)at, sizeof v);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* LMDB's default order of keys: bytes, then length. Compared here rather
 * than by memcmp: a lookup compares a dozen short keys, where the call
 * costs more than the comparison. */
static inline int los_cmp(uintptr_t a, size_t an, uintptr_t b, size_t bn) {
    size_t n = an < bn ? an : bn;
    for (; n >= 8; n -= 8, a += 8, b += 8) {
        uint64_t x = los_be64(a), y = los_be64(b);
        if (x != y) {
            return x < y ? -1 : 1;
        }
    }
    for (; n > 0; n--, a++, b++) {
        unsigned char x = *(const unsigned char *)a, y = *(const unsigned char *)b;
        if (x != y) {
            return x < y ? -1 : 1;
        }
    }
    return an < bn ? -1 : an > bn;
}

/* An overflow page `pgno` that holds `len` bytes of data. */
static int los_overflow_ok(const struct los_map *m, uint64_t pgno, size_t len) {
    if (pgno < 2 || pgno >= los_pages(m)) {
        return 0;
    }
    uintptr_t page = m->base + (uintptr_t)pgno * m->psize;
    uint32_t count = los_u32(page + 12);
    if (los_u64(page) != pgno || (los_u16(page + 10) & (LOS_P_OVERFLOW | LOS_P_BRANCH | LOS_P_LEAF |
                                                      LOS_P_META)) != LOS_P_OVERFLOW) {
        return 0;
    }
    if (count == 0 || count > los_pages(m) - pgno) {
        return 0;
    }
    return len <= (size_t)count * m->psize - LOS_HDR;
}

/* A list of free pages as the free-page tree holds it: a count, then that
 * many page numbers, each of a page of the map. */
static int los_idl_ok(const struct los_map *m, uintptr_t data, size_t len) {
    if (len < 8 || len % 8 != 0) {
        return 0;
    }
    uint64_t count = los_u64(data);
    if (count > len / 8 - 1) { /* a record may be reserved larger than it is filled */
        return 0;
    }
    for (uint64_t i = 1; i <= count; i++) {
        if (los_u64(data + 8 * i) >= los_pages(m)) {
            return 0;
        }
    }
    return 1;
}

/* Whether branch or leaf page `pgno` is whole: its header, and every node
 * inside the page, in key order, pointing at pages of the map (`free`: a
 * page of the free-page tree, whose records are lists of pages). A page
 * found whole once is not looked at again (`bits`). */
static int los_page_ok(const struct los_map *m, uint64_t pgno, int free) {
    if (pgno < 2 || pgno >= los_pages(m)) {
        return 0;
    }
    if (los_seen(m, pgno)) {
        return 1;
    }
    size_t psize = m->psize;
    uintptr_t page = m->base + (uintptr_t)pgno * psize;
    uint16_t flags = los_u16(page + 10), lower = los_u16(page + 12), upper = los_u16(page + 14);
    unsigned kind = flags & (LOS_P_BRANCH | LOS_P_LEAF | LOS_P_OVERFLOW | LOS_P_META);
    if (los_u64(page) != pgno || (kind != LOS_P_BRANCH && kind != LOS_P_LEAF) ||
        (flags & (LOS_P_LEAF2 | LOS_P_SUBP)) != 0) {
        return 0;
    }
    if (lower < LOS_HDR || lower > upper || upper > psize || (lower & 1) != 0) {
        return 0;
    }
    size_t n = (lower - LOS_HDR) / 2;
    if (kind == LOS_P_BRANCH && n < 1) {
        return 0;
    }
    uintptr_t prev_key = 0;
    size_t prev_len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t off = los_u16(page + LOS_HDR + 2 * i);
        if (off < upper || (off & 1) != 0 || off + LOS_NODE > psize) {
            return 0;
        }
        uintptr_t node = page + off;
        uint16_t lo = los_u16(node), hi = los_u16(node + 2), nflags = los_u16(node + 4);
        size_t ksize = los_u16(node + 6);
        if (off + LOS_NODE + ksize > psize) {
            return 0;
        }
        uintptr_t key = node + LOS_NODE;
        if (kind == LOS_P_BRANCH) {
            uint64_t child = (uint64_t)lo | (uint64_t)hi << 16 | (uint64_t)nflags << 32;
            if (child < 2 || child >= los_pages(m)) {
                return 0;
            }
        } else {
            size_t dsize = (size_t)lo | (size_t)hi << 16;
            uintptr_t data = key + ksize;
            size_t room = psize - off - LOS_NODE - ksize;
            if (free && ksize != 8) {
                return 0;
            }
            if (nflags & LOS_F_DUPDATA) {
                return 0; /* no table of this package has duplicate keys */
            } else if (nflags & LOS_F_BIGDATA) {
                if (room < 8 || !los_overflow_ok(m, los_u64(data), dsize)) {
                    return 0;
                }
                uint64_t first = los_u64(data);
                if (free && !los_idl_ok(m, m->base + (uintptr_t)first * psize + LOS_HDR, dsize)) {
                    return 0;
                }
            } else if (nflags & LOS_F_SUBDATA) {
                if (free || dsize != LOS_DB_SIZE || room < LOS_DB_SIZE) {
                    return 0;
                }
            } else if (dsize > room || (free && !los_idl_ok(m, data, dsize))) {
                return 0;
            }
        }
        /* Keys in order; a branch page's first key is empty and not compared.
         * The free-page tree's keys are transaction numbers, in the order of
         * the numbers (8 bytes in the machine's order). */
        if (kind == LOS_P_LEAF || i > 0) {
            int after;
            if (free) {
                after = ksize == 8 && (prev_len != 8 || los_u64(key) > los_u64(prev_key));
            } else {
                after = los_cmp(prev_key, prev_len, key, ksize) < 0;
            }
            if ((kind == LOS_P_LEAF ? i > 0 : i > 1) && !after) {
                return 0;
            }
            prev_key = key;
            prev_len = ksize;
        }
    }
    los_mark(m, pgno);
    return 1;
}

/* Node `i` of branch or leaf page `page`: where the page's i-th offset
 * points. */
static inline uintptr_t los_node_at(uintptr_t page, size_t i) {
    return page + los_u16(page + LOS_HDR + 2 * i);
}

/* A binary search of a page that is not in the cache waits for each node
 * it compares, one after another. These ask for the lines of the nodes it
 * may compare a few steps ahead, so that they arrive together: first the
 * nodes its first three steps may compare (when there are many), and once
 * few are left, all of those, each with the two lines after its first. The
 * node that matches is read on: its value follows its key, and a value of
 * a hundred bytes or so ends in the second or third line of the node.
 * Asked for later, once the match is known, those lines were one more wait
 * (a get of the benchmark's values 3-12% faster with them asked for
 * here). A prefetch past the end of the map does not fault. */
static void los_fetch(uintptr_t page, size_t i) {
    __builtin_prefetch((const void *)los_node_at(page, i));
}

static void los_fetch_ahead(uintptr_t page, size_t lo, size_t hi) {
    size_t n = hi - lo;
    if (n > 16) {
        for (size_t k = 1; k < 8; k++) {
            los_fetch(page, lo + k * n / 8);
        }
    }
}

static void los_fetch_all(uintptr_t page, size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; i++) {
        uintptr_t node = los_node_at(page, i);
        __builtin_prefetch((const void *)node);
        __builtin_prefetch((const void *)(node + LOS_LINE));
        __builtin_prefetch((const void *)(node + 2 * LOS_LINE));
    }
}

/* The child of branch page `page` (checked whole) that holds `key`: the
 * last node whose key is not after `key` (the first node stands for every
 * key before the second's). */
static size_t los_child_index(uintptr_t page, const char *key, size_t klen) {
    size_t n = (los_u16(page + 12) - LOS_HDR) / 2;
    size_t lo = 1, hi = n; /* the answer is in [lo - 1, hi - 1] */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uintptr_t node = los_node_at(page, mid);
        if (los_cmp(node + LOS_NODE, los_u16(node + 6), (uintptr_t)key, klen) <= 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo - 1;
}

static uint64_t los_child(uintptr_t page, size_t i) {
    uintptr_t node = los_node_at(page, i);
    return (uint64_t)los_u16(node) | (uint64_t)los_u16(node + 2) << 16 |
           (uint64_t)los_u16(node + 4) << 32;
}

/* The keys a leaf reached by los_path_ok holds: those before `key` (none:
 * every key), in the map. */
struct los_bound {
    uintptr_t key;
    size_t len;
    int set;
};

/* Check every page from `root` down to the leaf that holds `key`, and with
 * `siblings` the pages beside each of them too (a deletion may merge a page
 * with either). On success `*leaf` is the leaf's number and `*bound` the
 * first key past it (if `bound` is not NULL). */
static int los_path_ok(const struct los_map *m, uint64_t root, const char *key, size_t klen,
                       int siblings, uint64_t *leaf, struct los_bound *bound) {
    if (bound != NULL) {
        bound->set = 0;
    }
    uint64_t pgno = root;
    for (int depth = 0; depth < LOS_MAX_DEPTH; depth++) {
        if (!los_known_whole(m, pgno) && !los_page_ok(m, pgno, 0)) {
            return 0;
        }
        uintptr_t page = m->base + (uintptr_t)pgno * m->psize;
        if (los_u16(page + 10) & LOS_P_LEAF) {
            *leaf = pgno;
            return 1;
        }
        size_t n = (los_u16(page + 12) - LOS_HDR) / 2;
        size_t i = los_child_index(page, key, klen);
        if (bound != NULL && i + 1 < n) {
            /* Deeper levels narrow it. */
            uintptr_t next = los_node_at(page, i + 1);
            bound->key = next + LOS_NODE;
            bound->len = los_u16(next + 6);
            bound->set = 1;
        }
        if (siblings) {
            if (i > 0 && !los_page_ok(m, los_child(page, i - 1), 0)) {
                return 0;
            }
            if (i + 1 < n && !los_page_ok(m, los_child(page, i + 1), 0)) {
                return 0;
            }
        }
        pgno = los_child(page, i);
    }
    return 0;
}

/* Check every page of the tree at `root` (the free-page tree: small, and
 * every commit reads and rewrites it). */
static int los_tree_ok(const struct los_map *m, uint64_t root, int free) {
    if (root == LOS_NO_PAGE) {
        return 1;
    }
    uint64_t stack_pg[LOS_MAX_DEPTH];
    size_t stack_i[LOS_MAX_DEPTH];
    int top = 0;
    if (!los_page_ok(m, root, free)) {
        return 0;
    }
    stack_pg[0] = root;
    stack_i[0] = 0;
    while (top >= 0) {
        uintptr_t page = m->base + (uintptr_t)stack_pg[top] * m->psize;
        size_t n = (los_u16(page + 12) - LOS_HDR) / 2;
        if ((los_u16(page + 10) & LOS_P_LEAF) || stack_i[top] >= n) {
            top--;
            continue;
        }
        uint64_t child = los_child(page, stack_i[top]++);
        if (top + 1 >= LOS_MAX_DEPTH || !los_page_ok(m, child, free)) {
            return 0;
        }
        top++;
        stack_pg[top] = child;
        stack_i[top] = 0;
    }
    return 1;
}

/* The newest meta page. */
static uintptr_t los_meta(const struct los_map *m) {
    uintptr_t a = m->base, b = m->base + m->psize;
    return los_u64(a + 144) >= los_u64(b + 144) ? a : b;
}

/* The root of the main tree and of the free-page tree in the newest meta
 * page. */
static void los_roots(const struct los_map *m, uint64_t *main_root, uint64_t *free_root) {
    uintptr_t meta = los_meta(m);
    *free_root = los_u64(meta + 40 + 40);
    *main_root = los_u64(meta + 88 + 40);
}

/* Check a read's result `v`, under the guard, so that a length or page that
 * a damaged node declares cannot send the decoder off the map or past the
 * end of the file, and so that the page it came from is whole. With the map
 * known: `v` must lie inside it, its page must be a whole leaf page or an
 * overflow page that holds it, and its last byte is read (past the end of
 * the file, that is SIGBUS, here). With no map (the reads of a write
 * transaction, whose own pages are outside it, or a map not found yet): a
 * byte of every page `v` spans is read. */
static int los_check(const MDB_val *v, struct los_map *map, struct los_fault *fault) {
    size_t n = v->mv_size;
    uintptr_t at = (uintptr_t)v->mv_data;
    if (at == 0) {
        return 0;
    }
    /* An empty key or value still points into its page, which is checked. */
    uintptr_t last = n == 0 ? at : at + (n - 1);
    if (map != NULL) {
        if (map->base == 0) {
            map->base = los_locate(at, map);
        }
        if (map->base != 0 && map->outside && (at < map->base || at - map->base >= map->size)) {
            return 0; /* in a page a write transaction changed: LMDB's own copy */
        }
        if (map->base != 0) {
            /* An empty key or value may point just past the end of its
             * page (its node is the page's last bytes). */
            uintptr_t end = n == 0 ? at : last + 1;
            int ok = !(last < at || at < map->base + LOS_HDR || end - map->base > map->size);
            if (ok) {
                uintptr_t page = (at - LOS_HDR) & ~(uintptr_t)(map->psize - 1);
                uint64_t pgno = los_in_pages(map, page - map->base);
                if (los_u16(page + 10) & LOS_P_OVERFLOW) {
                    /* First: a page checked as a leaf may since have been
                     * freed and reused for an overflow value. */
                    ok = at == page + LOS_HDR && los_overflow_ok(map, pgno, n);
                } else if (los_known_whole(map, pgno)) { /* the common case */
                    ok = end <= page + map->psize;
                } else {
                    ok = los_page_ok(map, pgno, 0) && end <= page + map->psize;
                }
            }
            if (ok && n == 0) {
                return 0;
            }
            if (!ok) {
                fault->sig = 0;
                fault->addr = (void *)at;
                return LOS_FAULT;
            }
            (void)*(volatile const char *)last;
            return 0;
        }
        /* The page that holds `v` does not say where it is. */
        if (n > 2 * map->psize) {
            fault->sig = 0;
            fault->addr = (void *)at;
            return LOS_FAULT;
        }
    }
    if (n == 0) {
        return 0; /* nothing to read, and it may point past its page */
    }
    if (last < at) {
        last = UINTPTR_MAX; /* the fault comes before the wrap */
    }
    const uintptr_t page = 4096; /* no system page is smaller */
    for (;;) {
        (void)*(volatile const char *)at;
        uintptr_t next = (at | (page - 1)) + 1;
        if (next == 0 || next > last) {
            break;
        }
        at = next;
    }
    (void)*(volatile const char *)last;
    return 0;
}

#define LOS_GUARDED(call, checks)                                                         \
    struct los_guard g;                                                                   \
    g.fault = fault;                                                                      \
    struct los_guard *volatile outer = los_current;                                       \
    if (sigsetjmp(g.jump, 0) != 0) {                                                      \
        los_current = outer;                                                              \
        return LOS_FAULT;                                                                 \
    }                                                                                     \
    los_current = &g;                                                                     \
    int rc = (call);                                                                      \
    if (rc == 0) {                                                                        \
        checks                                                                            \
    }                                                                                     \
    los_current = outer;                                                                  \
    return rc;

/* A read's own lookup.
 *
 * A read that asks for one key in a key order of its own (the store's `get`)
 * spends most of its time in LMDB's search waiting for memory: the leaf is
 * rarely in the cache, and its binary search reads one node after another,
 * each a line of memory that is not there yet. The lookup below reads the
 * same pages in the same order, but asks for the lines its search may need
 * a step or two ahead, so that they arrive together (and it skips LMDB's
 * cursor setup). It walks the tree with the page checks the writes use
 * (los_path_ok), so every page it reads was found whole first.
 *
 * The root of the transaction's snapshot is in LMDB's transaction, whose
 * layout is not public: only LMDB 0.9.24 (the version this package builds)
 * is read that way, after its fields were compared with what LMDB's own
 * functions say of the same transaction; a named table's root is in its
 * record in that snapshot's main tree. Anything else (another version, a
 * write transaction, a key LMDB would refuse, a page that is not whole, a
 * record that is not a plain value) is left to mdb_get. */
struct los_txn_head { /* LMDB 0.9.24's MDB_txn, up to its flags */
    void *parent, *child;
    size_t next_pgno, txnid;
    MDB_env *env;
    void *free_pgs, *loose_pgs;
    int loose_count;
    void *spill_pgs, *u, *dbxs;
    const unsigned char *dbs; /* MDB_db records: LOS_DB_SIZE bytes each */
    void *dbiseqs, *cursors, *dbflags;
    unsigned int numdbs, flags;
};
#define LOS_MAIN_DBI 1u
#define LOS_TXN_RDONLY 0x20000u   /* MDB_TXN_RDONLY */
#define LOS_TXN_BLOCKED 0x13u     /* MDB_TXN_FINISHED | MDB_TXN_ERROR | MDB_TXN_HAS_CHILD */
#define LOS_DB_KEY_FLAGS 0x7eu    /* every MDB_db flag that changes how keys are found */
#define LOS_MAXKEY 511u           /* mdb_env_get_maxkeysize, as built */
#define LOS_USE_LMDB 1            /* not an LMDB code: mdb_get answers */
#define LOS_NOT_WHOLE 2           /* not an LMDB code: a page on the way is not whole */

static int los_own_lookup = -1; /* whether LMDB is the version read here; -1: not asked yet */

/* Search the tree at `root` for `key`: 0 with `*node` its leaf node,
 * LOS_NOTFOUND, or LOS_NOT_WHOLE where a page on the way is not whole. */
static int los_search(const struct los_map *m, uint64_t root, const char *key, size_t klen,
                      uintptr_t *node) {
    if (root == LOS_NO_PAGE) {
        return LOS_NOTFOUND; /* an empty table */
    }
    uint64_t leaf;
    if (!los_path_ok(m, root, key, klen, 0, &leaf, NULL)) {
        return LOS_NOT_WHOLE;
    }
    uintptr_t page = m->base + (uintptr_t)leaf * m->psize;
    size_t n = (los_u16(page + 12) - LOS_HDR) / 2;
    size_t lo = 0, hi = n; /* the key, if stored, is in [lo, hi) */
    los_fetch_ahead(page, lo, hi);
    int fetched = 0;
    while (lo < hi) {
        if (!fetched && hi - lo <= 16) {
            los_fetch_all(page, lo, hi);
            fetched = 1;
        }
        size_t mid = lo + (hi - lo) / 2;
        uintptr_t at = los_node_at(page, mid);
        int c = los_cmp((uintptr_t)key, klen, at + LOS_NODE, los_u16(at + 6));
        if (c < 0) {
            hi = mid;
        } else if (c > 0) {
            lo = mid + 1;
        } else {
            *node = at;
            return 0;
        }
    }
    return LOS_NOTFOUND;
}

/* An MDB_db record's flags and root. */
static int los_db_root(const unsigned char *db, uint64_t *root) {
    uint16_t flags;
    memcpy(&flags, db + 4, sizeof flags);
    memcpy(root, db + 40, sizeof *root);
    return (flags & LOS_DB_KEY_FLAGS) == 0;
}

/* Whether LMDB is the version whose private records are read here. */
static int los_own(void) {
    int own = __atomic_load_n(&los_own_lookup, __ATOMIC_RELAXED);
    if (own < 0) {
        int major = 0, minor = 0, patch = 0;
        mdb_version(&major, &minor, &patch);
        own = major == 0 && minor == 9 && patch == 24;
        __atomic_store_n(&los_own_lookup, own, __ATOMIC_RELAXED);
    }
    return own;
}

/* LMDB 0.9.24's MDB_env, up to its map. */
struct los_env_head {
    int fd, lfd, mfd;
    uint32_t flags;
    unsigned int psize, os_psize, maxreaders;
    int close_readers;
    MDB_dbi numdbs, maxdbs;
    int pid;
    char *path;
    char *map;
};

/* Where the map of `env` begins, when no read found it yet (`m->base` 0):
 * read from LMDB's environment, after its file and path fields were
 * compared with what LMDB's own functions say, and its two meta pages
 * found there. A read finds it from the page of what it read (los_locate),
 * but a search must know it before LMDB's search reads any page (see
 * los_not_whole), and a damaged page may not say where it is. */
static void los_find_map(MDB_env *env, struct los_map *m) {
    int fd = -1;
    const char *path = NULL;
    if (mdb_env_get_fd(env, &fd) != 0 || mdb_env_get_path(env, &path) != 0) {
        return;
    }
    const struct los_env_head *e = (const struct los_env_head *)(const void *)env;
    if (e->fd != fd || e->path != path || e->psize != m->psize || e->map == NULL) {
        return;
    }
    uintptr_t base = (uintptr_t)e->map;
    if (m->size >= 2 * m->psize && los_is_meta(base) && los_is_meta(base + m->psize)) {
        m->base = base;
    }
}

/* The root of table `dbi`, named `table` (`tlen` bytes; NULL for the main
 * table), in the snapshot of read transaction `txn`, into `*root`: 0,
 * LOS_USE_LMDB where it is not read here, or LOS_NOT_WHOLE where a page on
 * the way to a named table's record is not whole. Finds the map if no read
 * found it yet. */
static int los_txn_root(MDB_txn *txn, MDB_dbi dbi, const char *table, size_t tlen,
                        struct los_map *m, uint64_t *root) {
    if (!los_own() || (dbi == LOS_MAIN_DBI) != (table == NULL) || dbi < LOS_MAIN_DBI ||
        m == NULL) {
        return LOS_USE_LMDB;
    }
    const struct los_txn_head *t = (const struct los_txn_head *)(const void *)txn;
    if (t->env != mdb_txn_env(txn) || t->txnid != mdb_txn_id(txn) ||
        (t->flags & (LOS_TXN_RDONLY | LOS_TXN_BLOCKED)) != LOS_TXN_RDONLY || t->numdbs <= dbi) {
        return LOS_USE_LMDB;
    }
    if (m->base == 0) {
        los_find_map(t->env, m);
        if (m->base == 0) {
            return LOS_USE_LMDB;
        }
    }
    if (!los_db_root(t->dbs + LOS_DB_SIZE * LOS_MAIN_DBI, root)) {
        return LOS_USE_LMDB;
    }
    if (table != NULL) {
        /* A named table's record in the transaction is LMDB's to refresh
         * (it marks it stale when the transaction begins): read it from the
         * snapshot's main tree, as LMDB would. */
        if (tlen == 0 || tlen > LOS_MAXKEY) {
            return LOS_USE_LMDB;
        }
        uintptr_t node;
        int rc = los_search(m, *root, table, tlen, &node);
        if (rc != 0) {
            return rc == LOS_NOT_WHOLE ? rc : LOS_USE_LMDB;
        }
        size_t ksize = los_u16(node + 6);
        size_t dsize = (size_t)los_u16(node) | (size_t)los_u16(node + 2) << 16;
        if ((los_u16(node + 4) & (LOS_F_SUBDATA | LOS_F_BIGDATA | LOS_F_DUPDATA)) != LOS_F_SUBDATA ||
            dsize != LOS_DB_SIZE ||
            !los_db_root((const unsigned char *)(node + LOS_NODE + ksize), root)) {
            return LOS_USE_LMDB;
        }
    }
    return 0;
}

/* `key`'s value in table `dbi` of read transaction `txn` (see los_txn_root):
 * 0, LOS_NOTFOUND, LOS_NOT_WHOLE, or LOS_USE_LMDB where mdb_get answers. */
static int los_lookup(MDB_txn *txn, MDB_dbi dbi, const char *table, size_t tlen,
                      const MDB_val *key, MDB_val *data, struct los_map *m) {
    size_t klen = key->mv_size;
    if (klen == 0 || klen > LOS_MAXKEY) {
        return LOS_USE_LMDB;
    }
    uint64_t root;
    int rc = los_txn_root(txn, dbi, table, tlen, m, &root);
    if (rc != 0) {
        return rc;
    }
    uintptr_t node;
    rc = los_search(m, root, key->mv_data, klen, &node);
    if (rc != 0) {
        return rc;
    }
    uint16_t nflags = los_u16(node + 4);
    size_t ksize = los_u16(node + 6);
    size_t dsize = (size_t)los_u16(node) | (size_t)los_u16(node + 2) << 16;
    uintptr_t at = node + LOS_NODE + ksize;
    if (nflags & (LOS_F_SUBDATA | LOS_F_DUPDATA)) {
        return LOS_USE_LMDB;
    }
    if (nflags & LOS_F_BIGDATA) {
        /* The page checks made sure this page is an overflow page of the
         * map (los_page_ok), and los_check checks it again. */
        at = m->base + (uintptr_t)los_u64(at) * m->psize + LOS_HDR;
    }
    for (size_t off = 0; off < dsize && off < 4 * LOS_LINE; off += LOS_LINE) {
        __builtin_prefetch((const void *)(at + off));
    }
    data->mv_size = dsize;
    data->mv_data = (void *)at;
    return 0;
}

/* A page on a read's way that is not whole: LMDB must not search it. Its
 * search trusts the page's count of nodes, and a damaged count can make
 * its binary search go round forever, with no signal to end it. */
static int los_not_whole(struct los_fault *fault) {
    fault->sig = -2;
    fault->addr = NULL;
    return LOS_FAULT;
}

static int los_get_one(MDB_txn *txn, MDB_dbi dbi, const char *table, size_t tlen, MDB_val *key,
                       MDB_val *data, struct los_map *map, int own_only,
                       struct los_fault *fault) {
    int rc = los_lookup(txn, dbi, table, tlen, key, data, map);
    if (rc == LOS_NOT_WHOLE) {
        return los_not_whole(fault);
    }
    return rc == LOS_USE_LMDB && !own_only ? mdb_get(txn, dbi, key, data) : rc;
}

/* Before LMDB searches table `dbi` (named `table`) of the transaction of
 * `cursor` for `key`: LOS_NOT_WHOLE if a page on the way is not whole, else
 * 0 (also where the way is not known here: a write transaction, another
 * LMDB). `*root` caches the table's root between calls (LOS_NO_PAGE - 1:
 * not looked up yet; LOS_NO_PAGE: none to check). */
#define LOS_ROOT_UNKNOWN (LOS_NO_PAGE - 1)
static int los_way_ok(MDB_cursor *cursor, const char *table, size_t tlen, const MDB_val *key,
                      struct los_map *m, uint64_t *root) {
    if (key->mv_size == 0 || key->mv_size > LOS_MAXKEY) {
        return 0; /* LMDB refuses it before any search */
    }
    if (*root == LOS_ROOT_UNKNOWN) {
        int rc = los_txn_root(mdb_cursor_txn(cursor), mdb_cursor_dbi(cursor), table, tlen, m, root);
        if (rc != 0) {
            *root = LOS_NO_PAGE;
            return rc == LOS_NOT_WHOLE ? rc : 0;
        }
    }
    uint64_t leaf;
    if (*root != LOS_NO_PAGE && !los_path_ok(m, *root, key->mv_data, key->mv_size, 0, &leaf, NULL)) {
        return LOS_NOT_WHOLE;
    }
    return 0;
}

/* mdb_get of `key` in table `dbi`, named `table` (`tlen` bytes; NULL for
 * the main table), under the guard, the value checked. With `own_only`
 * (the engine's tests, which compare the two lookups), LOS_USE_LMDB where
 * LMDB would be asked. */
int los_get(MDB_txn *txn, MDB_dbi dbi, const char *table, size_t tlen, MDB_val *key,
            MDB_val *data, struct los_map *map, int own_only, struct los_fault *fault) {
    LOS_GUARDED(los_get_one(txn, dbi, table, tlen, key, data, map, own_only, fault),
                { rc = los_check(data, map, fault); })
}

#define LOS_SET 15       /* MDB_SET */
#define LOS_SET_KEY 16   /* MDB_SET_KEY */
#define LOS_SET_RANGE 17 /* MDB_SET_RANGE */

/* mdb_cursor_get of a read or write transaction's cursor; a search for a
 * key first checks the pages on its way (see los_way_ok). */
static int los_cursor_get_one(MDB_cursor *cursor, MDB_val *key, MDB_val *data, int op,
                              const char *table, size_t tlen, struct los_map *map,
                              struct los_fault *fault) {
    if (op == LOS_SET || op == LOS_SET_KEY || op == LOS_SET_RANGE) {
        uint64_t root = LOS_ROOT_UNKNOWN;
        if (los_way_ok(cursor, table, tlen, key, map, &root) != 0) {
            return los_not_whole(fault);
        }
    }
    return mdb_cursor_get(cursor, key, data, op);
}

/* `table` (`tlen` bytes; NULL for the main table) names the cursor's
 * table. */
int los_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, int op, const char *table,
                   size_t tlen, struct los_map *map, struct los_fault *fault) {
    const void *given = key->mv_data;
    LOS_GUARDED(los_cursor_get_one(cursor, key, data, op, table, tlen, map, fault), {
        if (key->mv_data != given) { /* else the caller's own key */
            rc = los_check(key, map, fault);
        }
        if (rc == 0) {
            rc = los_check(data, map, fault);
        }
    })
}

static int los_run(MDB_cursor *cursor, int op, MDB_val *keys, MDB_val *vals, size_t max,
                   size_t *got, struct los_map *map, struct los_fault *fault) {
    for (size_t i = 0; i < max; i++) {
        MDB_val *k = &keys[i], *v = &vals[i];
        k->mv_size = 0;
        k->mv_data = NULL;
        v->mv_size = 0;
        v->mv_data = NULL;
        int rc = mdb_cursor_get(cursor, k, v, op);
        if (rc == LOS_NOTFOUND) {
            return 0;
        }
        if (rc == 0) {
            rc = los_check(k, map, fault);
        }
        if (rc == 0) {
            rc = los_check(v, map, fault);
        }
        if (rc != 0) {
            return rc;
        }
        *got = i + 1;
    }
    return 0;
}

/* Up to `max` steps of cursor operation `op` (MDB_NEXT or MDB_PREV), under
 * one guard, each entry checked as los_cursor_get checks it; `*got` is how
 * many were made (fewer than `max`: the keys ran out). */
int los_cursor_run(MDB_cursor *cursor, int op, MDB_val *keys, MDB_val *vals, size_t max,
                   size_t *got, struct los_map *map, struct los_fault *fault) {
    *got = 0;
    LOS_GUARDED(los_run(cursor, op, keys, vals, max, got, map, fault), {})
}

/* Where a forward lookup's cursor stands between keys: not placed yet, on
 * the entry (key, val), or past the last key. */
#define LOS_SEEK_UNSET 0
#define LOS_SEEK_ON 1
#define LOS_SEEK_END 2
#define LOS_NEXT 8       /* MDB_NEXT */

struct los_seek {
    MDB_val key;
    MDB_val val;
    int at;
};

/* What a lookup's cursor operations share: the cursor's table (`table`,
 * `tlen`), the map, and the table's root once looked up (see los_way_ok). */
struct los_seek_in {
    MDB_cursor *cursor;
    const char *table;
    size_t tlen;
    struct los_map *map;
    uint64_t root;
    struct los_fault *fault;
};

/* Whether `key` lies between the first and last keys of the leaf that
 * holds `here` (the cursor's entry, read through los_check; NULL: none), a
 * page found whole: LMDB then searches that page alone, not from the root
 * (mdb_cursor_set). */
static int los_in_leaf(const struct los_map *m, const MDB_val *here, const MDB_val *key) {
    uintptr_t at = here == NULL ? 0 : (uintptr_t)here->mv_data;
    if (at == 0 || m == NULL || m->base == 0 || at < m->base + LOS_HDR ||
        at - m->base >= m->size) {
        return 0;
    }
    uintptr_t page = (at - LOS_HDR) & ~(uintptr_t)(m->psize - 1);
    uint64_t pgno = los_in_pages(m, page - m->base);
    if (!los_known_whole(m, pgno) || !(los_u16(page + 10) & LOS_P_LEAF)) {
        return 0;
    }
    size_t n = (los_u16(page + 12) - LOS_HDR) / 2;
    if (n == 0) {
        return 0;
    }
    uintptr_t first = los_node_at(page, 0);
    uintptr_t last = los_node_at(page, n - 1);
    uintptr_t k = (uintptr_t)key->mv_data;
    return los_cmp(k, key->mv_size, first + LOS_NODE, los_u16(first + 6)) >= 0 &&
           los_cmp(k, key->mv_size, last + LOS_NODE, los_u16(last + 6)) <= 0;
}

/* One cursor operation of a lookup, its entry checked; a search checks the
 * pages on its way first, unless it stays in the leaf of the cursor's entry
 * `here`. */
static int los_seek_op(struct los_seek_in *in, MDB_val *k, MDB_val *v, int op, const void *given,
                       const MDB_val *here) {
    MDB_cursor *cursor = in->cursor;
    struct los_map *map = in->map;
    struct los_fault *fault = in->fault;
    if (op != LOS_NEXT && !los_in_leaf(map, here, k) &&
        los_way_ok(cursor, in->table, in->tlen, k, map, &in->root) != 0) {
        return los_not_whole(fault);
    }
    int rc = mdb_cursor_get(cursor, k, v, op);
    if (rc == 0 && k->mv_data != given) { /* else the caller's own key */
        rc = los_check(k, map, fault);
    }
    if (rc == 0) {
        rc = los_check(v, map, fault);
    }
    return rc;
}

static int los_seek_all(struct los_seek_in *in, struct los_seek *s, const MDB_val *keys,
                        MDB_val *vals, size_t n, size_t maxkey) {
    for (size_t i = 0; i < n; i++) {
        const MDB_val *want = &keys[i];
        vals[i].mv_size = 0;
        vals[i].mv_data = NULL;
        if (want->mv_size == 0 || want->mv_size > maxkey) {
            continue; /* a key LMDB cannot hold is not stored */
        }
        int stepped = 0, searched = 0;
        for (;;) {
            if (s->at == LOS_SEEK_END) {
                break;
            }
            if (s->at == LOS_SEEK_ON) {
                int c = los_cmp((uintptr_t)s->key.mv_data, s->key.mv_size,
                                (uintptr_t)want->mv_data, want->mv_size);
                if (c == 0) {
                    vals[i] = s->val;
                    break;
                }
                if (c > 0) {
                    break; /* the next stored key is past it */
                }
            }
            int rc;
            if (searched) {
                /* A search landed before the key, which only a table that
                 * does not sort keys bytewise could do: look it up exactly
                 * and start over from there. */
                MDB_val k = *want, v = {0, NULL};
                s->at = LOS_SEEK_UNSET;
                rc = los_seek_op(in, &k, &v, LOS_SET_KEY, want->mv_data, NULL);
                if (rc == 0) {
                    vals[i] = v;
                } else if (rc != LOS_NOTFOUND) {
                    return rc;
                }
                break;
            }
            if (!stepped && s->at == LOS_SEEK_ON) {
                /* The next key first: keys asked for in a row are often
                 * stored in a row. */
                stepped = 1;
                rc = los_seek_op(in, &s->key, &s->val, LOS_NEXT, NULL, NULL);
            } else {
                searched = 1;
                MDB_val here = s->key;
                int on = s->at == LOS_SEEK_ON;
                s->key = *want;
                rc = los_seek_op(in, &s->key, &s->val, LOS_SET_RANGE, want->mv_data,
                                 on ? &here : NULL);
            }
            if (rc == LOS_NOTFOUND) {
                s->at = LOS_SEEK_END;
            } else if (rc != 0) {
                s->at = LOS_SEEK_UNSET;
                return rc;
            } else {
                s->at = LOS_SEEK_ON;
            }
        }
    }
    return 0;
}

/* The values of `n` keys given in ascending order, through `cursor`, which
 * only moves forward (state `s`, kept between calls): vals[i] is keys[i]'s
 * value, checked, or {0, NULL} when it is not stored. One guard for them
 * all. LMDB's code of an operation that failed, or 0. */
int los_seek(MDB_cursor *cursor, const char *table, size_t tlen, struct los_seek *s,
             const MDB_val *keys, MDB_val *vals, size_t n, size_t maxkey, struct los_map *map,
             struct los_fault *fault) {
    struct los_seek_in in = {cursor, table, tlen, map, LOS_ROOT_UNKNOWN, fault};
    LOS_GUARDED(los_seek_all(&in, s, keys, vals, n, maxkey), {})
}

int los_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat, struct los_fault *fault) {
    LOS_GUARDED(mdb_stat(txn, dbi, stat), {})
}

#define LOS_APPEND 0x20000u /* MDB_APPEND */

static int los_apply_all(MDB_cursor *cursor, const MDB_val *keys, const MDB_val *vals,
                         const unsigned char *dels, size_t n, size_t split) {
    for (size_t i = 0; i < n; i++) {
        MDB_val k = keys[i], v = vals[i];
        int rc;
        if (dels[i]) {
            if (i >= split) {
                continue; /* past the last key: nothing to delete */
            }
            MDB_val found = {0, NULL};
            rc = mdb_cursor_get(cursor, &k, &found, LOS_SET);
            if (rc == 0) {
                rc = mdb_cursor_del(cursor, 0);
            } else if (rc == LOS_NOTFOUND) {
                rc = 0;
            }
        } else {
            rc = mdb_cursor_put(cursor, &k, &v, i < split ? 0 : LOS_APPEND);
        }
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* The writes of one sorted batch through `cursor`, under one guard: for
 * `dels[i]` a deletion of `keys[i]`, else a put of `vals[i]`; the keys from
 * `split` on sort after every stored key and are appended. LMDB's code of
 * the first write that fails, or 0. */
int los_apply(MDB_cursor *cursor, const MDB_val *keys, const MDB_val *vals,
              const unsigned char *dels, size_t n, size_t split, struct los_fault *fault) {
    LOS_GUARDED(los_apply_all(cursor, keys, vals, dels, n, split), {})
}

int los_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags,
            struct los_fault *fault) {
    LOS_GUARDED(mdb_put(txn, dbi, key, data, flags), {})
}

int los_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, struct los_fault *fault) {
    LOS_GUARDED(mdb_del(txn, dbi, key, data), {})
}

int los_txn_commit(MDB_txn *txn, struct los_fault *fault) {
    LOS_GUARDED(mdb_txn_commit(txn), {})
}

int los_drop(MDB_txn *txn, MDB_dbi dbi, int del, struct los_fault *fault) {
    LOS_GUARDED(mdb_drop(txn, dbi, del), {})
}

/* Before a write transaction changes anything: check, under the guard,
 * every page of the file it may copy or change. LMDB copies a page it
 * changes by the bounds its header gives, and moves nodes by the sizes they
 * give, into memory of its own: a damaged page there would overwrite this
 * process's memory instead of faulting. So: the free-page tree (read and
 * rewritten by every commit), the record of `table` (NULL: the main tree),
 * and the path to each of the `n` keys, with the pages beside it for a
 * deletion (`dels[i]` nonzero). A map not found yet is looked for through
 * `cursor` (of the transaction, before any change); without one there is
 * nothing to check against, and nothing is checked. 0 if all are whole. */
static int los_writes_ok(MDB_cursor *cursor, struct los_map *map, const char *table,
                         size_t tlen, const MDB_val *keys, const unsigned char *dels, size_t n,
                         struct los_fault *fault) {
    /* Nothing is changed yet, so the first and last keys of `cursor`'s
     * tree are in pages of the map: either can say where it is. */
    static const int ends[2] = {0 /* MDB_FIRST */, 6 /* MDB_LAST */};
    if (cursor != NULL && map->base == 0 && los_own()) {
        los_find_map(mdb_txn_env(mdb_cursor_txn(cursor)), map);
    }
    for (int e = 0; cursor != NULL && map->base == 0 && e < 2; e++) {
        MDB_val k = {0, NULL}, d = {0, NULL};
        if (mdb_cursor_get(cursor, &k, &d, ends[e]) == 0 && k.mv_size > 0) {
            map->base = los_locate((uintptr_t)k.mv_data, map);
        }
    }
    if (map->base == 0) {
        return 0;
    }
    int ok = 1;
    uint64_t root = LOS_NO_PAGE, free_root = LOS_NO_PAGE, leaf = 0;
    los_roots(map, &root, &free_root);
    ok = los_tree_ok(map, free_root, 1);
    if (ok && table != NULL && root != LOS_NO_PAGE) {
        /* The table's record, in the main tree: its root. */
        uintptr_t node;
        int rc = los_search(map, root, table, tlen, &node);
        ok = rc != LOS_NOT_WHOLE;
        root = LOS_NO_PAGE;
        if (rc == 0 && (los_u16(node + 4) & LOS_F_SUBDATA)) {
            root = los_u64(node + LOS_NODE + los_u16(node + 6) + 40);
        }
    }
    /* Keys come mostly in order: one after the last key checked and before
     * the bound of its leaf is in that leaf, whose path (and its siblings,
     * once one key of it was deleted) was checked. */
    struct los_bound bound = {0, 0, 0};
    const MDB_val *prev = NULL;
    int prev_siblings = 0;
    for (size_t i = 0; ok && root != LOS_NO_PAGE && i < n; i++) {
        const MDB_val *k = &keys[i];
        if (prev != NULL && (prev_siblings || !dels[i]) &&
            los_cmp((uintptr_t)k->mv_data, k->mv_size, (uintptr_t)prev->mv_data, prev->mv_size) >= 0 &&
            (!bound.set || los_cmp((uintptr_t)k->mv_data, k->mv_size, bound.key, bound.len) < 0)) {
            continue;
        }
        ok = los_path_ok(map, root, k->mv_data, k->mv_size, dels[i], &leaf, &bound);
        prev = k;
        prev_siblings = dels[i];
    }
    if (!ok) {
        fault->sig = 0;
        fault->addr = NULL;
        return LOS_FAULT;
    }
    return 0;
}

int los_check_writes(MDB_cursor *cursor, struct los_map *map, const char *table, size_t tlen,
                     const MDB_val *keys, const unsigned char *dels, size_t n,
                     struct los_fault *fault) {
    LOS_GUARDED(los_writes_ok(cursor, map, table, tlen, keys, dels, n, fault), {})
}

/* The pages mdb_drop reads to empty the tree at `root` of `depth` levels
 * (the root's level is 1): the leftmost path (its first search), every
 * branch page, and every leaf too with `leaves` (a table with values in
 * overflow pages, which LMDB frees by its leaves' nodes). LMDB takes every
 * child a branch page counts: a damaged count there would have it list
 * 2^31 pages to free, until memory runs out. */
static int los_drop_tree_ok(const struct los_map *m, uint64_t root, unsigned depth, int leaves) {
    uint64_t leaf;
    if (root == LOS_NO_PAGE) {
        return 1;
    }
    if (depth == 0 || depth > LOS_MAX_DEPTH || !los_path_ok(m, root, "", 0, 0, &leaf, NULL)) {
        return 0;
    }
    uint64_t stack_pg[LOS_MAX_DEPTH];
    size_t stack_i[LOS_MAX_DEPTH];
    int top = 0;
    stack_pg[0] = root;
    stack_i[0] = 0;
    if (depth == 1) {
        return 1; /* the root is the leaf, which los_path_ok checked */
    }
    if (!(los_u16(m->base + (uintptr_t)root * m->psize + 10) & LOS_P_BRANCH)) {
        return 0;
    }
    while (top >= 0) {
        uintptr_t page = m->base + (uintptr_t)stack_pg[top] * m->psize;
        size_t n = (los_u16(page + 12) - LOS_HDR) / 2;
        if (stack_i[top] >= n) {
            top--;
            continue;
        }
        uint64_t child = los_child(page, stack_i[top]++);
        unsigned level = (unsigned)top + 2;
        unsigned want = level < depth ? LOS_P_BRANCH : LOS_P_LEAF;
        if (level < depth || leaves) {
            if (!los_page_ok(m, child, 0) ||
                !(los_u16(m->base + (uintptr_t)child * m->psize + 10) & want)) {
                return 0;
            }
        }
        if (level < depth) {
            top++;
            stack_pg[top] = child;
            stack_i[top] = 0;
        }
    }
    return 1;
}

/* Before mdb_drop empties table `table` (NULL: the main tree) through the
 * transaction of `cursor` (one of its cursors on that table, before any
 * change): what los_writes_ok checks for any write (the free-page tree, the
 * table's record), and the pages mdb_drop reads (los_drop_tree_ok), by the
 * depth and the count of overflow pages in the table's record. */
static int los_drop_ok(MDB_cursor *cursor, struct los_map *map, const char *table, size_t tlen,
                       struct los_fault *fault) {
    int rc = los_writes_ok(cursor, map, table, tlen, NULL, NULL, 0, fault);
    if (rc != 0 || map->base == 0) {
        return rc;
    }
    uintptr_t db = los_meta(map) + 88;
    if (table != NULL) {
        uint64_t root, free_root;
        uintptr_t node;
        los_roots(map, &root, &free_root);
        if (los_search(map, root, table, tlen, &node) != 0) {
            return 0; /* no record (los_writes_ok checked the way): LMDB says so */
        }
        size_t dsize = (size_t)los_u16(node) | (size_t)los_u16(node + 2) << 16;
        if (!(los_u16(node + 4) & LOS_F_SUBDATA) || dsize != LOS_DB_SIZE) {
            return 0; /* not a table: LMDB refuses it */
        }
        db = node + LOS_NODE + los_u16(node + 6);
    }
    if (!los_drop_tree_ok(map, los_u64(db + 40), los_u16(db + 6), los_u64(db + 24) != 0)) {
        return los_not_whole(fault);
    }
    return 0;
}

int los_check_drop(MDB_cursor *cursor, struct los_map *map, const char *table, size_t tlen,
                   struct los_fault *fault) {
    LOS_GUARDED(los_drop_ok(cursor, map, table, tlen, fault), {})
}

/* Check the pages of the main tree on the way to `key` (a table's name,
 * before LMDB looks its record up to open it). 0 if they are whole, or if
 * the map is not found yet. */
static int los_key_ok(struct los_map *map, const char *key, size_t klen, struct los_fault *fault) {
    if (map->base != 0) {
        uint64_t root, free_root, leaf;
        los_roots(map, &root, &free_root);
        if (root != LOS_NO_PAGE && !los_path_ok(map, root, key, klen, 0, &leaf, NULL)) {
            fault->sig = -2;
            fault->addr = NULL;
            return LOS_FAULT;
        }
    }
    return 0;
}

int los_check_key(struct los_map *map, const char *key, size_t klen, struct los_fault *fault) {
    LOS_GUARDED(los_key_ok(map, key, klen, fault), {})
}
