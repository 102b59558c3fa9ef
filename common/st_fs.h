/*
 * st_fs.h - files that are never seen half-written.
 *
 * Checkpoints, exported states and the tuned state of a job are written to a
 * temporary file beside the target, flushed, fsynced and renamed over it, and
 * the directory is fsynced so that the rename survives a power cut (Redis's
 * rdbSave pattern). A reader therefore sees the old file or the new one, never
 * a torn one. Destroying an uncommitted file removes the temporary.
 */
#ifndef ST_FS_H
#define ST_FS_H

#include <stdint.h>
#include <stdio.h>

typedef struct st_atomic_file st_atomic_file_t;

/* Opens PATH.tmp.<pid> for writing. Returns NULL and fills err on failure. */
st_atomic_file_t *st_atomic_file_new(const char *path, char *err);

/* The stream to write to; owned by the atomic file. */
FILE *st_atomic_file_stream(st_atomic_file_t *self);

/* Flushes, fsyncs, renames over the target and fsyncs the directory. The
 * handle is destroyed either way; on failure the target is left untouched. */
int st_atomic_file_commit(st_atomic_file_t **self_p, char *err);

/* Abandons the write: closes and unlinks the temporary. Accepts NULL. */
void st_atomic_file_destroy(st_atomic_file_t **self_p);

/* Writes len bytes atomically to path (the common case in one call). */
int st_write_file_atomic(const char *path, const void *data, size_t len, char *err);

/* Reads a whole file into a malloc'd buffer (NUL-terminated for convenience).
 * Refuses files larger than max_bytes with a clear error. */
int st_read_file(const char *path, size_t max_bytes, char **data_out, size_t *len_out, char *err);

/* Opens a regular file for reading and returns its descriptor, or a negative
 * st_err code with the sentence in err. O_NONBLOCK makes the open of a FIFO
 * return at once instead of waiting for a writer (a FIFO named in a job file
 * once hung the coordinator's only thread); anything but a regular file is
 * then refused. For regular files O_NONBLOCK changes nothing. */
int st_open_regular(const char *path, char *err);

/* mkdir -p; existing directories are fine. */
int st_mkdirs(const char *path, char *err);

/* sha256 of a whole file, streamed (a 15 GB checkpoint is never held in
 * memory), as 64 lowercase hex characters plus NUL. */
int st_sha256_file(const char *path, char hex_out[65], char *err);

/* sha256 of a buffer, as hex. */
void st_sha256_hex(const void *data, size_t len, char hex_out[65]);

/* Joins a path relative to the directory of base_file ("a/job.json", "x.jsonl"
 * -> "a/x.jsonl"); absolute paths are returned unchanged. Caller frees. */
char *st_path_relative_to(const char *base_file, const char *path);

#endif
