"""Helpers of the CLI tests (test_cli.py, test_safety.py): the CLI's own stderr lines, and
``cli.main`` run in-process."""
import re

from tfp_bnn import cli

# TensorFlow's C++ start-up log (absl lines printed at import, before any of our code runs and
# not silenced by TF_CPP_MIN_LOG_LEVEL) is not the CLI's output; everything else on stderr is.
TF_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following"
                    r"|\t|\s*$)")


def own_stderr(text):
    """The stderr lines the CLI wrote itself (TensorFlow's start-up lines left out)."""
    return [line for line in text.splitlines() if not TF_LOG.match(line)]


def main_exit(argv, capsys):
    """Run cli.main in-process: (exit code, stderr lines); argparse errors exit via SystemExit."""
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err.strip().splitlines()
