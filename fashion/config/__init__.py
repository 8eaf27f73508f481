"""One config object per command: defaults -> `--config FILE.yaml` -> command-line flags.

Every option is declared once, here: a field made with `opt` carries its default, help, argument
group, choices and metavar; options.build_parser makes the command's parser from the class, and
`validate` holds the checks that need neither data nor TensorFlow. Field names match the flags;
fields are in --help order.

One module per command (ingest; train; bundle: detect and evaluate) over a shared base.
"""
