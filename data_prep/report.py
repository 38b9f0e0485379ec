"""Text for people: the ``gpunet-prep info`` listing and the one-line summary."""

from __future__ import annotations


def _fmt_stats(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def format_info(info: dict) -> str:
    """Multi-line summary of :func:`data_prep.info` output (``strict=False`` output too:
    what could not be read shows as ``?`` and each problem as a ``problem:`` line)."""
    shape = info.get("image_shape")
    shape_text = "x".join(str(v) for v in shape) if shape else "?"
    lines = [
        f"{info['path']}: {info.get('dataset', '?')} (format {info.get('format_version')}), "
        f"images {shape_text} uint8",
        f"  source  {info.get('source', '')}",
        f"  sha256  {info.get('source_sha256', '')}",
    ]
    if info.get("source_md5"):
        lines.append(f"  md5     {info['source_md5']}")
    stats = [f"[{_fmt_stats(info[k])}]" if info.get(k) is not None else "?" for k in ("mean", "std")]
    lines += [
        f"  created {info.get('created', '')}",
        f"  command {info.get('command', '')}",
        f"  train mean per channel {stats[0]}, std {stats[1]} (pixel units 0..255)",
    ]
    names, splits = info.get("class_names") or [], info.get("splits", {})
    width = max([len(n) for n in names] + [5]) + len(str(max(len(names) - 1, 0))) + 1
    lines.append("  " + " " * width + "".join(f"{s:>9}" for s in splits))
    for i, name in enumerate(names):
        label = f"{i} {name}"
        lines.append(
            f"  {label:<{width}}"
            + "".join(f"{splits[s]['class_counts'].get(name, '?')!s:>9}" for s in splits)
        )
    if any(d.get("labels_outside") for d in splits.values()):
        lines.append(
            "  "
            + "outside".ljust(width)
            + "".join(f"{splits[s].get('labels_outside', 0):>9}" for s in splits)
        )
    lines.append("  " + "total".ljust(width) + "".join(f"{splits[s]['count']:>9}" for s in splits))
    for s, d in splits.items():
        usage = f", usage {d['usage']}" if d["usage"] else ""
        chunks = f"chunks {d['chunks']}" if d["chunks"] else "not chunked"
        lines.append(
            f"  /{s}/x {d['x_dtype']} {d['x_shape']}, /{s}/y {d['y_dtype']} "
            f"{d['y_shape']}, {chunks}"
            f"{', ' + d['compression'] if d['compression'] else ''}{usage}"
        )
    lines += [f"  note: {n}" for n in info.get("notes", [])]
    lines += [f"  problem: {p}" for p in info.get("problems", [])]
    return "\n".join(lines)


def summary_line(info: dict, seconds: float) -> str:
    """``wrote OUT: train 49000, val 1000, test 10000 (3x32x32 uint8) from SRC in 3.1 s``."""
    counts = ", ".join(f"{s} {d['count']}" for s, d in info["splits"].items())
    shape = "x".join(str(v) for v in info["image_shape"])
    return (
        f"wrote {info['path']}: {counts} ({shape} uint8, {len(info['class_names'])} "
        f"classes) from {info['source']} in {seconds:.1f} s"
    )
