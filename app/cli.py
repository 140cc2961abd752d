"""The ``cbmir`` command line: thin subcommands over library code.

Each subcommand parses its flags and calls one library function; errors a user can fix
are printed as one line (``cbmir: error: ...``) with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from models.ood import DEFAULT_METHOD, METHODS

if TYPE_CHECKING:
    from app.service.sinks import Sink

log = logging.getLogger("cbmir")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # faiss logs its CPU-feature probing at INFO on import; users need none of it.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    # httpx logs every request at INFO: an archive walk would print thousands of lines.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # pynetdicom: several INFO lines per association (cbmir listen logs its own).
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)


def cmd_train(a: argparse.Namespace) -> int:
    from models.training.train import TrainArgs, train

    args = TrainArgs(
        data=str(a.data), out=str(a.out), split_csv=str(a.split_csv) if a.split_csv else None,
        epochs=a.epochs, image_size=a.image_size, channels=a.channels, batch_size=a.batch_size,
        lr=a.lr, seed=a.seed, device=a.device, patience=a.patience, progress=not a.no_progress,
        arch=a.arch, balance=a.balance, balance_rule=a.balance_rule, augment=not a.no_augment,
        augment_strength=a.augment_strength, symmetries=a.symmetries,
        **({"sample_budget": a.sample_budget} if a.sample_budget else {}),
    )
    res = train(args)
    m = res.config.metrics
    sys.stdout.write(
        f"saved {res.out_dir}: best epoch {res.best_epoch}, val accuracy "
        f"{m['val_accuracy']:.4f}, {res.seconds:.0f}s\n"
    )
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from models.training.evaluate import run_evaluation

    report = run_evaluation(
        Path(a.model), Path(a.data), Path(a.split_csv) if a.split_csv else None, Path(a.out),
        device=a.device, max_queries=a.max_queries, progress=not a.no_progress,
    )
    if a.record:
        from models.training.report import record_in_model_card

        record_in_model_card(Path(a.model), Path(a.out))
    c, r = report["classification"], report["retrieval"]
    sys.stdout.write(
        f"accuracy {c['accuracy']:.4f}  macro-F1 {c['macro_f1']:.4f}  "
        f"mAP all {r['all']['map']:.4f}  mAP predicted {r['predicted']['map']:.4f}  "
        f"-> {a.out}/report.md\n"
    )
    return 0


def _named_path(text: str) -> tuple[str, Path]:
    """``NAME=PATH``, or a bare ``PATH`` named after its folder."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).name, text
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def cmd_evaluate_ood(a: argparse.Namespace) -> int:
    from models.training.ood_eval import NearOptions, OodEvalOptions, run_ood_evaluation

    near = NearOptions(a.near, epochs=a.near_epochs, train_per_class=a.near_train_per_class,
                       val_per_class=a.near_val_per_class,
                       test_per_class=a.near_test_per_class) if a.near else None
    opts = OodEvalOptions(far=a.far, shifted=a.shifted, synthetic=a.synthetic,
                          renderings=a.renderings, max_per_set=a.max_per_set, near=near,
                          device=a.device, progress=not a.no_progress)
    r = run_ood_evaluation(Path(a.model), Path(a.data), Path(a.split_csv) if a.split_csv else None,
                           Path(a.out), opts)
    m = r["chosen"]
    line = f"{m}: in-dist test flagged {100 * r['in_distribution'][m]['flagged']:.2f}%"
    if r["far_pooled"]:
        line += f"  far AUROC {r['far_pooled'][m]['auroc']:.4f}"
    if r["near"]:
        near = sum(n["methods"][m]["auroc"] for n in r["near"]) / len(r["near"])
        line += f"  near AUROC mean {near:.4f}"
    sys.stdout.write(f"{line}  -> {a.out}/ood_report.md\n")
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from models.training.calibrate import calibrate_model

    cfg = calibrate_model(Path(a.model), Path(a.data), Path(a.split_csv) if a.split_csv else None,
                          device=a.device, method=a.method, progress=not a.no_progress)
    assert cfg.ood is not None
    sys.stdout.write(
        f"calibrated {a.model}: {cfg.ood.method}, threshold {cfg.ood.threshold:.4f}, "
        f"{100 * cfg.ood.val_flagged:.2f}% of {cfg.ood.val_images} val images flagged "
        f"(fingerprint {cfg.fingerprint} unchanged)\n"
    )
    return 0


def open_sink(to: str | None) -> Sink:
    """A running service (``--to``, key from CBMIR_API_KEY) or CBMIR_DATA_DIR itself."""
    from app.config import ClientSettings, load_settings
    from app.service.retriever import Retriever
    from app.service.sinks import LocalSink, RemoteSink

    if to:
        return RemoteSink(to, ClientSettings().key)
    return LocalSink(Retriever.open(load_settings()))


@contextmanager
def _archive_errors() -> Iterator[None]:
    """The archive's and the destination's failures as one-line CLI errors."""
    from app.service.dicomweb import ArchiveError
    from app.service.sinks import SinkError

    try:
        yield
    except (ArchiveError, SinkError) as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def cmd_index(a: argparse.Namespace) -> int:
    if a.dicomweb:
        return _index_dicomweb(a)
    if a.folder is None:
        raise ValueError("name a folder, or an archive with --dicomweb URL")
    from app.config import load_settings
    from app.service.bulk import index_folder

    summary = index_folder(Path(a.folder), load_settings(), progress=not a.no_progress)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _index_dicomweb(a: argparse.Namespace) -> int:
    from app.service.dicomweb import DicomWebClient
    from app.service.pacs_import import import_dicomweb

    if a.folder is not None:
        raise ValueError("name a folder or --dicomweb, not both")
    with _archive_errors(), DicomWebClient(a.dicomweb) as client:
        client.check()  # an unreachable archive fails before the model loads
        sink = open_sink(a.to)
        try:
            counts = import_dicomweb(client, sink, studies=a.study, modalities=a.modality,
                                     concurrency=a.concurrency, progress=not a.no_progress)
        finally:
            sink.close()
    sys.stdout.write(json.dumps(counts.summary()) + "\n")
    return 0


def cmd_follow(a: argparse.Namespace) -> int:
    import hashlib
    import signal
    import threading

    from app.config import ClientSettings
    from app.service.follow import FollowState, OrthancFollower, probe_orthanc

    url = a.orthanc.rstrip("/")
    state = a.state or (ClientSettings().data_dir / "follow"
                        / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.json")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with _archive_errors():
        probe_orthanc(url)  # an unreachable archive fails before the model loads
        FollowState.load(Path(state), url)  # so does a state file of another archive
        follower = OrthancFollower(url, open_sink(a.to), Path(state),
                                   dicomweb_root=a.dicomweb_root,
                                   reconcile_s=a.reconcile_seconds, poll_s=a.poll_seconds)
        try:
            log.info("following %s from change %d (state %s)", url, follower.state.last, state)
            counts = follower.run(stop, once=a.once)
        finally:
            follower.close()
    sys.stdout.write(json.dumps(vars(counts)) + "\n")
    return 0


def cmd_listen(a: argparse.Namespace) -> int:
    import signal
    import threading

    from app.config import ClientSettings
    from app.service.listen import SYNTAXES, Spool, StoreScp

    if a.list_syntaxes:
        sys.stdout.write("\n".join(SYNTAXES) + "\n")
        return 0
    if not a.aet or len(a.aet) > 16 or not a.aet.isascii() or "\\" in a.aet:
        raise ValueError("--aet must be 1 to 16 ASCII characters")
    cs = ClientSettings()
    spool = Spool(a.spool or cs.data_dir / "spool")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _archive_errors():
        sink = open_sink(a.to)
        scp = StoreScp(a.aet, a.host, a.port, spool, sink, dicomweb_url=cs.dicomweb_url)
        try:
            scp.start()
            stop.wait()
        finally:
            scp.stop()
            sink.close()
    sys.stdout.write(json.dumps(vars(scp.counts)) + "\n")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from app.config import load_settings
    from app.server import run_server

    run_server(load_settings(), host=a.host, port=a.port, workers=a.workers)
    return 0


def cmd_migrate(a: argparse.Namespace) -> int:
    from app.config import load_settings
    from app.service.pg.db import redact
    from app.service.pg.migrate import migrate
    from models.checkpoint import load_config

    settings = load_settings()
    data_dir = a.data_dir or settings.data_dir
    classes = load_config(settings.model_dir).class_names
    summary = migrate(data_dir, a.to, labels=classes, progress=not a.no_progress)
    sys.stdout.write(json.dumps({**summary, "to": redact(a.to)}) + "\n")
    return 0


def _add_sink_argument(p: argparse.ArgumentParser) -> None:
    """``--to``: where the archive commands put images (app.service.sinks)."""
    p.add_argument("--to", metavar="SERVICE_URL",
                   help="send to a running service (key from CBMIR_API_KEY) instead of "
                   "writing CBMIR_DATA_DIR")


def _symmetries(text: str) -> list[str]:
    """``none``, or a comma-separated list of flip_lr, flip_ud, rot90."""
    names = [] if text == "none" else [t.strip() for t in text.split(",") if t.strip()]
    allowed = ("flip_lr", "flip_ud", "rot90")
    bad = [n for n in names if n not in allowed]
    if bad or (text != "none" and not names):
        raise argparse.ArgumentTypeError(f"expected none or some of {', '.join(allowed)}")
    return names


def _concurrency(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 4:
        raise argparse.ArgumentTypeError("expected 1 to 4")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbmir", description="Content-based medical image retrieval.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a CNN from scratch on an image-folder data set")
    t.add_argument("--data", required=True, type=Path, help="folder with one sub-folder per class")
    t.add_argument("--split-csv", type=Path, help="CSV with path,label,split (default: made here)")
    t.add_argument("--out", required=True, type=Path, help="output model directory")
    t.add_argument("--epochs", type=int,
                   help="default: about --sample-budget images seen (8-300 epochs)")
    t.add_argument("--sample-budget", type=int,
                   help="augmented training images to show the network (default 200,000)")
    t.add_argument("--arch", default="cbmir-resnet", choices=("cbmir-resnet", "cbmir-cnn"))
    t.add_argument("--balance", default="auto", choices=("auto", "on", "off"),
                   help="class-balanced sampling (auto: when classes are skewed 3:1 or more)")
    t.add_argument("--balance-rule", default="even", choices=("even", "sqrt"),
                   help="balanced sampling draws every class equally often (even) or by the "
                   "square root of its count (sqrt)")
    t.add_argument("--no-augment", action="store_true", help="train without augmentation")
    t.add_argument("--augment-strength", type=float,
                   help="rendering augmentation, 0 (geometry only) to 1 (default: from the "
                   "data set's measured rendering shortcut)")
    t.add_argument("--symmetries", type=_symmetries, default=[], metavar="none|LIST",
                   help="mirror images and quarter turns to augment with: flip_lr, flip_ud, "
                   "rot90, comma-separated (default none: laterality matters in radiology, "
                   "and they cost accuracy where measured)")
    t.add_argument("--image-size", type=int, help="default: from the images (32-128 px)")
    t.add_argument("--channels", type=int, choices=(1, 3), help="default: 3 if any image is colour")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--patience", type=int,
                   help="stop after N epochs of the annealing half without a better "
                   "validation accuracy (default: off, the whole schedule runs)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="classification and retrieval figures on a test split")
    e.add_argument("--model", required=True, type=Path)
    e.add_argument("--data", required=True, type=Path)
    e.add_argument("--split-csv", type=Path)
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    e.add_argument("--max-queries", type=int, help="evaluate on a seeded subset of queries")
    e.add_argument("--record", action="store_true",
                   help="also write the figures into the model's config and model card")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("calibrate", help="(re)fit the out-of-distribution score of a model "
                       "on a data set's train and val splits; the weights are not touched")
    c.add_argument("--model", required=True, type=Path)
    c.add_argument("--data", required=True, type=Path)
    c.add_argument("--split-csv", type=Path)
    c.add_argument("--method", default=DEFAULT_METHOD, choices=tuple(METHODS))
    c.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_calibrate)

    o = sub.add_parser("evaluate-ood", help="compare out-of-distribution scores: far OOD sets, "
                       "synthetic inputs and leave-one-class-out models")
    o.add_argument("--model", required=True, type=Path)
    o.add_argument("--data", required=True, type=Path, help="the model's data set (in-dist)")
    o.add_argument("--split-csv", type=Path)
    o.add_argument("--out", required=True, type=Path)
    o.add_argument("--far", action="append", default=[], type=_named_path, metavar="NAME=PATH",
                   help="a folder of images the model should not know (repeatable)")
    o.add_argument("--shifted", action="append", default=[], type=_named_path,
                   metavar="NAME=PATH", help="a folder of known-class images from another source")
    o.add_argument("--synthetic", type=int, default=100,
                   help="synthetic images per kind (noise, blank, text, scene); 0: none")
    o.add_argument("--renderings", type=int, default=20,
                   help="test images per class to re-render (window, gamma, border, ...); 0: none")
    o.add_argument("--max-per-set", type=int, default=1000, help="seeded cap per folder")
    o.add_argument("--near", action="append", default=[], metavar="CLASS",
                   help="leave this class out of a quick model and score it (repeatable)")
    o.add_argument("--near-epochs", type=int, default=4)
    o.add_argument("--near-train-per-class", type=int, default=500)
    o.add_argument("--near-val-per-class", type=int, default=150)
    o.add_argument("--near-test-per-class", type=int, default=300)
    o.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    o.add_argument("--no-progress", action="store_true")
    o.set_defaults(func=cmd_evaluate_ood)

    i = sub.add_parser("index", help="bulk-add a folder of images, or an archive's DICOM "
                       "(--dicomweb), to the service's data dir or to a running service")
    i.add_argument("folder", type=Path, nargs="?",
                   help="class sub-folders (label = folder name) or flat (label predicted)")
    i.add_argument("--dicomweb", metavar="URL",
                   help="import from this DICOMweb root (QIDO-RS walk, WADO-RS retrieve)")
    i.add_argument("--study", action="append", default=[], metavar="UID",
                   help="only this study (repeatable); default: every study")
    i.add_argument("--modality", action="append", default=[], metavar="CT",
                   help="only series of this modality (repeatable)")
    _add_sink_argument(i)
    i.add_argument("--concurrency", type=_concurrency, default=3,
                   help="WADO-RS requests in flight, 1-4 (default 3)")
    i.add_argument("--no-progress", action="store_true")
    i.set_defaults(func=cmd_index)

    m = sub.add_parser("migrate", help="copy the embedded data dir (SQLite + originals) into "
                       "PostgreSQL, stored vectors included (nothing is re-embedded)")
    m.add_argument("--to", required=True, metavar="postgresql://...",
                   help="the database (then serve with CBMIR_DATABASE_URL set to it)")
    m.add_argument("--data-dir", type=Path, help="default: CBMIR_DATA_DIR")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=cmd_migrate)

    f = sub.add_parser("follow", help="ingest each series an Orthanc makes stable "
                       "(polls /changes; restart-safe; reconciles deletions)")
    f.add_argument("--orthanc", required=True, metavar="URL", help="Orthanc's REST root")
    _add_sink_argument(f)
    f.add_argument("--state", type=Path, help="the cursor file (default: "
                   "CBMIR_DATA_DIR/follow/<hash of the URL>.json)")
    f.add_argument("--dicomweb-root", default="/dicom-web",
                   help="where the archive's DICOMweb plugin answers, for wado_url")
    f.add_argument("--poll-seconds", type=float, default=1.0)
    f.add_argument("--reconcile-seconds", type=float, default=300.0,
                   help="how often deleted studies are looked for")
    f.add_argument("--once", action="store_true",
                   help="handle every change so far, reconcile once, exit")
    f.set_defaults(func=cmd_follow)

    ls = sub.add_parser("listen", help="a DICOM C-STORE SCP: receive pushes, spool them, "
                        "ingest them (answers C-ECHO)")
    ls.add_argument("--aet", default="CBMIR", help="this node's AE title (default CBMIR)")
    ls.add_argument("--port", type=int, default=11112)
    ls.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    _add_sink_argument(ls)
    ls.add_argument("--spool", type=Path, help="received files until ingested (default: "
                    "CBMIR_DATA_DIR/spool)")
    ls.add_argument("--list-syntaxes", action="store_true",
                    help="print the transfer syntaxes accepted, and exit")
    ls.set_defaults(func=cmd_listen)

    s = sub.add_parser("serve", help="run the REST service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1,
                   help="worker processes on one socket (default 1; see the README)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write("cbmir: interrupted\n")
        return 130
    except (ValueError, OSError) as e:
        # Domain errors (DatasetError, CheckpointError, settings errors, decode errors) are
        # ValueErrors with one-line messages; OSError covers unreadable paths.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"cbmir: error: {msg}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
