"""``scaling fit``'s outputs: the JSON, the plots next to it, and the lines it prints."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pretrain.scaling import fit as F
from pretrain.scaling import plots


def fit_to_files(points: F.Points, source: dict, out: str | Path, drop_highest: int = 0, **fit_kwargs) -> dict:
    """Fit ``points`` (after dropping the ``drop_highest`` highest-loss ones), write ``out`` (JSON)
    and the four plots beside it; returns the JSON's content (``plots`` lists the PNG paths)."""
    started = time.perf_counter()
    F.check_points(points)
    kept, dropped = F.drop_highest_loss(points, drop_highest)
    result = F.fit(kept, **fit_kwargs)
    result["excluded_points"] = dropped.rows()
    result["source"] = source
    result["N_kind"] = source.get("N_kind")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["plots"] = [str(p) for p in plots.write_all(result, kept, out.parent)]
    result["seconds"] = time.perf_counter() - started
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    return result


def _interval(result: dict, key: str, fmt: str) -> str:
    iv = result.get("intervals", {}).get(key)
    return f"[{format(iv[0], fmt)}, {format(iv[1], fmt)}]" if iv else ""


def summary(result: dict) -> list[str]:
    """Human-readable lines: parameters with intervals, exponents, approach 2, timing."""
    ci = result["approach3"]["bootstrap"]["ci"]
    lines = [f"approach 3 on {len(result['points'])} points ({len(result['excluded_points'])} excluded), "
             f"{result['approach3']['starts']} L-BFGS starts, {result['approach3']['bootstrap']['resamples']} "
             f"bootstrap resamples ({ci:.0%} intervals):"]
    for key, fmt in (("E", ".4f"), ("A", ".4g"), ("B", ".4g"), ("alpha", ".4f"), ("beta", ".4f"), ("a", ".4f"),
                     ("b", ".4f")):
        lines.append(f"  {key:<5} = {format(result[key], fmt):>10}  {_interval(result, key, fmt)}")
    a2 = result["approach2"]
    if "skipped" in a2:
        lines.append(f"approach 2: skipped ({a2['skipped']})")
    else:
        lines.append(f"approach 2 ({len(a2['profiles'])} IsoFLOP profiles): a = {a2['a']:.4f}, b = {a2['b']:.4f}")
    lines.append(f"fit {result['approach3']['seconds']['fit']:.2f} s, bootstrap "
                 f"{result['approach3']['seconds']['bootstrap']:.2f} s, total {result['seconds']:.2f} s")
    return lines
