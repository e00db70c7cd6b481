"""Bytecodes per steady poll, old code against new, by function: `bridge run` of each, traced.

    python benchmarks/opcodes_steady.py                  # old = 473282f, 1000 sources every 15 s
    python benchmarks/opcodes_steady.py --old REV --sources 1000 --every 15

callgrind_steady.py says how many instructions a poll costs and in which library; this says in
which of our Python functions the bytecodes run, so that a gap can be put on a line of code.
Both codes' daemons run at once over their own copies of nginx's documents (every answer a 304),
as in callgrind_steady.py. Each imports a `sitecustomize` (written to benchmarks/work/) that,
on SIGUSR1, traces every opcode the event loop's thread runs (sys.settrace with f_trace_opcodes)
and on SIGUSR2 stops and writes the counts per function. Tracing slows a daemon several times
over, so the load is kept small; counts per poll do not move with the machine's load. Worker
threads (the state's writes off the loop) are not traced. Run it with the Python that has the
new code installed (as compare.py).
"""

from __future__ import annotations

import collections
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import WORK, child_env, fresh, log  # noqa: E402
from side_by_side import arguments, commands, daemons, poll_marks, polls_since  # noqa: E402

# Imported by each daemon at start-up (site imports `sitecustomize` from sys.path).
TRACER = """
import collections, json, os, signal, sys

_ops = collections.Counter()
_calls = collections.Counter()


def _opcode(frame, event, arg):
    if event == "opcode":
        _ops[frame.f_code] += 1
    return _opcode


def _call(frame, event, arg):  # a call, or a coroutine resumed
    frame.f_trace_opcodes = True
    _calls[frame.f_code] += 1
    return _opcode


def _start(*_):
    sys.settrace(_call)


def _stop(*_):
    sys.settrace(None)
    found = {}
    for code in set(_ops) | set(_calls):
        key = f"{code.co_filename}:{code.co_firstlineno}:{code.co_name}"
        ops, calls = found.get(key, (0, 0))
        found[key] = (ops + _ops[code], calls + _calls[code])
    with open(os.environ["BRIDGE_OPCODES_OUT"], "w") as out:
        json.dump(found, out)


if os.environ.get("BRIDGE_OPCODES_OUT"):
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
"""


def short(key: str) -> tuple[str, str]:
    """(where, function) of a tracer key: our modules by their path from the checkout, a
    library's from site-packages, the standard library's by file name."""
    path, _, name = key.split(":", 2)  # file:first line:function
    if "/site-packages/" in path:
        return "site-packages/" + path.split("/site-packages/", 1)[1], name
    for top in ("/bridge/", "/sources/"):  # the old code kept its sources beside bridge/
        if top in path and "/lib/python" not in path:
            return top.strip("/") + "/" + path.split(top, 1)[1], name
    return Path(path).name, name


def ours(where: str) -> bool:
    return where.startswith(("bridge/", "sources/"))


def main() -> None:
    args = arguments(__doc__, settle=20.0, top=25)

    cmds = commands(args.old)
    site = fresh("opcodes-site")
    (site / "sitecustomize.py").write_text(TRACER)
    outs = {code: WORK / f"opcodes-{code}.json" for code in cmds}
    for out in outs.values():
        out.unlink(missing_ok=True)

    def traced(code: str) -> dict[str, str]:
        env = child_env()
        env["PYTHONPATH"] = ":".join(p for p in (str(site), env.get("PYTHONPATH")) if p)
        env["BRIDGE_OPCODES_OUT"] = str(outs[code])
        return env

    with daemons(cmds, sources=args.sources, every=args.every, tag="op", env=traced) as procs:
        log(f"both daemons running; tracing starts in {args.settle:g} s")
        time.sleep(args.settle)
        marks = poll_marks()
        for proc in procs.values():
            proc.send_signal(signal.SIGUSR1)
        time.sleep(2 * args.every)
        for proc in procs.values():
            proc.send_signal(signal.SIGUSR2)
        polls = polls_since(marks)
        deadline = time.monotonic() + 30
        while not all(p.exists() for p in outs.values()) and time.monotonic() < deadline:
            time.sleep(0.2)

    per: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    for code in cmds:
        found: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for key, (ops, calls) in json.loads(outs[code].read_text()).items():
            entry = found[short(key)]
            entry[0] += ops / max(polls[code], 1)
            entry[1] += calls / max(polls[code], 1)
        per[code] = {k: (v[0], v[1]) for k, v in found.items()}
    print(f"polls traced: old {polls['old']}, new {polls['new']} (two intervals each)")
    for label, keep in (("all", lambda w: True), ("ours (bridge/, sources/)", ours)):
        o, n = (sum(v[0] for k, v in per[c].items() if keep(k[0])) for c in ("old", "new"))
        print(f"bytecodes per poll, {label}: old {o:,.0f}, new {n:,.0f}, new - old {n - o:+,.0f}")
    calls = {c: sum(v[1] for v in per[c].values()) for c in cmds}
    print(f"Python calls and resumptions per poll: old {calls['old']:.1f}, new {calls['new']:.1f}")

    # Our functions moved between modules with the layout: compared by name, but for the
    # names many modules have (<listcomp>, __init__), which stay apart by module.
    by_name: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in cmds}
    where: dict[str, dict[str, set[str]]] = {c: collections.defaultdict(set) for c in cmds}
    for code in cmds:
        for (module, name), (ops, _) in per[code].items():
            if ours(module):
                if name.startswith(("<", "__")):
                    name = f"{name} in {module}"
                by_name[code][name] += ops
                where[code][name].add(module)
    print("\n| our function (new modules) | old ops/poll | new ops/poll | new - old |")
    print("|---|---:|---:|---:|")
    names = set(by_name["old"]) | set(by_name["new"])
    for name in sorted(names, key=lambda n: -abs(by_name["new"][n] - by_name["old"][n]))[
        : args.top
    ]:
        o, n = by_name["old"][name], by_name["new"][name]
        modules = ", ".join(sorted(where["new"].get(name) or where["old"][name]))
        print(f"| {name} ({modules}) | {o:.1f} | {n:.1f} | {n - o:+.1f} |")


if __name__ == "__main__":
    main()
