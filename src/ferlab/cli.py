"""The `ferlab` command: one subcommand per job, each implemented in the module that owns it.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. User errors raise
FerlabError and are printed here on one line, with exit status 2 and no traceback.

`pip install ferlab` has no PyTorch: predict, video, webcam, serve and demo run the bundled ONNX
models without it, and the commands that need it (train, evaluate, export, tune, reproduce,
models, bundle) fail on one line naming `pip install "ferlab[train]"`.
"""

import argparse
import importlib
import sys

from ferlab import __version__
from ferlab.errors import FerlabError

TRAIN_HINT = 'pip install "ferlab[train]"'
TRAIN_ONLY = ("torch", "safetensors", "onnx", "matplotlib", "optuna")  # what the train extra adds

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "demo": ("ferlab.inference.demo", "run ferlab on a bundled example and print the result"),
    "data": ("ferlab.data.cli", "inspect data sets (ferlab data summary PATH)"),
    "models": ("ferlab.models.cli", "list the model zoo with parameter counts"),
    "recipes": ("ferlab.training.recipes", "list the papers' training recipes"),
    "train": ("ferlab.training.cli", "train a model"),
    "evaluate": ("ferlab.evaluate", "evaluate a model and write the report"),
    "predict": ("ferlab.inference.predict", "recognise expressions in images and folders"),
    "video": ("ferlab.inference.video", "recognise expressions in a video file"),
    "webcam": ("ferlab.inference.video", "recognise expressions live from a webcam"),
    "bundle": ("ferlab.posttrain.bundle", "ship a finished run as a bundled model: weights, model card, ONNX"),
    "export": ("ferlab.posttrain.export", "export a model to ONNX"),
    "serve": ("ferlab.serving.cli", "run the HTTP service"),
    "tune": ("ferlab.training.tune", "sarmah2023's random search over its CNN families (Optuna)"),
    "reproduce": ("ferlab.reproduce.cli", "rerun a paper's experiments and write the report"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferlab", description="Facial expression recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"ferlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only import the module whose arguments are needed
            module = importlib.import_module(module_name)
            adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
            adder(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    try:
        args = build_parser(command).parse_args(argv)
    except ImportError as e:  # the command's module needs what only the train extra installs
        missing = (e.name or "").split(".")[0]
        if missing not in TRAIN_ONLY:
            raise
        print(f"ferlab {command}: error: this command needs {missing}, which is not installed: {TRAIN_HINT}", file=sys.stderr)
        return 2
    if args.command is None:
        build_parser().print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    runner = getattr(module, f"run_{args.command}", None) or module.run
    try:
        return int(runner(args) or 0)
    except FerlabError as e:
        print(f"ferlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"ferlab {args.command}: interrupted", file=sys.stderr)
        return 130
