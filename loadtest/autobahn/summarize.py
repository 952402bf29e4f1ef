#!/usr/bin/env python3
"""Summarize an Autobahn|Testsuite fuzzingclient report (index.json).

Prints, per agent (server) and per section (the case id's first number), the
counts of each behavior, then every case whose behavior or closing behavior is
not OK (with what Autobahn expected and what it observed), then every case
where the proxy's result differs from the direct run's.

Exit status: 0 when the checked agent (--check, default "wsedge") has no
FAILED or UNIMPLEMENTED case, no FAILED/UNCLEAN closing behavior, and no case
missing compared with the reference agent (--reference, default "direct");
1 otherwise; 2 on a usage or input error.

Usage: summarize.py REPORT_DIR [--check AGENT] [--reference AGENT]
                               [--markdown FILE] [--strict]

With --strict, NON-STRICT cases of the checked agent fail the run too.
"""

import argparse
import collections
import json
import os
import sys

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
# Closing behaviors the HTML report shows red. WRONG CODE and FAILED BY
# CLIENT are shown amber and are listed, but do not fail the run.
BAD_CLOSE = {"FAILED", "UNCLEAN"}


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def section(case_id):
    return int(case_id.split(".")[0])


def short(value, limit=160):
    s = json.dumps(value) if not isinstance(value, str) else value
    return s if len(s) <= limit else s[: limit - 4] + " ..."


def load_case(report_dir, entry):
    path = os.path.join(report_dir, entry.get("reportfile", ""))
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def describe(report_dir, case_id, entry):
    """One or more lines: what happened in a non-OK case."""
    detail = load_case(report_dir, entry)
    lines = [
        "  %-8s behavior=%s close=%s remoteCloseCode=%s"
        % (case_id, entry["behavior"], entry["behaviorClose"], entry["remoteCloseCode"])
    ]
    if detail:
        lines.append("           %s" % short(detail.get("description", ""), 200))
        lines.append("           result: %s" % detail.get("result", ""))
        lines.append("           close:  %s" % detail.get("resultClose", ""))
        exp = detail.get("expected")
        if exp is not None and entry["behavior"] not in ("OK", "INFORMATIONAL"):
            lines.append("           expected: %s" % short(exp))
            lines.append("           received: %s" % short(detail.get("received")))
        ec = detail.get("expectedClose")
        if ec:
            lines.append(
                "           expectedClose: closedByMe=%s closeCode=%s requireClean=%s; "
                "observed: closedByMe=%s wasClean=%s droppedByMe=%s %s"
                % (
                    ec.get("closedByMe"),
                    ec.get("closeCode"),
                    ec.get("requireClean"),
                    detail.get("closedByMe"),
                    detail.get("wasClean"),
                    detail.get("droppedByMe"),
                    detail.get("wasNotCleanReason") or "",
                )
            )
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report_dir")
    ap.add_argument("--check", default="wsedge")
    ap.add_argument("--reference", default="direct")
    ap.add_argument("--markdown", help="also write the per-section table as Markdown here")
    ap.add_argument("--strict", action="store_true",
                    help="also fail on NON-STRICT cases of the checked agent")
    args = ap.parse_args()

    index_path = os.path.join(args.report_dir, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("autobahn: cannot read %s: %s" % (index_path, e), file=sys.stderr)
        return 2

    agents = [a for a in (args.reference, args.check) if a in index]
    agents += sorted(a for a in index if a not in agents)
    all_cases = sorted({c for a in index.values() for c in a}, key=case_key)
    sections = sorted({section(c) for c in all_cases})

    # counts[agent][section][behavior]
    counts = {a: collections.defaultdict(collections.Counter) for a in agents}
    close_bad = {a: collections.Counter() for a in agents}
    for a in agents:
        for cid, e in index[a].items():
            counts[a][section(cid)][e["behavior"]] += 1
            if e["behaviorClose"] not in ("OK", "INFORMATIONAL"):
                close_bad[a][section(cid)] += 1

    dur = {a: collections.Counter() for a in agents}
    for a in agents:
        for cid, e in index[a].items():
            dur[a][section(cid)] += e.get("duration") or 0

    cols = BEHAVIORS + ["close!=OK", "cases", "ms"]
    print()
    for a in agents:
        print("== %s: %d cases" % (a, len(index[a])))
        print("  %-8s" % "section" + "".join("%15s" % c for c in cols))
        # ms: the sum of the cases' durations as Autobahn measured them
        total = collections.Counter()
        for s in sections:
            c = counts[a][s]
            row = [c[b] for b in BEHAVIORS] + [close_bad[a][s], sum(c.values()), dur[a][s]]
            other = sum(c.values()) - sum(c[b] for b in BEHAVIORS)
            print("  %-8s" % s + "".join("%15d" % v for v in row) + ("  (+%d other)" % other if other else ""))
            total.update({k: v for k, v in zip(cols, row)})
        print("  %-8s" % "total" + "".join("%15d" % total[c] for c in cols))
        print()

    for a in agents:
        bad = [c for c in sorted(index[a], key=case_key)
               if index[a][c]["behavior"] != "OK" or index[a][c]["behaviorClose"] != "OK"]
        print("== %s: %d case(s) not OK (behavior or closing behavior)" % (a, len(bad)))
        for cid in bad:
            for line in describe(args.report_dir, cid, index[a][cid]):
                print(line)
        print()

    status = 0
    if args.check not in index:
        print("autobahn: no results for agent %r (did it refuse connections?)" % args.check)
        return 1
    chk = index[args.check]
    if args.reference in index:
        ref = index[args.reference]
        missing = sorted(set(ref) - set(chk), key=case_key)
        if missing:
            print("== %s: %d case(s) missing that %s ran: %s"
                  % (args.check, len(missing), args.reference, " ".join(missing)))
            status = 1
        diff = [c for c in sorted(set(ref) & set(chk), key=case_key)
                if (ref[c]["behavior"], ref[c]["behaviorClose"], ref[c]["remoteCloseCode"])
                != (chk[c]["behavior"], chk[c]["behaviorClose"], chk[c]["remoteCloseCode"])]
        print("== %d case(s) where %s differs from %s (behavior / closing behavior / close code):"
              % (len(diff), args.check, args.reference))
        for c in diff:
            print("  %-8s %s: %s / %s / %s   %s: %s / %s / %s" % (
                c,
                args.reference, ref[c]["behavior"], ref[c]["behaviorClose"], ref[c]["remoteCloseCode"],
                args.check, chk[c]["behavior"], chk[c]["behaviorClose"], chk[c]["remoteCloseCode"]))
        print()

    failing = sorted((c for c, e in chk.items()
                      if e["behavior"] in ("FAILED", "UNIMPLEMENTED")
                      or e["behavior"] not in BEHAVIORS
                      or e["behaviorClose"] in BAD_CLOSE
                      or (args.strict and e["behavior"] == "NON-STRICT")), key=case_key)
    non_strict = sorted((c for c, e in chk.items() if e["behavior"] == "NON-STRICT"), key=case_key)
    if non_strict:
        print("autobahn: %s NON-STRICT (conformant, not strict%s): %s"
              % (args.check, "; --strict: counted as failures" if args.strict else "",
                 " ".join(non_strict)))
    if failing:
        print("autobahn: %s FAILS %d case(s): %s" % (args.check, len(failing), " ".join(failing)))
        status = 1
    else:
        n = collections.Counter(e["behavior"] for e in chk.values())
        print("autobahn: %s passes: %d cases, %d OK, %d NON-STRICT, %d INFORMATIONAL, "
              "0 UNIMPLEMENTED, 0 FAILED"
              % (args.check, len(chk), n["OK"], n["NON-STRICT"], n["INFORMATIONAL"]))

    if args.markdown:
        # One table; each cell is "first agent / second agent" (direct / wsedge).
        with open(args.markdown, "w") as f:
            f.write("Cells: %s.\n\n" % " / ".join(agents))
            hdr = ["Section", "Cases"] + BEHAVIORS + ["Close not OK", "Duration (ms)"]
            f.write("| " + " | ".join(hdr) + " |\n")
            f.write("|---|" + "---:|" * (len(hdr) - 1) + "\n")
            for s in sections + ["total"]:
                secs = sections if s == "total" else [s]

                def cell(fn):
                    return " / ".join(str(sum(fn(a, x) for x in secs)) for a in agents)

                row = ["**total**" if s == "total" else str(s),
                       cell(lambda a, x: sum(counts[a][x].values()))]
                row += [cell(lambda a, x, b=b: counts[a][x][b]) for b in BEHAVIORS]
                row += [cell(lambda a, x: close_bad[a][x]), cell(lambda a, x: dur[a][x])]
                f.write("| " + " | ".join(row) + " |\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
