"""Pool the recall suite's cells into the numbers issue 25 asks about, from one or more recall.json files.

For each (mode, policy): late-entrant recall after 30 s or more (absences 30, 60, 120 s pooled), late recall after
15 s and after 60 s, and first-window (from_start) recall past the window (15 s or more), each as hits / scored
with a 95% Wilson interval. Usage:
    python scripts/recall_summary.py docs/toyworld/ablation_teacher/recall.json [more.json ...] > table.md
"""

from __future__ import annotations

import json
import sys

from headforcing.toyworld.recall import wilson


def pooled(recall: dict, gaps: list[str], kind: str) -> str:
    hits = scored = 0
    for gap in gaps:
        cell = recall.get(gap, {}).get(kind)
        if cell and cell["scored"]:
            hits += round(cell["value"] * cell["scored"])
            scored += cell["scored"]
    if not scored:
        return "– (0)"
    low, high = wilson(hits, scored)
    return f"{hits / scored:.2f} [{low:.2f}, {high:.2f}] ({scored})"


def main(paths: list[str]) -> None:
    print("| mode | policy | late, 30 s and more | late, 15 s | late, 60 s | from start, 15 s and more |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        for row in json.load(open(path))["results"]:
            r = row["recall"]
            print(f"| {row['mode']} | {row['policy']} | {pooled(r, ['30', '60', '120'], 'late')} | {pooled(r, ['15'], 'late')} | "
                  f"{pooled(r, ['60'], 'late')} | {pooled(r, ['15', '30', '60', '120'], 'from_start')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
