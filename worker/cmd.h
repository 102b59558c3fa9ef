/*
 * cmd.h - the subcommands of statetune-worker, one file each (git's builtin/
 * pattern). main.c finds them through its table; each returns the process exit
 * status (0 success, 1 failure, 2 usage error) and prints its own errors as one
 * sentence on stderr.
 */
#ifndef ST_WORKER_CMD_H
#define ST_WORKER_CMD_H

int cmd_verify(int argc, char **argv); /* verify MODEL REF.safetensors ...   (cmd_verify.c) */
int cmd_tune(int argc, char **argv);   /* tune JOB.json --local --out DIR     (cmd_tune.c)   */
int cmd_bench(int argc, char **argv);  /* bench --layers L --embd C ...       (cmd_bench.c)  */
int cmd_serve(int argc, char **argv);  /* --coordinator ENDPOINT: group mode  (cmd_serve.c)  */
int cmd_teacher(int argc, char **argv);/* teacher JOB.json --out FILE         (cmd_teacher.c)*/

#endif
