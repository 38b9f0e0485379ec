"""Text for people: the ``gpunet-prep info`` listing and the one-line summary."""
from __future__ import annotations


def _fmt_stats(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def format_info(info: dict) -> str:
    """Multi-line summary of :func:`data_prep.info` output."""
    c, h, w = info["image_shape"]
    lines = [
        f"{info['path']}: {info['dataset']} (format {info['format_version']}), "
        f"images {c}x{h}x{w} uint8",
        f"  source  {info['source']}",
        f"  sha256  {info['source_sha256']}",
    ]
    if info.get("source_md5"):
        lines.append(f"  md5     {info['source_md5']}")
    lines += [
        f"  created {info['created']}",
        f"  command {info['command']}",
        f"  train mean per channel [{_fmt_stats(info['mean'])}], "
        f"std [{_fmt_stats(info['std'])}] (pixel units 0..255)",
    ]
    names = info["class_names"]
    width = max(len(n) for n in names) + len(str(len(names) - 1)) + 1
    splits = info["splits"]
    lines.append("  " + " " * width + "".join(f"{s:>9}" for s in splits))
    for i, name in enumerate(names):
        label = f"{i} {name}"
        lines.append(f"  {label:<{width}}" +
                     "".join(f"{splits[s]['class_counts'][name]:>9}" for s in splits))
    lines.append("  " + "total".ljust(width) + "".join(f"{splits[s]['count']:>9}" for s in splits))
    for s, d in splits.items():
        usage = f", usage {d['usage']}" if d["usage"] else ""
        lines.append(f"  /{s}/x {d['x_dtype']} {d['x_shape']}, /{s}/y {d['y_dtype']} "
                     f"{d['y_shape']}, chunks {d['chunks']}"
                     f"{', ' + d['compression'] if d['compression'] else ''}{usage}")
    lines += [f"  note: {n}" for n in info.get("notes", [])]
    return "\n".join(lines)


def summary_line(info: dict, seconds: float) -> str:
    """``wrote OUT: train 49000, val 1000, test 10000 (3x32x32 uint8) from SRC in 3.1 s``."""
    counts = ", ".join(f"{s} {d['count']}" for s, d in info["splits"].items())
    shape = "x".join(str(v) for v in info["image_shape"])
    return (f"wrote {info['path']}: {counts} ({shape} uint8, {len(info['class_names'])} "
            f"classes) from {info['source']} in {seconds:.1f} s")
