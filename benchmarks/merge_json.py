"""Merge pytest-benchmark JSON files into one (the first file's machine info, every file's benchmarks), so the parts
of a benchmark session that ran in separate pytest calls make one input for `reslab bench-report`.

    python -m benchmarks.merge_json OUT.json PART.json [PART.json ...]    # missing parts are skipped
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def merge(parts: list[dict]) -> dict:
    if not parts:
        return {"benchmarks": []}
    return {**parts[0], "benchmarks": [b for part in parts for b in part.get("benchmarks", [])]}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    out, *paths = argv
    found = [Path(p) for p in paths if Path(p).is_file()]
    for missing in sorted(set(paths) - {str(p) for p in found}):
        print(f"merge_json: {missing} is missing (its part did not finish): left out", file=sys.stderr)
    Path(out).write_text(json.dumps(merge([json.loads(p.read_text()) for p in found])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
