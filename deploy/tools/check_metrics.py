#!/usr/bin/env python3
"""Metric names: what the dashboard and the alert rules use vs. what DES exports.

  check_metrics.py exported OUT FILE...
      Reads Prometheus text-format files (a /metrics scrape, batch tools'
      textfiles) and writes the metric names they define to OUT, one a line,
      sorted. `# TYPE` lines count too (a family with no series yet is still
      exported); histograms and summaries add their _bucket/_sum/_count series.

  check_metrics.py referenced FILE...
      Prints the metric names used by Grafana dashboards (*.json: every
      target's expr and templating query) and Prometheus rule files (*.yml:
      every rule's expr).

  check_metrics.py check EXPORTED FILE...
      Fails (exit 1) naming every metric referenced by FILEs that is not in
      EXPORTED (written by `exported`), apart from Prometheus' own (up, ...).
"""

import json
import re
import sys

import yaml

# Series Prometheus itself (or node-exporter's textfile collector) provides.
BUILTIN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
           "node_textfile_mtime_seconds", "node_textfile_scrape_error", "push_time_seconds"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan", "Inf", "NaN", "start", "end"}

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def promql_metric_names(expr):
    """Metric names in a PromQL expression (no full parser: strips what is not one)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range / subquery selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    names = set()
    for m in re.finditer(rf"(?<![\w.$]){NAME}", s):
        word = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):  # a function or aggregation
            continue
        if word in KEYWORDS:
            continue
        names.add(word)
    return names


def grafana_exprs(dashboard):
    def walk(panels):
        for p in panels or []:
            for t in p.get("targets", []) or []:
                if t.get("expr"):
                    yield t["expr"]
            yield from walk(p.get("panels"))

    yield from walk(dashboard.get("panels"))
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and isinstance(q, str):
            m = re.match(rf"\s*label_values\(\s*(.*?)\s*,\s*{NAME}\s*\)\s*$", q)
            yield m.group(1) if m else q


def rule_exprs(rules):
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            yield rule["expr"]


def referenced(paths):
    found = {}
    for path in paths:
        with open(path) as f:
            if path.endswith(".json"):
                exprs = grafana_exprs(json.load(f))
            else:
                exprs = rule_exprs(yaml.safe_load(f))
            for expr in exprs:
                for name in promql_metric_names(str(expr)):
                    found.setdefault(name, set()).add(path)
    return found


def exported(paths):
    names = set()
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                if line.startswith("#"):
                    m = re.match(rf"#\s*TYPE\s+({NAME})\s+(\w+)", line)
                    if not m:
                        continue
                    name, kind = m.groups()
                    names.add(name)
                    if kind == "histogram":
                        names.update(name + s for s in ("_bucket", "_sum", "_count"))
                    elif kind == "summary":
                        names.update(name + s for s in ("_sum", "_count"))
                    elif kind == "counter" and not name.endswith("_total"):
                        names.add(name + "_total")  # OpenMetrics: TYPE names the family
                    continue
                m = re.match(NAME, line)
                if m:
                    names.add(m.group(0))
    return names


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[1]
    if cmd == "exported":
        out, files = argv[2], argv[3:]
        names = sorted(exported(files))
        with open(out, "w") as f:
            f.write("".join(n + "\n" for n in names))
        print(f"metrics: {len(names)} names exported by the binaries -> {out}")
        return 0
    if cmd == "referenced":
        for name, paths in sorted(referenced(argv[2:]).items()):
            print(f"{name}\t{','.join(sorted(paths))}")
        return 0
    if cmd == "check":
        with open(argv[2]) as f:
            known = {line.strip() for line in f if line.strip()} | BUILTIN
        used = referenced(argv[3:])
        unknown = {n: p for n, p in used.items() if n not in known}
        for name, paths in sorted(unknown.items()):
            print(f"metrics: {name} (used in {', '.join(sorted(paths))}) is not exported by any DES binary",
                  file=sys.stderr)
        if unknown:
            print(f"metrics: {len(unknown)} of {len(used)} referenced names unknown", file=sys.stderr)
            return 1
        print(f"metrics: all {len(used)} names used by the dashboard and the alerts are exported")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
