"""Instructions per steady poll, old code against new: `bridge run` of each under callgrind.

    python benchmarks/callgrind_steady.py                  # old = 473282f, 1000 sources every 15 s
    python benchmarks/callgrind_steady.py --old REV --sources 1000 --every 15

CPU seconds on this shared machine move 20-40 % between minutes; instruction counts do not.
Both codes' daemons run at once under `valgrind --tool=callgrind --instr-atstart=no` (about
fifty times slower, so the load is kept small), each over its own copy of nginx's documents
(every answer a 304), as compare.py's pass 3s does. After --settle seconds (start-up and a first
round of polls), counting is switched on in both with `callgrind_control -i on` for two whole
intervals, then off; nginx's logs count each code's polls in that window. It prints the
instructions per poll of each code, by shared object, and the functions whose count moved most.
Run it with the Python that has the new code installed (as compare.py). Needs valgrind.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import WORK, log  # noqa: E402
from side_by_side import arguments, commands, daemons, poll_marks, polls_since  # noqa: E402

_LINE = re.compile(r"^\s*([0-9,]+) \([^)]*\)\s+(.*)$")


def counts(out: Path) -> collections.Counter[str]:
    """function [object] -> instructions, from a callgrind output file."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", str(out)], capture_output=True, text=True
    ).stdout
    found: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and "PROGRAM TOTALS" not in m.group(2):
            # The two venvs' copies of one library are the same object for the comparison.
            name = re.sub(r"/[^ \[\]]*?/site-packages/", "site-packages/", m.group(2))
            found[re.sub(r"/tmp/python-build[^ ]*?/Python-[0-9.]+/", "", name)] += int(
                m.group(1).replace(",", "")
            )
    return found


def by_object(found: collections.Counter[str]) -> collections.Counter[str]:
    objects: collections.Counter[str] = collections.Counter()
    for name, n in found.items():
        objects[name.rsplit("[", 1)[-1].rstrip("]") if "[" in name else "?"] += n
    return objects


def main() -> None:
    args = arguments(__doc__, settle=70.0, top=20)

    cmds = commands(args.old)
    outs = {code: WORK / f"callgrind-{code}.out" for code in cmds}
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    with daemons(
        cmds,
        sources=args.sources,
        every=args.every,
        tag="cg",
        wrap=lambda code: [*valgrind, f"--callgrind-out-file={outs[code]}"],
        wait=120,  # callgrind writes its file at exit
    ) as procs:
        log(f"both daemons under callgrind; counting starts in {args.settle:g} s")
        time.sleep(args.settle)
        marks = poll_marks()
        for proc in procs.values():
            subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True)
        time.sleep(2 * args.every)
        for proc in procs.values():
            subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True)
        polls = polls_since(marks)

    found = {code: counts(outs[code]) for code in cmds}
    per = {code: {k: v / max(polls[code], 1) for k, v in found[code].items()} for code in cmds}
    old_total, new_total = (sum(per[c].values()) for c in ("old", "new"))
    print(f"polls counted: old {polls['old']}, new {polls['new']} (two intervals each)")
    print(f"instructions per poll: old {old_total:,.0f}, new {new_total:,.0f}, "
          f"new / old {new_total / old_total:.3f}\n")  # fmt: skip
    objects = {c: by_object(collections.Counter(per[c])) for c in cmds}
    print("| object | old Ir/poll | new Ir/poll | new - old |\n|---|---:|---:|---:|")
    names = set(objects["old"]) | set(objects["new"])
    for name in sorted(names, key=lambda n: -abs(objects["new"][n] - objects["old"][n]))[:10]:
        o, n = objects["old"][name], objects["new"][name]
        print(f"| {name} | {o:,.0f} | {n:,.0f} | {n - o:+,.0f} |")
    print("\n| function | old Ir/poll | new Ir/poll | new - old |\n|---|---:|---:|---:|")
    keys = set(per["old"]) | set(per["new"])
    moved = sorted(keys, key=lambda k: -abs(per["new"].get(k, 0) - per["old"].get(k, 0)))
    for key in moved[: args.top]:
        o, n = per["old"].get(key, 0.0), per["new"].get(key, 0.0)
        print(f"| {key[:110]} | {o:,.0f} | {n:,.0f} | {n - o:+,.0f} |")


if __name__ == "__main__":
    main()
