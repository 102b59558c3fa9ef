/*
 * st_err.h - the one error vocabulary of statetune.
 *
 * Every function that can fail returns an int: ST_OK (0) or one of the negative
 * codes below. The readable detail (what failed, file:line for library calls,
 * the offending key or line number) goes into a caller-supplied buffer of
 * ST_ERR_LEN bytes, as Redis's anet does: deep code never prints, and only the
 * boundary (a CLI main, the coordinator's reply, a worker's job report) turns
 * the detail into the one sentence a user sees.
 */
#ifndef ST_ERR_H
#define ST_ERR_H

#include <stddef.h>

#define ST_ERR_LEN 512

enum st_err {
    ST_OK = 0,
    ST_EIO = -1,          /* a file or device could not be read or written */
    ST_EFORMAT = -2,      /* input is malformed, truncated or hostile */
    ST_ENOMEM = -3,       /* an allocation failed or a plan does not fit */
    ST_EINVAL = -4,       /* a value is out of range or of the wrong type */
    ST_EUNSUPPORTED = -5, /* well-formed but outside what we implement */
    ST_ENOTFOUND = -6,    /* a named thing does not exist */
    ST_ECUDA = -7,        /* CUDA, cuBLAS or NCCL reported an error */
    ST_EMPI = -8,         /* MPI reported an error or a rank was lost */
    ST_ESQL = -9,         /* SQLite reported an error */
    ST_ENET = -10,        /* ZeroMQ or the peer failed */
    ST_ECANCELLED = -11,  /* the operation was cancelled on request */
    ST_ENUMERIC = -12,    /* NaN or inf appeared where a number was needed */
    ST_EBUSY = -13,       /* the resource is held by someone else */
};

/* Writes the formatted detail into err (which may be NULL) and returns code,
 * so call sites read `return st_fail(err, ST_EIO, "open '%s': %s", ...)`. */
int st_fail(char *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes the detail already in err with more context ("loading 'x.pth': ").
 * Returns code unchanged. */
int st_wrap(char *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A short name for a code ("format error"); never NULL. */
const char *st_strerror(int code);

#endif
