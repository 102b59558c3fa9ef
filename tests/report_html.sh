#!/usr/bin/env bash
# report_html.sh - `statetune report JOB -o FILE.html` end to end (issue #9):
# a coordinator (--insecure, ipc:// endpoint in a fresh folder), one 2-rank
# CPU worker group under mpirun and a short job on the tiny fixture model;
# then the report over the endpoint and with --db.
#
#   report_html.sh content   the page's SVG charts hold one polyline point per
#                            step (train loss), per recorded progress event (lr,
#                            tokens/s) and eval event, one bar per layer,
#                            the metrics table matches the registry, text is
#                            escaped, and an unknown job is one sentence, exit 1
#   report_html.sh render    headless Chromium draws the page: the screenshot
#                            is not blank and the laid-out DOM has the charts
#                            (Debian's chromium is installed if missing)
#
# Exit 77 (skipped) without the fixture, mpirun or /usr/bin/python3.
set -u

mode=${1:-content}
. "$(dirname "$0")/lib/common.sh"
st_paths
MODEL=${REPORT_MODEL:-$FIX/rwkv7/tiny.pth}   # REPORT_MODEL / REPORT_STEPS: a bigger look by hand
STEPS=${REPORT_STEPS:-12}
st_need_fixture "$MODEL"
st_need_cmd mpirun
st_need_py

st_service_dir report
FAIL_WHAT="report $mode"
FAIL_TAIL=25
[ -n "${KEEP:-}" ] && echo "folder: $T"

# ---- chromium first (render), so a missing browser skips before any work ----
if [ "$mode" = render ]; then
    CHROME=$(command -v chromium || command -v chromium-browser || true)
    if [ -z "$CHROME" ]; then
        echo "installing chromium (apt-get)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$T/apt.log" 2>&1
        CHROME=$(command -v chromium || true)
        [ -n "$CHROME" ] || { echo "skipped: chromium is not installed and could not be installed"; exit 77; }
    fi
fi

# ---- data and a short job with evals ------------------------------------------
st_tabs_data 3 40 8
# a name that needs escaping cannot be a state name ([A-Za-z0-9._-]), but the
# data path can: it lands in the lineage table
mkdir -p "$T/d<x>&\"q"
cp "$T/train.jsonl" "$T/d<x>&\"q/train.jsonl"
cat >"$T/job.json" <<JEOF
{"name": "tabs", "model": "$MODEL", "train": "d<x>&\\"q/train.jsonl", "eval": "eval.jsonl",
 "ctx_len": 32, "micro_batch": 2, "global_batch": 4, "steps": $STEPS, "eval_every": $(( (STEPS + 2) / 3 )),
 "checkpoint_every": 0, "warmup_steps": 2, "seed": 7}
JEOF

st_coordinator_up --db "$T/registry.db" --insecure

J=$("$ST" submit "$T/job.json") || fail "submit failed"
# a report while the job has not run: no state yet, said on the page
"$ST" report "$J" -o "$T/early.html" >/dev/null || fail "report of a queued job failed"
grep -q 'id="no-state"' "$T/early.html" || fail "a job without a state does not say so"

st_start_group group.log 2 --coordinator-timeout 30
"$ST" wait "$J" --timeout 120 >/dev/null || fail "the job did not succeed"

"$ST" events "$J" --json >"$T/events.json" || fail "events failed"
"$ST" states show tabs@1 --json >"$T/state.json" || fail "states show failed"
"$ST" report "$J" -o "$T/remote.html" >/dev/null || fail "report over the endpoint failed"
"$ST" --db "$T/registry.db" report "$J" -o "$T/local.html" >/dev/null || fail "report with --db failed"

# ---- unknown job: one sentence, exit 1 ------------------------------------------
"$ST" report 999 -o "$T/x.html" 2>"$T/err.txt" >/dev/null
rc=$?
[ $rc = 1 ] || fail "report of an unknown job exited $rc, not 1"
[ "$(wc -l <"$T/err.txt")" = 1 ] && grep -q 999 "$T/err.txt" || fail "unknown job error: $(cat "$T/err.txt")"
[ -e "$T/x.html" ] && fail "a failed report left a file"
"$ST" --db "$T/registry.db" report 999 -o "$T/x.html" 2>"$T/err.txt" >/dev/null
rc=$?
[ $rc = 1 ] || fail "--db report of an unknown job exited $rc, not 1"
grep -q 999 "$T/err.txt" || fail "--db unknown job error: $(cat "$T/err.txt")"

if [ "$mode" = content ]; then
    for page in remote local; do
        "$PY" - "$T/$page.html" "$T/events.json" "$T/state.json" "$MODEL" <<'PYEOF' || fail "$page.html: content check failed"
import json, re, sys, hashlib
from xml.etree import ElementTree as ET
html = open(sys.argv[1], encoding="utf-8").read()
events = json.load(open(sys.argv[2]))
state = json.load(open(sys.argv[3]))
data = lambda e: e["data"] if isinstance(e["data"], dict) else json.loads(e["data"])
prog = [data(e) for e in events if e["kind"] == "progress"]
evals = [data(e) for e in events if e["kind"] == "eval"]
assert len(prog) >= 1 and len(evals) >= 2, (len(prog), len(evals))
n_prog = len(prog)
# self-contained: no scripts, no external resources
assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html), "external resources or scripts"
# each chart is well-formed SVG; find them by id
figs = {m.group(1): m.group(2) for m in re.finditer(r'<figure class="chart" id="([^"]+)">(.*?)</figure>', html, re.S)}
for fid in ("train-loss", "eval-loss", "lr", "tokens-per-s", "state-norms"):
    assert fid in figs, f"chart {fid} missing"
    ET.fromstring(figs[fid])  # parses as XML
def points(fid):
    svg = ET.fromstring(figs[fid])
    pl = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(pl) == 1, (fid, len(pl))
    pts = pl[0].get("points").split()
    assert int(pl[0].get("data-points")) == len(pts)
    xy = [tuple(map(float, p.split(","))) for p in pts]
    assert all(0 <= x <= 560 and 0 <= y <= 300 for x, y in xy), (fid, xy)
    return xy
# the train loss has every step (the result's metrics), the rest the events on record
res = [data(e) for e in events if e["kind"] == "result"]
assert len(res) == 1, len(res)
steps = res[0]["metrics"]["steps"]
assert len(res[0]["metrics"]["train_loss"]) == steps
prog = [{"step": i + 1, "loss": l} for i, l in enumerate(res[0]["metrics"]["train_loss"])]
for fid, n in (("train-loss", steps), ("lr", n_prog), ("tokens-per-s", n_prog), ("eval-loss", len(evals))):
    xy = points(fid)
    assert len(xy) == n, f"{fid}: {len(xy)} points, {n} events"
    assert all(a[0] < b[0] for a, b in zip(xy, xy[1:])), f"{fid}: steps not increasing left to right"
# the loss curve goes the way the numbers go: higher loss, higher on screen (smaller y)
xy = points("train-loss")
ls = [p["loss"] for p in prog]
i, j = ls.index(max(ls)), ls.index(min(ls))
assert i == j or xy[i][1] < xy[j][1], "train loss drawn upside down"
# eval chart has the untuned baseline line
svg = ET.fromstring(figs["eval-loss"])
assert any(l.get("class") == "baseline" for l in svg.iter("{http://www.w3.org/2000/svg}line")), "no baseline line"
# one bar per layer
bars = [r for r in ET.fromstring(figs["state-norms"]).iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "bar"]
layers = state["shape"][0]
assert len(bars) == layers, (len(bars), layers)
assert all(float(b.get("height")) > 0 for b in bars), "a layer's norm bar is empty"
# metrics table: tuned and baseline as the registry has them
tab = re.search(r'<table class="metrics" id="metrics">(.*?)</table>', html, re.S).group(1)
rows = {m.group(1): m.group(2) for m in re.finditer(r"<tr><td>([a-z_]+)</td>(.*?)</tr>", tab)}
for name in ("eval_loss", "perplexity", "accuracy", "exact_match"):
    assert name in rows, f"metrics row {name} missing"
for m in state["metrics"]:
    if m["name"] in ("eval_loss", "perplexity", "accuracy") and m["value"] is not None:
        cells = re.findall(r'<td class="num">([^<]*)</td>', rows[m["name"]])
        assert abs(float(cells[1]) - m["value"]) < 1e-3, (m, cells)
        assert m["baseline"] is None or abs(float(cells[0]) - m["baseline"]) < 1e-3, (m, cells)
# lineage: model sha256, and the data path escaped (never raw)
assert hashlib.sha256(open(sys.argv[4], "rb").read()).hexdigest() in html, "model sha256 missing"
assert 'd&lt;x&gt;&amp;&quot;q/train.jsonl' in html, "data path missing or not escaped"
assert 'd<x>' not in html, "raw unescaped path in the page"
print(f"{sys.argv[1]}: {steps} train loss points, {n_prog} progress points, {len(evals)} eval points, {layers} layers: ok")
PYEOF
    done
    exit 0
fi

# ---- render: headless Chromium -------------------------------------------------
SHOT=${REPORT_SCREENSHOT:-$T/shot.png}
PROFILE=$(mktemp -d "$T/chrome-XXXXXX")
CFLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
        --disable-component-update --disable-sync --user-data-dir="$PROFILE")
timeout 90 "$CHROME" "${CFLAGS[@]}" --screenshot="$SHOT" --window-size=1200,1600 "file://$T/local.html" \
    >"$T/chrome.log" 2>&1
[ -s "$SHOT" ] || fail "chromium wrote no screenshot"
timeout 90 "$CHROME" "${CFLAGS[@]}" --dump-dom "file://$T/local.html" >"$T/dom.html" 2>>"$T/chrome.log"
"$PY" - "$SHOT" "$T/dom.html" <<'PYEOF' || fail "the rendered page is wrong"
import struct, sys, zlib
png = open(sys.argv[1], "rb").read()
assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, w = 8, b"", 0
while pos < len(png):
    n, typ = struct.unpack(">I4s", png[pos:pos + 8])
    body = png[pos + 8:pos + 8 + n]
    if typ == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        assert depth == 8 and ctype in (2, 6), (depth, ctype)
        bpp = 3 if ctype == 2 else 4
    elif typ == b"IDAT":
        idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
colored = dark = 0
for y in range(h):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    for x in range(0, stride, bpp):
        r, g, bl = line[x], line[x + 1], line[x + 2]
        if r < 100 and g < 100 and bl < 100: dark += 1
        # the series blue (#1f6fb2) and bar green (#4a9a5b): the charts drew
        if (bl > r + 60) or (g > r + 40 and g > bl + 40): colored += 1
total = w * h
print(f"screenshot {w}x{h}: {dark} dark pixels (text), {colored} chart-coloured pixels")
assert dark > total * 0.002, "the page looks blank (no text)"
assert colored > 2000, "no chart lines or bars were drawn"
dom = open(sys.argv[2], encoding="utf-8").read()
for fid in ("train-loss", "eval-loss", "lr", "tokens-per-s", "state-norms"):
    assert f'id="{fid}"' in dom, f"chart {fid} not in the laid-out DOM"
assert dom.count("<polyline") == 4, dom.count("<polyline")
PYEOF
echo "rendered: $SHOT"
