"""Command line: ``python -m bdd_engine <command> --profile P [--set key=value ...]``.

    synth     generate the synthetic BDD100K-format world for a synthetic profile
              (--videos: also each 100K keyframe's drive as a short H.264 video)
    ingest    sample videos to JPEG frames at --fps (and take image folders as they are)
    label     label any folder of images/videos (gsam2 | teacher): BDD, COCO, Label Studio, YOLO, router
    predict   a detector's predictions on a folder of images as BDD JSON (for evaluate)
    train     train the profile's detector on any labelled folder (BDD JSON, COCO or YOLO layout), as §4 does
    label-issues  rank the probable mistakes of a label set against a model that never trained on it
              (--labels BDD_JSON --images DIR --weights PT --out DIR): labels.issues.csv
    run       execute notebook.py headless (jupytext + nbclient), optionally --from N
    status    which sections are fresh, and why the others are not
    evaluate  BDD-official detection eval of any GT/prediction JSON pair, per slice
    app       launch the FiftyOne App on the profile's dataset
    pretrain  build the demo's pretrained init on a disjoint synthetic world (profile pretrain)
    stand-in-weights  build RANDOM weights with the full profile's exact architectures (--out DIR)
    import-labels  a Label Studio JSON export of the review queue -> BDD frames (--label-studio EXPORT.json --out DIR)

Every command but ``ingest``, ``import-labels`` and ``stand-in-weights`` takes ``--profile`` and
``--set key=value`` (repeatable); those three read no profile (their settings are their own
flags) and refuse both with one line. A bad key or value, a busy or read-only outputs folder,
or a folder synth may not touch ends the command with one line saying what to do, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bdd_engine import backends, checkpoint, executor, flywheel, ingest, runner, synth, synthvideo
from bdd_engine.evaluate import main_evaluate
from bdd_engine.explorer import main_app
from bdd_engine.config import ConfigError, load_config, parse_overrides
from bdd_engine.env import setup_env


# Commands that read no profile: their settings are their own flags, so --profile/--set would do nothing.
NO_PROFILE_COMMANDS = ("ingest", "import-labels", "stand-in-weights")
PRETRAINED_NAME = "synthpre-w0125"  # the demo profile's train_init_weights is bdd_engine/models/<this>.pt


def _cfg(args: argparse.Namespace):
    return load_config(args.profile, parse_overrides(args.set or []))


def cmd_synth(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    root = synth.generate(cfg, args.out, force=args.force)
    print(f"synthetic world ready: {root}")
    if args.videos:
        cmd_synth_videos(args, cfg, root)
    return 0


def cmd_synth_videos(args: argparse.Namespace, cfg, root: Path) -> None:
    infos = synthvideo.write_world_videos(root, synth.plan_world(cfg), seconds=args.video_seconds,
                                          fps=args.video_fps, limit=args.video_limit)
    print(f"synthetic videos ready: {len(infos)} under {root / 'videos'} ({args.video_seconds} s at "
          f"{args.video_fps} fps each, keyframe at {args.video_seconds // 2} s)")


def cmd_ingest(args: argparse.Namespace) -> int:
    res = ingest.ingest(args.src, args.out, fps=args.fps, scene_threshold=args.scene_threshold,
                        max_frames_per_video=args.max_frames_per_video, decoder=args.decoder, method=args.method,
                        workers=args.workers,
                        executor=executor.Executor(args.executor, address=args.ray_address, workers=args.workers))
    print(res.summary())
    for r in res.skipped.itertuples(index=False):
        print(f"skipped: {r.source_path}: {r.reason}", file=sys.stderr)
    print(f"frames table: {res.out / 'frames.csv'}" + (f"; skipped: {res.out / 'skipped.csv'}" if len(res.skipped) else ""))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from bdd_engine import anyfolder, autolabel  # loads the labelling stack only on use

    cfg = _cfg(args)
    if args.labeler == "teacher" and args.weights is None and not cfg.label_teacher_weights:
        raise ConfigError("label --labeler teacher needs --weights W (an Ultralytics .pt, e.g. outputs/runs/iter0/weights/best.pt) "
                          "or the profile's label_teacher_weights")
    if args.labeler == "gsam2" and args.weights is not None:
        raise ConfigError("label --labeler gsam2 takes its model folders from the profile: "
                          "--set label_gsam2_gdino_dir=DIR --set label_gsam2_sam_dir=DIR (not --weights)")
    # as §7 builds it; an explicit --weights wins over the profile's label_teacher_weights
    extra = {"teacher_weights": args.weights} if args.weights else {}
    if args.backend:  # --backend wins over the profile's infer_backend
        extra["backend"] = args.backend
    labeler = autolabel.get_labeler(cfg, args.labeler, **extra)
    info = {"weights": str(Path(args.weights).resolve()) if args.weights else None, **labeler.model_info()}
    t = anyfolder.label_folder(args.src, args.out, labeler, accept=float(cfg.label_accept),
                               review=float(cfg.label_review), seed=int(cfg.seed), fps=args.fps, labeler_info=info)
    print(t["ingest"].summary())
    print(t["run"].summary())
    print(f"labels: {Path(args.out) / 'labels.json'} · COCO: coco.json · Label Studio: label_studio_review.json · "
          f"YOLO: yolo/ · router: router.csv · summary.md")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bdd_engine import anyfolder

    cfg = _cfg(args)
    conf = float(cfg.eval_conf if args.conf is None else args.conf)
    path, frames, skipped = anyfolder.predict_folder(args.weights, args.src, args.out, conf=conf, device=cfg.device,
                                                     imgsz=args.imgsz, overwrite=args.force,
                                                     backend=args.backend or cfg.infer_backend,
                                                     precision=cfg.infer_precision)
    for s in skipped:
        print(f"skipped: {s['source_path']}: {s['reason']}", file=sys.stderr)
    print(f"predictions: {path} ({len(frames)} frames, {sum(len(f['labels']) for f in frames)} boxes, "
          f"conf >= {conf:g}, {len(skipped)} images skipped)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train on a labelled folder (bdd_engine.trainfolder): bad input is one line and exit 2."""
    from bdd_engine import trainfolder

    cfg = _cfg(args)
    try:
        card = trainfolder.train_folder(args.data, args.out, flywheel.train_spec(cfg), images=args.images,
                                        val_fraction=args.val_fraction, seed=int(cfg.seed), conf=float(cfg.eval_conf))
    except trainfolder.TrainDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sp, d = card["split"], card["data"]
    print(f"trained on {sp.get('train', 0)} frames ({d['format']}, {d['boxes']} boxes; val {sp.get('val', 0)} frames: "
          f"{sp['rule']}); weights: {card['weights']}")
    print(f"evaluate: python -m bdd_engine evaluate --gt {Path(args.out) / 'val_gt.json'} "
          f"--pred {Path(args.out) / 'val_predictions.json'} · run card: {Path(args.out) / 'run_card.json'}")
    return 0


def cmd_label_issues(args: argparse.Namespace) -> int:
    """Score a label set (bdd_engine.labelissues): bad input is one line and exit 2."""
    from bdd_engine import labelissues, trainfolder

    cfg = _cfg(args)
    try:
        path, table = labelissues.label_issues_folder(args.labels, args.images, args.weights, args.out, conf=args.conf,
                                                      flag=args.flag, device=cfg.device, imgsz=args.imgsz,
                                                      queue=args.queue)
    except (trainfolder.TrainDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lab = table[table["row"] == "label"]
    print(f"label issues: {path} ({int(table['flagged'].sum())} flagged of {len(lab)} boxes + "
          f"{int((table['row'] == 'missed').sum())} possible missed objects; by reason: "
          f"{table[table['flagged']]['reason'].str.split(':').str[0].value_counts().to_dict()})")
    print(f"review queue (Label Studio, {args.queue} most suspicious frames at most): {path.parent / labelissues.QUEUE_FILE}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Generate the pretrain world, train on it, install bdd_engine/models/<name>.pt + its run card."""
    from bdd_engine import pretrain

    cfg = _cfg(args)
    world = synth.ensure_world(cfg)
    info = {"seed": int(cfg.seed), "world_hash": synth.world_hash(cfg), "path": str(cfg.data_root),
            "weather_mix": cfg.synth_weather_mix, "timeofday_mix": cfg.synth_timeofday_mix}
    card = pretrain.build(flywheel.train_spec(cfg), world, info, cfg.out, args.name,
                          list(cfg.label_files) + list(cfg.confirm_label_files),
                          list(cfg.image_sets), (int(cfg.synth_width), int(cfg.synth_height)), install=not args.no_install,
                          what=pretrain.WHAT.get(cfg.profile, pretrain.WHAT["pretrain"]),
                          command=pretrain.command_for(cfg.profile, args.name, PRETRAINED_NAME))
    curve = " ".join(f"{r['mAP50']:.3f}" for r in card["learning_curve"])
    print(f"pretrained {args.name}: {card['bytes'] / 2**20:.1f} MB, sha256 {card['sha256'][:16]}, "
          f"{card['wall_time_s']:.0f} s; val mAP50 per epoch (SYNTHETIC pretrain world): {curve}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    print(checkpoint.status(cfg).to_string(index=False))
    models = _model_stages(cfg)
    if len(models):
        models, where = _with_mlflow(cfg, models)
        print("\nmodel registry (runs/registry.json of each turn; stage: candidate -> promoted -> deployable):")
        print(models.to_string(index=False))
        if where:
            print(f"MLflow: {where}")
    return 0


def _with_mlflow(cfg, models):
    """``models`` with each one's MLflow run id, model version and aliases, when the profile's
    store exists (the local one is never created here); (table, where the store is)."""
    import pandas as pd

    from bdd_engine import artifacts, tracking

    local = cfg.out / tracking.LOCAL_DIR / "mlflow.db"
    if not cfg.mlflow_tracking_uri and not local.is_file():
        return models, None
    try:
        tr = tracking.open_tracker(cfg.mlflow_tracking_uri, cfg.out, f"bdd_engine-{cfg.profile}", bool(cfg.synthetic))
    except tracking.TrackingUnreachable as e:
        return models, str(e)
    dirs = pd.concat([pd.read_csv(artifacts.turn_dir(cfg.out, t) / "runs" / "runs.csv").assign(turn=t)
                      for t in sorted(set(models["turn"]))])
    dirs["run_dir"] = [str(Path(w).parent.parent) for w in dirs["weights"]]
    ml = dirs[["run", "turn", "run_dir"]].merge(tr.models(), on="run_dir", how="left")
    out = models.merge(ml.drop(columns="run_dir"), on=["run", "turn"], how="left")
    out["version"] = out["version"].astype("Int64")
    ui = (f"mlflow ui --backend-store-uri {tr.uri} --port 5000, then http://127.0.0.1:5000" if not cfg.mlflow_tracking_uri
          else tr.uri)
    return out.fillna({"mlflow_run": "-", "aliases": "-"}), f"{tr.uri} · registered model {tr.name} · open: {ui}"


def _model_stages(cfg):
    """Every turn's registry stages (run, turn, stage, chosen, held by); turns without a registry left out."""
    import pandas as pd

    from bdd_engine import artifacts, gates

    tables = [gates.stages_table(artifacts.registry(cfg.out, t)).assign(turn=t)
              for t in range(1, int(cfg.flywheel_turns) + 1)
              if (artifacts.turn_dir(cfg.out, t) / "runs" / "registry.json").exists()]
    cols = ["run", "turn", "stage", "chosen", "held by"]
    return pd.concat(tables, ignore_index=True)[cols] if tables else pd.DataFrame(columns=cols)


def cmd_run(args: argparse.Namespace) -> int:
    """Execute notebook.py headless (bdd_engine.runner); the executed .ipynb is saved beside the outputs."""
    cfg = _cfg(args)
    flywheel.preflight(cfg)  # every flywheel_reviewed file, before any section (and before a kernel starts)
    # fail fast, before a kernel starts, with the lock's own messages (busy: holder PID; unwritable: the folder)
    checkpoint.acquire_lock(cfg.out)
    checkpoint.release_lock(cfg.out)
    print(f"[run] profile {cfg.profile} · outputs {cfg.out}" + (" · SYNTHETIC data" if cfg.synthetic else ""), flush=True)
    flywheel.data_root(cfg)  # a synthetic world is generated here, with its progress bar in this terminal
    return runner.run_notebook(cfg, args.set or [], args.from_section)


def cmd_evaluate(argv: list[str]) -> int:
    """``evaluate`` owns its flags; ``--profile``/``--set`` give defaults for ``--by``
    (eval_by), ``--n-boot`` (eval_n_boot) and ``--seed`` (seed) when those are not passed."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", default=None)
    pre.add_argument("--set", action="append", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.profile or known.set:
        cfg = load_config(known.profile, parse_overrides(known.set or []))
        defaults = {"--by": ",".join(cfg.eval_by), "--n-boot": str(cfg.eval_n_boot), "--seed": str(cfg.seed)}
        for flag, value in defaults.items():
            if not any(a == flag or a.startswith(flag + "=") for a in rest):
                rest += [flag, value]
    return int(main_evaluate(rest) or 0)


def cmd_app(argv: list[str]) -> int:
    return int(main_app(argv) or 0)


def _ingest_flags(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--fps", type=float, default=1.0, help="video frames sampled per second of video")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bdd_engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn in (("synth", cmd_synth), ("run", cmd_run), ("status", cmd_status), ("pretrain", cmd_pretrain),
                     ("label", cmd_label), ("predict", cmd_predict), ("train", cmd_train),
                     ("label-issues", cmd_label_issues)):
        sp = sub.add_parser(name)
        sp.add_argument("--profile", default=os.environ.get("BDD_PROFILE", "demo"))
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.set_defaults(fn=fn)
        if name == "synth":
            sp.add_argument("--out", type=Path, default=None, help="world root (default: the profile's data_root)")
            sp.add_argument("--force", action="store_true", help="regenerate even if the world exists")
            sp.add_argument("--videos", action="store_true",
                            help="also write each 100K keyframe's drive as <world>/videos/<split>/<video>.mov")
            sp.add_argument("--video-seconds", type=int, default=4, help="seconds per video (keyframe in the middle)")
            sp.add_argument("--video-fps", type=int, default=30, help="frames per second of the videos")
            sp.add_argument("--video-limit", type=int, default=None, help="first N keyframes only (default: all)")
        if name == "pretrain":
            sp.set_defaults(profile="pretrain")
            sp.add_argument("--name", default=PRETRAINED_NAME, help="file name under bdd_engine/models/ (no extension)")
            sp.add_argument("--no-install", action="store_true", help="train only; leave bdd_engine/models/ alone")
        if name == "label":
            sp.add_argument("--src", type=Path, required=True, help="folder of images and/or videos")
            sp.add_argument("--labeler", choices=("gsam2", "teacher"), required=True)
            sp.add_argument("--weights", type=Path, default=None, help="teacher: an Ultralytics .pt")
            sp.add_argument("--out", type=Path, required=True, help="new folder (label creates and marks it)")
            _backend_flag(sp)
            _ingest_flags(sp)
        if name == "predict":
            sp.add_argument("--weights", type=Path, required=True, help="an Ultralytics .pt")
            sp.add_argument("--src", type=Path, required=True, help="folder of images")
            sp.add_argument("--out", type=Path, required=True, help="predictions JSON (BDD format) to write")
            sp.add_argument("--conf", type=float, default=None, help="score threshold (default: the profile's eval_conf)")
            sp.add_argument("--imgsz", type=int, default=None, help="inference size, px (default: the weights')")
            sp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
            _backend_flag(sp)
        if name == "train":
            sp.add_argument("--data", type=Path, required=True,
                            help="labelled folder (one BDD/COCO JSON, or YOLO labels/ + images/) or a BDD/COCO JSON file")
            sp.add_argument("--out", type=Path, required=True, help="new folder (train creates and marks it)")
            sp.add_argument("--images", type=Path, default=None,
                            help="where the JSON's images are (default: the JSON's folder, searched recursively)")
            sp.add_argument("--val-fraction", type=float, default=0.2,
                            help="share of drive (or name) groups held out for val, whole groups only")
        if name == "label-issues":
            sp.add_argument("--labels", type=Path, required=True, help="the label set: BDD/COCO JSON or a YOLO folder")
            sp.add_argument("--images", type=Path, required=True, help="folder of the labelled images")
            sp.add_argument("--weights", type=Path, required=True,
                            help="an Ultralytics .pt that never trained on these frames (out-of-sample)")
            sp.add_argument("--out", type=Path, required=True, help="new folder (label-issues creates and marks it)")
            sp.add_argument("--conf", type=float, default=0.25, help="a prediction's score to count as a missed object")
            sp.add_argument("--flag", type=float, default=0.5, help="rows scoring >= this are flagged")
            sp.add_argument("--imgsz", type=int, default=None, help="inference size, px (default: the weights')")
            sp.add_argument("--queue", type=int, default=50, help="frames in the Label Studio review queue of suspects")
        if name == "run":
            sp.add_argument("--from", dest="from_section", type=int, default=None, choices=sorted(checkpoint.SECTIONS),
                            metavar="N", help="recompute section N (1-8) and every later one")
    ing = sub.add_parser("ingest", help="sample videos under --src to JPEG frames in --out (a folder it creates)")
    ing.add_argument("--src", type=Path, required=True, help="folder of videos (.mov .mp4 .avi) and/or images")
    ing.add_argument("--out", type=Path, required=True, help="new folder (or one an earlier ingest made: resumes)")
    _ingest_flags(ing)
    ing.add_argument("--scene-threshold", type=float, default=None,
                     help="drop a frame whose mean |gray difference| to the last kept one is below this, in [0, 1]")
    ing.add_argument("--max-frames-per-video", type=int, default=None, help="stop a video after N kept frames")
    ing.add_argument("--decoder", choices=ingest.DECODERS, default="pyav")
    ing.add_argument("--method", choices=ingest.METHODS, default="seek",
                     help="seek = jump to the keyframe before a sample when that skips frames; seq = decode all")
    ing.add_argument("--workers", type=int, default=1,
                     help="videos decoded in parallel processes (2 on 2 cores); with --executor ray: Ray actors")
    ing.add_argument("--executor", choices=executor.EXECUTORS, default="local",
                     help="ray: decode the videos on a Ray actor pool (every node sees --src and --out)")
    ing.add_argument("--ray-address", default=None,
                     help="with --executor ray: a running cluster (auto, HOST:6379); default: start a local Ray")
    ing.set_defaults(fn=cmd_ingest)
    sub.add_parser("evaluate", help="python -m bdd_engine evaluate --gt GT.json --pred PRED.json [--by ...] [--json OUT]")
    sub.add_parser("app", help="python -m bdd_engine app --profile P [--port N] [--set key=value]")
    sub.add_parser("stand-in-weights", help="python -m bdd_engine stand-in-weights --out DIR [--only NAME] (RANDOM weights)")
    sub.add_parser("import-labels", help="python -m bdd_engine import-labels --label-studio EXPORT.json --out DIR")
    return p


def _backend_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", choices=backends.BACKENDS, default=None,
                    help="detector inference runtime (default: the profile's infer_backend; docs/INFER.md)")


def _own_parser_command(name: str):
    """(main, its refusal error) of a command that parses its own flags; imported only on use."""
    if name == "stand-in-weights":
        from bdd_engine import standin  # imports the autolabel package and transformers: only on use

        return standin.main, standin.StandInRefused
    from bdd_engine.autolabel import review_import

    return review_import.main, review_import.ExportError


def _refuse_profile_flags(argv: list[str]) -> None:
    """One line, not argparse's usage dump, when a command that reads no profile gets --profile/--set."""
    if argv and argv[0] in NO_PROFILE_COMMANDS and any(
            a in ("--profile", "--set") or a.startswith(("--profile=", "--set=")) for a in argv[1:]):
        raise ConfigError(f"{argv[0]} reads no profile, so --profile/--set would change nothing; its settings are "
                          f"its own flags (python -m bdd_engine {argv[0]} --help)")


def main(argv: list[str] | None = None) -> int:
    setup_env()  # offline-safe settings for this process and the notebook kernel it starts
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _refuse_profile_flags(argv)
        if argv and argv[0] == "evaluate":  # these own their argument parsing
            return cmd_evaluate(argv[1:])
        if argv and argv[0] == "app":
            return cmd_app(argv[1:])
        if argv and argv[0] in ("stand-in-weights", "import-labels"):
            run, refusal = _own_parser_command(argv[0])
            try:
                return run(argv[1:])
            except refusal as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        args = _parser().parse_args(argv)
        return args.fn(args)
    except (ConfigError, synth.WorldRefused, checkpoint.OutputsBusy, checkpoint.OutputsNotWritable,
            checkpoint.FolderRefused, FileNotFoundError, FileExistsError, backends.BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
