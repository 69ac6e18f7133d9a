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
