#!/usr/bin/python3
"""make_tabs_data.py - datasets for tuning tests and benchmarks, made from the
Python sources every Debian machine has (/usr/lib/python3.*/*.py).

The 5M fixture model (pysrc-rwkv7-5M) was trained on Python's standard library
as it is written: four-space indents, no licence banners. These tasks shift
that distribution in a way a tuned state can learn and a held-out set can
measure:

  tabs      {"text": ...}: code chunks re-indented with tabs.
  licence   {"text": ...}: a fixed licence header followed by a code chunk.
  header    {"prompt": ..., "completion": ...}: the prompt names the file, the
            completion is the fixed licence header; exact match by greedy
            generation is meaningful here.

Train and eval samples come from disjoint sets of files (sorted file list,
every fifth file is eval), so eval loss measures generalisation, not recall.
Deterministic in --seed.

usage: make_tabs_data.py OUT_DIR [--task tabs|licence|header] [--train N]
                         [--eval N] [--bytes B] [--seed S] [--src DIR]
Writes OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl.
"""
import argparse
import glob
import json
import os
import random
import re
import sys

LICENCE = ("# Copyright (c) 2026 Example Corp. All rights reserved.\n"
           "# SPDX-License-Identifier: Apache-2.0\n")


def find_sources(src):
    if src:
        dirs = [src]
    else:
        dirs = sorted(glob.glob("/usr/lib/python3.*"), reverse=True)
    for d in dirs:
        files = sorted(glob.glob(os.path.join(d, "*.py")))
        if len(files) >= 20:
            return files
    sys.exit("make_tabs_data.py: no Python sources found (looked in /usr/lib/python3.*); pass --src DIR")


def tabify(text):
    out = []
    for line in text.split("\n"):
        m = re.match(r"^( +)", line)
        if m:
            n = len(m.group(1))
            line = "\t" * (n // 4) + " " * (n % 4) + line[n:]
        out.append(line)
    return "\n".join(out)


def chunks(path, nbytes, rng):
    """Chunks of about nbytes that start at a line boundary."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (UnicodeDecodeError, OSError):
        return []
    lines = text.split("\n")
    result = []
    i = 0
    while i < len(lines):
        buf = ""
        j = i
        while j < len(lines) and len(buf) < nbytes:
            buf += lines[j] + "\n"
            j += 1
        if len(buf.strip()) > nbytes // 3:
            result.append(buf[:nbytes * 2])
        i = j + rng.randrange(0, 8)
    return result


def build(files, n, task, nbytes, rng):
    pool = []
    for path in files:
        for c in chunks(path, nbytes, rng):
            pool.append((os.path.basename(path), c))
    rng.shuffle(pool)
    out = []
    for name, c in pool[:n]:
        if task == "tabs":
            out.append({"text": tabify(c)})
        elif task == "licence":
            out.append({"text": LICENCE + c})
        else:
            out.append({"prompt": "# file: %s\n" % name, "completion": LICENCE})
    if len(out) < n:
        sys.exit("make_tabs_data.py: only %d chunks available, %d asked" % (len(out), n))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--task", choices=["tabs", "licence", "header"], default="tabs")
    ap.add_argument("--train", type=int, default=960)
    ap.add_argument("--eval", type=int, default=64)
    ap.add_argument("--bytes", type=int, default=170)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--src")
    a = ap.parse_args()
    files = find_sources(a.src)
    eval_files = files[::5]
    train_files = [f for i, f in enumerate(files) if i % 5]
    rng = random.Random(a.seed)
    train = build(train_files, a.train, a.task, a.bytes, rng)
    evals = build(eval_files, a.eval, a.task, a.bytes, rng)
    os.makedirs(a.out_dir, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evals)):
        with open(os.path.join(a.out_dir, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
