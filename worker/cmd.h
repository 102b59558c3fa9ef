/*
 * cmd.h - the subcommands of statetune-worker, one file each (git's builtin/
 * pattern). main.c finds them through its table; each returns the process exit
 * status (0 success, 1 failure, 2 usage error) and prints its own errors as one
 * sentence on stderr.
 */
#ifndef ST_WORKER_CMD_H
#define ST_WORKER_CMD_H

#include "engine/engine.h"
#include "worker/dist.h"

int cmd_verify(int argc, char **argv); /* verify MODEL REF.safetensors ...   (cmd_verify.c) */
int cmd_tune(int argc, char **argv);   /* tune JOB.json --local --out DIR     (cmd_tune.c)   */
int cmd_bench(int argc, char **argv);  /* bench --layers L --embd C ...       (cmd_bench.c)  */
int cmd_serve(int argc, char **argv);  /* --coordinator ENDPOINT: group mode  (cmd_serve.c)  */
int cmd_teacher(int argc, char **argv);/* teacher JOB.json --out FILE         (cmd_teacher.c)*/

/* ---- shared by the commands (cmd_common.c) ---- */

/* For -h or --help: prints usage on stdout and returns 1 (the command then
 * exits 0); 0 for any other argument. */
int cmd_help(const char *arg, const char *usage);

/* 1 when backend is "cpu" or "cuda"; else prints "<who>: --backend must be
 * cpu or cuda, got '<backend>'" and returns 0 (a usage error). */
int cmd_backend_ok(const char *who, const char *backend);

/* --backend cpu|cuda and --precision fp32|bf16 of bench and verify: 0 with
 * *out set, or -1 after printing "<who>: --backend must be cpu or cuda, not
 * '<v>'" (likewise --precision). */
int cmd_engine_backend(const char *who, const char *v, engine_backend_t *out);
int cmd_engine_precision(const char *who, const char *v, engine_precision_t *out);

/* dist_new for this process (under mpirun: its rank of the group); on
 * failure prints "statetune-worker: <err>" and returns NULL. */
dist_t *cmd_dist_new(char *err);

#endif
