"""gpunet-predict: classify a folder of images with a trained model.

    gpunet-predict MODEL.npz IMAGES_DIR [-o PREDICTIONS.csv] [--batch-size N] [--decimals D]
    gpunet-predict MODEL.npz PHOTOS_DIR --faces [--annotate DIR] [-o FACES.csv]

Writes a CSV with header ``file,label,class_name,p_<class>...``: one row per image
(lexicographic file-name order) with the predicted label, its class name and the
softmax probability of every class. Without ``-o`` the CSV goes to standard output;
with ``-o`` it is written atomically. Files without an image extension are skipped;
an image that cannot be decoded is an error naming it. Images are converted to the
model's colour mode and resized to its image shape.

With ``--faces`` the images are ordinary photos: the faces in each are found
(``gpunet.detect_emotions``, extra ``gpunet[faces]``) and the CSV has one row per
face, ``file,face,x,y,w,h,label,class_name,p_angry...,p_neutral`` (face 0 is the
largest; a photo without a face has no row). ``--annotate DIR`` (implies
``--faces``) also writes a copy of each photo into DIR with the boxes and the top
emotions drawn. MODEL may be ``default`` for the FER2013 model packaged with gpunet.
"""

from __future__ import annotations

import argparse
import sys

from .common import UserError, add_common_args, run, setup


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunet-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="trained model file (.npz from gpunet-train), or 'default' (packaged FER2013 model)",
    )
    p.add_argument("images", metavar="IMAGES_DIR", help="folder of images (PNG, JPEG, ...)")
    p.add_argument("-o", "--output", metavar="CSV", help="write the CSV here (default: standard output)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per batch (default 256)")
    p.add_argument(
        "--decimals",
        type=int,
        default=6,
        metavar="D",
        help="decimals of the probabilities, 4 to 6 (default 6)",
    )
    p.add_argument(
        "--faces",
        action="store_true",
        help="find the faces in each photo and classify each (one CSV row per face)",
    )
    p.add_argument(
        "--annotate",
        metavar="DIR",
        help="with --faces: write copies of the photos with boxes and labels drawn into DIR",
    )
    add_common_args(p)
    return p


def _faces(args, model) -> int:
    """--faces / --annotate: one CSV row per face; annotated copies into args.annotate."""
    from ..faces import detect_folder, save_annotated, write_faces_csv

    results, n_faces = [], 0
    try:
        for path, faces in detect_folder(args.images, model):
            results.append((path.name, faces))
            n_faces += len(faces)
            if args.annotate:
                save_annotated(path, faces, args.annotate)
    except ImportError as e:  # the [faces] extra is missing: one line, not a traceback
        raise UserError(str(e)) from None
    write_faces_csv(args.output, results, decimals=args.decimals)
    if not args.quiet:
        bare = sum(1 for _, f in results if not f)
        print(
            f"{n_faces} face(s) in {len(results)} photo(s)"
            + (f", {bare} without a face" if bare else "")
            + (f"; annotated copies in {args.annotate}" if args.annotate else ""),
            file=sys.stderr,
        )
    return 0


def _body(args) -> int:
    from ..predict import model_meta, predict_folder, resolve_model, write_predictions_csv

    if args.batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if not 4 <= args.decimals <= 6:
        raise UserError(f"--decimals: expected 4, 5 or 6, got {args.decimals}")
    setup(args)
    if args.model == "default":
        from .. import pretrained

        args.model = pretrained.path()
    if args.faces or args.annotate:
        return _faces(args, args.model)
    model, where = resolve_model(args.model)
    meta = model_meta(model, where)
    names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
    files, labels, probs = predict_folder(args.images, model, batch_size=args.batch_size)
    write_predictions_csv(args.output, files, labels, probs, names, decimals=args.decimals)
    if args.output and not args.quiet:
        print(f"{len(files)} predictions written to {args.output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run(_body, args)


if __name__ == "__main__":
    raise SystemExit(main())
