"""One module per `tipsdistill` sub-command (see `distill.cli`), and what several of them parse alike.

Command modules import the engine inside `run()`: building the parser imports every command module, and
`tipsdistill --help` should not wait for torch, transformers and timm to load.
"""


def data_options(items: list[str]) -> dict:
    """`--data-option KEY=VALUE` items -> the data source's options, values read as YAML (`length=512`)."""
    import yaml

    from common.errors import UserError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--data-option {item!r} is not KEY=VALUE (e.g. length=512)")
        options[key] = yaml.safe_load(value)
    return options


def add_run_arguments(parser) -> None:
    """What a training command (`distill`, `pretrain`) takes besides its recipe: continue a run, stop one early."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop after this step with a checkpoint (continue later with --resume)")


def training_logs() -> None:
    """A training command's log lines on stderr: the engine's progress, Accelerate's warnings only."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
